"""Finding, reading and checking the contest CSVs; the Dataset that feeds Paddle."""
from __future__ import annotations

import csv
import gzip
import hashlib
import io
import os
import re
import stat
import warnings
import zipfile
import zlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import pandas as pd
import paddle

from .config import Config
from .errors import CompetitionError
from .files import atomic_path, user_cache_dir

N_PIXELS = 784
SIDE = 28
CLASS_NAMES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
               "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
TRAIN_FILE = "fashion-mnist_train.csv"
TEST_FILE = "fashion-mnist_test_data.csv"
DOWNLOAD_HINT = ("download the contest's CSV files (fashion-mnist_train.csv, "
                 "fashion-mnist_test_data.csv, plain or .gz) from the contest's data page "
                 "into data/, or pass --data-dir")
# Batch for validation and prediction. 10,000 images through resnet 32x2 on one core took 22.6 s
# at 256 and 40 s at 1,000 (activations past the caches), the cnn 2.0 s and 2.25 s; through
# paddle.inference 9.0-10.3 s and 11.1-11.5 s (resnet 32x2), 0.51-0.54 s and 0.81-0.93 s (cnn).
EVAL_BATCH = 256
_PIXEL = re.compile(r"pixel(\d+)$")
_FIELDS = re.compile(r"Expected (\d+) fields in line (\d+), saw (\d+)")
_GZIP_MAGIC = b"\x1f\x8b"


@dataclass
class ImageTable:
    """Images of one CSV file: uint8 pixels in pixel order, labels and ids when present."""

    path: Path
    images: np.ndarray  # uint8 [N, 784]
    labels: Optional[np.ndarray] = None  # int64 [N]
    ids: Optional[np.ndarray] = None  # str [N], test files only
    id_column: str = "id"

    def __len__(self) -> int:
        return len(self.images)

    def head(self, n: int) -> "ImageTable":
        """The first n rows (for smoke runs)."""
        cut = lambda a: None if a is None else a[:n]  # noqa: E731
        return replace(self, images=self.images[:n], labels=cut(self.labels), ids=cut(self.ids))


def search_dirs(data_dir: Optional[str] = None) -> list[Path]:
    """Where the contest files are looked for, in order."""
    first = data_dir or os.environ.get("FMNIST_DATA")
    dirs = [Path(first)] if first else []
    return dirs + [Path("data"), Path("../shared/data/fashion-mnist")]


def find_data_file(name: str, data_dir: Optional[str] = None) -> Path:
    """The first existing `name` or `name.gz` in the search dirs, or a clear error."""
    tried = []
    for folder in search_dirs(data_dir):
        for candidate in (folder / name, folder / f"{name}.gz"):
            if candidate.is_file():
                return candidate
            tried.append(str(candidate))
    raise CompetitionError(f"cannot find {name}; tried {', '.join(tried)}; {DOWNLOAD_HINT}.")


def data_file(name: str, given: Optional[str] = None, data_dir: Optional[str] = None) -> Path:
    """The file the user named (--train/--test), else the contest's `name` found in the search dirs."""
    return Path(given) if given else find_data_file(name, data_dir)


def read_train_csv(path: Path) -> ImageTable:
    """Read a labeled training CSV (`label` plus pixel1…pixel784)."""
    return _cached(Path(path), "train", lambda p: _read_csv(p, need_label=True, want_ids=False))


def read_test_csv(path: Path) -> ImageTable:
    """Read a test CSV: an id column (or ids 0…n-1), pixels, optionally `label`."""
    return _cached(Path(path), "test", lambda p: _read_csv(p, need_label=False, want_ids=True))


# Parsing the 60,000-row CSV takes ~2.5 s; its checked arrays load from an
# uncompressed .npz in ~0.05 s. Small files parse faster than a cache pays off.
CACHE_MIN_BYTES = 4 << 20
_CACHE_VERSION = 1


def cache_paths(path: Path, kind: str) -> list[Path]:
    """Where a file's cache may live: beside it, else (read-only data folder) the user's cache folder."""
    digest = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:16]
    beside = [path.with_name(f"{path.name}.{kind}.npz")] if _writable(path.parent) else []
    return beside + [user_cache_dir() / f"{path.name}.{digest}.{kind}.npz"]


def _writable(folder: Path) -> bool:
    # The mode bits, not os.access: root may write anywhere, but a folder
    # marked read-only (shared contest data) is not ours to add files to.
    try:
        return bool(folder.stat().st_mode & stat.S_IWUSR)
    except OSError:
        return False


def _cached(path: Path, kind: str, read: Callable[[Path], ImageTable]) -> ImageTable:
    """`read(path)`, through a binary cache that is rebuilt whenever the file changes."""
    try:
        info = path.stat()
    except OSError:
        return read(path)  # the reader names the problem
    if info.st_size < CACHE_MIN_BYTES:
        return read(path)
    stamp = np.array([_CACHE_VERSION, info.st_size, info.st_mtime_ns], dtype=np.int64)
    for cache in cache_paths(path, kind):
        table = _load_cache(cache, path, stamp)
        if table is not None:
            return table
    table = read(path)
    for cache in cache_paths(path, kind):
        if _store_cache(cache, table, stamp):
            break
    return table


def _load_cache(cache: Path, path: Path, stamp: np.ndarray) -> Optional[ImageTable]:
    try:
        with np.load(cache, allow_pickle=False) as saved:
            if not np.array_equal(saved["stamp"], stamp):
                return None  # the CSV changed since the cache was written
            labels = saved["labels"] if saved["has_labels"] else None
            ids = saved["ids"] if saved["has_ids"] else None
            return ImageTable(path, saved["images"], labels, ids, str(saved["id_column"]))
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError):
        return None  # missing or unreadable: parse the CSV instead


def _store_cache(cache: Path, table: ImageTable, stamp: np.ndarray) -> bool:
    empty = np.zeros(0, dtype=np.int64)
    try:
        with atomic_path(cache) as tmp, open(tmp, "wb") as handle:
            np.savez(handle, stamp=stamp, images=table.images,
                     labels=empty if table.labels is None else table.labels, has_labels=table.labels is not None,
                     ids=np.zeros(0, dtype=str) if table.ids is None else table.ids.astype(str),
                     has_ids=table.ids is not None, id_column=table.id_column)
        return True
    except CompetitionError:
        return False  # an unwritable folder only costs the speed-up


def read_columns(path: Path) -> list[str]:
    """The header of a CSV file, plain or gzip."""
    return _read_header(Path(path), _compression(Path(path)))


def _read_csv(path: Path, need_label: bool, want_ids: bool) -> ImageTable:
    compression = _compression(path)
    columns = _read_header(path, compression)
    pixels = _pixel_columns(path, columns)
    has_label = "label" in columns
    if need_label and not has_label:
        raise CompetitionError(f"{path}: no 'label' column; a training file needs the class "
                               "of each image in a column named label.")
    others = [c for c in columns if c not in set(pixels) and c != "label"]
    id_column = others[0] if want_ids and others else None
    numeric = pixels + (["label"] if has_label else [])
    frame = _parse(path, compression, columns, numeric)
    if frame.empty:
        raise CompetitionError(f"{path}: has a header but no data rows.")
    images = _checked_ints(path, frame, pixels, 0, 255, "a pixel value")
    labels = _checked_ints(path, frame, ["label"], 0, 9, "a class label")[:, 0] if has_label else None
    table = ImageTable(path, images.astype(np.uint8), None if labels is None else labels.astype(np.int64))
    if want_ids:
        table.ids, table.id_column = _ids(path, frame, id_column)
    return table


def _compression(path: Path) -> Optional[str]:
    """Sniff gzip by its magic bytes, whatever the file is called."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(2)
    except FileNotFoundError:
        raise CompetitionError(f"{path}: no such file.") from None
    except IsADirectoryError:
        raise CompetitionError(f"{path}: is a folder; expected a CSV file.") from None
    except OSError as exc:
        raise CompetitionError(f"{path}: cannot be read ({exc.strerror}).") from None
    if not head:
        raise CompetitionError(f"{path}: the file is empty; expected a CSV with a header row.")
    return "gzip" if head == _GZIP_MAGIC else None


def _read_header(path: Path, compression: Optional[str]) -> list[str]:
    opener = gzip.open if compression else open
    try:
        with opener(path, "rt", encoding="utf-8-sig", newline="") as handle:
            header = next(csv.reader(io.StringIO(handle.readline())), [])
    except UnicodeDecodeError:
        raise CompetitionError(f"{path}: is not a text CSV file (not UTF-8); "
                               "expected comma-separated values with a header row.") from None
    except (EOFError, zlib.error, gzip.BadGzipFile):
        raise CompetitionError(f"{path}: is a damaged or truncated gzip file; "
                               "download it again.") from None
    if not header or not any(name.strip() for name in header):
        raise CompetitionError(f"{path}: the first line is empty; expected a header row "
                               "(label, pixel1…pixel784).")
    if len(header) == 1:
        for sep in (";", "\t", "|"):
            if sep in header[0]:
                raise CompetitionError(f"{path}: values are separated by {sep!r}; "
                                       "expected a comma-separated file.")
    duplicated = sorted({name for name in header if header.count(name) > 1})
    if duplicated:
        raise CompetitionError(f"{path}: the header repeats column '{duplicated[0]}'; "
                               "expected each column name once.")
    return header


def _pixel_columns(path: Path, columns: list[str]) -> list[str]:
    """Pixel columns by their `pixel` prefix, sorted into pixel order."""
    numbered = sorted((int(m.group(1)), name) for name in columns if (m := _PIXEL.match(name)))
    if not numbered:
        raise CompetitionError(f"{path}: the header has no pixel columns; expected a header "
                               f"row with {N_PIXELS} columns pixel1…pixel{N_PIXELS}.")
    if len(numbered) != N_PIXELS:
        raise CompetitionError(f"{path}: found {len(numbered)} pixel columns; expected "
                               f"{N_PIXELS} (pixel1…pixel{N_PIXELS}, one per pixel of a 28×28 image).")
    first = numbered[0][0]
    if first not in (0, 1) or [n for n, _ in numbered] != list(range(first, first + N_PIXELS)):
        raise CompetitionError(f"{path}: pixel columns are not numbered pixel1…pixel{N_PIXELS} "
                               "(or pixel0…pixel783).")
    return [name for _, name in numbered]


def _parse(path: Path, compression: Optional[str], columns: list[str],
           numeric: list[str]) -> pd.DataFrame:
    """Fast typed parse; on a bad cell, a slower pass finds and names it."""
    # Every column is read (not usecols): pandas silently drops a row's extra
    # fields when usecols is given. int16 holds every valid value and any
    # out-of-range one worth reporting; explicit dtypes make the 60,000-row
    # file load in about 2 s.
    dtypes = {name: str for name in columns} | {name: np.int16 for name in numeric}
    try:
        return _read_frame(path, compression, dtypes)
    except pd.errors.ParserError as exc:
        match = _FIELDS.search(str(exc))
        where = (f", line {match.group(2)}: expected {match.group(1)} fields, found {match.group(3)}"
                 if match else f": not a well-formed CSV ({str(exc).strip()})")
        raise CompetitionError(f"{path}{where}.") from None
    except ValueError:  # a non-numeric, non-integer, missing or huge cell
        raise _diagnose(path, compression, columns, numeric) from None


def _read_frame(path: Path, compression: Optional[str], dtypes: dict) -> pd.DataFrame:
    try:
        # pandas takes a first data row with one field more than the header as an index column
        # (shifting every value); index_col=False refuses that and only warns, so the warning is an error.
        with warnings.catch_warnings():
            warnings.simplefilter("error", pd.errors.ParserWarning)
            return pd.read_csv(path, dtype=dtypes, compression=compression, index_col=False,
                               encoding="utf-8-sig", keep_default_na=False, na_values=[""])
    except pd.errors.ParserWarning:
        raise CompetitionError(f"{path}, line 2: more fields than the header has columns; "
                               "expected one field per column name.") from None
    except UnicodeDecodeError:
        raise CompetitionError(f"{path}: contains bytes that are not UTF-8 text; "
                               "expected a plain CSV file.") from None
    except (EOFError, zlib.error, gzip.BadGzipFile):
        raise CompetitionError(f"{path}: the gzip data ends early or is damaged "
                               "(truncated download?); download it again.") from None
    except pd.errors.EmptyDataError:
        raise CompetitionError(f"{path}: the file is empty; expected a CSV with a header row.") from None


def _diagnose(path: Path, compression: Optional[str], columns: list[str],
              numeric: list[str]) -> CompetitionError:
    """Locate the first cell the typed parse rejected."""
    frame = _read_frame(path, compression, {name: str for name in columns})
    text = frame[numeric]
    values = text.apply(pd.to_numeric, errors="coerce")
    bad = (values.isna() | (values != values.round())).to_numpy()
    if bad.any():
        row, col = np.argwhere(bad)[0]
        raw = text.iat[row, col]
        found = "an empty cell" if pd.isna(raw) or not str(raw).strip() else f"'{raw}'"
        return CompetitionError(f"{path}, row {row + 1} (line {row + 2}), column "
                                f"'{numeric[col]}': expected an integer, found {found}.")
    # Every cell is an integer, so one overflowed int16: the range checks name it.
    values = values.astype(np.int64)
    try:
        _checked_ints(path, values, [c for c in numeric if c != "label"], 0, 255, "a pixel value")
        _checked_ints(path, values, [c for c in numeric if c == "label"], 0, 9, "a class label")
    except CompetitionError as exc:
        return exc
    return CompetitionError(f"{path}: not a well-formed CSV of integers.")


def _checked_ints(path: Path, frame: pd.DataFrame, columns: list[str], low: int, high: int,
                  what: str) -> np.ndarray:
    """The columns as an array, or an error naming the first value outside low…high."""
    values = frame[columns].to_numpy()
    bad = (values < low) | (values > high)
    if bad.any():
        row, col = np.argwhere(bad)[0]
        raise CompetitionError(f"{path}, row {row + 1} (line {row + 2}), column '{columns[col]}': "
                               f"expected {what} from {low} to {high}, found {values[row, col]}.")
    return values


def _ids(path: Path, frame: pd.DataFrame, id_column: Optional[str]) -> tuple[np.ndarray, str]:
    """The test ids as strings (kept verbatim for the submission), or 0…n-1."""
    if id_column is None:
        return np.arange(len(frame)).astype(str), "id"
    ids = frame[id_column]
    missing = np.flatnonzero(ids.isna().to_numpy())
    if len(missing):
        row = missing[0]
        raise CompetitionError(f"{path}, row {row + 1} (line {row + 2}), column '{id_column}': "
                               "missing id; expected every test row to have one.")
    duplicated = ids[ids.duplicated()].unique()
    if len(duplicated):
        examples = ", ".join(map(str, duplicated[:3]))
        raise CompetitionError(f"{path}: column '{id_column}' has duplicate ids ({examples}); "
                               "expected each test row to have its own id.")
    return ids.to_numpy(dtype=str), id_column


def stratified_split(labels: np.ndarray, val_size: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded, class-stratified (train, validation) index split.

    Written here rather than taken from scikit-learn to keep that heavy
    dependency out; it is a per-class shuffle with largest-remainder quotas.
    """
    n = len(labels)
    n_val = int(val_size) if val_size >= 1 or val_size == 0 else max(1, round(val_size * n))
    if n_val >= n:
        raise CompetitionError(f"--val-size {val_size:g} holds out {n_val} of the {n} training rows, "
                               "leaving none to train on; expected a smaller validation split.")
    if n_val == 0:
        return np.arange(n), np.arange(0)
    classes, counts = np.unique(labels, return_counts=True)
    quota = counts * n_val / n
    take = np.floor(quota).astype(int)
    take[np.argsort(take - quota)[: n_val - take.sum()]] += 1  # largest remainders first
    rng = np.random.default_rng(seed)
    val = np.concatenate([rng.permutation(np.flatnonzero(labels == c))[:k]
                          for c, k in zip(classes, take)])
    is_val = np.zeros(n, dtype=bool)
    is_val[val] = True
    return np.flatnonzero(~is_val), np.flatnonzero(is_val)


TrainingData = tuple["ImageTable", np.ndarray, np.ndarray]  # table, training indices, validation indices


def load_training_data(config: Config) -> TrainingData:
    """The training table (its first config.rows rows) and its seeded, stratified (train, validation) indices."""
    table = load_training_table(config)
    if config.folds and config.fold:
        train_idx, val_idx = fold_split(table.labels, config.folds, config.fold, config.holdout, config.seed)
    else:
        train_idx, val_idx = stratified_split(table.labels, config.val_size, config.seed)
    return table, train_idx, val_idx


def load_training_table(config: Config) -> "ImageTable":
    """The configuration's training table: its first config.rows rows, or all."""
    table = read_train_csv(data_file(TRAIN_FILE, config.train_csv, config.data_dir))
    return table.head(config.rows) if config.rows else table


def holdout_split(labels: np.ndarray, holdout: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(rows the folds share, held-out rows): the held-out rows are those a single run with
    `--val-size holdout --seed seed` validates on, so the two can be compared on the same rows."""
    return stratified_split(labels, holdout, seed)


def assign_folds(labels: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """Each row's fold (0..folds-1): every class dealt out in turn after a seeded shuffle, so each fold
    holds within one row of its share of every class, and the folds' sizes differ by one at most."""
    rng = np.random.default_rng([seed, folds])
    fold_of = np.empty(len(labels), dtype=np.int64)
    dealt = 0  # where the next class starts dealing, so that the remainders spread over the folds
    for label in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == label))
        fold_of[rows] = (dealt + np.arange(len(rows))) % folds
        dealt += len(rows)
    return fold_of


def fold_split(labels: np.ndarray, folds: int, fold: int, holdout: int, seed: int
               ) -> tuple[np.ndarray, np.ndarray]:
    """(training, validation) indices of fold `fold` (1..folds) of the rows not held out."""
    if holdout >= len(labels):
        raise CompetitionError(f"--holdout {holdout} keeps all {len(labels)} training rows out of the folds; "
                               "expected fewer.")
    shared, _ = holdout_split(labels, holdout, seed)
    if len(shared) < folds:
        raise CompetitionError(f"{len(shared)} rows left after --holdout {holdout} cannot make {folds} folds; "
                               "expected at least one row per fold.")
    fold_of = assign_folds(labels[shared], folds, seed)
    return shared[fold_of != fold - 1], shared[fold_of == fold - 1]


@dataclass(frozen=True)
class Augment:
    """Random changes to training images, applied to a whole batch at once.

    paddle.vision.transforms (RandomCrop with padding, RandomHorizontalFlip,
    RandomErasing) work one image per Python call; these do the same with
    numpy on a batch, so augmentation costs no per-sample Python.
    """

    crop_pad: int = 0
    flip: bool = False
    erase: float = 0.0
    alternate_flip: bool = False  # with flip: each row mirrored on every other epoch (airbench)

    def __bool__(self) -> bool:
        return bool(self.crop_pad or self.flip or self.erase)

    def __call__(self, x: np.ndarray, rng: np.random.Generator, rows: Optional[np.ndarray] = None,
                 epoch: int = 0) -> np.ndarray:
        """Augmented copy of float images [B, 1, 28, 28]; same shape, dtype and range.

        `rows` (the images' row numbers) and `epoch` decide alternating flips.
        """
        if self.crop_pad:
            x = _random_crop(x, self.crop_pad, rng)
        if self.flip:
            if self.alternate_flip and rows is not None:
                mirrored = flip_phase(rows) ^ bool(epoch % 2)
            else:
                mirrored = rng.random(len(x)) < 0.5
            x[mirrored] = x[mirrored][..., ::-1]
        if self.erase:
            x[_erase_mask(len(x), self.erase, rng)[:, None]] = 0.0
        return x


def flip_phase(rows: np.ndarray) -> np.ndarray:
    """Whether each row is mirrored in even epochs: a fixed, evenly split bit per row number."""
    # The top bit of Knuth's multiplicative hash (mod 2^32): 0 or 1 for about half of any run of rows.
    hashed = (np.asarray(rows, dtype=np.uint64) * np.uint64(2654435761)) % np.uint64(2**32)
    return hashed >> np.uint64(31) == 1


def _random_crop(x: np.ndarray, pad: int, rng: np.random.Generator) -> np.ndarray:
    padded = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    rows = rng.integers(0, 2 * pad + 1, len(x))[:, None] + np.arange(SIDE)
    cols = rng.integers(0, 2 * pad + 1, len(x))[:, None] + np.arange(SIDE)
    return padded[np.arange(len(x))[:, None, None], 0, rows[:, :, None], cols[:, None, :]][:, None]


def _erase_mask(n: int, probability: float, rng: np.random.Generator) -> np.ndarray:
    """[n, 28, 28] masks of one rectangle (2-33% of the image, aspect 0.3-3.3) per chosen image."""
    chosen = rng.random(n) < probability
    area = rng.uniform(0.02, 0.33, n) * SIDE * SIDE
    aspect = np.exp(rng.uniform(np.log(0.3), np.log(1 / 0.3), n))
    h = np.clip(np.round(np.sqrt(area * aspect)), 1, SIDE).astype(int)
    w = np.clip(np.round(np.sqrt(area / aspect)), 1, SIDE).astype(int)
    top, left = rng.integers(0, SIDE - h + 1), rng.integers(0, SIDE - w + 1)
    line = np.arange(SIDE)
    in_rows = (line >= top[:, None]) & (line < (top + h)[:, None])
    in_cols = (line >= left[:, None]) & (line < (left + w)[:, None])
    return chosen[:, None, None] & in_rows[:, :, None] & in_cols[:, None, :]


class FashionMNIST(paddle.io.Dataset):
    """Float32 images [1, 28, 28] scaled to [0, 1] and int64 labels (when known).

    The only place pixels are normalized. `batch()` gathers many rows with
    one numpy call so the training loop never runs Python per sample.
    """

    def __init__(self, images: np.ndarray, labels: Optional[np.ndarray] = None,
                 augment: Optional[Augment] = None):
        self.images = images
        self.labels = labels
        self.augment = augment

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[np.ndarray, ...]:
        return tuple(part[0] for part in self.batch(np.asarray([index])))

    def batch(self, indices: np.ndarray, rng: Optional[np.random.Generator] = None,
              epoch: int = 0) -> tuple[np.ndarray, ...]:
        """Images (and labels) of many rows at once; augmented (for `epoch`) when a generator is given."""
        # uint8 / 255.0 would be float64: divide by a float32 scalar.
        x = self.images[indices].reshape(-1, 1, SIDE, SIDE).astype(np.float32) / np.float32(255)
        if self.augment and rng is not None:
            x = self.augment(x, rng, indices, epoch)
        return (x,) if self.labels is None else (x, self.labels[indices])


class Batches(paddle.io.Dataset):
    """A dataset whose items are whole batches of another, in a batch sampler's order.

    paddle.io.DataLoader's own batching calls __getitem__ once per sample and
    then collates; with batch_size=None it takes these ready batches as they are.
    """

    def __init__(self, dataset: FashionMNIST, batch_sampler: paddle.io.BatchSampler):
        self.dataset = dataset
        self.batch_sampler = batch_sampler
        self.order = [np.asarray(b) for b in batch_sampler]
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Reshuffle (and re-draw augmentation) for an epoch, deterministically."""
        self.epoch = epoch
        self.batch_sampler.set_epoch(epoch)
        self.order = [np.asarray(b) for b in self.batch_sampler]

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, k: int) -> tuple[np.ndarray, ...]:
        # Seeded by (epoch, rank, batch): the same images whatever order batches are fetched in.
        rank = getattr(self.batch_sampler, "local_rank", 0)
        return self.dataset.batch(self.order[k], np.random.default_rng([self.epoch, rank, k]), self.epoch)


def make_loader(dataset: FashionMNIST, batch_size: int, shuffle: bool) -> paddle.io.DataLoader:
    """A DataLoader of whole batches; shuffled ones reshuffle via loader.dataset.set_epoch()."""
    if shuffle:
        # DistributedBatchSampler shuffles with RandomState(epoch), so the order
        # is reproducible; with one process it covers every row.
        sampler = paddle.io.DistributedBatchSampler(dataset, batch_size, shuffle=True)
    else:
        sampler = paddle.io.BatchSampler(dataset, batch_size=batch_size, shuffle=False)
    return paddle.io.DataLoader(Batches(dataset, sampler), batch_size=None)
