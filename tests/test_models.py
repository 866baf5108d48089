"""Registered models: output shape, exact parameter counts, gradients everywhere."""
from __future__ import annotations

import numpy as np
import paddle
import paddle.nn.functional as F
import pytest

from competition.errors import CompetitionError
from competition.models import MODELS, build_model, count_parameters

EXPECTED_PARAMETERS = {"fc": 101_770, "conv": 25_290, "cnn": 39_674}


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
