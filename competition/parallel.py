"""Data-parallel training on several processes with Paddle's own launcher (gloo on CPU, NCCL on GPUs)."""
from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import paddle
import paddle.distributed as dist
from paddle.distributed.parallel import sync_params_buffers

from .progress import EpochBar, read_progress

log = logging.getLogger(__name__)

WORKER = Path(__file__).with_name("worker.py")
PARENT_ENV = "COMPETITION_PARENT_PID"  # the `competition train` process that the ranks watch
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
STOP_GRACE_S = 30  # a stopping rank that is still alive after this is killed
INTERRUPTED = 130  # exit status of a run stopped by a signal, as a shell reports Ctrl-C


@dataclass(frozen=True)
class Nodes:
    """One node of a multi-machine job: how many nodes, this one's rank, the master's HOST:PORT."""

    count: int = 1
    rank: int = 0
    master: str = ""


def has_gpu() -> bool:
    """Whether this Paddle build has CUDA and sees at least one GPU."""
    return paddle.device.is_compiled_with_cuda() and paddle.device.cuda.device_count() > 0


def available_devices() -> int:
    """GPUs Paddle can see, else the CPU cores this process may use."""
    if has_gpu():
        return paddle.device.cuda.device_count()
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def default_nproc(batch_size: int) -> int:
    """One process per GPU or core, as many as divide the global batch evenly.

    Paddle's CPU kernels use one thread per process, so processes are how a
    CPU machine's cores get used. COMPETITION_NPROC overrides the count.
    """
    wanted = int(os.environ.get("COMPETITION_NPROC", 0)) or available_devices()
    return max(n for n in range(1, wanted + 1) if batch_size % n == 0)


def is_worker() -> bool:
    """True inside a process started by paddle.distributed.launch."""
    return "PADDLE_TRAINER_ID" in os.environ


def world() -> tuple[int, int]:
    """(rank, world size); (0, 1) for a single process."""
    return (dist.get_rank(), dist.get_world_size()) if is_worker() else (0, 1)


def init() -> None:
    """Join the process group (gloo on CPU, NCCL on GPUs); a no-op for one process."""
    if is_worker() and dist.get_world_size() > 1:
        dist.init_parallel_env()


@dataclass
class Launched:
    """How a launched job ended on this node."""

    code: int  # the launcher's exit status
    stopped_by: Optional[int] = None  # the signal that asked this process to stop, if one did
    failure: Optional[str] = None  # which rank failed first and why, when one did


def launch(worker_args: list[str], nproc: int, log_dir: Path, device: str, watch: Optional[Path] = None,
           nodes: Optional[Nodes] = None) -> Launched:
    """Run `worker.py ARGS…` on nproc processes (of this node) and wait for them.

    Each rank logs to log_dir/workerlog.N. With `watch` (a run folder), rank 0's log lines and progress bar
    are shown here. SIGINT, SIGTERM and SIGHUP to this process stop every rank; a rank that fails stops the
    others. On one node's CPU this process starts the ranks itself; on GPUs and several nodes, Paddle's
    launcher does (it prints to log_dir/launcher.log and passes a stop on to the ranks).
    """
    log_dir.mkdir(parents=True, exist_ok=True)
    for old in log_dir.glob("exit.*.json"):  # from an earlier attempt of a resumed run
        old.unlink()
    env = {**os.environ, PARENT_ENV: str(os.getpid())}
    if device == "cpu" and (nodes is None or nodes.count == 1):
        processes = _start_ranks(worker_args, nproc, log_dir, env)
    else:
        processes = [_start_launcher(worker_args, nproc, log_dir, device, nodes, env)]
    stop = _Stop(processes)
    with stop_signals_call(stop):
        code = _wait(processes, stop, _Watcher(watch) if watch is not None else None)
    first = (nodes.rank if nodes else 0) * nproc
    failure = None if code == 0 or stop.signal else _failed_rank(log_dir, range(first, first + nproc))
    return Launched(code, stop.signal, failure)


def _start_ranks(worker_args: list[str], nproc: int, log_dir: Path, env: dict[str, str]) -> list[subprocess.Popen]:
    """The ranks of a one-node CPU job, started as Paddle's launcher would (its environment, gloo), but without
    it: the launcher took 3.2-3.4 s to run two ranks that only print (Zen 3, 2026-12-02), before theirs."""
    ports = _free_ports(nproc + 1)
    endpoints = [f"127.0.0.1:{port}" for port in ports[1:]]
    processes = []
    for rank in range(nproc):
        ids = {name: str(rank) for name in ("PADDLE_TRAINER_ID", "PADDLE_GLOBAL_RANK", "PADDLE_LOCAL_RANK",
                                             "PADDLE_RANK_IN_NODE")}
        sizes = {name: str(nproc) for name in ("PADDLE_TRAINERS_NUM", "PADDLE_GLOBAL_SIZE", "PADDLE_LOCAL_SIZE")}
        rank_env = {**env, **ids, **sizes, "PADDLE_TRAINER_ENDPOINTS": ",".join(endpoints),
                    "PADDLE_CURRENT_ENDPOINT": endpoints[rank], "PADDLE_MASTER": f"127.0.0.1:{ports[0]}",
                    "PADDLE_NNODES": "1", "PADDLE_DISTRI_BACKEND": "gloo", "PADDLE_LOG_DIR": str(log_dir),
                    "OMP_NUM_THREADS": env.get("OMP_NUM_THREADS", "1")}  # as the launcher: cores are the ranks
        with open(log_dir / f"workerlog.{rank}", "ab") as out:
            # A session of its own: a terminal's Ctrl-C reaches this process, which stops the ranks in turn.
            processes.append(subprocess.Popen([sys.executable, "-u", "-W", "ignore:No ccache found", str(WORKER),
                                               *worker_args], stdout=out, stderr=subprocess.STDOUT, env=rank_env,
                                              start_new_session=True))
    return processes


def _free_ports(count: int) -> list[int]:
    """`count` TCP ports free on 127.0.0.1 now."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _start_launcher(worker_args: list[str], nproc: int, log_dir: Path, device: str, nodes: Optional[Nodes],
                    env: dict[str, str]) -> subprocess.Popen:
    """Paddle's launcher, in a session of its own, running the ranks of this node."""
    command = [sys.executable, "-W", "ignore:No ccache found", "-m", "paddle.distributed.launch",
               "--log_level", "WARNING", "--nproc_per_node", str(nproc), "--log_dir", str(log_dir)]
    if nodes is not None and nodes.count > 1:
        command += ["--nnodes", str(nodes.count), "--rank", str(nodes.rank), "--master", nodes.master]
    if device == "gpu":
        command += ["--devices", ",".join(str(i) for i in range(nproc))]
    with open(log_dir / "launcher.log", "ab") as out:
        return subprocess.Popen(command + [str(WORKER), *worker_args], stdout=out, stderr=subprocess.STDOUT,
                                env=env, start_new_session=True)


class _Stop:
    """The launching process's SIGINT/SIGTERM/SIGHUP handler: pass a stop to the ranks (or the launcher), once."""

    def __init__(self, processes: list[subprocess.Popen]):
        self.processes, self.signal, self.since = processes, None, 0.0

    def __call__(self, signum: int, frame: object) -> None:
        if self.signal is None:
            self.signal, self.since = signum, time.monotonic()
            log.warning("stopping every rank (signal %d)…", signum)
        _signal_all(self.processes, signal.SIGTERM)


def _signal_all(processes: list[subprocess.Popen], signum: int, group: bool = False) -> None:
    """Send `signum` to each process still running (to its whole session with `group`)."""
    for process in processes:
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                (os.killpg if group else os.kill)(process.pid, signum)


@contextlib.contextmanager
def stop_signals_call(handler: Callable[[int, object], None]) -> Iterator[None]:
    """`handler` answers SIGINT, SIGTERM and SIGHUP inside the block (main thread only); the old ones after."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, handler) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


@contextlib.contextmanager
def stop_signals_deferred() -> Iterator[None]:
    """SIGINT, SIGTERM and SIGHUP that arrive inside the block are answered as it ends, by the handlers that
    were in place (main thread only; elsewhere a no-op)."""
    # Python handlers, not a signal mask: the kernel hands a process's signal to any thread that does not
    # block it (paddle's and OpenBLAS's threads), and Python then runs the handler in the main thread anyway.
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    arrived: list[tuple[int, object]] = []
    # Signals whose handler was not set from Python (getsignal: None) are left alone: it could not be restored.
    previous = {sig: signal.signal(sig, lambda signum, frame: arrived.append((signum, frame)))
                for sig in STOP_SIGNALS if signal.getsignal(sig) is not None}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
        for signum, frame in arrived[:1]:
            old = previous[signum]
            if callable(old):
                old(signum, frame)
            elif old == signal.SIG_DFL:
                os.kill(os.getpid(), signum)  # what it would have done: end the process


def _wait(processes: list[subprocess.Popen], stop: _Stop, watcher: Optional["_Watcher"]) -> int:
    """Wait for the ranks (or the launcher), showing rank 0's output; the exit status: 0, or the first failure's.
    A rank that fails stops the others (SIGTERM, as Paddle's launcher does); a stop that takes too long kills."""
    failed = None
    while running := [process for process in processes if process.poll() is None]:
        if watcher is not None:
            watcher.poll()
        if failed is None:
            failed = next((p for p in processes if p.returncode not in (None, 0)), None)
            if failed is not None and stop.signal is None:
                _signal_all(processes, signal.SIGTERM)
                stop.since = time.monotonic()
        if (stop.signal is not None or failed is not None) and time.monotonic() - stop.since > STOP_GRACE_S:
            _signal_all(processes, signal.SIGKILL, group=True)  # a launcher's ranks notice it is gone
        with contextlib.suppress(subprocess.TimeoutExpired):
            running[0].wait(timeout=0.25)
    if watcher is not None:
        watcher.poll()
        watcher.bar.close()
    failed = failed or next((p for p in processes if p.returncode != 0), None)
    return 0 if failed is None else failed.returncode


class _Watcher:
    """Shows a launched run's new train.log lines (without their time stamps) and rank 0's progress bar."""

    def __init__(self, run_dir: Path):
        self.run_dir, self.bar, self.started = Path(run_dir), EpochBar(), time.time()
        log_file = self.run_dir / "train.log"
        self.offset = log_file.stat().st_size if log_file.exists() else 0  # a resumed run's old lines

    def poll(self) -> None:
        """Print what was logged since the last poll, then move the bar."""
        with contextlib.suppress(FileNotFoundError), open(self.run_dir / "train.log", "rb") as handle:
            handle.seek(self.offset)
            text = handle.read()
            complete = text[:text.rfind(b"\n") + 1]
            self.offset += len(complete)
            for line in complete.decode(errors="replace").splitlines():
                self.bar.close()
                log.info("%s", _STAMP.sub("", line, count=1))
        figures = read_progress(self.run_dir, since=self.started)
        if figures is not None and figures["done"] < figures["total"]:
            self.bar(**figures)


_STAMP = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} ")


def _failed_rank(log_dir: Path, ranks: range) -> str:
    """Which of this node's ranks stopped the job, from the exit files the ranks leave behind and their logs.

    A rank killed outright leaves no exit file; its peers then die in gloo (an abort, no exit file either),
    and their logs name the lost peer (`pair_rank = N`); the launcher names whichever it noticed first.
    """
    statuses = {rank: _read_exit(log_dir, rank) for rank in ranks}
    for rank, status in statuses.items():
        if status is not None and status["code"] not in (0, INTERRUPTED):
            return f"rank {rank} failed (exit {status['code']}): {status['message']}"
    silent = [rank for rank, status in statuses.items() if status is None]
    logs = {rank: _log_text(log_dir / f"workerlog.{rank - ranks.start}") for rank in silent}
    lost = [rank for rank in silent if "gloo::" not in logs[rank]]
    lost += [int(peer) for rank in silent for peer in re.findall(r"pair_rank = (\d+)", logs[rank])]
    if lost:
        rank = lost[0]
        return (f"rank {rank} stopped without an exit status (killed, or out of memory?), so the others "
                f"were stopped; see {log_dir}/workerlog.{rank - ranks.start}")
    return "a rank on another node stopped the job"


def _log_text(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def _read_exit(log_dir: Path, rank: int) -> Optional[dict]:
    try:
        return json.loads((log_dir / f"exit.{rank}.json").read_text())
    except (OSError, ValueError):
        return None


# --- inside each launched rank ----------------------------------------------------------------

def write_exit(rank: int, code: int, message: str = "") -> None:
    """Leave this rank's exit status for the launching process (log_dir/exit.RANK.json)."""
    log_dir = os.environ.get("PADDLE_LOG_DIR")
    if log_dir:
        with contextlib.suppress(OSError):
            (Path(log_dir) / f"exit.{rank}.json").write_text(json.dumps({"rank": rank, "code": code,
                                                                          "message": message}))


@contextlib.contextmanager
def stop_signals_interrupt() -> Iterator[None]:
    """SIGINT, SIGTERM and SIGHUP raise KeyboardInterrupt in the main thread, once: repeats (the
    launcher sends SIGTERM up to three times) are ignored while training unwinds and saves."""
    raised = []

    def handler(signum: int, frame: object) -> None:
        if not raised:
            raised.append(signum)
            raise KeyboardInterrupt

    with stop_signals_call(handler):
        yield


def watch_parent(interval: float = 1.0) -> None:
    """Stop this rank (SIGTERM to itself) when `competition train` or the launcher is gone, e.g. after kill -9."""
    parent = int(os.environ.get(PARENT_ENV, 0))
    launcher = os.getppid()

    def watch() -> None:
        while (not parent or _alive(parent)) and os.getppid() == launcher:
            time.sleep(interval)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(STOP_GRACE_S)  # stuck in a collective whose peer is gone: leave anyway
        os._exit(INTERRUPTED)

    threading.Thread(target=watch, name="watch-parent", daemon=True).start()


def _alive(pid: int) -> bool:
    """Whether process `pid` exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return state != "Z"
    except FileNotFoundError:
        return False
    except OSError:  # no /proc: ask the kernel
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True


def mean_over_ranks(metrics: dict[str, float]) -> dict[str, float]:
    """Sample-weighted mean of each rank's loss and accuracy (unchanged for one process)."""
    if world()[1] == 1:
        return metrics
    n = metrics["samples"]
    totals = paddle.to_tensor([metrics["loss"] * n, metrics["acc"] * n, n], dtype="float64")
    dist.all_reduce(totals)
    loss, correct, samples = totals.tolist()
    return {**metrics, "loss": loss / samples, "acc": correct / samples, "samples": samples}


def from_rank0(value: int) -> int:
    """Rank 0's integer on every rank (unchanged for one process)."""
    if world()[1] == 1:
        return value
    number = paddle.to_tensor([value], dtype="int64")
    dist.broadcast(number, src=0)
    return int(number.item())


def copy_rank0_state(model: paddle.nn.Layer) -> None:
    """Give every rank rank 0's weights and buffers: gradients keep weights equal, BatchNorm statistics are per rank."""
    if world()[1] > 1:
        sync_params_buffers(model)


def local_device_id() -> int:
    """The GPU this rank was given by the launcher."""
    return dist.ParallelEnv().device_id


@contextlib.contextmanager
def batches_of(loader: "paddle.io.DataLoader") -> Iterator[Iterator[Any]]:
    """Iterate a loader so that a stop signal is raised between batches, never inside paddle.io's own code,
    and the loader's reader threads are shut down when a signal (or an error) leaves the loop."""
    # A KeyboardInterrupt raised inside paddle.io's iterator (building it, fetching a batch, its shutdown) could
    # leave its reader thread running to interpreter exit, which then aborted ("terminate called without an
    # active exception", exit -6 instead of 130). Processes looping over a small loader, sent SIGHUP after
    # 0.2-0.6 s: 4 of 60 aborted before; 8 of 100 with a signal mask (another thread took the signal); 0 of
    # 100 with the handlers held (2026-12-01). Holding costs 15 us a batch. Not shut down after a plain
    # `break` (--max-steps): paddle's shutdown waits a whole second for the thread, every epoch.
    batches = None
    try:
        with stop_signals_deferred():
            batches = iter(loader)
        yield _held_between(batches)
    except BaseException:
        shutdown = getattr(batches, "_try_shutdown_all", None)  # paddle.io's iterators; idempotent
        if shutdown is not None:
            with stop_signals_deferred():
                shutdown()
        raise


def _held_between(batches: Iterator[Any]) -> Iterator[Any]:
    """The batches, each fetched with the stop signals held."""
    while True:
        with stop_signals_deferred():
            batch = next(batches, _END)
        if batch is _END:
            return
        yield batch


_END = object()
