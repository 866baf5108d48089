"""The boards: each run's VisualDL log read back, and both viewers served, queried and drawn in Chromium."""
from __future__ import annotations

import json
import logging
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd
import pytest

from competition import board, folders
from competition.cli import main

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="no chromium here (.ci/run installs Debian's)")


def _scalars(run_dir: Path) -> dict[str, dict[int, float]]:
    """tag -> {step: value} of a run's VisualDL log, through VisualDL's own reader."""
    from visualdl import LogReader

    reader = LogReader(file_path=str(run_dir / board.VDL_DIR / board.VDL_FILE))
    return {tag: {v.id: v.value for v in reader.get_data("scalar", tag)} for tag in reader.get_tags()["scalar"]}


def test_a_runs_board_log_holds_every_epoch_once_and_the_reports_pictures(tiny_run: Path) -> None:
    pytest.importorskip("visualdl")
    from visualdl import LogReader

    summary = pd.read_csv(tiny_run / "summary.csv")
    scalars = _scalars(tiny_run)
    epochs = list(summary["epoch"])
    for tag, column in (("train/loss", "train_loss"), ("train/acc", "train_acc"), ("val/loss", "val_loss"),
                        ("val/acc", "val_acc"), ("lr", "lr"), ("seconds", "seconds")):
        assert list(scalars[tag]) == epochs  # each epoch once, at its number
        np.testing.assert_allclose(list(scalars[tag].values()), summary[column], rtol=1e-6)
    assert all(scalars["val/acc_low"][e] < scalars["val/acc"][e] < scalars["val/acc_high"][e] for e in epochs)
    steps = pd.read_csv(tiny_run / "steps.csv")
    assert len(scalars["step/loss"]) == len(steps)
    reader = LogReader(file_path=str(tiny_run / board.VDL_DIR / board.VDL_FILE))
    assert set(reader.get_tags()["image"]) == {"report/confusion", "report/mistakes"}


def test_without_visualdl_a_run_trains_and_says_so_once(train_csv: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setitem(sys.modules, "visualdl", None)  # `import visualdl` now fails as if not installed
    monkeypatch.setattr(board, "_said_missing", [])
    runs = tmp_path / "runs"
    with caplog.at_level(logging.INFO, logger="competition"):
        assert main(["train", "--train", str(train_csv), "--model", "fc", "--epochs", "2", "--val-size", "10",
                     "--runs-dir", str(runs)]) == 0
    (run_dir,) = runs.iterdir()
    assert (run_dir / "best.pdparams").is_file() and not (run_dir / board.VDL_DIR).exists()
    assert caplog.text.count("VisualDL is not installed") == 1


def test_folds_members_and_trials_are_named_under_their_folder(tmp_path: Path) -> None:
    cv = folders.create(str(tmp_path), "cv-fc")
    (cv / folders.CV_JSON).write_text("{}")
    study = tmp_path / "tune-fc"
    assert board.display_name(folders.fold_dir(cv, 2)) == f"{cv.name}/fold2"
    assert board.display_name(study / "20261203-trial4") == "tune-fc/20261203-trial4"
    assert board.display_name(tmp_path / "20261203-fc") == "20261203-fc"


# --- the viewers, as a user starts them ---------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=20) as response:
        return json.loads(response.read())


@pytest.fixture
def viewer(tmp_path: Path) -> Iterator:
    """Start `competition ARGS` (a viewer) and return the address it prints; on the way out, SIGTERM it
    and check that it stopped cleanly."""
    started: list[subprocess.Popen] = []

    def start(*args: str) -> str:
        proc = subprocess.Popen([sys.executable, "-m", "competition", *args], cwd=REPO, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        started.append(proc)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and proc.poll() is None:
            ready, _, _ = select.select([proc.stdout], [], [], 1)
            if ready:
                line = proc.stdout.readline()
                if "http://" in line:
                    return line.split()[1]
        raise AssertionError(f"no address printed: {proc.stderr.read() if proc.poll() is not None else ''}")

    yield start
    for proc in started:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 0 and "stopped." in out and "Traceback" not in err, err


def _screenshot(url: str, path: Path, budget_ms: int) -> np.ndarray:
    """The page as headless Chromium draws it, after `budget_ms` of virtual time (charts draw late)."""
    from PIL import Image

    subprocess.run([CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", f"--screenshot={path}",
                    "--window-size=1280,900", f"--virtual-time-budget={budget_ms}", url],
                   capture_output=True, timeout=120, check=True)
    return np.asarray(Image.open(path).convert("RGB")).astype(int)


@needs_chromium
def test_board_serves_a_runs_scalars_and_draws_them(tiny_run: Path, viewer, tmp_path: Path) -> None:
    pytest.importorskip("visualdl")
    address = viewer("board", str(tiny_run), "--port", str(_free_port()))
    base = address.split("/app/")[0]
    runs = _get(f"{base}/app/api/runs")["data"]
    assert runs == [tiny_run.name]  # its display name, not the log folder's path
    tags = _get(f"{base}/app/api/scalar/tags")["data"]["tags"][0]
    assert {"train/loss", "val/acc", "val/acc_low", "lr", "step/loss"} <= set(tags)
    query = urllib.parse.urlencode({"run": tiny_run.name, "tag": "val/acc"})
    served = _get(f"{base}/app/api/scalar/list?{query}")["data"]  # [wall ms, step, value]
    summary = pd.read_csv(tiny_run / "summary.csv")
    assert [step for _, step, _ in served] == list(summary["epoch"])
    np.testing.assert_allclose([value for _, _, value in served], summary["val_acc"], rtol=1e-6)
    assert set(_get(f"{base}/app/api/image/tags")["data"]["tags"][0]) == {"report/confusion", "report/mistakes"}
    page = _screenshot(address, tmp_path / "board.png", 20_000)
    charts = page[60:, :1000]  # below the header, left of the run selector
    line = (charts[..., 2] > 180) & (charts[..., 0] < 120) & (charts[..., 1] < 120)  # the run's blue curve
    assert line.sum() > 50, "the scalar page drew no curve"


@needs_chromium
def test_tune_board_serves_the_studys_trials_and_draws_them(tmp_path: Path, viewer) -> None:
    optuna = pytest.importorskip("optuna")
    pytest.importorskip("optuna_dashboard")
    runs = tmp_path / "runs"
    runs.mkdir()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.create_study(study_name="tiny", storage=f"sqlite:///{runs / 'tune.db'}", direction="maximize")
    study.optimize(lambda trial: trial.suggest_float("lr", 1e-3, 1e-1, log=True), n_trials=3)
    address = viewer("tune", "--board", "--study", "tiny", "--runs-dir", str(runs), "--port", str(_free_port()))
    base, study_page = address.split("/dashboard")[0], address
    (summary,) = _get(f"{base}/api/studies")["study_summaries"]
    assert summary["study_name"] == "tiny" and study_page.endswith(f"/dashboard/studies/{summary['study_id']}")
    served = _get(f"{base}/api/studies/{summary['study_id']}")["trials"]
    assert [t["values"][0] for t in served] == pytest.approx([t.value for t in study.trials])
    page = _screenshot(study_page, tmp_path / "study.png", 10_000)
    history = page[150:640, 380:1250]  # the History chart
    line = (history[..., 2] > 200) & (history[..., 0] > 120) & (history[..., 1] < 140)  # its purple line
    assert line.sum() > 50, "the study page drew no history"


# --- bad input: one line each ------------------------------------------------------------------------------

def test_a_port_in_use_is_named_with_the_way_out(tiny_run: Path, capsys: pytest.CaptureFixture) -> None:
    pytest.importorskip("visualdl")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["board", str(tiny_run), "--port", str(port)]) == 2
    assert f"port {port} on 127.0.0.1 is in use (another visualdl?); pick another with --port N." in \
        capsys.readouterr().err


def test_no_logs_no_study_and_no_viewer_each_get_one_line(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    import optuna

    runs = tmp_path / "runs"
    runs.mkdir()
    assert main(["board", "--runs-dir", str(runs)]) == 2
    assert f"no board logs yet in {runs}: each run writes them to runs/<run>/vdl/" in capsys.readouterr().err
    assert main(["tune", "--board", "--runs-dir", str(runs)]) == 2
    assert f"no studies yet in {runs / 'tune.db'}: start one with competition tune --trials N" in \
        capsys.readouterr().err
    optuna.create_study(study_name="real", storage=f"sqlite:///{runs / 'tune.db'}")
    assert main(["tune", "--board", "--study", "nope", "--runs-dir", str(runs)]) == 2
    assert "no study 'nope' in" in capsys.readouterr().err
    real_find_spec = board.importlib.util.find_spec
    monkeypatch.setattr(board.importlib.util, "find_spec",
                        lambda name, *a: None if name == "optuna_dashboard" else real_find_spec(name, *a))
    assert main(["tune", "--board", "--runs-dir", str(runs)]) == 2
    assert "optuna-dashboard is not installed; install it with: pip install visualdl optuna-dashboard" in \
        capsys.readouterr().err
