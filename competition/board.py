"""Live dashboards: each run's VisualDL log (runs/<run>/vdl/, written by rank 0 as it trains) and the two
viewers, VisualDL for runs (`competition board`) and optuna-dashboard for studies (`competition tune --board`).

The writer is optional: without VisualDL installed a run trains as before and says so once.
"""
from __future__ import annotations

import contextlib
import errno
import importlib.util
import logging
import math
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Optional, Sequence

from . import folders, parallel
from .errors import CompetitionError

log = logging.getLogger("competition")

VDL_DIR = "vdl"  # in each run folder: VisualDL's log
VDL_FILE = "vdlrecords.run.log"  # VisualDL reads files named vdlrecords.*
PORTS = {"visualdl": 8040, "optuna-dashboard": 8080}  # each viewer's own default port
INSTALL = "pip install visualdl optuna-dashboard (bash run.sh installs both)"
START_S = 60.0  # how long a viewer may take to answer its first request
_said_missing: list[bool] = []  # "VisualDL is not installed" is said once per process


class BoardLog:
    """A run folder's VisualDL log, written by rank 0 (`active`); does nothing elsewhere or without VisualDL."""

    def __init__(self, run_dir: Path, active: bool):
        self.writer: Any = None
        self.seconds = 0.0  # spent inside VisualDL's calls (BENCHMARKS.md: its cost against an epoch's)
        self.epochs = 0
        if active:
            self.writer = _open_writer(Path(run_dir))

    def epoch(self, row: dict[str, float], interval: tuple[float, float], step_losses: Sequence[float]) -> None:
        """One finished epoch: its summary row (losses, accuracies, lr, seconds), the validation accuracy's
        95% interval, and each step's training loss (steps numbered from the run's first)."""
        if self.writer is None:
            return
        started = time.perf_counter()
        epoch = int(row["epoch"])
        for tag, key in (("train/loss", "train_loss"), ("train/acc", "train_acc"), ("val/loss", "val_loss"),
                         ("val/acc", "val_acc"), ("lr", "lr"), ("seconds", "seconds")):
            if not math.isnan(row[key]):
                self.writer.add_scalar(tag=tag, value=float(row[key]), step=epoch)
        if not math.isnan(interval[0]):
            self.writer.add_scalar(tag="val/acc_low", value=float(interval[0]), step=epoch)
            self.writer.add_scalar(tag="val/acc_high", value=float(interval[1]), step=epoch)
        first = (epoch - 1) * len(step_losses)
        for k, loss in enumerate(step_losses):
            self.writer.add_scalar(tag="step/loss", value=float(loss), step=first + k + 1)
        self.seconds += time.perf_counter() - started
        self.epochs += 1

    def close(self) -> None:
        """Flush the log and say what writing it cost."""
        if self.writer is None:
            return
        started = time.perf_counter()
        self.writer.close()
        self.seconds += time.perf_counter() - started
        self.writer = None
        if self.epochs:
            log.info("board log: %.1f ms in VisualDL's writer over %d epochs", self.seconds * 1000, self.epochs)


def add_images(run_dir: Path, images: dict[str, Path]) -> None:
    """The report's pictures (tag: PNG file) in the run's VisualDL log; nothing without VisualDL."""
    writer = _open_writer(Path(run_dir))
    if writer is None:
        return
    import numpy as np
    from PIL import Image  # a VisualDL requirement

    with contextlib.closing(writer):
        for tag, path in images.items():
            if Path(path).is_file():
                with Image.open(path) as picture:
                    writer.add_image(tag=tag, img=np.asarray(picture.convert("RGB")), step=0)


def _open_writer(run_dir: Path) -> Any:
    """VisualDL's LogWriter on runs/<run>/vdl/, shown under the run's display name; None without VisualDL."""
    try:
        from visualdl import LogWriter
    except ImportError:
        if not _said_missing:
            _said_missing.append(True)
            log.info("VisualDL is not installed, so no board log is written (%s)", INSTALL)
        return None
    # One file that every writer appends to: VisualDL reads only the newest file of a folder, so a resumed
    # run's or the report's own file would hide the epochs written before.
    return LogWriter(logdir=str(run_dir / VDL_DIR), file_name=VDL_FILE, display_name=display_name(run_dir))


def display_name(run_dir: Path) -> str:
    """A run's name in the board's run selector: cv folds, ensemble members and tune trials under their
    folder's name (`<cv>/fold2`), other runs under their own."""
    run_dir = Path(run_dir)
    parent = run_dir.parent
    if folders.kind(parent) != "run" or folders.is_study(parent):
        return f"{parent.name}/{run_dir.name}"
    return run_dir.name


def log_dirs(paths: Sequence[Path]) -> list[Path]:
    """The VisualDL log folders in and under `paths` (run, cv, ensemble or study folders, or a runs folder)."""
    found = {log_file.parent for path in paths for log_file in Path(path).glob(f"**/{VDL_DIR}/vdlrecords.*")}
    return sorted(found)


# The viewers: each runs as a child process, in its own session so that a Ctrl-C reaches us first and we
# stop it; its output goes to a temporary file shown only when it fails to start.
def serve_runs(paths: Sequence[Path], runs_dir: str, host: str, port: Optional[int]) -> int:
    """Start VisualDL on the named run folders (default: the runs folder) and wait for Ctrl-C or SIGTERM."""
    _require("visualdl", "VisualDL")
    for path in paths:
        if not Path(path).is_dir():
            raise CompetitionError(f"{path}: no such run folder.")
    where = list(paths) or [Path(runs_dir)]
    if not log_dirs(where):
        names = ", ".join(map(str, where))
        raise CompetitionError(f"no board logs yet in {names}: each run writes them to runs/<run>/{VDL_DIR}/ as it "
                               "trains (with VisualDL installed); train one first.")
    port = port or PORTS["visualdl"]
    args = ["--logdir", *map(str, where), "--host", host, "--port", str(port), "--disable-telemetry",
            "--language", "en"]  # without a language VisualDL's pages fail for a client that sends none
    return _serve("visualdl", "from visualdl.server.app import main; main()", args, host, port,
                  "/app/api/runs", "/app/scalar", "VisualDL")


def serve_study(storage_url: str, study_path: str, host: str, port: Optional[int]) -> int:
    """Start optuna-dashboard on a study storage (`study_path`: the page of one study, or "") and wait."""
    _require("optuna_dashboard", "optuna-dashboard")
    port = port or PORTS["optuna-dashboard"]
    target = storage_url[len("journal:"):] if storage_url.startswith("journal:") else storage_url
    args = [target, "--host", host, "--port", str(port)]
    return _serve("optuna-dashboard", "from optuna_dashboard._cli import main; main()", args, host, port,
                  "/api/studies", study_path or "/dashboard", "optuna-dashboard")


def _require(module: str, name: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise CompetitionError(f"{name} is not installed; install it with: {INSTALL}.")


def _serve(program: str, code: str, args: list[str], host: str, port: int, alive: str, page: str,
           name: str) -> int:
    """Run a viewer until Ctrl-C or SIGTERM: refuse a port in use, wait until it answers, print its address."""
    _check_port(host, port, program)
    with tempfile.TemporaryFile("w+") as output:
        child = subprocess.Popen([sys.executable, "-c", code, *args], stdout=output,
                                 stderr=subprocess.STDOUT, start_new_session=True)
        try:
            with parallel.stop_signals_interrupt():
                _wait_until_up(child, output, f"http://{host}:{port}{alive}", name, host, port, program)
                shown = "127.0.0.1" if host in ("0.0.0.0", "") else host
                print(f"{name}: http://{shown}:{port}{page}  (Ctrl-C stops it)", flush=True)
                status = child.wait()
            raise CompetitionError(f"{name} ended by itself (exit {status}): {_last_line(output)}")
        except KeyboardInterrupt:
            print(f"{name} stopped.", flush=True)
            return 0
        finally:
            _stop(child)


def _check_port(host: str, port: int, program: str) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise _in_use(host, port, program) from None
            raise CompetitionError(f"--host {host} --port {port}: cannot listen there ({exc.strerror}).") from None


def _in_use(host: str, port: int, program: str) -> CompetitionError:
    return CompetitionError(f"port {port} on {host} is in use (another {program}?); pick another with --port N.")


def _wait_until_up(child: subprocess.Popen, output: Any, url: str, name: str, host: str, port: int,
                   program: str) -> None:
    deadline = time.monotonic() + START_S
    while time.monotonic() < deadline:
        if child.poll() is not None:
            raise CompetitionError(f"{name} did not start (exit {child.returncode}): {_last_line(output)}")
        output.seek(0)
        if "Address already in use" in output.read():  # VisualDL says so, then hangs instead of exiting
            raise _in_use(host, port, program)
        with contextlib.suppress(urllib.error.URLError, OSError):
            with urllib.request.urlopen(url, timeout=2):
                return
        time.sleep(0.2)
    raise CompetitionError(f"{name} did not answer {url} within {START_S:.0f} s: {_last_line(output)}")


def _last_line(output: Any) -> str:
    output.seek(0)
    lines = [line.strip() for line in output.read().splitlines() if line.strip()]
    return lines[-1] if lines else "no output"


def _stop(child: subprocess.Popen) -> None:
    """SIGTERM the viewer (it keeps no state of its own: the logs belong to the runs), SIGKILL if it lingers."""
    if child.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            child.send_signal(signal.SIGTERM)
        try:
            child.wait(timeout=10)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
