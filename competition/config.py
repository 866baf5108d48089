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
    optimizer: str = "adam"  # adam | adamw | sgd (Nesterov momentum 0.9)
    weight_decay: float = 0.0  # decoupled for adamw, L2 for adam and sgd
    schedule: str = "constant"  # constant | cosine | onecycle, stepped every batch
    warmup_epochs: float = 0.0  # linear warm-up before a constant or cosine schedule
    label_smoothing: float = 0.0
    # Augmentation of training images (never of validation or test images).
    crop_pad: int = 0  # random crop after zero-padding each side by this many pixels
    flip: bool = False  # random horizontal mirror (never vertical: clothes have an up)
    erase: float = 0.0  # probability of random erasing of a rectangle
    ema: float = 0.0  # decay of an exponential moving average of the weights (0: off; try 0.999)
    width: Optional[int] = None  # model options: channels of the first conv (cnn, resnet)
    depth: Optional[int] = None  # residual blocks per stage (resnet)
    hidden: Optional[int] = None  # hidden fully connected units before the classifier (cnn)
    preset: Optional[str] = None  # the preset the other values started from
    train: Optional[str] = None  # training CSV; None: looked up in the data dirs
    data_dir: Optional[str] = None
    runs_dir: str = "runs"
    device: str = "auto"  # auto | cpu | gpu
    # Data-parallel processes; each takes batch_size / nproc rows of every batch.
    # None: one per core (CPU) or GPU, resolved by the CLI before the run starts.
    nproc: Optional[int] = None
    # CPU conv and 2x2 max-pool layers: onednn (the compiled kernels of kernels.cc), paddle
    # (Paddle's own), or auto (onednn when they build, else paddle). Same results, ~2x faster.
    conv: str = "auto"
    # fp32, or bf16: the CPU conv kernels read bfloat16 copies of their inputs while training
    # (float32 weights, sums and results; validation stays float32); ~1.6x faster resnet steps
    # on CPUs with AVX512-BF16 or AMX, float32 with a warning elsewhere.
    precision: str = "fp32"
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
            (self.weight_decay >= 0, f"--weight-decay must be 0 or more, got {self.weight_decay}."),
            (self.schedule in SCHEDULES,
             f"unknown schedule '{self.schedule}'; expected one of {', '.join(SCHEDULES)}."),
            (self.warmup_epochs >= 0, f"--warmup-epochs must be 0 or more, got {self.warmup_epochs}."),
            (0 <= self.label_smoothing < 1, f"--label-smoothing must be in [0, 1), got {self.label_smoothing}."),
            (0 <= self.crop_pad <= 8, f"--crop-pad must be 0 to 8 pixels, got {self.crop_pad}."),
            (0 <= self.erase <= 1, f"--erase must be a probability from 0 to 1, got {self.erase}."),
            (0 <= self.ema < 1, f"--ema must be a decay in [0, 1), got {self.ema}."),
            (self.optimizer in OPTIMIZERS,
             f"unknown optimizer '{self.optimizer}'; expected one of {', '.join(OPTIMIZERS)}."),
            (self.nproc is None or self.nproc >= 1, f"--nproc must be at least 1, got {self.nproc}."),
            (self.nproc is None or self.batch_size % self.nproc == 0,
             f"--batch-size {self.batch_size} does not split evenly over --nproc {self.nproc}; "
             "expected a multiple of the process count."),
            (self.conv in CONV_CHOICES, f"unknown conv '{self.conv}'; expected one of {', '.join(CONV_CHOICES)}."),
            (self.precision in PRECISIONS,
             f"unknown precision '{self.precision}'; expected one of {', '.join(PRECISIONS)}."),
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


    def model_options(self) -> dict[str, int]:
        """Keyword options for the model builder (only those that were set)."""
        options = (("width", self.width), ("depth", self.depth), ("hidden", self.hidden))
        return {k: v for k, v in options if v is not None}


OPTIMIZERS = ("adam", "adamw", "sgd")
CONV_CHOICES = ("auto", "onednn", "paddle")
PRECISIONS = ("fp32", "bf16")
SCHEDULES = ("constant", "cosine", "onecycle")

# Named recipes; explicit command-line options override their values.
# Times are for the 2-core CPU in BENCHMARKS.md (2 processes).
PRESETS: dict[str, dict[str, Any]] = {
    # about 2 minutes: three epochs of the small CNN with a one-cycle schedule
    "quick": {"model": "cnn", "epochs": 3, "batch_size": 256, "optimizer": "adam", "lr": 0.01,
              "schedule": "onecycle", "flip": True},
    # under 10 minutes with set-up (bash run.sh): the cnn with a hidden layer, 25 epochs,
    # crops and flips, AdamW with cosine decay (93.6% on a 10,000-row split after 30 epochs)
    "default": {"model": "cnn", "hidden": 256, "epochs": 25, "batch_size": 256, "optimizer": "adamw",
                "lr": 0.005, "weight_decay": 0.05, "schedule": "cosine", "warmup_epochs": 1, "flip": True,
                "crop_pad": 2, "label_smoothing": 0.1},
    # under an hour on 2 CPU cores: a residual network (32x2) whose training convs read bfloat16,
    # SGD with cosine decay, the full augmentation set
    "best": {"model": "resnet", "width": 32, "depth": 2, "epochs": 22, "batch_size": 128,
             "optimizer": "sgd", "lr": 0.1, "weight_decay": 5e-4, "schedule": "cosine",
             "warmup_epochs": 1, "flip": True, "crop_pad": 2, "erase": 0.25, "label_smoothing": 0.1,
             "precision": "bf16"},
}


def from_preset(preset: Optional[str], **options: Any) -> Config:
    """A configuration from a preset (if named) with explicit options on top."""
    if preset is not None and preset not in PRESETS:
        raise CompetitionError(f"unknown preset '{preset}'; expected one of {', '.join(PRESETS)}.")
    base = dict(PRESETS[preset]) if preset else {}
    return Config(**{**base, **options, "preset": preset})
