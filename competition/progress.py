"""Progress inside an epoch: a bar on a terminal or in a notebook, also for runs on several processes.

Launched ranks write their output to log files, so rank 0 writes its progress to a small file in
the run folder and the process that launched it draws the bar (parallel.launch).
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Optional, Protocol

from tqdm.auto import tqdm

PROGRESS = ".progress.json"  # in the run folder, written by rank 0 of a launched run


class Progress(Protocol):
    """Told after every training step: epoch (of epochs), steps done (of total) and the mean loss so far."""

    def __call__(self, epoch: int, epochs: int, done: int, total: int, loss: float) -> None: ...


class EpochBar:
    """One tqdm bar per epoch (tqdm.auto: a widget in Jupyter, text on a terminal, nothing in a log file)."""

    def __init__(self) -> None:
        self._bar: Optional[tqdm] = None
        self._epoch = 0

    def __call__(self, epoch: int, epochs: int, done: int, total: int, loss: float) -> None:
        """Move the bar; a new epoch starts a new bar."""
        if self._bar is None or epoch != self._epoch:
            self.close()
            # disable=None: a bar on a terminal, none when output goes to a file.
            self._bar = tqdm(total=total, desc=f"epoch {epoch}/{epochs}", unit="batch", leave=False, disable=None)
            self._epoch = epoch
        self._bar.update(done - self._bar.n)
        self._bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
        if done >= total:
            self.close()

    def close(self) -> None:
        """Remove the bar (the epoch's log line follows)."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None


class ProgressFile:
    """Rank 0's progress written atomically to run_dir/.progress.json, at most every `interval` seconds."""

    def __init__(self, run_dir: Path, interval: float = 0.5):
        self.path = Path(run_dir) / PROGRESS
        self.interval = interval
        self._last = 0.0

    def __call__(self, epoch: int, epochs: int, done: int, total: int, loss: float) -> None:
        """Write the figures unless the last write was under `interval` seconds ago (the epoch's end always)."""
        now = time.monotonic()
        if now - self._last < self.interval and done < total:
            return
        self._last = now
        tmp = self.path.with_name(f"{PROGRESS}.{os.getpid()}.tmp")
        try:
            tmp.write_text(json.dumps({"epoch": epoch, "epochs": epochs, "done": done, "total": total,
                                       "loss": loss}))
            os.replace(tmp, self.path)
        except OSError:
            pass  # a missed progress update only costs the bar a tick


def read_progress(run_dir: Path, since: float = 0.0) -> Optional[dict]:
    """The figures ProgressFile last wrote (after `since`, a time.time(): not an earlier attempt's), or None."""
    path = Path(run_dir) / PROGRESS
    try:
        return json.loads(path.read_text()) if path.stat().st_mtime >= since else None
    except (OSError, ValueError):
        return None
