"""The Python API a notebook uses, and what training keeps in the run folder."""
from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np
import paddle
import pandas as pd
import pytest

from competition.cli import main


def test_the_readme_notebook_session_runs(real_data: dict, tmp_path: Path) -> None:
    # The README's notebook session, on tiny data.
    from competition import Config, fit, submit, view_report

    config = Config.of_preset("quick", train_csv=str(real_data["train"]), epochs=1, max_steps=3, val_size=100,
                              runs_dir=str(tmp_path / "runs"))
    result = fit(config)
    assert result.run_dir.parent == tmp_path / "runs" and 0 <= result.best_val_acc <= 1
    assert result.best_epoch == 1 and result.val_acc_tta2 is not None
    sub = submit(result, out=tmp_path / "submission.csv", test=str(real_data["test"]))  # six views, as run.sh
    assert sub.rows == 100 and sub.val_acc == result.best_val_acc and sub.val_acc_with_tta == result.val_acc_tta6
    assert sub.tta == 6 and sub.archived.name.endswith("-tta6.csv")
    assert main(["check", str(sub.path), "--test", str(real_data["test"])]) == 0
    shown = view_report(result)
    assert {p.name for p in shown.pictures} == {"curves.png", "confusion.png", "per_class.png", "mistakes.png"}
    assert shown._repr_html_().count("data:image/png;base64,") == 4


def test_fit_of_the_best_preset_trains_both_members_and_submits_what_predict_does(real_data: dict,
                                                                                   tmp_path: Path) -> None:
    # README's notebook one-liner for `best`, on tiny data and its fixed recipe (epochs given).
    from competition import Config, fit, submit
    from competition.config import ENSEMBLES

    config = Config.of_preset("best", train_csv=str(real_data["train"]), rows=300, val_size=60, epochs=1, max_steps=2,
                              batch_size=32, width=16, runs_dir=str(tmp_path / "runs"))
    result = fit(config)
    members = [Config.load(m.run_dir / "config.json") for m in result.members]
    assert [m.preset for m in members] == list(ENSEMBLES["best"]) and {m.epochs for m in members} == {1}
    assert all((m.run_dir / "best.pdparams").is_file() for m in result.members)
    submit(result, out=tmp_path / "notebook.csv", test=str(real_data["test"]))
    assert main(["predict", "--run", str(result.ens_dir), "--tta", "6", "--test", str(real_data["test"]),
                 "--out", str(tmp_path / "command-line.csv")]) == 0
    assert (tmp_path / "notebook.csv").read_text() == (tmp_path / "command-line.csv").read_text()


def test_the_best_checkpoint_holds_the_weight_average(real_data: dict, tmp_path: Path) -> None:
    assert main(["train", "--train", str(real_data["train"]), "--model", "fc", "--epochs", "1", "--max-steps", "5",
                 "--val-size", "100", "--ema", "0.9", "--runs-dir", str(tmp_path)]) == 0
    (run,) = tmp_path.iterdir()
    last = pickle.loads((run / "last.ckpt").read_bytes())
    best = paddle.load(str(run / "best.pdparams"))
    trained = paddle.load(io.BytesIO(last["model"]))
    for name, average in last["progress"]["ema"].items():
        np.testing.assert_array_equal(best[name].numpy(), average, err_msg=name)
    assert not np.array_equal(best["1.weight"].numpy(), trained["1.weight"].numpy())


def test_resume_with_fewer_epochs_than_done_is_refused(tiny_run: Path, capsys: pytest.CaptureFixture) -> None:
    done = len(pd.read_csv(tiny_run / "summary.csv"))
    assert main(["train", "--resume", str(tiny_run), "--epochs", "1"]) == 2
    err = capsys.readouterr().err
    assert f"--epochs 1 is fewer than the {done} epochs {tiny_run} has done" in err
    assert len(err.strip().splitlines()) == 1


def test_importing_the_report_does_not_load_training(tmp_path: Path) -> None:
    import subprocess
    import sys

    code = "import sys, competition.report; print(sorted(m for m in sys.modules if m.startswith('competition')))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "competition.train" not in loaded and "competition.report" in loaded


def test_only_the_command_line_and_the_worker_read_argv_or_exit() -> None:
    package = Path(__file__).resolve().parents[1] / "competition"
    for module in package.glob("*.py"):
        if module.name not in ("cli.py", "worker.py"):
            text = module.read_text()
            assert "sys.argv" not in text and "sys.exit" not in text, module.name
