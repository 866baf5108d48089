"""competition bench: the PyTorch twins are the same models, and the convolutions' work is counted right."""
from __future__ import annotations

import pytest

from competition.bench import BenchSettings, _torch_model, conv_flops_per_image, count_primitives, reference_primitives
from competition.models import build_model, count_parameters


@pytest.mark.parametrize("model, options", [("cnn", {}), ("cnn", {"width": 8, "hidden": 32}),
                                            ("resnet", {"width": 8, "depth": 1}), ("resnet", {"width": 4, "depth": 2}),
                                            ("airnet", {"width": 8}), ("airnet", {"width": 48})])
def test_torch_twins_have_the_same_parameters(model: str, options: dict) -> None:
    torch = pytest.importorskip("torch")
    twin = _torch_model(model, options)
    ours = build_model(model, **options)
    assert sum(p.numel() for p in twin.parameters() if p.requires_grad) == count_parameters(ours)
    frozen_too = [p for name, p in ours.named_parameters() if not name.endswith(("_mean", "_variance"))]
    assert sum(p.numel() for p in twin.parameters()) == sum(int(p.size) for p in frozen_too)  # and the frozen ones
    assert twin(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


def test_onednn_verbose_lines_are_counted_and_reference_code_flagged() -> None:
    verbose = "\n".join([
        "onednn_verbose,v1,info,cpu,isa:Intel AVX2",
        "onednn_verbose,v1,primitive,exec,cpu,convolution,jit:avx2,forward_training,src:f32,,alg,mb8,0.5",
        "onednn_verbose,v1,primitive,exec,cpu,convolution,jit:avx2,forward_training,src:f32,,alg,mb8,0.4",
        "onednn_verbose,v1,primitive,create:cache_miss,cpu,batch_normalization,ref:any,backward,src,,,mb8,0.1",
        "onednn_verbose,v1,primitive,exec,cpu,batch_normalization,ref:any,backward,src:f32,,flags,mb8,150.2",
        "a line of Paddle's own"])
    counted = count_primitives(verbose)
    assert counted == {"convolution jit:avx2 forward_training": 2, "batch_normalization ref:any backward": 1}
    assert reference_primitives(counted) == ["batch_normalization ref:any backward"]


def test_conv_flops_are_counted_from_the_shapes() -> None:
    # The reference conv net: 1→10 5x5 to 24x24, then 10→20 5x5 to 20x20.
    first = 2 * 10 * 1 * 25 * 24 * 24
    second = 2 * 20 * 10 * 25 * 20 * 20
    # Forward, backward-data and backward-weights for both, except no input gradient for the first.
    assert conv_flops_per_image(BenchSettings(model="conv")) == 2 * first + 3 * second
    wider = conv_flops_per_image(BenchSettings(model="resnet", width=16, depth=1))
    assert wider == pytest.approx(4 * conv_flops_per_image(BenchSettings(model="resnet", width=8, depth=1)),
                                  rel=0.01)  # twice the channels in and out, except the first conv's input
