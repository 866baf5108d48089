"""Cross-validation: K ordinary runs on the K folds of the rows, their out-of-fold predictions, and the
fold ensemble's score on held-out rows (competition cv).

A cv folder runs/<time>-cv-<model>/ holds cv.json (its configuration; its figures once finished),
fold1 … foldK (run folders), oof.csv and report.md. This module is the one writer of cv.json and oof.csv.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pandas as pd

from . import api, checkpoint, folders, predict, report
from .checkpoint import Validation
from .folders import CV_JSON
from .config import Config
from .data import CLASS_NAMES, holdout_split, load_training_table
from .errors import CompetitionError
from .stats import VIEWS, accuracy_text, views_key, wilson_interval

log = logging.getLogger("competition")

OOF_CSV = "oof.csv"
PROB_COLUMNS = [f"prob_{c}" for c in range(len(CLASS_NAMES))]
TTA_PROB_COLUMNS = [f"tta2_prob_{c}" for c in range(len(CLASS_NAMES))]
OOF_COLUMNS = ["index", "label", "fold", "pred", "pred_tta2"] + PROB_COLUMNS + TTA_PROB_COLUMNS


@dataclass
class CvResult:
    """What a finished cv produced (cv.json's figures)."""

    cv_dir: Path
    folds: list[dict[str, Any]]  # per fold: run, rows, val_acc, val_acc_tta2, best_epoch, seconds
    oof_acc: float  # out-of-fold accuracy over every row that validated (each row exactly once)
    oof_acc_tta2: float  # the same with flip TTA
    oof_rows: int
    holdout: Optional[dict[str, Any]] = None  # the fold ensemble (and each fold) on the held-out rows


def start_cv(config: Config) -> Path:
    """Check a cv configuration (config.folds set, fold unset) and create its cv folder and cv.json."""
    if not config.folds:
        raise CompetitionError("competition cv needs --folds K (2 or more).")
    if config.nnodes > 1:
        raise CompetitionError("competition cv runs on one machine; drop --nnodes (each fold uses every core).")
    api.prepare(dataclasses.replace(config, fold=1))  # bad options, data or a too-large --holdout fail here
    cv_dir = folders.create(config.runs_dir, f"cv-{config.model}")
    _write_record(cv_dir, {"config": config.to_dict()})
    log.info("cv of %d folds in %s", config.folds, cv_dir)
    return cv_dir


def run_cv(cv_dir: Path) -> CvResult:
    """Train every unfinished fold (resuming one that was stopped), then score the folds together.

    A stop (Ctrl-C, SIGTERM, SIGHUP) saves the fold's finished epochs; run_cv on the same folder again
    continues from there, skipping finished folds, and ends with the same result as an unstopped cv.
    """
    cv_dir = Path(cv_dir)
    config = Config.from_dict(folders.read_cv_record(cv_dir)["config"], source=cv_dir / CV_JSON)
    for fold in range(1, config.folds + 1):
        _train_fold(cv_dir, config, fold)
    return finish_cv(cv_dir)


def _train_fold(cv_dir: Path, config: Config, fold: int) -> None:
    """Train fold `fold` to its end: start it, resume it, or nothing when it has finished."""
    run_dir = folders.fold_dir(cv_dir, fold)
    if (run_dir / folders.VALIDATION).is_file():
        return
    log.info("cv %s: fold %d of %d", cv_dir.name, fold, config.folds)
    config = dataclasses.replace(config, fold=fold, extra={**config.extra, "cv": cv_dir.name})
    api.train_to_end(run_dir, config, f"cv fold {fold} of {config.folds}",
                     f"continue the cv with: competition cv --resume {cv_dir}")


def finish_cv(cv_dir: Path) -> CvResult:
    """From finished folds: oof.csv, the held-out rows' scores, cv.json's figures and report.md."""
    cv_dir = Path(cv_dir)
    record = folders.read_cv_record(cv_dir)
    config = Config.from_dict(record["config"])
    run_dirs = folders.fold_dirs(cv_dir)
    validations = [Validation.load(run_dir) for run_dir in run_dirs]
    oof = out_of_fold_table(validations)
    with checkpoint.atomic_path(cv_dir / OOF_CSV) as tmp:
        oof.to_csv(tmp, index=False)
    folds = [_fold_figures(run_dir, val) for run_dir, val in zip(run_dirs, validations)]
    result = CvResult(cv_dir, folds, float((oof["pred"] == oof["label"]).mean()),
                      float((oof["pred_tta2"] == oof["label"]).mean()), len(oof),
                      _holdout_figures(config, run_dirs) if config.holdout else None)
    _write_record(cv_dir, {**record, **_figures(result)})
    report.write_cv_report(cv_dir, run_dirs, oof, cv_markdown_rows(result))
    return result


def out_of_fold_table(validations: list[Validation]) -> pd.DataFrame:
    """Every validated row once, in row order: its index, label, fold, predictions and probabilities."""
    parts = []
    for fold, val in enumerate(validations, start=1):
        frame = pd.DataFrame({"index": val.indices, "label": val.labels, "fold": fold,
                              "pred": val.probs.argmax(1), "pred_tta2": val.tta2_probs.argmax(1)})
        probs = pd.DataFrame(np.hstack([val.probs, val.tta2_probs]), columns=PROB_COLUMNS + TTA_PROB_COLUMNS)
        parts.append(pd.concat([frame, probs], axis=1))
    oof = pd.concat(parts, ignore_index=True).sort_values("index", kind="stable").reset_index(drop=True)
    if oof["index"].duplicated().any():
        raise CompetitionError("the folds' validation rows overlap; was a fold folder copied from another cv?")
    return oof[OOF_COLUMNS]


def _fold_figures(run_dir: Path, val: Validation) -> dict[str, Any]:
    summary = checkpoint.read_summary(run_dir)
    best = checkpoint.best_row(summary)
    scores = val.accuracies()
    return {"run": run_dir.name, "rows": len(val.labels), "val_acc": scores["val_acc"],
            "val_acc_tta2": scores["val_acc_tta2"], "best_epoch": int(best["epoch"]),
            "seconds": float(summary["seconds"].sum())}


def _holdout_figures(config: Config, run_dirs: list[Path]) -> dict[str, Any]:
    """Each fold's and the fold ensemble's accuracy on the held-out rows, plain, flip and six-view TTA."""
    table = load_training_table(config)
    _, rows = holdout_split(table.labels, config.holdout, config.seed)
    images, labels = table.images[rows], table.labels[rows]
    by_fold = [predict.probs_by_views(functools.partial(predict.model_probs, run_dir), images)
               for run_dir in run_dirs]
    accuracy = lambda probs: float((probs.argmax(1) == labels).mean())  # noqa: E731
    figures: dict[str, Any] = {"rows": len(rows)}
    for views in VIEWS:
        key = views_key("acc", views)
        figures[f"ensemble_{key}"] = accuracy(predict.average_probs([probs[views] for probs in by_fold]))
        figures[f"fold_{key}"] = [accuracy(probs[views]) for probs in by_fold]
    return figures


def _figures(result: CvResult) -> dict[str, Any]:
    """cv.json's figures, each accuracy with its 95% interval."""
    oof = {"rows": result.oof_rows, "acc": result.oof_acc, "acc_interval": wilson_interval(result.oof_acc,
           result.oof_rows), "acc_tta2": result.oof_acc_tta2}
    return {"folds": result.folds, "out_of_fold": oof, "holdout": result.holdout}


def cv_markdown_rows(result: CvResult) -> list[list[str]]:
    """The headline table of the cv's report.md: one row per fold, then out-of-fold and held-out figures."""
    rows = [[f["run"], f"{f['rows']:,}", accuracy_text(f["val_acc"], f["rows"], "table"),
             f"{f['val_acc_tta2']:.4f}", str(f["best_epoch"]), f"{f['seconds']:.0f}"] for f in result.folds]
    rows.append(["**out of fold** (each row once)", f"{result.oof_rows:,}",
                 accuracy_text(result.oof_acc, result.oof_rows, "table"), f"{result.oof_acc_tta2:.4f}", "", ""])
    if result.holdout:
        held = result.holdout
        rows.append([f"**{len(result.folds)}-fold ensemble on held-out rows**", f"{held['rows']:,}",
                     accuracy_text(held["ensemble_acc"], held["rows"], "table"),
                     f"{held['ensemble_acc_tta2']:.4f} (six views {held['ensemble_acc_tta6']:.4f})", "", ""])
    return rows


def read_result(cv_dir: Path) -> Optional[CvResult]:
    """A finished cv's figures from its cv.json; None while it is unfinished."""
    record = folders.read_cv_record(cv_dir)
    if "out_of_fold" not in record:
        return None
    oof = record["out_of_fold"]
    return CvResult(Path(cv_dir), record["folds"], oof["acc"], oof["acc_tta2"], oof["rows"], record["holdout"])


def _write_record(cv_dir: Path, record: dict[str, Any]) -> None:
    with checkpoint.atomic_path(Path(cv_dir) / CV_JSON) as tmp:
        tmp.write_text(json.dumps(record, indent=2) + "\n")
