"""Reading the contest CSVs: shapes, dtypes, normalization, variants and every bad input."""
from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from competition import data
from competition.errors import CompetitionError
from conftest import SHARED, pixel_names, random_images, write_csv


def test_train_csv_loads_uint8_images_and_int64_labels(train_csv: Path) -> None:
    table = data.read_train_csv(train_csv)
    assert table.images.shape == (50, 784) and table.images.dtype == np.uint8
    assert table.labels.dtype == np.int64 and list(table.labels[:12]) == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]
    np.testing.assert_array_equal(table.images, random_images(50))


def test_dataset_yields_float32_images_scaled_to_unit_range(train_csv: Path) -> None:
    table = data.read_train_csv(train_csv)
    dataset = data.FashionMNIST(table.images, table.labels)
    image, label = dataset[3]
    assert image.shape == (1, 28, 28) and image.dtype == np.float32
    assert label.dtype == np.int64 and label == 3
    np.testing.assert_allclose(image.reshape(-1), table.images[3] / 255, rtol=1e-6)
    x, y = dataset.batch(np.array([0, 3, 7]))
    assert x.shape == (3, 1, 28, 28) and x.dtype == np.float32 and list(y) == [0, 3, 7]
    assert 0.0 <= x.min() and x.max() <= 1.0


def test_loader_gives_whole_shuffled_batches_covering_every_row(train_csv: Path) -> None:
    table = data.read_train_csv(train_csv)
    loader = data.make_loader(data.FashionMNIST(table.images, table.labels), 16, shuffle=True)
    loader.dataset.set_epoch(1)
    first = np.concatenate([y.numpy() for _, y in loader])
    loader.dataset.set_epoch(2)
    second = np.concatenate([y.numpy() for _, y in loader])
    assert sorted(first) == sorted(table.labels) and len(loader) == 4
    assert list(first) != list(second)  # a new order each epoch
    loader.dataset.set_epoch(1)
    assert list(np.concatenate([y.numpy() for _, y in loader])) == list(first)  # reproducible


def test_pixel_columns_are_taken_by_name_not_position(tmp_path: Path) -> None:
    images, labels = random_images(5), np.arange(5)
    shuffled = list(np.random.default_rng(3).permutation(pixel_names()))
    path = write_csv(tmp_path / "t.csv", images, labels, ids=list("abcde"), id_name="note",
                     columns=shuffled[:400] + ["label"] + shuffled[400:] + ["note"])
    table = data.read_train_csv(path)
    np.testing.assert_array_equal(table.images, images)
    np.testing.assert_array_equal(table.labels, labels)


@pytest.mark.parametrize("variant", [
    {"bom": True}, {"crlf": True}, {"bom": True, "crlf": True, "gzip": True}, {"pixel_start": 0},
])
def test_accepted_file_variants(tmp_path: Path, variant: dict) -> None:
    images = random_images(7)
    path = write_csv(tmp_path / "t.csv", images, ids=[f"x{i}" for i in range(7)], **variant)
    table = data.read_test_csv(path)
    np.testing.assert_array_equal(table.images, images)
    assert list(table.ids) == [f"x{i}" for i in range(7)] and table.id_column == "id"


def test_test_file_id_column_keeps_its_name(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "t.csv", random_images(3), ids=[7, 8, 9], id_name="ID")
    table = data.read_test_csv(path)
    assert table.id_column == "ID" and list(table.ids) == ["7", "8", "9"]


def test_test_file_without_id_column_gets_row_numbers(tmp_path: Path) -> None:
    table = data.read_test_csv(write_csv(tmp_path / "t.csv", random_images(4)))
    assert table.id_column == "id" and list(table.ids) == ["0", "1", "2", "3"]
    assert table.labels is None


def test_labeled_test_file_is_accepted_with_its_labels(tmp_path: Path) -> None:
    table = data.read_test_csv(write_csv(tmp_path / "t.csv", random_images(4), labels=[1, 2, 3, 4]))
    assert list(table.labels) == [1, 2, 3, 4] and list(table.ids) == ["0", "1", "2", "3"]


@pytest.mark.skipif(not SHARED.exists(), reason="shared contest files not available")
def test_contest_test_file_is_found_as_gz_and_read_whole() -> None:
    found = data.find_data_file(data.TEST_FILE, str(SHARED))
    assert found == SHARED / f"{data.TEST_FILE}.gz"
    table = data.read_test_csv(found)
    assert table.images.shape == (10_000, 784) and table.ids[0] == "0" and table.id_column == "id"


def test_data_dir_and_env_are_searched_before_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine").mkdir()
    write_csv(tmp_path / "mine" / data.TRAIN_FILE, random_images(2), [0, 1])
    monkeypatch.setenv("FMNIST_DATA", str(tmp_path / "mine"))
    assert data.find_data_file(data.TRAIN_FILE) == tmp_path / "mine" / data.TRAIN_FILE
    assert data.find_data_file(data.TRAIN_FILE, str(tmp_path / "mine")) == tmp_path / "mine" / data.TRAIN_FILE


def test_missing_data_lists_every_place_tried(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("FMNIST_DATA", raising=False)
    with pytest.raises(CompetitionError) as err:
        data.find_data_file(data.TRAIN_FILE, "elsewhere")
    message = str(err.value)
    for place in ("elsewhere/", "data/", "../shared/data/fashion-mnist/", ".csv.gz", "download"):
        assert place in message


def _bad_files(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    """Each malformed training file and a fragment its message must contain."""
    ok = random_images(6)
    labels = np.arange(6)
    good = write_csv(tmp_path / "good.csv", ok, labels).read_text()
    lines = good.splitlines()

    def with_cell(row: int, col: int, value: str) -> str:
        cells = lines[row].split(",")
        cells[col] = value
        return "\n".join(lines[:row] + [",".join(cells)] + lines[row + 1:]) + "\n"

    raw = {
        "empty.csv": ("", "empty"),
        "no_pixels.csv": ("a,b,c\n1,2,3\n", "no pixel columns"),
        "few_pixels.csv": ("label," + ",".join(pixel_names()[:783]) + "\n" + "1," * 783 + "1\n",
                           "783 pixel columns"),
        "text_cell.csv": (with_cell(2, 5, "abc"), "row 2 (line 3), column 'pixel5': expected an integer, found 'abc'"),
        "missing_cell.csv": (with_cell(3, 9, ""), "row 3 (line 4), column 'pixel9': expected an integer, found an empty cell"),
        "big_pixel.csv": (with_cell(4, 1, "256"), "row 4 (line 5), column 'pixel1': expected a pixel value from 0 to 255, found 256"),
        "huge_pixel.csv": (with_cell(1, 2, "99999"), "row 1 (line 2), column 'pixel2': expected a pixel value from 0 to 255, found 99999"),
        "negative.csv": (with_cell(1, 2, "-1"), "column 'pixel2': expected a pixel value from 0 to 255, found -1"),
        "big_label.csv": (with_cell(5, 0, "10"), "row 5 (line 6), column 'label': expected a class label from 0 to 9, found 10"),
        "float_label.csv": (with_cell(2, 0, "2.5"), "row 2 (line 3), column 'label': expected an integer, found '2.5'"),
        "no_label.csv": (",".join(pixel_names()) + "\n" + ",".join(["0"] * 784) + "\n", "no 'label' column"),
        "semicolon.csv": (good.replace(",", ";"), "separated by ';'"),
        "extra_field.csv": (good + ",".join(["1"] * 786) + "\n", "line 8: expected 785 fields, found 786"),
        # pandas would read a first row with one field too many as an index column and shift the values
        "extra_first_field.csv": (lines[0] + "\n" + ",".join(["1"] * 786) + "\n",
                                  "line 2: more fields than the header has columns"),
        "header_only.csv": (lines[0] + "\n", "no data rows"),
    }
    files = {}
    for name, (text, fragment) in raw.items():
        (tmp_path / name).write_text(text)
        files[name] = (tmp_path / name, fragment)
    (tmp_path / "binary.csv").write_bytes(bytes(range(256)) * 40)
    files["binary.csv"] = (tmp_path / "binary.csv", "not UTF-8")
    packed = gzip.compress(good.encode() * 50)
    (tmp_path / "truncated.csv.gz").write_bytes(packed[: len(packed) // 2])
    files["truncated.csv.gz"] = (tmp_path / "truncated.csv.gz", "truncated")
    files["missing.csv"] = (tmp_path / "missing.csv", "no such file")
    return files


BAD_NAMES = ["empty.csv", "no_pixels.csv", "few_pixels.csv", "text_cell.csv", "missing_cell.csv",
             "big_pixel.csv", "huge_pixel.csv", "negative.csv", "big_label.csv", "float_label.csv",
             "no_label.csv", "semicolon.csv", "extra_field.csv", "extra_first_field.csv", "header_only.csv",
             "binary.csv",
             "truncated.csv.gz", "missing.csv"]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_bad_training_file_gives_one_sentence_naming_file_and_place(tmp_path: Path, name: str) -> None:
    path, fragment = _bad_files(tmp_path)[name]
    with pytest.raises(CompetitionError) as err:
        data.read_train_csv(path)
    message = str(err.value)
    assert message.startswith(str(path)) and fragment in message, message
    assert "\n" not in message


def test_duplicate_test_ids_are_rejected_with_examples(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "t.csv", random_images(5), ids=[1, 2, 2, 3, 3])
    with pytest.raises(CompetitionError, match=r"duplicate ids \(2, 3\)"):
        data.read_test_csv(path)


def test_missing_test_id_names_the_row(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "t.csv", random_images(3), ids=["a", "", "c"])
    with pytest.raises(CompetitionError, match=r"row 2 \(line 3\), column 'id': missing id"):
        data.read_test_csv(path)


@pytest.mark.parametrize("val_size, expected", [(10, 10), (0.2, 10), (0, 0)])
def test_split_is_stratified_seeded_and_disjoint(val_size: float, expected: int) -> None:
    labels = np.repeat(np.arange(10), 5)
    train, val = data.stratified_split(labels, val_size, seed=4)
    assert len(val) == expected and len(train) + len(val) == 50
    assert not set(train) & set(val)
    if expected:
        assert sorted(labels[val]) == sorted(np.repeat(np.arange(10), expected // 10))
    again = data.stratified_split(labels, val_size, seed=4)
    assert list(again[1]) == list(val)
    assert expected == 0 or list(data.stratified_split(labels, val_size, seed=5)[1]) != list(val)


def test_split_as_large_as_the_data_is_refused() -> None:
    with pytest.raises(CompetitionError, match="--val-size 50 holds out 50 of the 50"):
        data.stratified_split(np.arange(50) % 10, 50, seed=0)
