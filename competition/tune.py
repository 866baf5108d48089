"""Hyper-parameter search with Optuna (competition tune): each trial is an ordinary run folder.

Optuna does the searching (TPE sampler), the early stopping of bad trials (median pruner fed each
epoch's validation accuracy), the storage (SQLite by default; any Optuna storage URL) and the sharing
of one study between processes and machines. This module declares what is searched, runs a trial as
a training run, and counts trials so that several processes finish exactly --trials between them.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import signal
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import optuna
import pandas as pd

from . import api, checkpoint, folders, parallel
from .config import Config, option_flag
from .errors import CompetitionError, TrainingInterrupted
from .files import exclusive
from .report import INTERVAL
from .stats import accuracy_text

log = logging.getLogger("competition")
VAL_SIZE = 10_000  # rows that score each trial unless --val-size says: a 1,000-row split moves by ±1.4 points
DEFAULT_DB = "tune.db"  # in --runs-dir: sqlite:///runs/tune.db
FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
COUNTED = FINISHED + (optuna.trial.TrialState.RUNNING,)  # trials that take a place among --trials
HEARTBEAT_S, GRACE_S = 60, 180  # a trial whose process died (kill -9) is marked failed after GRACE_S


def default_val_size(rows: Optional[int]) -> int:
    """The validation rows that score the trials: VAL_SIZE, or a fifth of `rows` (--rows) when VAL_SIZE would
    leave less than four fifths of them to train on."""
    if rows is None or rows >= 5 * VAL_SIZE:
        return VAL_SIZE
    size = max(rows // 5, 1)
    log.info("tune: --rows %d leaves too few rows for %s validation rows; trials are scored on %d (a fifth; "
             "--val-size sets it)", rows, f"{VAL_SIZE:,}", size)
    return size


@dataclass(frozen=True)
class Range:
    """One searched option: a float, int or choice range, absolute or as factors of the recipe's value."""

    option: str  # a Config field
    low: float = 0.0
    high: float = 0.0
    log: bool = False  # sample the logarithm uniformly (rates and decays span orders of magnitude)
    relative: bool = False  # low and high are factors of the recipe's own value
    integer: bool = False
    why: str = ""


# The search space, around the recipe being tuned (its preset and fixed options). Options given on the
# command line are fixed and not searched; a relative range whose recipe value is 0 or unset is skipped.
SPACE: tuple[Range, ...] = (
    Range("lr", 1 / 3, 3, log=True, relative=True,
          why="the rate matters most, and the recipes' rates were set by hand on one split: a factor 3 either way"),
    Range("weight_decay", 1 / 4, 4, log=True, relative=True,
          why="decay trades against the rate and the epochs; airbench's was tuned for CIFAR-10, not for this data"),
    Range("label_smoothing", 0.0, 0.3,
          why="0.1-0.2 helped every recipe here (BENCHMARKS.md); past 0.3 it blurs shirt/T-shirt/pullover"),
    Range("crop_pad", 0, 3, integer=True,
          why="objects are centred in 28x28: shifts of 1-2 pixels help, more than 3 cut sleeves and soles off"),
    Range("erase", 0.0, 0.5,
          why="random erasing p=0.5 was in the best published Fashion-MNIST results (WRN-28-10, ResNet-32)"),
    Range("epochs", 0.5, 1.0, relative=True, integer=True,
          why="the recipe's epochs are the budget: a trial may spend fewer (half to all), never more"),
    Range("width", 0.5, 1.5, relative=True, integer=True,
          why="wider models learn more per epoch but cost time per step: half to 1.5x the recipe's channels"),
)


def suggest(trial: optuna.Trial, base: Config, fixed: Sequence[str]) -> dict[str, Any]:
    """This trial's values of the searched options (those in SPACE that are not fixed)."""
    values: dict[str, Any] = {}
    for r in SPACE:
        if r.option in fixed:
            continue
        centre = getattr(base, r.option)
        if r.relative and not centre:
            continue
        low, high = (r.low * centre, r.high * centre) if r.relative else (r.low, r.high)
        if r.integer:
            values[r.option] = trial.suggest_int(r.option, max(1, round(low)) if r.relative else int(low),
                                                 max(1, round(high)))
        else:
            values[r.option] = trial.suggest_float(r.option, low, high, log=r.log)
    return values


def recipe_values(base: Config, fixed: Sequence[str]) -> dict[str, Any]:
    """The recipe's own values of the searched options (the centre of the space)."""
    return {r.option: getattr(base, r.option) for r in SPACE
            if r.option not in fixed and (getattr(base, r.option) or not r.relative)}


def _storage_url(url: Optional[str], runs_dir: str) -> str:
    """The storage URL given, or sqlite:///RUNS_DIR/tune.db (its folder created)."""
    if url is not None:
        return url
    Path(runs_dir).mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{Path(runs_dir) / DEFAULT_DB}"


def open_storage(url: Optional[str], runs_dir: str) -> optuna.storages.BaseStorage:
    """The study storage: an RDB URL (sqlite:///…, postgresql://…, mysql://…), or journal:PATH (a journal
    file on storage shared by the machines); by default sqlite:///RUNS_DIR/tune.db."""
    url = _storage_url(url, runs_dir)
    try:
        if url.startswith("journal:"):
            path = url[len("journal:"):]
            backend = optuna.storages.journal.JournalFileBackend(path)
            return optuna.storages.JournalStorage(backend)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # heartbeats: since Optuna 2.9
            return optuna.storages.RDBStorage(url, heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S)
    except Exception as exc:  # sqlalchemy's URL, driver and connection errors have no common base
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CompetitionError(f"--storage {url}: cannot open it ({reason}); expected an Optuna storage URL "
                               "such as sqlite:///runs/tune.db, postgresql://user@host/db or journal:runs/tune.log."
                               ) from None


@contextlib.contextmanager
def _one_at_a_time(url: Optional[str], runs_dir: str) -> Iterator[None]:
    """Processes started together on one SQLite file open it and create the study in turn."""
    # Two processes creating a new SQLite storage at once: one of them failed with "UNIQUE constraint failed:
    # alembic_version.version_num" (test_tune, once processes started 0.7 s sooner). SQLite's own locks are
    # fcntl locks, which do not see this flock on the same file.
    url = _storage_url(url, runs_dir)
    path = Path(url[len("sqlite:///"):]) if url.startswith("sqlite:///") else None
    if path is None or not path.parent.is_dir() or path.is_dir():  # another storage, or one open_storage refuses
        yield
        return
    with exclusive(path):
        yield


def _load_or_create(name: str, storage: optuna.storages.BaseStorage, base: Config,
                    fixed: dict[str, Any]) -> optuna.Study:
    """The study `name`, created on first use; refused when it searched around another recipe."""
    study = optuna.create_study(study_name=name, storage=storage, direction="maximize", load_if_exists=True,
                                sampler=optuna.samplers.TPESampler(), pruner=_pruner(base.epochs))
    recipe = {"preset": base.preset, "fixed": fixed}
    saved = study.user_attrs.get("recipe")
    if saved is None:
        study.set_user_attr("recipe", recipe)
        # The recipe itself is trial 0, so every study holds the hand-made baseline it searched around.
        study.enqueue_trial(recipe_values(base, list(fixed)), skip_if_exists=True)
    elif saved != recipe:
        raise CompetitionError(f"study '{name}' searches around another recipe (preset {saved['preset']}, fixed "
                               f"{saved['fixed']}); give the same options, or another --study.")
    return study


def _pruner(epochs: int) -> optuna.pruners.BasePruner:
    """Stop a trial whose accuracy at an epoch is below the median of earlier trials' at that epoch, but
    never among the first 3 trials (a median of too few) and never before half of the recipe's epochs:
    the presets' schedules warm up, so a trial with a lower rate trails early and catches up (a study that
    pruned from epoch 1 stopped lr 0.26 and 0.61 trials of the default recipe at 73% and 82%)."""
    return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=max(1, epochs // 2))


class _Surplus(Exception):
    """A trial asked for after --trials were already taken (by this process or another)."""


class _Pruner:
    """Reports each finished epoch of a trial's run to Optuna (a thread that reads summary.csv), and stops
    the run, through the same signal as Ctrl-C, when Optuna's pruner says it should stop."""

    poll_s = 0.5  # how often summary.csv is read; an epoch takes seconds to minutes

    def __init__(self, trial: optuna.Trial, run_dir: Path):
        self.trial, self.run_dir, self.reported, self.pruned = trial, run_dir, 0, False
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._watch, name="tune-pruner", daemon=True)

    def __enter__(self) -> "_Pruner":
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        self.thread.join()

    def _watch(self) -> None:
        while not self.done.wait(self.poll_s):
            if self.report() and self.trial.should_prune():
                self.pruned = True
                os.kill(os.getpid(), signal.SIGTERM)  # stops every rank after its last finished epoch
                return

    def report(self) -> bool:
        """Pass new epochs' validation accuracy to Optuna; whether there were any."""
        try:
            summary = checkpoint.read_summary(self.run_dir)
        except CompetitionError:  # not written yet, or being replaced right now
            return False
        new = summary.iloc[self.reported:]
        for row in new.itertuples():
            self.trial.report(float(row.val_acc), int(row.epoch))
        self.reported = len(summary)
        return len(new) > 0


def run_trial(trial: optuna.Trial, base: Config, fixed: dict[str, Any], trials: int, study_dir: Path) -> float:
    """Train this trial's recipe as a run folder; its best validation accuracy (Optuna maximizes it)."""
    ahead = [t for t in trial.study.get_trials(deepcopy=False, states=COUNTED) if t.number < trial.number]
    if len(ahead) >= trials:
        trial.study.stop()
        raise _Surplus
    config = dataclasses.replace(base, **suggest(trial, base, list(fixed)), minutes=None,  # a trial is its recipe
                                 extra={**base.extra, "tune": {"study": trial.study.study_name,
                                                               "trial": trial.number}})
    run_dir = folders.create(str(study_dir), f"trial{trial.number}")
    trial.set_user_attr("run", str(run_dir))
    log.info("trial %d of study %s: %s", trial.number, trial.study.study_name,
             ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in trial.params.items()))
    pruner = _Pruner(trial, run_dir)
    try:
        with parallel.stop_signals_interrupt(), pruner:
            result = api.fit(config, run_dir=run_dir)
    except (TrainingInterrupted, KeyboardInterrupt):
        if pruner.pruned:
            raise optuna.TrialPruned(f"pruned after epoch {pruner.reported}") from None
        raise TrainingInterrupted(f"tune stopped in trial {trial.number} ({run_dir}); run the same command "
                                  "again to continue the study") from None
    pruner.report()
    trial.set_user_attr("val_rows", result.val_rows)
    return float(result.best_val_acc)


def tune(base: Config, fixed: dict[str, Any], trials: int, timeout_min: Optional[float], study_name: str,
         storage_url: Optional[str]) -> optuna.Study:
    """Run trials of `study_name` until it holds `trials` finished ones (shared with any other process
    tuning the same study) or `timeout_min` minutes have passed."""
    if base.val_size == 0:
        raise CompetitionError("competition tune needs a validation split to score trials; drop --val-size 0.")
    api.prepare(base)  # bad options or data fail before the study is touched
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # each trial's end is logged below, in our words
    with _one_at_a_time(storage_url, base.runs_dir):
        study = _load_or_create(study_name, open_storage(storage_url, base.runs_dir), base, fixed)
    study_dir = folders.study_dir(base.runs_dir, study_name)
    if len(study.get_trials(deepcopy=False, states=FINISHED)) < trials:
        study.optimize(lambda trial: run_trial(trial, base, fixed, trials, study_dir), catch=(_Surplus,),
                       timeout=None if timeout_min is None else timeout_min * 60,
                       callbacks=[_log_trial, optuna.study.MaxTrialsCallback(trials, states=FINISHED)])
    return study


def _log_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    """One line as each trial ends (a surplus trial, never trained, is not mentioned)."""
    if trial.state == optuna.trial.TrialState.COMPLETE:
        best = best_trial(study)
        log.info("trial %d: validation accuracy %s (best so far %.2f%%, trial %d)", trial.number,
                 accuracy_text(trial.value, trial.user_attrs.get("val_rows", 0)), 100 * best.value, best.number)
    elif trial.state == optuna.trial.TrialState.PRUNED:
        log.info("trial %d: pruned after epoch %d (below the median of earlier trials)", trial.number,
                 len(trial.intermediate_values))


def load_study(study_name: str, storage_url: Optional[str], runs_dir: str) -> optuna.Study:
    """An existing study, or one clear line naming the studies the storage has."""
    storage = open_storage(storage_url, runs_dir)
    try:
        return optuna.load_study(study_name=study_name, storage=storage)
    except KeyError:
        names = [s.study_name for s in optuna.get_all_study_summaries(storage)]
        raise CompetitionError(f"no study '{study_name}' in {storage_url or Path(runs_dir) / DEFAULT_DB}; "
                               f"it has {', '.join(names) if names else 'none'}.") from None


def dashboard_target(study_name: Optional[str], storage_url: Optional[str], runs_dir: str) -> tuple[str, str]:
    """What optuna-dashboard opens: (the storage URL, the page of `study_name` or "" for the study list);
    one clear line for a storage that holds no study yet, or a study it does not hold."""
    if storage_url is None and not (Path(runs_dir) / DEFAULT_DB).is_file():
        raise CompetitionError(f"no studies yet in {Path(runs_dir) / DEFAULT_DB}: start one with "
                               "competition tune --trials N (or name another with --storage URL).")
    url = _storage_url(storage_url, runs_dir)
    if study_name is None:
        return url, ""
    study = load_study(study_name, storage_url, runs_dir)
    return url, f"/dashboard/studies/{study._study_id}"


def trials_table(study: optuna.Study) -> pd.DataFrame:
    """One row per trial: number, state, value, epochs reported, seconds, run folder and parameters."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        seconds = round((t.datetime_complete - t.datetime_start).total_seconds()) \
            if t.datetime_complete and t.datetime_start else None  # None: still running
        interval = "" if t.value is None else accuracy_text(t.value, t.user_attrs.get("val_rows", 0), "interval")
        rows.append({"trial": t.number, "state": t.state.name, "val_acc": t.value, INTERVAL: interval,
                     "epochs": len(t.intermediate_values), "seconds": seconds, **t.params,
                     "run": t.user_attrs.get("run", "")})
    return pd.DataFrame(rows)


def best_trial(study: optuna.Study) -> Optional[optuna.trial.FrozenTrial]:
    """The completed trial of the highest validation accuracy; None before any trial completed."""
    completed = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    return max(completed, key=lambda t: t.value) if completed else None


def best_command(study: optuna.Study) -> str:
    """The `competition train` command line that trains the best trial's recipe again."""
    recipe = study.user_attrs["recipe"]
    options = {**recipe["fixed"], **study.best_trial.params}
    words = ["competition", "train"] + (["--preset", recipe["preset"]] if recipe["preset"] else [])
    for key, value in options.items():
        flag = option_flag(key)
        if isinstance(value, bool):
            words.append(flag if value else f"--no-{flag[2:]}")
        else:
            words += [flag, repr(value) if isinstance(value, float) else str(value)]
    return " ".join(words)


def write_plots(study: optuna.Study, folder: Path) -> list[Path]:
    """Optuna's optimization history and parameter importances as PNGs (importances need 2+ finished trials)."""
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as vis

    folder.mkdir(parents=True, exist_ok=True)
    written = []
    plots = [("history.png", vis.plot_optimization_history)]
    completed = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if len(completed) >= 2 and completed[0].params:
        plots.append(("importances.png", vis.plot_param_importances))
    for name, plot in plots:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # the matplotlib backend's
            ax = plot(study)
        figure = ax.figure
        figure.set_size_inches(8, 5)
        figure.tight_layout()
        with checkpoint.atomic_path(folder / name) as tmp:
            figure.savefig(tmp, format="png", dpi=100)
        plt.close(figure)
        written.append(folder / name)
    return written
