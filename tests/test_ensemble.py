"""Ensemble presets (train --preset best): one run per member preset, averaged by predict; stop and resume."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from competition.cli import main
from competition.config import ENSEMBLES, PRESETS, Config
from competition.data import read_test_csv
from competition.predict import run_probs
from conftest import stop_after_first_epoch


def ensemble_args(real_data: dict, runs: Path) -> list[str]:
    return ["train", "--preset", "best", "--train", str(real_data["train"]), "--rows", "300", "--val-size", "60",
            "--epochs", "2", "--max-steps", "3", "--batch-size", "32", "--width", "16", "--seed", "3",
            "--runs-dir", str(runs)]


@pytest.fixture(scope="module")
def finished_ensemble(real_data: dict, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The best preset's members on 300 real rows (60 validating), 2 short epochs each, uninterrupted."""
    runs = tmp_path_factory.mktemp("ensemble")
    assert main(ensemble_args(real_data, runs)) == 0
    (ens_dir,) = runs.iterdir()
    return ens_dir


def test_each_member_is_its_preset_with_the_given_options(finished_ensemble: Path) -> None:
    members = [Config.load(finished_ensemble / f"member{k}" / "config.json") for k in (1, 2)]
    assert [m.preset for m in members] == list(ENSEMBLES["best"])
    for member in members:
        assert member.model == PRESETS[member.preset]["model"] and member.lr == PRESETS[member.preset]["lr"]
        assert (member.epochs, member.val_size, member.seed, member.rows, member.width) == (2, 60, 3, 300, 16)


def test_ensemble_figures_are_the_members_average_on_their_shared_rows(finished_ensemble: Path, capsys) -> None:
    record = json.loads((finished_ensemble / "ensemble.json").read_text())
    saved = [np.load(finished_ensemble / f"member{k}" / "validation.npz") for k in (1, 2)]
    assert (saved[0]["indices"] == saved[1]["indices"]).all()  # the same --val-size and --seed: the same rows
    for key, probs in (("acc", "probs"), ("acc_tta2", "tta2_probs"), ("acc_tta6", "tta6_probs")):
        log_mean = (np.log(saved[0][probs]) + np.log(saved[1][probs])) / 2  # the normalized geometric mean's order
        assert record["figures"][key] == pytest.approx((log_mean.argmax(1) == saved[0]["labels"]).mean())
    assert record["figures"]["rows"] == 60


def test_predict_picks_the_ensemble_and_averages_its_members(finished_ensemble: Path, real_data: dict,
                                                             capsys) -> None:
    out = finished_ensemble.parent / "submission.csv"
    runs_dir = str(finished_ensemble.parent)
    capsys.readouterr()
    assert main(["predict", "--runs-dir", runs_dir, "--tta", "2", "--test", str(real_data["test"]),
                 "--out", str(out)]) == 0
    assert f"ensemble {finished_ensemble} (2 runs averaged)" in capsys.readouterr().out
    assert main(["check", str(out), "--test", str(real_data["test"])]) == 0
    images = read_test_csv(real_data["test"]).images
    log_sum = sum(np.log(run_probs(finished_ensemble / f"member{k}", images, 2)) for k in (1, 2))
    assert (pd.read_csv(out)["label"].to_numpy() == log_sum.argmax(1)).all()
    assert (finished_ensemble.parent / f"{finished_ensemble.name}-tta2.csv").is_file()


def test_ensemble_stopped_by_sigint_resumes_to_the_uninterrupted_result(finished_ensemble: Path, real_data: dict,
                                                                       tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    err = stop_after_first_epoch(ensemble_args(real_data, runs), runs, "*/member1/summary.csv", timeout=120)
    (ens_dir,) = runs.iterdir()
    assert f"continue the ensemble with: competition train --resume {ens_dir}" in err
    assert main(["predict", "--run", str(ens_dir), "--test", str(real_data["test"])]) == 2  # not finished yet
    assert main(["train", "--resume", str(ens_dir)]) == 0
    figures = lambda folder: json.loads((folder / "ensemble.json").read_text())["figures"]  # noqa: E731
    assert figures(ens_dir) == figures(finished_ensemble)
    for k in (1, 2):
        again, before = (np.load(folder / f"member{k}" / "validation.npz")["probs"]
                         for folder in (ens_dir, finished_ensemble))
        np.testing.assert_allclose(again, before, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("args, message", [
    (["cv", "--preset", "best"], "preset 'best' is an ensemble of resnet and airnet64"),
    (["train", "--preset", "best", "--lr", "-1"], "--lr must be positive, got -1.0."),
    (["train", "--preset", "best", "--nnodes", "2", "--node-rank", "0", "--master", "h:1"],
     "drop --node-rank and --master"),
])
def test_bad_ensemble_options_get_one_line(args: list, message: str, real_data: dict, tmp_path: Path,
                                           capsys) -> None:
    code = main([*args, "--train", str(real_data["train"]), "--runs-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not list(tmp_path.iterdir())  # nothing written
