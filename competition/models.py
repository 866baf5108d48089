"""Model registry: a plain dict of builder functions returning paddle.nn layers."""
from __future__ import annotations

import inspect
from typing import Callable, Optional

import numpy as np
import paddle
from paddle import nn

from .errors import CompetitionError
from .kernels import CpuKernels

N_CLASSES = 10


def _kernel_input(x: paddle.Tensor) -> bool:
    """Whether kernels.cc may take `x`: dynamic mode, a float32 (or the kernels' bfloat16) NCHW tensor on the CPU."""
    return (paddle.in_dynamic_mode() and x.place.is_cpu_place() and x.dtype in (paddle.float32, paddle.bfloat16)
            and x.ndim == 4)


def _bf16(x: paddle.Tensor) -> bool:
    """Whether `x` is one of the kernels' bfloat16 training activations (CpuKernels.bf16_activations)."""
    return paddle.in_dynamic_mode() and x.dtype == paddle.bfloat16


def _blocked(layer: nn.Layer, x: paddle.Tensor) -> bool:
    """Whether `layer` runs in the kernels' blocked layout (CpuKernels.blocked). Every layer of a model
    decides alike (same kernels, dynamic mode on the CPU), so activations stay blocked between them."""
    kernels: Optional[CpuKernels] = getattr(layer, "_kernels", None)
    return kernels is not None and kernels.blocked and _kernel_input(x)


def _as_plain(layer: nn.Layer, x: paddle.Tensor) -> paddle.Tensor:
    """`x` in NCHW for a Paddle op that reads channels: a blocked training activation is turned back."""
    return layer._kernels.to_plain(x) if _blocked(layer, x) else x


class Conv2D(nn.Conv2D):
    """paddle.nn.Conv2D whose CPU training runs the oneDNN kernel when built with `kernels`.

    Same parameters and checkpoints; exported and GPU graphs use Paddle's own conv.
    """

    def __init__(self, *args: object, kernels: Optional[CpuKernels] = None, **kwargs: object):
        super().__init__(*args, **kwargs)
        stride, padding = self._stride, self._updated_padding
        self._kernels = kernels
        self._onednn = (kernels is not None and self.bias is None and self._groups == 1 and self._dilation == [1, 1]
                        and self._data_format == "NCHW" and self._padding_mode == "zeros"
                        and self._padding_algorithm == "EXPLICIT"
                        and stride[0] == stride[1] and len(padding) == 2 and padding[0] == padding[1])

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        """The convolution; through oneDNN in dynamic mode on the CPU when enabled."""
        if self._onednn and _kernel_input(x):
            return self._kernels.conv2d(x, self.weight, self._stride[0], self._updated_padding[0], _blocked(self, x))
        return super().forward(x)


class MaxPool2D(nn.MaxPool2D):
    """paddle.nn.MaxPool2D; 2x2/stride-2 pooling trains through `kernels` when built with them."""

    def __init__(self, *args: object, kernels: Optional[CpuKernels] = None, **kwargs: object):
        super().__init__(*args, **kwargs)
        self._kernels = kernels
        self._plain = (kernels is not None and self.ksize in (2, [2, 2]) and self.stride in (None, 2, [2, 2])
                       and self.padding in (0, [0, 0]) and not self.ceil_mode and not self.return_mask
                       and self.data_format == "NCHW")

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        """The pooling; through the kernel in dynamic mode on the CPU when enabled."""
        if self._plain and _kernel_input(x):
            return self._kernels.max_pool2x2(x, _blocked(self, x))
        return super().forward(_as_plain(self, x))


class BatchNorm2D(nn.BatchNorm2D):
    """paddle.nn.BatchNorm2D that runs through the kernels' batch norms in their blocked layout.

    Same parameters, running statistics and checkpoints; exports run Paddle's op.
    """

    def __init__(self, *args: object, kernels: Optional[CpuKernels] = None, **kwargs: object):
        super().__init__(*args, **kwargs)
        self._kernels = kernels
        # Paddle's op cannot read the blocked layout, so no input may fall back to it.
        if kernels is not None and (self.weight is None or self.bias is None or self._use_global_stats is not None
                                    or self._data_format != "NCHW"):
            raise ValueError("the kernels' BatchNorm2D needs a scale, a shift, NCHW and the default statistics")

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        """Normalize by the batch's statistics in training (folded into the running ones as Paddle's op
        does), by the running ones in evaluation."""
        if not _blocked(self, x):
            return super().forward(x)
        if not self.training:  # evaluation: by the running statistics, as Paddle's op in eval mode
            return self._kernels.batch_norm_infer(x, self.weight, self.bias, self._mean, self._variance,
                                                  self._epsilon, True)
        out, mean, variance = self._kernels.batch_norm(x, self.weight, self.bias, self._epsilon, True)
        with paddle.no_grad():
            # Paddle's momentum is the share of the old statistics kept; its variance is the biased one.
            paddle.assign(self._mean * self._momentum + mean * (1 - self._momentum), self._mean)
            paddle.assign(self._variance * self._momentum + variance * (1 - self._momentum), self._variance)
        return out


class ReLU(nn.ReLU):
    """paddle.nn.ReLU that also takes the kernels' bfloat16 training activations."""

    def __init__(self, kernels: Optional[CpuKernels] = None):
        super().__init__()
        self._kernels = kernels

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        """max(x, 0)."""
        return self._kernels.relu(x) if _bf16(x) else super().forward(x)


class GELU(nn.GELU):
    """paddle.nn.GELU (erf) that also takes the kernels' bfloat16 training activations."""

    def __init__(self, kernels: Optional[CpuKernels] = None):
        super().__init__()
        self._kernels = kernels

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        """x * Phi(x)."""
        return self._kernels.gelu(x) if _bf16(x) else super().forward(x)


# AdaptiveAvgPool2D and Flatten repeat each other on purpose: one mixin for both broke paddle.jit.save,
# whose dy2static rewrite of forward() turned its super() call into endless recursion.
class AdaptiveAvgPool2D(nn.AdaptiveAvgPool2D):
    """paddle.nn.AdaptiveAvgPool2D that reads the kernels' blocked training activations."""

    def __init__(self, *args: object, kernels: Optional[CpuKernels] = None, **kwargs: object):
        super().__init__(*args, **kwargs)
        self._kernels = kernels

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        """The pooling, on NCHW."""
        return super().forward(_as_plain(self, x))


class Flatten(nn.Flatten):
    """paddle.nn.Flatten that reads the kernels' blocked training activations."""

    def __init__(self, *args: object, kernels: Optional[CpuKernels] = None, **kwargs: object):
        super().__init__(*args, **kwargs)
        self._kernels = kernels

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        """The flattening, of NCHW."""
        return super().forward(_as_plain(self, x))


def build_fc() -> nn.Layer:
    """The reference notebook's fully connected net: 784-128-10, 101,770 parameters."""
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(784, 128),
        nn.LeakyReLU(),
        nn.Linear(128, N_CLASSES),
    )


def build_conv() -> nn.Layer:
    """The reference notebook's two-conv net: 25,290 parameters."""
    return nn.Sequential(
        nn.Conv2D(1, 10, 5),
        nn.ReLU(),
        nn.Conv2D(10, 20, 5),
        nn.ReLU(),
        nn.MaxPool2D(2),
        nn.Flatten(),
        nn.Linear(2000, N_CLASSES),
    )


def build_cnn(width: int = 16, hidden: int = 0, kernels: Optional[CpuKernels] = None) -> nn.Layer:
    """The PyTorch reference's three conv+BN layers (91.89% there after 70 epochs).

    `width` channels in the first conv (then 2x, 4x; 16 is the reference) and, when
    `hidden` > 0, a hidden fully connected layer of that size before the classifier.
    """
    _check_sizes("cnn", width=width, hidden=(hidden, 0))

    def block(c_in: int, c_out: int, k: int, pad: int = 0) -> list[nn.Layer]:
        # BatchNorm's shift makes a conv bias redundant; dropping it saves ~29% of a CPU step.
        return [Conv2D(c_in, c_out, k, padding=pad, bias_attr=False, kernels=kernels),
                BatchNorm2D(c_out, kernels=kernels), ReLU(kernels)]

    # A hidden layer is cheap capacity on a CPU: 1600x256 multiply-adds next to the convs' 2.8M.
    head = [nn.Linear(100 * width, hidden), nn.ReLU(), nn.Linear(hidden, N_CLASSES)] if hidden else \
        [nn.Linear(100 * width, N_CLASSES)]
    return nn.Sequential(
        *block(1, width, 5, pad=2),
        MaxPool2D(2, kernels=kernels),
        *block(width, 2 * width, 3),
        *block(2 * width, 4 * width, 3),
        MaxPool2D(2, kernels=kernels),
        Flatten(kernels=kernels),
        *head,
    )


def _check_sizes(model: str, **sizes: object) -> None:
    """Each size must be a whole number of at least 1 (or the given (value, minimum))."""
    for option, spec in sizes.items():
        value, least = spec if isinstance(spec, tuple) else (spec, 1)
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise CompetitionError(f"{model} {option} must be a whole number of at least {least}, got {value!r}.")


class BasicBlock(nn.Layer):
    """Two 3x3 conv+BN layers added to a shortcut: identity, or a 1x1 projection when the shape changes."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1, kernels: Optional[CpuKernels] = None):
        super().__init__()
        self.conv1 = Conv2D(c_in, c_out, 3, stride=stride, padding=1, bias_attr=False, kernels=kernels)
        self.bn1 = BatchNorm2D(c_out, kernels=kernels)
        self.conv2 = Conv2D(c_out, c_out, 3, padding=1, bias_attr=False, kernels=kernels)
        self.bn2 = BatchNorm2D(c_out, kernels=kernels)
        self.relu = ReLU(kernels)
        self._kernels = kernels
        # Identity as a layer, not an `if` in forward(): the graph stays the same for paddle.jit.save.
        self.shortcut: nn.Layer = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(Conv2D(c_in, c_out, 1, stride=stride, bias_attr=False, kernels=kernels),
                                          BatchNorm2D(c_out, kernels=kernels))

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        """relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))."""
        # The kernels' bfloat16 activations take their own fork and add: Paddle's take no bfloat16.
        x_body, x_short = self._kernels.fork(x) if _bf16(x) else (x, x)
        body = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x_body)))))
        shortcut = self.shortcut(x_short)
        if _bf16(body):
            return self._kernels.add_relu(body, shortcut)
        return self.relu(body + shortcut)


def build_resnet(width: int = 32, depth: int = 2, kernels: Optional[CpuKernels] = None) -> nn.Layer:
    """A small ResNet for 28x28 images: stages of `depth` blocks, width/2w/4w channels at 28/14/7 pixels."""
    _check_sizes("resnet", width=width, depth=depth)
    # No conv bias anywhere: each conv feeds a BatchNorm, whose shift replaces it.
    layers: list[nn.Layer] = [Conv2D(1, width, 3, padding=1, bias_attr=False, kernels=kernels),
                              BatchNorm2D(width, kernels=kernels), ReLU(kernels)]
    c_in = width
    for stage, c_out in enumerate((width, 2 * width, 4 * width)):
        for block in range(depth):
            stride = 2 if stage > 0 and block == 0 else 1
            layers.append(BasicBlock(c_in, c_out, stride, kernels))
            c_in = c_out
    layers += [AdaptiveAvgPool2D(1, kernels=kernels), nn.Flatten(), nn.Linear(c_in, N_CLASSES)]
    return nn.Sequential(*layers)


class Whitening(nn.Conv2D):
    """A fixed first convolution that whitens 2x2 patches (airbench): the training images' patch PCA.

    Filters are each eigenvector scaled by 1/sqrt(its eigenvalue), and its negative, so a GELU after
    it loses nothing; they are set by fit() before training and never learned (the bias is).
    """

    def __init__(self, patch: int = 2):
        super().__init__(1, 2 * patch * patch, patch)
        self.weight.stop_gradient = True

    def fit(self, images: np.ndarray, eps: float = 5e-4) -> None:
        """Set the filters from float images [N, 1, 28, 28] (airbench takes 5,000 rows)."""
        k = self._kernel_size[0]
        windows = np.lib.stride_tricks.sliding_window_view(images[:, 0], (k, k), axis=(1, 2))
        patches = windows.reshape(-1, k * k).astype(np.float64)
        values, vectors = np.linalg.eigh(patches.T @ patches / len(patches))
        filters = (vectors / np.sqrt(values + eps)).T[::-1].reshape(k * k, 1, k, k)  # largest first
        self.weight.set_value(np.concatenate([filters, -filters]).astype(np.float32))


class Scale(nn.Layer):
    """Multiply by a constant (airbench's 1/9 on the logits)."""

    def __init__(self, factor: float):
        super().__init__()
        self.factor = factor

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        """x * factor."""
        return x * self.factor


def _identity_init(conv: nn.Conv2D) -> None:
    """The first c_in filters pass their input channel through (torch.nn.init.dirac_, as airbench)."""
    weight = conv.weight.numpy()
    c_out, c_in, k, _ = weight.shape
    for c in range(min(c_out, c_in)):
        weight[c] = 0.0
        weight[c, c, k // 2, k // 2] = 1.0
    conv.weight.set_value(weight)


def build_airnet(width: int = 64, kernels: Optional[CpuKernels] = None) -> nn.Layer:
    """airbench94's net for 28x28 grayscale: a fixed 2x2 whitening conv, then three groups of
    conv-pool-BN-GELU-conv-BN-GELU at width/4w/4w channels (27, 13, 6 pixels), max-pool, linear/9.

    BatchNorm has no learned scale (only a shift) and keeps 40% of its running statistics per step.
    """
    _check_sizes("airnet", width=width)

    def group(c_in: int, c_out: int) -> list[nn.Layer]:
        first = Conv2D(c_in, c_out, 3, padding=1, bias_attr=False, kernels=kernels)
        second = Conv2D(c_out, c_out, 3, padding=1, bias_attr=False, kernels=kernels)
        _identity_init(first), _identity_init(second)
        return [first, MaxPool2D(2, kernels=kernels), _norm(c_out, kernels), GELU(kernels), second,
                _norm(c_out, kernels), GELU(kernels)]

    return nn.Sequential(Whitening(), nn.GELU(), *group(8, width), *group(width, 4 * width),
                         *group(4 * width, 4 * width), MaxPool2D(3, kernels=kernels), nn.Flatten(),
                         nn.Linear(4 * width, N_CLASSES, bias_attr=False), Scale(1 / 9))


def _norm(channels: int, kernels: Optional[CpuKernels]) -> BatchNorm2D:
    # Paddle's momentum is the share of the old statistics kept (PyTorch's 0.6 is Paddle's 0.4).
    # The scale stays 1 through a learning rate of 0. Not weight_attr=False: paddle.jit.save cannot export a
    # BatchNorm without a scale; not trainable=False: Paddle 3.3 then computes no gradient for the shift either.
    return BatchNorm2D(channels, momentum=0.4, epsilon=1e-12, weight_attr=paddle.ParamAttr(learning_rate=0.0),
                       kernels=kernels)


def fit_to_data(model: nn.Layer, images: np.ndarray) -> None:
    """Set the layers whose weights come from the training images (Whitening) before training starts."""
    for layer in model.sublayers(include_self=True):
        if isinstance(layer, Whitening):
            layer.fit(images)


MODELS: dict[str, Callable[..., nn.Layer]] = {
    "fc": build_fc,
    "conv": build_conv,
    "cnn": build_cnn,
    "resnet": build_resnet,
    "airnet": build_airnet,
}


def model_options(name: str) -> list[str]:
    """The size options a registered model's builder takes (not `kernels`), in signature order."""
    return [option for option in inspect.signature(MODELS[name]).parameters if option != "kernels"]


def build_model(name: str, kernels: Optional[CpuKernels] = None, **options: object) -> nn.Layer:
    """Instantiate a registered model by name; options go to its builder (e.g. resnet's width, depth).

    `kernels` (from the run's runtime) puts the compiled CPU kernels into the layers that can use them.
    """
    if name not in MODELS:
        raise CompetitionError(f"unknown model '{name}'; expected one of {', '.join(MODELS)}.")
    unknown = [option for option in options if option not in model_options(name)]
    if unknown:
        takers = [f"{other} takes {', '.join(model_options(other))}" for other in MODELS if model_options(other)]
        listed = ", ".join(f"'{option}'" for option in unknown)
        raise CompetitionError(f"model '{name}' takes no option {listed}; "
                               f"{'; '.join(takers) or 'no model takes options'}.")
    if kernels is not None and "kernels" in inspect.signature(MODELS[name]).parameters:
        options["kernels"] = kernels
    return MODELS[name](**options)


def learned(param: paddle.Tensor) -> bool:
    """Whether training changes a parameter: not frozen by stop_gradient or by a learning rate of 0."""
    return not param.stop_gradient and param.optimize_attr.get("learning_rate", 1.0) != 0


def count_parameters(model: nn.Layer) -> int:
    """Number of trained parameters."""
    return sum(int(p.size) for p in model.parameters() if learned(p))
