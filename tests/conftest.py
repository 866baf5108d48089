"""Small CSVs written in tmp_path, and a tiny trained run shared by the CLI tests."""
from __future__ import annotations

import gzip as gzip_module
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd
import pytest

from competition.cli import main

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data" / "fashion-mnist"
METRICS = ["epoch", "train_loss", "train_acc", "val_loss", "val_acc"]  # the summary.csv columns runs must repeat


def epochs_done(runs: Path, summary_glob: str = "*/summary.csv") -> int:
    """Epochs in the first summary.csv under `runs` matching the glob (0 before one exists)."""
    summaries = list(runs.glob(summary_glob))
    return len(summaries[0].read_text().splitlines()) - 1 if summaries else 0


def wait_for_first_epoch(proc: subprocess.Popen, runs: Path, summary_glob: str = "*/summary.csv") -> None:
    """Wait (up to 2 minutes) until a run under `runs` has finished an epoch, or `proc` has ended."""
    deadline = time.monotonic() + 120
    while epochs_done(runs, summary_glob) < 1 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)


def stop_after_first_epoch(args: list[str], runs: Path, summary_glob: str, timeout: float = 60) -> str:
    """Run `competition ARGS` in a subprocess, SIGINT it once a run under `runs` has finished an epoch, and
    return its stderr, asserting the clean stop (exit 130, no traceback)."""
    proc = subprocess.Popen([sys.executable, "-m", "competition", *args], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_first_epoch(proc, runs, summary_glob)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 130 and "Traceback" not in err, err
    return err


def pixel_names(start: int = 1) -> list[str]:
    return [f"pixel{i}" for i in range(start, start + 784)]


def random_images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, 784), dtype=np.int64)


def write_csv(path: Path, images: np.ndarray, labels: Optional[np.ndarray] = None,
              ids: Optional[list] = None, id_name: str = "id", pixel_start: int = 1,
              bom: bool = False, crlf: bool = False, gzip: bool = False,
              columns: Optional[list[str]] = None) -> Path:
    """Write a contest-style CSV; `columns` reorders the columns."""
    frame = pd.DataFrame(images, columns=pixel_names(pixel_start))
    if labels is not None:
        frame.insert(0, "label", labels)
    if ids is not None:
        frame.insert(0, id_name, ids)
    if columns is not None:
        frame = frame[columns]
    text = frame.to_csv(index=False, lineterminator="\r\n" if crlf else "\n")
    data = (b"\xef\xbb\xbf" if bom else b"") + text.encode()
    path.write_bytes(gzip_module.compress(data) if gzip else data)
    return path


@pytest.fixture
def train_csv(tmp_path: Path) -> Path:
    """A 50-row training CSV with every class."""
    labels = np.arange(50) % 10
    return write_csv(tmp_path / "train.csv", random_images(50), labels)


@pytest.fixture
def test_csv(tmp_path: Path) -> Path:
    """A 20-row test CSV with ids 100…119."""
    return write_csv(tmp_path / "test.csv", random_images(20, seed=1), ids=list(range(100, 120)))


def _shared_rows(name: str, nrows: int) -> pd.DataFrame:
    path = SHARED / f"{name}.gz"
    if not path.exists():
        pytest.skip(f"{path} is not available")
    return pd.read_csv(path, nrows=nrows)


@pytest.fixture(scope="session")
def real_data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """400 real training rows, 100 real test rows and a labeled copy of 100 training rows."""
    folder = tmp_path_factory.mktemp("real")
    train = _shared_rows("fashion-mnist_train.csv", 500)
    train.iloc[:400].to_csv(folder / "train.csv", index=False)
    train.iloc[400:].to_csv(folder / "labeled_test.csv", index=False)
    _shared_rows("fashion-mnist_test_data.csv", 100).to_csv(folder / "test.csv", index=False)
    return {"dir": folder, "train": folder / "train.csv", "test": folder / "test.csv",
            "labeled_test": folder / "labeled_test.csv"}


def cnn_train_command(real_data: dict[str, Path], runs: Path, epochs: int, *extra: str) -> list[str]:
    """The command line of `competition train` for the small cnn on the real rows."""
    return [sys.executable, "-m", "competition", "train", "--train", str(real_data["train"]), "--model", "cnn",
            "--epochs", str(epochs), "--val-size", "100", "--batch-size", "16", "--seed", "5",
            "--runs-dir", str(runs), *extra]


@pytest.fixture(scope="session")
def two_process_run(real_data: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The small cnn trained for 2 epochs by 2 processes on one node; shared, since each such run takes
    about 10 s (starting three processes, then the report), for tests that only read it."""
    runs = tmp_path_factory.mktemp("two-process")
    result = subprocess.run(cnn_train_command(real_data, runs, 2, "--nproc", "2"), cwd=REPO,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    (run_dir,) = runs.iterdir()
    return run_dir


@pytest.fixture(scope="session")
def tiny_run(real_data: dict[str, Path]) -> Path:
    """A run trained for one short epoch on real rows."""
    runs = real_data["dir"] / "runs"
    code = main(["train", "--train", str(real_data["train"]), "--model", "conv", "--epochs", "2",
                 "--val-size", "100", "--runs-dir", str(runs)])
    assert code == 0
    (run_dir,) = runs.iterdir()
    return run_dir

# Tests train in-process unless they ask for --nproc themselves.
os.environ.setdefault("COMPETITION_NPROC", "1")
os.environ.pop("COMPETITION_STARTED_AT", None)  # a budget in a test counts from its own command
