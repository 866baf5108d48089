"""The one home of the three kinds of run folder: recognised, listed and read the same by every command."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from competition import folders
from competition.config import Config
from competition.errors import CompetitionError

REPO = Path(__file__).resolve().parents[1]


def _three_kinds(runs: Path) -> dict[str, Path]:
    """A run, an unfinished cv of two folds and an unfinished ensemble of two members, as written on disk."""
    config = Config(model="fc", epochs=1).to_dict()
    run = folders.create(str(runs), "fc")
    (run / folders.CONFIG_JSON).write_text(json.dumps(config))
    cv = folders.create(str(runs), "cv-fc")
    (cv / folders.CV_JSON).write_text(json.dumps({"config": {**config, "folds": 2}}))
    (folders.fold_dir(cv, 1) / folders.VALIDATION).parent.mkdir()
    (folders.fold_dir(cv, 1) / folders.VALIDATION).write_bytes(b"")
    ens = folders.create(str(runs), "ensemble-best")
    (ens / folders.ENSEMBLE_JSON).write_text(json.dumps({"preset": "best", "members": [config, config],
                                                         "finished": {}}))
    (runs / "notes").mkdir()  # neither kind: not listed
    return {"run": run, "cv": cv, "ensemble": ens}


def test_each_kind_is_recognised_and_listed(tmp_path: Path) -> None:
    made = _three_kinds(tmp_path / "runs")
    assert {name: folders.kind(path) for name, path in made.items()} == {"run": "run", "cv": "cv",
                                                                       "ensemble": "ensemble"}
    assert folders.listing(str(tmp_path / "runs")) == sorted(made.values(), key=lambda p: p.name)
    assert folders.member_runs(made["run"]) == [made["run"]]


def test_unfinished_cv_and_ensemble_name_what_to_resume(tmp_path: Path) -> None:
    made = _three_kinds(tmp_path / "runs")
    with pytest.raises(CompetitionError, match=r"fold2 of its 2 folds have not finished; continue with: "
                                               r"competition cv --resume"):
        folders.member_runs(made["cv"])
    with pytest.raises(CompetitionError, match="continue with: competition train --resume"):
        folders.member_runs(made["ensemble"])


def test_a_damaged_record_is_named(tmp_path: Path) -> None:
    made = _three_kinds(tmp_path / "runs")
    (made["cv"] / folders.CV_JSON).write_text('{"config": {"model": "fc", "epochs": "two"}}')
    with pytest.raises(CompetitionError, match=r"cv\.json: key 'epochs' is \"two\"; expected a whole number"):
        folders.read_cv_record(made["cv"])
    (made["ensemble"] / folders.ENSEMBLE_JSON).write_text("{")
    with pytest.raises(CompetitionError, match=r"ensemble\.json: cannot be read as an ensemble record"):
        folders.read_ensemble_record(made["ensemble"])


def test_the_folder_module_loads_without_paddle() -> None:
    code = "import sys, competition.folders; print('paddle' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_folders_written_before_views_had_one_name_read_as_today(tmp_path: Path) -> None:
    import numpy as np

    from competition.checkpoint import Validation

    made = _three_kinds(tmp_path / "runs")
    record = json.loads((made["ensemble"] / folders.ENSEMBLE_JSON).read_text())
    old_figures = {"acc": 0.9, "acc_tta": 0.91, "acc_tta6": 0.92, "rows": 100}  # acc_tta: two views, then
    (made["ensemble"] / folders.ENSEMBLE_JSON).write_text(json.dumps({**record, "figures": old_figures}))
    assert folders.read_ensemble_record(made["ensemble"])["figures"] == {"acc": 0.9, "acc_tta2": 0.91,
                                                                         "acc_tta6": 0.92, "rows": 100}
    rng = np.random.default_rng(0)
    probs = [rng.dirichlet(np.ones(10), 4).astype(np.float32) for _ in range(2)]
    labels = probs[1].argmax(1)
    np.savez(made["run"] / folders.VALIDATION, indices=np.arange(4), images=np.zeros((4, 784), np.uint8),
             labels=labels, probs=probs[0], tta_probs=probs[1])  # an old run: no six views, "tta_probs"
    scores = Validation.load(made["run"]).accuracies()
    assert set(scores) == {"val_acc", "val_acc_tta2"} and scores["val_acc_tta2"] == 1.0
