"""What a run actually runs on, resolved once from its configuration and saved beside it (runtime.json).

config.json says what was asked for (`conv auto`, `precision bf16`); runtime.json says what ran
(`kernels paddle` when kernels.cc did not build or Paddle's ops measured faster here, with the probe's
timings; `precision fp32` on a CPU without bfloat16; the instruction set oneDNN dispatched to).
"""
from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import paddle

from . import kernels, parallel, probe
from .config import Config
from .errors import CompetitionError
from .files import atomic_path
from .kernels import CpuKernels
from .models import build_model

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
    isa: str = ""  # what oneDNN dispatches to: avx2, avx512_core_bf16, ... (capped by ONEDNN_MAX_CPU_ISA)
    conv_probe: Optional[dict] = None  # --conv auto: both paths' seconds a step and the choice (probe.py)

    @property
    def world(self) -> int:
        """Processes over all nodes."""
        return self.nproc * self.nnodes

    def cpu_kernels(self) -> Optional[CpuKernels]:
        """The kernels the model's layers are built with; None: Paddle's own ops."""
        bf16 = self.precision == "bf16"
        return CpuKernels(bf16=bf16, bf16_activations=bf16) if self.kernels == "onednn" else None

    def describe(self) -> str:
        """One line for the log and report.md: `cpu x2 (Paddle 3.3.1, kernels.cc, avx2)`."""
        note = {"onednn": ", kernels.cc"}.get(self.kernels, ", Paddle's ops" if self.device == "cpu" else "")
        if self.kernels == "onednn" and self.precision == "bf16":
            note += ", training in bfloat16"
        if self.device == "cpu" and self.isa:
            note += f", {self.isa}"
        nodes = f" on {self.nnodes} nodes" if self.nnodes > 1 else ""
        return f"{self.device} x{self.world}{nodes} (Paddle {self.paddle}{note})"

    def probe_line(self) -> Optional[str]:
        """--conv auto's measurement in one line, or None when the path was forced or nothing was measured."""
        found = self.conv_probe
        if not found:
            return None
        when = f"; measured {found['measured']}, cached" if found.get("cached") else ""
        winner = "kernels.cc trains" if found["choice"] == "onednn" else "Paddle's ops train"
        return (f"conv auto: kernels.cc {found['onednn_step_s']:.3f} s a training step, Paddle's ops "
                f"{found['paddle_step_s']:.3f} s ({found['about']}, {found['isa']}{when}): {winner}")

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


def resolve(config: Config, nproc: int, before: Optional[Runtime] = None) -> Runtime:
    """What `config` will run on here; refuses what cannot run (--device gpu without one, --conv onednn
    that does not build), and falls back with a note where `auto` or bf16 cannot be had. `--conv auto`
    takes the path that trains faster here, measured (once per processor and shape) by probe.py, or, for a
    resumed run (`before`: what it ran on) on the same instruction set, the path it started on."""
    has_gpu = parallel.has_gpu()
    if config.device == "gpu" and not has_gpu:
        raise CompetitionError("--device gpu: this Paddle build has no CUDA support or sees no GPU; "
                               "install paddlepaddle-gpu (see README) or use --device cpu.")
    device = _device(config.device, has_gpu)
    built, notes = _kernels(config.conv, device)
    bf16 = config.precision == "bf16" and device == "cpu" and built and kernels.cpu_has_bf16()
    chosen, measured = ("onednn" if built else "paddle"), None
    if built and config.conv == "auto" and before is not None and before.isa == kernels.isa_name():
        chosen, measured = before.kernels, before.conv_probe  # the same numbers as its first epochs
    elif built and config.conv == "auto":
        chosen, measured = _measured(config, nproc, bf16, notes)
    if config.precision == "bf16":
        notes += _bf16_notes(config, device, built, chosen)
    return Runtime(device, chosen, "bf16" if bf16 and chosen == "onednn" else "fp32", nproc, config.nnodes,
                   paddle.__version__, kernels.cpu_has_bf16(), tuple(notes), kernels.isa_name(), measured)


def _device(choice: str, has_gpu: bool) -> str:
    """The device `--device auto|cpu|gpu` trains on."""
    return ("gpu" if has_gpu else "cpu") if choice == "auto" else choice


def kernels_usable(device: str) -> bool:
    """Whether kernels.cc can train on `--device device` here: the CPU, and it builds."""
    return _kernels("auto", _device(device, parallel.has_gpu()))[0]


def _kernels(choice: str, device: str) -> tuple[bool, list[str]]:
    """Whether kernels.cc may train (asked for, or auto, on the CPU, and it builds); else the reason."""
    if device != "cpu" or choice == "paddle":
        return False, []
    try:
        kernels.load()
    except CompetitionError as exc:
        if choice == "onednn":
            raise
        return False, [f"training with Paddle's slower conv and pooling: {exc}"]
    return True, []


def _measured(config: Config, nproc: int, bf16: bool, notes: list[str]) -> tuple[str, Optional[dict]]:
    """--conv auto's path, by the probe's timings (cached per processor and shape), and the timings."""
    options = tuple(sorted(config.model_options().items()))
    shape = probe.Shape(config.model, options, config.batch_size // (nproc * config.nnodes), nproc,
                        "bf16" if bf16 else "fp32")
    try:
        if not kernels.swaps(build_model(config.model, **dict(options))):
            return "paddle", None  # nothing in this model for the kernels to run
        found = probe.choose(shape)
    except CompetitionError as exc:  # the kernels' pass refused the model, or a probe process failed
        notes.append(f"training with Paddle's ops: {exc}")
        return "paddle", None
    return found["choice"], {**found, "about": shape.describe()}


def _bf16_notes(config: Config, device: str, built: bool, chosen: str) -> list[str]:
    """Why --precision bf16 trains in float32 here, if it does."""
    if device != "cpu":
        return [f"--precision bf16 applies to the CPU kernels; {device} training stays float32"]
    if not built:
        return ["training in float32, not bfloat16: it needs the oneDNN kernels"
                + (" (this run: --conv paddle)" if config.conv == "paddle" else "")]
    if not kernels.cpu_has_bf16():
        return ["training in float32, not bfloat16: this CPU has no native bfloat16 arithmetic "
                f"(AVX512-BF16 or AMX; oneDNN dispatches to {kernels.isa_name()} here)"]
    if chosen != "onednn":
        return ["training in float32, not bfloat16: Paddle's ops, which train in float32, measured faster here"]
    return []


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
