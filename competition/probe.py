"""`--conv auto`: which CPU path trains a model faster here, kernels.cc or Paddle's own ops, measured once.

A probe times a few training steps of the run's model at its per-process batch through both paths, on the
processes the run will use (they share the memory bus as training does), and the faster one trains. The
figures are kept in the user's cache (`conv-probe.json`), keyed by the processor, the instruction set oneDNN
dispatches to, Paddle's build, the kernels' build and the shape, so a machine probes each shape once.
"""
from __future__ import annotations

import json
import logging
import platform
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Optional

import paddle
import paddle.nn.functional as F

from . import kernels, parallel
from .errors import CompetitionError
from .files import atomic_path, exclusive, user_cache_dir
from .data import EVAL_BATCH
from .models import build_model

log = logging.getLogger(__name__)

PATHS = ("onednn", "paddle")
WARMUP, STEPS = 1, 3  # untimed steps, then the timed ones (their median is the figure)
PACES = 5  # budgeted runs' paces kept in a shape's cache entry (record_pace)
CLEAR = 4.0  # a path whose warm-up step took this many times the other's step is not timed further


@dataclass(frozen=True)
class Shape:
    """What a probe times: a model, its options, the images each process takes a step, the processes, the
    kernels' precision."""

    model: str
    options: tuple[tuple[str, int], ...]
    batch: int  # per process
    nproc: int
    precision: str  # fp32 | bf16 (the kernels' path; Paddle's ops train in float32)

    def key(self) -> str:
        """The cache key: the processor, oneDNN's instruction set, Paddle's and the kernels' builds, the shape."""
        options = ",".join(f"{k}={v}" for k, v in self.options)
        return (f"{processor()}|{kernels.isa_name()}|paddle {paddle.version.full_version} {paddle.version.commit[:10]}"
                f"|kernels {kernels.build_dir().name}|{self.model}({options}) batch {self.batch} x{self.nproc} "
                f"{self.precision}")

    def describe(self) -> str:
        """`airnet width 48, 256 images a process, 2 processes`."""
        options = "".join(f" {k} {v}" for k, v in self.options)
        return (f"{self.model}{options}, {self.batch} images a process, {self.nproc} process"
                f"{'es' if self.nproc > 1 else ''}")


def processor() -> str:
    """The processor as lscpu names it, with its family and model numbers (`AMD EPYC (family 25 model 1)`); what
    the platform says where there is no /proc/cpuinfo."""
    try:
        lines = Path("/proc/cpuinfo").read_text().split("\n\n")[0].splitlines()
    except OSError:
        return platform.processor() or platform.machine()
    fields = {key.strip(): value.strip() for key, _, value in (line.partition(":") for line in lines)}
    return f"{fields.get('model name', platform.machine())} (family {fields.get('cpu family', '?')} model " \
           f"{fields.get('model', '?')})"


def cache_path() -> Path:
    """The probes' figures: one entry a key (Shape.key)."""
    return user_cache_dir() / "conv-probe.json"


def choose(shape: Shape) -> dict[str, Any]:
    """The faster path for `shape` with both timings: cached, or measured now (and cached)."""
    return choose_all([shape])[shape]


def choose_all(shapes: list[Shape]) -> dict[Shape, dict[str, Any]]:
    """choose() for several shapes; those not cached are measured in one launch of the processes."""
    path = cache_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    with exclusive(path.with_name(path.name + ".lock")):  # processes probing at once take turns
        cached = _read(path)
        found = {shape: {**cached[shape.key()], "cached": True} for shape in shapes if _usable(cached.get(shape.key()))}
        missing = [shape for shape in dict.fromkeys(shapes) if shape not in found]
        if not missing:
            return found
        for shape in missing:
            log.info("measuring which conv path trains %s faster on this processor (once)", shape.describe())
        measured = [measure(missing[0])] if len(missing) == 1 else measure_all(missing)
        records = {shape.key(): _record(shape, seconds) for shape, seconds in zip(missing, measured)}
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps({**cached, **records}, indent=1) + "\n")
    return {**found, **{shape: {**records[shape.key()], "cached": False} for shape in missing}}


def record_pace(key: str, pace: float) -> None:
    """Keep a budgeted run's pace for its shape's cache entry: its epochs' seconds over what the cached probe
    predicted (the last PACES runs; the planner scales the probe by their median)."""
    path = cache_path()
    with exclusive(path.with_name(path.name + ".lock")):
        cached = _read(path)
        if not _usable(cached.get(key)):
            return
        entry = cached[key]
        entry["paces"] = [*entry.get("paces", []), round(pace, 3)][-PACES:]
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(cached, indent=1) + "\n")


def _usable(entry: Any) -> bool:
    """A cache entry with every figure a run needs (entries written before the eval timing are measured again)."""
    return isinstance(entry, dict) and all(f"{name}_step_s" in entry and f"{name}_eval_image_s" in entry
                                           for name in PATHS)


def _record(shape: Shape, seconds: dict[str, float]) -> dict[str, Any]:
    """The cache entry of one shape: each path's step and per-image validation seconds, the choice, when and where."""
    record: dict[str, Any] = {f"{name}_step_s": round(seconds[name], 5) for name in PATHS}
    record.update({f"{name}_eval_image_s": round(seconds[f"{name}_eval"], 7) for name in PATHS
                   if f"{name}_eval" in seconds})
    record.update(choice=min(PATHS, key=seconds.__getitem__), measured=datetime.now().isoformat(timespec="seconds"),
                  shape=asdict(shape), isa=kernels.isa_name(), processor=processor())
    return record


def _read(path: Path) -> dict[str, Any]:
    """The cache's entries; an unreadable cache is measured anew (and rewritten)."""
    try:
        values = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return values if isinstance(values, dict) else {}


def measure(shape: Shape) -> dict[str, float]:
    """Seconds a training step takes through each path, on shape.nproc processes (the slowest one's), and
    seconds an image of validation takes (`onednn_eval`, `paddle_eval`)."""
    return measure_all([shape])[0]


def measure_all(shapes: list[Shape]) -> list[dict[str, float]]:
    """measure() for several shapes of one process count, in one launch of the processes."""
    nproc = shapes[0].nproc
    if nproc == 1:
        return [step_seconds(shape) for shape in shapes]
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "probe"
        ended = parallel.launch(["probe", str(out), json.dumps([asdict(shape) for shape in shapes])], nproc,
                                Path(folder) / "logs", "cpu")
        found = [json.loads(p.read_text()) for p in sorted(Path(folder).glob("probe.*.json"))]
        if ended.code != 0 or len(found) != nproc:
            raise CompetitionError(f"the {nproc}-process conv probe failed (exit {ended.code}"
                                   + (f": {ended.failure}" if ended.failure else "") + ").")
    return [{name: max(rank[k][name] for rank in found) for name in found[0][k]} for k in range(len(shapes))]


def probe_worker(out: Path, shapes: list[Shape]) -> None:
    """One rank of a launched probe: time both paths of each shape in step with the other ranks; write
    out.RANK.json (one entry per shape)."""
    parallel.init()
    rank, world = parallel.world()
    barrier = paddle.distributed.barrier if world > 1 else None
    Path(f"{out}.{rank}.json").write_text(json.dumps([step_seconds(shape, barrier) for shape in shapes]))


def shape_of(values: dict[str, Any]) -> Shape:
    """A Shape from its JSON form (asdict)."""
    return Shape(**{**values, "options": tuple(map(tuple, values["options"]))})


def step_seconds(shape: Shape, barrier: Optional[Callable[[], None]] = None) -> dict[str, float]:
    """Seconds a training step of `shape` takes in this process, through the kernels and through Paddle's ops,
    and seconds an image of validation takes through each (`onednn_eval`, `paddle_eval`)."""
    paddle.set_device("cpu")
    kernels.load(), kernels.keep_freed_memory()
    bf16 = shape.precision == "bf16"
    choices = {"onednn": kernels.CpuKernels(bf16=bf16, bf16_activations=bf16), "paddle": None}
    seconds: dict[str, float] = {}
    for name in PATHS:
        if barrier is not None:
            barrier()  # every rank times the same path at once
        paddle.seed(0)
        net = kernels.accelerate(build_model(shape.model, **dict(shape.options)), choices[name])
        other = min(seconds.values(), default=None)
        seconds[name] = _timed_steps(net, shape.batch, None if other is None else CLEAR * other)
        seconds[f"{name}_eval"] = _eval_image_seconds(net)
    return seconds


def gpu_seconds(shape: Shape) -> dict[str, Any]:
    """On a GPU, in this process: seconds a training step of Paddle's ops and a validation image take (for the
    planner; never run here, where no GPU has Paddle)."""
    paddle.set_device("gpu")
    paddle.seed(0)
    net = build_model(shape.model, **dict(shape.options))
    step = _timed_steps(net, shape.batch, None)
    return {"step_s": step, "eval_image_s": _eval_image_seconds(net), "path": "paddle"}


def _eval_image_seconds(net: paddle.nn.Layer) -> float:
    """Seconds of validation an image, at the validation batch (the second of two batches)."""
    x = paddle.rand([EVAL_BATCH, 1, 28, 28])
    net.eval()
    with paddle.no_grad():
        for _ in range(2):
            started = time.perf_counter()
            float(net(x).sum())
    return (time.perf_counter() - started) / EVAL_BATCH


def _timed_steps(net: paddle.nn.Layer, batch: int, enough: Optional[float]) -> float:
    """The median seconds of STEPS training steps after WARMUP; only the warm-up's when it took over `enough`."""
    x, y = paddle.rand([batch, 1, 28, 28]), paddle.randint(0, 10, [batch])
    optimizer = paddle.optimizer.Momentum(learning_rate=1e-3, parameters=net.parameters())
    net.train()

    def step() -> float:
        started = time.perf_counter()
        loss = F.cross_entropy(net(x), y)
        loss.backward()
        optimizer.step()
        optimizer.clear_grad()
        float(loss)
        return time.perf_counter() - started

    warm = [step() for _ in range(WARMUP)]
    if enough is not None and warm[-1] > enough:
        return warm[-1]
    return statistics.median(step() for _ in range(STEPS))
