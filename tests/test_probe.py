"""--conv auto decides by measurement: the faster path trains, the figures are cached and saved with the run."""
from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import paddle
import pytest

from competition import kernels, probe, runtime
from competition.config import Config


@pytest.fixture
def cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """A cache of probe figures of this test's own (a slowed path must not reach the user's)."""
    path = tmp_path / "conv-probe.json"
    monkeypatch.setattr(probe, "cache_path", lambda: path)
    paddle.set_device("cpu")
    kernels.load()
    return path


def slowed(seconds: float, call):
    """`call`, taking `seconds` longer."""
    def slow(*args, **kwargs):
        time.sleep(seconds)
        return call(*args, **kwargs)
    return slow


def auto(**options) -> runtime.Runtime:
    return runtime.resolve(Config(**{"model": "cnn", "batch_size": 16, **options}), 1)


def test_slow_kernels_give_paddles_ops(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kernels.CpuKernels, "conv2d", slowed(0.05, kernels.CpuKernels.conv2d))
    ran = auto()
    assert ran.kernels == "paddle" and ran.cpu_kernels() is None
    found = ran.conv_probe
    assert found["choice"] == "paddle" and found["onednn_step_s"] > found["paddle_step_s"] > 0
    assert found["onednn_step_s"] >= 3 * 0.05  # three convs a step, each slowed
    assert "Paddle's ops train" in ran.probe_line() and "cnn, 16 images a process, 1 process" in ran.probe_line()


def test_slow_paddle_ops_give_the_kernels(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(paddle.nn.Conv2D, "forward", slowed(0.05, paddle.nn.Conv2D.forward))
    ran = auto()
    assert ran.kernels == "onednn" and ran.cpu_kernels() is not None
    assert ran.conv_probe["paddle_step_s"] > ran.conv_probe["onednn_step_s"] > 0
    assert "kernels.cc trains" in ran.probe_line()


def test_a_shape_is_measured_once_then_read_from_the_cache(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = auto()
    assert first.conv_probe["cached"] is False and cache.is_file()
    monkeypatch.setattr(probe, "measure", lambda shape: pytest.fail("measured again"))
    again = auto(seed=3, epochs=9)  # another run of the same shape
    assert again.conv_probe["cached"] is True and again.kernels == first.kernels
    assert again.conv_probe["onednn_step_s"] == first.conv_probe["onednn_step_s"]
    assert "cached" in again.probe_line()
    entries = json.loads(cache.read_text())
    (key,) = entries
    assert kernels.isa_name() in key and paddle.version.full_version in key and "cnn() batch 16 x1 fp32" in key
    monkeypatch.setattr(probe, "measure", lambda shape: {"onednn": 1.0, "paddle": 2.0})
    assert auto(batch_size=32).conv_probe["cached"] is False  # another shape: measured
    assert len(json.loads(cache.read_text())) == 2


def test_forced_paths_and_models_without_kernel_layers_are_not_measured(cache: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(probe, "measure", lambda shape: pytest.fail("measured"))
    assert auto(conv="onednn").kernels == "onednn" and auto(conv="onednn").conv_probe is None
    assert auto(conv="paddle").kernels == "paddle"
    fc = runtime.resolve(Config(model="fc"), 1)
    assert fc.kernels == "paddle" and fc.conv_probe is None  # nothing in it for the kernels


def test_a_run_records_the_probe_in_runtime_json_and_its_log(tiny_run: Path) -> None:
    ran = json.loads((tiny_run / "runtime.json").read_text())
    assert ran["kernels"] in ("onednn", "paddle") and ran["isa"] == kernels.isa_name()
    found = ran["conv_probe"]
    assert found["choice"] == ran["kernels"] and found["onednn_step_s"] > 0 and found["paddle_step_s"] > 0
    assert "conv auto: kernels.cc" in (tiny_run / "train.log").read_text()


def test_a_probe_on_two_processes_times_each_path_on_both(cache: Path) -> None:
    shape = probe.Shape("cnn", (), 8, 2, "fp32")
    seconds = probe.measure(shape)
    assert set(seconds) == {"onednn", "paddle", "onednn_eval", "paddle_eval"} and all(s > 0 for s in seconds.values())
    # per image, not per validation batch: below a whole step of 8 images (a forward and backward pass) even
    # on a loaded machine; a batch's time would be hundreds of times one image's (0.7 ms against 5.5 ms here)
    assert seconds["onednn_eval"] < seconds["onednn"] and seconds["paddle_eval"] < seconds["paddle"]


def test_several_shapes_are_probed_in_one_launch_and_old_entries_again(cache: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    shapes = [probe.Shape("cnn", (), 8, 2, "fp32"), probe.Shape("cnn", (("width", 8),), 8, 2, "fp32")]
    cache.write_text(json.dumps({shapes[0].key(): {"onednn_step_s": 1.0, "paddle_step_s": 2.0, "choice": "onednn"}}))
    launched = []
    monkeypatch.setattr(probe, "measure_all", lambda found: launched.append(found) or
                        [{"onednn": 1.0, "paddle": 2.0, "onednn_eval": 0.01, "paddle_eval": 0.02}] * len(found))
    found = probe.choose_all(shapes)
    assert launched == [shapes]  # the entry without validation timings was measured again, with the other
    assert all(found[s]["onednn_eval_image_s"] == 0.01 and found[s]["cached"] is False for s in shapes)
    assert all(r["cached"] for r in probe.choose_all(shapes).values())


def test_a_resumed_run_keeps_the_path_it_started_on_unless_the_processor_changed(
        cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(probe, "measure", lambda shape: pytest.fail("measured"))
    started = runtime.Runtime("cpu", "paddle", "fp32", 1, 1, paddle.__version__, False, isa=kernels.isa_name())
    kept = runtime.resolve(Config(model="cnn", batch_size=16), 1, started)
    assert kept.kernels == "paddle"  # though the kernels build: the resumed epochs compute what the first did
    monkeypatch.setattr(probe, "measure", lambda shape: {"onednn": 1.0, "paddle": 2.0})
    moved = runtime.resolve(Config(model="cnn", batch_size=16), 1, dataclasses.replace(started, isa="sse41"))
    assert moved.kernels == "onednn" and moved.conv_probe["cached"] is False
