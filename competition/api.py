"""The Python API, for notebooks and scripts; the command line is a thin layer over it.

    from competition import Config, fit, submit, view_report
    result = fit(Config.of_preset("quick", epochs=2))   # a progress bar per epoch, in Jupyter too
    result.best_val_acc, result.run_dir
    submit(result)                                     # submissions/submission.csv, six views
    view_report(result)                                # the report's pictures, inline
"""
from __future__ import annotations

import base64
import json
import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Union

from . import checkpoint, folders, parallel, plan, report, runtime
from .config import ENSEMBLES, RUNS_DIR, SUBMISSION, Config
from .data import TrainingData, load_training_data
from .errors import CompetitionError, TrainingFailed, TrainingInterrupted
from .models import build_model
from .parallel import Nodes
from .predict import Submission, load_test_table, predict_run
from .stats import VIEWS
from .train import RunResult, run_result, train_run  # noqa: F401  (RunResult: part of the API)

if TYPE_CHECKING:
    from .ensemble import EnsembleResult

log = logging.getLogger("competition")

JOB_WAIT_S = 600  # how long a node other than 0 waits for node 0's run folder
Run = Union[str, Path, RunResult]


def fit(config: Config, node_rank: Optional[int] = None, master: Optional[str] = None,
        run_dir: Optional[Path] = None, planned: Optional[plan.Plan] = None,
        data: Optional[TrainingData] = None, started: Optional[float] = None) -> Union[RunResult, "EnsembleResult"]:
    """Train a new run of `config` on config.nproc processes of this machine, then write its report.

    With config.nnodes > 1 this machine is node `node_rank` of a job whose node 0 is at `master`
    (HOST:PORT). Everything that can be refused is refused before the run folder exists. The run
    folder is a new runs_dir/<time>-<model>/, or `run_dir` when given (a cv fold's). With config.minutes
    (a budget preset, or minutes=M) the recipe is first planned to fit (plan.py), counted from `started` (default:
    now), unless `planned` (or the folder holding `run_dir`) already has its plan. An ensemble preset (`best` with
    epochs), or a plan that is an ensemble, trains each member in turn and returns an EnsembleResult.
    """
    if config.minutes is not None and planned is None and (run_dir is None or plan.load(run_dir) is None):
        if node_rank is not None or master:
            raise CompetitionError("--minutes plans a run on one machine; drop --node-rank and --master, or give "
                                   "--epochs.")
        options = {**plan.explicit_options(config), "extra": config.extra}
        started = plan.command_started(now=True) if started is None else started
        planned, data = plan_run(config, options, started, ensembles=run_dir is None)
        if len(planned.configs) > 1:
            return _fit_ensemble(config.preset or "minutes", {}, planned, node_rank, master)
        config = planned.configs[0]
    elif config.preset in ENSEMBLES and run_dir is None:
        return _fit_ensemble(config.preset, {**plan.explicit_options(config), "extra": config.extra}, None,
                             node_rank, master)
    nodes = _nodes(config.nnodes, node_rank, master)
    if nodes.rank > 0:
        return _join(config, nodes)
    run_dir, resolved, data = _start(config, run_dir, data)
    if planned is not None:
        planned.save(run_dir)  # its line goes into the log as training starts (train_run)
    job = _announce(run_dir, config, nodes)
    try:
        result = _train(run_dir, resolved, resume=False, data=data, nodes=nodes)
    finally:
        if job is not None:
            job.unlink(missing_ok=True)
    report.write_report(run_dir, to_board=True)
    if planned is not None:
        log.info("%s", plan.finish(run_dir, planned.record))
    return result


def _fit_ensemble(preset: str, options: dict, planned: Optional[plan.Plan], node_rank: Optional[int],
                  master: Optional[str]) -> "EnsembleResult":
    """Train an ensemble: its preset's members with `options` on top, or a plan's members; each on every core."""
    from . import ensemble  # ensemble trains its members through fit(), so it imports this module: not at the top
    if node_rank is not None or master:
        raise CompetitionError(f"preset {preset} trains on one machine; drop --node-rank and --master.")
    ens_dir = ensemble.start_ensemble(preset, options, planned.configs if planned else None)
    if planned is not None:
        planned.save(ens_dir)  # each member's log starts with its line
    result = ensemble.run_ensemble(ens_dir)
    if planned is not None:
        log.info("%s", plan.finish(ens_dir, planned.record))
    return result


def plan_run(config: Config, options: dict, started: float, ensembles: bool = False,
             runs: int = 1) -> tuple[plan.Plan, TrainingData]:
    """The plan of a budgeted configuration (config.minutes) with the user's `options`, and the data it read;
    `runs`: cv folds (config.folds set), each a run of the plan's recipe."""
    config.checked()  # bad options fail before the data is read and the shapes are probed
    if config.nnodes > 1:
        raise CompetitionError("--minutes plans a run on one machine; drop --nnodes, or give --epochs.")
    runtime.kernels_usable(config.device)  # builds kernels.cc now if it must: the plan counts the build as spent
    first = replace(config, fold=1) if runs > 1 else config
    data = load_training_data(first)
    found = plan.make(config.minutes, options, (len(data[1]), len(data[2])), started, runs=runs, ensembles=ensembles)
    return found, data


def resume(run_dir: Union[str, Path], epochs: Optional[int] = None, node_rank: Optional[int] = None,
           master: Optional[str] = None) -> RunResult:
    """Continue an interrupted (or extend a finished) run from its last finished epoch; then write its report
    (node 0). A multi-node run resumes with every node started again, as for fit()."""
    run_dir = Path(run_dir)
    if not (run_dir / folders.CONFIG_JSON).is_file():
        raise CompetitionError(f"{run_dir}: not a run folder (no config.json); nothing to resume.")
    config = Config.load(run_dir / folders.CONFIG_JSON)
    done = len(checkpoint.read_summary(run_dir)) if (run_dir / "summary.csv").is_file() else 0
    if epochs is not None and epochs < done:
        raise CompetitionError(f"--epochs {epochs} is fewer than the {done} epochs {run_dir} has done; "
                               f"expected {done} or more.")
    nodes = _nodes(config.nnodes, node_rank, master)
    if nodes.rank == 0 and epochs is not None and epochs != config.epochs:
        config.epochs = epochs
        checkpoint.save_config(run_dir, config.checked())
    before = runtime.Runtime.load(run_dir) if (run_dir / runtime.RUNTIME).is_file() else None
    resolved = runtime.resolve(config, config.nproc or 1, before)
    if nodes.rank > 0:
        return _train(run_dir, resolved, resume=True, nodes=nodes)
    resolved.save(run_dir)  # what this attempt runs on
    result = _train(run_dir, resolved, resume=True, nodes=nodes)
    report.write_report(run_dir, to_board=True)
    return result


def train_to_end(run_dir: Path, config: Config, where: str, resume_line: str) -> RunResult:
    """Train one run of a cv or an ensemble to its end: start it, or resume it when it was stopped. A stop
    or a failure names the run as `where` (e.g. "cv fold 2 of 5") and ends with `resume_line`."""
    try:
        with parallel.stop_signals_interrupt():  # a stop between two runs' trainings ends as cleanly as one inside
            if (run_dir / checkpoint.LAST).is_file():
                return resume(run_dir)
            return fit(config, run_dir=run_dir)  # not started, or stopped before its first save: start it (again)
    except (TrainingInterrupted, KeyboardInterrupt):
        raise TrainingInterrupted(f"{where} stopped; its finished epochs are saved in {run_dir}; {resume_line}") from None
    except TrainingFailed as exc:
        raise TrainingFailed(f"{where} failed: {str(exc).split('; continue with')[0]}; {resume_line}") from None


def submit(run: Union[Run, list[Run], None] = None, tta: Union[bool, int] = 6,
           out: Union[str, Path] = SUBMISSION, test: Optional[str] = None, data_dir: Optional[str] = None,
           runs_dir: str = RUNS_DIR) -> Submission:
    """Write the submission of a run (default: the newest in runs_dir), or of several runs' average.

    `tta`: views of each test image averaged, 1, 2 (the image and its mirror) or 6 (both, and both moved by a
    pixel; the default, what `bash run.sh` submits); True means 6 as `--tta` alone does, False 1.
    """
    views = (6 if tta else 1) if isinstance(tta, bool) else int(tta)
    if views not in VIEWS:
        raise CompetitionError(f"tta={tta!r}: expected one of {', '.join(map(str, VIEWS))} views (or True).")
    runs = run if isinstance(run, list) else [run] if run is not None else [folders.newest_run(runs_dir)]
    run_dirs = [_folder(r) for r in runs]
    return predict_run(run_dirs, load_test_table(test, data_dir), Path(out), tta=views)


def _folder(run: Union[Run, "EnsembleResult"]) -> Path:
    """The folder of a run, a fit() result (a run's or an ensemble's) or a path."""
    return Path(getattr(run, "ens_dir", None) or getattr(run, "run_dir", None) or run)


@dataclass
class Report:
    """A run's report: the files written, shown inline by Jupyter (report.md's pictures and headline)."""

    run_dir: Path
    files: list[Path]

    @property
    def pictures(self) -> list[Path]:
        """The PNGs, in report order."""
        return [p for p in self.files if p.suffix == ".png"]

    def _repr_html_(self) -> str:
        """HTML with each picture embedded, for a notebook cell's output."""
        parts = [f"<h3>Run {self.run_dir.name}</h3>"]
        for picture in self.pictures:
            data = base64.b64encode(picture.read_bytes()).decode()
            parts.append(f'<p>{picture.name}</p><img src="data:image/png;base64,{data}"/>')
        return "\n".join(parts)


def view_report(run: Optional[Run] = None, runs_dir: str = RUNS_DIR) -> Report:
    """(Re)write a run's report from its folder alone and return it for display."""
    run_dir = _folder(run) if run else folders.newest_run(runs_dir)
    return Report(Path(run_dir), report.write_report(run_dir))


def prepare(config: Config, data: Optional[TrainingData] = None
            ) -> tuple[Config, runtime.Runtime, TrainingData]:
    """Refuse what can be refused before anything is written: the configuration, its runtime, the model's
    options and the data (read, unless given); return a copy of the configuration with its process count
    filled in, the runtime and the data. `config` itself is left as it was."""
    if config.nproc is None:
        config = replace(config, nproc=parallel.default_nproc(config.batch_size))
    config.checked()
    resolved = runtime.resolve(config, config.nproc)  # a missing GPU or a --conv onednn that won't build fails here
    build_model(config.model, **config.model_options())  # a bad model fails before the data is read
    return config, resolved, data if data is not None else load_training_data(config)


def _start(config: Config, run_dir: Optional[Path] = None, data: Optional[TrainingData] = None
           ) -> tuple[Path, runtime.Runtime, TrainingData]:
    """Check the configuration, its runtime and the data (read, unless given), then create the run folder (or use
    `run_dir`)."""
    config, resolved, data = prepare(config, data)
    if run_dir is None:
        run_dir = folders.create(config.runs_dir, config.model)
    else:
        run_dir.mkdir(parents=True, exist_ok=True)
    checkpoint.save_run_files(run_dir, config, resolved)
    return run_dir, resolved, data


def _train(run_dir: Path, resolved: runtime.Runtime, resume: bool, data: Optional[TrainingData] = None,
           nodes: Nodes = Nodes()) -> RunResult:
    """Train in this process, or on resolved.nproc processes of this node (parallel.launch)."""
    if resolved.world == 1:
        with parallel.stop_signals_interrupt():
            return train_run(run_dir, resume=resume, data=data)
    worker_args = ["train", str(run_dir)] + (["--resume"] if resume else [])
    log_dir = run_dir / "logs" / (f"node{nodes.rank}" if nodes.count > 1 else "")
    ended = parallel.launch(worker_args, resolved.nproc, log_dir, resolved.device, watch=run_dir, nodes=nodes)
    resume_line = f"continue with: competition train --resume {run_dir}"
    if ended.stopped_by is not None:
        raise TrainingInterrupted(f"stopped by signal {ended.stopped_by}; finished epochs are saved in "
                                  f"{run_dir}; {resume_line}")
    if ended.code != 0:
        raise TrainingFailed(f"training stopped: {ended.failure} (logs in {log_dir}/); finished epochs are saved; "
                             f"{resume_line}")
    return run_result(run_dir)


def _nodes(count: int, rank: Optional[int], master: Optional[str]) -> Nodes:
    """This machine's part of the job, checked: with count > 1, a rank from 0 to count-1 and HOST:PORT."""
    if count == 1:
        if rank or master:
            raise CompetitionError("--node-rank and --master are for multi-node jobs; add --nnodes N (2 or more).")
        return Nodes()
    if rank is None or not 0 <= rank < count:
        raise CompetitionError(f"--nnodes {count} needs --node-rank from 0 to {count - 1} for this machine, "
                               f"got {rank}.")
    host, _, port = (master or "").rpartition(":")
    if not host or not port.isdigit():
        raise CompetitionError(f"--nnodes {count} needs --master HOST:PORT (node 0's address), got {master!r}.")
    return Nodes(count, rank, master)


# --- several machines: node 0 creates the run folder, the others find it ------------------------

def _job_file(config: Config, nodes: Nodes) -> Path:
    return Path(config.runs_dir) / f".job-{nodes.master.replace(':', '-').replace('/', '-')}.json"


def _announce(run_dir: Path, config: Config, nodes: Nodes) -> Optional[Path]:
    """Node 0 of several: tell the other nodes (on storage they all see) which run folder to train."""
    if nodes.count <= 1:
        return None
    job = _job_file(config, nodes)
    with checkpoint.atomic_path(job) as tmp:
        tmp.write_text(json.dumps({"run_dir": str(run_dir), "config": _comparable(config)}))
    return job


def _join(config: Config, nodes: Nodes) -> RunResult:
    """A node other than 0: wait for node 0's run folder, check it trains the same configuration, train."""
    job = _job_file(config, nodes)
    deadline = time.monotonic() + JOB_WAIT_S
    log.info("node %d: waiting for node 0 to create the run folder (%s)", nodes.rank, job)
    while not job.is_file():
        if time.monotonic() > deadline:
            raise CompetitionError(f"node 0 did not announce a run folder in {job} within {JOB_WAIT_S} s; "
                                   "start node 0 with the same options and --runs-dir on shared storage.")
        time.sleep(0.5)
    announced = json.loads(job.read_text())
    if announced["config"] != _comparable(config):
        raise CompetitionError(f"{job}: node 0 trains another configuration; start every node with the same "
                               "options.")
    run_dir = Path(announced["run_dir"])
    return _train(run_dir, runtime.Runtime.load(run_dir), resume=False, nodes=nodes)


def _comparable(config: Config) -> dict:
    """The configuration every node must share (not the command line that gave it)."""
    values = config.to_dict()
    values.pop("extra")
    if values["nproc"] is None:
        values.pop("nproc")
    return values
