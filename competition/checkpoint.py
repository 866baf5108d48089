"""Run folders: configuration, per-epoch summary, checkpoints; atomic writes."""
from __future__ import annotations

import io
import pickle
import random
import time
import warnings
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pandas as pd
import paddle
from paddle import nn

from .config import Config
from .errors import CompetitionError
from .files import atomic_dir_prefix, atomic_path  # atomic_path is also used by predict and report
from .models import build_model

SUMMARY_COLUMNS = ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds"]
CHECKPOINT = "best"  # best.pdparams + best.pdopt
LAST = "last.ckpt"  # everything needed to resume after the last finished epoch


def create_run_dir(runs_dir: str, model: str) -> Path:
    """A new, empty runs/<timestamp>-<model>/ folder (suffixed if the name is taken)."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for attempt in range(1, 100):
        suffix = "" if attempt == 1 else f"-{attempt}"
        run_dir = Path(runs_dir) / f"{stamp}-{model}{suffix}"
        try:
            run_dir.mkdir(parents=True)
            return run_dir
        except FileExistsError:
            continue
        except OSError as exc:
            raise CompetitionError(f"{runs_dir}: cannot create a run folder ({exc.strerror}).") from None
    raise CompetitionError(f"{runs_dir}: too many runs named {stamp}-{model}.")


def save_config(run_dir: Path, config: Config) -> None:
    """Write config.json, which is enough to rebuild the model."""
    with atomic_path(run_dir / "config.json") as tmp:
        config.save(tmp)


def save_checkpoint(run_dir: Path, model: nn.Layer, optimizer: paddle.optimizer.Optimizer) -> None:
    """Write best.pdparams and best.pdopt, each atomically."""
    for state, ext in ((model.state_dict(), "pdparams"), (optimizer.state_dict(), "pdopt")):
        with atomic_path(run_dir / f"{CHECKPOINT}.{ext}") as tmp:
            paddle.save(state, str(tmp))


def write_summary(run_dir: Path, history: list[dict[str, float]]) -> None:
    """Rewrite summary.csv, one row per finished epoch."""
    with atomic_path(run_dir / "summary.csv") as tmp:
        pd.DataFrame(history, columns=SUMMARY_COLUMNS).to_csv(tmp, index=False)


def save_state(run_dir: Path, model: nn.Layer, optimizer: paddle.optimizer.Optimizer,
               progress: dict[str, Any]) -> None:
    """Write last.ckpt in one atomic rename: weights, optimizer (and its LR schedule),
    the training progress and every random-generator state."""
    state = {"model": _to_bytes(model.state_dict()), "optimizer": _to_bytes(optimizer.state_dict()),
             "progress": progress, "random": random.getstate(), "numpy": np.random.get_state(),
             "paddle": paddle.get_rng_state()}
    with atomic_path(run_dir / LAST) as tmp:
        tmp.write_bytes(pickle.dumps(state))


def load_state(run_dir: Path, model: nn.Layer, optimizer: paddle.optimizer.Optimizer) -> dict[str, Any]:
    """Restore what save_state wrote; returns the training progress."""
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
    return state["progress"]


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
    if not (run_dir / "config.json").is_file() or not params.is_file():
        raise CompetitionError(f"{run_dir}: not a finished run folder; expected config.json "
                               f"and {params.name}.")
    config = Config.load(run_dir / "config.json")
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


def newest_run(runs_dir: str) -> Path:
    """The most recent run folder with a checkpoint."""
    runs = sorted(p.parent for p in Path(runs_dir).glob(f"*/{CHECKPOINT}.pdparams"))
    if not runs:
        raise CompetitionError(f"no trained run in {runs_dir}/; train one first "
                               "(competition train) or pass --run DIR.")
    return max(runs, key=lambda p: ((p / "config.json").stat().st_mtime, p.name))

