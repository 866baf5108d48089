"""Training: separate train and validation phases, best checkpoint by validation accuracy."""
from __future__ import annotations

import contextlib
import gc
import io
import logging
import math
import random
import sys
import time
import traceback
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
import paddle
import paddle.nn.functional as F
from paddle import nn

from . import checkpoint, folders, kernels, parallel, plan, predict, runtime
from .checkpoint import RunWriter, TrainState, Validation
from .config import Config
from .data import (EVAL_BATCH, Augment, FashionMNIST, ImageTable, TrainingData, load_training_data,
                   make_loader)
from .errors import TrainingInterrupted
from .models import build_model, count_parameters, fit_to_data, learned
from .progress import EpochBar, Progress
from .stats import wilson_interval

log = logging.getLogger("competition")


@dataclass
class RunResult:
    """What a finished training run produced."""

    run_dir: Path
    history: list[dict[str, float]]
    best_val_acc: Optional[float]  # None without a validation split
    best_epoch: int
    val_acc_tta2: Optional[float] = None  # the best checkpoint's accuracy with flip TTA
    val_acc_tta6: Optional[float] = None  # … with six-view TTA (mirrors and 1-pixel shifts)
    val_rows: int = 0  # validation rows behind those accuracies (their 95% interval: stats.accuracy_text)


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
        """The average as numpy arrays (saved in last.ckpt with the train state)."""
        return {k: v.numpy() for k, v in self.shadow.items()}

    def load(self, state: dict[str, np.ndarray]) -> None:
        """Restore an average written by state()."""
        self.shadow = {k: paddle.to_tensor(v) for k, v in state.items()}


class Lookahead(WeightAverage):
    """airbench94's lookahead: every EVERY steps the average moves towards the weights and the weights are set to
    it; the average keeps 0.95^5 x (step / total)^3 of itself, so it follows the weights early and settles as the
    schedule ends, and the last step leaves the weights at the average. Against --ema 0.99 on airnet 16 x 4
    epochs: 93.26% against 91.84% with six views (two seeds, 10,000 rows; Zen 4, bfloat16; BENCHMARKS.md)."""

    EVERY = 5

    def __init__(self, model: nn.Layer, total: int):
        super().__init__(model, 0.0)
        self.total, self.step = total, 0  # the schedule's steps (a re-plan changes them), the steps taken

    @paddle.no_grad()
    def update(self) -> None:
        """After each optimizer step: every EVERY steps, and at the last, the weights become the average."""
        self.step += 1
        if self.step % self.EVERY and self.step < self.total:
            return
        self.decay = 1.0 if self.step >= self.total else 0.95 ** 5 * (self.step / self.total) ** 3
        super().update()
        self.model.set_state_dict(self.shadow)

    @contextlib.contextmanager
    def applied(self):
        """The weights are the average already (up to EVERY - 1 steps after it): nothing to swap."""
        yield


def weight_average(config: Config, model: nn.Layer, total: int) -> Optional[WeightAverage]:
    """The configured weight average (--lookahead over `total` steps, --ema), or None."""
    if config.lookahead:
        return Lookahead(model, total)
    return WeightAverage(model, config.ema) if config.ema else None


def run_result(run_dir: Path) -> RunResult:
    """What a finished run folder says about itself (also for runs trained by other processes)."""
    summary = checkpoint.read_summary(Path(run_dir))
    history = summary.to_dict("records")
    best = checkpoint.best_row(summary)
    if best is None:
        return RunResult(Path(run_dir), history, None, int(summary["epoch"].iloc[-1]))
    validation = Validation.load(Path(run_dir))
    if validation is None:
        return RunResult(Path(run_dir), history, float(best["val_acc"]), int(best["epoch"]))
    scores = validation.accuracies()
    return RunResult(Path(run_dir), history, float(best["val_acc"]), int(best["epoch"]), scores["val_acc_tta2"],
                     scores.get("val_acc_tta6"), len(validation.labels))


def seed_everything(seed: int) -> None:
    """Seed random, numpy and paddle from the configuration."""
    random.seed(seed)
    np.random.seed(seed)
    paddle.seed(seed)


def build_optimizer(config: Config, model: nn.Layer, steps_per_epoch: int
                    ) -> tuple[paddle.optimizer.Optimizer, paddle.optimizer.lr.LRScheduler]:
    """The configured optimizer and its learning-rate schedule, which the training loop steps every batch
    (the schedule's state travels in the optimizer's state dict, so resume keeps it)."""
    rate = build_schedule(config, steps_per_epoch)
    params = _param_groups(config, model)
    if config.optimizer == "adamw":
        optimizer = paddle.optimizer.AdamW(learning_rate=rate, parameters=params, weight_decay=config.weight_decay)
        return optimizer, rate
    decay = paddle.regularizer.L2Decay(config.weight_decay) if config.weight_decay else None
    if config.optimizer == "sgd":
        return paddle.optimizer.Momentum(learning_rate=rate, momentum=config.momentum, use_nesterov=True,
                                         parameters=params, weight_decay=decay), rate
    return paddle.optimizer.Adam(learning_rate=rate, parameters=params, weight_decay=decay), rate


def _param_groups(config: Config, model: nn.Layer) -> list:
    """The learned parameters, with BatchNorm shifts in a group of their own when --norm-bias-lr scales their
    rate. Parameters frozen by a learning rate of 0 stay out (a group's rate would replace that 0)."""
    params = [p for p in model.parameters() if learned(p)]
    if config.norm_bias_lr == 1.0:
        return params
    shift_ids = {id(layer.bias) for layer in model.sublayers()
                 if isinstance(layer, nn.layer.norm._BatchNormBase) and layer.bias is not None}
    shifts = [p for p in params if id(p) in shift_ids]
    others = [p for p in params if id(p) not in shift_ids]
    # A group's learning_rate multiplies the schedule's; its float weight_decay is an L2 coefficient.
    return [{"params": others},
            {"params": shifts, "learning_rate": config.norm_bias_lr,
             "weight_decay": config.weight_decay / config.norm_bias_lr}]


def build_schedule(config: Config, steps_per_epoch: int) -> paddle.optimizer.lr.LRScheduler:
    """The learning-rate schedule over every training step of the run."""
    total = max(1, config.epochs * steps_per_epoch)
    warmup = min(total - 1, round(config.warmup_epochs * steps_per_epoch))
    if config.schedule == "onecycle":  # has its own warm-up phase
        return paddle.optimizer.lr.OneCycleLR(max_learning_rate=config.lr, total_steps=total,
                                              end_learning_rate=config.lr / 1000)
    if config.schedule == "linear":  # airbench's: up from 0.2x over 23% of the steps, then down to 0.07x
        return paddle.optimizer.lr.OneCycleLR(max_learning_rate=config.lr, total_steps=total, divide_factor=5,
                                              end_learning_rate=0.07 * config.lr, phase_pct=0.23,
                                              anneal_strategy="linear")
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
                    scheduler: Optional[paddle.optimizer.lr.LRScheduler] = None, max_steps: Optional[int] = None,
                    label_smoothing: float = 0.0, ema: Optional[WeightAverage] = None,
                    progress: Optional[Progress] = None, epoch: tuple[int, int] = (1, 1)
                    ) -> tuple[dict[str, float], list[float]]:
    """One pass over the training batches: (mean loss, accuracy, steps and samples; each step's loss).

    `scheduler` is stepped after every batch; `progress` hears of every step of `epoch` (number, of).
    """
    model.train()
    metric = paddle.metric.Accuracy()
    total_loss, seen, losses = 0.0, 0, []
    steps = epoch_steps(loader, max_steps)
    with parallel.batches_of(loader) as batches:
        for x, y in batches:
            if len(losses) == steps:
                break
            logits = model(x)
            loss = F.cross_entropy(logits, y, label_smoothing=label_smoothing)
            loss.backward()
            optimizer.step()
            optimizer.clear_grad()
            if scheduler is not None:
                scheduler.step()
            if ema is not None:
                ema.update()
            metric.update(metric.compute(logits, y.unsqueeze(1)))
            losses.append(float(loss))
            total_loss += losses[-1] * len(y)
            seen += len(y)
            if progress is not None:
                progress(*epoch, len(losses), steps, total_loss / seen)
    metrics = {"loss": total_loss / seen, "acc": float(metric.accumulate()), "steps": float(len(losses)),
               "samples": float(seen)}
    return metrics, losses


@paddle.no_grad()
def evaluate(model: nn.Layer, loader: paddle.io.DataLoader) -> dict[str, float]:
    """Mean loss and accuracy over a labeled loader, in eval mode without gradients."""
    model.eval()
    metric = paddle.metric.Accuracy()
    total_loss, seen = 0.0, 0
    with parallel.batches_of(loader) as batches:
        for x, y in batches:
            logits = model(x)
            total_loss += float(F.cross_entropy(logits, y, reduction="sum"))
            metric.update(metric.compute(logits, y.unsqueeze(1)))
            seen += len(y)
    return {"loss": total_loss / max(seen, 1), "acc": float(metric.accumulate()), "samples": float(seen)}


def train_run(run_dir: Path, resume: bool = False, data: Optional[TrainingData] = None) -> RunResult:
    """Train the run folder's configuration on its runtime, alone or as one rank of several processes."""
    run_dir = Path(run_dir)
    config = Config.load(run_dir / folders.CONFIG_JSON).checked()
    resolved = runtime.Runtime.load(run_dir)
    parallel.init()
    cpu_kernels = runtime.apply(resolved)
    seed_everything(config.seed)
    table, train_idx, val_idx = data or load_training_data(config)
    rank, world = parallel.world()
    writer = RunWriter(run_dir, active=rank == 0, launched=parallel.is_worker())
    with _stable_names(), writer.logging(), _half_built_loaders_quiet():
        model = kernels.accelerate(build_model(config.model, **config.model_options()), cpu_kernels)
        train_set = FashionMNIST(table.images[train_idx], table.labels[train_idx], _augment(config))
        if not resume:  # a resumed run's whitening filters come with its checkpoint
            fit_to_data(model, train_set.batch(np.arange(min(5000, len(train_set))))[0])
        train_loader = make_loader(train_set, config.batch_size // world, shuffle=True)  # a global batch
        steps = epoch_steps(train_loader, config.max_steps)
        optimizer, scheduler = build_optimizer(config, model, steps)
        ema = weight_average(config, model, config.epochs * steps)
        state = _start_state(writer, model, optimizer, ema, resume)
        if isinstance(ema, Lookahead):
            ema.step = state.epoch * steps  # a resumed run's steps taken
        log.info("%s on %s; run folder: %s", f"resuming after epoch {state.epoch}" if resume else "training",
                 resolved.describe(), run_dir)
        if resolved.probe_line():
            log.info("%s", resolved.probe_line())
        planned = plan.load(run_dir)
        if planned is not None:
            log.info("%s", plan.line(planned))
        for note in resolved.notes:
            log.warning("%s", note)
        log.info("data: %s, %d training rows, %d validation rows", table.path, len(train_idx), len(val_idx))
        if rank == 0:
            log.info("model %s, %d parameters\n%s", config.model, count_parameters(model), model_summary(model))
        val_rows = val_idx[rank::world]  # every rank validates its share (see validate)
        val_loader = make_loader(FashionMNIST(table.images[val_rows], table.labels[val_rows]), EVAL_BATCH,
                                 shuffle=False) if len(val_idx) else None
        progress = writer.progress or (EpochBar() if rank == 0 else None)
        given = None if resume else plan.member_plan(run_dir)  # a resumed run keeps its epochs: no clock to keep
        paced = _Pace(given["epoch_s"], int(given["most"]), config.epochs, given["spare_s"]) if given else None
        try:
            config = _epochs(config, model, (optimizer, scheduler), ema, train_loader, (val_loader, len(val_idx)),
                             state, writer, progress, paced)
            writer.export()
            writer.finish(_score_validation(run_dir, table, val_idx) if writer.active else None)
        except KeyboardInterrupt:
            epochs = Config.load(run_dir / folders.CONFIG_JSON).epochs  # a re-plan's, if there was one
            stage = (f"during epoch {state.epoch + 1}" if state.epoch < epochs
                     else "after the last epoch, while exporting the model")
            raise TrainingInterrupted(f"interrupted {stage}; epochs 1-{state.epoch} are saved in {run_dir}; "
                                      f"continue with: competition train --resume {run_dir}") from None
        finally:
            if isinstance(progress, EpochBar):
                progress.close()
    return run_result(run_dir) if rank == 0 else RunResult(run_dir, state.history, None, state.best_epoch)


def epoch_steps(loader: paddle.io.DataLoader, max_steps: Optional[int]) -> int:
    """Training steps in one epoch: every batch, or the first max_steps (smoke runs)."""
    return min(len(loader), max_steps or len(loader))


def _start_state(writer: RunWriter, model: nn.Layer, optimizer: paddle.optimizer.Optimizer,
                 ema: Optional[WeightAverage], resume: bool) -> TrainState:
    """A new run's state (saved at once, so an interrupted epoch 1 can resume), or the saved one."""
    if not resume:
        state = TrainState(ema=ema.state() if ema else None)
        writer.begin(model, optimizer, state)
        return state
    state = checkpoint.load_state(writer.run_dir, model, optimizer)
    if ema is not None:
        ema.load(state.ema)
    writer.resumed(state)
    return state


def _epochs(config: Config, model: nn.Layer,
            optimizing: tuple[paddle.optimizer.Optimizer, paddle.optimizer.lr.LRScheduler],
            ema: Optional[WeightAverage], train_loader: paddle.io.DataLoader,
            validation: tuple[Optional[paddle.io.DataLoader], int], state: TrainState, writer: RunWriter,
            progress: Optional[Progress], paced: Optional["_Pace"] = None) -> Config:
    """Train one epoch, evaluate, record: from the epoch after the saved one to the last; the configuration that
    ran (a planned run's epochs, `paced`, are counted again when it runs off its plan: _keep_to_plan).

    `validation` is this rank's validation loader and the number of validation rows over all ranks.
    """
    optimizer, scheduler = optimizing
    val_loader, val_rows = validation
    net = paddle.DataParallel(model) if parallel.world()[1] > 1 else model  # averages gradients over ranks
    steps = epoch_steps(train_loader, config.max_steps)
    epoch = state.epoch
    while epoch < config.epochs:
        epoch += 1
        started = time.perf_counter()
        train_loader.dataset.set_epoch(config.seed * 100_003 + epoch)  # the shuffle follows --seed
        lr = optimizer.get_lr()  # the rate the epoch starts with
        train, losses = train_one_epoch(net, train_loader, optimizer, scheduler, config.max_steps,
                                        config.label_smoothing, ema, progress, (epoch, config.epochs))
        train = parallel.mean_over_ranks(train)
        # Validation and the best checkpoint use the averaged weights when there are any;
        # last.ckpt keeps the trained ones.
        with ema.applied() if ema else contextlib.nullcontext():
            val = evaluate_on_every_rank(model, val_loader)
            row = {"epoch": epoch, "train_loss": train["loss"], "train_acc": train["acc"], "val_loss": val["loss"],
                   "val_acc": val["acc"], "lr": lr, "seconds": time.perf_counter() - started}
            if state.record(row):
                writer.best(model)
        if ema is not None:
            state.ema = ema.state()
        if paced is not None:
            config, scheduler = _keep_to_plan(config, (optimizer, scheduler), state, writer, paced, steps)
            if isinstance(ema, Lookahead):
                ema.total = config.epochs * steps  # a re-plan's length
        low, high = wilson_interval(row["val_acc"], val_rows)  # nan without a validation split
        writer.epoch(state, model, optimizer, losses, (low, high))
        log.info("epoch %d/%d [Train] loss %.4f acc %.4f [Eval] loss %.4f acc %.4f (%.4f-%.4f) lr %.2g %.1fs",
                 epoch, config.epochs, row["train_loss"], row["train_acc"], row["val_loss"], row["val_acc"], low,
                 high, lr, row["seconds"])
    return config


@dataclass
class _Pace:
    """What a planned run keeps to: its plan's seconds an epoch, the most epochs it may have, the epochs it was
    planned with, the seconds it may end after the planned time within the budget; whether it has said it is
    behind."""

    epoch_s: float
    most: int
    epochs: int
    spare_s: float = 0.0
    warned: bool = False


def _keep_to_plan(config: Config, optimizing: tuple[paddle.optimizer.Optimizer, paddle.optimizer.lr.LRScheduler],
                  state: TrainState, writer: RunWriter, pace: _Pace, steps_per_epoch: int
                  ) -> tuple[Config, paddle.optimizer.lr.LRScheduler]:
    """After an epoch of a planned run: warn once when it is behind its plan, and count its epochs again when
    they would end over plan.REPLAN off the planned time (rank 0 decides for every rank). A new count lays the
    schedule out again from the step reached and is saved in config.json (and plan.json) before the epoch's
    checkpoint, so a resume goes on with it."""
    optimizer, scheduler = optimizing
    done, seconds = len(state.history), sum(r["seconds"] for r in state.history)
    behind = plan.behind_line(done, seconds, pace.epoch_s, config.epochs)
    if writer.active and behind is not None and not pace.warned:
        log.warning("%s", behind)
        pace.warned = True
    epochs = parallel.from_rank0(plan.paced_epochs(done, seconds, pace.epoch_s, pace.epochs, config.epochs,
                                                   pace.most, pace.spare_s))  # the ranks' clocks differ: one count
    if epochs == config.epochs:
        return config, scheduler
    if writer.active:
        log.warning("%s", plan.replan_line(done, seconds, pace.epoch_s, config.epochs, epochs))
        plan.record_replan(writer.run_dir, done, config.epochs, epochs)
    config = replace(config, epochs=epochs)
    laid_out = build_schedule(config, steps_per_epoch)
    laid_out.step(scheduler.last_epoch)  # the steps taken, on the new length's schedule
    optimizer.set_lr_scheduler(laid_out)
    if writer.active:
        checkpoint.save_config(writer.run_dir, config)
    return config, laid_out


def evaluate_on_every_rank(model: nn.Layer, val_loader: Optional[paddle.io.DataLoader]) -> dict[str, float]:
    """Loss and accuracy over every rank's share of the validation rows, with rank 0's weights.

    Every rank validates: rank 0 alone kept the others waiting in their next gradient all-reduce
    past gloo's 30 s timeout (a 2-process resnet 32x2 run died of it).
    """
    if val_loader is None:
        return {"loss": math.nan, "acc": math.nan}
    parallel.copy_rank0_state(model)
    return parallel.mean_over_ranks(evaluate(model, val_loader))


def _score_validation(run_dir: Path, table: ImageTable, val_idx: np.ndarray) -> Optional[Validation]:
    """After the last epoch: the exported best checkpoint's probabilities on the validation rows, plain and
    with flip TTA, for the report (which then evaluates nothing)."""
    if not len(val_idx):
        return None
    images = table.images[val_idx]
    by_views = predict.probs_by_views(lambda x: predict.model_probs(run_dir, x), images)
    return Validation(val_idx, images, table.labels[val_idx], by_views[1], by_views[2], by_views[6])


def _augment(config: Config) -> Augment:
    return Augment(crop_pad=config.crop_pad, flip=config.flip, erase=config.erase,
                   alternate_flip=config.alternate_flip)


@contextlib.contextmanager
def _half_built_loaders_quiet() -> Iterator[None]:
    """Within the block, drop one known harmless unraisable error and pass every other one on; the hook that
    was installed before is back afterwards.

    A stop signal (KeyboardInterrupt) landing inside paddle.io's loader-iterator __init__ leaves
    an object without `_shutdown`; its __del__ then prints an AttributeError traceback on the
    user's terminal after our one-line stop message. The iterator started no thread by then.
    """
    previous = sys.unraisablehook

    def hook(unraisable: "sys.UnraisableHookArgs") -> None:
        obj = getattr(unraisable, "object", None)
        if (isinstance(unraisable.exc_value, AttributeError) and "_shutdown" in str(unraisable.exc_value)
                and getattr(obj, "__qualname__", "").startswith("_DataLoaderIter")):
            log.debug("ignored a half-built data loader iterator's clean-up after a stop")
            return
        previous(unraisable)

    sys.unraisablehook = hook
    try:
        yield
    except BaseException as exc:
        # The stopped frames (a half-built iterator among their locals) are freed now, while the hook holds,
        # not when the caller lets go of the exception.
        for raised in (exc, exc.__context__):
            if raised is not None:
                traceback.clear_frames(raised.__traceback__)
        gc.collect()
        raise
    finally:
        sys.unraisablehook = previous


def _stable_names():
    """Fresh parameter/accumulator names (linear_0.w_0_moment1_0…) for this run.

    The optimizer's state is keyed by names from a process-wide counter, so a
    resumed process would look for other keys without a fresh namespace.
    """
    return paddle.utils.unique_name.guard()
