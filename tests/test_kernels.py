"""The CPU kernels: the values, gradients and statistics of Paddle's ops in either layout; every model swapped by
kernels.accelerate trains as its plain layers do; a clear fallback without the kernels."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import paddle
import paddle.nn.functional as F
import pytest
from paddle import nn

from competition import checkpoint, kernels, predict, runtime
from competition.config import Config
from competition.errors import CompetitionError
from competition.models import BasicBlock, Whitening, build_model, fit_to_data
from conftest import REPO

ONEDNN = kernels.CpuKernels()
BLOCK = ONEDNN.block  # channels per block of the blocked layout: 8 on AVX2, 16 on AVX-512 (or as ISA-capped)

# (batch, in, size, out, kernel, stride, padding): the cnn's three convs and resnet's strided ones.
SHAPES = [(4, 1, 28, 16, 5, 1, 2), (3, 16, 14, 32, 3, 1, 0), (2, 32, 12, 64, 3, 1, 0),
          (2, 16, 28, 32, 3, 2, 1), (2, 16, 28, 32, 1, 2, 0)]


@pytest.fixture
def onednn():
    """The kernels built (run.sh installs their headers) and Paddle on the CPU."""
    paddle.set_device("cpu")
    kernels.load()


def resolve(conv: str = "auto", precision: str = "fp32", device: str = "cpu") -> runtime.Runtime:
    return runtime.resolve(Config(conv=conv, precision=precision, device=device), 1)


def blocked(x: np.ndarray) -> np.ndarray:
    """NCHW as the kernels' blocked layout (nChw8c or nChw16c: channels in blocks of BLOCK, innermost), in an
    array of the same shape."""
    n, c, h, w = x.shape
    return np.ascontiguousarray(x.reshape(n, c // BLOCK, BLOCK, h, w).transpose(0, 1, 3, 4, 2)).reshape(x.shape)


def as_laid_out(x: np.ndarray, block: int) -> np.ndarray:
    return blocked(x) if block else x


def seeded(shape: tuple, seed: int, spread: float = 1.0, shift: float = 0.0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(shape) * spread + shift).astype(np.float32)


def run_with_gradients(op, inputs: list[np.ndarray], upstream: np.ndarray) -> list[np.ndarray]:
    """op(*inputs)'s output and the gradients of sum(output * upstream) with respect to the inputs."""
    tensors = [paddle.to_tensor(a, stop_gradient=False) for a in inputs]
    out = op(*tensors)
    (out * paddle.to_tensor(upstream)).sum().backward()
    return [out.numpy(), *(t.grad.numpy() for t in tensors)]


@pytest.mark.parametrize("layout", ["nchw", "blocked"])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_values_and_gradients_match_paddles_conv(onednn, shape, layout: str) -> None:
    n, c, size, out, k, stride, pad = shape
    src = BLOCK if layout == "blocked" and c % BLOCK == 0 else 0
    dst = BLOCK if layout == "blocked" and out % BLOCK == 0 else 0
    x, w = seeded((n, c, size, size), 0), seeded((out, c, k, k), 1)
    upstream = seeded((n, out, (size + 2 * pad - k) // stride + 1, (size + 2 * pad - k) // stride + 1), 2)
    theirs = run_with_gradients(lambda a, b: F.conv2d(a, b, stride=stride, padding=pad), [x, w], upstream)
    ours = run_with_gradients(lambda a, b: ONEDNN.conv2d(a, b, stride, pad, src, dst),
                              [as_laid_out(x, src), w], as_laid_out(upstream, dst))
    for a, b in zip(ours, [as_laid_out(theirs[0], dst), as_laid_out(theirs[1], src), theirs[2]]):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("shape", [(2, 16, 28, 28), (3, 64, 10, 10), (2, 3, 7, 9)], ids=str)
def test_max_pool_matches_paddles_including_ties_and_odd_sizes(onednn, shape) -> None:
    paddle.seed(1)
    x = F.relu(paddle.randn(shape))  # half zeros: many windows tie, as after a ReLU
    results, upstream = [], None
    for pool in (ONEDNN.max_pool2x2, lambda t: F.max_pool2d(t, 2)):
        x.stop_gradient = False
        y = pool(x)
        upstream = paddle.randn(y.shape) if upstream is None else upstream
        (y * upstream).sum().backward()
        results.append([y.numpy(), x.grad.numpy()])
        x.clear_gradient()
    for ours, theirs in zip(*results):
        np.testing.assert_array_equal(ours, theirs)


def test_input_gradient_is_skipped_for_images(onednn) -> None:
    x = paddle.randn([2, 1, 28, 28])  # images: stop_gradient, as the loader gives them
    w = paddle.randn([16, 1, 5, 5])
    w.stop_gradient = False
    ONEDNN.conv2d(x, w, 1, 2).sum().backward()
    assert x.grad is None and w.grad is not None


# resnet width 8 fills a block of 8 (AVX2: blocked from its first conv) but not of 16 (AVX-512: NCHW
# throughout); the others train in the blocked layout from their first conv on, through every kind of layer.
MODELS = [("cnn", {}), ("resnet", {"width": 8, "depth": 1}), ("resnet", {"width": 16, "depth": 1}),
          ("airnet", {"width": 16})]


def trained_once(model: str, options: dict, choice, x: paddle.Tensor, y: paddle.Tensor, dtype: str = "float32"):
    """One step's loss, parameter gradients and running statistics of `model` (seeded) through `choice`."""
    paddle.seed(0)
    net = build_model(model, **options)
    if dtype != "float32":
        net.to(dtype=dtype)
    net = kernels.accelerate(net, choice)
    loss = F.cross_entropy(net(x.astype(dtype)), y)
    loss.backward()
    grads = {name: p.grad.numpy().astype(np.float64) for name, p in net.named_parameters() if not p.stop_gradient}
    statistics = {name: value.numpy().astype(np.float64) for name, value in net.state_dict().items()
                  if name.endswith(("_mean", "_variance"))}
    return float(loss), grads, statistics


@pytest.mark.parametrize("model, options", MODELS, ids=str)
def test_models_train_the_same_either_way(onednn, model: str, options: dict) -> None:
    paddle.seed(7)  # seeded inputs: a ReLU's input within rounding of 0 may fall either side on some draw
    x, y = paddle.rand([8, 1, 28, 28]), paddle.randint(0, 10, [8])
    results = [trained_once(model, options, choice, x, y)
               for choice in (ONEDNN, kernels.CpuKernels(block=0), None)]
    for loss, grads, statistics in results[1:]:
        assert loss == pytest.approx(results[0][0], rel=1e-5)
        assert grads.keys() == results[0][1].keys() and statistics.keys() == results[0][2].keys()
        for name in grads:
            np.testing.assert_allclose(results[0][1][name], grads[name], rtol=1e-3, atol=1e-4, err_msg=name)
        for name in statistics:  # the running statistics moved as Paddle's BatchNorm moves them
            np.testing.assert_allclose(results[0][2][name], statistics[name], rtol=1e-5, atol=1e-6, err_msg=name)


def test_the_blocked_resnet_is_as_close_to_float64_as_paddles_own_ops(onednn) -> None:
    # The float64 reference tells rounding from a fault: the kernels' gradients must err no more than Paddle's.
    paddle.seed(3)
    x, y = paddle.rand([8, 1, 28, 28]), paddle.randint(0, 10, [8])
    _, exact, _ = trained_once("resnet", {"width": 16, "depth": 1}, None, x, y, "float64")
    (_, ours, _), (_, paddles, _) = (trained_once("resnet", {"width": 16, "depth": 1}, choice, x, y)
                                     for choice in (ONEDNN, None))
    for name, reference in exact.items():
        scale = np.abs(reference).max()
        ours_err, paddles_err = (np.abs(g[name] - reference).max() / scale for g in (ours, paddles))
        assert ours_err <= max(10 * paddles_err, 1e-5), name


@pytest.mark.parametrize("shape", [(2, 32, 28, 28), (3, 16, 13, 9)], ids=str)
def test_blocked_pooling_norm_and_bias_match_paddles_on_the_same_values(onednn, shape) -> None:
    x, upstream_norm = seeded(shape, 2, 3, 1), seeded(shape, 3)
    upstream_pool = seeded((shape[0], shape[1], shape[2] // 2, shape[3] // 2), 4)
    scale, shift = seeded((shape[1],), 5, 0.2, 1), seeded((shape[1],), 6)
    zeros, ones = paddle.zeros([shape[1]]), paddle.ones([shape[1]])
    cases = [(lambda t, b: ONEDNN.max_pool2x2(t, b), lambda t: F.max_pool2d(t, 2), [x], upstream_pool),
             (lambda t, s, h, b: ONEDNN.batch_norm(t, s, h, 1e-5, b)[0],
              lambda t, s, h: F.batch_norm(t, zeros, ones, s, h, training=True, epsilon=1e-5), [x, scale, shift],
              upstream_norm),
             (lambda t, b, block: ONEDNN.add_bias(t, b, block), lambda t, b: t + b.reshape([1, -1, 1, 1]),
              [x, shift], upstream_norm)]  # a conv's bias
    for ours, paddles, inputs, upstream in cases:
        theirs = run_with_gradients(paddles, inputs, upstream)
        for block in (BLOCK, 0):
            got = run_with_gradients(lambda t, *rest: ours(t, *rest, block), [as_laid_out(inputs[0], block),
                                                                               *inputs[1:]],
                                     as_laid_out(upstream, block))
            expected = [as_laid_out(theirs[0], block), as_laid_out(theirs[1], block), *theirs[2:]]
            for a, b in zip(got, expected):
                np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("block", [BLOCK, 0])
def test_norm_statistics_and_gradients_are_as_exact_as_float32_allows(onednn, block: int) -> None:
    # 50,176 values a channel, as after a ReLU: oneDNN's blocked primitive, summing them one after another in
    # float32, erred by 2.6e-4 in the mean and 2.3e-2 in the scale's gradient here on a Zen 3 (AVX2).
    shape = (64, 16, 28, 28)
    x32 = (np.maximum(np.random.default_rng(5).standard_normal(shape), 0) + 0.3).astype(np.float32)
    dout32 = (np.random.default_rng(6).standard_normal(shape) * 0.1 + 0.05).astype(np.float32)
    x64, dout64 = x32.astype(np.float64), dout32.astype(np.float64)  # the reference: the same values, exactly
    x = paddle.to_tensor(as_laid_out(x32, block), stop_gradient=False)
    scale, shift = paddle.ones([16]), paddle.zeros([16])
    scale.stop_gradient = shift.stop_gradient = False
    out, mean, variance = ONEDNN.batch_norm(x, scale, shift, 1e-5, block)
    (out * paddle.to_tensor(as_laid_out(dout32, block))).sum().backward()
    exact_mean, exact_var = x64.mean((0, 2, 3)), x64.var((0, 2, 3))  # one per channel, the biased variance
    xhat = (x64 - exact_mean[:, None, None]) / np.sqrt(exact_var[:, None, None] + 1e-5)
    np.testing.assert_allclose(mean.numpy(), exact_mean, rtol=1e-6)
    np.testing.assert_allclose(variance.numpy(), exact_var, rtol=1e-6)
    np.testing.assert_allclose(out.numpy(), as_laid_out(xhat, block), atol=1e-5)
    # A sum's float32 error is bounded by a few eps times the sum of its terms' sizes: here (the mean rounded to
    # float32 times the sum of the gradients) 1.5e-4 of a scale gradient of 9.7, where oneDNN's erred by 0.9.
    terms = dout64 * xhat
    bound = 4 * np.finfo(np.float32).eps * np.abs(terms).sum((0, 2, 3))
    assert (np.abs(scale.grad.numpy() - terms.sum((0, 2, 3))) <= bound).all()
    np.testing.assert_allclose(shift.grad.numpy(), dout64.sum((0, 2, 3)), rtol=1e-6)


def test_to_plain_turns_blocked_values_back_and_its_gradient_forth(onednn) -> None:
    x, upstream = seeded((2, 32, 6, 7), 3), seeded((2, 32, 6, 7), 4)
    t = paddle.to_tensor(blocked(x), stop_gradient=False)
    out = ONEDNN.to_plain(t, BLOCK)
    (out * paddle.to_tensor(upstream)).sum().backward()
    np.testing.assert_array_equal(out.numpy(), x)
    np.testing.assert_array_equal(t.grad.numpy(), blocked(upstream))
    plain = paddle.randn([2, 8, 3, 3])  # NCHW (block 0): left as it is
    assert ONEDNN.to_plain(plain, 0) is plain


def test_blocked_evaluation_norm_uses_the_running_statistics_as_paddles(onednn) -> None:
    rng = np.random.default_rng(6)
    values = rng.normal(1, 3, (3, 32, 7, 5)).astype(np.float32)
    scale, shift, mean = (paddle.to_tensor(rng.normal(1, 0.3, 32).astype(np.float32)) for _ in range(3))
    variance = paddle.to_tensor(rng.uniform(0.5, 2, 32).astype(np.float32))
    theirs = F.batch_norm(paddle.to_tensor(values), mean, variance, scale, shift, training=False, epsilon=1e-5)
    for block in (BLOCK, 0):
        ours = ONEDNN.batch_norm_infer(paddle.to_tensor(as_laid_out(values, block)), scale, shift, mean, variance,
                                       1e-5, block)
        np.testing.assert_allclose(ours.numpy(), as_laid_out(theirs.numpy(), block), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("choice", ["fp32", "bf16"])
@pytest.mark.parametrize("model, options", [("resnet", {"width": 16, "depth": 1}), ("airnet", {"width": 16})], ids=str)
def test_evaluation_and_no_grad_match_paddles_ops(onednn, model: str, options: dict, choice: str) -> None:
    paddle.seed(0)  # bf16 trains in bfloat16, but validation and no_grad calls stay float32
    chosen = ONEDNN if choice == "fp32" else kernels.CpuKernels(bf16=True, bf16_activations=True)
    net = kernels.accelerate(build_model(model, **options), chosen)
    reference = build_model(model, **options)
    reference.set_state_dict(net.state_dict())
    x = paddle.rand([4, 1, 28, 28])
    for mode in ("train", "eval"):  # train first: running statistics that are not the initial ones
        getattr(net, mode)(), getattr(reference, mode)()
        with paddle.no_grad():
            np.testing.assert_allclose(net(x).numpy(), reference(x).numpy(), rtol=1e-4, atol=1e-5)
    for name, value in reference.state_dict().items():  # both moved their running statistics alike
        np.testing.assert_allclose(net.state_dict()[name].numpy(), value.numpy(), rtol=1e-5, atol=1e-6, err_msg=name)


# --- kernels.accelerate: the pass over a plain model ------------------------------------------------------

def test_accelerate_swaps_layers_keeping_the_parameters_and_their_names(onednn) -> None:
    plain = build_model("resnet", width=16, depth=1)
    before = {name: id(value) for name, value in plain.state_dict().items()}
    fast = kernels.accelerate(plain, ONEDNN)
    assert {name: id(value) for name, value in fast.state_dict().items()} == before  # the same tensors
    kinds = {type(layer).__name__ for layer in fast.sublayers()}
    assert {"KernelConv2D", "KernelBatchNorm2D", "KernelReLU", "KernelBasicBlock", "KernelAdaptiveAvgPool2D"} <= kinds
    assert "Linear" in kinds and "Conv2D" not in kinds  # the head after the pooling is Paddle's own
    assert kernels.accelerate(plain, None) is plain


def test_accelerate_blocks_what_fills_whole_blocks_and_leaves_the_rest_nchw(onednn) -> None:
    fast = kernels.accelerate(build_model("airnet", width=16), ONEDNN)
    convs = [layer for layer in fast.sublayers() if isinstance(layer, kernels.KernelConv2D)]
    assert isinstance(fast[0], Whitening) and convs[0] is fast[0]  # a conv with a bias, still one of its class
    assert convs[0]._src_block == 0 and convs[1]._src_block == convs[0]._dst_block  # the images: NCHW
    assert [conv._dst_block for conv in convs] == [BLOCK if conv._out_channels % BLOCK == 0 else 0 for conv in convs]
    assert all(conv._src_block == BLOCK for conv in convs[2:])
    images = np.random.default_rng(0).random((64, 1, 28, 28)).astype(np.float32)
    fit_to_data(fast, images)  # the whitening's filters are still set from the images
    reference = build_model("airnet", width=16)
    fit_to_data(reference, images)
    np.testing.assert_allclose(fast[0].weight.numpy(), reference[0].weight.numpy())
    assert not np.allclose(fast[0].weight.numpy(), 0)


def test_accelerate_refuses_a_layer_it_cannot_vouch_for_where_activations_are_blocked(onednn) -> None:
    net = build_model("resnet", width=16, depth=1)
    net[3].bn1 = nn.Sequential(net[3].bn1, nn.AvgPool2D(3, stride=1, padding=1))  # what a newcomer might add
    with pytest.raises(CompetitionError, match=r"layer Sequential\.3\.bn1\.1 \(AvgPool2D\) would read activations "
                                               r"in the kernels' blocked layout"):
        kernels.accelerate(net, ONEDNN)
    for odd in (nn.Conv2D(16, 16, 3, padding=1, groups=2, bias_attr=False),  # groups; no scale
                nn.BatchNorm2D(16, weight_attr=False)):
        net = build_model("resnet", width=16, depth=1)
        net[3].conv2 = odd
        with pytest.raises(CompetitionError, match=type(odd).__name__):
            kernels.accelerate(net, ONEDNN)


def test_accelerate_leaves_unknown_layers_alone_where_activations_are_nchw(onednn) -> None:
    net = nn.Sequential(nn.AvgPool2D(2), nn.Conv2D(1, 16, 3, bias_attr=False), nn.BatchNorm2D(16), nn.ReLU(),
                        nn.Flatten(), nn.Dropout(0.5), nn.Linear(16 * 12 * 12, 10))
    fast = kernels.accelerate(net, ONEDNN)
    assert [type(layer).__name__ for layer in fast] == ["AvgPool2D", "KernelConv2D", "KernelBatchNorm2D",
                                                        "KernelReLU", "KernelFlatten", "Dropout", "Linear"]
    fast.eval()
    with paddle.no_grad():
        ours = fast(paddle.rand([2, 1, 28, 28])).numpy()
    assert ours.shape == (2, 10) and np.isfinite(ours).all()


def test_a_residual_block_whose_body_and_shortcut_end_in_different_layouts_is_refused(onednn) -> None:
    # A conv that reflects its edges stays Paddle's: NCHW into the block, whose identity shortcut keeps NCHW while
    # its body, 16 channels, ends blocked on every ISA; their sum has no one layout.
    net = nn.Sequential(nn.Conv2D(1, 16, 3, padding=1, padding_mode="reflect"), BasicBlock(16, 16))
    with pytest.raises(CompetitionError, match=r"Sequential\.1's body ends in layout block \d+ and its shortcut in 0"):
        kernels.accelerate(net, ONEDNN)


@pytest.mark.parametrize("model, options", [("cnn", {"hidden": 32}), ("resnet", {"width": 8, "depth": 1})])
def test_export_uses_paddles_ops_and_agrees_with_the_kernels(onednn, tmp_path, model: str, options: dict) -> None:
    images = np.random.default_rng(0).integers(0, 256, (64, 784), dtype=np.uint8)
    net = kernels.accelerate(build_model(model, **options), ONEDNN)
    net.eval()
    checkpoint.save_inference(net, tmp_path)
    exported = predict.run_predictor(predict.load_predictor(tmp_path), images)
    np.testing.assert_allclose(exported, predict.predict_probs(net, images), atol=1e-5)
    graph = (tmp_path / "inference.json").read_text()
    assert '.conv2d"' in graph and "onednn_conv2d" not in graph and "max_pool2x2" not in graph


def test_a_finished_build_is_imported_without_running_the_build_again(onednn) -> None:
    assert (kernels.build_dir() / "built").is_file()
    # A new process whose Paddle cannot build (its extension loader gone) still gets working kernels.
    code = ("import paddle, paddle.utils.cpp_extension as ext; ext.load = None; from competition import kernels; "
            "print(kernels.load().onednn_relu(paddle.to_tensor([-1.0, 2.0])).numpy().tolist())")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "[0.0, 2.0]", result.stderr[-2000:]


def test_without_headers_auto_falls_back_and_onednn_refuses(monkeypatch) -> None:
    monkeypatch.setattr(kernels, "_module", None)
    monkeypatch.setattr(kernels, "headers_dir", lambda: None)
    ran = resolve("auto")
    assert ran.kernels == "paddle" and ran.cpu_kernels() is None
    assert "Paddle's slower conv" in ran.notes[0] and kernels.HEADERS in ran.notes[0]
    with pytest.raises(CompetitionError, match="oneDNN headers are missing"):
        resolve("onednn")


def test_other_systems_train_with_paddles_ops(monkeypatch) -> None:
    monkeypatch.setattr(kernels, "_module", None)
    monkeypatch.setattr(kernels.sys, "platform", "win32")
    ran = resolve("auto")
    assert ran.kernels == "paddle" and "Linux only (this is win32)" in ran.notes[0]


def test_gpu_and_paddle_choices_leave_the_kernels_out(onednn) -> None:
    assert resolve("paddle").kernels == "paddle" and resolve("paddle").cpu_kernels() is None
    assert resolve("onednn").cpu_kernels() == kernels.CpuKernels(bf16=False)


def test_models_not_accelerated_run_paddles_ops(onednn, monkeypatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("kernels.cc was called")

    monkeypatch.setattr(kernels.CpuKernels, "conv2d", refuse)
    monkeypatch.setattr(kernels.CpuKernels, "max_pool2x2", refuse)
    x = paddle.rand([2, 1, 28, 28])
    build_model("cnn")(x)  # as built: Paddle's conv and pooling
    with pytest.raises(AssertionError, match="kernels.cc was called"):
        kernels.accelerate(build_model("cnn"), kernels.CpuKernels())(x)


def test_an_unwritable_cache_or_a_failed_compile_falls_back_with_the_reason(monkeypatch, tmp_path) -> None:
    monkeypatch.setattr(kernels, "_module", None)
    (tmp_path / "a-file").write_text("")
    monkeypatch.setattr(kernels, "build_dir", lambda: tmp_path / "a-file" / "kernels")
    ran = resolve("auto")
    assert ran.kernels == "paddle" and "did not build" in ran.notes[0]

    broken = tmp_path / "kernels.cc"
    broken.write_text("this is not C++\n")
    monkeypatch.setattr(kernels, "SOURCE", broken)
    monkeypatch.setattr(kernels, "build_dir", lambda: tmp_path / "build")
    with pytest.raises(CompetitionError, match="did not build .*build.log"):
        resolve("onednn")
    assert (tmp_path / "build" / "build.log").is_file()


BF16 = kernels.CpuKernels(bf16=True, bf16_activations=True)


@pytest.fixture
def onednn_bf16():
    """The kernels with bfloat16 training convs, where this CPU has them."""
    if not kernels.cpu_has_bf16():
        pytest.skip(f"oneDNN dispatches to {kernels.isa_name()} here: no native bfloat16 arithmetic")
    paddle.set_device("cpu")
    ran = resolve("onednn", "bf16")
    assert ran.precision == "bf16" and ran.cpu_kernels() == BF16


@pytest.mark.parametrize("shape", SHAPES[1:], ids=str)
def test_bf16_training_convs_stay_close_to_float32(onednn_bf16, shape) -> None:
    n, c, size, out, k, stride, pad = shape
    paddle.seed(0)
    x, w = paddle.randn([n, c, size, size]), paddle.randn([out, c, k, k])
    results, upstream = [], None
    for conv in (lambda: BF16.conv2d(x, w, stride, pad), lambda: F.conv2d(x, w, stride=stride, padding=pad)):
        x.stop_gradient = w.stop_gradient = False
        y = conv()
        upstream = paddle.randn(y.shape) if upstream is None else upstream
        (y * upstream).sum().backward()
        results.append([y.numpy(), x.grad.numpy(), w.grad.numpy()])
        x.clear_gradient(), w.clear_gradient()
    for ours, theirs in zip(*results):
        assert ours.dtype == np.float32
        # bfloat16 keeps 8 significant bits: about 0.4% per input, less after float32 sums.
        assert np.abs(ours - theirs).max() <= 0.01 * np.abs(theirs).max()
        assert not np.array_equal(ours, theirs)  # it did compute in bfloat16


def test_bf16_leaves_validation_and_prediction_in_float32(onednn_bf16) -> None:
    paddle.seed(0)
    x, w = paddle.randn([2, 16, 14, 14]), paddle.randn([32, 16, 3, 3])
    with paddle.no_grad():
        ours = BF16.conv2d(x, w, 1, 1).numpy()
    np.testing.assert_allclose(ours, F.conv2d(x, w, padding=1).numpy(), rtol=1e-4, atol=1e-4)


def test_bf16_without_cpu_support_or_kernels_trains_in_float32_and_says_so(onednn, monkeypatch) -> None:
    monkeypatch.setattr(kernels, "cpu_has_bf16", lambda: False)
    ran = resolve("onednn", "bf16")
    assert ran.kernels == "onednn" and ran.precision == "fp32"
    assert "float32, not bfloat16: this CPU has no native bfloat16" in ran.notes[0]
    ran = resolve("paddle", "bf16")
    assert ran.kernels == "paddle" and ran.precision == "fp32"
    assert "float32, not bfloat16: it needs the oneDNN kernels (this run: --conv paddle)" in ran.notes[0]


def rounded(shape: tuple, seed: int, spread: float = 2.0) -> np.ndarray:
    """Random float32 values that bfloat16 holds exactly, so both sides of a comparison see the same."""
    values = np.random.default_rng(seed).normal(0.3, spread, shape).astype(np.float32)
    return paddle.to_tensor(values).astype("bfloat16").astype("float32").numpy()


def bf16_and_paddle(ours, theirs, inputs: list[np.ndarray], layout=lambda a: a) -> list[tuple[np.ndarray, np.ndarray]]:
    """(ours, theirs) pairs of every output and input gradient: `ours` on bfloat16 tensors laid out by `layout`,
    Paddle's float32 `theirs` on the same values (its results laid out alike); ours must stay bfloat16."""
    results = []
    for op, dtype, arrange in ((ours, "bfloat16", layout), (theirs, "float32", lambda a: a)):
        tensors = [paddle.to_tensor(arrange(a)).astype(dtype) for a in inputs]
        for t in tensors:
            t.stop_gradient = False
        outputs = op(*tensors)
        outputs = outputs if isinstance(outputs, (tuple, list)) else (outputs,)
        upstream = [rounded(o.shape, 10 + k) for k, o in enumerate(outputs)]
        sum((o.astype("float32") * paddle.to_tensor(arrange(u))).sum() for o, u in zip(outputs, upstream)).backward()
        results.append([*outputs, *(t.grad for t in tensors)])
    for ours_t in results[0]:
        assert ours_t.dtype == paddle.bfloat16  # outputs and gradients alike
    return [(a.astype("float32").numpy(), layout(b.numpy())) for a, b in zip(*results)]


def test_bf16_activation_ops_match_paddles_float32_ops_on_the_same_values(onednn_bf16) -> None:
    x, y = rounded((2, 32, 6, 7), 1), rounded((2, 32, 6, 7), 2)
    scale, shift = paddle.rand([32]) + 0.5, paddle.randn([32])
    norm = lambda t, b: BF16.batch_norm(t, scale, shift, 1e-5, b)[0]  # noqa: E731
    paddles_norm = lambda t: F.batch_norm(t, paddle.zeros([32]), paddle.ones([32]), scale, shift,  # noqa: E731
                                          training=True, epsilon=1e-5)
    cases = [(BF16.relu, F.relu, [x]), (BF16.gelu, F.gelu, [x]),
             (BF16.add_relu, lambda a, b: F.relu(a + b), [x, y]),
             (BF16.fork, lambda t: (t * 1, t * 1), [x]),  # two consumers: the gradient is the sum of theirs
             (lambda t: BF16.max_pool2x2(t, 0), lambda t: F.max_pool2d(t, 2), [np.maximum(x, 0)]),  # ties
             (lambda t: norm(t, 0), paddles_norm, [x * 3 + 1])]
    for ours, theirs, inputs in cases:
        for a, b in bf16_and_paddle(ours, theirs, inputs):
            np.testing.assert_allclose(a, b, rtol=2 ** -7, atol=2 ** -7 * np.abs(b).max())
    for ours, theirs, inputs in ((lambda t: BF16.max_pool2x2(t, BLOCK), lambda t: F.max_pool2d(t, 2), [x]),
                                 (lambda t: norm(t, BLOCK), paddles_norm, [x * 3 + 1])):  # the blocked layout
        for a, b in bf16_and_paddle(ours, theirs, inputs, blocked):
            np.testing.assert_allclose(a, b, rtol=2 ** -7, atol=2 ** -7 * np.abs(b).max())


def test_bf16_convs_hand_bfloat16_activations_on_when_blocked(onednn_bf16) -> None:
    x = rounded((2, 16, 10, 10), 3)
    w = paddle.to_tensor(rounded((32, 16, 3, 3), 4, 0.2), stop_gradient=False)
    for block in (BLOCK, 0):
        for dtype in ("float32", "bfloat16"):  # the first conv reads the images in float32
            t = paddle.to_tensor(as_laid_out(x, block)).astype(dtype)
            t.stop_gradient = False
            out = BF16.conv2d(t, w, 1, 1, block, block)
            expected = F.conv2d(paddle.to_tensor(x), w, padding=1).numpy()
            assert out.dtype == (paddle.bfloat16 if block else paddle.float32)  # NCHW stays float32
            np.testing.assert_allclose(out.astype("float32").numpy(), as_laid_out(expected, block), rtol=2 ** -7,
                                       atol=2 ** -6 * np.abs(expected).max())
            out.astype("float32").sum().backward()
            assert t.grad.dtype == t.dtype and w.grad.dtype == paddle.float32  # weights stay float32
            w.clear_gradient()


@pytest.mark.parametrize("model, options", MODELS, ids=str)
def test_bf16_activations_train_the_models_close_to_float32(onednn_bf16, model: str, options: dict) -> None:
    paddle.seed(8)
    x, y = paddle.rand([16, 1, 28, 28]), paddle.randint(0, 10, [16])
    results, seen = [], []
    for choice in (BF16, ONEDNN):
        paddle.seed(0)
        net = kernels.accelerate(build_model(model, **options), choice)
        hooks = [layer.register_forward_post_hook(lambda layer, inputs, out: seen.append((out.shape[1], out.dtype)))
                 for layer in net.sublayers() if isinstance(layer, nn.BatchNorm2D)]
        logits = net(x)
        F.cross_entropy(logits, y).backward()
        for hook in hooks:
            hook.remove()
        grads = {name: p.grad.numpy() for name, p in net.named_parameters() if p.grad is not None}
        results.append((logits.numpy(), grads))
    half = len(seen) // 2  # every norm whose channels fill blocks is bfloat16, the others float32
    assert [dtype for _, dtype in seen[:half]] == [paddle.bfloat16 if c % BLOCK == 0 else paddle.float32
                                                   for c, _ in seen[:half]]
    assert {dtype for _, dtype in seen[half:]} == {paddle.float32} and paddle.bfloat16 in dict(seen[:half]).values()
    (ours, our_grads), (theirs, their_grads) = results
    np.testing.assert_allclose(ours, theirs, atol=0.05 * np.abs(theirs).max())
    assert our_grads.keys() == their_grads.keys()
    for name, grad in their_grads.items():  # float32, and pointing the same way
        assert our_grads[name].dtype == np.float32 and np.isfinite(our_grads[name]).all()
        cosine = (our_grads[name] * grad).sum() / np.linalg.norm(our_grads[name]) / np.linalg.norm(grad)
        assert cosine > 0.9, name


# --- the processor: no oneDNN reference code anywhere, and the same numbers under an ISA cap ---------------
# ONEDNN_MAX_CPU_ISA makes oneDNN dispatch as on a lesser processor (AVX2: a Zen 3 or a laptop; AVX512_CORE: a
# cloud Xeon without bfloat16), and the runtime then treats the processor as that one: block, bfloat16, probe.
ISA_CAPS = {"AVX2": 0x7, "AVX512_CORE": 0x27}  # dnnl_cpu_isa_t values (oneapi/dnnl/dnnl_types.h)

# Two training steps, validation and prediction (exported, through paddle.inference) of every model the
# kernels run, at the run's precision (bfloat16 where native), printing the ISA and block at the end.
STEPS_OF_EVERY_MODEL = """
import numpy as np, paddle, paddle.nn.functional as F, tempfile
from pathlib import Path
from competition import checkpoint, kernels, predict, runtime
from competition.config import Config
from competition.models import build_model
for name, options in [("cnn", {}), ("airnet", {"width": 16}), ("resnet", {"width": 16, "depth": 1})]:
    ran = runtime.resolve(Config(model=name, conv="onednn", precision="bf16"), 1)
    net = kernels.accelerate(build_model(name, **options), runtime.apply(ran))
    optimizer = paddle.optimizer.Momentum(0.01, parameters=net.parameters())
    x, y = paddle.rand([16, 1, 28, 28]), paddle.randint(0, 10, [16])
    for _ in range(2):
        F.cross_entropy(net(x), y).backward()
        optimizer.step(), optimizer.clear_grad()
    net.eval()
    with paddle.no_grad():
        net(x)
    folder = Path(tempfile.mkdtemp())
    checkpoint.save_inference(build_model(name, **options), folder)
    predict.run_predictor(predict.load_predictor(folder), np.zeros((16, 784), np.uint8))
print("isa", kernels.isa_name(), "block", kernels.block_size(), "bf16", kernels.cpu_has_bf16())
"""


def under_cap(cap: str, *command: str, **env: str) -> subprocess.CompletedProcess:
    """`command` in a new process whose oneDNN is capped at `cap` ("native": as this process's)."""
    import os
    extra = {} if cap == "native" else {"ONEDNN_MAX_CPU_ISA": cap}
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600,
                          env={**os.environ, **extra, **env})


def skip_unless_below_this_processor(cap: str) -> None:
    if cap != "native" and kernels.cpu_isa() <= ISA_CAPS[cap]:
        pytest.skip(f"oneDNN dispatches to {kernels.isa_name()} here already: {cap} is what the native run tests")


@pytest.mark.parametrize("cap", ["native", *ISA_CAPS])
def test_training_validation_and_prediction_run_no_reference_code_isa_cap(onednn, cap: str) -> None:
    skip_unless_below_this_processor(cap)
    result = under_cap(cap, sys.executable, "-c", STEPS_OF_EVERY_MODEL, ONEDNN_VERBOSE="1")
    assert result.returncode == 0, result.stderr[-3000:]
    executed = [line for line in result.stdout.splitlines() if line.startswith("onednn_verbose") and ",exec," in line]
    kinds = {line.split(",")[5] for line in executed}
    assert {"convolution", "batch_normalization", "eltwise", "binary", "reorder"} <= kinds, kinds
    references = sorted({",".join(line.split(",")[5:9]) for line in executed if line.split(",")[6].startswith("ref")})
    assert not references, "oneDNN's reference code ran:\n" + "\n".join(references)
    isa, block, bf16 = result.stdout.split("isa ")[-1].split()[::2]
    assert int(block) == (8 if cap == "AVX2" else 16 if cap == "AVX512_CORE" else BLOCK)
    assert bf16 == ("False" if cap != "native" else str(kernels.cpu_has_bf16()))  # no bfloat16 under either cap
    blocked_convs = [line for line in executed if ",convolution," in line and f"aBcd{block}b" in line]
    assert blocked_convs, f"no convolution ran in nChw{block}c"


@pytest.mark.parametrize("cap", ISA_CAPS)
def test_the_kernel_tests_pass_under_isa_cap(cap: str) -> None:
    skip_unless_below_this_processor(cap)
    # -n 0: one process, inside a suite that already has a worker on every core
    result = under_cap(cap, sys.executable, "-m", "pytest", "-q", "-n", "0", "-p", "no:cacheprovider",
                       "-k", "not isa_cap", str(REPO / "tests" / "test_kernels.py"))
    assert result.returncode == 0, result.stdout[-3000:]
