"""Interrupted runs resume to exactly the metrics of an uninterrupted run."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from competition import data, parallel
from competition.cli import main
from conftest import METRICS, REPO, epochs_done, random_images, wait_for_first_epoch

EPOCHS = 8


def train_args(real_data: dict, runs: Path) -> list[str]:
    return ["train", "--train", str(real_data["train"]), "--model", "cnn", "--epochs", str(EPOCHS),
            "--val-size", "100", "--batch-size", "16", "--seed", "3", "--runs-dir", str(runs)]


@pytest.fixture(scope="module")
def uninterrupted(real_data: dict, tmp_path_factory: pytest.TempPathFactory) -> pd.DataFrame:
    runs = tmp_path_factory.mktemp("whole")
    assert main(train_args(real_data, runs)) == 0
    (run,) = runs.iterdir()
    return pd.read_csv(run / "summary.csv")[METRICS]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGKILL],
                         ids=["INT", "TERM", "HUP", "KILL"])
def test_signal_after_first_epoch_then_resume_matches_uninterrupted(
        real_data: dict, tmp_path: Path, uninterrupted: pd.DataFrame, sig: signal.Signals) -> None:
    runs = tmp_path / "runs"
    proc = subprocess.Popen([sys.executable, "-m", "competition", *train_args(real_data, runs)],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_first_epoch(proc, runs)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    (run,) = runs.iterdir()
    done = epochs_done(runs)
    assert 1 <= done < EPOCHS, "the run finished before the signal; make epochs longer"
    if sig == signal.SIGKILL:
        assert proc.returncode == -signal.SIGKILL
    else:
        assert proc.returncode == 130 and "Traceback" not in err, err[-3000:]
        assert f"continue with: competition train --resume {run}" in err
    assert main(["train", "--resume", str(run)]) == 0
    resumed = pd.read_csv(run / "summary.csv")[METRICS]
    pd.testing.assert_frame_equal(resumed, uninterrupted)
    steps = pd.read_csv(run / "steps.csv")
    assert list(steps["step"]) == list(range(1, len(steps) + 1))  # no epoch recorded twice


def test_resume_refuses_options_that_would_change_the_run(tiny_run: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["train", "--resume", str(tiny_run), "--lr", "0.5", "--model", "fc"]) == 2
    assert "drop --lr, --model (only --epochs, --node-rank and --master may be given)" in capsys.readouterr().err


def test_resume_of_a_folder_that_is_not_a_run_says_so(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["train", "--resume", str(tmp_path)]) == 2
    assert f"{tmp_path}: not a run folder (no config.json); nothing to resume." in capsys.readouterr().err


def test_resume_can_extend_a_finished_run(real_data: dict, tmp_path: Path) -> None:
    args = ["train", "--train", str(real_data["train"]), "--model", "fc", "--epochs", "1",
            "--val-size", "100", "--runs-dir", str(tmp_path)]
    assert main(args) == 0
    (run,) = tmp_path.iterdir()
    assert main(["train", "--resume", str(run), "--epochs", "3"]) == 0
    assert list(pd.read_csv(run / "summary.csv")["epoch"]) == [1, 2, 3]
    assert '"epochs": 3' in (run / "config.json").read_text()


def test_a_loader_iterator_cut_short_by_a_stop_leaves_no_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    # A stop signal inside paddle.io's iterator __init__ leaves it without `_shutdown`; its __del__
    # then failed with a traceback on the terminal (seen once in about twenty HUP runs).
    import gc

    from paddle.io.dataloader.dataloader_iter import _DataLoaderIterSingleProcess

    from competition import train
    passed_on = []
    monkeypatch.setattr(sys, "unraisablehook", lambda u: passed_on.append(str(u.exc_value)))
    before = sys.unraisablehook

    class Other:
        def __del__(self) -> None:
            raise AttributeError("'Other' object has no attribute '_shutdown'")

    with train._half_built_loaders_quiet():
        half_built = _DataLoaderIterSingleProcess.__new__(_DataLoaderIterSingleProcess)
        other = Other()
        del half_built, other
        gc.collect()
    assert passed_on == ["'Other' object has no attribute '_shutdown'"]  # only Paddle's is dropped
    assert sys.unraisablehook is before  # the process's hook is back after the run

    def stopped_in_the_loader() -> None:
        half_built = _DataLoaderIterSingleProcess.__new__(_DataLoaderIterSingleProcess)  # noqa: F841
        raise KeyboardInterrupt

    try:  # the stop reaches the caller with the iterator in its traceback's frames
        with train._half_built_loaders_quiet():
            stopped_in_the_loader()
    except KeyboardInterrupt:
        pass
    gc.collect()
    assert passed_on == ["'Other' object has no attribute '_shutdown'"] and sys.unraisablehook is before


def test_a_stop_signal_inside_a_held_block_is_answered_as_the_block_ends() -> None:
    finished = []
    with parallel.stop_signals_interrupt(), pytest.raises(KeyboardInterrupt):
        with parallel.stop_signals_deferred():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.05)  # without the hold, the KeyboardInterrupt is raised here
            finished.append("block")
    assert finished == ["block"]
    with pytest.raises(KeyboardInterrupt), parallel.stop_signals_deferred():  # Python's own Ctrl-C handler too
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)
        finished.append("again")
    assert finished == ["block", "again"]


def test_a_stop_inside_an_epoch_leaves_no_reader_thread_behind() -> None:
    # A reader thread alive at exit aborted the interpreter (exit -6 instead of 130).
    before = set(threading.enumerate())  # reader threads of loaders left by other tests' --max-steps runs
    loader = data.make_loader(data.FashionMNIST(random_images(64).astype(np.uint8), np.arange(64) % 10), 16,
                              shuffle=False)
    with pytest.raises(KeyboardInterrupt), parallel.batches_of(loader) as batches:
        for _ in batches:
            raise KeyboardInterrupt
    assert not [t.name for t in set(threading.enumerate()) - before if "_thread_loop" in t.name]
