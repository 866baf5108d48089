"""A run's life on several processes: signals to the parent stop every rank, nothing is left behind,
a rank that dies is named, and two nodes train what two processes on one node train."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest

from conftest import METRICS, REPO, cnn_train_command


def _start(real_data: dict, runs: Path, *extra: str) -> subprocess.Popen:
    """A long 2-process run, waited on until its first epoch is saved."""
    proc = subprocess.Popen(cnn_train_command(real_data, runs, 40, "--nproc", "2", *extra), cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not list(runs.glob("*/summary.csv")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, proc.communicate()
    return proc


def _ranks_of(run: Path) -> list[int]:
    """PIDs of processes whose command line names this run folder (the ranks, and a launcher if there is one)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                command = (entry / "cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
            if str(run) in command and int(entry.name) != os.getpid():
                pids.append(int(entry.name))
    return pids


def _gone_within(run: Path, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while _ranks_of(run) and time.monotonic() < deadline:
        time.sleep(0.1)
    return not _ranks_of(run)


def test_a_signal_to_the_parent_stops_every_rank_and_says_how_to_resume(real_data: dict, tmp_path: Path) -> None:
    # One signal here: SIGTERM and SIGHUP share SIGINT's handler (parallel.STOP_SIGNALS), and each of them
    # is sent to a one-process run in test_resume.py and through run.sh in test_run_sh.py.
    proc = _start(real_data, tmp_path)
    (run,) = tmp_path.iterdir()
    assert len(_ranks_of(run)) == 2  # two ranks, started by `competition train` itself
    proc.send_signal(signal.SIGINT)  # the parent's PID only, as `kill`, `timeout` or a notebook would
    sent = time.monotonic()
    _, err = proc.communicate(timeout=60)
    assert time.monotonic() - sent < 15
    assert proc.returncode == 130 and "Traceback" not in err
    assert f"continue with: competition train --resume {run}" in err
    assert _gone_within(run, 10), "a rank outlived its parent"
    done = len(pd.read_csv(run / "summary.csv"))
    assert 1 <= done < 40


@pytest.mark.parametrize("after_s", [1.0, 2.5])
def test_a_sigterm_while_paddle_imports_ends_in_our_one_line(after_s: float, real_data: dict, tmp_path: Path) -> None:
    # Paddle's import installs a C++ handler that printed a 12-line "FatalError: Termination signal" banner.
    proc = subprocess.Popen(cnn_train_command(real_data, tmp_path, 40), cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    time.sleep(after_s)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "FatalError" not in out + err and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("competition train: "), err


def test_kill_9_of_the_parent_leaves_no_rank_training(real_data: dict, tmp_path: Path) -> None:
    proc = _start(real_data, tmp_path)
    (run,) = tmp_path.iterdir()
    proc.kill()
    proc.communicate(timeout=30)
    assert _gone_within(run, 20), "ranks trained on as orphans"


def test_a_rank_that_dies_stops_the_others_and_is_named(real_data: dict, tmp_path: Path) -> None:
    proc = _start(real_data, tmp_path)
    (run,) = tmp_path.iterdir()
    rank1 = [pid for pid in _ranks_of(run)
             if b"PADDLE_TRAINER_ID=1\0" in Path(f"/proc/{pid}/environ").read_bytes()]
    os.kill(rank1[0], signal.SIGKILL)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode not in (0, 130) and "Traceback" not in err
    assert "rank 1 stopped without an exit status" in err and f"--resume {run}" in err
    assert _gone_within(run, 10)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_nodes_of_one_process_train_what_two_processes_on_one_node_train(
        real_data: dict, tmp_path: Path, two_process_run: Path) -> None:
    nodes = ["--nproc", "1", "--nnodes", "2", "--master", f"127.0.0.1:{_free_port()}"]
    runs = tmp_path / "two"
    procs = [subprocess.Popen(cnn_train_command(real_data, runs, 2, *nodes, "--node-rank", str(rank)), cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for rank in (1, 0)]
    outputs = [proc.communicate(timeout=300) for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0], [err[-2000:] for _, err in outputs]
    (run,) = [p for p in runs.iterdir() if p.is_dir()]
    assert "training on cpu x2 on 2 nodes" in (run / "train.log").read_text()
    assert "node 1: its ranks finished" in outputs[0][0] and (run / "report.md").is_file()
    pd.testing.assert_frame_equal(pd.read_csv(run / "summary.csv")[METRICS],
                                  pd.read_csv(two_process_run / "summary.csv")[METRICS])
    assert not list(runs.glob(".job-*")), "node 0 left its announcement behind"
