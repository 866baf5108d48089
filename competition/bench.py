"""`competition bench`: Paddle training and prediction speed, side by side with PyTorch, and what oneDNN ran."""
from __future__ import annotations

import collections
import json
import math
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Optional

import numpy as np
import paddle
import paddle.distributed as dist

from . import checkpoint, kernels, parallel, predict, runtime
from .config import Config
from .data import FashionMNIST, make_loader, read_train_csv
from .errors import CompetitionError
from .models import build_model
from .train import train_one_epoch

EPOCH_IMAGES = 60_000
PREDICT_IMAGES = 10_000
OPS_STEPS = 5  # timed steps of Paddle's own ops beside the kernels' (up to 9x slower: airnet 48 on AVX2)
TORCH_RUNS = 3  # PyTorch's figure moves from run to run (21-36 s an epoch for one cnn): the median of three


@dataclass
class BenchSettings:
    """What one benchmark measures."""

    model: str = "cnn"
    batch_size: int = 256
    steps: int = 30  # timed training steps, after `warmup` untimed ones
    warmup: int = 5
    nproc: int = 1
    device: str = "auto"
    conv: str = "auto"  # CPU path, as `train --conv`; auto times both kernels.cc and Paddle's ops
    precision: str = "fp32"  # as `train --precision`
    width: Optional[int] = None  # model options, as `train --width/--depth` (cnn, resnet)
    depth: Optional[int] = None

    def model_options(self) -> dict[str, int]:
        """The size options that were given."""
        return {k: v for k, v in (("width", self.width), ("depth", self.depth)) if v is not None}

    def runtime(self) -> runtime.Runtime:
        """What the timed steps run on, resolved as for a training run."""
        config = Config(device=self.device, conv=self.conv, precision=self.precision, nproc=self.nproc)
        return runtime.resolve(config, self.nproc)


def paddle_step_seconds(settings: BenchSettings, images: np.ndarray, labels: np.ndarray) -> float:
    """Seconds per global training step, as `competition train` runs them (data-parallel when launched)."""
    parallel.init()
    world = parallel.world()[1]
    model, optimizer, loader = _training(settings, images, labels, settings.batch_size // world)
    net = paddle.DataParallel(model) if world > 1 else model
    train_one_epoch(net, loader, optimizer, max_steps=settings.warmup)
    if world > 1:
        dist.barrier()
    started = time.perf_counter()
    done = train_one_epoch(net, loader, optimizer, max_steps=settings.steps)[0]["steps"]
    return (time.perf_counter() - started) / done


def _training(settings: BenchSettings, images: np.ndarray, labels: np.ndarray, batch: int
              ) -> tuple[paddle.nn.Layer, paddle.optimizer.Optimizer, paddle.io.DataLoader]:
    """The timed model (seeded, on settings' runtime), its optimizer and a loader of `batch` images a step."""
    cpu_kernels = runtime.apply(settings.runtime())
    paddle.seed(0)
    model = kernels.accelerate(build_model(settings.model, **settings.model_options()), cpu_kernels)
    optimizer = paddle.optimizer.Adam(learning_rate=1e-3, parameters=model.parameters())
    return model, optimizer, make_loader(FashionMNIST(images, labels), batch, shuffle=True)


def predict_seconds(settings: BenchSettings, images: np.ndarray) -> float:
    """Seconds to predict `images` through an exported model and a warmed-up paddle.inference predictor."""
    with tempfile.TemporaryDirectory() as folder:
        checkpoint.save_inference(build_model(settings.model, **settings.model_options()), Path(folder))
        predictor = predict.load_predictor(Path(folder))
        started = time.perf_counter()
        predict.run_predictor(predictor, images)
        return time.perf_counter() - started


def torch_step_seconds(settings: BenchSettings, images: np.ndarray, labels: np.ndarray) -> Optional[list[float]]:
    """The same model and loop in PyTorch (vectorized batches, all cores): seconds a step in each of TORCH_RUNS
    timings after one warm-up; None without torch or a twin."""
    try:
        import torch
    except ImportError:
        return None
    torch.manual_seed(0)
    model = _torch_model(settings.model, settings.model_options())
    if model is None:
        return None
    # PyTorch at its best on this CPU: channels-last layouts, and bfloat16 autocast where the CPU has it.
    model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    x = torch.from_numpy(images.reshape(-1, 1, 28, 28).astype(np.float32) / np.float32(255))
    y = torch.from_numpy(labels.astype(np.int64))
    order = torch.randperm(len(x))
    model.train()
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=kernels.cpu_has_bf16())

    def step(k: int) -> None:
        batch = order[(k * settings.batch_size) % len(x):][: settings.batch_size]
        with autocast:
            logits = model(x[batch].contiguous(memory_format=torch.channels_last))
            loss = torch.nn.functional.cross_entropy(logits.float(), y[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        loss.item(), (logits.argmax(1) == y[batch]).sum().item()  # the same syncs as the Paddle loop

    for k in range(settings.warmup):
        step(k)
    runs = []
    for run in range(TORCH_RUNS):
        started = time.perf_counter()
        for k in range(settings.steps):
            step(settings.warmup + run * settings.steps + k)
        runs.append((time.perf_counter() - started) / settings.steps)
    return runs


def _torch_model(name: str, options: dict[str, int]):
    """The PyTorch twin of a registered model (the same layers and sizes); None for a model without one."""
    from torch import nn

    def block(c_in: int, c_out: int, k: int, pad: int = 0) -> list:
        return [nn.Conv2d(c_in, c_out, k, padding=pad, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]

    def cnn(width: int = 16, hidden: int = 0):
        head = [nn.Linear(100 * width, hidden), nn.ReLU(), nn.Linear(hidden, 10)] if hidden else \
            [nn.Linear(100 * width, 10)]
        return nn.Sequential(*block(1, width, 5, 2), nn.MaxPool2d(2), *block(width, 2 * width, 3),
                             *block(2 * width, 4 * width, 3), nn.MaxPool2d(2), nn.Flatten(), *head)

    twins = {
        "fc": lambda: nn.Sequential(nn.Flatten(), nn.Linear(784, 128), nn.LeakyReLU(), nn.Linear(128, 10)),
        "conv": lambda: nn.Sequential(nn.Conv2d(1, 10, 5), nn.ReLU(), nn.Conv2d(10, 20, 5), nn.ReLU(),
                                      nn.MaxPool2d(2), nn.Flatten(), nn.Linear(2000, 10)),
        "cnn": cnn,
        "resnet": _torch_resnet,
        "airnet": _torch_airnet,
    }
    return twins[name](**options) if name in twins else None


def _torch_airnet(width: int = 64):
    """models.build_airnet as ../shared/peers/airbench_torch.py builds airbench94's net (its make_net, widths
    width/4w/4w): a frozen 2x2 whitening conv with a bias, three conv-pool-BN-GELU-conv-BN-GELU groups (BatchNorm
    without a learned scale), a global max-pool, a linear layer without bias, and 1/9 on the logits."""
    from torch import nn

    def norm(channels: int):
        layer = nn.BatchNorm2d(channels, eps=1e-12, momentum=0.6)
        layer.weight.requires_grad = False
        return layer

    def group(c_in: int, c_out: int) -> list:
        return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.MaxPool2d(2), norm(c_out), nn.GELU(),
                nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), norm(c_out), nn.GELU()]

    class Scale(nn.Module):
        def forward(self, x):
            return x / 9

    whitening = nn.Conv2d(1, 8, 2, bias=True)
    whitening.weight.requires_grad = False
    return nn.Sequential(whitening, nn.GELU(), *group(8, width), *group(width, 4 * width),
                         *group(4 * width, 4 * width), nn.AdaptiveMaxPool2d(1), nn.Flatten(),
                         nn.Linear(4 * width, 10, bias=False), Scale())


def _torch_resnet(width: int = 32, depth: int = 2):
    """models.build_resnet in PyTorch."""
    from torch import nn

    class Block(nn.Module):
        def __init__(self, c_in: int, c_out: int, stride: int):
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out),
                                      nn.ReLU(), nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False), nn.BatchNorm2d(c_out))
            self.shortcut = nn.Identity() if stride == 1 and c_in == c_out else nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

        def forward(self, x):
            return nn.functional.relu(self.body(x) + self.shortcut(x))

    layers, c_in = [nn.Conv2d(1, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU()], width
    for stage, c_out in enumerate((width, 2 * width, 4 * width)):
        for index in range(depth):
            layers.append(Block(c_in, c_out, 2 if stage > 0 and index == 0 else 1))
            c_in = c_out
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c_in, 10))


def steps_per_epoch(batch_size: int) -> int:
    """Training steps in one 60,000-image epoch."""
    return math.ceil(EPOCH_IMAGES / batch_size)


def conv_flops_per_image(settings: BenchSettings) -> float:
    """Floating-point operations of the model's convolutions in one training step, per image, counted
    from each conv's shapes: forward, backward-data and backward-weights are 2·MACs each, except that
    the first conv (it sees the images) computes no input gradient."""
    model = build_model(settings.model, **settings.model_options())
    forward: list[float] = []

    def count(layer: paddle.nn.Conv2D, inputs: tuple, output: paddle.Tensor) -> None:
        out_c, in_c, kh, kw = layer.weight.shape
        forward.append(2.0 * out_c * in_c * kh * kw * output.shape[2] * output.shape[3])

    hooks = [layer.register_forward_post_hook(count) for layer in model.sublayers()
             if isinstance(layer, paddle.nn.Conv2D)]
    model.eval()
    with paddle.no_grad():
        model(paddle.zeros([1, 1, 28, 28]))
    for hook in hooks:
        hook.remove()
    return 3 * sum(forward) - (forward[0] if forward else 0.0)


def matmul_peaks() -> dict[str, Optional[float]]:
    """GFLOP/s of a large matrix product on every core, float32 and bfloat16 (PyTorch's; numpy's float32
    without it): the ceiling a training step's convolutions are held against."""
    try:
        import torch
    except ImportError:
        a = np.random.default_rng(0).random((2048, 2048), dtype=np.float32)
        return {"fp32": _gflops(lambda: a @ a, 2048), "bf16": None}
    a = torch.rand(2048, 2048)
    b = a.to(torch.bfloat16)
    bf16 = _gflops(lambda: b @ b, 2048) if kernels.cpu_has_bf16() else None
    return {"fp32": _gflops(lambda: a @ a, 2048), "bf16": bf16}


def _gflops(product, n: int, repeats: int = 5) -> float:
    product()  # warm-up
    best = min(_timed(product) for _ in range(repeats))
    return 2.0 * n ** 3 / best / 1e9


def _timed(call) -> float:
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


def summarize(settings: BenchSettings, steps: dict[str, float], torch_steps: Optional[list[float]], predict_s: float,
              resolved: runtime.Runtime, step_flops: float, peaks: dict[str, Optional[float]],
              primitives: dict[str, int]) -> dict[str, Any]:
    """The benchmark's figures as one flat dict (the --json line). `steps`: seconds a step of each CPU path timed
    (onednn: kernels.cc, paddle: Paddle's ops); Paddle's figure is the faster one's, which --conv auto trains."""
    per_epoch = steps_per_epoch(settings.batch_size)
    paddle_step = min(steps.values())
    torch_step = None if torch_steps is None else statistics.median(torch_steps)
    paddle_peak = peaks["bf16"] if resolved.precision == "bf16" and peaks["bf16"] else peaks["fp32"]
    torch_peak = peaks["bf16"] or peaks["fp32"]  # PyTorch's step runs under bf16 autocast where it can
    paddle_gflops = step_flops / paddle_step / 1e9
    torch_gflops = None if torch_step is None else step_flops / torch_step / 1e9
    epoch = lambda step: None if step is None else round(step * per_epoch, 2)  # noqa: E731
    return {
        **asdict(settings),
        "paddle_epoch_s": epoch(paddle_step),
        "kernels_epoch_s": epoch(steps.get("onednn")),
        "paddle_ops_epoch_s": epoch(steps.get("paddle")),
        "kernels_ratio": round(steps["onednn"] / steps["paddle"], 2) if len(steps) == 2 else None,
        "torch_epoch_s": epoch(torch_step),
        "torch_epoch_s_runs": None if torch_steps is None else [epoch(s) for s in torch_steps],
        "ratio": None if torch_step is None else round(paddle_step / torch_step, 2),
        "predict_10k_s": round(predict_s, 3),
        "paddle_conv_kernel": resolved.kernels + ("-bf16" if resolved.precision == "bf16" else ""),
        "isa": resolved.isa,
        "onednn_primitives": primitives,
        "reference_primitives": reference_primitives(primitives),
        "paddle_version": paddle.__version__,
        "torch_version": _torch_version(),
        "conv_gflop_per_step": round(step_flops / 1e9, 3),
        "paddle_conv_gflops": round(paddle_gflops, 1),
        "torch_conv_gflops": None if torch_gflops is None else round(torch_gflops, 1),
        "peak_fp32_gflops": round(peaks["fp32"], 1),
        "peak_bf16_gflops": None if peaks["bf16"] is None else round(peaks["bf16"], 1),
        "paddle_peak_fraction": round(paddle_gflops / paddle_peak, 3),
        "torch_peak_fraction": None if torch_gflops is None else round(torch_gflops / torch_peak, 3),
    }


def _torch_version() -> Optional[str]:
    try:
        import torch
    except ImportError:
        return None
    return torch.__version__


def bench_worker(out: Path, settings: BenchSettings, images: np.ndarray, labels: np.ndarray) -> None:
    """One rank of a data-parallel timing; rank 0 writes the seconds per step to `out`."""
    seconds = paddle_step_seconds(settings, images, labels)
    if parallel.world()[0] == 0:
        out.write_text(json.dumps({"paddle_step_s": seconds}))


def run_bench(settings: BenchSettings, train_path: Path, test_images: np.ndarray) -> dict[str, Any]:
    """Time Paddle training through each CPU path (in this process or on settings.nproc), prediction, and
    PyTorch; list the oneDNN implementations a step of the faster path used."""
    table = read_train_csv(train_path)
    rows = min(len(table), settings.batch_size * max(settings.steps, settings.warmup))
    images, labels = table.images[:rows], table.labels[:rows]
    steps = {conv: _step_seconds(replace(settings, conv=conv, steps=_steps_of(settings, conv)), train_path, rows,
                                 images, labels) for conv in _paths(settings)}
    fastest = replace(settings, conv=min(steps, key=steps.__getitem__))  # what --conv auto trains with
    resolved = fastest.runtime()
    primitives = onednn_primitives(fastest, images, labels)
    predict_s = predict_seconds(settings, test_images[:PREDICT_IMAGES])
    torch_steps = torch_step_seconds(settings, images, labels)
    step_flops = conv_flops_per_image(settings) * settings.batch_size
    return summarize(settings, steps, torch_steps, predict_s, resolved, step_flops, matmul_peaks(), primitives)


def _paths(settings: BenchSettings) -> list[str]:
    """The CPU paths to time: both where auto could take either, else the one that would train."""
    if settings.conv != "auto":
        return [settings.conv]
    return ["onednn", "paddle"] if runtime.kernels_usable(settings.device) else ["paddle"]


def _steps_of(settings: BenchSettings, conv: str) -> int:
    """Timed steps of a path: Paddle's own ops beside the kernels get fewer (they are the slow reference)."""
    return min(settings.steps, OPS_STEPS) if conv == "paddle" and settings.conv == "auto" else settings.steps


def _step_seconds(settings: BenchSettings, train_path: Path, rows: int, images: np.ndarray,
                  labels: np.ndarray) -> float:
    """Seconds per global training step of `settings` (its conv path), in this process or on its processes."""
    if settings.nproc == 1:
        return paddle_step_seconds(settings, images, labels)
    return _launched_step_seconds(settings, settings.runtime(), train_path, rows)


def onednn_primitives(settings: BenchSettings, images: np.ndarray, labels: np.ndarray) -> dict[str, int]:
    """The oneDNN primitives one training step ran (`convolution jit:avx2 forward_training`: times), from oneDNN's
    verbose lines; `ref:` implementations are oneDNN's slow reference code."""
    batch = settings.batch_size // settings.nproc
    model, optimizer, loader = _training(settings, images[:batch], labels[:batch], batch)
    with tempfile.TemporaryDirectory() as folder:
        lines = Path(folder) / "verbose.txt"
        with kernels.onednn_verbose(lines):
            train_one_epoch(model, loader, optimizer, max_steps=1)
        return count_primitives(lines.read_text(errors="replace"))


def count_primitives(verbose: str) -> dict[str, int]:
    """How often each (kind, implementation, propagation) of oneDNN's `exec` lines ran."""
    counts: collections.Counter = collections.Counter()
    for line in verbose.splitlines():
        fields = line.split(",")
        if len(fields) > 7 and fields[0] == "onednn_verbose" and fields[3] == "exec":
            counts[" ".join(fields[5:8])] += 1
    return dict(counts.most_common())


def reference_primitives(primitives: dict[str, int]) -> list[str]:
    """Those of `primitives` that ran oneDNN's reference code."""
    return [name for name in primitives if name.split()[1].startswith("ref")]


def _launched_step_seconds(settings: BenchSettings, resolved: runtime.Runtime, train_path: Path, rows: int) -> float:
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "paddle.json"
        args = ["bench", str(out), str(train_path), str(rows), json.dumps(asdict(settings))]
        ended = parallel.launch(args, settings.nproc, Path(folder) / "logs", resolved.device)
        if ended.code != 0 or not out.exists():
            raise CompetitionError(f"the {settings.nproc}-process timing failed (exit {ended.code}"
                                   + (f": {ended.failure}" if ended.failure else "") + ").")
        return json.loads(out.read_text())["paddle_step_s"]
