"""Behaviour a user relies on: which run predict picks, seeds, epoch coverage, show/compare/report."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from competition.cli import main
from competition.data import FashionMNIST, make_loader
from conftest import random_images, write_csv

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _train(train_csv: Path, runs: Path, seed: int) -> Path:
    """Train one small fc run into `runs` and return its new folder."""
    before = set(runs.iterdir()) if runs.exists() else set()
    args = ["train", "--train", str(train_csv), "--model", "fc", "--epochs", "2", "--val-size", "10",
            "--batch-size", "8", "--seed", str(seed), "--runs-dir", str(runs)]
    assert main(args) == 0
    (run,) = set(runs.iterdir()) - before
    return run


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two fc runs in one runs dir, identical but for --seed; `new` is trained a clock second later."""
    folder = tmp_path_factory.mktemp("two_runs")
    train_csv = write_csv(folder / "train.csv", random_images(50), np.arange(50) % 10)
    test_csv = write_csv(folder / "test.csv", random_images(20, seed=1), ids=list(range(100, 120)))
    runs = folder / "runs"
    old = _train(train_csv, runs, seed=1)
    # Cross a second boundary so the new run is newer by its folder timestamp as well as by its files.
    time.sleep(1.01 - time.time() % 1)
    new = _train(train_csv, runs, seed=2)
    assert old.name < new.name and not new.name.startswith(old.name)
    return {"old": old, "new": new, "runs": runs, "train": train_csv, "test": test_csv}


def _predict(args: list[str], out: Path, capsys: pytest.CaptureFixture) -> tuple[str, list[str]]:
    """Run predict; return what it printed and the archived file names beside the submission."""
    capsys.readouterr()
    assert main(["predict", *args, "--out", str(out)]) == 0
    archived = sorted(p.name for p in out.parent.iterdir() if p != out)
    return capsys.readouterr().out, archived


def test_predict_without_run_uses_the_newest_run(two_runs: dict, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture) -> None:
    old, new = two_runs["old"], two_runs["new"]
    test = ["--test", str(two_runs["test"])]
    printed, archived = _predict(["--runs-dir", str(two_runs["runs"]), *test], tmp_path / "a" / "s.csv", capsys)
    assert len(archived) == 1 and archived[0].startswith(f"{new.name}-val"), archived
    assert f"run {new}:" in printed and f"archived as {tmp_path / 'a' / archived[0]}" in printed
    assert str(old) not in printed
    # An explicit --run wins over the newest.
    printed, archived = _predict(["--run", str(old), *test], tmp_path / "b" / "s.csv", capsys)
    assert len(archived) == 1 and archived[0].startswith(f"{old.name}-val"), archived
    assert f"run {old}:" in printed and str(new) not in printed


def test_a_different_seed_gives_different_losses(two_runs: dict) -> None:
    def losses(run: Path) -> list:
        return pd.read_csv(run / "summary.csv")[["train_loss", "val_loss"]].values.tolist()

    old, new = losses(two_runs["old"]), losses(two_runs["new"])
    assert len(old) == len(new) == 2
    assert old != new
    assert all(a[0] != b[0] for a, b in zip(old, new))  # every epoch's train loss differs


def _row_indices(loader) -> list[list[int]]:
    """The row indices of each batch, read back from pixel 0 (which holds the index)."""
    return [list(np.rint(x.numpy()[:, 0, 0, 0] * 255).astype(int)) for x, _ in loader]


def _indexed_dataset(n: int) -> FashionMNIST:
    images = np.zeros((n, 784), dtype=np.uint8)
    images[:, 0] = np.arange(n)
    return FashionMNIST(images, np.arange(n, dtype=np.int64) % 10)


def test_shuffled_loader_yields_every_row_once_per_epoch_in_a_new_order() -> None:
    n, batch = 203, 16  # 203 = 12 * 16 + 11: the last batch is partial
    loader = make_loader(_indexed_dataset(n), batch, shuffle=True)
    orders = []
    for epoch in (1, 2):
        loader.dataset.set_epoch(epoch)
        batches = _row_indices(loader)
        assert [len(b) for b in batches] == [batch] * 12 + [11]
        seen = [i for b in batches for i in b]
        assert sorted(seen) == list(range(n))  # each row exactly once
        orders.append(seen)
    assert orders[0] != orders[1] and orders[0] != list(range(n))


def test_unshuffled_loader_yields_every_row_once_in_file_order() -> None:
    n = 203
    batches = _row_indices(make_loader(_indexed_dataset(n), 16, shuffle=False))
    assert [i for b in batches for i in b] == list(range(n))


def test_show_data_writes_a_png(train_csv: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "pics" / "sample.png"
    assert main(["show", "data", "--file", str(train_csv), "--n", "9", "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == PNG_SIGNATURE
    assert str(out) in capsys.readouterr().out


def test_compare_prints_both_runs_and_writes_a_png(two_runs: dict, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture) -> None:
    old, new = two_runs["old"], two_runs["new"]
    out = tmp_path / "compare.png"
    capsys.readouterr()
    assert main(["compare", str(old), str(new), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert old.name in printed and new.name in printed and "best_val_acc" in printed
    assert out.read_bytes()[:8] == PNG_SIGNATURE


def test_compare_with_a_folder_that_is_not_a_run_fails_in_one_line(two_runs: dict, tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture) -> None:
    not_a_run = tmp_path / "holiday-photos"
    not_a_run.mkdir()
    out = tmp_path / "compare.png"
    capsys.readouterr()
    assert main(["compare", str(two_runs["old"]), str(not_a_run), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and str(not_a_run) in err, err
    assert not out.exists()  # no half-made figure


def test_report_rewrites_report_md_with_the_best_accuracy(two_runs: dict,
                                                          capsys: pytest.CaptureFixture) -> None:
    run = two_runs["old"]
    (run / "report.md").unlink()  # training wrote one; the command must write it again
    capsys.readouterr()
    assert main(["report", str(run)]) == 0
    printed = [Path(line) for line in capsys.readouterr().out.splitlines()]
    assert run / "report.md" in printed and all(path.is_file() for path in printed)
    best = pd.read_csv(run / "summary.csv")["val_acc"].max()
    assert f"{best:.4f}" in (run / "report.md").read_text()
