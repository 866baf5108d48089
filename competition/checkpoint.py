"""Run folders: configuration, per-epoch summary, checkpoints; atomic writes."""
from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
import math
import pickle
import random
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
import pandas as pd
import paddle
from paddle import nn

from .board import BoardLog
from .config import Config
from .errors import CompetitionError
from .folders import CHECKPOINT, CONFIG_JSON, VALIDATION
from .files import atomic_dir_prefix, atomic_path  # atomic_path is also used by predict and report
from .models import build_model
from .progress import ProgressFile
from .runtime import Runtime
from .stats import views_key

log = logging.getLogger("competition")

SUMMARY_COLUMNS = ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds"]
LAST = "last.ckpt"  # everything needed to resume after the last finished epoch
VALIDATION_JSON = "validation.json"  # {"val_acc": …, "val_acc_tta2": …} of the best checkpoint (the report's)


@dataclass
class TrainState:
    """Where training stands after its last finished epoch; saved in last.ckpt."""

    epoch: int = 0
    best_acc: float = -1.0
    best_epoch: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    ema: Optional[dict[str, np.ndarray]] = None  # the weight average (--ema), as numpy arrays

    def record(self, row: dict[str, float]) -> bool:
        """Add a finished epoch's summary row; True when it is the best so far (always, without validation)."""
        self.history.append(row)
        self.epoch = int(row["epoch"])
        # Without a validation split the last epoch is the one to keep.
        improved = math.isnan(row["val_acc"]) or row["val_acc"] > self.best_acc
        if improved:
            self.best_acc, self.best_epoch = row["val_acc"], self.epoch
        return improved


_OLD_NAMES = {"tta_probs": "tta2_probs"}  # validation.npz from before views had one name


@dataclass
class Validation:
    """A run's validation rows and the best checkpoint's probabilities on them (validation.npz)."""

    indices: np.ndarray  # int64 [N]: rows of the training table (after --rows)
    images: np.ndarray  # uint8 [N, 784]
    labels: np.ndarray  # int64 [N]
    probs: np.ndarray  # float32 [N, 10]
    tta2_probs: np.ndarray  # the same averaged over two views: the images and their mirrors (predict --tta 2)
    tta6_probs: Optional[np.ndarray] = None  # over six views: mirrors and 1-pixel shifts (predict --tta 6)

    @property
    def preds(self) -> np.ndarray:
        """Predicted classes [N]."""
        return self.probs.argmax(axis=1)

    def by_views(self) -> dict[int, np.ndarray]:
        """The probabilities saved for each number of test-time views (1, 2, and 6 when saved)."""
        found = {1: self.probs, 2: self.tta2_probs, 6: self.tta6_probs}
        return {views: probs for views, probs in found.items() if probs is not None}

    def accuracies(self) -> dict[str, float]:
        """Accuracy over each saved number of views: val_acc, val_acc_tta2 and val_acc_tta6."""
        return {views_key("val_acc", views): float((probs.argmax(axis=1) == self.labels).mean())
                for views, probs in self.by_views().items()}

    def save(self, run_dir: Path) -> None:
        """Write validation.npz (compressed: 10,000 rows take about 3 MB)."""
        arrays = {name: value for name, value in dataclasses.asdict(self).items() if value is not None}
        with atomic_path(Path(run_dir) / VALIDATION) as tmp, open(tmp, "wb") as handle:
            np.savez_compressed(handle, **arrays)

    @classmethod
    def load(cls, run_dir: Path) -> Optional["Validation"]:
        """What save() wrote, or None when the run has not finished (or has no validation split)."""
        path = Path(run_dir) / VALIDATION
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as saved:  # tta6_probs: not in files from before it
                arrays = {_OLD_NAMES.get(name, name): saved[name] for name in saved.files}
                return cls(**{f.name: arrays[f.name] for f in dataclasses.fields(cls) if f.name in arrays})
        except (OSError, ValueError, KeyError) as exc:
            raise CompetitionError(f"{path}: cannot be read ({exc}); train --resume the run to write it again.") \
                from None


class RunWriter:
    """The one writer of a run folder during training; on ranks other than 0 every method does nothing."""

    def __init__(self, run_dir: Path, active: bool, launched: bool = False):
        self.run_dir, self.active = Path(run_dir), active
        # Rank 0 of a launched run shows its progress through a file; the launching process draws the bar.
        self.progress = ProgressFile(self.run_dir) if active and launched else None
        self.board = BoardLog(self.run_dir, active)  # runs/<run>/vdl/ for competition board

    @contextlib.contextmanager
    def logging(self) -> Iterator[None]:
        """Rank 0 logs to the console and train.log (and closes the board log as it ends, stopped or not);
        other ranks only warn (their launcher log keeps it)."""
        if self.active:
            with _log_to(self.run_dir / "train.log"):
                try:
                    yield
                finally:
                    self.board.close()
            return
        level = log.level
        log.setLevel(logging.WARNING)
        try:
            yield
        finally:
            log.setLevel(level)

    def begin(self, model: nn.Layer, optimizer: paddle.optimizer.Optimizer, state: TrainState) -> None:
        """Save the untrained state, so that a run interrupted in epoch 1 can resume."""
        if self.active:
            save_state(self.run_dir, model, optimizer, state)

    def resumed(self, state: TrainState) -> None:
        """Drop what an unfinished epoch left in steps.csv: it is trained again."""
        if self.active:
            trim_step_losses(self.run_dir, state.epoch)

    def best(self, model: nn.Layer) -> None:
        """Write best.pdparams atomically."""
        if self.active:
            with atomic_path(self.run_dir / f"{CHECKPOINT}.pdparams") as tmp:
                paddle.save(model.state_dict(), str(tmp))

    def epoch(self, state: TrainState, model: nn.Layer, optimizer: paddle.optimizer.Optimizer,
              losses: list[float], interval: tuple[float, float]) -> None:
        """Write the epoch's figures (`interval`: its validation accuracy's 95% bounds) and everything a resume
        needs."""
        if self.active:
            self.board.epoch(state.history[-1], interval, losses)
            append_step_losses(self.run_dir, state.epoch, losses)
            write_summary(self.run_dir, state.history)
            save_state(self.run_dir, model, optimizer, state)

    def export(self) -> None:
        """The best checkpoint as a static graph for paddle.inference (what predict uses)."""
        if self.active:
            export_inference(self.run_dir)

    def finish(self, validation: Optional[Validation]) -> None:
        """The end of training: save the validation rows and the best checkpoint's probabilities on them."""
        if self.active and validation is not None:
            validation.save(self.run_dir)
        if self.progress is not None:
            with contextlib.suppress(FileNotFoundError):
                self.progress.path.unlink()


@contextlib.contextmanager
def _log_to(path: Path) -> Iterator[None]:
    """Also write the package's log records to a file in the run folder."""
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    log.addHandler(handler)
    try:
        yield
    finally:
        log.removeHandler(handler)
        handler.close()


def save_config(run_dir: Path, config: Config) -> None:
    """Write config.json, which is enough to rebuild the model."""
    with atomic_path(run_dir / CONFIG_JSON) as tmp:
        config.save(tmp)


def save_run_files(run_dir: Path, config: Config, runtime: Runtime) -> None:
    """config.json (what was asked for) and runtime.json (what it runs on), before training starts."""
    save_config(run_dir, config)
    runtime.save(run_dir)


def write_summary(run_dir: Path, history: list[dict[str, float]]) -> None:
    """Rewrite summary.csv, one row per finished epoch."""
    with atomic_path(run_dir / "summary.csv") as tmp:
        pd.DataFrame(history, columns=SUMMARY_COLUMNS).to_csv(tmp, index=False)


def save_state(run_dir: Path, model: nn.Layer, optimizer: paddle.optimizer.Optimizer,
               progress: TrainState) -> None:
    """Write last.ckpt in one atomic rename: weights, optimizer (and its LR schedule),
    the training state and every random-generator state."""
    state = {"model": _to_bytes(model.state_dict()), "optimizer": _to_bytes(optimizer.state_dict()),
             "progress": dataclasses.asdict(progress), "random": random.getstate(),
             "numpy": np.random.get_state(), "paddle": paddle.get_rng_state()}
    with atomic_path(run_dir / LAST) as tmp:
        tmp.write_bytes(pickle.dumps(state))


def load_state(run_dir: Path, model: nn.Layer, optimizer: paddle.optimizer.Optimizer) -> TrainState:
    """Restore what save_state wrote; returns the training state."""
    path = Path(run_dir) / LAST
    try:
        state = pickle.loads(path.read_bytes())
    except FileNotFoundError:
        raise CompetitionError(f"{run_dir}: has no {LAST} to resume from; is it a run folder?") from None
    except (OSError, pickle.UnpicklingError, EOFError) as exc:
        raise CompetitionError(f"{path}: cannot be read ({exc}); the run cannot be resumed.") from None
    for layer, blob in ((model, state["model"]), (optimizer, state["optimizer"])):
        if blob:
            with warnings.catch_warnings():
                # LinearWarmup restores its inner schedule itself, then Paddle warns that
                # those values were "unused"; the resume tests show the rates match.
                warnings.filterwarnings("ignore", message="There are some unused values in state_dict")
                layer.set_state_dict(paddle.load(io.BytesIO(blob)))
    random.setstate(state["random"])
    np.random.set_state(state["numpy"])
    paddle.set_rng_state(state["paddle"])
    return TrainState(**state["progress"])


def _to_bytes(state_dict: dict) -> bytes:
    # paddle.save cannot hold Python's RNG tuples, so each state dict is
    # serialized on its own and the whole checkpoint is one pickle. Adam has
    # no state before its first step (paddle.save warns on an empty dict).
    if not state_dict:
        return b""
    buffer = io.BytesIO()
    paddle.save(state_dict, buffer)
    return buffer.getvalue()


def append_step_losses(run_dir: Path, epoch: int, losses: list[float]) -> None:
    """Add one epoch's per-batch training losses to steps.csv (epoch,step,loss)."""
    path = run_dir / "steps.csv"
    started = path.exists() and path.stat().st_size > 0
    done = sum(1 for _ in path.open()) - 1 if started else 0
    rows = "".join(f"{epoch},{done + i + 1},{loss:.6g}\n" for i, loss in enumerate(losses))
    try:
        with path.open("a") as handle:
            handle.write(("" if started else "epoch,step,loss\n") + rows)
    except OSError as exc:
        raise CompetitionError(f"{path}: could not be written ({exc.strerror}).") from None


def trim_step_losses(run_dir: Path, last_epoch: int) -> None:
    """Drop per-step losses of epochs after `last_epoch` (an epoch that is redone on resume)."""
    path = run_dir / "steps.csv"
    if path.exists():
        steps = pd.read_csv(path)
        with atomic_path(path) as tmp:
            steps[steps["epoch"] <= last_epoch].to_csv(tmp, index=False)


def read_summary(run_dir: Path) -> pd.DataFrame:
    """The per-epoch summary of a run."""
    try:
        return pd.read_csv(run_dir / "summary.csv")
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError):
        raise CompetitionError(f"{run_dir}: has no readable summary.csv; is it a finished run?") from None


def best_row(summary: pd.DataFrame) -> Optional[pd.Series]:
    """The summary row of the best validation accuracy; None when the run had no validation split."""
    if summary["val_acc"].isna().all():
        return None
    return summary.loc[summary["val_acc"].idxmax()]


def best_val_acc(run_dir: Path) -> Optional[float]:
    """The best validation accuracy of a run, None when it had no validation split."""
    best = best_row(read_summary(run_dir))
    return None if best is None else float(best["val_acc"])


def load_model(run_dir: Path) -> tuple[nn.Layer, Config]:
    """Rebuild a run's model from its folder alone, in eval mode."""
    run_dir = Path(run_dir)
    params = run_dir / f"{CHECKPOINT}.pdparams"
    if not (run_dir / CONFIG_JSON).is_file() or not params.is_file():
        raise CompetitionError(f"{run_dir}: not a finished run folder; expected config.json "
                               f"and {params.name}.")
    config = Config.load(run_dir / CONFIG_JSON)
    model = build_model(config.model, **config.model_options())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Paddle warns per skipped tensor; one error below says it all
        missing, unexpected = model.set_state_dict(paddle.load(str(params)))
    if missing or unexpected:
        raise CompetitionError(f"{params}: does not fit the model in config.json ({len(missing)} tensors "
                               f"missing, {len(unexpected)} unexpected); was the run folder edited?")
    model.eval()
    return model, config


INFERENCE = "inference"  # inference.json (.pdmodel before Paddle 3) + inference.pdiparams


def export_inference(run_dir: Path) -> Path:
    """Save the best checkpoint as a static graph for paddle.inference (paddle.jit.save)."""
    model, _ = load_model(run_dir)
    return save_inference(model, Path(run_dir))


def save_inference(model: nn.Layer, folder: Path) -> Path:
    """paddle.jit.save a model (eval mode) as folder/inference.* for any batch size."""
    model.eval()
    spec = [paddle.static.InputSpec([None, 1, 28, 28], "float32", "image")]
    with atomic_dir_prefix(folder, INFERENCE) as prefix:
        paddle.jit.save(model, str(prefix), input_spec=spec)
    return folder / INFERENCE
