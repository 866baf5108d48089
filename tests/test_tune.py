"""competition tune: Optuna studies of run folders, continued after a stop, shared by concurrent processes."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import optuna
import pytest

from competition import tune
from competition.cli import main
from competition.config import Config
from conftest import REPO, stop_after_first_epoch


def tune_args(real_data: dict, runs: Path, trials: int, epochs: int = 1) -> list[str]:
    return ["tune", "--trials", str(trials), "--train", str(real_data["train"]), "--val-size", "100",
            "--model", "fc", "--epochs", str(epochs), "--batch-size", "32", "--runs-dir", str(runs)]


def _study(runs: Path, name: str = "fc") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{runs / 'tune.db'}")


def test_search_space_stays_in_its_ranges_and_leaves_fixed_options_alone() -> None:
    base = Config.of_preset("default")
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(20):
        values = tune.suggest(study.ask(), base, fixed=["lr"])
        assert "lr" not in values
        assert base.weight_decay / 4 <= values["weight_decay"] <= base.weight_decay * 4
        assert 0 <= values["label_smoothing"] <= 0.3 and 0 <= values["crop_pad"] <= 3
        assert base.epochs // 2 <= values["epochs"] <= base.epochs  # never more than the recipe's budget
        assert base.width / 2 <= values["width"] <= base.width * 1.5
    assert "width" not in tune.suggest(study.ask(), Config(model="fc"), fixed=[])  # no width to scale
    centre = tune.recipe_values(base, fixed=["lr"])
    study.enqueue_trial(centre)
    assert tune.suggest(study.ask(), base, fixed=["lr"]) == centre  # the recipe itself is inside the space


def test_a_trial_the_pruner_rejects_stops_after_an_epoch(real_data: dict, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(tune._Pruner, "poll_s", 0.01)
    base = Config(model="fc", epochs=40, batch_size=32, val_size=100, train_csv=str(real_data["train"]),
                  runs_dir=str(tmp_path), nproc=1)
    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.ThresholdPruner(lower=2.0))
    trial = study.ask()  # no accuracy reaches 2.0, so the pruner stops it at the first report
    with pytest.raises(optuna.TrialPruned):
        tune.run_trial(trial, base, {"epochs": 40}, trials=1, study_dir=tmp_path)
    done = len((Path(trial.user_attrs["run"]) / "summary.csv").read_text().splitlines()) - 1
    reported = sorted(study.trials[0].intermediate_values)
    assert 1 <= done < 40 and reported == list(range(1, len(reported) + 1)) and 1 <= len(reported) <= done


def test_a_study_stopped_and_started_again_keeps_every_trial_and_shows_them(real_data: dict, tmp_path: Path,
                                                                           capsys) -> None:
    runs = tmp_path / "runs"
    args = tune_args(real_data, runs, trials=2, epochs=3)
    err = stop_after_first_epoch(args, runs, "tune-fc/*-trial1/summary.csv")
    assert "tune stopped in trial 1" in err and "run the same command again" in err
    assert main(args) == 0
    states = [t.state for t in _study(runs).get_trials()]
    assert states.count(optuna.trial.TrialState.FAIL) == 1  # the stopped trial, kept in the same study
    finished = [s for s in states if s in tune.FINISHED]
    assert len(finished) == 2 and len(states) == 3
    _show_prints_the_best_trial_and_writes_pictures(runs, capsys)


def _show_prints_the_best_trial_and_writes_pictures(runs: Path, capsys) -> None:
    capsys.readouterr()
    assert main(["tune", "--show", "--study", "fc", "--runs-dir", str(runs)]) == 0
    out = capsys.readouterr().out
    study = _study(runs)
    assert study.trials[0].params == {"lr": 1e-3, "label_smoothing": 0.0, "crop_pad": 0, "erase": 0.0}  # the recipe
    best = study.best_trial
    assert f"best: trial {best.number}" in out and "rows)" in out  # with its interval
    assert f"--lr {best.params['lr']!r}" in out and out.count("COMPLETE") == 2
    assert (runs / "tune-fc" / "history.png").is_file() and (runs / "tune-fc" / "importances.png").is_file()


def test_two_processes_share_one_study_without_losing_or_repeating_trials(real_data: dict, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    procs = [subprocess.Popen([sys.executable, "-m", "competition", *tune_args(real_data, runs, trials=3)],
                              cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    for proc in procs:
        _, err = proc.communicate(timeout=180)
        assert proc.returncode == 0, err
    trials = _study(runs).get_trials()
    finished = [t for t in trials if t.state in tune.FINISHED]
    assert len(finished) == 3
    runs_of = [t.user_attrs["run"] for t in finished]
    assert len(set(runs_of)) == 3 and all(Path(run, "best.pdparams").is_file() for run in runs_of)
    assert len(list((runs / "tune-fc").glob("*-trial*"))) == 3  # no trial trained twice, none left unrecorded


@pytest.mark.parametrize("args, message", [
    (["--trials", "1", "--storage", "nosuch://x"], "--storage nosuch://x: cannot open it"),
    (["--show", "--study", "missing"], "no study 'missing'"),
    (["--epochs", "1"], "needs --trials N"),
])
def test_bad_storage_and_unknown_study_get_one_line(args: list, message: str, real_data: dict, tmp_path: Path,
                                                     capsys) -> None:
    code = main(["tune", "--train", str(real_data["train"]), "--val-size", "100", "--runs-dir", str(tmp_path),
                 *args])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err


def test_a_smoke_study_on_few_rows_scores_trials_on_a_fifth_of_them(real_data: dict, tmp_path: Path, capfd,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    runs = tmp_path / "runs"
    args = ["tune", "--trials", "1", "--train", str(real_data["train"]), "--rows", "400", "--model", "fc",
            "--epochs", "1", "--batch-size", "32", "--runs-dir", str(runs)]  # no --val-size: 10,000 would not fit
    assert main(args) == 0
    assert _study(runs).trials[0].user_attrs["val_rows"] == 80
    said = capfd.readouterr()  # the log's line: on the terminal, or in pytest's log capture when it holds the logger
    assert "too few rows for 10,000 validation rows; trials are scored on 80 (a fifth" in said.out + said.err + caplog.text
