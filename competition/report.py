"""Reports rebuilt from a run folder alone: curves, confusion matrix, per-class accuracy, mistakes."""
from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any, Optional, Sequence

import matplotlib

matplotlib.use("Agg")  # headless: servers and CI have no display; must precede pyplot
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from . import board, checkpoint, folders  # noqa: E402
from .checkpoint import VALIDATION_JSON, Validation  # noqa: E402
from .config import Config  # noqa: E402
from .data import CLASS_NAMES, SIDE, ImageTable  # noqa: E402
from .errors import CompetitionError  # noqa: E402
from .models import build_model, count_parameters  # noqa: E402
from .runtime import RUNTIME, Runtime  # noqa: E402
from .stats import accuracy_text  # noqa: E402

log = logging.getLogger(__name__)

DPI = 100  # with every figsize >= 4 inches, each PNG is at least 400x400 px
CURVES, CONFUSION, MISTAKES = "curves.png", "confusion.png", "mistakes.png"
PER_CLASS_CSV, PER_CLASS_PNG, REPORT = "per_class.csv", "per_class.png", "report.md"
PER_CLASS_COLUMNS = ["class", "name", "correct", "total", "accuracy"]
INTERVAL = "95% interval"  # of an accuracy, shown beside it (stats.wilson_interval)
COMPARE_COLUMNS = ["run", "model", "best_epoch", "best_val_acc", "epochs", "seconds"]
MAX_MISTAKES = 25  # a 5x5 grid
TITLE_BY = ("auto", "label", "id")


# --- tables ---------------------------------------------------------------------------------

def per_class_table(labels: np.ndarray, preds: np.ndarray) -> pd.DataFrame:
    """Correct, total and accuracy per class 0-9; accuracy is NaN for a class with no rows.

    NaN rather than 0: a class with no rows was never misclassified, so 0 would mislead.
    """
    labels, preds = np.asarray(labels, dtype=np.int64), np.asarray(preds, dtype=np.int64)
    if labels.shape != preds.shape:
        raise ValueError(f"{len(labels)} labels but {len(preds)} predictions; expected one per row.")
    n = len(CLASS_NAMES)
    total = np.bincount(labels, minlength=n)[:n]
    correct = np.bincount(labels[labels == preds], minlength=n)[:n]
    with np.errstate(invalid="ignore", divide="ignore"):
        accuracy = np.where(total > 0, correct / np.maximum(total, 1), np.nan)
    return pd.DataFrame({"class": np.arange(n), "name": list(CLASS_NAMES), "correct": correct,
                         "total": total, "accuracy": accuracy}, columns=PER_CLASS_COLUMNS)


def format_per_class(table: pd.DataFrame) -> str:
    """An aligned plain-text per-class table with an `all` row and 95% intervals, for the console."""
    width = max(len("name"), *(len(str(name)) for name in table["name"]))
    lines = [f"{'class':>5}  {'name':<{width}}  {'correct':>7}  {'total':>5}  {'accuracy':>8}  {INTERVAL:>13}"]
    for row in table.itertuples(index=False):
        lines.append(f"{row[0]:>5}  {row.name:<{width}}  {row.correct:>7}  {row.total:>5}  "
                     f"{accuracy_text(row.accuracy, row.total, 'value'):>8}  "
                     f"{accuracy_text(row.accuracy, row.total, 'interval'):>13}")
    correct, total = int(table["correct"].sum()), int(table["total"].sum())
    overall = correct / total if total else math.nan
    lines.append(f"{'all':>5}  {'':<{width}}  {correct:>7}  {total:>5}  {accuracy_text(overall, total, 'value'):>8}  "
                 f"{accuracy_text(overall, total, 'interval'):>13}")
    return "\n".join(lines)


def per_class_markdown(table: pd.DataFrame) -> str:
    """The per-class table as a markdown table, with each accuracy's 95% interval."""
    rows = [[str(row[0]), str(row.name), str(row.correct), str(row.total),
             accuracy_text(row.accuracy, row.total, "value"), accuracy_text(row.accuracy, row.total, "interval")]
            for row in table.itertuples(index=False)]
    return _markdown_table(PER_CLASS_COLUMNS + [INTERVAL], rows)


def _markdown_table(header: Sequence[str], rows: list[list[str]]) -> str:
    escape = lambda text: str(text).replace("|", "\\|")  # noqa: E731  a | would split the cell
    lines = ["| " + " | ".join(map(escape, header)) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(map(escape, row)) + " |" for row in rows])


# --- reading a run --------------------------------------------------------------------------

def has_validation(summary: pd.DataFrame) -> bool:
    """Whether the run held out a validation split (val_acc is NaN on every epoch otherwise)."""
    return bool(summary["val_acc"].notna().any())


def read_steps(run_dir: Path) -> Optional[pd.DataFrame]:
    """steps.csv (epoch,step,loss), or None for runs written before it existed."""
    path = Path(run_dir) / "steps.csv"
    if not path.is_file():
        return None
    try:
        steps = pd.read_csv(path)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError):
        raise CompetitionError(f"{path}: cannot be read; expected columns epoch,step,loss.") from None
    if not {"epoch", "step", "loss"} <= set(steps.columns):
        raise CompetitionError(f"{path}: expected columns epoch,step,loss, found {','.join(steps.columns)}.")
    return steps


# --- pictures -------------------------------------------------------------------------------

def _save(fig: plt.Figure, path: Path) -> Path:
    """Write a figure as PNG atomically and free it."""
    try:
        with checkpoint.atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=DPI)  # the temp name has no .png to infer from
    finally:
        plt.close(fig)
    return Path(path)


def plot_curves(summary: pd.DataFrame, steps: Optional[pd.DataFrame], out: Path) -> Path:
    """Loss and accuracy per epoch (per-step loss faint behind), learning rate below."""
    fig, (loss_ax, acc_ax, lr_ax) = plt.subplots(3, 1, figsize=(8, 9), sharex=True, layout="constrained",
                                                 gridspec_kw={"height_ratios": [3, 3, 1.2]})
    epochs = summary["epoch"]
    if steps is not None and len(steps):
        loss_ax.plot(_fractional_epochs(steps), steps["loss"], color="tab:blue", alpha=0.35,
                     linewidth=0.8, label="train (per step)")
    loss_ax.plot(epochs, summary["train_loss"], "o-", color="tab:blue", label="train")
    acc_ax.plot(epochs, summary["train_acc"], "o-", color="tab:blue", label="train")
    best = checkpoint.best_row(summary)
    if best is not None:
        loss_ax.plot(epochs, summary["val_loss"], "o-", color="tab:orange", label="validation")
        acc_ax.plot(epochs, summary["val_acc"], "o-", color="tab:orange", label="validation")
        acc_ax.plot(best["epoch"], best["val_acc"], "*", color="tab:red", markersize=14,
                    label=f"best {best['val_acc']:.4f} (epoch {int(best['epoch'])})")
    else:
        acc_ax.set_title("no validation split: training curves only", fontsize=9)
    lr_ax.step(epochs, summary["lr"], where="mid", color="tab:green")
    lr_ax.ticklabel_format(axis="y", style="sci", scilimits=(0, 0))
    for ax, name in ((loss_ax, "loss"), (acc_ax, "accuracy"), (lr_ax, "learning rate")):
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
    loss_ax.legend()
    acc_ax.legend()
    lr_ax.set_xlabel("epoch")
    lr_ax.set_xlim(left=0)  # 0 is the start of training; epoch e's steps fill (e-1, e]
    lr_ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    return _save(fig, out)


def _fractional_epochs(steps: pd.DataFrame) -> np.ndarray:
    """Step i of an epoch's k steps sits at epoch - 1 + i/k, so epoch e's steps fill (e-1, e]."""
    by_epoch = steps.groupby("epoch")["step"]
    rank = by_epoch.cumcount() + 1
    return (steps["epoch"] - 1 + rank / by_epoch.transform("size")).to_numpy()


def confusion_matrix(labels: np.ndarray, preds: np.ndarray) -> np.ndarray:
    """Counts [10, 10]: rows are true classes, columns predicted ones."""
    n = len(CLASS_NAMES)
    counts = np.zeros((n, n), dtype=np.int64)
    np.add.at(counts, (np.asarray(labels, dtype=np.int64), np.asarray(preds, dtype=np.int64)), 1)
    return counts


def plot_confusion(labels: np.ndarray, preds: np.ndarray, out: Path) -> Path:
    """Row-normalized confusion matrix with class names and every value written in."""
    counts = confusion_matrix(labels, preds)
    rows = counts.sum(axis=1, keepdims=True)
    share = counts / np.maximum(rows, 1)  # a class with no rows stays a row of zeros
    fig, ax = plt.subplots(figsize=(9, 8), layout="constrained")
    image = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, shrink=0.8, label="share of the true class")
    ticks = np.arange(len(CLASS_NAMES))
    ax.set_xticks(ticks, CLASS_NAMES, rotation=45, ha="right")
    ax.set_yticks(ticks, CLASS_NAMES)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"confusion matrix, row-normalized ({len(labels)} validation rows)")
    for (i, j), value in np.ndenumerate(share):
        ax.text(j, i, "0" if value == 0 else f"{value:.2f}", ha="center", va="center", fontsize=8,
                color="white" if value > 0.5 else "black")
    return _save(fig, out)


def plot_per_class(table: pd.DataFrame, out: Path) -> Path:
    """Horizontal bars of per-class accuracy, class 0 on top."""
    fig, ax = plt.subplots(figsize=(7, 5), layout="constrained")
    accuracy = table["accuracy"].fillna(0)
    ax.barh(table["name"], accuracy, color="tab:blue")
    ax.invert_yaxis()
    ax.set_xlim(0, 1.12)  # room for the labels right of a full bar
    for y, (value, total) in enumerate(zip(table["accuracy"], table["total"])):
        ax.text(min(0 if math.isnan(value) else value, 1) + 0.01, y,
                "no rows" if total == 0 else f"{value:.3f}", va="center", fontsize=8)
    ax.set_xlabel("validation accuracy")
    ax.set_title("per-class accuracy (best checkpoint)")
    ax.grid(axis="x", alpha=0.3)
    return _save(fig, out)


def plot_mistakes(val: Validation, out: Path, limit: int = MAX_MISTAKES) -> Path:
    """The most confident validation errors, titled `true → predicted` and the confidence."""
    preds = val.preds
    confidence = val.probs[np.arange(len(preds)), preds]
    wrong = np.flatnonzero(preds != val.labels)
    worst = wrong[np.argsort(-confidence[wrong], kind="stable")][:limit]
    titles = [f"{CLASS_NAMES[val.labels[i]]} → {CLASS_NAMES[preds[i]]}\n{confidence[i]:.0%}" for i in worst]
    heading = (f"{len(worst)} most confident of {len(wrong)} validation errors (true → predicted)"
               if len(wrong) else "no validation errors")
    return _image_grid(val.images[worst], titles, heading, out, cell=2.0)


def _image_grid(images: np.ndarray, titles: list[str], heading: str, out: Path, cell: float) -> Path:
    """A square-ish grid of 28x28 images, one title each; `cell` inches per image."""
    cols = max(1, math.ceil(math.sqrt(len(images))))
    rows = max(1, math.ceil(len(images) / cols))
    title = 0.05 + 0.13 * max((t.count("\n") + 1 for t in titles), default=1)  # inches, at 7 pt
    width, height = max(4.0, cols * cell), max(4.0, rows * cell + 0.4)
    # One picture of every image on a grid of cells, titled by text: one axes per image (and its layout and
    # ticks) took 1.3 of a report's 2.5 s on a Zen 3 (2026-12-02).
    gap = round(SIDE * title / (cell - title))  # pixels above each image for its title
    canvas = np.full((rows * (SIDE + gap), cols * (SIDE + 2)), 255, dtype=np.uint8)
    for k, image in enumerate(images):
        top, left = (k // cols) * (SIDE + gap) + gap, (k % cols) * (SIDE + 2) + 1
        canvas[top:top + SIDE, left:left + SIDE] = image.reshape(SIDE, SIDE)
    fig = plt.figure(figsize=(width, height))
    ax = fig.add_axes((0.01, 0.01, 0.98, 1 - 0.01 - 0.4 / height))
    ax.imshow(canvas, cmap="gray", vmin=0, vmax=255, interpolation="nearest", aspect="auto")
    ax.axis("off")
    for k, text in enumerate(titles):
        ax.text((k % cols) * (SIDE + 2) + 1 + SIDE / 2, (k // cols) * (SIDE + gap) + gap - 1, text, fontsize=7,
                ha="center", va="bottom")
    fig.suptitle(heading, fontsize=10)
    return _save(fig, out)


def data_titles(table: ImageTable, n: int, title_by: str = "auto") -> list[str]:
    """Titles of the first n images: class names (`label`) or ids (`id`); `auto` prefers labels."""
    if title_by not in TITLE_BY:
        raise CompetitionError(f"unknown title '{title_by}'; expected one of {', '.join(TITLE_BY)}.")
    if title_by == "label" and table.labels is None:
        raise CompetitionError(f"{table.path}: has no 'label' column to title the images with.")
    if title_by != "id" and table.labels is not None:
        return [CLASS_NAMES[label] for label in table.labels[:n]]
    if table.ids is None:  # a training table: no id column, so number the rows
        return [f"row {i + 1}" for i in range(min(n, len(table)))]
    return [f"{table.id_column} {value}" for value in table.ids[:n]]


def show_data(table: ImageTable, n: int, out: Path, title_by: str = "auto") -> Path:
    """A sqrt(n) x sqrt(n) grid of the first n images, titled by class name or id."""
    if n < 1:
        raise CompetitionError(f"the number of images to show must be at least 1, got {n}.")
    if n > len(table):
        log.info("%s has %d rows; showing all of them instead of %d", table.path, len(table), n)
    n = min(n, len(table))
    titles = data_titles(table, n, title_by)
    return _image_grid(table.images[:n], titles, f"{Path(table.path).name}: first {n} images",
                       Path(out), cell=1.1)


# --- the report -----------------------------------------------------------------------------

def write_report(run_dir: Path, to_board: bool = False) -> list[Path]:
    """Write a run's pictures, per-class table and report.md from its folder alone (nothing is evaluated:
    the validation rows and the best checkpoint's probabilities on them are in validation.npz); `to_board`
    (once, as training ends): the confusion matrix and the mistakes in its VisualDL log too."""
    run_dir = Path(run_dir)
    summary = checkpoint.read_summary(run_dir)
    config = Config.load(run_dir / folders.CONFIG_JSON)
    written = [plot_curves(summary, read_steps(run_dir), run_dir / CURVES)]
    val = Validation.load(run_dir) if has_validation(summary) else None
    table = None if val is None else per_class_table(val.labels, val.preds)
    if val is not None:
        _check_matches_summary(run_dir, table, summary)
        written += _validation_files(run_dir, val, table)
    text = report_markdown(run_dir, config, summary, _parameters(config), table,
                           {} if val is None else val.accuracies(), _runtime_line(run_dir),
                           0 if val is None else len(val.labels))
    with checkpoint.atomic_path(run_dir / REPORT) as tmp:
        tmp.write_text(text)
    written.append(run_dir / REPORT)
    if to_board and val is not None:
        board.add_images(run_dir, {"report/confusion": run_dir / CONFUSION, "report/mistakes": run_dir / MISTAKES})
    log.info("report of %s: %s", run_dir, ", ".join(p.name for p in written))
    return written


def _parameters(config: Config) -> int:
    """The model's parameter count (building it is instant; no weights are read)."""
    return count_parameters(build_model(config.model, **config.model_options()))


def _runtime_line(run_dir: Path) -> Optional[str]:
    """What the run trained on (runtime.json), or None for runs from before it existed."""
    return Runtime.load(run_dir).describe() if (run_dir / RUNTIME).is_file() else None


def _validation_files(run_dir: Path, val: Validation, table: pd.DataFrame) -> list[Path]:
    with checkpoint.atomic_path(run_dir / PER_CLASS_CSV) as tmp:
        table.to_csv(tmp, index=False)
    with checkpoint.atomic_path(run_dir / VALIDATION_JSON) as tmp:
        tmp.write_text(json.dumps(val.accuracies()) + "\n")
    return [run_dir / VALIDATION_JSON, run_dir / PER_CLASS_CSV,
            plot_confusion(val.labels, val.preds, run_dir / CONFUSION),
            plot_per_class(table, run_dir / PER_CLASS_PNG), plot_mistakes(val, run_dir / MISTAKES)]


def _check_matches_summary(run_dir: Path, table: pd.DataFrame, summary: pd.DataFrame) -> None:
    """Warn when validation.npz does not score the recorded best (a damaged or edited run folder?)."""
    recomputed = table["correct"].sum() / table["total"].sum()
    recorded = summary["val_acc"].max()
    if abs(recomputed - recorded) > 1e-6:
        log.warning("%s: validation.npz scores %.4f but summary.csv records %.4f as the best; "
                    "was the run folder edited?", run_dir, recomputed, recorded)


def report_markdown(run_dir: Path, config: Config, summary: pd.DataFrame, n_params: int,
                    table: Optional[pd.DataFrame], scores: Optional[dict[str, float]] = None,
                    trained_on: Optional[str] = None, val_rows: int = 0) -> str:
    """report.md: headline numbers (accuracies with their 95% intervals over `val_rows` rows; `scores`
    from Validation.accuracies()), pictures, per-class table and configuration."""
    rows = _headline_rows(config, summary, n_params, val_rows)
    for key, name in (("val_acc_tta6", "with 6-view TTA (`predict --tta 6`)"),
                      ("val_acc_tta2", "with flip TTA (`predict --tta 2`)")):
        if key in (scores or {}):
            rows.insert(1, [name, accuracy_text(scores[key], val_rows, "table")])
    if trained_on is not None:
        rows.append(["trained on (runtime.json)", trained_on])
    parts = [f"# Run `{Path(run_dir).name}`", "## Headline", _markdown_table(["", ""], rows),
             "## Training curves", f"![curves]({CURVES})"]
    if table is None and has_validation(summary):
        parts.append("**The run has not finished**: validation.npz, the best checkpoint's predictions on the "
                     "validation rows, is written when training ends, so there is no per-class table, confusion "
                     f"matrix or mistakes yet; continue with `competition train --resume {run_dir}`.")
    elif table is None:
        parts.append(f"**No validation split** (`val_size` {config.val_size:g}): the model was trained "
                     "on every row and the checkpoint is the last epoch's, so there is no validation "
                     "accuracy, confusion matrix, per-class table or mistakes to show.")
    else:
        parts += ["## Per-class accuracy (validation rows, best checkpoint)", per_class_markdown(table),
                  f"![per_class]({PER_CLASS_PNG})", "## Confusion matrix (rows: true, columns: predicted)",
                  f"![confusion]({CONFUSION})", "## Most confident mistakes", f"![mistakes]({MISTAKES})"]
    parts += ["## Configuration", _markdown_table(["key", "value"], _config_rows(config))]
    return "\n\n".join(parts) + "\n"


def _headline_rows(config: Config, summary: pd.DataFrame, n_params: int, val_rows: int) -> list[list[str]]:
    seconds, epochs = float(summary["seconds"].sum()), len(summary)
    planned = f" of {config.epochs} planned" if epochs != config.epochs else ""  # an interrupted run
    rows = [["model", f"{config.model} ({n_params:,} parameters)"], ["epochs", f"{epochs}{planned}"],
            ["training time", f"{seconds:.1f} s ({seconds / max(epochs, 1):.1f} s per epoch)"]]
    best = checkpoint.best_row(summary)
    if best is not None:
        interval = f"95% interval {accuracy_text(best['val_acc'], val_rows, 'interval')} over {val_rows:,} rows; " \
            if val_rows else ""
        headline = f"**{best['val_acc']:.4f}** ({interval}epoch {int(best['epoch'])})"
        rows.insert(0, ["best validation accuracy", headline])
        rows.append(["validation loss at best", f"{best['val_loss']:.4f}"])
    else:
        rows.insert(0, ["best validation accuracy", "none (no validation split)"])
    last = summary.iloc[-1]
    rows.append(["last train loss / accuracy", f"{last['train_loss']:.4f} / {last['train_acc']:.4f}"])
    return rows


def _config_rows(config: Config) -> list[list[str]]:
    return [[key, f"`{_config_value(value)}`"] for key, value in config.to_dict().items()]


def _config_value(value: Any) -> str:
    return json.dumps(value) if isinstance(value, (dict, list)) or value is None else str(value)


# --- a cross-validation (competition cv) ----------------------------------------------------

CV_COLUMNS = ["", "validation rows", f"accuracy ({INTERVAL})", "with flip TTA", "best epoch", "seconds"]


def write_cv_report(cv_dir: Path, run_dirs: list[Path], oof: pd.DataFrame, rows: list[list[str]]) -> list[Path]:
    """A cv folder's report.md: the folds' curves on one picture, and the out-of-fold predictions' (`oof`:
    label and pred columns) confusion matrix and per-class accuracy; `rows`: the headline table's rows."""
    cv_dir = Path(cv_dir)
    table = per_class_table(oof["label"].to_numpy(), oof["pred"].to_numpy())
    compare_runs(run_dirs, cv_dir / CURVES)
    written = [cv_dir / CURVES, plot_confusion(oof["label"], oof["pred"], cv_dir / CONFUSION),
               plot_per_class(table, cv_dir / PER_CLASS_PNG)]
    config = Config.load(run_dirs[0] / folders.CONFIG_JSON)
    parts = [f"# Cross-validation `{cv_dir.name}`: {len(run_dirs)} folds of `{config.model}`",
             "Each training row validates in exactly one fold; the out-of-fold accuracy scores every fold's best "
             "checkpoint on its own validation rows. Held-out rows (`--holdout`) trained and validated no fold.",
             "## Headline", _markdown_table(CV_COLUMNS, rows),
             "## Validation curves of the folds", f"![curves]({CURVES})",
             "## Out-of-fold per-class accuracy", per_class_markdown(table), f"![per_class]({PER_CLASS_PNG})",
             "## Out-of-fold confusion matrix (rows: true, columns: predicted)", f"![confusion]({CONFUSION})",
             "## Configuration of fold 1", _markdown_table(["key", "value"], _config_rows(config))]
    with checkpoint.atomic_path(cv_dir / REPORT) as tmp:
        tmp.write_text("\n\n".join(parts) + "\n")
    written.append(cv_dir / REPORT)
    log.info("report of %s: %s", cv_dir, ", ".join(p.name for p in written))
    return written


# --- comparing runs -------------------------------------------------------------------------

def compare_runs(run_dirs: list[Path], out: Path) -> pd.DataFrame:
    """Overlay the runs' validation accuracy curves in one PNG; one summary row per run."""
    if not run_dirs:
        raise CompetitionError("no run folders to compare; expected at least one.")
    # Read every run before drawing, so a bad folder fails without a half-made figure.
    summaries = {Path(run_dir): checkpoint.read_summary(Path(run_dir)) for run_dir in run_dirs}
    table = pd.DataFrame([_compare_row(run_dir, summary) for run_dir, summary in summaries.items()],
                         columns=COMPARE_COLUMNS)
    table["best_epoch"] = table["best_epoch"].astype("Int64")  # whole epochs; <NA> without validation
    fig, ax = plt.subplots(figsize=(8, 5), layout="constrained")
    for run_dir, summary in summaries.items():
        if has_validation(summary):
            ax.plot(summary["epoch"], summary["val_acc"], "o-", label=run_dir.name)
        else:
            log.info("%s has no validation split; it is left out of the plot", run_dir)
    if ax.lines:
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no run has a validation split", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation accuracy")
    left_out = len(summaries) - len(ax.lines)
    ax.set_title(f"validation accuracy of {len(summaries)} runs"
                 + (f" ({left_out} without validation, not drawn)" if left_out else ""))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    _save(fig, out)
    return table


def _compare_row(run_dir: Path, summary: pd.DataFrame) -> dict[str, Any]:
    config = Config.load(run_dir / folders.CONFIG_JSON)
    best = checkpoint.best_row(summary)
    return {"run": run_dir.name, "model": config.model,
            "best_epoch": math.nan if best is None else int(best["epoch"]),
            "best_val_acc": math.nan if best is None else float(best["val_acc"]),
            "epochs": len(summary), "seconds": float(summary["seconds"].sum())}
