"""Time budgets (`--minutes M`; the presets quick, default and best are 2, 10 and 60 minutes): the most accurate
recipe whose predicted wall time fits, planned before training from what this machine measures.

A recipe's accuracy was measured once on 10,000-row splits (LINES, ENSEMBLE_RECIPES); its cost is its training
steps at a model shape. The probe (probe.py, the same timing that --conv auto decides by, cached per processor)
gives this machine's seconds a step and a validation image for each shape; the fixed costs (start-up, the
end-of-training scoring, the six-view prediction) are measured constants below. The plan picks the most accurate
recipe whose prediction fits the budget less MARGIN, and is kept in the run folder (plan.json): a resumed run
keeps it. The training loop keeps to it: when its epochs head more than REPLAN off their planned time, the
remaining epochs are planned again (paced_epochs) and the schedule laid out for the new length.
"""
from __future__ import annotations

import csv
import json
import logging
import math
import os
import statistics
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Optional

from . import folders, kernels, parallel, probe
from .config import BUDGETS, Config, from_preset  # noqa: F401  (BUDGETS: the presets' minutes)
from .errors import CompetitionError
from .files import atomic_path

log = logging.getLogger("competition")

PLAN_JSON = "plan.json"
STARTED_ENV = "COMPETITION_STARTED_AT"  # run.sh's start (Unix seconds), so its set-up counts against the budget
TEST_ROWS = 10_000  # the contest's test file, predicted with six views after training
# Predicted wall time must fit in (1 - MARGIN) of the budget. The errors of the plan were -37% to +28% (Xeon,
# AVX-512 and AVX2 cap, before re-planning: the host's speed moving within runs); re-planning holds the epochs to
# their time, which leaves the fixed costs and a last epoch's slowdown: 20% -> 10% (BENCHMARKS.md, "Time budgets").
MARGIN = 0.10
# The cached probe is scaled by the pace of the last budgeted runs here (their epochs against the probe's
# prediction, kept in the cache: probe.record_pace); the median of a shape's, else of every shape's. Before any run,
# the chosen shape is timed again (a few seconds) and the probe scaled by that; if that changes the choice to
# another shape, that one too, at most SPEED_CHECKS times. Against the runs after them, the checks of 56a3c8f were
# off by -1% to +72% (the machine's speed at one moment, 3 steps); the paces of its runs were 0.70-0.90 of the
# cache, each run within 10% of the others of its hour (Xeon, AVX-512 and AVX2 cap).
SPEED_CHECKS = 2
BEHIND = 0.10  # the training loop warns once its epochs run this much over the plan
# After each epoch the run's epochs are counted again when, at the pace so far, they would end this far off their
# planned time: the host's speed moved by 10-30% within runs and between runs minutes apart (BENCHMARKS.md).
REPLAN = 0.05
# A re-plan takes the count that ends nearest the planned time, unless that would run past the budget itself (the
# plan's spare seconds, shared by its runs). Rounding down instead (at most a quarter epoch late, b5386c0) ended a
# 2-minute run 11% early on 17-18 s epochs: 5 epochs planned, the first 9% slow, 3.6 more fit, 3 run (Zen 4 under
# the AVX2 cap, 2026-12-07).

# The cost model, fitted to the grid runs of BENCHMARKS.md's "Time budgets" (2-core Xeon, AVX-512, float32): a
# training step takes STEP_FACTOR x the probe's bare step (random data, no loader, no all-reduce) plus STEP_S (the
# loader, the augmentation, the all-reduce, the weight average). Epochs against the model: cnn 12.4-14.5 s (13.9
# predicted), airnet 16 12.8-15.5 s (14.4), airnet 32 35.6-38.4 s (36.7). Validation takes the probe's per-image time;
# the end-of-training scoring and the test prediction (six views of every row, one process, larger batches)
# SCORING_FACTOR x it, by model: measured 0.37-0.46 for airnet 16 and 32 (AVX-512), 0.40-0.57 for airnet 16 (AVX2
# cap), 0.20-0.30 for the cnn (AVX2 cap; Paddle's ops), at 56a3c8f.
STEP_FACTOR = 1.07
STEP_S = 0.02
SCORING_FACTOR = {"cnn": 0.3}
SCORING_FACTOR_OTHERS = 0.5
START_S = 5.0  # from the plan to the first epoch: the processes' start, the model (airnet 16 and 32: 4.4, 4.6 s)
END_S = 3.0  # exporting the model and the report, besides the scoring (cnn 4.7-5.3 s in all)
PREDICT_S = 3.0  # `competition predict`'s start and the test file, besides six views (airnet 16, AVX2: 7-8 s in all)
CV_END_S = 10.0  # the cv's out-of-fold table and report


@dataclass(frozen=True)
class Line:
    """One recipe at one model shape, measured at several epoch counts (between them: linear in epochs)."""

    preset: str  # the preset that holds the rest of the recipe
    width: Optional[int]  # on top of the preset's (None: the preset's own)
    accuracy: dict[int, float]  # epochs -> six-view validation accuracy, 10,000-row splits, mean of the seeds
    evidence: str


# LINES run from the cheapest step to the dearest: the planner probes their shapes in this order and stops at the
# first whose shortest recipe cannot fit.
# Six-view accuracy (what run.sh submits) on 10,000-row splits, seed 0 unless the evidence says otherwise. The
# airnet lines (the default preset: airbench's recipe with --lookahead) in bfloat16 on a 2-core Zen 4 (AVX512-BF16,
# 2026-12-07), with float32 (ONEDNN_MAX_CPU_ISA=AVX2) at some points: where a figure exists in both precisions the
# lower is kept. The cnn (quick) and airnet64 (--ema 0.99) lines: float32 on a 2-core Xeon (AVX-512, 2026-12-03)
# and bfloat16 on a Zen 4 unless the evidence says otherwise. BENCHMARKS.md, "Lookahead", lists them all.
LINES: tuple[Line, ...] = (
    Line("quick", None, {1: 0.8775, 2: 0.8960, 3: 0.9063, 5: 0.9174, 7: 0.9253, 9: 0.9313},
         "cnn; 9: two seeds (e2d2e21)"),
    Line("default", 16, {2: 0.9132, 3: 0.9210, 4: 0.9309, 6: 0.9356, 8: 0.9379, 16: 0.9438},
         "airnet 16; 3: fp32 92.10%, bf16 92.14%; 4: fp32 93.09%, bf16 two seeds 93.26%"),
    Line("default", 32, {4: 0.9382, 8: 0.9470, 12: 0.9484, 16: 0.9515}, "airnet 32; 8: fp32 94.70%, bf16 94.79%"),
    Line("default", None, {12: 0.9518, 24: 0.9541}, "airnet 48"),
    Line("airnet64", None, {30: 0.9549, 36: 0.9558}, "--ema 0.99; bf16, two seeds (b8f6bff, 1b0a17e)"),
    Line("resnet", None, {28: 0.9575, 34: 0.9593}, "resnet 32x2; bf16, two seeds (6e94a1e, 1b0a17e)"),
)
# Ensembles of two members' (preset, epochs), their probabilities' geometric mean; two seeds (BENCHMARKS.md,
# "`best` with longer members"). Measured in bfloat16 only.
ENSEMBLE_RECIPES: tuple[tuple[tuple[tuple[str, int], ...], float], ...] = (
    ((("resnet", 28), ("airnet64", 30)), 0.9586),
    ((("resnet", 34), ("airnet64", 30)), 0.9597),
    ((("resnet", 28), ("airnet64", 36)), 0.9601),
    ((("resnet", 34), ("airnet64", 36)), 0.9610),
)


@dataclass(frozen=True)
class Recipe:
    """A candidate: one run, or an ensemble's members, each (preset, width, epochs); its measured accuracy."""

    members: tuple[tuple[str, Optional[int], int], ...]
    accuracy: float
    most: tuple[int, ...] = ()  # each member's most epochs measured: a re-plan may lengthen it up to there

    def configs(self, options: dict[str, Any]) -> list[Config]:
        """Each member's configuration: its preset, width and epochs with `options` on top."""
        return [from_preset(preset, **{**({"width": width} if width else {}), **options, "epochs": epochs})
                for preset, width, epochs in self.members]

    def name(self, options: dict[str, Any]) -> str:
        """`airnet 32 x 8 epochs`, `resnet 32x2 x 34 + airnet 64 x 36 epochs`."""
        parts = []
        for config in self.configs(options):
            shape = "".join(f" {v}" for k, v in config.model_options().items() if k == "width")
            parts.append(f"{config.model}{shape} x {config.epochs}")
        return " + ".join(parts) + (" epoch" if all(p.endswith(" x 1") for p in parts) else " epochs")


def candidates() -> list[Recipe]:
    """Every recipe the table measured, and every epoch count between two measured ones (never beyond)."""
    found = []
    for line in LINES:
        measured = sorted(line.accuracy)
        for epochs in range(measured[0], measured[-1] + 1):
            found.append(Recipe(((line.preset, line.width, epochs),), _interpolated(line.accuracy, epochs),
                                (measured[-1],)))
    for members, accuracy in ENSEMBLE_RECIPES:  # measured as pairs: each member keeps its epochs
        found.append(Recipe(tuple((preset, None, epochs) for preset, epochs in members), accuracy,
                            tuple(epochs for _, epochs in members)))
    return found


def _interpolated(points: dict[int, float], epochs: int) -> float:
    """Accuracy at `epochs`, linear between the two measured epoch counts around it."""
    if epochs in points:
        return points[epochs]
    below = max(e for e in points if e < epochs)
    above = min(e for e in points if e > epochs)
    return points[below] + (points[above] - points[below]) * (epochs - below) / (above - below)


@dataclass
class Plan:
    """The chosen recipe's member configurations and the plan's record (plan.json)."""

    configs: list[Config]
    record: dict[str, Any]

    def line(self) -> str:
        """`10-minute budget on this CPU (AVX2, 2 cores): airnet 32 x 8 epochs, predicted 8.9 min`."""
        return line(self.record)

    def save(self, folder: Path) -> None:
        """Write plan.json into a run, ensemble or cv folder."""
        with atomic_path(Path(folder) / PLAN_JSON) as tmp:
            tmp.write_text(json.dumps(self.record, indent=2) + "\n")


def line(record: dict[str, Any]) -> str:
    """A plan in one line: `10-minute budget on this CPU (AVX2, 2 cores): airnet 32 x 8 epochs, predicted 8.9 min`."""
    return (f"{record['minutes']:g}-minute budget on this {record['machine']}: {record['choice']}, predicted "
            f"{record['predicted_s'] / 60:.1f} min")


def command_started(now: bool = False) -> float:
    """When the command the user typed started (Unix seconds): run.sh's start, else this process's (or, with
    `now`, this moment: a notebook's fit() call)."""
    given = os.environ.get(STARTED_ENV)
    if given:
        try:
            return float(given)
        except ValueError:
            raise CompetitionError(f"{STARTED_ENV} is '{given}'; expected Unix seconds (date +%s.%N).") from None
    if now:
        return time.time()
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        boot = next(float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                    if line.startswith("btime"))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return time.time()


def make(minutes: float, options: dict[str, Any], rows: tuple[int, int], started: float, runs: int = 1,
         ensembles: bool = True) -> Plan:
    """The most accurate recipe (with `options` on top) whose predicted wall time, counted from `started`, fits
    `minutes`; `rows`: training and validation rows of a run; `runs`: cv folds, each a run of the recipe."""
    options = {k: v for k, v in options.items() if k not in ("minutes", "preset")}
    found = [recipe for recipe in candidates() if _allowed(recipe, options, ensembles)]
    if not found:
        raise CompetitionError(f"no measured recipe matches {_given(options)}; drop them to plan a budget.")
    shapes = {recipe: [_shape(config) for config in recipe.configs(options)] for recipe in found}
    limit = minutes * 60 * (1 - MARGIN)
    def cost(recipe: Recipe, timings: dict[probe.Shape, dict[str, Any]]) -> dict[str, Any]:
        return _costs(recipe.configs(options), shapes[recipe], timings, rows, runs)

    device = options.get("device", "auto")
    timings = _probe_in_order(found, shapes, cost, limit - (time.time() - started), device)
    found = [recipe for recipe in found if all(s in timings for s in shapes[recipe])]
    machine = _machine(shapes[found[0]][0].nproc, device)

    def choose() -> tuple[list[dict[str, Any]], int, float]:
        elapsed = time.time() - started  # set-up, imports, the data, the probe: already spent
        table = [{"recipe": recipe.name(options), "accuracy": recipe.accuracy,
                  **_rounded(cost(recipe, timings), elapsed)} for recipe in found]
        fitting = [k for k, row in enumerate(table) if row["predicted_s"] <= limit]
        if not fitting:
            raise CompetitionError(_too_small(minutes, machine, table, elapsed))
        return table, max(fitting, key=lambda i: (table[i]["accuracy"], -table[i]["predicted_s"])), elapsed

    table, best, elapsed = choose()
    cached, factors, checks = dict(timings), {}, []
    paces = _paces(timings)
    if paces:  # the cached probe at the pace the runs here kept
        timings = {s: _scaled(t, paces[s]) if t.get("cached") else t for s, t in cached.items()}
        table, best, elapsed = choose()
    for _ in range(0 if paces else SPEED_CHECKS):  # the cached probe, scaled to this hour's speed: choose again
        shape = shapes[found[best]][0]
        check = None if shape in factors else _speed_check(shape, cached, device)
        if check is None:
            break
        checks.append(check)
        factors[shape] = check["factor"]  # a shape not timed again takes the last factor measured
        timings = {s: _scaled(t, factors.get(s, check["factor"])) if t.get("cached") else t for s, t in cached.items()}
        table, best, elapsed = choose()
    record = {"minutes": minutes, "machine": machine, "started": started, "spent_before_s": round(elapsed, 1),
              "runs": runs, "rows": list(rows), "margin": MARGIN, "choice": table[best]["recipe"],
              "accuracy": found[best].accuracy, **{k: v for k, v in table[best].items() if k.endswith("_s")},
              "most_epochs": list(found[best].most),
              "why": _why(table, best, limit) + "".join(f"; this hour {c['shape']} runs at {1 / c['factor']:.2f} x "
                                                        "the speed of the cached probe" for c in checks)
              + (f"; the runs here kept {1 / paces[shapes[found[best]][0]]:.2f} x the speed of the cached probe"
                 if shapes[found[best]][0] in paces else ""),  # a shape probed in this plan has no pace
              "speed_checks": checks,
              "shape_keys": [s.key() if timings[s].get("cached") else None for s in shapes[found[best]]],
              "speed_factors": [timings[s].get("speed_factor", 1.0) for s in shapes[found[best]]],
              "timings": {shape.describe(): timings[shape] for shape in dict.fromkeys(shapes[found[best]])},
              "candidates": table}
    return Plan([replace(config, minutes=minutes) for config in found[best].configs(options)], record)


def _speed_check(shape: probe.Shape, timings: dict[probe.Shape, dict[str, Any]], device: str
                 ) -> Optional[dict[str, Any]]:
    """The chosen shape's step timed again now, against its cached figure: how fast this machine is this hour
    (None when the figure was measured in this plan). A few seconds: one probe of one shape."""
    if not timings[shape].get("cached"):  # a GPU's timings are measured in every plan, never cached
        return None
    step = probe.measure(shape)[timings[shape]["path"]]  # the path the cache chose (the cache is left as it is)
    return {"shape": shape.describe(), "cached_step_s": timings[shape]["step_s"], "step_s": round(step, 5),
            "factor": round(step / timings[shape]["step_s"], 3)}


def _paces(timings: dict[probe.Shape, dict[str, Any]]) -> dict[probe.Shape, float]:
    """Each cached shape's factor from the paces of the budgeted runs here (probe.record_pace): the median of
    its own, else of every shape's; empty before any run."""
    every = [p for t in timings.values() for p in t.get("paces", [])]
    if not every:
        return {}
    return {s: statistics.median(t.get("paces") or every) for s, t in timings.items() if t.get("cached")}


def learn_pace(folder: Path, record: dict[str, Any]) -> None:
    """After training: each trained run's pace (median epoch seconds over the plan's, times the factor the plan
    applied to the cached probe), kept in the probe's cache for the next plan on this machine."""
    keys, factors = record.get("shape_keys"), record.get("speed_factors")
    if not keys:
        return  # a plan from before paces
    for k, run in enumerate(folders.member_runs(Path(folder))):
        member = k if len(keys) > 1 else 0  # an ensemble's members in order; every fold of a cv the one recipe
        with open(run / "summary.csv", newline="") as f:
            seconds = [float(row["seconds"]) for row in csv.DictReader(f)]
        if seconds and keys[member]:  # None: a shape probed in this plan (or a GPU's), at this hour's speed
            probe.record_pace(keys[member], statistics.median(seconds) / record["epoch_s"][member] * factors[member])


def _scaled(timing: dict[str, Any], factor: float) -> dict[str, Any]:
    """A cached timing at this hour's speed (the speed check's factor)."""
    return {**timing, "step_s": round(timing["step_s"] * factor, 5),
            "eval_image_s": round(timing["eval_image_s"] * factor, 8), "speed_factor": factor}


def _probe_in_order(found: list[Recipe], shapes: dict[Recipe, list[probe.Shape]], cost: Callable[..., dict],
                    left: float, device: str) -> dict[probe.Shape, dict[str, Any]]:
    """Each shape's timings, cheapest shape first, up to the first whose shortest recipe cannot fit in `left`
    seconds (the shapes after it take longer a step: not probed)."""
    timings: dict[probe.Shape, dict[str, Any]] = {}
    started = time.time()
    for shape in dict.fromkeys(s for recipe in found for s in shapes[recipe]):
        timings.update(_timings([shape], device))
        using = [r for r in found if shape in shapes[r] and all(s in timings for s in shapes[r])]
        if time.time() - started + min(cost(r, timings)["total_s"] for r in using) > left:
            break
    return timings


def _rounded(cost: dict[str, Any], elapsed: float) -> dict[str, Any]:
    """A candidate's predicted seconds from the command's start: in all, to the end of training, an epoch."""
    return {"predicted_s": round(elapsed + cost["total_s"], 1),
            "trained_s": round(elapsed + cost["total_s"] - cost["predict_s"], 1), "epoch_s": cost["epoch_s"]}


def _too_small(minutes: float, machine: str, table: list[dict[str, Any]], elapsed: float) -> str:
    """The refusal of a budget no recipe fits: what the smallest would take here."""
    row = min(table, key=lambda r: r["predicted_s"])
    enough = math.ceil(row["predicted_s"] / 60 / (1 - MARGIN) * 10) / 10
    return (f"a {minutes:g}-minute budget is too small on this {machine}: the smallest recipe, {row['recipe']}, "
            f"would take {row['predicted_s'] / 60:.1f} min here ({elapsed / 60:.1f} already spent); give --minutes "
            f"{enough:g} or more.")


def explicit_options(config: Config) -> dict[str, Any]:
    """The settings of a budgeted configuration that differ from its preset's own: what the user gave."""
    base = from_preset(config.preset, minutes=config.minutes) if config.preset else Config(minutes=config.minutes)
    return {k: v for k, v in config.to_dict().items()
            if k not in ("minutes", "preset", "extra") and v != getattr(base, k)}


def _allowed(recipe: Recipe, options: dict[str, Any], ensembles: bool) -> bool:
    """Whether the recipe keeps the model options the user gave (model, width, depth, hidden)."""
    if len(recipe.members) > 1 and not ensembles:
        return False
    shaped = {k: v for k, v in options.items() if k in ("model", "width", "depth", "hidden")}
    if shaped and len(recipe.members) > 1:
        return False
    base = recipe.configs({})
    return all(getattr(config, k) == v for config in base for k, v in shaped.items())


def _given(options: dict[str, Any]) -> str:
    return ", ".join(f"--{k} {v}" for k, v in options.items() if k in ("model", "width", "depth", "hidden"))


def _shape(config: Config) -> probe.Shape:
    """What the probe times for a configuration on the processes it will train with on this machine."""
    nproc = config.nproc or parallel.default_nproc(config.batch_size)
    bf16 = config.precision == "bf16" and kernels.cpu_has_bf16()
    return probe.Shape(config.model, tuple(sorted(config.model_options().items())), config.batch_size // nproc,
                       nproc, "bf16" if bf16 else "fp32")


def _timings(shapes: list[probe.Shape], device: str) -> dict[probe.Shape, dict[str, Any]]:
    """Each shape's seconds a training step and a validation image on the path it will train on, and whether
    they came from the probe's cache."""
    if device == "gpu" or (device == "auto" and parallel.has_gpu()):
        return {shape: probe.gpu_seconds(shape) for shape in dict.fromkeys(shapes)}
    found = probe.choose_all(list(dict.fromkeys(shapes)))
    return {shape: {"step_s": r[f"{r['choice']}_step_s"], "eval_image_s": r[f"{r['choice']}_eval_image_s"],
                    "path": r["choice"], "cached": r.get("cached", False), "paces": r.get("paces", [])}
            for shape, r in found.items()}


def _costs(configs: list[Config], shapes: list[probe.Shape], timings: dict, rows: tuple[int, int],
           runs: int) -> dict[str, Any]:
    """Predicted seconds of every member (x runs), from the start of training to the written submission."""
    train_rows, val_rows = rows
    total, epoch_s, test_image_s = 0.0, [], 0.0
    for config, shape in zip(configs, shapes):
        t = timings[shape]
        steps = math.ceil(train_rows / shape.nproc / shape.batch)
        if config.max_steps:
            steps = min(steps, config.max_steps)
        step = STEP_FACTOR * t["step_s"] + STEP_S
        per_epoch = steps * step + math.ceil(val_rows / shape.nproc) * t["eval_image_s"]
        views_s = SCORING_FACTOR.get(config.model, SCORING_FACTOR_OTHERS) * 6 * t["eval_image_s"]  # an image's six
        total += runs * (START_S + config.epochs * per_epoch + END_S + val_rows * views_s)
        epoch_s.append(round(per_epoch, 3))
        test_image_s += runs * views_s  # every run of the recipe predicts the test file
    total += CV_END_S if runs > 1 else 0.0
    predict = PREDICT_S + TEST_ROWS * test_image_s
    return {"total_s": total + predict, "predict_s": predict, "epoch_s": epoch_s}


def _machine(nproc: int, device: str) -> str:
    """`CPU (AVX2, 2 cores)`, `CPU (AVX-512 with bfloat16, 2 cores)`, `GPU (1)`."""
    if device == "gpu" or (device == "auto" and parallel.has_gpu()):
        return f"GPU ({nproc})"
    isa = kernels.isa_name()
    words = "AVX-512" if kernels.block_size() == 16 else "AVX2" if "avx2" in isa else isa
    if kernels.cpu_has_bf16():
        words += " with bfloat16"
    return f"CPU ({words}, {nproc} core{'s' if nproc > 1 else ''})"


def _why(table: list[dict[str, Any]], best: int, limit: float) -> str:
    """Why the choice: the most accurate that fits, and the next more accurate one's time."""
    better = [row for row in table if row["accuracy"] > table[best]["accuracy"]]
    if not better:
        return "the most accurate recipe measured; it fits"
    nearest = min(better, key=lambda row: row["predicted_s"])
    return (f"the most accurate that fits {limit / 60:.1f} min (the budget less {MARGIN:.0%}); the next better, "
            f"{nearest['recipe']} ({nearest['accuracy']:.2%}), would take {nearest['predicted_s'] / 60:.1f} min")


def load(folder: Path) -> Optional[dict[str, Any]]:
    """The plan of a run, ensemble or cv folder (or of the one holding it: a member, a fold); None if unplanned."""
    place = _home(folder)
    if place is None:
        return None
    try:
        return json.loads((place / PLAN_JSON).read_text())
    except (OSError, ValueError) as exc:
        raise CompetitionError(f"{place / PLAN_JSON}: cannot read the run's plan ({exc}).") from None


def _home(folder: Path) -> Optional[Path]:
    """The folder whose plan.json plans `folder`: itself, or the ensemble or cv holding it."""
    return next((place for place in (Path(folder), Path(folder).parent) if (place / PLAN_JSON).is_file()), None)


def member_plan(run_dir: Path) -> Optional[dict[str, float]]:
    """What the plan gave this run (a run, an ensemble's member k, a cv fold): `epoch_s`, the seconds an epoch
    was planned to take, `most`, the most epochs a re-plan may give it (0: no more than planned), and `spare_s`,
    its share of the seconds between the plan's predicted end and the budget's."""
    record = load(run_dir)
    if record is None:
        return None
    name, k = Path(run_dir).name, 0
    if len(record["epoch_s"]) > 1 and name.startswith("member") and name[6:].isdigit():
        k = int(name[6:]) - 1
    most = record.get("most_epochs") or []  # plans before re-planning have none
    spare = (record["minutes"] * 60 - record["predicted_s"]) / (record.get("runs", 1) * len(record["epoch_s"]))
    return {"epoch_s": record["epoch_s"][k], "most": most[k] if k < len(most) else 0, "spare_s": max(0.0, spare)}


def behind_line(epochs_done: int, seconds: float, planned: float, epochs: int) -> Optional[str]:
    """A warning when `epochs_done` epochs took over BEHIND more than planned; None when on plan."""
    expected = max(epochs_done * planned, 1e-6)
    if seconds <= expected * (1 + BEHIND):
        return None
    late = (seconds / epochs_done - planned) * epochs
    return (f"behind the plan: {epochs_done} epoch{'s' if epochs_done > 1 else ''} took {seconds / 60:.1f} min, "
            f"planned {expected / 60:.1f} (+{seconds / expected - 1:.0%}); at this pace training ends about "
            f"{late / 60:.1f} min late")


def paced_epochs(done: int, seconds: float, planned_s: float, planned_epochs: int, epochs: int, most: int,
                 spare_s: float = 0.0) -> int:
    """The epochs that end the run's training when the plan said (`planned_epochs` of `planned_s` seconds) at the
    pace of the `done` epochs so far (`seconds` in all): `epochs` while that holds within REPLAN, else the count
    ending nearest the planned time but at most `spare_s` after it, at least one more, at most `most` (the most
    measured) or the planned count, whichever is more."""
    allotted = planned_epochs * planned_s
    pace = seconds / max(done, 1)
    if done >= epochs or abs(seconds + (epochs - done) * pace - allotted) <= REPLAN * allotted:
        return epochs
    fit = (allotted - seconds) / pace  # epochs that would end exactly when planned
    fit = round(fit) if (round(fit) - fit) * pace <= spare_s else math.floor(fit)  # the nearest, within the budget
    return max(done + 1, min(max(most, planned_epochs), done + fit))


def replan_line(done: int, seconds: float, planned_s: float, before: int, after: int) -> str:
    """The log's line when a run's epochs are planned again."""
    return (f"re-planned: {before} -> {after} epochs, so that training ends when planned ({done} epoch"
            f"{'s' if done > 1 else ''} took {seconds / 60:.1f} min, planned {done * planned_s / 60:.1f}); the "
            f"learning-rate schedule now ends at epoch {after}")


def record_replan(run_dir: Path, done: int, before: int, after: int) -> None:
    """Add a re-plan to plan.json (the run's, or its ensemble's or cv's), so that the end line and a reader of
    the plan see it; the run's config.json holds its new epochs."""
    place = _home(run_dir)
    if place is not None:
        record = load(place) or {}
        entry = {"run": "" if place == Path(run_dir) else Path(run_dir).name, "after_epoch": done, "from": before,
                 "to": after}  # "": the run itself
        Plan([], {**record, "replans": [*record.get("replans", []), entry]}).save(place)


def finish(folder: Path, record: dict[str, Any]) -> str:
    """At the end of training: record the actual seconds from the command's start in plan.json; the end line."""
    record = {**(load(folder) or record), "trained_actual_s": round(time.time() - record["started"], 1)}
    learn_pace(folder, record)
    Plan([], record).save(folder)
    return end_line(record)


def finish_command(folder: Path, record: dict[str, Any]) -> str:
    """After the test prediction (run.sh): record the whole command's seconds in plan.json (`actual_s`); the line
    that sets them against the plan's."""
    actual = time.time() - record["started"]
    place = _home(folder)
    if place is not None:
        Plan([], {**(load(place) or record), "actual_s": round(actual, 1)}).save(place)
    return whole_line(record, actual)


def whole_line(record: dict[str, Any], actual: float) -> str:
    """The whole command's minutes against the plan's."""
    return (f"{record['minutes']:g}-minute budget: the whole command took {actual / 60:.1f} min, predicted "
            f"{record['predicted_s'] / 60:.1f} ({actual / record['predicted_s'] - 1:+.0%})")


def end_line(record: dict[str, Any], now: Optional[float] = None) -> str:
    """Predicted against actual minutes from the command's start, at the end of training (the test prediction,
    which the plan also counts, comes after it)."""
    actual = (now or time.time()) - record["started"]
    last = {entry["run"]: entry["to"] for entry in record.get("replans", [])}
    replanned = "".join(f" ({run + ' ' if run else ''}re-planned to {n} epochs)" for run, n in last.items())
    return (f"{record['minutes']:g}-minute budget, {record['choice']}{replanned}: training ended {actual / 60:.1f} "
            f"min after the command started, predicted {record['trained_s'] / 60:.1f} "
            f"({actual / record['trained_s'] - 1:+.0%}); "
            f"{record['predicted_s'] / 60:.1f} min predicted with the six-view test prediction")
