"""Command line: `competition train|predict|evaluate`; the only module that prints and exits."""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Optional, Sequence

from . import checkpoint
from .config import Config
from .errors import CompetitionError
from .models import MODELS
from .predict import accuracy_on, load_test_table, predict_run
from .train import fit

DEFAULT_OUT = "submissions/submission.csv"


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line instead of the usage block."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _val_size(text: str) -> float:
    """A row count (>= 1) or a fraction in [0, 1)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a row count or a fraction, got '{text}'") from None
    if value >= 1 and value != int(value):
        raise argparse.ArgumentTypeError(f"a row count must be a whole number, got '{text}'")
    return int(value) if value >= 1 else value


def _train_parser(sub: argparse._SubParsersAction) -> None:
    d = Config()
    p = sub.add_parser("train", help="train a model; writes runs/<timestamp>-<model>/")
    p.add_argument("--train", metavar="FILE", help="training CSV (default: found in the data dirs)")
    p.add_argument("--model", default=d.model, help=f"one of {', '.join(MODELS)} (default {d.model})")
    p.add_argument("--epochs", type=int, default=d.epochs, help=f"default {d.epochs}")
    p.add_argument("--lr", type=float, default=d.lr, help=f"Adam learning rate (default {d.lr:g})")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help=f"default {d.batch_size}")
    p.add_argument("--val-size", type=_val_size, default=d.val_size, metavar="N|FRACTION",
                   help=f"validation rows held out, or a fraction; 0 trains on all rows (default {d.val_size})")
    p.add_argument("--seed", type=int, default=d.seed, help=f"default {d.seed}")
    p.add_argument("--rows", type=int, metavar="N", help="use only the first N training rows (smoke runs)")
    p.add_argument("--max-steps", type=int, metavar="N", help="end each epoch after N batches (smoke runs)")
    p.add_argument("--data-dir", metavar="DIR", help="where the contest files are (or env FMNIST_DATA)")
    p.add_argument("--runs-dir", default=d.runs_dir, metavar="DIR", help=f"default {d.runs_dir}/")
    p.add_argument("--device", default=d.device, choices=("auto", "cpu", "gpu"), help="default auto")
    p.set_defaults(func=cmd_train)


def _predict_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="write a submission CSV for the unlabeled test file")
    p.add_argument("--run", metavar="DIR", help="run folder (default: the newest in --runs-dir)")
    p.add_argument("--test", metavar="FILE", help="test CSV (default: found in the data dirs)")
    p.add_argument("--out", metavar="FILE", default=DEFAULT_OUT, help=f"default {DEFAULT_OUT}")
    p.add_argument("--data-dir", metavar="DIR", help="where the contest files are (or env FMNIST_DATA)")
    p.add_argument("--runs-dir", default="runs", metavar="DIR", help="default runs/")
    p.set_defaults(func=cmd_predict)
    e = sub.add_parser("evaluate", help="accuracy of a run on a test file that has a label column")
    e.add_argument("--run", metavar="DIR", help="run folder (default: the newest in --runs-dir)")
    e.add_argument("--test", metavar="FILE", required=True, help="labeled test CSV")
    e.add_argument("--runs-dir", default="runs", metavar="DIR", help="default runs/")
    e.set_defaults(func=cmd_evaluate)


def build_parser() -> argparse.ArgumentParser:
    """The `competition` argument parser."""
    parser = _Parser(prog="competition", description="PaddlePaddle Fashion-MNIST contest pipeline.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _train_parser(sub)
    _predict_parsers(sub)
    return parser


def cmd_train(args: argparse.Namespace) -> int:
    """Train and report the best validation accuracy and the run folder."""
    fields = {k: v for k, v in vars(args).items() if k not in ("func", "command")}
    config = Config(**fields, extra={"argv": sys.argv[1:]})
    result = fit(config)
    if result.best_val_acc is None:
        print(f"trained on every row (no validation split); run folder: {result.run_dir}")
    else:
        print(f"best validation accuracy {result.best_val_acc:.4f} (epoch {result.best_epoch}); "
              f"run folder: {result.run_dir}")
    return 0


def _run_dir(args: argparse.Namespace) -> Path:
    return Path(args.run) if args.run else checkpoint.newest_run(args.runs_dir)


def cmd_predict(args: argparse.Namespace) -> int:
    """Write the submission and say what it came from."""
    run_dir = _run_dir(args)
    table = load_test_table(args.test, args.data_dir)
    result = predict_run(run_dir, table, Path(args.out))
    acc = "none (trained on every row)" if result.val_acc is None else f"{result.val_acc:.4f}"
    print(f"run {run_dir}: validation accuracy {acc}")
    print(f"submission: {result.path} ({result.rows} rows; archived as {result.archived})")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Print a run's accuracy on a labeled test file."""
    run_dir = _run_dir(args)
    table = load_test_table(args.test)
    print(f"accuracy of {run_dir} on {table.path}: {accuracy_on(run_dir, table):.4f} ({len(table)} rows)")
    return 0


def _setup_logging() -> None:
    # Paddle puts its own handler on the root logger at import, so basicConfig
    # would be a no-op; the package logger gets a plain handler of its own.
    log = logging.getLogger("competition")
    if not log.handlers:
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point; returns the exit code."""
    args = build_parser().parse_args(argv)
    _setup_logging()
    try:
        return args.func(args)
    except CompetitionError as exc:
        print(f"competition {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"competition {args.command}: interrupted", file=sys.stderr)
        return 130
