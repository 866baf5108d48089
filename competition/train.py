"""Training: separate train and validation phases, best checkpoint by validation accuracy."""
from __future__ import annotations

import contextlib
import io
import logging
import math
import random
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import paddle
import paddle.nn.functional as F
from paddle import nn
from tqdm import tqdm

from . import checkpoint, kernels, parallel
from .config import Config
from .errors import CompetitionError, TrainingInterrupted
from .data import (EVAL_BATCH, TRAIN_FILE, Augment, FashionMNIST, ImageTable, data_file, make_loader,
                   read_train_csv, stratified_split)
from .models import build_model, count_parameters

log = logging.getLogger("competition")
Data = tuple[ImageTable, np.ndarray, np.ndarray]  # table, training indices, validation indices


@dataclass
class RunResult:
    """What a finished training run produced."""

    run_dir: Path
    history: list[dict[str, float]]
    best_val_acc: Optional[float]
    best_epoch: int


class WeightAverage:
    """Exponential moving average of a model's weights and BatchNorm statistics.

    Written here because Paddle's dygraph has none: paddle.incubate's
    ModelAverage averages over a sliding window of steps, and
    paddle.static.ExponentialMovingAverage works only in static graphs.
    """

    def __init__(self, model: nn.Layer, decay: float):
        self.model, self.decay = model, decay
        self.shadow = {k: v.detach().clone() for k, v in model.state_dict().items()}

    @paddle.no_grad()
    def update(self) -> None:
        """Move the average towards the current weights (after each optimizer step)."""
        for name, value in self.model.state_dict().items():
            if paddle.is_floating_point(value):
                self.shadow[name] = self.decay * self.shadow[name] + (1 - self.decay) * value
            else:
                self.shadow[name] = value.clone()  # counters such as BN's step count

    @contextlib.contextmanager
    def applied(self):
        """Use the averaged weights inside the block, then restore the trained ones."""
        trained = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        self.model.set_state_dict(self.shadow)
        try:
            yield
        finally:
            self.model.set_state_dict(trained)

    def state(self) -> dict[str, np.ndarray]:
        """The average as numpy arrays (saved in last.ckpt)."""
        return {k: v.numpy() for k, v in self.shadow.items()}

    def load(self, state: dict[str, np.ndarray]) -> None:
        """Restore an average written by state()."""
        self.shadow = {k: paddle.to_tensor(v) for k, v in state.items()}


def run_result(run_dir: Path) -> RunResult:
    """What a finished run folder says about itself (for runs trained by other processes)."""
    summary = checkpoint.read_summary(Path(run_dir))
    history = summary.to_dict("records")
    best = checkpoint.best_row(summary)
    if best is None:
        return RunResult(Path(run_dir), history, None, int(summary["epoch"].iloc[-1]))
    return RunResult(Path(run_dir), history, float(best["val_acc"]), int(best["epoch"]))


def select_device(choice: str = "auto", conv: str = "auto", precision: str = "fp32") -> str:
    """'gpu' when Paddle has CUDA and sees a device (or it was asked for), else 'cpu'.

    On the CPU, `conv` (auto | onednn | paddle) also picks the conv layers' kernel and
    `precision` (fp32 | bf16) what its training steps compute in.
    """
    has_gpu = parallel.has_gpu()
    if choice == "gpu" and not has_gpu:
        raise CompetitionError("--device gpu: this Paddle build has no CUDA support or sees no GPU; "
                               "install paddlepaddle-gpu (see README) or use --device cpu.")
    device = ("gpu" if has_gpu else "cpu") if choice == "auto" else choice
    # Each rank of a multi-GPU run uses the GPU the launcher gave it.
    paddle.set_device(f"gpu:{parallel.local_device_id()}" if device == "gpu" and parallel.is_worker() else device)
    kernels.use(conv, device, precision)
    return device


def _kernel_note() -> str:
    """What the training log says of the CPU kernels in use."""
    notes = {"onednn": ", conv and pool kernels of kernels.cc",
             "onednn-bf16": ", conv and pool kernels of kernels.cc, convs reading bfloat16"}
    return notes.get(kernels.mode(), "")


def seed_everything(seed: int) -> None:
    """Seed random, numpy and paddle from the configuration."""
    random.seed(seed)
    np.random.seed(seed)
    paddle.seed(seed)


def load_training_data(config: Config) -> Data:
    """The training table and its seeded, stratified (train, validation) indices."""
    table = read_train_csv(data_file(TRAIN_FILE, config.train, config.data_dir))
    if config.rows:
        table = table.head(config.rows)
    train_idx, val_idx = stratified_split(table.labels, config.val_size, config.seed)
    return table, train_idx, val_idx


def build_optimizer(config: Config, model: nn.Layer, steps_per_epoch: int) -> paddle.optimizer.Optimizer:
    """The configured optimizer; its learning rate is an LRScheduler stepped every batch
    (its state travels in the optimizer's state dict, so resume keeps the schedule)."""
    rate = build_schedule(config, steps_per_epoch)
    params = model.parameters()
    if config.optimizer == "adamw":
        return paddle.optimizer.AdamW(learning_rate=rate, parameters=params, weight_decay=config.weight_decay)
    decay = paddle.regularizer.L2Decay(config.weight_decay) if config.weight_decay else None
    if config.optimizer == "sgd":
        return paddle.optimizer.Momentum(learning_rate=rate, momentum=0.9, use_nesterov=True,
                                         parameters=params, weight_decay=decay)
    return paddle.optimizer.Adam(learning_rate=rate, parameters=params, weight_decay=decay)


def build_schedule(config: Config, steps_per_epoch: int) -> paddle.optimizer.lr.LRScheduler:
    """The learning-rate schedule over every training step of the run."""
    total = max(1, config.epochs * steps_per_epoch)
    warmup = min(total - 1, round(config.warmup_epochs * steps_per_epoch))
    if config.schedule == "onecycle":  # has its own warm-up phase
        return paddle.optimizer.lr.OneCycleLR(max_learning_rate=config.lr, total_steps=total,
                                              end_learning_rate=config.lr / 1000)
    if config.schedule == "cosine":
        schedule = paddle.optimizer.lr.CosineAnnealingDecay(config.lr, T_max=total - warmup)
    else:
        schedule = paddle.optimizer.lr.LambdaDecay(config.lr, lambda step: 1.0)
    if warmup:
        schedule = paddle.optimizer.lr.LinearWarmup(schedule, warmup, start_lr=config.lr / 10, end_lr=config.lr)
    return schedule


def model_summary(model: nn.Layer) -> str:
    """paddle.summary's layer table, captured instead of printed."""
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        paddle.summary(model, (1, 1, 28, 28))
    return buffer.getvalue().rstrip()


def train_one_epoch(model: nn.Layer, loader: paddle.io.DataLoader, optimizer: paddle.optimizer.Optimizer,
                    max_steps: Optional[int] = None, desc: str = "train",
                    step_losses: Optional[list[float]] = None,
                    label_smoothing: float = 0.0, ema: Optional[WeightAverage] = None) -> dict[str, float]:
    """One pass over the training batches; returns mean loss, accuracy, steps and samples.

    Each batch's loss is appended to `step_losses` when one is given.
    """
    model.train()
    metric = paddle.metric.Accuracy()
    total_loss, seen = 0.0, 0
    steps = min(len(loader), max_steps or len(loader))
    # disable=None: a bar on a terminal, nothing when output goes to a file.
    bar = tqdm(total=steps, desc=desc, unit="batch", leave=False, disable=None)
    done = 0
    for x, y in loader:
        if done == steps:
            break
        logits = model(x)
        loss = F.cross_entropy(logits, y, label_smoothing=label_smoothing)
        loss.backward()
        optimizer.step()
        optimizer.clear_grad()
        if isinstance(optimizer._learning_rate, paddle.optimizer.lr.LRScheduler):
            optimizer._learning_rate.step()  # per batch; Paddle has no public getter for it
        if ema is not None:
            ema.update()
        metric.update(metric.compute(logits, y.unsqueeze(1)))
        batch_loss = float(loss)
        if step_losses is not None:
            step_losses.append(batch_loss)
        total_loss += batch_loss * len(y)
        seen += len(y)
        done += 1
        bar.update(1)
        bar.set_postfix(loss=f"{total_loss / seen:.4f}", refresh=False)
    bar.close()
    return {"loss": total_loss / seen, "acc": float(metric.accumulate()), "steps": float(done),
            "samples": float(seen)}


@paddle.no_grad()
def evaluate(model: nn.Layer, loader: paddle.io.DataLoader) -> dict[str, float]:
    """Mean loss and accuracy over a labeled loader, in eval mode without gradients."""
    model.eval()
    metric = paddle.metric.Accuracy()
    total_loss, seen = 0.0, 0
    for x, y in loader:
        logits = model(x)
        total_loss += float(F.cross_entropy(logits, y, reduction="sum"))
        metric.update(metric.compute(logits, y.unsqueeze(1)))
        seen += len(y)
    return {"loss": total_loss / max(seen, 1), "acc": float(metric.accumulate()), "samples": float(seen)}


def fit(config: Config) -> RunResult:
    """Train in this process: prepare the run folder, then train it."""
    run_dir, data = prepare_run(config)
    return train_run(run_dir, data=data)


def prepare_run(config: Config) -> tuple[Path, Data]:
    """Check the configuration and the data, then create the run folder with config.json.

    Everything that can be refused is refused before the folder exists.
    """
    config.validate()
    select_device(config.device, config.conv)  # a missing GPU (or --conv onednn kernel) fails here
    build_model(config.model, **config.model_options())  # a bad model fails before the data is read
    data = load_training_data(config)
    run_dir = checkpoint.create_run_dir(config.runs_dir, config.model)
    checkpoint.save_config(run_dir, config)
    return run_dir, data


def prepare_resume(run_dir: Path, epochs: Optional[int] = None) -> Config:
    """An interrupted run's configuration, with a new epoch count saved when given."""
    if not (Path(run_dir) / "config.json").is_file():
        raise CompetitionError(f"{run_dir}: not a run folder (no config.json); nothing to resume.")
    config = Config.load(Path(run_dir) / "config.json")
    if epochs is not None:
        config.epochs = epochs
        checkpoint.save_config(Path(run_dir), config.validate())
    return config


def train_run(run_dir: Path, resume: bool = False, data: Optional[Data] = None) -> RunResult:
    """Train the run folder's configuration, alone or as one rank of several processes."""
    config = Config.load(Path(run_dir) / "config.json").validate()
    parallel.init()
    device = select_device(config.device, config.conv, config.precision)
    seed_everything(config.seed)
    with _stable_names():
        model = build_model(config.model, **config.model_options())
        return _train(config, Path(run_dir), device, model, data or load_training_data(config), resume)


def _stable_names():
    """Fresh parameter/accumulator names (linear_0.w_0_moment1_0…) for this run.

    The optimizer's state is keyed by names from a process-wide counter, so a
    resumed process would look for other keys without a fresh namespace.
    """
    return paddle.utils.unique_name.guard()


def _train(config: Config, run_dir: Path, device: str, model: nn.Layer, data: Data,
           resuming: bool) -> RunResult:
    table, train_idx, val_idx = data
    rank, world = parallel.world()
    train_loader = make_loader(FashionMNIST(table.images[train_idx], table.labels[train_idx], _augment(config)),
                               config.batch_size // world, shuffle=True)
    optimizer = build_optimizer(config, model, min(len(train_loader), config.max_steps or len(train_loader)))
    ema = WeightAverage(model, config.ema) if config.ema else None
    if resuming:
        progress = checkpoint.load_state(run_dir, model, optimizer)
        if ema is not None:
            ema.load(progress["ema"])
        if rank == 0:
            checkpoint.trim_step_losses(run_dir, progress["epoch"])
    else:
        progress = {"epoch": 0, "best_acc": -1.0, "best_epoch": 0, "history": [],
                    "ema": ema.state() if ema else None}
        if rank == 0:
            checkpoint.save_state(run_dir, model, optimizer, progress)  # an interrupted epoch 1 can resume
    with _rank_logging(run_dir, rank), _signals_interrupt():
        log.info("%s on %s x%d (Paddle %s%s); run folder: %s", "resuming after epoch %d" % progress["epoch"]
                 if resuming else "training", device, world, paddle.__version__,
                 _kernel_note(), run_dir)
        log.info("data: %s, %d training rows, %d validation rows", table.path, len(train_idx), len(val_idx))
        if rank == 0:
            log.info("model %s, %d parameters\n%s", config.model, count_parameters(model), model_summary(model))
        try:
            _epochs(config, model, optimizer, train_loader, data, run_dir, progress, ema)
            if rank == 0:
                checkpoint.export_inference(run_dir)  # for fast prediction with paddle.inference
        except KeyboardInterrupt:
            raise TrainingInterrupted(
                f"interrupted during epoch {progress['epoch'] + 1}; epochs 1-{progress['epoch']} are saved "
                f"in {run_dir}; continue with: competition train --resume {run_dir}") from None
    has_val = len(val_idx) > 0
    return RunResult(run_dir, progress["history"], progress["best_acc"] if has_val else None,
                     progress["best_epoch"])


def _augment(config: Config) -> Augment:
    return Augment(crop_pad=config.crop_pad, flip=config.flip, erase=config.erase)


def _epochs(config: Config, model: nn.Layer, optimizer: paddle.optimizer.Optimizer,
            train_loader: paddle.io.DataLoader, data: Data, run_dir: Path, progress: dict,
            ema: Optional[WeightAverage]) -> None:
    """Each rank's loader takes batch_size / world rows, so the global batch is --batch-size."""
    table, train_idx, val_idx = data
    rank, world = parallel.world()
    net = paddle.DataParallel(model) if world > 1 else model  # averages gradients over ranks
    # Every rank validates its share of the rows. (Rank 0 alone kept the others waiting in their
    # next gradient all-reduce past gloo's 30 s timeout: a 2-process resnet 32x2 run died of it.)
    val_rows = val_idx[rank::world]
    val_loader = make_loader(FashionMNIST(table.images[val_rows], table.labels[val_rows]),
                             EVAL_BATCH, shuffle=False) if len(val_idx) else None
    for epoch in range(progress["epoch"] + 1, config.epochs + 1):
        started = time.perf_counter()
        # Mixing the seed into the sampler's epoch makes the shuffle follow --seed.
        train_loader.dataset.set_epoch(config.seed * 100_003 + epoch)
        losses: list[float] = []
        lr = optimizer.get_lr()  # the rate the epoch starts with
        train = train_one_epoch(net, train_loader, optimizer, config.max_steps, f"epoch {epoch}", losses,
                                config.label_smoothing, ema)
        train = parallel.mean_over_ranks(train)
        # Validation and the best checkpoint use the averaged weights when there are any;
        # last.ckpt (in _record_epoch) keeps the trained ones.
        with ema.applied() if ema else contextlib.nullcontext():
            val = _validate(model, val_loader)
            if rank == 0 and (val_loader is None or val["acc"] > progress["best_acc"]):
                # Without a validation split the last epoch is the one to keep.
                progress["best_acc"], progress["best_epoch"] = val["acc"], epoch
                checkpoint.save_checkpoint(run_dir, model, optimizer)
        progress["epoch"] = epoch
        if rank == 0:
            if ema is not None:
                progress["ema"] = ema.state()
            _record_epoch(config, model, optimizer, run_dir, progress, {**train, "lr": lr}, val, losses, started)


def _validate(model: nn.Layer, val_loader: Optional[paddle.io.DataLoader]) -> dict[str, float]:
    """Loss and accuracy over every rank's share of the validation rows, with rank 0's weights."""
    if val_loader is None:
        return {"loss": math.nan, "acc": math.nan}
    parallel.copy_rank0_state(model)
    return parallel.mean_over_ranks(evaluate(model, val_loader))


def _record_epoch(config: Config, model: nn.Layer, optimizer: paddle.optimizer.Optimizer, run_dir: Path,
                  progress: dict, train: dict[str, float], val: dict[str, float], losses: list[float],
                  started: float) -> None:
    """Write the epoch's figures and everything a resume needs (rank 0)."""
    epoch = progress["epoch"]
    history = progress["history"]
    history.append({"epoch": epoch, "train_loss": train["loss"], "train_acc": train["acc"],
                    "val_loss": val["loss"], "val_acc": val["acc"], "lr": train["lr"],
                    "seconds": time.perf_counter() - started})
    checkpoint.append_step_losses(run_dir, epoch, losses)
    checkpoint.write_summary(run_dir, history)
    checkpoint.save_state(run_dir, model, optimizer, progress)
    log.info("epoch %d/%d [Train] loss %.4f acc %.4f [Eval] loss %.4f acc %.4f lr %.2g %.1fs",
             epoch, config.epochs, train["loss"], train["acc"], val["loss"], val["acc"],
             history[-1]["lr"], history[-1]["seconds"])


@contextlib.contextmanager
def _rank_logging(run_dir: Path, rank: int):
    """Rank 0 logs to the console and train.log; other ranks only warn (their launcher log keeps it)."""
    if rank == 0:
        with _log_to(run_dir / "train.log"):
            yield
        return
    level = log.level
    log.setLevel(logging.WARNING)
    try:
        yield
    finally:
        log.setLevel(level)


@contextlib.contextmanager
def _signals_interrupt():
    """Make SIGTERM interrupt training the way Ctrl-C (SIGINT) does."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def _log_to(path: Path):
    """Also write the package's log records to a file in the run folder."""
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    log.addHandler(handler)
    try:
        yield
    finally:
        log.removeHandler(handler)
        handler.close()
