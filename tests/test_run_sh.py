"""run.sh: set-up once, option passing, test passthrough, failures — with a recording fake Python."""
from __future__ import annotations

import os
import shutil
import signal
import stat
import subprocess
import time
from pathlib import Path

import pytest

from conftest import REPO

FAKE_PYTHON = """#!/usr/bin/env bash
echo "$*" >> "$(dirname "$0")/../../calls.log"
if [ "$*" = "${FAKE_FAIL:-}" ]; then echo "fake failure" >&2; exit 3; fi
"""


def _executable(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A copy of run.sh and setup.cfg whose .venv/bin/python only records its arguments."""
    root = tmp_path / "repo"
    root.mkdir()
    for name in ("run.sh", "setup.cfg", "competition/onednn-headers.txt"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / name, root / name)
    _executable(root / ".venv" / "bin" / "python", FAKE_PYTHON)
    return root


def run_sh(repo: Path, *args: str, gpu: bool = False, **env: str) -> subprocess.CompletedProcess:
    bin_dir = repo.parent / "bin"
    if gpu:
        _executable(bin_dir / "nvidia-smi", "#!/bin/sh\necho 'GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-1)'\n")
    # A PATH without the machine's own nvidia-smi, so the CPU branch is what we ask for.
    path = f"{bin_dir}:/usr/bin:/bin"
    return subprocess.run(["bash", str(repo / "run.sh"), *args], capture_output=True, text=True,
                          env={**os.environ, "PATH": path, **env}, timeout=60)


def calls(repo: Path) -> list[str]:
    return (repo / "calls.log").read_text().splitlines()


def test_installs_cpu_extra_once_then_reuses_the_environment(repo: Path) -> None:
    assert run_sh(repo, "--epochs", "1").returncode == 0
    installs = [c for c in calls(repo) if "pip install" in c]
    assert any(c.endswith("-e .[cpu,dev]") for c in installs), installs
    (repo / "calls.log").unlink()
    assert run_sh(repo, "--epochs", "1").returncode == 0
    assert not any("pip" in c for c in calls(repo))


def test_installs_the_kernel_headers_alone_and_goes_on_without_them(repo: Path) -> None:
    from competition.kernels import HEADERS

    headers = f"-m pip install --quiet --no-deps {HEADERS}"
    result = run_sh(repo, "--epochs", "1", FAKE_FAIL=headers)
    assert headers in calls(repo)
    assert result.returncode == 0 and "Paddle's slower conv" in result.stderr
    assert calls(repo)[-2:] == ["-m competition train --preset default --epochs 1", "-m competition predict --tta 6"]


def test_the_boards_are_installed_apart_and_training_goes_on_without_them(repo: Path) -> None:
    boards = "-m pip install --quiet -e .[board]"
    result = run_sh(repo, "--epochs", "1", FAKE_FAIL=boards)
    assert boards in calls(repo)
    assert result.returncode == 0 and "training works without the boards" in result.stderr
    assert calls(repo)[-2:] == ["-m competition train --preset default --epochs 1", "-m competition predict --tta 6"]


def test_the_headers_installed_are_the_ones_the_package_names(repo: Path) -> None:
    (repo / "competition" / "onednn-headers.txt").write_text("onednn-devel==2099.1\n")
    assert run_sh(repo, "--epochs", "1").returncode == 0
    assert "-m pip install --quiet --no-deps onednn-devel==2099.1" in calls(repo)


def test_gpu_machine_installs_the_gpu_extra_from_paddles_index(repo: Path) -> None:
    assert run_sh(repo, gpu=True).returncode == 0
    install = next(c for c in calls(repo) if "-e ." in c)
    assert install.endswith("-e .[gpu,dev]") and "--extra-index-url" in install


def test_options_go_to_training_then_predict_runs(repo: Path) -> None:
    assert run_sh(repo, "--model", "fc", "--epochs", "5").returncode == 0
    assert calls(repo)[-2:] == ["-m competition train --model fc --epochs 5", "-m competition predict --tta 6"]


def test_no_options_train_the_default_preset_then_predict(repo: Path) -> None:
    assert run_sh(repo).returncode == 0
    assert calls(repo)[-2:] == ["-m competition train --preset default", "-m competition predict --tta 6"]
    assert run_sh(repo, "--seed", "1", "--val-size", "10000").returncode == 0  # options on top of the preset
    assert calls(repo)[-2] == "-m competition train --preset default --seed 1 --val-size 10000"
    assert run_sh(repo, "--preset=quick").returncode == 0
    assert calls(repo)[-2] == "-m competition train --preset=quick"


TIMED_SET_UP = """#!/usr/bin/env bash
case "$*" in
    *"pip install"*) sleep 1 ;;  # a set-up that takes time
    *"competition train"*) python3 -c "import os, time; print(time.time() - float(os.environ['COMPETITION_STARTED_AT']))" \
        > "$(dirname "$0")/../../spent" ;;
esac
"""


def test_the_set_up_counts_against_the_budget_of_the_command(repo: Path) -> None:
    _executable(repo / ".venv" / "bin" / "python", TIMED_SET_UP)
    assert run_sh(repo, COMPETITION_STARTED_AT="").returncode == 0
    spent = float((repo / "spent").read_text())  # what training was told the command had spent before it
    assert 2 <= spent < 30  # two installs of a second each (the package, the kernel headers)


def test_cv_subcommand_runs_the_cv_that_submits_its_fold_ensemble(repo: Path) -> None:
    assert run_sh(repo, "cv").returncode == 0
    assert calls(repo)[-1] == "-m competition cv --submit 6 --preset default"
    assert run_sh(repo, "cv", "--folds", "3", "--preset", "quick").returncode == 0
    assert calls(repo)[-1] == "-m competition cv --submit 6 --folds 3 --preset quick"
    result = run_sh(repo, "cv", "--folds", "1", FAKE_FAIL="-m competition cv --submit 6 --preset default --folds 1")
    assert result.returncode != 0 and not any("predict" in c for c in calls(repo))


def test_test_subcommand_passes_pytest_arguments(repo: Path) -> None:
    assert run_sh(repo, "test", "-k", "data", "-q").returncode == 0
    assert calls(repo)[-1] == "-m pytest -k data -q"


def test_failed_training_stops_before_predict_and_exits_nonzero(repo: Path) -> None:
    result = run_sh(repo, "--epochs", "0", FAKE_FAIL="-m competition train --preset default --epochs 0")
    assert result.returncode == 3 and "fake failure" in result.stderr
    assert "-m competition predict" not in calls(repo)


def test_missing_python_is_reported_on_stderr(repo: Path) -> None:
    shutil.rmtree(repo / ".venv")
    result = run_sh(repo, PYTHON="no-such-python3")
    assert result.returncode != 0 and "needs Python 3 (no-such-python3 not found" in result.stderr


SLOW_TRAINING = """#!/usr/bin/env bash
echo "$*" >> "$(dirname "$0")/../../calls.log"
case "$*" in
    *"competition train"*)
        trap 'echo "train got TERM" >> "$(dirname "$0")/../../calls.log"; exit 130' TERM
        echo started > "$(dirname "$0")/../../started"
        while true; do sleep 0.1; done ;;
esac
"""


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP], ids=["TERM", "INT", "HUP"])
def test_a_signal_to_run_sh_reaches_training_and_stops_before_predict(repo: Path, sig: signal.Signals) -> None:
    assert run_sh(repo, "--epochs", "1").returncode == 0  # set-up done, the stamp written
    _executable(repo / ".venv" / "bin" / "python", SLOW_TRAINING)
    (repo / "calls.log").unlink()
    proc = subprocess.Popen(["bash", str(repo / "run.sh"), "--epochs", "9"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PATH": f"{repo.parent / 'bin'}:/usr/bin:/bin"})
    deadline = time.monotonic() + 30
    while not (repo / "started").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(sig)  # run.sh's own PID, not its process group
    proc.communicate(timeout=30)
    assert proc.returncode == 130
    assert calls(repo) == ["-m competition train --preset default --epochs 9", "train got TERM"]
