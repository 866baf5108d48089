"""`competition bench`: Paddle training and prediction speed, side by side with PyTorch."""
from __future__ import annotations

import json
import math
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import paddle
import paddle.distributed as dist

from . import checkpoint, parallel, predict, runtime
from .config import Config
from .data import FashionMNIST, make_loader, read_train_csv
from .errors import CompetitionError
from .models import build_model
from .train import train_one_epoch

EPOCH_IMAGES = 60_000
PREDICT_IMAGES = 10_000


@dataclass
class BenchSettings:
    """What one benchmark measures."""

    model: str = "cnn"
    batch_size: int = 256
    steps: int = 30  # timed training steps, after `warmup` untimed ones
    warmup: int = 5
    nproc: int = 1
    device: str = "auto"
    conv: str = "auto"  # CPU conv kernel, as `train --conv`
    precision: str = "fp32"  # as `train --precision`

    def runtime(self) -> runtime.Runtime:
        """What the timed steps run on, resolved as for a training run."""
        config = Config(device=self.device, conv=self.conv, precision=self.precision, nproc=self.nproc)
        return runtime.resolve(config, self.nproc)


def paddle_step_seconds(settings: BenchSettings, images: np.ndarray, labels: np.ndarray) -> float:
    """Seconds per global training step, as `competition train` runs them (data-parallel when launched)."""
    parallel.init()
    cpu_kernels = runtime.apply(settings.runtime())
    rank, world = parallel.world()
    paddle.seed(0)
    model = build_model(settings.model, cpu_kernels)
    net = paddle.DataParallel(model) if world > 1 else model
    optimizer = paddle.optimizer.Adam(learning_rate=1e-3, parameters=model.parameters())
    loader = make_loader(FashionMNIST(images, labels), settings.batch_size // world, shuffle=True)
    train_one_epoch(net, loader, optimizer, max_steps=settings.warmup)
    if world > 1:
        dist.barrier()
    started = time.perf_counter()
    done = train_one_epoch(net, loader, optimizer, max_steps=settings.steps)[0]["steps"]
    return (time.perf_counter() - started) / done


def predict_seconds(model_name: str, images: np.ndarray) -> float:
    """Seconds to predict `images` through an exported model and a warmed-up paddle.inference predictor."""
    with tempfile.TemporaryDirectory() as folder:
        checkpoint.save_inference(build_model(model_name), Path(folder))
        predictor = predict.load_predictor(Path(folder))
        started = time.perf_counter()
        predict.run_predictor(predictor, images)
        return time.perf_counter() - started


def torch_step_seconds(settings: BenchSettings, images: np.ndarray, labels: np.ndarray) -> Optional[float]:
    """The same model and loop in PyTorch (vectorized batches, all cores); None without torch or a twin."""
    try:
        import torch
    except ImportError:
        return None
    torch.manual_seed(0)
    model = _torch_model(settings.model)
    if model is None:
        return None
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.from_numpy(images.reshape(-1, 1, 28, 28).astype(np.float32) / np.float32(255))
    y = torch.from_numpy(labels.astype(np.int64))
    order = torch.randperm(len(x))
    model.train()

    def step(k: int) -> None:
        batch = order[(k * settings.batch_size) % len(x):][: settings.batch_size]
        logits = model(x[batch])
        loss = torch.nn.functional.cross_entropy(logits, y[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        loss.item(), (logits.argmax(1) == y[batch]).sum().item()  # the same syncs as the Paddle loop

    for k in range(settings.warmup):
        step(k)
    started = time.perf_counter()
    for k in range(settings.steps):
        step(settings.warmup + k)
    return (time.perf_counter() - started) / settings.steps


def _torch_model(name: str):
    from torch import nn

    def block(c_in: int, c_out: int, k: int, pad: int = 0) -> list:
        return [nn.Conv2d(c_in, c_out, k, padding=pad, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]

    twins = {
        "fc": lambda: nn.Sequential(nn.Flatten(), nn.Linear(784, 128), nn.LeakyReLU(), nn.Linear(128, 10)),
        "conv": lambda: nn.Sequential(nn.Conv2d(1, 10, 5), nn.ReLU(), nn.Conv2d(10, 20, 5), nn.ReLU(),
                                      nn.MaxPool2d(2), nn.Flatten(), nn.Linear(2000, 10)),
        "cnn": lambda: nn.Sequential(*block(1, 16, 5, 2), nn.MaxPool2d(2), *block(16, 32, 3), *block(32, 64, 3),
                                     nn.MaxPool2d(2), nn.Flatten(), nn.Linear(1600, 10)),
    }
    return twins[name]() if name in twins else None  # resnet has no PyTorch twin yet


def steps_per_epoch(batch_size: int) -> int:
    """Training steps in one 60,000-image epoch."""
    return math.ceil(EPOCH_IMAGES / batch_size)


def summarize(settings: BenchSettings, paddle_step: float, torch_step: Optional[float],
              predict_s: float, ran: runtime.Runtime) -> dict[str, Any]:
    """The benchmark's figures as one flat dict (the --json line)."""
    per_epoch = steps_per_epoch(settings.batch_size)
    torch_epoch = None if torch_step is None else torch_step * per_epoch
    return {
        **asdict(settings),
        "paddle_epoch_s": round(paddle_step * per_epoch, 2),
        "torch_epoch_s": None if torch_epoch is None else round(torch_epoch, 2),
        "ratio": None if torch_epoch is None else round(paddle_step * per_epoch / torch_epoch, 2),
        "predict_10k_s": round(predict_s, 3),
        "paddle_conv_kernel": ran.kernels + ("-bf16" if ran.precision == "bf16" else ""),
        "paddle_version": paddle.__version__,
        "torch_version": _torch_version(),
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
    """Time Paddle training (in this process or on settings.nproc), prediction, and PyTorch."""
    ran = settings.runtime()
    table = read_train_csv(train_path)
    rows = min(len(table), settings.batch_size * max(settings.steps, settings.warmup))
    images, labels = table.images[:rows], table.labels[:rows]
    if settings.nproc == 1:
        paddle_step = paddle_step_seconds(settings, images, labels)
    else:
        paddle_step = _launched_step_seconds(settings, ran, train_path, rows)
    predict_s = predict_seconds(settings.model, test_images[:PREDICT_IMAGES])
    return summarize(settings, paddle_step, torch_step_seconds(settings, images, labels), predict_s, ran)


def _launched_step_seconds(settings: BenchSettings, ran: runtime.Runtime, train_path: Path, rows: int) -> float:
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "paddle.json"
        args = ["bench", str(out), str(train_path), str(rows), json.dumps(asdict(settings))]
        ended = parallel.launch(args, settings.nproc, Path(folder) / "logs", ran.device)
        if ended.code != 0 or not out.exists():
            raise CompetitionError(f"the {settings.nproc}-process timing failed (exit {ended.code}"
                                   + (f": {ended.failure}" if ended.failure else "") + ").")
        return json.loads(out.read_text())["paddle_step_s"]
