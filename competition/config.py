"""One typed configuration holding every default; saved with each run."""
from __future__ import annotations

import dataclasses
import json
import math
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Union, get_args, get_origin, get_type_hints

from .errors import CompetitionError


RUNS_DIR = "runs"  # where run, cv and ensemble folders are made, unless --runs-dir says otherwise
SUBMISSION = "submissions/submission.csv"  # the file to upload, unless --out says otherwise
FOLDS = 5  # cv: 5 folds of 48,000 training rows each, close to a 50,000-row single run's


@dataclass
class Config:
    """Everything that decides a training run."""

    model: str = "conv"
    epochs: int = 5
    # A time budget for the whole command (plan.py): the most accurate measured recipe whose predicted wall time
    # fits; set, the run's model, width and epochs are the plan's. The presets quick, default and best are
    # budgets (BUDGETS) unless --epochs is given.
    minutes: Optional[float] = None
    lr: float = 1e-3  # Adam; the reference notebook's 1e-4 needs many more epochs
    batch_size: int = 256
    # Rows held out for validation (>= 1) or a fraction of the data (< 1);
    # 1,000 as in the reference notebook; 0 trains on every row.
    val_size: float = 1000
    # Cross-validation (competition cv): this run validates on fold `fold` (1..folds) of a seeded,
    # stratified split of the rows not held out; val_size is then unused.
    folds: Optional[int] = None
    fold: Optional[int] = None
    holdout: int = 0  # rows (stratified, as --val-size N) that neither train nor validate any fold
    seed: int = 0
    rows: Optional[int] = None  # use only the first N training rows (smoke runs)
    max_steps: Optional[int] = None  # end each epoch after N batches (smoke runs)
    optimizer: str = "adam"  # adam | adamw | sgd (Nesterov momentum)
    momentum: float = 0.9  # sgd's
    weight_decay: float = 0.0  # decoupled for adamw, L2 for adam and sgd
    # The learning rate of BatchNorm shifts is this many times the others' (airbench: 64); their
    # weight decay is divided by it, so they decay as much per step as before.
    norm_bias_lr: float = 1.0
    # constant | cosine | onecycle | linear (airbench's: 0.2 to 1 of --lr over the first 23% of
    # steps, then down to 0.07), stepped every batch
    schedule: str = "constant"
    warmup_epochs: float = 0.0  # linear warm-up before a constant or cosine schedule
    label_smoothing: float = 0.0
    # Augmentation of training images (never of validation or test images).
    crop_pad: int = 0  # random crop after zero-padding each side by this many pixels
    flip: bool = False  # random horizontal mirror (never vertical: clothes have an up)
    # with flip: each image mirrored on alternate epochs (at random in the first), as airbench
    alternate_flip: bool = False
    erase: float = 0.0  # probability of random erasing of a rectangle
    ema: float = 0.0  # decay of an exponential moving average of the weights (0: off; try 0.999)
    # airbench94's lookahead instead: every 5 steps the weights move to their average, which follows them less as
    # training ends, and the run ends on the average (train.Lookahead)
    lookahead: bool = False
    width: Optional[int] = None  # model options: channels of the first conv (cnn, resnet)
    depth: Optional[int] = None  # residual blocks per stage (resnet)
    hidden: Optional[int] = None  # hidden fully connected units before the classifier (cnn)
    preset: Optional[str] = None  # the preset the other values started from
    train_csv: Optional[str] = None  # the training CSV (--train); None: looked up in the data dirs
    data_dir: Optional[str] = None
    runs_dir: str = RUNS_DIR
    device: str = "auto"  # auto | cpu | gpu
    # Data-parallel processes; each takes batch_size / nproc rows of every batch.
    # None: one per core (CPU) or GPU, resolved by the CLI before the run starts.
    nproc: Optional[int] = None
    # Machines of a multi-node job (each runs nproc processes; see README "Several machines").
    nnodes: int = 1
    # CPU training path: onednn (the compiled kernels of kernels.cc), paddle (Paddle's own ops), or
    # auto: whichever trains this model faster on this processor (probe.py; measured once, cached). Same
    # results; the kernels took a Zen 3 (AVX2) airnet 48 step 4.9 s -> 0.56 s (BENCHMARKS.md).
    conv: str = "auto"
    # fp32, or bf16: in training the CPU kernels pass bfloat16 activations and gradients from one to
    # the next and the convs read bfloat16 weights (float32 sums, weights, statistics and optimizer;
    # validation stays float32); faster steps on CPUs with AVX512-BF16 or AMX (BENCHMARKS.md), float32
    # with a warning elsewhere.
    precision: str = "fp32"
    extra: dict[str, Any] = field(default_factory=dict)  # free-form notes, e.g. the command line

    def checked(self) -> "Config":
        """This configuration, checked: CompetitionError, in command-line wording, for settings no run can take."""
        problem = self._range_problem()
        if problem is not None:
            raise CompetitionError(problem[1])
        return self

    def _range_problem(self) -> Optional[tuple[str, str, str]]:
        """The first setting out of range: (key, command-line message, what a config.json needs)."""
        checks = [
            ("epochs", self.epochs >= 1, f"--epochs must be at least 1, got {self.epochs}.", "at least 1"),
            ("minutes", self.minutes is None or self.minutes > 0,
             f"--minutes must be positive, got {self.minutes}.", "a positive number or null"),
            ("lr", self.lr > 0, f"--lr must be positive, got {self.lr}.", "a positive number"),
            ("batch_size", self.batch_size >= 1, f"--batch-size must be at least 1, got {self.batch_size}.",
             "at least 1"),
            ("val_size", self.val_size >= 0, f"--val-size must be 0 or more, got {self.val_size}.", "0 or more"),
            ("folds", self.folds is None or self.folds >= 2, f"--folds must be at least 2, got {self.folds}.",
             "at least 2 or null"),
            ("fold", self.fold is None or (self.folds is not None and 1 <= self.fold <= self.folds),
             f"fold {self.fold} is not one of the {self.folds} folds.", f"1 to folds ({self.folds})"),
            ("holdout", self.holdout >= 0, f"--holdout must be 0 or more, got {self.holdout}.", "0 or more"),
            ("rows", self.rows is None or self.rows >= 1, f"--rows must be at least 1, got {self.rows}.",
             "at least 1 or null"),
            ("max_steps", self.max_steps is None or self.max_steps >= 1,
             f"--max-steps must be at least 1, got {self.max_steps}.", "at least 1 or null"),
            ("momentum", 0 <= self.momentum < 1, f"--momentum must be in [0, 1), got {self.momentum}.",
             "a number in [0, 1)"),
            ("norm_bias_lr", self.norm_bias_lr > 0,
             f"--norm-bias-lr must be positive, got {self.norm_bias_lr}.", "a positive number"),
            ("weight_decay", self.weight_decay >= 0,
             f"--weight-decay must be 0 or more, got {self.weight_decay}.", "0 or more"),
            ("schedule", self.schedule in SCHEDULES,
             f"unknown schedule '{self.schedule}'; expected one of {', '.join(SCHEDULES)}.",
             f"one of {', '.join(SCHEDULES)}"),
            ("warmup_epochs", self.warmup_epochs >= 0,
             f"--warmup-epochs must be 0 or more, got {self.warmup_epochs}.", "0 or more"),
            ("label_smoothing", 0 <= self.label_smoothing < 1,
             f"--label-smoothing must be in [0, 1), got {self.label_smoothing}.", "a number in [0, 1)"),
            ("crop_pad", 0 <= self.crop_pad <= 8, f"--crop-pad must be 0 to 8 pixels, got {self.crop_pad}.",
             "0 to 8 pixels"),
            ("erase", 0 <= self.erase <= 1, f"--erase must be a probability from 0 to 1, got {self.erase}.",
             "a probability from 0 to 1"),
            ("ema", 0 <= self.ema < 1, f"--ema must be a decay in [0, 1), got {self.ema}.", "a decay in [0, 1)"),
            ("lookahead", not (self.lookahead and self.ema),
             f"--ema {self.ema:g} and --lookahead are two weight averages; give one of them.", "false while ema is set"),
            ("optimizer", self.optimizer in OPTIMIZERS,
             f"unknown optimizer '{self.optimizer}'; expected one of {', '.join(OPTIMIZERS)}.",
             f"one of {', '.join(OPTIMIZERS)}"),
            ("nproc", self.nproc is None or self.nproc >= 1, f"--nproc must be at least 1, got {self.nproc}.",
             "at least 1 or null"),
            ("nnodes", self.nnodes >= 1, f"--nnodes must be at least 1, got {self.nnodes}.", "at least 1"),
            ("batch_size", self.nproc is None or self.batch_size % (self.nproc * self.nnodes) == 0,
             f"--batch-size {self.batch_size} does not split evenly over --nproc {self.nproc}"
             + (f" x --nnodes {self.nnodes}" if self.nnodes > 1 else "") + "; "
             "expected a multiple of the process count.",
             f"a multiple of the process count ({(self.nproc or 1) * self.nnodes})"),
            ("conv", self.conv in CONV_CHOICES,
             f"unknown conv '{self.conv}'; expected one of {', '.join(CONV_CHOICES)}.",
             f"one of {', '.join(CONV_CHOICES)}"),
            ("precision", self.precision in PRECISIONS,
             f"unknown precision '{self.precision}'; expected one of {', '.join(PRECISIONS)}.",
             f"one of {', '.join(PRECISIONS)}"),
            ("device", self.device in ("auto", "cpu", "gpu"),
             f"unknown device '{self.device}'; expected auto, cpu or gpu.", "one of auto, cpu, gpu"),
        ]
        return next(((key, message, expected) for key, ok, message, expected in checks if not ok), None)

    @classmethod
    def of_preset(cls, name: Optional[str], **options: Any) -> "Config":
        """A named recipe (quick, default, best) with `options` on top: Config.of_preset("quick", epochs=2)."""
        return from_preset(name, **options)

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form of the configuration."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Any, source: Optional[Path] = None) -> "Config":
        """Rebuild a checked configuration: wrong types, out-of-range values and unknown keys are errors.

        Messages name `source` (the config.json) when given, the key, the value and what was expected.
        """
        where = f"{source}: " if source is not None else ""
        if not isinstance(values, dict):
            raise CompetitionError(f"{where}holds {_json_kind(values)}; expected a JSON object of settings.")
        values = {RENAMED.get(key, key): value for key, value in values.items()}
        unknown = sorted(set(values) - set(FIELD_TYPES))
        if unknown:
            raise CompetitionError(f"{where}unknown configuration keys: {', '.join(unknown)}.")
        for key, value in values.items():
            fits, expected = _fits(FIELD_TYPES[key], value)
            if not fits:
                raise CompetitionError(f"{where}key '{key}' is {_shown(value)}; expected {expected}.")
        config = cls(**values)
        problem = config._range_problem()
        if problem is not None:
            key, _, expected = problem
            raise CompetitionError(f"{where}key '{key}' is {_shown(getattr(config, key))}; expected {expected}.")
        return config

    def save(self, path: Path) -> None:
        """Write the configuration as JSON."""
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: Path) -> "Config":
        """Read and check a configuration written by save() (and perhaps edited by hand since)."""
        try:
            values = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CompetitionError(f"{path}: cannot read the run configuration ({exc}).") from None
        return cls.from_dict(values, source=path)

    def model_options(self) -> dict[str, int]:
        """Keyword options for the model builder (only those that were set)."""
        options = (("width", self.width), ("depth", self.depth), ("hidden", self.hidden))
        return {k: v for k, v in options if v is not None}


# What a config.json value of each field type must be: a test, and the words for the message.
# bool is an int in Python, so int and float fields refuse it explicitly; float fields take ints
# (val_size holds a row count or a fraction) but not NaN or infinity, which no setting means.
_KINDS: dict[type, tuple[Callable[[Any], bool], str]] = {
    int: (lambda v: isinstance(v, int) and not isinstance(v, bool), "a whole number (int)"),
    float: (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v),
            "a finite number (float)"),
    bool: (lambda v: isinstance(v, bool), "true or false"),
    str: (lambda v: isinstance(v, str), "a string"),
    dict: (lambda v: isinstance(v, dict), "a JSON object"),
}


_UNIONS = (Union, getattr(types, "UnionType", Union))  # `int | None` is a types.UnionType (3.10+)


def _fits(hint: Any, value: Any) -> tuple[bool, str]:
    """Whether a JSON value fits a field's type hint, and what the hint expects, in words."""
    if get_origin(hint) in _UNIONS:  # Optional[X], the only union the fields use
        (inner,) = [arg for arg in get_args(hint) if arg is not type(None)]
        fits, expected = _fits(inner, value)
        return value is None or fits, f"{expected} or null"
    test, expected = _KINDS[get_origin(hint) or hint]
    return test(value), expected


def _field_types() -> dict[str, Any]:
    """Each field's type hint; a field of a type _KINDS cannot check fails at import, not in a run."""
    hints = get_type_hints(Config)
    for name, hint in hints.items():
        optional = get_origin(hint) in _UNIONS
        args = [arg for arg in get_args(hint) if arg is not type(None)] if optional else [hint]
        if len(args) != 1 or (get_origin(args[0]) or args[0]) not in _KINDS:
            raise TypeError(f"Config.{name}: config.json values of type {hint} are not checked; add it to _KINDS.")
    return hints


FIELD_TYPES = _field_types()
RENAMED = {"train": "train_csv"}  # keys of config.json files written before, and their names now


def option_flag(key: str) -> str:
    """The command-line flag of a configuration key: --train for train_csv, --val-size for val_size."""
    return {"train_csv": "--train"}.get(key, "--" + key.replace("_", "-"))


def _shown(value: Any, limit: int = 60) -> str:
    """A value as it is written in JSON, cut short for a one-line message."""
    text = json.dumps(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _json_kind(value: Any) -> str:
    """What a config.json that is not an object holds: 'a JSON list ([1, 2])', '3', 'null'."""
    return f"a JSON list ({_shown(value, 40)})" if isinstance(value, list) else _shown(value, 40)


OPTIMIZERS = ("adam", "adamw", "sgd")
CONV_CHOICES = ("auto", "onednn", "paddle")
PRECISIONS = ("fp32", "bf16")
SCHEDULES = ("constant", "cosine", "onecycle", "linear")

# airbench94's training recipe (github.com/KellerJordan/airbench), as our options: its lr 11.5 and
# decay 0.0153 are per 1,024 examples of a summed loss with momentum 0.85, so for a mean loss over a
# batch of 512: lr 11.5 / (1024 * (1 + 1 / 0.15)) * 512 = 0.75 and an L2 coefficient of 0.00133.
_AIRBENCH: dict[str, Any] = {
    "batch_size": 512, "optimizer": "sgd", "momentum": 0.85, "lr": 0.75, "weight_decay": 0.00133,
    "norm_bias_lr": 64, "schedule": "linear", "label_smoothing": 0.2, "flip": True, "alternate_flip": True,
    "crop_pad": 2, "lookahead": True, "precision": "bf16"}

# Named recipes; explicit command-line options override their values. Each comment: what it scored on a
# 10,000-row split (mean of two seeds) and its training minutes on 2 cores; history in BENCHMARKS.md.
PRESETS: dict[str, dict[str, Any]] = {
    # cnn 256, 9 epochs, one-cycle Adam: 92.8% in 1.5 min (Zen 4, AVX512-BF16)
    "quick": {"model": "cnn", "hidden": 256, "epochs": 9, "batch_size": 256, "optimizer": "adam", "lr": 0.01,
              "schedule": "onecycle", "flip": True, "crop_pad": 2, "label_smoothing": 0.1},
    # airbench's recipe with lookahead on airnet 48, 12 epochs: 95.18% with six views (seed 0) in 11 min (Zen 4, bfloat16)
    "default": {**_AIRBENCH, "model": "airnet", "width": 48, "epochs": 12},
    # resnet 32x2, 34 epochs, SGD cosine: 95.58-95.67% (95.93% with six views) in 24 min (Zen 4, bfloat16)
    "resnet": {"model": "resnet", "width": 32, "depth": 2, "epochs": 34, "batch_size": 128,
               "optimizer": "sgd", "lr": 0.1, "weight_decay": 5e-4, "schedule": "cosine",
               "warmup_epochs": 1, "flip": True, "crop_pad": 2, "erase": 0.25, "label_smoothing": 0.1,
               "precision": "bf16"},
    # airbench's recipe on airnet 64 (airbench94's widths), 36 epochs, with --ema 0.99 as best's second member was
    # measured (95.58% with six views, two seeds; Zen 4, bfloat16); lookahead is not measured at this width yet
    "airnet64": {**_AIRBENCH, "model": "airnet", "width": 64, "epochs": 36, "lookahead": False, "ema": 0.99},
}

# Ensemble presets: one run per member preset, one after the other in one folder; predict takes the
# geometric mean of their probabilities. best: 96.10% with six views in 51 min of bash run.sh (Zen 4,
# bfloat16), against 95.93% for the resnet alone.
ENSEMBLES: dict[str, tuple[str, ...]] = {"best": ("resnet", "airnet64")}

# Presets that are time budgets, in minutes of the whole command: quick, default and best plan the most accurate
# recipe that fits on this machine (plan.py), unless --epochs fixes the preset's own recipe.
BUDGETS: dict[str, float] = {"quick": 2.0, "default": 10.0, "best": 60.0}


def from_preset(preset: Optional[str], **options: Any) -> Config:
    """A configuration from a preset (if named) with explicit options on top. A budget preset (BUDGETS) without
    --epochs sets `minutes`, and its model, width and epochs are placeholders until the plan (plan.py) fills them;
    an ensemble preset's with --epochs stand for its members' (api.fit trains each member preset with them)."""
    if options.get("minutes") is not None and "epochs" in options:
        raise CompetitionError(f"--minutes {options['minutes']:g} plans the epochs itself; give --minutes or "
                               f"--epochs {options['epochs']}, not both.")
    if preset in BUDGETS and "epochs" not in options:
        options.setdefault("minutes", BUDGETS[preset])
    if preset is not None and preset not in PRESETS and preset not in ENSEMBLES:
        raise CompetitionError(f"unknown preset '{preset}'; expected one of {', '.join([*PRESETS, *ENSEMBLES])}.")
    base = dict(PRESETS.get(preset, {})) if preset else {}
    if options.get("ema") and "lookahead" not in options:  # one weight average replaces the preset's other
        base.pop("lookahead", None)
    if options.get("lookahead") and "ema" not in options:
        base.pop("ema", None)
    return Config(**{**base, **options, "preset": preset})
