"""Time budgets: the planner picks what fits this machine's speed, records the plan and keeps it, refuses too little."""
from __future__ import annotations

import io
import json
import pickle
import time
from pathlib import Path

import numpy as np
import paddle
import pytest

from competition import api, checkpoint, kernels, plan, probe
from competition.cli import main
from competition.config import Config
from competition.errors import CompetitionError
from competition.train import build_schedule

ROWS = (50_000, 10_000)
# Seconds a training step of each shape (its per-process batch) takes on an imagined 2-core machine at speed 1.
STEP_S = {"cnn": 0.06, "airnet16": 0.08, "airnet32": 0.2, "airnet48": 0.4, "airnet64": 0.65, "resnet": 0.3}


def fake_timings(speed: float, calls: list | None = None):
    """plan._timings for a machine `speed` times as fast as STEP_S says; `calls` collects the shapes probed."""
    def timings(shapes: list[probe.Shape], device: str) -> dict:
        found = {}
        for shape in shapes:
            options = dict(shape.options)
            name = shape.model + (str(options["width"]) if shape.model == "airnet" else "")
            step = STEP_S[name] / speed
            found[shape] = {"step_s": step, "eval_image_s": step / shape.batch / 3, "path": "onednn"}
            if calls is not None:
                calls.append(name)
        return found
    return timings


def planned(monkeypatch: pytest.MonkeyPatch, minutes: float, speed: float, **options) -> plan.Plan:
    monkeypatch.setattr(plan, "_timings", fake_timings(speed))
    return plan.make(minutes, {"nproc": 2, **options}, ROWS, time.time())


@pytest.mark.parametrize("minutes, speed, choice", [
    # at speed 1.2 an airnet 16 epoch is 98 steps of 1.07 x 0.067 s + 20 ms, and 0.4 s of validation: 9.4 s; with
    # the fixed costs (start, end, scoring, prediction: 16.2 s) 9 epochs take 101 s, 10 take 110 s: over 108 s
    (2, 1.2, "airnet 16 x 9 epochs"),
    (10, 0.5, "airnet 32 x 10 epochs"),  # between the measured 8 and 12 epochs
    (10, 2.0, "airnet 48 x 21 epochs"),
    (10, 0.25, "airnet 16 x 13 epochs"),  # a quarter of the speed: the narrower airnet
    (60, 1.0, "airnet 64 x 36 epochs"),
    (60, 4.0, "resnet 32 x 34 + airnet 64 x 36 epochs"),  # four times faster: the measured ensemble
])
def test_the_plan_is_the_most_accurate_recipe_that_fits(monkeypatch: pytest.MonkeyPatch, minutes: float,
                                                         speed: float, choice: str) -> None:
    found = planned(monkeypatch, minutes, speed)
    record = found.record
    assert record["choice"] == choice, record["why"]
    assert record["predicted_s"] <= minutes * 60 * (1 - plan.MARGIN)
    fitting = [c for c in record["candidates"] if c["predicted_s"] <= minutes * 60 * (1 - plan.MARGIN)]
    assert record["accuracy"] == max(c["accuracy"] for c in fitting)
    assert all(config.minutes == minutes for config in found.configs)
    assert found.line().startswith(f"{minutes:g}-minute budget on this ") and choice in found.line()


def test_a_cached_probe_is_timed_again_and_scaled_to_this_hours_speed(monkeypatch: pytest.MonkeyPatch) -> None:
    cached = fake_timings(1.0)
    monkeypatch.setattr(plan, "_timings", lambda shapes, device: {shape: {**timing, "cached": True}
                                                                  for shape, timing in cached(shapes, device).items()})
    measured = []

    def measure(shape: probe.Shape) -> dict:  # this hour the machine runs at half the speed the cache says
        measured.append(shape)
        step = cached([shape], "cpu")[shape]["step_s"] * 2
        return {"onednn": step, "paddle": 10 * step}

    monkeypatch.setattr(probe, "measure", measure)
    record = plan.make(10, {"nproc": 2}, ROWS, time.time()).record
    checks = record["speed_checks"]
    assert 1 <= len(measured) <= plan.SPEED_CHECKS and len(checks) == len(measured)
    assert {c["factor"] for c in checks} == {2.0} and "runs at 0.50 x the speed of the cached probe" in record["why"]
    assert record["choice"] == planned(monkeypatch, 10, 0.5).record["choice"]  # what half the speed plans
    assert record["choice"] != planned(monkeypatch, 10, 1.0).record["choice"]  # not what the cache alone says


def test_epochs_stay_between_measured_ones_and_interpolate_linearly() -> None:
    for line in plan.LINES:
        epochs = [r.members[0][2] for r in plan.candidates() if r.members[0][:2] == (line.preset, line.width)]
        assert min(epochs) == min(line.accuracy) and max(epochs) == max(line.accuracy)
    gaps = [(line, low, high) for line in plan.LINES for low, high in zip(sorted(line.accuracy), sorted(line.accuracy)[1:])
            if high - low > 1]
    assert gaps  # the table has unmeasured epoch counts between measured ones
    for line, low, high in gaps:
        middle = (low + high) // 2
        expected = line.accuracy[low] + (line.accuracy[high] - line.accuracy[low]) * (middle - low) / (high - low)
        assert plan._interpolated(line.accuracy, middle) == pytest.approx(expected)


def test_a_budget_too_small_is_refused_saying_what_the_smallest_would_take(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(CompetitionError, match=r"too small .*cnn x 1 epoch, would take \d+\.\d min"):
        planned(monkeypatch, 0.5, 1.0)


def test_shapes_after_the_first_that_cannot_fit_are_not_probed(monkeypatch: pytest.MonkeyPatch) -> None:
    probed: list = []
    monkeypatch.setattr(plan, "_timings", fake_timings(1.0, probed))
    plan.make(2, {"nproc": 2}, ROWS, time.time())
    assert probed[:2] == ["cnn", "airnet16"] and "resnet" not in probed and "airnet64" not in probed


def test_model_options_given_keep_the_plan_to_their_recipes(monkeypatch: pytest.MonkeyPatch) -> None:
    assert planned(monkeypatch, 60, 4.0, model="airnet", width=32).record["choice"] == "airnet 32 x 16 epochs"
    with pytest.raises(CompetitionError, match="no measured recipe matches --model fc"):
        planned(monkeypatch, 10, 1.0, model="fc")


def test_the_schedule_ends_at_the_planned_last_step(monkeypatch: pytest.MonkeyPatch) -> None:
    for minutes, speed in ((2, 1.0), (10, 1.0)):
        (config,) = planned(monkeypatch, minutes, speed).configs
        steps = 40
        schedule = build_schedule(config, steps)
        rates = []
        for _ in range(config.epochs * steps):
            rates.append(schedule.get_lr())
            schedule.step()
        # onecycle (cnn) ends at lr/1000, airbench's linear schedule at 0.07 lr: reached on the last step
        end = config.lr / 1000 if config.schedule == "onecycle" else 0.07 * config.lr
        assert rates[-1] == pytest.approx(end, rel=0.05) and min(rates) == pytest.approx(end, rel=0.05)


def test_minutes_and_epochs_together_are_refused(capsys: pytest.CaptureFixture) -> None:
    assert main(["train", "--minutes", "5", "--epochs", "3"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--minutes 5 plans the epochs itself" in err
    with pytest.raises(CompetitionError, match="not both"):
        Config.of_preset("default", minutes=3, epochs=2)
    assert Config.of_preset("default").minutes == 10 and Config.of_preset("default", epochs=2).minutes is None


def test_a_too_small_budget_on_the_command_line_is_one_line_and_writes_nothing(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, real_data: dict, tmp_path: Path) -> None:
    monkeypatch.setattr(plan, "_timings", fake_timings(0.01))
    monkeypatch.setenv(plan.STARTED_ENV, str(time.time()))
    runs = tmp_path / "runs"
    assert main(["train", "--minutes", "1", "--train", str(real_data["train"]), "--val-size", "100",
                 "--runs-dir", str(runs)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "1-minute budget is too small" in err and "Traceback" not in err
    assert not runs.exists()


def test_a_budgeted_run_records_its_plan_falls_behind_is_replanned_and_keeps_it_on_resume(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, real_data: dict, tmp_path: Path) -> None:
    # A machine a thousand times faster than this one on paper: every real epoch is behind the plan. Two
    # processes, which must agree on the new count.
    monkeypatch.setenv(plan.STARTED_ENV, str(time.time()))  # the command starts now, not with the test process
    monkeypatch.setattr(plan, "_timings", fake_timings(1000.0))
    monkeypatch.setattr(plan, "STEP_S", 0.0)
    monkeypatch.setattr(plan, "LINES", (plan.Line("quick", None, {2: 0.5, 3: 0.6}, "a short table"),))
    runs = tmp_path / "runs"
    assert main(["train", "--minutes", "1", "--model", "cnn", "--train", str(real_data["train"]), "--val-size", "100",
                 "--nproc", "2", "--lookahead", "--runs-dir", str(runs)]) == 0
    (run_dir,) = runs.iterdir()
    record = json.loads((run_dir / plan.PLAN_JSON).read_text())
    config = Config.load(run_dir / "config.json")
    assert record["choice"] == "cnn x 3 epochs" and config.minutes == 1
    assert config.model == "cnn" and config.schedule == "onecycle"  # the quick preset's recipe
    log = (run_dir / "train.log").read_text()
    assert "1-minute budget on this CPU" in log and "cnn x 3 epochs, predicted" in log
    assert "behind the plan: 1 epoch took" in log and "on cpu x2" in log
    # far behind after epoch 1: one more epoch, the schedule laid out again to end there
    assert "re-planned: 3 -> 2 epochs" in log and config.epochs == 2 and "epoch 2/2" in log
    assert record["replans"] == [{"run": "", "after_epoch": 1, "from": 3, "to": 2}]
    assert "cnn x 3 epochs (re-planned to 2 epochs): training ended" in plan.end_line(record)
    summary = checkpoint.read_summary(run_dir)
    assert len(summary) == 2
    # 300 rows, batches of 256: 2 steps an epoch. Epoch 2 started on the 2-epoch schedule, which it ended.
    two_epochs = build_schedule(config, 2)
    two_epochs.step(2)
    assert summary["lr"].iloc[1] == pytest.approx(two_epochs.get_lr()) and _schedule_step(run_dir) == 4
    # the lookahead ended on its average at the re-planned last step (4), not at the first plan's (6)
    last = pickle.loads((run_dir / "last.ckpt").read_bytes())
    trained = paddle.load(io.BytesIO(last["model"]))
    for name, average in last["progress"]["ema"].items():
        np.testing.assert_array_equal(trained[name].numpy(), average, err_msg=name)
    assert 0 < record["trained_actual_s"] < 600
    monkeypatch.setattr(plan, "make", lambda *a, **k: pytest.fail("planned again"))
    before = (run_dir / plan.PLAN_JSON).read_text()
    api.resume(run_dir)
    assert (run_dir / plan.PLAN_JSON).read_text() == before and Config.load(run_dir / "config.json").epochs == 2
    # run.sh's prediction, the command's last step, sets the whole command against the plan and records it
    capsys.readouterr()
    assert main(["predict", "--run", str(run_dir), "--test", str(real_data["test"]), "--out",
                 str(tmp_path / "submission.csv")]) == 0
    assert "1-minute budget: the whole command took" in capsys.readouterr().out
    assert json.loads((run_dir / plan.PLAN_JSON).read_text())["actual_s"] >= record["trained_actual_s"]


def _schedule_step(run_dir: Path) -> int:
    """The steps the saved learning-rate schedule has taken (last.ckpt's optimizer state)."""
    state = pickle.loads((run_dir / checkpoint.LAST).read_bytes())
    return paddle.load(io.BytesIO(state["optimizer"]))["LR_Scheduler"]["last_epoch"]


def test_a_budget_whose_plan_is_an_ensemble_trains_its_members_in_one_folder(
        monkeypatch: pytest.MonkeyPatch, real_data: dict, tmp_path: Path) -> None:
    # a table of one ensemble of one-epoch members, the most accurate: what a fast machine's hour would pick
    monkeypatch.setattr(plan, "LINES", (plan.Line("quick", None, {1: 0.5}, "test"),))
    monkeypatch.setattr(plan, "ENSEMBLE_RECIPES", (((("quick", 1), ("quick", 2)), 0.9),))
    monkeypatch.setattr(plan, "_timings", fake_timings(1000.0))
    monkeypatch.setenv(plan.STARTED_ENV, str(time.time()))
    runs = tmp_path / "runs"
    assert main(["train", "--preset", "best", "--train", str(real_data["train"]), "--val-size", "100",
                 "--max-steps", "1", "--runs-dir", str(runs)]) == 0
    (ens_dir,) = runs.iterdir()
    record = json.loads((ens_dir / plan.PLAN_JSON).read_text())
    assert ens_dir.name.endswith("ensemble-best") and record["choice"] == "cnn x 1 + cnn x 2 epochs"
    assert record["minutes"] == 60 and record["trained_actual_s"] > 0
    for k, epochs in ((1, 1), (2, 2)):
        member = ens_dir / f"member{k}"
        assert Config.load(member / "config.json").epochs == epochs and (member / "best.pdparams").is_file()
        assert "60-minute budget on this CPU" in (member / "train.log").read_text()


def test_a_cv_budget_plans_one_recipe_for_every_fold(monkeypatch: pytest.MonkeyPatch, real_data: dict,
                                                     tmp_path: Path) -> None:
    monkeypatch.setenv(plan.STARTED_ENV, str(time.time()))
    monkeypatch.setattr(plan, "_timings", fake_timings(1000.0))
    monkeypatch.setattr(plan, "LINES", (plan.Line("quick", None, {1: 0.5, 2: 0.6}, "a short table"),))
    runs = tmp_path / "runs"
    assert main(["cv", "--minutes", "1", "--folds", "2", "--model", "cnn", "--train", str(real_data["train"]),
                 "--max-steps", "1", "--runs-dir", str(runs)]) == 0
    (cv_dir,) = runs.iterdir()
    record = json.loads((cv_dir / plan.PLAN_JSON).read_text())
    assert record["runs"] == 2 and record["choice"] == "cnn x 2 epochs" and record["rows"] == [200, 200]
    for fold in (1, 2):
        assert Config.load(cv_dir / f"fold{fold}" / "config.json").epochs == 2


@pytest.mark.parametrize("done, seconds, most, epochs", [
    (4, 4 * 31.0, 22, 12),  # 3% slow: within REPLAN, the plan holds
    (4, 4 * 36.0, 22, 10),  # 20% slow: 216 s left of 360 fit 6 more epochs of 36 s
    (4, 4 * 24.0, 22, 15),  # 20% fast: 264 s left fit 11 more of 24 s
    (4, 4 * 24.0, 13, 13),  # ... but never beyond the most epochs measured
    (4, 4 * 24.0, 0, 12),  # a plan that gives no most keeps its length
    (4, 4 * 90.0, 22, 5),  # far behind: one more epoch, so that the schedule still ends
    (12, 12 * 36.0, 22, 12),  # the last epoch is done: nothing left to plan
])
def test_a_run_off_its_plan_is_given_the_epochs_that_end_when_planned(done: int, seconds: float, most: int,
                                                                      epochs: int) -> None:
    assert plan.paced_epochs(done, seconds, 30.0, 12, 12, most) == epochs


def test_a_re_plan_ends_nearest_the_planned_time_but_not_past_the_budget() -> None:
    # a 2-minute run under the AVX2 cap: 5 epochs of 16.83 s planned, the first took 18.3 s; 3.6 more fit: 4 more,
    # ending 7 s late, when the budget has 14 s beyond the plan; with no spare, 3 (ending 11 s early)
    assert plan.paced_epochs(1, 18.3, 16.83, 5, 5, 16, spare_s=13.9) == 5
    assert plan.paced_epochs(1, 18.3, 16.83, 5, 5, 16, spare_s=0.0) == 4
    # a 10-minute run: 11 epochs of 39.6 s planned, the first took 34.8 s; 11.5 more fit: 12 more, 17 s late
    assert plan.paced_epochs(1, 34.8, 39.62, 11, 11, 22, spare_s=60.0) == 13
    assert plan.paced_epochs(1, 34.8, 39.62, 11, 11, 22, spare_s=10.0) == 12
    # a slow run takes the nearest too: 1.3 more fit, 1 runs (ending 10 s early rather than 20 s late)
    assert plan.paced_epochs(2, 60.0, 20.0, 5, 5, 16, spare_s=60.0) == 3


def test_each_member_of_a_plan_is_paced_by_its_own_epochs(tmp_path: Path) -> None:
    # 60 minutes, 3,000 s predicted: 600 s to spare, 300 s for each member
    record = {"epoch_s": [20.0, 50.0], "most_epochs": [34, 36], "minutes": 60, "predicted_s": 3000.0, "runs": 1}
    (tmp_path / plan.PLAN_JSON).write_text(json.dumps(record))
    assert plan.member_plan(tmp_path / "member2") == {"epoch_s": 50.0, "most": 36, "spare_s": 300.0}
    assert plan.member_plan(tmp_path / "fold3") == {"epoch_s": 20.0, "most": 34, "spare_s": 300.0}
    (tmp_path / plan.PLAN_JSON).write_text(json.dumps({"epoch_s": [20.0], "minutes": 1, "predicted_s": 50.0}))
    assert plan.member_plan(tmp_path / "fold3") == {"epoch_s": 20.0, "most": 0, "spare_s": 10.0}  # before re-plans
    assert plan.member_plan(tmp_path.parent / "elsewhere") is None


def test_the_plan_records_how_far_a_re_plan_may_lengthen_it(monkeypatch: pytest.MonkeyPatch) -> None:
    assert planned(monkeypatch, 10, 1.0).record["most_epochs"] == [16]  # airnet 32, measured up to 16 epochs
    assert planned(monkeypatch, 60, 4.0).record["most_epochs"] == [34, 36]  # an ensemble keeps its members'


def test_the_runs_pace_scales_the_cached_probe_instead_of_a_speed_check(monkeypatch: pytest.MonkeyPatch) -> None:
    # the runs here kept twice the speed the cache says (paces 0.5): the plan is what twice the speed plans
    cached = fake_timings(1.0)
    monkeypatch.setattr(plan, "_timings", lambda shapes, device: {
        shape: {**timing, "cached": True, "paces": [0.5, 0.45, 0.55] if shape.model == "airnet" else []}
        for shape, timing in cached(shapes, device).items()})
    monkeypatch.setattr(probe, "measure", lambda shape: pytest.fail("timed again although runs kept a pace"))
    record = plan.make(10, {"nproc": 2}, ROWS, time.time()).record
    assert record["speed_checks"] == [] and "the runs here kept 2.00 x the speed of the cached probe" in record["why"]
    assert record["choice"] == planned(monkeypatch, 10, 2.0).record["choice"]
    precision = "bf16" if kernels.cpu_has_bf16() else "fp32"  # airnet 48 trains in bfloat16 where the CPU has it
    assert record["speed_factors"] == [0.5] and record["shape_keys"][0].endswith(f"batch 256 x2 {precision}")


def test_a_finished_budgeted_run_keeps_its_pace_in_the_probes_cache(monkeypatch: pytest.MonkeyPatch,
                                                                     tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    key = "a processor|avx2|cnn batch 256 x2 fp32"
    entry = {f"{p}_{kind}": 0.1 for p in probe.PATHS for kind in ("step_s", "eval_image_s")}
    probe.cache_path().parent.mkdir(parents=True)
    probe.cache_path().write_text(json.dumps({key: {**entry, "paces": [0.9] * probe.PACES}}))
    run = tmp_path / "run"
    run.mkdir()
    (run / "summary.csv").write_text("epoch,seconds\n1,12.0\n2,10.0\n3,11.0\n")
    # planned 10 s an epoch with the cache scaled by 0.8: the run kept 11 / 10 x 0.8 of the cache's speed
    plan.learn_pace(run, {"shape_keys": [key], "speed_factors": [0.8], "epoch_s": [10.0]})
    paces = json.loads(probe.cache_path().read_text())[key]["paces"]
    assert paces == [0.9] * (probe.PACES - 1) + [0.88]  # the newest kept, the oldest let go
    plan.learn_pace(run, {"shape_keys": [None], "speed_factors": [1.0], "epoch_s": [10.0]})  # probed this plan
    assert json.loads(probe.cache_path().read_text())[key]["paces"] == paces


def test_a_shape_probed_in_this_plan_is_chosen_beside_paces_of_others(monkeypatch: pytest.MonkeyPatch) -> None:
    # the cnn's runs kept a pace; the airnets were measured just now (not cached): the plan takes them as they are
    fresh = fake_timings(1.0)
    monkeypatch.setattr(plan, "_timings", lambda shapes, device: {
        shape: {**timing, **({"cached": True, "paces": [0.5]} if shape.model == "cnn" else {})}
        for shape, timing in fresh(shapes, device).items()})
    record = plan.make(10, {"nproc": 2}, ROWS, time.time()).record
    assert record["choice"] == planned(monkeypatch, 10, 1.0).record["choice"] and "kept" not in record["why"]
    assert record["shape_keys"] == [None]
