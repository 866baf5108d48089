"""competition cv: folds that partition the rows, out-of-fold figures, resume, and the fold-ensemble submission."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from competition.cli import main
from competition.data import assign_folds, fold_split, stratified_split
from conftest import stop_after_first_epoch

FOLDS, HOLDOUT = 3, 60


def cv_args(real_data: dict, runs: Path, epochs: int = 2) -> list[str]:
    return ["cv", "--folds", str(FOLDS), "--holdout", str(HOLDOUT), "--train", str(real_data["train"]),
            "--model", "fc", "--epochs", str(epochs), "--batch-size", "32", "--seed", "5", "--runs-dir", str(runs)]


@pytest.fixture(scope="module")
def finished_cv(real_data: dict, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 3-fold cv of the fc model on 400 real rows (60 held out), uninterrupted, with its submission."""
    runs = tmp_path_factory.mktemp("cv")
    out = runs / "submission.csv"
    assert main(cv_args(real_data, runs) + ["--submit", "2", "--out", str(out), "--test", str(real_data["test"])]) == 0
    (cv_dir,) = [p for p in runs.iterdir() if p.is_dir()]
    return cv_dir


def test_folds_partition_the_rows_not_held_out_and_are_stratified() -> None:
    labels = np.random.default_rng(0).choice(10, size=997, p=np.linspace(1, 3, 10) / 20)
    held = stratified_split(labels, 100, seed=4)[1]
    vals = [fold_split(labels, 5, k, 100, seed=4) for k in range(1, 6)]
    together = np.concatenate([val for _, val in vals])
    assert len(together) == len(set(together)) == 997 - 100  # each row validates exactly once…
    assert not set(together) & set(held)  # …except the held-out rows, which no fold sees
    for train, val in vals:
        assert sorted(np.concatenate([train, val])) == sorted(set(range(997)) - set(held))
    counts = np.array([np.bincount(labels[val], minlength=10) for _, val in vals])
    assert (counts.max(axis=0) - counts.min(axis=0) <= 1).all()  # every class spread evenly
    sizes = counts.sum(axis=1)
    assert sizes.max() - sizes.min() <= 1
    assert (assign_folds(labels, 5, seed=4) == assign_folds(labels, 5, seed=4)).all()
    assert (assign_folds(labels, 5, seed=4) != assign_folds(labels, 5, seed=5)).any()


def test_out_of_fold_figures_match_oof_csv(finished_cv: Path, real_data: dict) -> None:
    oof = pd.read_csv(finished_cv / "oof.csv")
    record = json.loads((finished_cv / "cv.json").read_text())
    assert len(oof) == 400 - HOLDOUT and oof["index"].is_unique
    held = stratified_split(pd.read_csv(real_data["train"])["label"].to_numpy(), HOLDOUT, 5)[1]
    assert not set(oof["index"]) & set(held)
    probs = oof[[f"prob_{c}" for c in range(10)]].to_numpy()
    assert np.allclose(probs.sum(axis=1), 1, atol=1e-4) and (probs.argmax(1) == oof["pred"]).all()
    assert record["out_of_fold"]["acc"] == pytest.approx((oof["pred"] == oof["label"]).mean())
    assert record["out_of_fold"]["acc_tta2"] == pytest.approx((oof["pred_tta2"] == oof["label"]).mean())
    for fold in record["folds"]:  # each fold's figure is its own rows of oof.csv
        mine = oof[oof["fold"] == int(fold["run"][4:])]
        assert fold["rows"] == len(mine) and fold["val_acc"] == pytest.approx((mine["pred"] == mine["label"]).mean())
    assert record["holdout"]["rows"] == HOLDOUT and len(record["holdout"]["fold_acc"]) == FOLDS
    for name in ("report.md", "curves.png", "confusion.png", "per_class.png"):
        assert (finished_cv / name).is_file()


def test_fold_ensemble_submission_passes_check(finished_cv: Path, real_data: dict, capsys) -> None:
    out = finished_cv.parent / "submission.csv"
    assert main(["check", str(out), "--test", str(real_data["test"])]) == 0
    archived = list((finished_cv.parent).glob(f"{finished_cv.name}-{FOLDS}fold-ensemble-tta2.csv"))
    assert len(archived) == 1
    capsys.readouterr()
    again = finished_cv.parent / "again.csv"
    assert main(["predict", "--run", str(finished_cv), "--tta", "2", "--test", str(real_data["test"]),
                 "--out", str(again)]) == 0
    assert f"{FOLDS}-fold ensemble" in capsys.readouterr().out
    assert again.read_text() == out.read_text()


def test_cv_stopped_by_sigint_resumes_to_the_uninterrupted_result(finished_cv: Path, real_data: dict,
                                                                 tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    err = stop_after_first_epoch(cv_args(real_data, runs), runs, "*/fold1/summary.csv")
    (cv_dir,) = runs.iterdir()
    assert f"continue the cv with: competition cv --resume {cv_dir}" in err
    assert not (cv_dir / "oof.csv").exists()
    assert main(["cv", "--resume", str(cv_dir)]) == 0
    pd.testing.assert_frame_equal(pd.read_csv(cv_dir / "oof.csv"), pd.read_csv(finished_cv / "oof.csv"))
    for fold in range(1, FOLDS + 1):
        steps = pd.read_csv(cv_dir / f"fold{fold}" / "steps.csv")
        assert list(steps["step"]) == list(range(1, len(steps) + 1))  # no epoch trained twice


@pytest.mark.parametrize("args, message", [
    (["--folds", "1"], "--folds must be at least 2, got 1."),
    (["--folds", "3", "--holdout", "400"], "--holdout 400"),
    (["--holdout", "-1"], "--holdout must be 0 or more, got -1."),
])
def test_bad_cv_options_get_one_line(args: list, message: str, real_data: dict, tmp_path: Path, capsys) -> None:
    code = main(["cv", "--train", str(real_data["train"]), "--runs-dir", str(tmp_path), *args])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not list(tmp_path.iterdir())  # nothing written


def test_resume_of_a_folder_that_is_not_a_cv_says_so(tiny_run: Path, capsys) -> None:
    assert main(["cv", "--resume", str(tiny_run)]) == 2
    assert "not a cv folder" in capsys.readouterr().err


def test_a_cv_folder_mixed_with_a_run_counts_once_as_its_folds_average(finished_cv: Path, tiny_run: Path,
                                                                      real_data: dict) -> None:
    from competition.data import read_test_csv
    from competition.predict import average_probs, ensemble_probs, run_probs

    images = read_test_csv(real_data["test"]).images[:20]
    folds = [run_probs(finished_cv / f"fold{k}", images) for k in range(1, FOLDS + 1)]
    mixed = ensemble_probs([finished_cv, tiny_run], images)
    np.testing.assert_allclose(mixed, average_probs([average_probs(folds), run_probs(tiny_run, images)]), atol=1e-6)
