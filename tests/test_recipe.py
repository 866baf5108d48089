"""Training recipes: presets, batched augmentation, schedules, full fit, resume with a schedule."""
from __future__ import annotations

import json

from pathlib import Path

import numpy as np
import pandas as pd
import paddle
import pytest

from competition import kernels, train
from competition.cli import main
from competition.config import PRESETS, Config, from_preset
from competition.data import Augment, FashionMNIST
from competition.errors import CompetitionError
from competition.models import build_model, learned


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_each_preset_resolves_to_a_valid_configuration(name: str) -> None:
    config = from_preset(name).checked()
    assert config.preset == name and config.epochs >= 1
    assert build_model(config.model, **config.model_options())(paddle.rand([2, 1, 28, 28])).shape == [2, 10]
    overridden = from_preset(name, epochs=1, lr=0.123)
    assert overridden.epochs == 1 and overridden.lr == 0.123 and overridden.model == PRESETS[name]["model"]


def test_unknown_preset_is_refused() -> None:
    with pytest.raises(CompetitionError, match="unknown preset 'fastest'; expected one of quick, default, resnet, airnet64, best"):
        from_preset("fastest")


def _images(n: int = 64) -> np.ndarray:
    rng = np.random.default_rng(0)
    images = rng.integers(1, 256, size=(n, 784)).astype(np.uint8)  # no zeros: erasing is visible
    return images


@pytest.mark.parametrize("augment", [Augment(flip=True), Augment(crop_pad=3), Augment(erase=1.0),
                                     Augment(crop_pad=2, flip=True, erase=0.5)])
def test_augmentation_keeps_shape_dtype_range_and_follows_the_seed(augment: Augment) -> None:
    dataset = FashionMNIST(_images(), np.arange(64) % 10, augment)
    plain, _ = FashionMNIST(_images(), np.arange(64) % 10).batch(np.arange(64))
    x, y = dataset.batch(np.arange(64), np.random.default_rng(5))
    assert x.shape == (64, 1, 28, 28) and x.dtype == np.float32 and 0 <= x.min() and x.max() <= 1
    assert list(y) == list(np.arange(64) % 10)
    assert not np.array_equal(x, plain)
    np.testing.assert_array_equal(x, dataset.batch(np.arange(64), np.random.default_rng(5))[0])
    assert not np.array_equal(x, dataset.batch(np.arange(64), np.random.default_rng(6))[0])
    np.testing.assert_array_equal(dataset.batch(np.arange(64))[0], plain)  # no generator: no augmentation


def test_flip_mirrors_left_right_only_and_crop_shifts_within_the_padding() -> None:
    plain, _ = FashionMNIST(_images(), np.zeros(64, np.int64)).batch(np.arange(64))
    flipped, _ = FashionMNIST(_images(), np.zeros(64, np.int64), Augment(flip=True)).batch(
        np.arange(64), np.random.default_rng(1))
    mirrored = [np.array_equal(f, p[..., ::-1]) for f, p in zip(flipped, plain)]
    kept = [np.array_equal(f, p) for f, p in zip(flipped, plain)]
    assert all(m or k for m, k in zip(mirrored, kept)) and 10 < sum(mirrored) < 54
    cropped, _ = FashionMNIST(_images(), np.zeros(64, np.int64), Augment(crop_pad=2)).batch(
        np.arange(64), np.random.default_rng(1))
    padded = np.pad(plain, ((0, 0), (0, 0), (2, 2), (2, 2)))
    for c, p in zip(cropped, padded):
        assert any(np.array_equal(c, p[:, dy:dy + 28, dx:dx + 28]) for dy in range(5) for dx in range(5))


def test_erasing_only_zeroes_one_rectangle() -> None:
    plain, _ = FashionMNIST(_images(), np.zeros(64, np.int64)).batch(np.arange(64))
    erased, _ = FashionMNIST(_images(), np.zeros(64, np.int64), Augment(erase=1.0)).batch(
        np.arange(64), np.random.default_rng(2))
    for e, p in zip(erased[:, 0], plain[:, 0]):
        changed = e != p
        assert (e[changed] == 0).all() and changed.any()
        rows, cols = np.flatnonzero(changed.any(1)), np.flatnonzero(changed.any(0))
        assert changed[rows.min():rows.max() + 1, cols.min():cols.max() + 1].all()  # a filled rectangle


@pytest.mark.parametrize("schedule, warmup", [("cosine", 1.0), ("onecycle", 0.0), ("constant", 0.5)])
def test_schedules_warm_up_peak_at_lr_and_cosine_decays(schedule: str, warmup: float) -> None:
    config = Config(lr=0.1, epochs=4, schedule=schedule, warmup_epochs=warmup)
    rate = train.build_schedule(config, steps_per_epoch=10)
    rates = []
    for _ in range(40):
        rates.append(rate())
        rate.step()
    assert max(rates) == pytest.approx(0.1, rel=1e-3)
    assert rates[0] < 0.05  # warm-up (one-cycle starts at lr / 25)
    if schedule != "constant":
        assert rates[-1] < 0.005


def test_full_fit_trains_on_every_row_and_says_so(train_csv: Path, test_csv: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture) -> None:
    assert main(["train", "--train", str(train_csv), "--model", "fc", "--epochs", "1", "--val-size", "0",
                 "--runs-dir", str(tmp_path / "runs")]) == 0
    (run,) = (tmp_path / "runs").iterdir()
    assert "50 training rows, 0 validation rows" in (run / "train.log").read_text()
    assert "trained on every row" in capsys.readouterr().out
    out = tmp_path / "subs" / "submission.csv"
    assert main(["predict", "--run", str(run), "--test", str(test_csv), "--out", str(out)]) == 0
    assert (out.parent / f"{run.name}-noval.csv").is_file()


def test_bf16_run_records_its_precision_and_trains(train_csv: Path, tmp_path: Path) -> None:
    assert main(["train", "--train", str(train_csv), "--model", "resnet", "--width", "8", "--depth", "1",
                 "--epochs", "1", "--val-size", "10", "--precision", "bf16", "--conv", "onednn", "--nproc", "1",
                 "--runs-dir", str(tmp_path / "runs")]) == 0
    (run,) = (tmp_path / "runs").iterdir()
    assert Config.load(run / "config.json").precision == "bf16"  # what was asked for
    ran = json.loads((run / "runtime.json").read_text())  # what ran
    assert ran["precision"] == ("bf16" if kernels.cpu_has_bf16() else "fp32") and ran["kernels"] == "onednn"
    log = (run / "train.log").read_text()
    assert ("training in bfloat16" in log) == kernels.cpu_has_bf16()
    assert np.isfinite(pd.read_csv(run / "summary.csv")["train_loss"]).all()


def test_unknown_precision_in_a_configuration_is_refused() -> None:
    with pytest.raises(CompetitionError, match="unknown precision 'fp16'; expected one of fp32, bf16"):
        Config(precision="fp16").checked()


RECIPES = {
    "cnn": ["--model", "cnn", "--ema", "0.9", "--optimizer", "adamw", "--weight-decay", "0.01", "--schedule", "cosine",
            "--warmup-epochs", "0.5", "--crop-pad", "2", "--flip", "--erase", "0.5", "--label-smoothing", "0.1"],
    # airbench's levers: whitening filters fitted to the data, fast BatchNorm shifts, alternating flips
    "airnet": ["--model", "airnet", "--width", "8", "--optimizer", "sgd", "--momentum", "0.85", "--lr", "0.05",
               "--weight-decay", "0.001", "--norm-bias-lr", "64", "--schedule", "linear", "--crop-pad", "2",
               "--flip", "--alternate-flip", "--label-smoothing", "0.2", "--lookahead"],
}


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_recipe_run_interrupted_and_resumed_matches_uninterrupted(recipe: str, real_data: dict, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    args = ["train", "--train", str(real_data["train"]), "--epochs", "3", "--val-size", "100", "--batch-size", "32",
            *RECIPES[recipe]]
    assert main(args + ["--runs-dir", str(tmp_path / "whole")]) == 0
    original = train.train_one_epoch
    calls = []

    def stop_in_second_epoch(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(*a, **k)

    monkeypatch.setattr(train, "train_one_epoch", stop_in_second_epoch)
    assert main(args + ["--runs-dir", str(tmp_path / "cut")]) == 130
    monkeypatch.setattr(train, "train_one_epoch", original)
    (cut,) = (tmp_path / "cut").iterdir()
    assert main(["train", "--resume", str(cut)]) == 0
    (whole,) = (tmp_path / "whole").iterdir()
    columns = ["epoch", "train_loss", "val_loss", "val_acc", "lr"]
    pd.testing.assert_frame_equal(pd.read_csv(cut / "summary.csv")[columns],
                                  pd.read_csv(whole / "summary.csv")[columns])


def test_weight_average_tracks_weights_and_is_applied_only_inside_its_block() -> None:
    import paddle

    from competition.models import build_model
    model = build_model("fc")
    start = {k: v.numpy().copy() for k, v in model.state_dict().items()}
    average = train.WeightAverage(model, decay=0.75)
    for value in model.parameters():
        value.set_value(value + 1.0)  # a "training step" moves every weight by +1
    average.update()
    name = "1.bias"
    np.testing.assert_allclose(average.shadow[name].numpy(), start[name] + 0.25, rtol=1e-6)
    with average.applied():
        np.testing.assert_allclose(model.state_dict()[name].numpy(), start[name] + 0.25, rtol=1e-6)
    np.testing.assert_allclose(model.state_dict()[name].numpy(), start[name] + 1.0, rtol=1e-6)
    again = train.WeightAverage(model, decay=0.75)
    again.load(average.state())
    np.testing.assert_allclose(again.shadow[name].numpy(), average.shadow[name].numpy())
    assert isinstance(again.shadow[name], paddle.Tensor)


def test_lookahead_pulls_the_weights_to_their_average_every_five_steps_and_ends_on_it() -> None:
    from competition.models import build_model
    model = build_model("fc")
    name = "1.bias"
    start = model.state_dict()[name].numpy().copy()
    lookahead = train.Lookahead(model, total=12)
    for step in range(1, 13):
        before = model.state_dict()[name].numpy().copy()
        model.state_dict()[name].set_value(before + 1.0)  # a "training step" moves the weight by +1
        lookahead.update()
        now = model.state_dict()[name].numpy()
        if step < 5:  # between pulls the weights train on alone
            np.testing.assert_allclose(now, start + step, rtol=1e-6)
        if step == 5:  # the average keeps 0.95^5 (5/12)^3 of itself, takes the rest from the weights
            kept = 0.95 ** 5 * (5 / 12) ** 3
            np.testing.assert_allclose(now, kept * start + (1 - kept) * (start + 5), rtol=1e-5)
        if step in (5, 10, 12):
            np.testing.assert_array_equal(now, lookahead.shadow[name].numpy())
    last = lookahead.shadow[name].numpy()
    np.testing.assert_array_equal(model.state_dict()[name].numpy(), last)  # the last step: the average itself
    with lookahead.applied():  # the weights are the average: validation swaps nothing
        np.testing.assert_array_equal(model.state_dict()[name].numpy(), last)


def test_the_airnet_presets_average_by_lookahead_and_ema_replaces_it() -> None:
    assert Config.of_preset("default").lookahead and Config.of_preset("default").ema == 0
    replaced = Config.of_preset("default", ema=0.999)
    assert replaced.ema == 0.999 and not replaced.lookahead
    assert Config.of_preset("airnet64", lookahead=True).ema == 0  # measured with --ema 0.99 as best's member
    with pytest.raises(CompetitionError, match="--ema 0.9 and --lookahead are two weight averages; give one"):
        Config(ema=0.9, lookahead=True).checked()


def test_alternating_flip_mirrors_each_row_in_every_other_epoch_only() -> None:
    dataset = FashionMNIST(_images(), np.zeros(64, np.int64), Augment(flip=True, alternate_flip=True))
    plain, _ = FashionMNIST(_images(), np.zeros(64, np.int64)).batch(np.arange(64))
    rows = np.arange(64)
    epochs = [dataset.batch(rows, np.random.default_rng(epoch), epoch)[0] for epoch in (4, 5, 6)]
    mirrored = [np.array([np.array_equal(x, p[..., ::-1]) for x, p in zip(images, plain)]) for images in epochs]
    assert 16 < mirrored[0].sum() < 48  # about half the rows in any one epoch
    np.testing.assert_array_equal(mirrored[1], ~mirrored[0])  # the other half the next epoch
    np.testing.assert_array_equal(mirrored[2], mirrored[0])
    # a row's flip follows its row number, not where it sits in the batch or the generator
    again = dataset.batch(rows[::-1], np.random.default_rng(99), 4)[0]
    np.testing.assert_array_equal(again[::-1], epochs[0])


def test_linear_schedule_rises_from_a_fifth_to_lr_over_23_percent_then_falls_to_7_percent() -> None:
    rate = train.build_schedule(Config(lr=1.0, epochs=10, schedule="linear"), steps_per_epoch=10)
    rates = []
    for _ in range(100):
        rates.append(rate())
        rate.step()
    assert rates[0] == pytest.approx(0.2) and max(rates) == pytest.approx(1.0, rel=1e-3)
    assert int(np.argmax(rates)) in (22, 23) and rates[-1] == pytest.approx(0.07, abs=0.01)
    assert np.all(np.diff(rates[:22]) > 0) and np.all(np.diff(rates[24:]) < 0)


def test_norm_bias_lr_speeds_up_batchnorm_shifts_with_the_same_decay_per_step() -> None:
    paddle.seed(0)
    config = Config(model="airnet", width=8, optimizer="sgd", momentum=0.0, lr=0.1, weight_decay=0.01,
                    norm_bias_lr=64)
    model = build_model("airnet", width=8)
    optimizer, _ = train.build_optimizer(config, model, steps_per_epoch=10)
    shifts = {id(layer.bias) for layer in model.sublayers() if isinstance(layer, paddle.nn.BatchNorm2D)}
    model.train()
    x = paddle.to_tensor(np.random.default_rng(0).random((8, 1, 28, 28), dtype=np.float32))
    paddle.nn.functional.cross_entropy(model(x), paddle.to_tensor(np.arange(8))).backward()
    before = {id(p): (p.numpy().copy(), None if p.grad is None else p.grad.numpy().copy())
              for p in model.parameters()}
    optimizer.step()
    for param in model.parameters():
        value, grad = before[id(param)]
        if not learned(param):  # the whitening filters and the BatchNorm scales of 1
            np.testing.assert_array_equal(param.numpy(), value)
            continue
        rate = 0.1 * (64 if id(param) in shifts else 1)
        # the shifts' L2 coefficient is divided by 64: every parameter decays by lr x 0.01 per step
        expected = value - rate * grad - 0.1 * 0.01 * value
        np.testing.assert_allclose(param.numpy(), expected, rtol=1e-5, atol=1e-7)
    assert len(shifts) == 6 and all(np.abs(before[i][1]).sum() > 0 for i in shifts)  # shifts do learn
