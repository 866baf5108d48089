"""config.json is checked: a wrong type or an impossible value is one line naming the file, key and value."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from competition.config import Config, option_flag
from competition.errors import CompetitionError


def _config_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "run" / "config.json"
    path.parent.mkdir()
    path.write_text(text)
    return path


def _load_error(path: Path) -> str:
    with pytest.raises(CompetitionError) as info:
        Config.load(path)
    message = str(info.value)
    assert len(message.splitlines()) == 1 and message.startswith(f"{path}: "), message
    return message


BAD_VALUES = {
    "epochs as text": ({"epochs": "x"}, """key 'epochs' is "x"; expected a whole number (int)."""),
    "lr as text": ({"lr": "fast"}, """key 'lr' is "fast"; expected a finite number (float)."""),
    "flip as text": ({"flip": "yes"}, """key 'flip' is "yes"; expected true or false."""),
    "fractional epochs": ({"epochs": 2.5}, "key 'epochs' is 2.5; expected a whole number (int)."),
    "epochs as a bool": ({"epochs": True}, "key 'epochs' is true; expected a whole number (int)."),
    "null seed": ({"seed": None}, "key 'seed' is null; expected a whole number (int)."),
    "negative batch size": ({"batch_size": -4}, "key 'batch_size' is -4; expected at least 1."),
    "zero epochs": ({"epochs": 0}, "key 'epochs' is 0; expected at least 1."),
    "extra as a list": ({"extra": [1]}, "key 'extra' is [1]; expected a JSON object."),
    "uneven nproc": ({"batch_size": 256, "nproc": 3}, "key 'batch_size' is 256; expected a multiple of the process count (3)."),
    "unknown schedule": ({"schedule": "step"},
                         """key 'schedule' is "step"; expected one of constant, cosine, onecycle, linear."""),
    "unknown key": ({"epochs": 3, "epoch": 3}, "unknown configuration keys: epoch."),
}


@pytest.mark.parametrize("case", list(BAD_VALUES))
def test_bad_value_is_one_line_naming_file_key_and_value(tmp_path: Path, case: str) -> None:
    values, expected = BAD_VALUES[case]
    path = _config_file(tmp_path, json.dumps({**Config().to_dict(), **values}))
    assert _load_error(path) == f"{path}: {expected}"


def test_nan_is_refused_where_a_number_is_needed(tmp_path: Path) -> None:
    path = _config_file(tmp_path, '{"lr": NaN}')  # Python's json writes and reads NaN
    assert _load_error(path) == f"{path}: key 'lr' is NaN; expected a finite number (float)."


@pytest.mark.parametrize("text, fragment", [
    ("[1, 2]", "holds a JSON list ([1, 2]); expected a JSON object of settings."),
    ('{"epochs": 3', "cannot read the run configuration (Expecting"),
])
def test_a_file_that_is_not_a_json_object_is_one_line(tmp_path: Path, text: str, fragment: str) -> None:
    path = _config_file(tmp_path, text)
    assert fragment in _load_error(path)


def test_a_saved_configuration_round_trips(tmp_path: Path) -> None:
    config = Config(model="cnn", epochs=3, lr=0.01, val_size=0.1, rows=200, flip=True, nproc=2,
                    extra={"argv": ["train", "--epochs", "3"]})
    path = tmp_path / "config.json"
    config.save(path)
    assert Config.load(path) == config


def test_optional_fields_take_null_and_float_fields_take_whole_numbers(tmp_path: Path) -> None:
    path = _config_file(tmp_path, json.dumps({"rows": None, "width": None, "preset": None, "nproc": None,
                                              "val_size": 5000, "lr": 1, "warmup_epochs": 1}))
    config = Config.load(path)
    assert config.rows is None and config.nproc is None and config.val_size == 5000 and config.lr == 1


def test_command_line_wording_is_kept_for_options() -> None:
    with pytest.raises(CompetitionError, match=r"^--epochs must be at least 1, got 0\.$"):
        Config(epochs=0).checked()


def test_a_config_json_from_before_train_csv_had_its_name_still_loads(tmp_path: Path) -> None:
    old = tmp_path / "config.json"
    values = {**Config(model="fc").to_dict(), "train": "data/train.csv"}
    del values["train_csv"]
    old.write_text(json.dumps(values))
    assert Config.load(old).train_csv == "data/train.csv"
    assert option_flag("train_csv") == "--train" and option_flag("val_size") == "--val-size"
