"""The fast paths: binary cache of parsed CSVs, and data-parallel training on 2 CPU processes."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from competition import data
from conftest import METRICS, REPO, cnn_train_command, random_images, write_csv


@pytest.fixture
def always_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    monkeypatch.setattr(data, "CACHE_MIN_BYTES", 0)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "user-cache"))
    return tmp_path / "user-cache" / "competition"


def test_cache_is_written_beside_the_csv_and_used(tmp_path: Path, always_cache: Path) -> None:
    path = write_csv(tmp_path / "train.csv", random_images(8), np.arange(8))
    first = data.read_train_csv(path)
    assert (tmp_path / "train.csv.train.npz").is_file()
    path.write_text("not a csv any more")  # same name, new content...
    os.utime(path, ns=(1, 1))  # ...and an old timestamp: the stamp (size, mtime) still differs
    with pytest.raises(data.CompetitionError):
        data.read_train_csv(path)
    write_csv(path, random_images(8), np.arange(8))
    np.testing.assert_array_equal(data.read_train_csv(path).images, first.images)


def test_cache_is_rebuilt_when_the_csv_changes(tmp_path: Path, always_cache: Path) -> None:
    path = write_csv(tmp_path / "test.csv", random_images(5), ids=[1, 2, 3, 4, 5])
    assert list(data.read_test_csv(path).ids) == ["1", "2", "3", "4", "5"]
    write_csv(path, random_images(6, seed=9), ids=[7, 8, 9, 10, 11, 12])
    changed = data.read_test_csv(path)
    assert list(changed.ids) == ["7", "8", "9", "10", "11", "12"]
    np.testing.assert_array_equal(changed.images, random_images(6, seed=9))
    assert list(data.read_test_csv(path).ids) == list(changed.ids)  # and cached again


def test_read_only_data_folder_caches_in_the_user_cache(tmp_path: Path, always_cache: Path) -> None:
    folder = tmp_path / "shared"
    folder.mkdir()
    path = write_csv(folder / "train.csv", random_images(4), np.arange(4))
    folder.chmod(0o555)
    try:
        data.read_train_csv(path)
        assert sorted(p.name for p in folder.iterdir()) == ["train.csv"]
        assert len(list(always_cache.glob("train.csv.*.train.npz"))) == 1
        np.testing.assert_array_equal(data.read_train_csv(path).images, random_images(4))
    finally:
        folder.chmod(0o755)


def test_a_two_process_run_logs_each_rank_and_scores_what_its_model_scores(
        two_process_run: Path, real_data: dict, tmp_path: Path) -> None:
    run = two_process_run
    assert {"workerlog.0", "workerlog.1"} <= {p.name for p in (run / "logs").iterdir()}
    assert "training on cpu x2" in (run / "train.log").read_text()
    assert (run / "best.pdparams").is_file() and (run / "report.md").is_file()
    assert len(pd.read_csv(run / "summary.csv")) == 2
    # Both ranks validated half of the rows each: together they score what the saved model scores on all.
    from competition import checkpoint, train
    model, config = checkpoint.load_model(run)
    table, _, val_idx = data.load_training_data(config)
    rows = data.FashionMNIST(table.images[val_idx], table.labels[val_idx])
    rebuilt = train.evaluate(model, data.make_loader(rows, 100, shuffle=False))
    best = checkpoint.best_row(pd.read_csv(run / "summary.csv"))
    assert rebuilt["acc"] == pytest.approx(best["val_acc"], abs=1e-9)
    assert rebuilt["loss"] == pytest.approx(best["val_loss"], rel=1e-5)
    out = tmp_path / "sub.csv"
    predicted = subprocess.run([sys.executable, "-m", "competition", "predict", "--run", str(run), "--test",
                                str(real_data["test"]), "--out", str(out)], cwd=REPO, capture_output=True, text=True)
    assert predicted.returncode == 0 and len(out.read_text().splitlines()) == 101


def test_batch_that_does_not_split_over_processes_is_refused(train_csv: Path, tmp_path: Path) -> None:
    from competition.cli import main
    assert main(["train", "--train", str(train_csv), "--val-size", "10", "--batch-size", "33",
                 "--nproc", "2", "--runs-dir", str(tmp_path / "runs")]) == 2
    assert not (tmp_path / "runs").exists()


def test_inference_predictor_gives_dygraphs_labels(tiny_run: Path, real_data: dict) -> None:
    from competition import checkpoint, predict
    assert (tiny_run / "inference.json").is_file() and (tiny_run / "inference.pdiparams").is_file()
    images = data.read_test_csv(real_data["test"]).images
    model, _ = checkpoint.load_model(tiny_run)
    dygraph = predict.predict_probs(model, images)
    served = predict.inference_probs(tiny_run, images, batch_size=32)
    np.testing.assert_array_equal(served.argmax(1), dygraph.argmax(1))
    np.testing.assert_allclose(served, dygraph, atol=1e-4)


def test_bench_json_line_has_the_figures(real_data: dict, capsys: pytest.CaptureFixture) -> None:
    import json

    from competition.cli import main
    code = main(["bench", "--model", "fc", "--batch-size", "32", "--steps", "2", "--warmup", "1", "--nproc", "1",
                 "--train", str(real_data["train"]), "--test", str(real_data["test"]), "--json"])
    assert code == 0
    figures = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert {"paddle_epoch_s", "torch_epoch_s", "ratio", "predict_10k_s", "kernels_ratio"} <= set(figures)
    assert figures["paddle_epoch_s"] > 0 and figures["predict_10k_s"] > 0 and figures["nproc"] == 1
    assert (figures["ratio"] is None) == (figures["torch_epoch_s"] is None)
    assert figures["conv_gflop_per_step"] == 0 and figures["peak_fp32_gflops"] > 0  # fc has no convolutions


def test_bench_times_both_paths_and_lists_what_onednn_ran(real_data: dict, capsys: pytest.CaptureFixture) -> None:
    import json

    from competition import kernels
    from competition.cli import main
    code = main(["bench", "--model", "cnn", "--width", "8", "--batch-size", "16", "--steps", "1", "--warmup", "1",
                 "--nproc", "1", "--train", str(real_data["train"]), "--test", str(real_data["test"]), "--json"])
    assert code == 0
    out = capsys.readouterr().out.strip().splitlines()
    figures = json.loads(out[-1])
    assert figures["kernels_epoch_s"] > 0 and figures["paddle_ops_epoch_s"] > 0
    assert figures["kernels_ratio"] == pytest.approx(figures["kernels_epoch_s"] / figures["paddle_ops_epoch_s"],
                                                     abs=0.01)
    assert figures["paddle_epoch_s"] == min(figures["kernels_epoch_s"], figures["paddle_ops_epoch_s"])
    assert figures["isa"] == kernels.isa_name()
    if figures["paddle_conv_kernel"].startswith("onednn"):  # the faster path was the kernels: oneDNN's lines
        assert any(name.startswith("convolution") for name in figures["onednn_primitives"])
    assert figures["reference_primitives"] == [] and "no reference implementation" in "\n".join(out)


def test_a_two_process_run_resumed_through_the_launcher_matches_the_uninterrupted_run(
        two_process_run: Path, real_data: dict, tmp_path: Path) -> None:
    # Two launches (one epoch, then the resume) train what one did: two-process training is reproducible.
    runs = tmp_path / "runs"
    first = subprocess.run(cnn_train_command(real_data, runs, 1, "--nproc", "2"), cwd=REPO, capture_output=True,
                           text=True, timeout=300)
    assert first.returncode == 0, first.stderr[-2000:]
    (run,) = runs.iterdir()
    resumed = subprocess.run([sys.executable, "-m", "competition", "train", "--resume", str(run), "--epochs", "2"],
                             cwd=REPO, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming after epoch 1 on cpu x2" in (run / "train.log").read_text()
    pd.testing.assert_frame_equal(pd.read_csv(run / "summary.csv")[METRICS],
                                  pd.read_csv(two_process_run / "summary.csv")[METRICS])
