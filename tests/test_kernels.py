"""The oneDNN conv kernel: same values and gradients as Paddle's conv; a clear fallback without it."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import paddle
import paddle.nn.functional as F
import pytest

from competition import checkpoint, kernels, predict, runtime
from competition.config import Config
from competition.errors import CompetitionError
from competition.models import BatchNorm2D, build_model

ONEDNN = kernels.CpuKernels()

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


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_values_and_gradients_match_paddles_conv(onednn, shape) -> None:
    n, c, size, out, k, stride, pad = shape
    paddle.seed(0)
    x = paddle.randn([n, c, size, size])
    w = paddle.randn([out, c, k, k])
    results, upstream = [], None
    for conv in (lambda: ONEDNN.conv2d(x, w, stride, pad), lambda: F.conv2d(x, w, stride=stride, padding=pad)):
        x.stop_gradient = w.stop_gradient = False
        y = conv()
        upstream = paddle.randn(y.shape) if upstream is None else upstream  # not all ones, same for both
        (y * upstream).sum().backward()
        results.append([y.numpy(), x.grad.numpy(), w.grad.numpy()])
        x.clear_gradient(), w.clear_gradient()
    for ours, theirs in zip(*results):
        np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-4)


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


# resnet width 8 keeps every activation in NCHW (no whole block of 16 channels); the others train in
# the blocked layout from their first conv on, through every kind of layer that reads channels.
MODELS = [("cnn", {}), ("resnet", {"width": 8, "depth": 1}), ("resnet", {"width": 16, "depth": 1}),
          ("airnet", {"width": 16})]


@pytest.mark.parametrize("model, options", MODELS, ids=str)
def test_models_train_the_same_either_way(model: str, options: dict) -> None:
    paddle.set_device("cpu")
    x = paddle.rand([8, 1, 28, 28])
    y = paddle.randint(0, 10, [8])
    results = []
    for choice in (ONEDNN, kernels.CpuKernels(blocked=False), None):
        paddle.seed(0)
        net = build_model(model, choice, **options)
        loss = F.cross_entropy(net(x), y)
        loss.backward()
        grads = {name: p.grad.numpy() for name, p in net.named_parameters() if not p.stop_gradient}
        statistics = {name: value.numpy() for name, value in net.state_dict().items()
                      if name.endswith(("_mean", "_variance"))}
        results.append((float(loss), grads, statistics))
    for loss, grads, statistics in results[1:]:
        assert loss == pytest.approx(results[0][0], rel=1e-5)
        assert grads.keys() == results[0][1].keys() and statistics.keys() == results[0][2].keys()
        for name in grads:
            np.testing.assert_allclose(results[0][1][name], grads[name], rtol=1e-3, atol=1e-4, err_msg=name)
        for name in statistics:  # the running statistics moved as Paddle's BatchNorm moves them
            np.testing.assert_allclose(results[0][2][name], statistics[name], rtol=1e-5, atol=1e-6, err_msg=name)


def blocked(x: np.ndarray) -> np.ndarray:
    """NCHW as oneDNN's nChw16c (channels in blocks of 16, innermost), in an array of the same shape."""
    n, c, h, w = x.shape
    return np.ascontiguousarray(x.reshape(n, c // 16, 16, h, w).transpose(0, 1, 3, 4, 2)).reshape(x.shape)


@pytest.mark.parametrize("shape", [(2, 32, 28, 28), (3, 16, 13, 9)], ids=str)
def test_blocked_pooling_and_norm_match_paddles_on_the_same_values(onednn, shape) -> None:
    paddle.seed(2)
    x = paddle.randn(shape) * 3 + 1
    scale, shift = paddle.rand([shape[1]]) + 0.5, paddle.randn([shape[1]])
    ops = [(lambda t, b: ONEDNN.max_pool2x2(t, b), lambda t: F.max_pool2d(t, 2)),
           (lambda t, b: ONEDNN.batch_norm(t, scale, shift, 1e-5, b)[0],
            lambda t: F.batch_norm(t, paddle.zeros([shape[1]]), paddle.ones([shape[1]]), scale, shift,
                                   training=True, epsilon=1e-5))]
    for ours, paddles in ops:
        results, upstream = [], paddle.randn(paddles(x).shape)
        for run, layout in ((lambda t: ours(t, True), blocked), (lambda t: ours(t, False), lambda a: a),
                            (paddles, lambda a: a)):
            t = paddle.to_tensor(layout(x.numpy()), stop_gradient=False)
            y = run(t)
            (y * paddle.to_tensor(layout(upstream.numpy()))).sum().backward()
            results.append([y.numpy(), t.grad.numpy()])
        for a, b in zip(results[0], results[2]):
            np.testing.assert_allclose(a, blocked(b), rtol=1e-4, atol=1e-4)
        for a, b in zip(results[1], results[2]):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_norm_returns_the_batch_mean_and_biased_variance(onednn) -> None:
    values = np.random.default_rng(5).normal(3, 2, (4, 32, 5, 5)).astype(np.float32)
    for layout, is_blocked in ((blocked, True), (lambda a: a, False)):
        x = paddle.to_tensor(layout(values))
        _, mean, variance = ONEDNN.batch_norm(x, paddle.ones([32]), paddle.zeros([32]), 1e-5, is_blocked)
        np.testing.assert_allclose(mean.numpy(), values.mean((0, 2, 3)), rtol=1e-5)  # one per channel
        np.testing.assert_allclose(variance.numpy(), values.var((0, 2, 3)), rtol=1e-4)


def test_to_plain_turns_blocked_values_back_and_its_gradient_forth(onednn) -> None:
    x = np.random.default_rng(3).standard_normal((2, 32, 6, 7)).astype(np.float32)
    t = paddle.to_tensor(blocked(x), stop_gradient=False)
    upstream = np.random.default_rng(4).standard_normal(x.shape).astype(np.float32)
    out = ONEDNN.to_plain(t)
    (out * paddle.to_tensor(upstream)).sum().backward()
    np.testing.assert_array_equal(out.numpy(), x)
    np.testing.assert_array_equal(t.grad.numpy(), blocked(upstream))
    odd = paddle.randn([2, 8, 3, 3])  # no whole block of 16 channels: never blocked, left as it is
    assert ONEDNN.to_plain(odd) is odd


def test_blocked_evaluation_norm_uses_the_running_statistics_as_paddles(onednn) -> None:
    rng = np.random.default_rng(6)
    values = rng.normal(1, 3, (3, 32, 7, 5)).astype(np.float32)
    scale, shift, mean = (paddle.to_tensor(rng.normal(1, 0.3, 32).astype(np.float32)) for _ in range(3))
    variance = paddle.to_tensor(rng.uniform(0.5, 2, 32).astype(np.float32))
    theirs = F.batch_norm(paddle.to_tensor(values), mean, variance, scale, shift, training=False, epsilon=1e-5)
    for layout, is_blocked in ((blocked, True), (lambda a: a, False)):
        ours = ONEDNN.batch_norm_infer(paddle.to_tensor(layout(values)), scale, shift, mean, variance, 1e-5, is_blocked)
        np.testing.assert_allclose(ours.numpy(), layout(theirs.numpy()), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("choice", ["fp32", "bf16"])
@pytest.mark.parametrize("model, options", [("resnet", {"width": 16, "depth": 1}), ("airnet", {"width": 16})], ids=str)
def test_evaluation_and_no_grad_match_paddles_ops(onednn, model: str, options: dict, choice: str) -> None:
    paddle.seed(0)  # bf16 trains in bfloat16, but validation and no_grad calls stay float32
    net = build_model(model, ONEDNN if choice == "fp32" else kernels.CpuKernels(bf16=True, bf16_activations=True),
                      **options)
    reference = build_model(model, None, **options)
    reference.set_state_dict(net.state_dict())
    x = paddle.rand([4, 1, 28, 28])
    for mode in ("train", "eval"):  # train first: running statistics that are not the initial ones
        getattr(net, mode)(), getattr(reference, mode)()
        with paddle.no_grad():
            np.testing.assert_allclose(net(x).numpy(), reference(x).numpy(), rtol=1e-4, atol=1e-5)
    for name, value in reference.state_dict().items():  # both moved their running statistics alike
        np.testing.assert_allclose(net.state_dict()[name].numpy(), value.numpy(), rtol=1e-5, atol=1e-6, err_msg=name)


def test_kernel_norm_refuses_what_its_kernels_cannot_run(onednn) -> None:
    with pytest.raises(ValueError, match="scale, a shift"):
        BatchNorm2D(16, weight_attr=False, kernels=ONEDNN)
    with pytest.raises(ValueError, match="default statistics"):
        BatchNorm2D(16, use_global_stats=True, kernels=ONEDNN)
    BatchNorm2D(16, weight_attr=False)  # without kernels it is Paddle's layer


@pytest.mark.parametrize("model, options", [("cnn", {"hidden": 32}), ("resnet", {"width": 8, "depth": 1})])
def test_export_uses_paddles_ops_and_agrees_with_the_kernels(onednn, tmp_path, model: str, options: dict) -> None:
    images = np.random.default_rng(0).integers(0, 256, (64, 784), dtype=np.uint8)
    net = build_model(model, ONEDNN, **options)
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


def test_models_built_without_kernels_run_paddles_ops(onednn, monkeypatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("kernels.cc was called")

    monkeypatch.setattr(kernels.CpuKernels, "conv2d", refuse)
    monkeypatch.setattr(kernels.CpuKernels, "max_pool2x2", refuse)
    x = paddle.rand([2, 1, 28, 28])
    build_model("cnn")(x)  # no kernels given: Paddle's conv and pooling
    with pytest.raises(AssertionError, match="kernels.cc was called"):
        build_model("cnn", kernels.CpuKernels())(x)


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
        pytest.skip("this CPU has no native bfloat16 arithmetic")
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
             (lambda t: BF16.max_pool2x2(t, False), lambda t: F.max_pool2d(t, 2), [np.maximum(x, 0)]),  # ties
             (lambda t: norm(t, False), paddles_norm, [x * 3 + 1])]
    for ours, theirs, inputs in cases:
        for a, b in bf16_and_paddle(ours, theirs, inputs):
            np.testing.assert_allclose(a, b, rtol=2 ** -7, atol=2 ** -7 * np.abs(b).max())
    for ours, theirs, inputs in ((lambda t: BF16.max_pool2x2(t, True), lambda t: F.max_pool2d(t, 2), [x]),
                                 (lambda t: norm(t, True), paddles_norm, [x * 3 + 1])):  # the blocked layout
        for a, b in bf16_and_paddle(ours, theirs, inputs, blocked):
            np.testing.assert_allclose(a, b, rtol=2 ** -7, atol=2 ** -7 * np.abs(b).max())


def test_bf16_convs_hand_bfloat16_activations_on_when_blocked(onednn_bf16) -> None:
    x = rounded((2, 16, 10, 10), 3)
    w = paddle.to_tensor(rounded((32, 16, 3, 3), 4, 0.2), stop_gradient=False)
    for layout, is_blocked in ((blocked, True), (lambda a: a, False)):
        for dtype in ("float32", "bfloat16"):  # the first conv reads the images in float32
            t = paddle.to_tensor(layout(x)).astype(dtype)
            t.stop_gradient = False
            out = BF16.conv2d(t, w, 1, 1, is_blocked)
            expected = F.conv2d(paddle.to_tensor(x), w, padding=1).numpy()
            assert out.dtype == (paddle.bfloat16 if is_blocked else paddle.float32)  # NCHW stays float32
            np.testing.assert_allclose(out.astype("float32").numpy(), layout(expected), rtol=2 ** -7,
                                       atol=2 ** -6 * np.abs(expected).max())
            out.astype("float32").sum().backward()
            assert t.grad.dtype == t.dtype and w.grad.dtype == paddle.float32  # weights stay float32
            w.clear_gradient()


@pytest.mark.parametrize("model, options", MODELS, ids=str)
def test_bf16_activations_train_the_models_close_to_float32(onednn_bf16, model: str, options: dict) -> None:
    x, y = paddle.rand([16, 1, 28, 28]), paddle.randint(0, 10, [16])
    results, seen = [], []
    for choice in (BF16, ONEDNN):
        paddle.seed(0)
        net = build_model(model, choice, **options)
        hooks = [layer.register_forward_post_hook(lambda layer, inputs, out: seen.append((out.shape[1], out.dtype)))
                 for layer in net.sublayers() if isinstance(layer, BatchNorm2D)]
        logits = net(x)
        F.cross_entropy(logits, y).backward()
        for hook in hooks:
            hook.remove()
        grads = {name: p.grad.numpy() for name, p in net.named_parameters() if p.grad is not None}
        results.append((logits.numpy(), grads))
    half = len(seen) // 2  # every norm whose channels fill blocks of 16 is bfloat16, the others float32
    assert [dtype for _, dtype in seen[:half]] == [paddle.bfloat16 if c % 16 == 0 else paddle.float32
                                                   for c, _ in seen[:half]]
    assert {dtype for _, dtype in seen[half:]} == {paddle.float32} and paddle.bfloat16 in dict(seen[:half]).values()
    (ours, our_grads), (theirs, their_grads) = results
    np.testing.assert_allclose(ours, theirs, atol=0.05 * np.abs(theirs).max())
    assert our_grads.keys() == their_grads.keys()
    for name, grad in their_grads.items():  # float32, and pointing the same way
        assert our_grads[name].dtype == np.float32 and np.isfinite(our_grads[name]).all()
        cosine = (our_grads[name] * grad).sum() / np.linalg.norm(our_grads[name]) / np.linalg.norm(grad)
        assert cosine > 0.9, name
