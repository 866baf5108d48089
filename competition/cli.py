"""Command line: `competition train|predict|evaluate|check|score|report|show|compare`.

The only module that prints, reads sys.argv and chooses exit codes.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from dataclasses import replace
from pathlib import Path
from typing import Optional, Sequence

import pandas as pd

from . import api, board, cv, ensemble, folders, parallel, plan, report, submission, tune
from .bench import BenchSettings, run_bench
from .config import (BUDGETS, CONV_CHOICES, ENSEMBLES, FOLDS, OPTIMIZERS, PRECISIONS, PRESETS, RUNS_DIR,
                     SCHEDULES, SUBMISSION, Config, from_preset, option_flag)
from .data import TRAIN_FILE, data_file, read_train_csv
from .errors import CompetitionError
from .logs import setup_logging
from .models import MODELS, build_model
from .predict import accuracy_on, load_test_table
from .stats import VIEWS, accuracy_text


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
    # Defaults live in Config; options not given stay absent, so --resume can tell them apart.
    p = sub.add_parser("train", help="train a model; writes runs/<timestamp>-<model>/",
                       argument_default=argparse.SUPPRESS)
    p.add_argument("--resume", metavar="RUN", help="continue an interrupted run in its folder "
                   "(only --epochs may change)")
    p.add_argument("--minutes", type=float, metavar="M", help=f"a time budget for the whole command: train the "
                   f"most accurate measured recipe that fits here (presets: {_BUDGET_NAMES}; not with --epochs)")
    _add_recipe_options(p)
    p.add_argument("--val-size", type=_val_size, metavar="N|FRACTION",
                   help=f"validation rows held out, or a fraction; 0 trains on all rows "
                   f"(default {Config().val_size})")
    p.add_argument("--nnodes", type=int, metavar="N", help="machines of a multi-node job (default 1); start "
                   "`competition train` with the same options on each, adding --node-rank and --master")
    p.add_argument("--node-rank", type=int, metavar="R", help="this machine's place in the job, 0 to N-1; "
                   "node 0 creates the run folder (--runs-dir on storage every node sees)")
    p.add_argument("--master", metavar="HOST:PORT", help="node 0's address and a free port, the same on every node")
    p.set_defaults(func=cmd_train)


def _cv_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("cv", help="k-fold cross-validation: one run per fold in runs/<timestamp>-cv-<model>/",
                       argument_default=argparse.SUPPRESS)
    p.add_argument("--resume", metavar="CVDIR", help="continue a stopped cv from its first unfinished fold and epoch")
    p.add_argument("--minutes", type=float, metavar="M", help="a time budget for the whole cv (every fold, the "
                   "submission): each fold trains the most accurate measured recipe that fits; a budget preset "
                   "without it gives each fold the preset's minutes")
    p.add_argument("--folds", type=int, metavar="K", help=f"number of folds (2 or more; each row validates once; "
                   f"default {FOLDS})")
    p.add_argument("--holdout", type=int, metavar="N", help="stratified rows kept out of every fold, to score the "
                   "fold ensemble on (the rows `train --val-size N` with the same --seed validates on)")
    p.add_argument("--submit", type=int, nargs="?", const=6, choices=VIEWS, metavar="VIEWS",
                   help="then write the fold ensemble's submission with VIEWS-view TTA (6 when alone)")
    p.add_argument("--out", metavar="FILE", help=f"with --submit (default {SUBMISSION})")
    p.add_argument("--test", metavar="FILE", help="with --submit: test CSV (default: found in the data dirs)")
    _add_recipe_options(p)
    p.set_defaults(func=cmd_cv)


def _board_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("board", help="watch runs (their losses, accuracies, learning rate, pictures) in VisualDL")
    p.add_argument("runs", nargs="*", metavar="RUN", help="run, cv, ensemble or study folders (default: all of "
                   "--runs-dir)")
    p.add_argument("--runs-dir", default=RUNS_DIR, metavar="DIR", help=f"default {RUNS_DIR}/")
    _add_viewer_options(p, "VisualDL", board.PORTS["visualdl"])
    p.set_defaults(func=cmd_board)


def _add_viewer_options(p: argparse.ArgumentParser, viewer: str, port: int) -> None:
    p.add_argument("--port", type=int, metavar="N", help=f"{viewer}'s port (default {port})")
    p.add_argument("--host", metavar="ADDRESS", help="where it listens (default 127.0.0.1, this machine only; "
                   "0.0.0.0 for every network)")


def _tune_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("tune", help="search a recipe's hyper-parameters with Optuna; each trial is a run folder",
                       argument_default=argparse.SUPPRESS)
    p.add_argument("--trials", type=int, metavar="N", help="finished trials the study should hold (shared with "
                   "every process tuning the same study; run the command again to continue a stopped study)")
    p.add_argument("--timeout", type=float, metavar="MIN", help="start no new trial after MIN minutes")
    p.add_argument("--study", metavar="NAME", help="study name (default: the preset's, else the model's)")
    p.add_argument("--storage", metavar="URL", help="Optuna storage: sqlite:///FILE, postgresql://…, mysql://… or "
                   "journal:FILE (default sqlite:///RUNS_DIR/tune.db)")
    p.add_argument("--show", action="store_true", help="print the study's trials, best parameters and the command "
                   "that trains them; write its history and parameter importances as PNGs")
    p.add_argument("--board", action="store_true", help="watch the studies (--study: that one) in optuna-dashboard "
                   "until Ctrl-C")
    _add_viewer_options(p, "optuna-dashboard", board.PORTS["optuna-dashboard"])
    _add_recipe_options(p)
    p.add_argument("--val-size", type=_val_size, metavar="N|FRACTION",
                   help=f"validation rows that score each trial (default {tune.VAL_SIZE}, or a fifth of --rows: a "
                   "1,000-row split moves by ±1.4 points, more than most changes a search finds)")
    p.set_defaults(func=cmd_tune)


_BUDGET_NAMES = ", ".join(f"{name} {minutes:g}" for name, minutes in BUDGETS.items())
_ENSEMBLE_NAMES = ", ".join(f"{name} = {' + '.join(members)}" for name, members in ENSEMBLES.items())


def _add_recipe_options(p: argparse.ArgumentParser) -> None:
    """The options of a training recipe, shared by train, cv and tune."""
    d = Config()
    p.add_argument("--preset", help=f"start from a named recipe: {', '.join(PRESETS)}; "
                   f"or (train) an ensemble of recipes: {_ENSEMBLE_NAMES}; "
                   "explicit options override its values (every member's)")
    p.add_argument("--train", dest="train_csv", metavar="FILE", help="training CSV (default: found in the data dirs)")
    p.add_argument("--model", help=f"one of {', '.join(MODELS)} (default {d.model})")
    p.add_argument("--width", type=int, help="cnn, resnet, airnet: channels of the first conv (cnn 16, resnet 32, "
                   "airnet 64)")
    p.add_argument("--depth", type=int, help="resnet: residual blocks per stage")
    p.add_argument("--hidden", type=int, help="cnn: hidden fully connected units before the classifier (0: none)")
    p.add_argument("--epochs", type=int, help=f"default {d.epochs}")
    p.add_argument("--lr", type=float, help=f"(peak) learning rate (default {d.lr:g})")
    p.add_argument("--optimizer", choices=OPTIMIZERS, help=f"default {d.optimizer}")
    p.add_argument("--momentum", type=float, help=f"sgd's Nesterov momentum (default {d.momentum:g})")
    p.add_argument("--weight-decay", type=float, help=f"default {d.weight_decay:g}")
    p.add_argument("--norm-bias-lr", type=float, metavar="FACTOR", help="BatchNorm shifts learn this many "
                   "times faster, with their weight decay divided by it (airbench: 64; default 1)")
    p.add_argument("--schedule", choices=SCHEDULES, help=f"learning-rate schedule (default {d.schedule})")
    p.add_argument("--warmup-epochs", type=float, help="linear warm-up (constant and cosine schedules)")
    p.add_argument("--label-smoothing", type=float, help=f"default {d.label_smoothing:g}")
    p.add_argument("--crop-pad", type=int, metavar="PIXELS", help="random crops after padding (0: off)")
    p.add_argument("--flip", action=argparse.BooleanOptionalAction, help="random horizontal mirror")
    p.add_argument("--alternate-flip", action=argparse.BooleanOptionalAction, help="with --flip: mirror each "
                   "image on alternate epochs (at random in the first) instead of at random every epoch")
    p.add_argument("--erase", type=float, metavar="P", help="random erasing probability (0: off)")
    p.add_argument("--ema", type=float, metavar="DECAY", help="validate and keep an exponential moving "
                   "average of the weights, e.g. 0.999 (0: off; replaces a preset's --lookahead)")
    p.add_argument("--lookahead", action=argparse.BooleanOptionalAction, help="airbench94's lookahead: every "
                   "5 steps the weights move to their average, and the run ends on it (the airnet presets' weight "
                   "average)")
    p.add_argument("--batch-size", type=int, help=f"default {d.batch_size}")
    p.add_argument("--seed", type=int, help=f"default {d.seed}")
    p.add_argument("--rows", type=int, metavar="N", help="use only the first N training rows (smoke runs)")
    p.add_argument("--max-steps", type=int, metavar="N", help="end each epoch after N batches (smoke runs)")
    p.add_argument("--data-dir", metavar="DIR", help="where the contest files are (or env FMNIST_DATA)")
    p.add_argument("--runs-dir", metavar="DIR", help=f"default {d.runs_dir}/")
    p.add_argument("--device", choices=("auto", "cpu", "gpu"), help="default auto")
    p.add_argument("--conv", choices=CONV_CHOICES, help="CPU training path: onednn (kernels.cc, compiled "
                   "once), paddle (Paddle's own ops), auto (default: whichever trains this model faster on "
                   "this processor, measured once and cached)")
    p.add_argument("--precision", choices=PRECISIONS, help="fp32 (default) or bf16: the CPU kernels train on "
                   "bfloat16 activations and gradients (faster on CPUs with AVX512-BF16 or AMX; "
                   "weights, sums, statistics and validation stay float32)")
    p.add_argument("--nproc", type=int, metavar="N", help="data-parallel processes; the global batch and "
                   "learning rate stay the same (default: one per CPU core or GPU; env COMPETITION_NPROC)")


def _predict_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="write a submission CSV for the unlabeled test file")
    p.add_argument("--run", metavar="DIR", action="append", help="run folder (default: the newest in "
                   "--runs-dir); repeat it to average several runs' probabilities (an ensemble)")
    p.add_argument("--tta", type=int, nargs="?", const=6, default=1, choices=VIEWS, metavar="VIEWS",
                   help="average the predictions of several views of each test image: 2 (the image and its "
                   "mirror) or 6 (both, and both moved by one pixel; --tta alone, what bash run.sh submits)")
    p.add_argument("--test", metavar="FILE", help="test CSV (default: found in the data dirs)")
    p.add_argument("--out", metavar="FILE", default=SUBMISSION, help=f"default {SUBMISSION}")
    p.add_argument("--data-dir", metavar="DIR", help="where the contest files are (or env FMNIST_DATA)")
    p.add_argument("--runs-dir", default=RUNS_DIR, metavar="DIR", help=f"default {RUNS_DIR}/")
    p.set_defaults(func=cmd_predict)
    e = sub.add_parser("evaluate", help="accuracy of a run on a test file that has a label column")
    e.add_argument("--run", metavar="DIR", action="append", help="run folder (default: the newest); "
                   "repeat it for an ensemble")
    e.add_argument("--tta", type=int, nargs="?", const=6, default=1, choices=VIEWS, metavar="VIEWS",
                   help="as predict --tta")
    e.add_argument("--test", metavar="FILE", required=True, help="labeled test CSV")
    e.add_argument("--runs-dir", default=RUNS_DIR, metavar="DIR", help=f"default {RUNS_DIR}/")
    e.set_defaults(func=cmd_evaluate)


def _submission_parsers(sub: argparse._SubParsersAction) -> None:
    c = sub.add_parser("check", help="check a submission file against the test file's ids")
    c.add_argument("file", metavar="FILE", help="submission CSV")
    c.add_argument("--test", metavar="FILE", help="test CSV (default: found in the data dirs)")
    c.add_argument("--data-dir", metavar="DIR", help="where the contest files are (or env FMNIST_DATA)")
    c.set_defaults(func=cmd_check)
    s = sub.add_parser("score", help="accuracy of a submission against a labeled answers file")
    s.add_argument("file", metavar="FILE", help="submission CSV")
    s.add_argument("--answers", metavar="FILE", required=True,
                   help="labeled test CSV (with pixels) or an id,label CSV")
    s.set_defaults(func=cmd_score)


def _report_parsers(sub: argparse._SubParsersAction) -> None:
    r = sub.add_parser("report", help="(re)write a run's pictures and report.md without training")
    r.add_argument("run", metavar="RUN", nargs="?", help="run folder (default: the newest in --runs-dir)")
    r.add_argument("--runs-dir", default=RUNS_DIR, metavar="DIR", help=f"default {RUNS_DIR}/")
    r.set_defaults(func=cmd_report)
    s = sub.add_parser("show", help="pictures of the data: `competition show data`")
    s.add_argument("what", choices=("data",), help="what to show")
    s.add_argument("--split", choices=("train", "test"), default="train", help="default train")
    s.add_argument("--n", type=int, default=100, help="number of images (default 100: a 10x10 grid)")
    s.add_argument("--out", metavar="FILE", help="PNG to write (default runs/<split>-sample.png)")
    s.add_argument("--file", metavar="FILE", help="CSV to show (default: the contest file of --split)")
    s.add_argument("--data-dir", metavar="DIR", help="where the contest files are (or env FMNIST_DATA)")
    s.set_defaults(func=cmd_show)
    c = sub.add_parser("compare", help="overlay validation accuracy curves of several runs")
    c.add_argument("runs", metavar="RUN", nargs="+", help="run folders")
    c.add_argument("--out", metavar="FILE", default="runs/compare.png", help="default runs/compare.png")
    c.set_defaults(func=cmd_compare)


def _bench_parser(sub: argparse._SubParsersAction) -> None:
    d = BenchSettings()
    b = sub.add_parser("bench", help="time training and prediction (and PyTorch, when installed)")
    b.add_argument("--model", default=d.model, help=f"default {d.model}")
    b.add_argument("--width", type=int, help="cnn, resnet: channels of the first conv (as train --width)")
    b.add_argument("--depth", type=int, help="resnet: residual blocks per stage (as train --depth)")
    b.add_argument("--batch-size", type=int, default=d.batch_size, help=f"default {d.batch_size}")
    b.add_argument("--steps", type=int, default=d.steps, help=f"timed steps (default {d.steps})")
    b.add_argument("--warmup", type=int, default=d.warmup, help=f"untimed steps first (default {d.warmup})")
    b.add_argument("--nproc", type=int, metavar="N", help="processes, as `train --nproc` (default: as train)")
    b.add_argument("--device", default=d.device, choices=("auto", "cpu", "gpu"), help="default auto")
    b.add_argument("--conv", default=d.conv, choices=CONV_CHOICES, help="CPU conv kernel, as train --conv")
    b.add_argument("--precision", default=d.precision, choices=PRECISIONS, help="as train --precision")
    b.add_argument("--train", metavar="FILE", help="training CSV (default: found in the data dirs)")
    b.add_argument("--test", metavar="FILE", help="test CSV for prediction timing (default: found)")
    b.add_argument("--data-dir", metavar="DIR", help="where the contest files are (or env FMNIST_DATA)")
    b.add_argument("--json", action="store_true", help="end with one JSON line of the figures")
    b.set_defaults(func=cmd_bench)


def build_parser() -> argparse.ArgumentParser:
    """The `competition` argument parser."""
    parser = _Parser(prog="competition", description="PaddlePaddle Fashion-MNIST contest pipeline.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _train_parser(sub)
    _cv_parser(sub)
    _tune_parser(sub)
    _board_parser(sub)
    _predict_parsers(sub)
    _submission_parsers(sub)
    _report_parsers(sub)
    _bench_parser(sub)
    return parser


def cmd_train(args: argparse.Namespace) -> int:
    """Train (or resume) and report the best validation accuracy and the run folder."""
    given = {k: v for k, v in vars(args).items() if k not in ("func", "command")}
    run = given.pop("resume", None)
    node_rank, master = given.pop("node_rank", None), given.pop("master", None)
    if run is None:
        config = from_preset(given.pop("preset", None), **given, extra={"argv": sys.argv[1:]})
        result = api.fit(config, node_rank, master, started=plan.command_started())
        if isinstance(result, ensemble.EnsembleResult):
            return _print_ensemble(result)
    else:
        fixed = sorted(set(given) - {"epochs"})
        if fixed:
            names = ", ".join(option_flag(name) for name in fixed)
            raise CompetitionError(f"--resume continues {run} with its saved configuration (nodes included); "
                                   f"drop {names} (only --epochs, --node-rank and --master may be given).")
        if folders.is_ensemble(Path(run)):
            if given or node_rank is not None or master:
                raise CompetitionError(f"--resume {run} continues an ensemble with its saved configuration; "
                                       "drop --epochs, --node-rank and --master.")
            return _print_ensemble(ensemble.run_ensemble(Path(run)))
        result = api.resume(Path(run), given.get("epochs"), node_rank, master)
    return _print_run(result, node_rank)


def _print_run(result: "api.RunResult", node_rank: Optional[int]) -> int:
    """The per-class table, the best validation accuracy (with its views) and the run folder."""
    if node_rank:
        print(f"node {node_rank}: its ranks finished; node 0 writes the report of {result.run_dir}")
        return 0
    if result.best_val_acc is None:
        print(f"trained on every row (no validation split); run folder: {result.run_dir}")
    else:
        print(report.format_per_class(pd.read_csv(result.run_dir / report.PER_CLASS_CSV)))
        rows = result.val_rows
        tta = (f"; with flip TTA {accuracy_text(result.val_acc_tta2, rows)}" if result.val_acc_tta2 is not None
               else "")
        if result.val_acc_tta6 is not None:
            tta += f"; with 6-view TTA {accuracy_text(result.val_acc_tta6, rows)}"
        best = accuracy_text(result.best_val_acc, rows) if rows else f"{result.best_val_acc:.4f}"
        print(f"best validation accuracy {best}, epoch {result.best_epoch}{tta}; "
              f"run folder: {result.run_dir} (see report.md there)")
    return 0


def _print_ensemble(result: "ensemble.EnsembleResult") -> int:
    """Each member's best validation accuracy, then their average's on the rows they share."""
    for member in result.members:
        best = "none (no validation split)" if member.best_val_acc is None else \
            accuracy_text(member.best_val_acc, member.val_rows) if member.val_rows else f"{member.best_val_acc:.4f}"
        print(f"{member.run_dir.name}: best validation accuracy {best}, epoch {member.best_epoch}")
    if result.figures is None:
        print(f"ensemble folder: {result.ens_dir} (no validation split)")
    else:
        fig = result.figures
        print(f"ensemble of {len(result.members)} (probabilities averaged): validation accuracy "
              f"{accuracy_text(fig['acc'], fig['rows'])}; with flip TTA {fig['acc_tta2']:.2%}; with 6-view TTA "
              f"{fig['acc_tta6']:.2%}; ensemble folder: {result.ens_dir}")
    return 0


def cmd_cv(args: argparse.Namespace) -> int:
    """Start (or resume) a cross-validation, print its figures, and submit the fold ensemble if asked."""
    given = {k: v for k, v in vars(args).items() if k not in ("func", "command")}
    cv_dir, views = given.pop("resume", None), given.pop("submit", None)
    out, test = given.pop("out", SUBMISSION), given.pop("test", None)
    planned = None
    if cv_dir is None:
        given.setdefault("folds", FOLDS)
        if given.get("preset") in ENSEMBLES:
            raise CompetitionError(f"preset '{given['preset']}' is an ensemble of "
                                   f"{' and '.join(ENSEMBLES[given['preset']])}; a cv trains one recipe: name one "
                                   "of them with --preset, or give --minutes.")
        config = from_preset(given.pop("preset", None), **given, extra={"argv": sys.argv[1:]})
        if config.minutes is not None:  # the whole cv's budget; a budget preset's minutes are each fold's
            minutes = config.minutes if "minutes" in given else config.minutes * config.folds
            planned, _ = api.plan_run(replace(config, minutes=minutes), {**given, "extra": config.extra},
                                      plan.command_started(), runs=config.folds)
            config = planned.configs[0]
        cv_dir = cv.start_cv(config)
        if planned is not None:
            planned.save(cv_dir)  # each fold's log starts with its line
    elif given:
        names = ", ".join(option_flag(name) for name in sorted(given))
        raise CompetitionError(f"--resume continues {cv_dir} with its saved configuration; drop {names}.")
    elif not folders.is_cv(Path(cv_dir)):
        raise CompetitionError(f"{cv_dir}: not a cv folder (no {folders.CV_JSON}); nothing to resume.")
    result = cv.run_cv(Path(cv_dir))
    for fold in result.folds:
        print(f"{fold['run']}: validation accuracy {accuracy_text(fold['val_acc'], fold['rows'])}, "
              f"epoch {fold['best_epoch']}")
    print(cv_line(result))
    if views:
        data_dir = folders.read_cv_record(result.cv_dir)["config"]["data_dir"]  # the cv's, for the test file too
        written = api.submit([result.cv_dir], tta=views, out=out, test=test, data_dir=data_dir)
        print(f"submission: {written.path} ({written.rows} rows; archived as {written.archived})")
    if planned is not None:
        print(plan.finish(result.cv_dir, planned.record), file=sys.stderr)
    return 0


def cmd_tune(args: argparse.Namespace) -> int:
    """Run a study's trials (or show it): trials table, best parameters and the command that trains them."""
    given = {k: v for k, v in vars(args).items() if k not in ("func", "command")}
    trials, timeout, show = given.pop("trials", None), given.pop("timeout", None), given.pop("show", False)
    storage, preset = given.pop("storage", None), given.get("preset")
    runs_dir = given.get("runs_dir", Config().runs_dir)
    port, host = given.pop("port", None), given.pop("host", None) or "127.0.0.1"
    if given.pop("board", False):
        url, page = tune.dashboard_target(given.get("study"), storage, runs_dir)
        return board.serve_study(url, page, host, port)
    name = given.pop("study", None) or preset or given.get("model") or Config().model
    if show:
        study = tune.load_study(name, storage, runs_dir)
    else:
        if trials is None or trials < 1:
            raise CompetitionError("competition tune needs --trials N (1 or more), or --show.")
        if given.get("val_size") is None:  # fixed, so the best trial's command line holds it too
            given["val_size"] = tune.default_val_size(given.get("rows"))
        if preset in ENSEMBLES:
            raise CompetitionError(f"tune searches one recipe; preset {preset} is an ensemble of "
                                   f"{' and '.join(ENSEMBLES[preset])}: name one of them with --preset.")
        if preset in BUDGETS and "epochs" not in given:  # trials train the preset's own recipe, not a plan
            given["epochs"] = PRESETS[preset]["epochs"]
        fixed = {k: v for k, v in given.items() if k not in ("preset", "runs_dir")}
        base = from_preset(given.pop("preset", None), **given, extra={"argv": sys.argv[1:]})
        study = tune.tune(base, fixed, trials, timeout, name, storage)
    table = tune.trials_table(study)
    print(table.to_string(index=False) if len(table) else f"study '{name}' has no trials yet")
    best = tune.best_trial(study)
    if best is not None:
        print(f"best: trial {best.number}, validation accuracy "
              f"{accuracy_text(best.value, best.user_attrs.get('val_rows', 0))}; parameters {best.params}")
        print(f"train it again: {tune.best_command(study)}")
    if show:
        for path in tune.write_plots(study, folders.study_dir(runs_dir, name)):
            print(path)
    return 0


def cmd_board(args: argparse.Namespace) -> int:
    """VisualDL on the runs folder or the named folders, until Ctrl-C or SIGTERM."""
    return board.serve_runs([Path(run) for run in args.runs], args.runs_dir, args.host or "127.0.0.1", args.port)


def cv_line(result: "cv.CvResult") -> str:
    """One line of a finished cv's figures: out-of-fold accuracy and, with --holdout, the ensemble's."""
    line = (f"out-of-fold accuracy {accuracy_text(result.oof_acc, result.oof_rows)} "
            f"({result.oof_acc_tta2:.2%} with flip TTA)")
    if result.holdout:
        held = result.holdout
        singles = ", ".join(f"{acc:.2%}" for acc in held["fold_acc"])
        line += (f"; on {held['rows']:,} held-out rows the {len(result.folds)}-fold ensemble scores "
                 f"{accuracy_text(held['ensemble_acc'], held['rows'])}, {held['ensemble_acc_tta6']:.2%} with "
                 f"six-view TTA (single folds: {singles})")
    return f"{line}; cv folder: {result.cv_dir} (see report.md there)"


def _run_dirs(args: argparse.Namespace) -> list[Path]:
    return [Path(run) for run in args.run] if args.run else [folders.newest_run(args.runs_dir)]


def cmd_predict(args: argparse.Namespace) -> int:
    """Write the submission and say what it came from."""
    run_dirs = _run_dirs(args)
    result = api.submit(run_dirs, tta=args.tta, out=args.out, test=args.test, data_dir=args.data_dir)
    tta = {1: "", 2: " with mirrored test images (TTA)"}.get(args.tta,
                                                           f" with {args.tta} views of each test image (TTA)")
    what = f"run {run_dirs[0]}"
    if folders.is_ensemble(run_dirs[0]):
        what = f"ensemble {run_dirs[0]} ({len(folders.member_runs(run_dirs[0]))} runs averaged)"
    if len(run_dirs) > 1:
        print(f"ensemble of {len(run_dirs)} runs{tta}: {', '.join(map(str, run_dirs))}")
        if result.val_acc is None:
            print("validation accuracy: none (the runs validated on different rows)")
        else:
            with_tta = "" if result.val_acc_with_tta is None else \
                f"; {accuracy_text(result.val_acc_with_tta, result.val_rows)} with TTA"
            print(f"validation accuracy on the rows the runs share: {accuracy_text(result.val_acc, result.val_rows)}"
                  f"{with_tta}")
    elif folders.is_cv(run_dirs[0]):
        found = cv.read_result(run_dirs[0])
        print(f"{len(found.folds)}-fold ensemble{tta}: {cv_line(found)}")
    elif result.val_acc is None:
        print(f"{what}{tta}: validation accuracy none (trained on every row)")
    elif not result.val_rows:  # a run from before validation.npz: no row count for an interval
        print(f"{what}{tta}: validation accuracy {result.val_acc:.4f}")
    elif args.tta > 1 and result.val_acc_with_tta is not None:
        print(f"{what}{tta}: validation accuracy {accuracy_text(result.val_acc_with_tta, result.val_rows)} "
              f"with TTA ({result.val_acc:.2%} without)")
    else:
        print(f"{what}{tta}: validation accuracy {accuracy_text(result.val_acc, result.val_rows)}")
    print(f"submission: {result.path} ({result.rows} rows; archived as {result.archived})")
    planned = plan.load(run_dirs[0]) if len(run_dirs) == 1 and plan.STARTED_ENV in os.environ else None
    if planned is not None and planned.get("started") == plan.command_started():  # run.sh: the run it trained
        print(plan.finish_command(run_dirs[0], planned))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Print a run's (or an ensemble's) accuracy on a labeled test file."""
    run_dirs = _run_dirs(args)
    table = load_test_table(args.test)
    accuracy = accuracy_on(run_dirs, table, tta=args.tta)
    print(f"accuracy of {', '.join(map(str, run_dirs))} on {table.path}: {accuracy:.4f} ({len(table)} rows)")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    """Print Paddle's (and PyTorch's) seconds per epoch and prediction time."""
    nproc = args.nproc or parallel.default_nproc(args.batch_size)
    Config(model=args.model, batch_size=args.batch_size, nproc=nproc).checked()
    if min(args.steps, args.warmup) < 1:
        raise CompetitionError("--steps and --warmup must be at least 1.")
    settings = BenchSettings(args.model, args.batch_size, args.steps, args.warmup, nproc, args.device, args.conv,
                             args.precision, args.width, args.depth)
    build_model(args.model, **settings.model_options())  # an unknown model or option fails here
    train_path = data_file(TRAIN_FILE, args.train, args.data_dir)
    test_images = load_test_table(args.test, args.data_dir).images
    figures = run_bench(settings, train_path, test_images)
    for line in bench_lines(figures, nproc, min(len(test_images), 10_000)):
        print(line)
    if args.json:
        print(json.dumps(figures))
    return 0


def bench_lines(figures: dict, nproc: int, predicted: int) -> list[str]:
    """What `competition bench` prints of its figures."""
    paths = {"kernels.cc": figures["kernels_epoch_s"], "Paddle's ops": figures["paddle_ops_epoch_s"]}
    timed = "; ".join(f"{name} {seconds:.1f} s" for name, seconds in paths.items() if seconds is not None)
    ratio = "" if figures["kernels_ratio"] is None else f" (kernels.cc / Paddle's ops {figures['kernels_ratio']:.2f})"
    torch = ("no PyTorch figure (not installed: pip install -e .[bench]; or no twin of this model)"
             if figures["torch_epoch_s"] is None else
             f"PyTorch {figures['torch_version']}: {figures['torch_epoch_s']:.1f} s (median of "
             f"{', '.join(f'{s:.1f}' for s in figures['torch_epoch_s_runs'])}); "
             f"Paddle/PyTorch {figures['ratio']:.2f}")
    primitives = ", ".join(f"{name} x{count}" for name, count in figures["onednn_primitives"].items())
    refs = figures["reference_primitives"]
    torch_share = ("" if figures["torch_conv_gflops"] is None else
                   f"; PyTorch {figures['torch_conv_gflops']:.0f} GFLOP/s, {figures['torch_peak_fraction']:.0%}")
    bf16_peak = "" if figures["peak_bf16_gflops"] is None else f", bf16 {figures['peak_bf16_gflops']:.0f}"
    return [
        f"{figures['model']}, batch {figures['batch_size']}: Paddle {figures['paddle_version']} x{nproc} "
        f"per 60,000-image epoch: {timed}{ratio}; {torch}",
        f"oneDNN ({figures['isa']}) in a training step of {figures['paddle_conv_kernel']}: {primitives or 'nothing'}"
        + (f"; REFERENCE implementations (oneDNN's slow code): {', '.join(refs)}" if refs else
           "; no reference implementation"),
        f"prediction of {predicted} images (paddle.inference): {figures['predict_10k_s']:.3f} s",
        f"convolutions: {figures['conv_gflop_per_step']:.1f} GFLOP per step; Paddle {figures['paddle_conv_gflops']:.0f}"
        f" GFLOP/s, {figures['paddle_peak_fraction']:.0%} of a matmul peak{torch_share} (peak fp32 "
        f"{figures['peak_fp32_gflops']:.0f}{bf16_peak} GFLOP/s)",
    ]


def cmd_check(args: argparse.Namespace) -> int:
    """Say whether a submission file would be accepted, and what is wrong if not."""
    table = load_test_table(args.test, args.data_dir)
    found = submission.check_file(Path(args.file), table)
    if not found:
        print(f"{args.file}: a valid submission for {table.path} ({len(table)} rows, "
              f"header {table.id_column},label)")
        return 0
    print(f"{args.file}: not a valid submission for {table.path}:", file=sys.stderr)
    for problem in found:
        print(f"  - {problem}", file=sys.stderr)
    return 1


def cmd_score(args: argparse.Namespace) -> int:
    """Print a submission's accuracy against the answers."""
    accuracy, rows = submission.score(Path(args.file), Path(args.answers))
    print(f"{args.file}: accuracy {accuracy:.4f} on {rows} rows of {args.answers}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """Regenerate a run's report from its folder."""
    for path in api.view_report(args.run, args.runs_dir).files:
        print(path)
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    """Write a grid of sample images with class names (train) or ids (test)."""
    if args.split == "train":
        table = read_train_csv(data_file(TRAIN_FILE, args.file, args.data_dir))
    else:
        table = load_test_table(args.file, args.data_dir)
    out = Path(args.out or f"runs/{args.split}-sample.png")
    print(report.show_data(table, args.n, out))
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    """Overlay several runs' validation curves and print their best epochs."""
    table = report.compare_runs([Path(run) for run in args.runs], Path(args.out))
    print(table.to_string(index=False))
    print(f"curves: {args.out}")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point; returns the exit code."""
    args = build_parser().parse_args(argv)
    setup_logging()
    try:
        with parallel.stop_signals_interrupt():  # a stop outside training ends in the line below, not Paddle's banner
            signal.pthread_sigmask(signal.SIG_UNBLOCK, parallel.STOP_SIGNALS)  # __main__ held them for the imports
            return args.func(args)
    except CompetitionError as exc:
        print(f"competition {args.command}: error: {exc}", file=sys.stderr)
        return getattr(exc, "exit_code", 2)
    except KeyboardInterrupt:
        print(f"competition {args.command}: interrupted", file=sys.stderr)
        return parallel.INTERRUPTED
