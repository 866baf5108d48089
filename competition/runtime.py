"""What a run actually runs on, resolved once from its configuration and saved beside it (runtime.json).

config.json says what was asked for (`conv auto`, `precision bf16`); runtime.json says what ran
(`kernels paddle` when kernels.cc did not build, `precision fp32` on a CPU without bfloat16).
"""
from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import paddle

from . import kernels, parallel
from .config import Config
from .errors import CompetitionError
from .files import atomic_path
from .kernels import CpuKernels

log = logging.getLogger(__name__)

RUNTIME = "runtime.json"


@dataclass(frozen=True)
class Runtime:
    """The device, kernels, precision and processes a run trains with."""

    device: str  # cpu | gpu
    kernels: str  # onednn (kernels.cc) | paddle: the CPU conv and 2x2 max-pool layers
    precision: str  # fp32 | bf16: what the training convs compute in
    nproc: int  # processes per node
    nnodes: int
    paddle: str  # Paddle's version
    cpu_bf16: bool  # the CPU does bfloat16 arithmetic natively (AVX512-BF16 or AMX)
    notes: tuple[str, ...] = ()  # why a requested setting was not used

    @property
    def world(self) -> int:
        """Processes over all nodes."""
        return self.nproc * self.nnodes

    def cpu_kernels(self) -> Optional[CpuKernels]:
        """The kernels the model's layers are built with; None: Paddle's own ops."""
        bf16 = self.precision == "bf16"
        return CpuKernels(bf16=bf16, bf16_activations=bf16) if self.kernels == "onednn" else None

    def describe(self) -> str:
        """One line for the log and report.md: `cpu x2 (Paddle 3.2.0, conv and pool kernels of kernels.cc)`."""
        note = {"onednn": ", conv and pool kernels of kernels.cc"}.get(self.kernels, "")
        if self.kernels == "onednn" and self.precision == "bf16":
            note += ", training in bfloat16"
        nodes = f" on {self.nnodes} nodes" if self.nnodes > 1 else ""
        return f"{self.device} x{self.world}{nodes} (Paddle {self.paddle}{note})"

    def save(self, run_dir: Path) -> None:
        """Write runtime.json into the run folder."""
        with atomic_path(Path(run_dir) / RUNTIME) as tmp:
            tmp.write_text(json.dumps(dataclasses.asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, run_dir: Path) -> "Runtime":
        """Read runtime.json; an error names the file."""
        path = Path(run_dir) / RUNTIME
        try:
            values: dict[str, Any] = json.loads(path.read_text())
            return cls(**{**values, "notes": tuple(values.get("notes", ()))})
        except (OSError, ValueError, TypeError) as exc:
            raise CompetitionError(f"{path}: cannot read what the run trains with ({exc}).") from None


def resolve(config: Config, nproc: int) -> Runtime:
    """What `config` will run on here; refuses what cannot run (--device gpu without one, --conv onednn
    that does not build), and falls back with a note where `auto` or bf16 cannot be had."""
    has_gpu = parallel.has_gpu()
    if config.device == "gpu" and not has_gpu:
        raise CompetitionError("--device gpu: this Paddle build has no CUDA support or sees no GPU; "
                               "install paddlepaddle-gpu (see README) or use --device cpu.")
    device = ("gpu" if has_gpu else "cpu") if config.device == "auto" else config.device
    chosen, notes = _kernels(config.conv, device)
    precision = "fp32"
    if config.precision == "bf16":
        if device != "cpu":
            notes.append(f"--precision bf16 applies to the CPU kernels; {device} training stays float32")
        elif chosen != "onednn":
            notes.append("training in float32, not bfloat16: it needs the oneDNN kernels"
                         + (" (this run: --conv paddle)" if config.conv == "paddle" else ""))
        elif not kernels.cpu_has_bf16():
            notes.append("training in float32, not bfloat16: this CPU has no native bfloat16 arithmetic "
                         "(AVX512-BF16 or AMX)")
        else:
            precision = "bf16"
    return Runtime(device, chosen, precision, nproc, config.nnodes, paddle.__version__, kernels.cpu_has_bf16(),
                   tuple(notes))


def _kernels(choice: str, device: str) -> tuple[str, list[str]]:
    """onednn when asked for (or auto) on the CPU and kernels.cc builds; else paddle, with the reason."""
    if device != "cpu" or choice == "paddle":
        return "paddle", []
    try:
        kernels.load()
    except CompetitionError as exc:
        if choice == "onednn":
            raise
        return "paddle", [f"training with Paddle's slower conv and pooling: {exc}"]
    return "onednn", []


def apply(runtime: Runtime) -> Optional[CpuKernels]:
    """Put this training process on the runtime's device; returns the kernels to build the model with."""
    if runtime.device == "gpu":
        # Each rank of a multi-GPU run uses the GPU the launcher gave it.
        paddle.set_device(f"gpu:{parallel.local_device_id()}" if parallel.is_worker() else "gpu")
    else:
        paddle.set_device("cpu")
    if runtime.kernels == "onednn":
        kernels.load()  # now, not inside the first forward pass (whose output paddle.summary captures)
        kernels.keep_freed_memory()
    return runtime.cpu_kernels()
