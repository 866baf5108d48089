"""Writing files so that an interrupted or failed write never damages what was there."""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from .errors import CompetitionError


@contextlib.contextmanager
def exclusive(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on `path` (created if missing) for the block: one process at a time."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock, as before there was one
        yield
        return
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def user_cache_dir() -> Path:
    """The user's cache folder for this package ($XDG_CACHE_HOME or ~/.cache, then competition/)."""
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "competition"


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it over `path` only on success."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
    except OSError as exc:
        raise CompetitionError(f"{path.parent}: cannot write there ({exc.strerror}).") from None
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except OSError as exc:
        raise CompetitionError(f"{path}: could not be written ({exc.strerror}); "
                               "the previous file, if any, is unchanged.") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


@contextlib.contextmanager
def atomic_dir_prefix(folder: Path, name: str) -> Iterator[Path]:
    """Yield a temporary path prefix; files written as <prefix>.<ext> are renamed to <name>.<ext>."""
    staging = Path(tempfile.mkdtemp(dir=folder, prefix=f".{name}."))
    try:
        yield staging / name
        for written in staging.iterdir():
            os.replace(written, folder / written.name)
    except OSError as exc:
        raise CompetitionError(f"{folder}: could not write the {name} model ({exc.strerror}).") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
