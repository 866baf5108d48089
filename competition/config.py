"""One typed configuration holding every default; saved with each run."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from .errors import CompetitionError


@dataclass
class Config:
    """Everything that decides a training run."""

    model: str = "conv"
    epochs: int = 5
    lr: float = 1e-3  # Adam; the reference notebook's 1e-4 needs many more epochs
    batch_size: int = 256
    # Rows held out for validation (>= 1) or a fraction of the data (< 1);
    # 1,000 as in the reference notebook; 0 trains on every row.
    val_size: float = 1000
    seed: int = 0
    rows: Optional[int] = None  # use only the first N training rows (smoke runs)
    max_steps: Optional[int] = None  # end each epoch after N batches (smoke runs)
    optimizer: str = "adam"
    train: Optional[str] = None  # training CSV; None: looked up in the data dirs
    data_dir: Optional[str] = None
    runs_dir: str = "runs"
    device: str = "auto"  # auto | cpu | gpu
    # Data-parallel processes; each takes batch_size / nproc rows of every batch.
    # None: one per core (CPU) or GPU, resolved by the CLI before the run starts.
    nproc: Optional[int] = None
    extra: dict[str, Any] = field(default_factory=dict)  # free-form notes, e.g. the command line

    def validate(self) -> "Config":
        """Raise CompetitionError for settings no run can satisfy."""
        checks = [
            (self.epochs >= 1, f"--epochs must be at least 1, got {self.epochs}."),
            (self.lr > 0, f"--lr must be positive, got {self.lr}."),
            (self.batch_size >= 1, f"--batch-size must be at least 1, got {self.batch_size}."),
            (self.val_size >= 0, f"--val-size must be 0 or more, got {self.val_size}."),
            (self.rows is None or self.rows >= 1, f"--rows must be at least 1, got {self.rows}."),
            (self.max_steps is None or self.max_steps >= 1,
             f"--max-steps must be at least 1, got {self.max_steps}."),
            (self.optimizer in OPTIMIZERS,
             f"unknown optimizer '{self.optimizer}'; expected one of {', '.join(OPTIMIZERS)}."),
            (self.nproc is None or self.nproc >= 1, f"--nproc must be at least 1, got {self.nproc}."),
            (self.nproc is None or self.batch_size % self.nproc == 0,
             f"--batch-size {self.batch_size} does not split evenly over --nproc {self.nproc}; "
             "expected a multiple of the process count."),
            (self.device in ("auto", "cpu", "gpu"),
             f"unknown device '{self.device}'; expected auto, cpu or gpu."),
        ]
        for ok, message in checks:
            if not ok:
                raise CompetitionError(message)
        return self

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form of the configuration."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "Config":
        """Rebuild a configuration; unknown keys are an error, not silently dropped."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise CompetitionError(f"unknown configuration keys: {', '.join(unknown)}.")
        return cls(**values)

    def save(self, path: Path) -> None:
        """Write the configuration as JSON."""
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: Path) -> "Config":
        """Read a configuration written by save()."""
        try:
            return cls.from_dict(json.loads(path.read_text()))
        except (OSError, json.JSONDecodeError) as exc:
            raise CompetitionError(f"{path}: cannot read the run configuration ({exc}).") from None


OPTIMIZERS = ("adam",)
