"""Reports rebuilt from a run folder: pictures, per-class table, report.md, data grids, run comparison."""
from __future__ import annotations

import json
import math
import shutil
import struct
from pathlib import Path

import numpy as np
import paddle
import pandas as pd
import pytest

import competition.data
import competition.train
from competition import checkpoint, predict, report
from competition.data import CLASS_NAMES, ImageTable, read_test_csv, read_train_csv
from competition.errors import CompetitionError

PICTURES = ["curves.png", "confusion.png", "per_class.png", "mistakes.png"]
RUN_FILES = ["config.json", "runtime.json", "summary.csv", "steps.csv", "best.pdparams", "validation.npz"]


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk, after checking the signature."""
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR", f"{path} is not a PNG"
    return struct.unpack(">II", head[16:24])


def assert_picture(path: Path) -> None:
    width, height = png_size(path)
    assert width >= 300 and height >= 300, f"{path.name} is {width}x{height}"


def copy_run(src: Path, dst: Path) -> Path:
    """Only the files training writes, so reports made elsewhere do not leak in."""
    dst.mkdir(parents=True)
    for name in RUN_FILES:
        shutil.copy2(src / name, dst / name)
    return dst


@pytest.fixture(scope="module")
def reported(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A copy of tiny_run reported once, its training CSV gone, with every way to train or evaluate made to fail."""
    run_dir = copy_run(tiny_run, tmp_path_factory.mktemp("report") / tiny_run.name)
    config = json.loads((run_dir / "config.json").read_text())
    config["train_csv"] = str(run_dir / "moved-away.csv")  # the report needs no training data
    (run_dir / "config.json").write_text(json.dumps(config))
    before = {name: (run_dir / name).read_bytes() for name in RUN_FILES}

    def no_training(*args, **kwargs):
        raise AssertionError("write_report must not train or evaluate")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(paddle.optimizer.Adam, "step", no_training)
        patch.setattr(paddle.optimizer.Optimizer, "step", no_training)
        patch.setattr(paddle, "load", no_training)  # no weights are read
        patch.setattr(competition.train, "train_one_epoch", no_training)
        patch.setattr(competition.train, "evaluate", no_training)
        patch.setattr(predict, "predict_probs", no_training)
        patch.setattr(predict, "model_probs", no_training)
        written = report.write_report(run_dir)
    return {"run": run_dir, "written": written, "before": before}


def test_write_report_writes_every_file_as_a_big_enough_png(reported: dict) -> None:
    run_dir = reported["run"]
    names = [p.name for p in reported["written"]]
    assert sorted(names) == sorted(PICTURES + ["per_class.csv", "validation.json", "report.md"])
    assert all(p.parent == run_dir and p.is_file() for p in reported["written"])
    for name in PICTURES:
        assert_picture(run_dir / name)
    assert not list(run_dir.glob(".*.tmp")), "a temporary file was left behind"


def test_per_class_csv_adds_up_to_the_best_validation_accuracy(reported: dict) -> None:
    table = pd.read_csv(reported["run"] / "per_class.csv")
    assert list(table.columns) == ["class", "name", "correct", "total", "accuracy"]
    assert list(table["class"]) == list(range(10)) and list(table["name"]) == list(CLASS_NAMES)
    assert table["total"].sum() == 100 and (table["correct"] <= table["total"]).all()
    best = pd.read_csv(reported["run"] / "summary.csv")["val_acc"].max()
    assert table["correct"].sum() / table["total"].sum() == pytest.approx(best, abs=1e-6)


def test_validation_json_holds_the_accuracy_with_and_without_flip_tta(reported: dict, tiny_run: Path) -> None:
    run_dir = reported["run"]
    scores = json.loads((run_dir / "validation.json").read_text())
    assert scores["val_acc"] == pytest.approx(pd.read_csv(run_dir / "summary.csv")["val_acc"].max(), abs=1e-6)
    _, config = checkpoint.load_model(tiny_run)  # the run's own training file, rebuilt split
    table, _, val_idx = competition.data.load_training_data(config)
    saved = checkpoint.Validation.load(run_dir)
    np.testing.assert_array_equal(saved.indices, val_idx)
    np.testing.assert_array_equal(saved.images, table.images[val_idx])
    rows = ImageTable(table.path, table.images[val_idx], table.labels[val_idx])
    assert scores["val_acc_tta2"] == pytest.approx(predict.accuracy_on(run_dir, rows, tta=2), abs=1e-6)
    text = (run_dir / "report.md").read_text()
    assert f"| with flip TTA (`predict --tta 2`) | {scores['val_acc_tta2']:.4f} (" in text
    assert f"| with 6-view TTA (`predict --tta 6`) | {scores['val_acc_tta6']:.4f} (" in text
    assert scores["val_acc_tta6"] == pytest.approx(predict.accuracy_on(tiny_run, rows, tta=6), abs=1e-6)


def test_report_md_links_every_picture_and_holds_the_tables(reported: dict) -> None:
    text = (reported["run"] / "report.md").read_text()
    for name in PICTURES:
        assert f"![{name[:-4]}]({name})" in text
    table = pd.read_csv(reported["run"] / "per_class.csv")
    assert report.per_class_markdown(table) in text
    summary = pd.read_csv(reported["run"] / "summary.csv")
    assert f"**{summary['val_acc'].max():.4f}**" in text and "25,290 parameters" in text
    assert "| model | `conv` |" in text and "| val_size | `100` |" in text


def test_write_report_leaves_the_run_unchanged(reported: dict) -> None:
    for name, data in reported["before"].items():
        assert (reported["run"] / name).read_bytes() == data, f"{name} changed"


def test_run_without_validation_gets_curves_and_a_report_only(reported: dict, tmp_path: Path) -> None:
    run_dir = copy_run(reported["run"], tmp_path / "noval")
    summary = pd.read_csv(run_dir / "summary.csv")
    summary[["val_loss", "val_acc"]] = math.nan
    summary.to_csv(run_dir / "summary.csv", index=False)
    (run_dir / "steps.csv").unlink()  # also as a run from before steps.csv existed
    written = report.write_report(run_dir)
    assert [p.name for p in written] == ["curves.png", "report.md"]
    assert_picture(run_dir / "curves.png")
    text = (run_dir / "report.md").read_text()
    assert "No validation split" in text and "confusion.png" not in text
    assert not (run_dir / "confusion.png").exists() and not (run_dir / "per_class.csv").exists()


def test_write_report_names_a_folder_that_is_not_a_run(tmp_path: Path) -> None:
    with pytest.raises(CompetitionError, match=str(tmp_path)):
        report.write_report(tmp_path)


def test_per_class_table_keeps_every_class_and_marks_empty_ones_nan() -> None:
    table = report.per_class_table(np.array([0, 0, 1, 1, 1]), np.array([0, 2, 1, 1, 0]))
    assert len(table) == 10 and list(table["total"][:3]) == [2, 3, 0]
    assert list(table["correct"][:2]) == [1, 2] and table["accuracy"][1] == pytest.approx(2 / 3)
    assert math.isnan(table["accuracy"][2])
    lines = report.format_per_class(table).splitlines()
    assert len(lines) == 12 and lines[0].split() == ["class", "name", "correct", "total", "accuracy", "95%", "interval"]
    assert lines[3].split()[-2:] == ["-", "-"] and lines[-1].split() == ["all", "3", "5", "0.6000", "0.2307-0.8824"]
    assert len({len(line) for line in lines}) == 1, "columns are not aligned"


def test_show_data_titles_unlabeled_rows_by_id(test_csv: Path, tmp_path: Path) -> None:
    table = read_test_csv(test_csv)
    assert report.data_titles(table, 9) == [f"id {i}" for i in range(100, 109)]
    out = report.show_data(table, 9, tmp_path / "grid.png")
    assert out == tmp_path / "grid.png"
    assert_picture(out)
    with pytest.raises(CompetitionError, match="no 'label' column"):
        report.show_data(table, 9, tmp_path / "x.png", title_by="label")


def test_show_data_titles_labeled_rows_by_class(real_data: dict, tmp_path: Path) -> None:
    table = read_test_csv(real_data["labeled_test"])
    assert report.data_titles(table, 3) == [CLASS_NAMES[k] for k in table.labels[:3]]
    assert report.data_titles(table, 2, "id") == ["id 0", "id 1"]
    assert_picture(report.show_data(table, 100, tmp_path / "grid.png"))
    train = read_train_csv(real_data["train"])
    assert report.data_titles(train, 2, "id") == ["row 1", "row 2"]


def test_compare_runs_lists_every_run_and_writes_the_plot(reported: dict, tmp_path: Path) -> None:
    noval = copy_run(reported["run"], tmp_path / "noval")
    summary = pd.read_csv(noval / "summary.csv")
    summary["val_acc"] = math.nan
    summary.to_csv(noval / "summary.csv", index=False)
    table = report.compare_runs([reported["run"], noval], tmp_path / "compare.png")
    assert list(table.columns) == ["run", "model", "best_epoch", "best_val_acc", "epochs", "seconds"]
    assert list(table["run"]) == [reported["run"].name, "noval"] and list(table["model"]) == ["conv", "conv"]
    best = pd.read_csv(reported["run"] / "summary.csv")["val_acc"].max()
    assert table["best_val_acc"][0] == pytest.approx(best) and table["epochs"][0] == 2
    assert pd.isna(table["best_val_acc"][1]) and pd.isna(table["best_epoch"][1])
    assert_picture(tmp_path / "compare.png")
