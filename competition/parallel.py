"""Data-parallel training on several processes with Paddle's own launcher (gloo on CPU, NCCL on GPUs)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import paddle
import paddle.distributed as dist
from paddle.distributed.parallel import sync_params_buffers


WORKER = Path(__file__).with_name("worker.py")


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


def launch(worker_args: list[str], nproc: int, log_dir: Path, device: str) -> int:
    """Run `worker.py ARGS…` on nproc processes; each rank logs to log_dir/workerlog.N."""
    command = [sys.executable, "-W", "ignore:No ccache found", "-m", "paddle.distributed.launch",
               "--log_level", "WARNING", "--nproc_per_node", str(nproc), "--log_dir", str(log_dir)]
    if device == "gpu":
        command += ["--devices", ",".join(str(i) for i in range(nproc))]
    process = subprocess.Popen(command + [str(WORKER), *worker_args])
    try:
        return process.wait()
    except KeyboardInterrupt:
        # Ctrl-C reached the workers too (same process group): let them save and stop.
        return process.wait()


def mean_over_ranks(metrics: dict[str, float]) -> dict[str, float]:
    """Sample-weighted mean of each rank's loss and accuracy (unchanged for one process)."""
    if world()[1] == 1:
        return metrics
    n = metrics["samples"]
    totals = paddle.to_tensor([metrics["loss"] * n, metrics["acc"] * n, n], dtype="float64")
    dist.all_reduce(totals)
    loss, correct, samples = totals.tolist()
    return {**metrics, "loss": loss / samples, "acc": correct / samples, "samples": samples}


def copy_rank0_state(model: paddle.nn.Layer) -> None:
    """Give every rank rank 0's weights and buffers: gradients keep weights equal, BatchNorm statistics are per rank."""
    if world()[1] > 1:
        sync_params_buffers(model)


def local_device_id() -> int:
    """The GPU this rank was given by the launcher."""
    return dist.ParallelEnv().device_id
