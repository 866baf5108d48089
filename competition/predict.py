"""Prediction: a run's model on an unlabeled test file, written as a contest submission."""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Union

import numpy as np
import pandas as pd
import paddle
import paddle.nn.functional as F
from paddle import nn

from . import checkpoint, folders, parallel, submission
from .data import (EVAL_BATCH, SIDE, TEST_FILE, FashionMNIST, ImageTable, data_file, make_loader,
                   read_test_csv)
from .errors import CompetitionError
from .models import N_CLASSES
from .stats import VIEWS, views_key

RunDirs = Union[Path, list[Path]]  # one run folder, or several to ensemble


@dataclass
class Submission:
    """Where a prediction was written and what it was based on."""

    path: Path
    archived: Path
    rows: int
    val_acc: Optional[float]  # None without a validation split, and for ensembles
    val_acc_with_tta: Optional[float] = None  # the same over this submission's `tta` views (validation.npz), if known
    val_rows: int = 0  # the validation rows behind both (0: unknown)
    runs: list[Path] = field(default_factory=list)  # the run folders whose probabilities were averaged
    tta: int = 1  # test-time views averaged: 1 (none), 2 (mirror) or 6 (mirror and 1-pixel shifts)


def load_test_table(test: Optional[str], data_dir: Optional[str] = None) -> ImageTable:
    """The test file named, or the contest's found in the data dirs."""
    return read_test_csv(data_file(TEST_FILE, test, data_dir))


@paddle.no_grad()
def predict_probs(model: nn.Layer, images: np.ndarray, batch_size: int = EVAL_BATCH) -> np.ndarray:
    """Softmax probabilities [N, 10] for uint8 images [N, 784], batched, in eval mode."""
    model.eval()
    loader = make_loader(FashionMNIST(images), batch_size, shuffle=False)
    with parallel.batches_of(loader) as batches:
        probs = [F.softmax(model(x), axis=1).numpy() for (x,) in batches]
    return np.concatenate(probs) if probs else np.zeros((0, N_CLASSES), np.float32)


def inference_probs(run_dir: Path, images: np.ndarray, batch_size: int = EVAL_BATCH) -> Optional[np.ndarray]:
    """Softmax probabilities through paddle.inference (oneDNN on CPU); None without an export."""
    predictor = load_predictor(Path(run_dir))
    return None if predictor is None else run_predictor(predictor, images, batch_size)


def load_predictor(folder: Path) -> Optional[paddle.inference.Predictor]:
    """A warmed-up paddle.inference predictor for the model exported in `folder`, if any."""
    files = _inference_files(folder)
    return None if files is None else _predictor(*files)


def run_predictor(predictor: paddle.inference.Predictor, images: np.ndarray,
                  batch_size: int = EVAL_BATCH) -> np.ndarray:
    """Softmax probabilities [N, 10] of uint8 images [N, 784], in batches."""
    handle = predictor.get_input_handle(predictor.get_input_names()[0])
    output = predictor.get_output_handle(predictor.get_output_names()[0])
    dataset = FashionMNIST(images)  # the same /255 normalization as training
    logits = []
    for start in range(0, len(dataset), batch_size):
        (x,) = dataset.batch(np.arange(start, min(start + batch_size, len(dataset))))
        handle.reshape(x.shape)
        handle.copy_from_cpu(x)
        predictor.run()
        logits.append(output.copy_to_cpu())
    if not logits:
        return np.zeros((0, N_CLASSES), np.float32)
    return _softmax(np.concatenate(logits))


def _softmax(logits: np.ndarray) -> np.ndarray:
    """Rows of logits (or log-probabilities) [N, 10] as probabilities, in their dtype."""
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    return exp / exp.sum(axis=1, keepdims=True)


def _inference_files(run_dir: Path) -> Optional[tuple[Path, Path]]:
    params = run_dir / f"{checkpoint.INFERENCE}.pdiparams"
    for graph in (run_dir / f"{checkpoint.INFERENCE}.json", run_dir / f"{checkpoint.INFERENCE}.pdmodel"):
        if graph.is_file() and params.is_file():
            return graph, params
    return None


def _predictor(graph: Path, params: Path) -> paddle.inference.Predictor:
    config = paddle.inference.Config(str(graph), str(params))
    if parallel.has_gpu():
        config.enable_use_gpu(256, 0)
    else:
        config.disable_gpu()
        config.enable_mkldnn()
        # This pass folds each BatchNorm into its conv's weights through a oneDNN multiply that broadcasts
        # along the output channels, which only oneDNN's reference code runs (ONEDNN_VERBOSE, Zen 3, 2026-12-02).
        config.delete_pass("conv2d_bn_onednn_fuse_pass")
        config.set_cpu_math_library_num_threads(os.cpu_count() or 1)
    config.disable_glog_info()
    predictor = paddle.inference.create_predictor(config)
    warm = np.zeros((8, 1, 28, 28), np.float32)  # the first run plans the graph; keep it out of timings
    handle = predictor.get_input_handle(predictor.get_input_names()[0])
    handle.reshape(warm.shape)
    handle.copy_from_cpu(warm)
    predictor.run()
    return predictor


def flip_images(images: np.ndarray) -> np.ndarray:
    """Mirror each uint8 [N, 784] image left to right (never upside down: clothes have an up)."""
    square = np.asarray(images).reshape(-1, SIDE, SIDE)
    return np.ascontiguousarray(square[:, :, ::-1]).reshape(len(square), SIDE * SIDE)


def shift_images(images: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """Move each uint8 [N, 784] image down by dy and right by dx pixels, filling with 0 (the background)."""
    square = np.asarray(images).reshape(-1, SIDE, SIDE)
    out = np.zeros_like(square)
    rows_to, rows_from = slice(max(dy, 0), SIDE + min(dy, 0)), slice(max(-dy, 0), SIDE + min(-dy, 0))
    cols_to, cols_from = slice(max(dx, 0), SIDE + min(dx, 0)), slice(max(-dx, 0), SIDE + min(-dx, 0))
    out[:, rows_to, cols_to] = square[:, rows_from, cols_from]
    return out.reshape(len(square), SIDE * SIDE)


# Test-time augmentation (`--tta VIEWS`): 1 view (none), 2 (the image and its mirror) or 6 (both, and both
# moved one pixel up-left and down-right), averaged with these weights: airbench's "mirror + translate",
# which weighs the unmoved pair as much as the four moved views together.
VIEW_WEIGHTS = {1: (1.0,), 2: (0.5, 0.5), 6: (0.25, 0.25, 0.125, 0.125, 0.125, 0.125)}


def view_images(images: np.ndarray, views: int) -> list[np.ndarray]:
    """The first `views` of: the images, their mirrors, both moved by (-1, -1), both moved by (+1, +1)."""
    mirrored = flip_images(images)
    six = [images, mirrored, shift_images(images, -1, -1), shift_images(mirrored, -1, -1),
           shift_images(images, 1, 1), shift_images(mirrored, 1, 1)]
    return six[:views]


def probs_by_views(probs_of: Callable[[np.ndarray], np.ndarray], images: np.ndarray,
                   levels: tuple[int, ...] = VIEWS) -> dict[int, np.ndarray]:
    """Probabilities averaged over 1, 2 or 6 views for each level asked, from one pass over the views the
    largest level needs (the model is loaded and warmed up once)."""
    views = max(levels)
    probs = probs_of(np.concatenate(view_images(images, views))).reshape(views, len(images), N_CLASSES)
    return {k: np.tensordot(np.asarray(VIEW_WEIGHTS[k], np.float32), probs[:k], axes=1).astype(np.float32)
            for k in levels}


# Models combine by the normalized geometric mean of their probabilities (the mean of their log-probabilities,
# i.e. of their logits up to a constant), not the arithmetic mean: best's members differ in calibration
# (airnet64's label smoothing 0.2 puts 0.79 on its top class on average, the resnet's 0.1 puts 0.87), and
# an arithmetic mean lets the surer one decide. On the validation rows of five resnet + airnet64 pairs
# (BENCHMARKS.md) the geometric mean scored +0.02 to +0.07 points plain and -0.01 to +0.06 with six views.
# Views of one model stay arithmetically averaged (airbench's TTA, same model, same calibration).
_LOG_FLOOR = float(np.finfo(np.float32).tiny)  # a float32 probability that underflowed to 0 stays finite


def average_probs(probs: list[np.ndarray]) -> np.ndarray:
    """Several models' probabilities [N, 10] as one: their normalized geometric mean (float32)."""
    logs = np.mean([np.log(np.maximum(np.asarray(p, np.float64), _LOG_FLOOR)) for p in probs], axis=0)
    return _softmax(logs).astype(np.float32)


def run_probs(run_dir: Path, images: np.ndarray, tta: int = 1) -> np.ndarray:
    """A run's probabilities (exported inference model, else dygraph), averaged over `tta` views (1, 2 or 6);
    for a cv folder, its folds' combined by average_probs (a K-fold ensemble); for an ensemble folder, its
    members'."""
    members = folders.member_runs(run_dir)
    if members != [Path(run_dir)]:
        return average_probs([run_probs(member, images, tta) for member in members])
    return probs_by_views(functools.partial(model_probs, Path(run_dir)), images, (tta,))[tta]


def model_probs(run_dir: Path, images: np.ndarray) -> np.ndarray:
    """The best checkpoint's probabilities: through its paddle.inference export, else in dygraph."""
    probs = inference_probs(run_dir, images)
    if probs is None:
        model, _ = checkpoint.load_model(run_dir)
        probs = predict_probs(model, images)
    return probs


def ensemble_probs(run_dirs: list[Path], images: np.ndarray, tta: int = 1) -> np.ndarray:
    """The runs' softmax probabilities [N, 10] combined by average_probs (not a vote of their labels)."""
    if not run_dirs:
        raise CompetitionError("an ensemble needs at least one run folder.")
    return average_probs([run_probs(run_dir, images, tta) for run_dir in run_dirs])


def as_run_list(run_dirs: RunDirs) -> list[Path]:
    """One run folder or several, as a list of Paths."""
    return [Path(run_dirs)] if isinstance(run_dirs, (str, Path)) else [Path(r) for r in run_dirs]


def accuracy_on(run_dirs: RunDirs, table: ImageTable, tta: int = 1) -> float:
    """Accuracy of a run's model, or of several runs' averaged probabilities, on a labeled table."""
    if table.labels is None:
        raise CompetitionError(f"{table.path}: has no 'label' column to score against.")
    probs = ensemble_probs(as_run_list(run_dirs), table.images, tta)
    return float((probs.argmax(1) == table.labels).mean())


def predict_run(run_dirs: RunDirs, table: ImageTable, out: Path, tta: int = 1) -> Submission:
    """Write the submission of one run, or of an ensemble of runs, to `out` and a never-overwritten copy.

    The copy is named `<run>-val<best acc>` (`<run>-noval` without a validation
    split) for one run, and `ensemble-<n>-<first run>-<digest>` for several,
    where the digest is of the sorted run names, so different ensembles that
    start with the same run get different names; `<cv folder>-<K>fold-ensemble` for a cv folder (its folds
    averaged). `-tta2` is appended when the
    mirror images were averaged in, `-tta6` for six views. An ensemble's val_acc is its accuracy on the
    validation rows its runs share, and None when they held out different rows.
    """
    runs = as_run_list(run_dirs)
    labels = ensemble_probs(runs, table.images, tta).argmax(1)
    frame = submission_frame(table, labels)
    write_submission(frame, out)
    single = len(runs) == 1 and folders.member_runs(runs[0]) == runs
    val_acc = checkpoint.best_val_acc(runs[0]) if single else None
    stem = _archive_stem(runs, val_acc) + ("" if tta == 1 else f"-tta{tta}")
    archived = archive_submission(out, Path(out).parent, stem)
    if not single:
        shared = shared_validation(runs, tta)
        return Submission(out, archived, len(frame), *(shared or (None, None, 0)), runs, tta)
    validation = checkpoint.Validation.load(runs[0]) if val_acc is not None else None
    scores = {} if validation is None else validation.accuracies()
    return Submission(out, archived, len(frame), val_acc, scores.get(views_key("val_acc", tta)),
                      0 if validation is None else len(validation.labels), runs, tta)


def shared_validation(runs: list[Path], tta: int = 1) -> Optional[tuple[float, Optional[float], int]]:
    """An ensemble's accuracy on the validation rows its runs share (same rows, e.g. the same --val-size and
    --seed), from their validation.npz: (plain, with `tta` views, rows); None when the rows differ."""
    average = _averaged([_validation(run) for run in runs])
    if average is None:
        return None
    accuracy = lambda probs: float((probs.argmax(1) == average.labels).mean())  # noqa: E731
    with_views = None if tta == 1 else average.by_views().get(tta)
    return accuracy(average.probs), None if with_views is None else accuracy(with_views), len(average.labels)


def _validation(run: Path) -> Optional[checkpoint.Validation]:
    """A run's validation.npz; for an ensemble folder its members' averaged (they validate on the same
    rows); None for a cv folder (no rows that all folds validate on) or without a split."""
    members = folders.member_runs(run) if folders.is_ensemble(run) else [run]
    return _averaged([checkpoint.Validation.load(member) for member in members])


def _averaged(found: list[Optional[checkpoint.Validation]]) -> Optional[checkpoint.Validation]:
    """Validations of the same rows as one, their probabilities combined by average_probs (a view is None
    when one of them lacks it); None when one is missing or the rows differ."""
    if not found or any(v is None for v in found) or \
            any(not np.array_equal(v.indices, found[0].indices) for v in found):
        return None

    def combined(name: str) -> Optional[np.ndarray]:
        values = [getattr(v, name) for v in found]
        return None if any(value is None for value in values) else average_probs(values)

    return dataclasses.replace(found[0], probs=combined("probs"), tta2_probs=combined("tta2_probs"),
                               tta6_probs=combined("tta6_probs"))


def _archive_stem(runs: list[Path], val_acc: Optional[float]) -> str:
    if len(runs) == 1 and folders.is_cv(runs[0]):
        return f"{runs[0].name}-{len(folders.fold_dirs(runs[0]))}fold-ensemble"
    if len(runs) == 1 and folders.is_ensemble(runs[0]):
        return runs[0].name  # runs/<time>-ensemble-<preset>
    if len(runs) == 1:
        return f"{runs[0].name}-{'noval' if val_acc is None else f'val{val_acc:.4f}'}"
    digest = hashlib.sha1("\n".join(sorted(str(r.resolve()) for r in runs)).encode()).hexdigest()[:6]
    return f"ensemble-{len(runs)}-{runs[0].name}-{digest}"


def submission_frame(table: ImageTable, labels: np.ndarray) -> pd.DataFrame:
    """`<id column>,label` in test order, checked before anything is written."""
    frame = pd.DataFrame({table.id_column: table.ids, "label": np.asarray(labels).astype(np.int64)})
    found = submission.problems(frame, table.ids, table.id_column)
    if found:
        raise CompetitionError(f"refusing to write a submission for {table.path}: {'; '.join(found)}.")
    return frame


def write_submission(frame: pd.DataFrame, out: Path) -> None:
    """Write atomically: an interrupted write leaves the previous submission intact."""
    with checkpoint.atomic_path(Path(out)) as tmp:
        frame.to_csv(tmp, index=False)


def archive_submission(src: Path, archive_dir: Path, stem: str) -> Path:
    """Copy `src` to archive_dir/<stem>.csv, adding -2, -3… rather than overwrite."""
    try:
        archive_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=archive_dir, prefix=f".{stem}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as handle:
            handle.write(Path(src).read_bytes())
    except OSError as exc:
        raise CompetitionError(f"{archive_dir}: cannot archive the submission ({exc.strerror}).") from None
    try:
        for attempt in range(1, 1000):
            target = archive_dir / (f"{stem}.csv" if attempt == 1 else f"{stem}-{attempt}.csv")
            try:
                os.link(tmp, target)  # appears whole, and fails rather than replace a file
                return target
            except FileExistsError:
                continue
        raise CompetitionError(f"{archive_dir}: too many archived submissions named {stem}.")
    finally:
        os.unlink(tmp)
