"""The three kinds of run folder, in one home: naming, recognising, reading and listing them.

- a run: runs/<time>-<model>/ with config.json, best.pdparams, validation.npz … (checkpoint writes them);
- a cv: runs/<time>-cv-<model>/ with cv.json and fold1 … foldK, each a run (cv writes cv.json);
- an ensemble: runs/<time>-ensemble-<preset>/ with ensemble.json and member1 … memberM, each a run
  (ensemble writes ensemble.json);
and a tune study's folder, runs/tune-<study>/, holding its trials' runs.
Nothing here imports Paddle, so a viewer of the runs folder stays light.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable, Literal

from .config import Config
from .errors import CompetitionError
from .stats import with_views_named

CONFIG_JSON = "config.json"  # a run's configuration: enough to rebuild its model
CHECKPOINT = "best"  # best.pdparams: the weights of the best epoch (the EMA's when --ema is on)
VALIDATION = "validation.npz"  # the validation rows and the best checkpoint's probabilities on them
CV_JSON = "cv.json"  # marks a cv folder (competition cv): its configuration, then its figures
ENSEMBLE_JSON = "ensemble.json"  # marks an ensemble folder (an ensemble preset): its members' configurations

STUDY_PREFIX = "tune-"  # runs/tune-<study>/: a study's trial runs
Kind = Literal["run", "cv", "ensemble"]


def create(runs_dir: str, name: str) -> Path:
    """A new, empty runs/<timestamp>-<name>/ folder (suffixed if the name is taken)."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for attempt in range(1, 100):
        suffix = "" if attempt == 1 else f"-{attempt}"
        folder = Path(runs_dir) / f"{stamp}-{name}{suffix}"
        try:
            folder.mkdir(parents=True)
            return folder
        except FileExistsError:
            continue
        except OSError as exc:
            raise CompetitionError(f"{runs_dir}: cannot create a run folder ({exc.strerror}).") from None
    raise CompetitionError(f"{runs_dir}: too many runs named {stamp}-{name}.")


def kind(folder: Path) -> Kind:
    """Which of the three kinds `folder` is (a folder that is neither a cv nor an ensemble is a run)."""
    if is_cv(folder):
        return "cv"
    return "ensemble" if is_ensemble(folder) else "run"


def is_cv(folder: Path) -> bool:
    """Whether `folder` is a cv folder (competition cv)."""
    return (Path(folder) / CV_JSON).is_file()


def is_ensemble(folder: Path) -> bool:
    """Whether `folder` is an ensemble folder (an ensemble preset's runs)."""
    return (Path(folder) / ENSEMBLE_JSON).is_file()


def study_dir(runs_dir: str, study: str) -> Path:
    """The folder of a tune study's trial runs (and its plots): runs/tune-<study>/."""
    return Path(runs_dir) / f"{STUDY_PREFIX}{study}"


def is_study(folder: Path) -> bool:
    """Whether `folder` is named as a tune study's folder."""
    return Path(folder).name.startswith(STUDY_PREFIX)


def fold_dir(cv_dir: Path, fold: int) -> Path:
    """The run folder of fold `fold` (1..K) of a cv folder."""
    return Path(cv_dir) / f"fold{fold}"


def member_dir(ens_dir: Path, member: int) -> Path:
    """The run folder of member `member` (1..M) of an ensemble folder."""
    return Path(ens_dir) / f"member{member}"


def read_cv_record(cv_dir: Path) -> dict:
    """cv.json: {"config": the cv's configuration, then its figures once it has finished}."""
    return _read_record(Path(cv_dir) / CV_JSON, "a cv record", lambda record: [record["config"]])


def read_ensemble_record(ens_dir: Path) -> dict:
    """ensemble.json: {"preset", "members": their configurations, then "figures" once it has finished}."""
    return _read_record(Path(ens_dir) / ENSEMBLE_JSON, "an ensemble record", lambda record: record["members"])


def _read_record(path: Path, what: str, configs: Callable[[dict], list]) -> dict:
    """A cv's or an ensemble's JSON record, with its configurations (`configs` of it) checked (and its figures
    under today's names of views)."""
    try:
        record = with_views_named(json.loads(path.read_text()))
        for values in configs(record):
            Config.from_dict(values, source=path)
    except (OSError, UnicodeDecodeError, ValueError, TypeError, KeyError) as exc:
        raise CompetitionError(f"{path}: cannot be read as {what} ({exc}).") from None
    return record


def fold_dirs(cv_dir: Path) -> list[Path]:
    """A finished cv folder's fold run folders, in fold order; refused while a fold is unfinished."""
    folds = read_cv_record(cv_dir)["config"]["folds"]
    dirs = [fold_dir(cv_dir, fold) for fold in range(1, folds + 1)]
    unfinished = [d.name for d in dirs if not (d / VALIDATION).is_file()]
    if unfinished:
        raise CompetitionError(f"{cv_dir}: {', '.join(unfinished)} of its {folds} folds have not finished; "
                               f"continue with: competition cv --resume {cv_dir}")
    return dirs


def member_runs(folder: Path) -> list[Path]:
    """The run folders that a cv folder (its folds) or an ensemble folder (its members) averages, each
    finished; [folder] for a run folder."""
    if is_cv(folder):
        return fold_dirs(folder)
    if not is_ensemble(folder):
        return [Path(folder)]
    record = read_ensemble_record(folder)
    if "figures" not in record:
        raise CompetitionError(f"{folder}: its members have not all finished; "
                               f"continue with: competition train --resume {folder}")
    return [member_dir(folder, k) for k in range(1, len(record["members"]) + 1)]


def listing(runs_dir: str) -> list[Path]:
    """Every folder of the three kinds directly in `runs_dir` (finished or not), oldest name first."""
    found = [p for p in Path(runs_dir).glob("*") if p.is_dir() and
             (is_cv(p) or is_ensemble(p) or (p / CONFIG_JSON).is_file())]
    return sorted(found, key=lambda p: p.name)


def newest_run(runs_dir: str) -> Path:
    """The most recent run folder with a checkpoint, or finished ensemble folder."""
    runs = [p.parent for p in Path(runs_dir).glob(f"*/{CHECKPOINT}.pdparams")]
    runs += [p.parent for p in Path(runs_dir).glob(f"*/{ENSEMBLE_JSON}") if "figures" in read_ensemble_record(p.parent)]
    if not runs:
        raise CompetitionError(f"no trained run in {runs_dir}/; train one first "
                               "(competition train) or pass --run DIR.")
    # a finished ensemble rewrote its ensemble.json after its members' runs
    stamp = lambda p: ((p / (ENSEMBLE_JSON if is_ensemble(p) else CONFIG_JSON)).stat().st_mtime, p.name)  # noqa: E731
    return max(runs, key=stamp)
