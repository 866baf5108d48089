"""The command line end to end: train -> predict -> evaluate, and bad input."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import paddle
import pytest

from competition.cli import main
from competition.data import FashionMNIST, make_loader, read_train_csv
from competition.models import build_model
from competition.stats import accuracy_text
from competition.train import evaluate, train_one_epoch
from conftest import REPO, random_images, write_csv


def run_cli(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    """The CLI in a fresh process, as a user would run it."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "competition", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_run_folder_holds_config_summary_and_checkpoint(tiny_run: Path) -> None:
    config = json.loads((tiny_run / "config.json").read_text())
    assert config["model"] == "conv" and config["epochs"] == 2 and config["val_size"] == 100
    summary = pd.read_csv(tiny_run / "summary.csv")
    assert list(summary.columns[:7]) == ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds"]
    assert list(summary["epoch"]) == [1, 2]
    assert summary["val_acc"].between(0, 1).all() and (summary["seconds"] > 0).all()
    assert (tiny_run / "best.pdparams").is_file() and not (tiny_run / "best.pdopt").exists()
    ran = json.loads((tiny_run / "runtime.json").read_text())
    assert ran["device"] == "cpu" and ran["nproc"] == 1 and ran["kernels"] in ("onednn", "paddle")
    assert "[Train]" in (tiny_run / "train.log").read_text()


def test_predict_writes_a_valid_submission_and_an_archive(tiny_run: Path, real_data: dict, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "subs" / "submission.csv"
    assert main(["predict", "--run", str(tiny_run), "--test", str(real_data["test"]), "--out", str(out)]) == 0
    submission = pd.read_csv(out)
    test_ids = pd.read_csv(real_data["test"])["id"]
    assert list(submission.columns) == ["id", "label"]
    assert list(submission["id"]) == list(test_ids)
    assert submission["label"].dtype == np.int64 and submission["label"].between(0, 9).all()
    val_acc = pd.read_csv(tiny_run / "summary.csv")["val_acc"].max()
    archived = out.parent / f"{tiny_run.name}-val{val_acc:.4f}.csv"
    assert archived.read_bytes() == out.read_bytes()
    printed = capsys.readouterr().out
    assert f"validation accuracy {accuracy_text(val_acc, 100)}" in printed and str(out) in printed
    # A second prediction keeps the first archive and adds another.
    assert main(["predict", "--run", str(tiny_run), "--test", str(real_data["test"]), "--out", str(out)]) == 0
    assert archived.exists() and (out.parent / f"{archived.stem}-2.csv").exists()


def test_predict_keeps_the_id_column_name(tiny_run: Path, tmp_path: Path) -> None:
    test = write_csv(tmp_path / "t.csv", random_images(5), ids=["q", "w", "e", "r", "t"], id_name="ID")
    out = tmp_path / "s.csv"
    assert main(["predict", "--run", str(tiny_run), "--test", str(test), "--out", str(out)]) == 0
    assert out.read_text().splitlines()[0] == "ID,label"
    assert list(pd.read_csv(out)["ID"]) == ["q", "w", "e", "r", "t"]


def test_evaluate_scores_a_labeled_test_file(tiny_run: Path, real_data: dict,
                                             capsys: pytest.CaptureFixture) -> None:
    assert main(["evaluate", "--run", str(tiny_run), "--test", str(real_data["labeled_test"])]) == 0
    printed = capsys.readouterr().out
    accuracy = float(printed.split(": ")[1].split()[0])
    assert 0.3 < accuracy <= 1.0 and "(100 rows)" in printed  # well above chance after 2 epochs


def test_predict_defaults_to_newest_run(tiny_run: Path, real_data: dict, tmp_path: Path) -> None:
    out = tmp_path / "s.csv"
    code = main(["predict", "--runs-dir", str(tiny_run.parent), "--test", str(real_data["test"]), "--out", str(out)])
    assert code == 0 and len(out.read_text().splitlines()) == 101


def test_same_seed_gives_the_same_run(train_csv: Path, tmp_path: Path) -> None:
    def val_acc(runs: Path) -> list:
        args = ["train", "--train", str(train_csv), "--model", "fc", "--epochs", "2", "--val-size", "10",
                "--batch-size", "8", "--runs-dir", str(runs)]
        assert main(args) == 0
        (run,) = runs.iterdir()
        return pd.read_csv(run / "summary.csv")[["train_loss", "val_loss"]].values.tolist()

    assert val_acc(tmp_path / "a") == val_acc(tmp_path / "b")


def test_rows_limits_the_training_file(train_csv: Path, tmp_path: Path) -> None:
    args = ["train", "--train", str(train_csv), "--model", "fc", "--epochs", "1", "--rows", "30",
            "--val-size", "10", "--max-steps", "1", "--runs-dir", str(tmp_path / "runs")]
    assert main(args) == 0
    (run,) = (tmp_path / "runs").iterdir()
    assert "20 training rows, 10 validation rows" in (run / "train.log").read_text()


def test_train_one_epoch_stops_after_max_steps_and_evaluate_returns_metrics(train_csv: Path) -> None:
    table = read_train_csv(train_csv)
    dataset = FashionMNIST(table.images, table.labels)
    model = build_model("fc")
    optimizer = paddle.optimizer.Adam(parameters=model.parameters())
    metrics, losses = train_one_epoch(model, make_loader(dataset, 4, shuffle=True), optimizer, max_steps=3)
    assert metrics["steps"] == 3 and metrics["loss"] > 0 and 0 <= metrics["acc"] <= 1
    assert len(losses) == 3 and metrics["loss"] == pytest.approx(sum(losses) / 3)
    assert set(evaluate(model, make_loader(dataset, 16, shuffle=False))) == {"loss", "acc", "samples"}


def _existing_submission(tmp_path: Path) -> Path:
    out = tmp_path / "submissions" / "submission.csv"
    out.parent.mkdir()
    out.write_text("id,label\n0,3\n")
    return out


BAD_TRAIN_OPTIONS = {
    "unknown model": (["--model", "nope"], "unknown model 'nope'"),
    "zero epochs": (["--epochs", "0"], "--epochs must be at least 1, got 0"),
    "negative epochs": (["--epochs", "-3"], "--epochs must be at least 1"),
    "split as large as data": (["--val-size", "50"], "--val-size 50 holds out 50 of the 50 training rows"),
    "fraction split": (["--val-size", "1.5"], "a row count must be a whole number"),
    "bad number": (["--lr", "fast"], "invalid float value: 'fast'"),
    "no gpu": (["--device", "gpu"], "--device gpu: this Paddle build has no CUDA support or sees no GPU"),
}


def exit_code(args: list[str]) -> int:
    """main()'s exit code, whether it returns it or argparse exits."""
    try:
        return main(args)
    except SystemExit as exc:
        return exc.code


@pytest.mark.parametrize("case", list(BAD_TRAIN_OPTIONS))
def test_impossible_training_options_fail_in_one_line(train_csv: Path, tmp_path: Path, case: str,
                                                      capsys: pytest.CaptureFixture) -> None:
    if case == "no gpu" and paddle.device.cuda.device_count() > 0:
        pytest.skip("this machine has a GPU")
    options, fragment = BAD_TRAIN_OPTIONS[case]
    code = exit_code(["train", "--train", str(train_csv), "--runs-dir", str(tmp_path / "runs"), *options])
    err = capsys.readouterr().err
    assert code == 2 and fragment in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "runs").exists()  # refused before any run folder is made


def test_bad_test_file_leaves_the_existing_submission_untouched(tiny_run: Path, tmp_path: Path) -> None:
    out = _existing_submission(tmp_path)
    bad = write_csv(tmp_path / "dup.csv", random_images(3), ids=[5, 5, 6])
    result = run_cli("predict", "--run", str(tiny_run), "--test", str(bad), "--out", str(out))
    assert result.returncode == 2
    assert result.stderr.strip() == (f"competition predict: error: {bad}: column 'id' has duplicate ids (5); "
                                     "expected each test row to have its own id.")
    assert "Traceback" not in result.stderr + result.stdout
    assert out.read_text() == "id,label\n0,3\n" and sorted(p.name for p in out.parent.iterdir()) == ["submission.csv"]


@pytest.mark.parametrize("content, fragment", [
    (b"", "the file is empty"),
    (b"\x00\x01\x02\xff\xfe" * 100, "not"),
    (b"label;pixel1;pixel2\n1;2;3\n", "separated by ';'"),
])
def test_bad_files_through_the_cli_exit_nonzero_without_traceback(tmp_path: Path, content: bytes,
                                                                  fragment: str) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_bytes(content)
    result = run_cli("train", "--train", str(bad), "--runs-dir", str(tmp_path / "runs"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert str(bad) in result.stderr and fragment in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_missing_data_message_lists_places_and_exits_nonzero(tmp_path: Path) -> None:
    env_free = run_cli("train", "--data-dir", str(tmp_path / "nowhere"), cwd=tmp_path)
    assert env_free.returncode == 2 and "Traceback" not in env_free.stderr
    assert "nowhere/fashion-mnist_train.csv.gz" in env_free.stderr and "download" in env_free.stderr


def test_predict_without_any_run_says_so(tmp_path: Path) -> None:
    result = run_cli("predict", "--runs-dir", str(tmp_path / "runs"), cwd=tmp_path)
    assert result.returncode == 2 and "no trained run in" in result.stderr


@pytest.mark.parametrize("options, fragment", [
    (["--nnodes", "2"], "--nnodes 2 needs --node-rank from 0 to 1 for this machine, got None."),
    (["--nnodes", "2", "--node-rank", "0", "--master", "nohost"], "needs --master HOST:PORT"),
    (["--node-rank", "1"], "--node-rank and --master are for multi-node jobs"),
])
def test_bad_node_options_fail_in_one_line_before_a_run_folder(train_csv: Path, tmp_path: Path, options: list,
                                                                 fragment: str, capsys: pytest.CaptureFixture) -> None:
    code = main(["train", "--train", str(train_csv), "--runs-dir", str(tmp_path / "runs"), *options])
    err = capsys.readouterr().err
    assert code == 2 and fragment in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "runs").exists()


def test_predict_with_tta_says_the_validation_accuracy_with_tta(tiny_run: Path, real_data: dict, tmp_path: Path,
                                                                capsys: pytest.CaptureFixture) -> None:
    from competition.checkpoint import Validation

    scores = Validation.load(tiny_run).accuracies()
    out = tmp_path / "s.csv"
    # --tta alone: six views, what bash run.sh submits and submit() defaults to
    assert main(["predict", "--run", str(tiny_run), "--tta", "--test", str(real_data["test"]), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "with 6 views of each test image" in printed
    tta = accuracy_text(scores["val_acc_tta6"], 100)  # tiny_run holds out 100 rows
    assert f"validation accuracy {tta} with TTA ({scores['val_acc']:.2%} without)" in printed
