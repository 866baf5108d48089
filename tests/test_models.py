"""Registered models: output shape, exact parameter counts, gradients everywhere."""
from __future__ import annotations

import numpy as np
import paddle
import paddle.nn.functional as F
import pytest

from competition.errors import CompetitionError
from competition.models import MODELS, build_model, count_parameters, fit_to_data, learned

# resnet: width 32, depth 2 (the defaults); airnet: width 64 (convs 1,958,400 + BN shifts 1,152 + linear
# 2,560 + the whitening bias 8; its filters are fixed).
EXPECTED_PARAMETERS = {"fc": 101_770, "conv": 25_290, "cnn": 39_674, "resnet": 696_042, "airnet": 1_962_120}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_model_maps_a_batch_to_ten_finite_logits(name: str) -> None:
    paddle.seed(0)
    model = build_model(name)
    x = paddle.to_tensor(np.random.default_rng(0).random((3, 1, 28, 28), dtype=np.float32))
    logits = model(x)
    assert logits.shape == [3, 10]
    assert np.isfinite(logits.numpy()).all()


@pytest.mark.parametrize("name", sorted(MODELS))
def test_parameter_count_is_exact(name: str) -> None:
    assert count_parameters(build_model(name)) == EXPECTED_PARAMETERS[name]


def test_reference_models_are_sequential_as_in_the_notebook() -> None:
    fc, conv = build_model("fc"), build_model("conv")
    assert isinstance(fc, paddle.nn.Sequential) and isinstance(conv, paddle.nn.Sequential)
    assert [type(layer).__name__ for layer in fc] == ["Flatten", "Linear", "LeakyReLU", "Linear"]
    assert [type(layer).__name__ for layer in conv] == [
        "Conv2D", "ReLU", "Conv2D", "ReLU", "MaxPool2D", "Flatten", "Linear"]


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_parameter_receives_a_gradient(name: str) -> None:
    paddle.seed(0)
    model = build_model(name)
    model.train()
    x = paddle.to_tensor(np.random.default_rng(1).random((4, 1, 28, 28), dtype=np.float32))
    F.cross_entropy(model(x), paddle.to_tensor(np.array([0, 1, 2, 3]))).backward()
    trainable = [(n, p) for n, p in model.named_parameters() if not p.stop_gradient]
    assert len(trainable) >= 4  # BatchNorm's running statistics are not trainable
    for pname, param in trainable:
        assert param.grad is not None, pname
        assert float(param.grad.abs().sum()) > 0, pname


def test_unknown_model_names_the_choices() -> None:
    with pytest.raises(CompetitionError, match="unknown model 'resnet9000'; expected one of fc, conv"):
        build_model("resnet9000")


def test_resnet_options_size_the_network() -> None:
    paddle.seed(0)
    small = build_model("resnet", width=16, depth=1)
    assert count_parameters(small) == 77_754 < EXPECTED_PARAMETERS["resnet"]
    assert count_parameters(build_model("resnet", width=32, depth=2)) == EXPECTED_PARAMETERS["resnet"]
    small.eval()
    logits = small(paddle.to_tensor(np.random.default_rng(2).random((2, 1, 28, 28), dtype=np.float32)))
    assert logits.shape == [2, 10] and np.isfinite(logits.numpy()).all()


def test_resnet_stages_end_at_seven_pixels_with_four_times_the_width_and_no_conv_bias() -> None:
    model = build_model("resnet", width=8, depth=1)
    model.eval()
    x = paddle.zeros([2, 1, 28, 28])
    for layer in model:
        if isinstance(layer, paddle.nn.AdaptiveAvgPool2D):
            break
        x = layer(x)
    assert x.shape == [2, 32, 7, 7]
    convs = [layer for layer in model.sublayers() if isinstance(layer, paddle.nn.Conv2D)]
    assert len(convs) == 1 + 3 * 2 + 2  # stem, two per block, two projections
    assert all(conv.bias is None for conv in convs)  # each conv feeds a BatchNorm


@pytest.mark.parametrize("name, options, fragment", [
    ("cnn", {"depth": 2}, "model 'cnn' takes no option 'depth'; cnn takes width, hidden; resnet takes width, depth."),
    ("resnet", {"widht": 16}, "model 'resnet' takes no option 'widht'; cnn takes width, hidden; "
                              "resnet takes width, depth."),
])
def test_an_option_the_builder_does_not_take_is_named(name: str, options: dict, fragment: str) -> None:
    with pytest.raises(CompetitionError, match=fragment):
        build_model(name, **options)


@pytest.mark.parametrize("options, fragment", [
    ({"width": 0}, "resnet width must be a whole number of at least 1, got 0."),
    ({"width": -4}, "resnet width must be a whole number of at least 1, got -4."),
    ({"width": 2.5}, "resnet width must be a whole number of at least 1, got 2.5."),
    ({"depth": 0}, "resnet depth must be a whole number of at least 1, got 0."),
])
def test_impossible_resnet_sizes_are_refused(options: dict, fragment: str) -> None:
    with pytest.raises(CompetitionError, match=fragment):
        build_model("resnet", **options)


@pytest.mark.parametrize("options, fragment", [
    ({"width": 0}, "cnn width must be a whole number of at least 1, got 0."),
    ({"hidden": -1}, "cnn hidden must be a whole number of at least 0, got -1."),
])
def test_impossible_cnn_sizes_are_refused(options: dict, fragment: str) -> None:
    with pytest.raises(CompetitionError, match=fragment):
        build_model("cnn", **options)


def test_cnn_width_and_hidden_layer_change_the_model_not_its_output_shape() -> None:
    x = paddle.rand([2, 1, 28, 28])
    for options, params in (({}, 39_674), ({"hidden": 256}, 436_090), ({"width": 8}, 14_082)):
        model = build_model("cnn", **options)
        assert count_parameters(model) == params, options
        assert model(x).shape == [2, 10]


def test_airnet_whitening_filters_decorrelate_training_patches() -> None:
    rng = np.random.default_rng(0)
    base = rng.random((200, 1, 28, 28)).astype(np.float32)
    images = (base + np.roll(base, 1, axis=3)) / 2  # neighbouring pixels correlated, as in photos
    model = build_model("airnet", width=8)
    fit_to_data(model, images)
    whitening = model[0]
    assert whitening.weight.stop_gradient and whitening.weight.shape == [8, 1, 2, 2]
    out = F.conv2d(paddle.to_tensor(images), whitening.weight).numpy()  # without the bias
    patches = out[:, :4].transpose(0, 2, 3, 1).reshape(-1, 4)
    covariance = patches.T @ patches / len(patches)
    np.testing.assert_allclose(covariance - np.diag(np.diag(covariance)), 0, atol=1e-4)  # decorrelated
    assert np.all((np.diag(covariance) > 0.95) & (np.diag(covariance) <= 1))  # unit variance, but for the eps
    np.testing.assert_allclose(out[:, 4:], -out[:, :4], rtol=1e-6)  # and the negatives


def test_airnet_convs_start_as_identities_and_batchnorm_learns_no_scale() -> None:
    model = build_model("airnet", width=8)
    conv = [layer for layer in model if isinstance(layer, paddle.nn.Conv2D)][1]  # group 1's first: 8 -> 8
    weight = conv.weight.numpy()
    for c in range(8):
        expected = np.zeros((8, 3, 3), np.float32)
        expected[c, 1, 1] = 1
        np.testing.assert_array_equal(weight[c], expected)
    norms = [layer for layer in model if isinstance(layer, paddle.nn.BatchNorm2D)]
    assert len(norms) == 6 and all(not learned(n.weight) and learned(n.bias) for n in norms)
    assert build_model("airnet", width=16)(paddle.rand([2, 1, 28, 28])).shape == [2, 10]
