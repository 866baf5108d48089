"""Model registry: a plain dict of builder functions returning paddle.nn layers."""
from __future__ import annotations

import inspect
from typing import Callable, Optional

import paddle
from paddle import nn

from .errors import CompetitionError
from .kernels import CpuKernels

N_CLASSES = 10


def _kernel_input(x: paddle.Tensor) -> bool:
    """Whether kernels.cc may take `x`: dynamic mode, a float32 NCHW tensor on the CPU."""
    return paddle.in_dynamic_mode() and x.place.is_cpu_place() and x.dtype == paddle.float32 and x.ndim == 4


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
            return self._kernels.conv2d(x, self.weight, self._stride[0], self._updated_padding[0])
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
            return self._kernels.max_pool2x2(x)
        return super().forward(x)


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
        return [Conv2D(c_in, c_out, k, padding=pad, bias_attr=False, kernels=kernels), nn.BatchNorm2D(c_out),
                nn.ReLU()]

    # A hidden layer is cheap capacity on a CPU: 1600x256 multiply-adds next to the convs' 2.8M.
    head = [nn.Linear(100 * width, hidden), nn.ReLU(), nn.Linear(hidden, N_CLASSES)] if hidden else \
        [nn.Linear(100 * width, N_CLASSES)]
    return nn.Sequential(
        *block(1, width, 5, pad=2),
        MaxPool2D(2, kernels=kernels),
        *block(width, 2 * width, 3),
        *block(2 * width, 4 * width, 3),
        MaxPool2D(2, kernels=kernels),
        nn.Flatten(),
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
        self.bn1 = nn.BatchNorm2D(c_out)
        self.conv2 = Conv2D(c_out, c_out, 3, padding=1, bias_attr=False, kernels=kernels)
        self.bn2 = nn.BatchNorm2D(c_out)
        self.relu = nn.ReLU()
        # Identity as a layer, not an `if` in forward(): the graph stays the same for paddle.jit.save.
        self.shortcut: nn.Layer = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(Conv2D(c_in, c_out, 1, stride=stride, bias_attr=False, kernels=kernels),
                                          nn.BatchNorm2D(c_out))

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        """relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))."""
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


def build_resnet(width: int = 32, depth: int = 2, kernels: Optional[CpuKernels] = None) -> nn.Layer:
    """A small ResNet for 28x28 images: stages of `depth` blocks, width/2w/4w channels at 28/14/7 pixels."""
    _check_sizes("resnet", width=width, depth=depth)
    # No conv bias anywhere: each conv feeds a BatchNorm, whose shift replaces it.
    layers: list[nn.Layer] = [Conv2D(1, width, 3, padding=1, bias_attr=False, kernels=kernels),
                              nn.BatchNorm2D(width), nn.ReLU()]
    c_in = width
    for stage, c_out in enumerate((width, 2 * width, 4 * width)):
        for block in range(depth):
            stride = 2 if stage > 0 and block == 0 else 1
            layers.append(BasicBlock(c_in, c_out, stride, kernels))
            c_in = c_out
    layers += [nn.AdaptiveAvgPool2D(1), nn.Flatten(), nn.Linear(c_in, N_CLASSES)]
    return nn.Sequential(*layers)


MODELS: dict[str, Callable[..., nn.Layer]] = {
    "fc": build_fc,
    "conv": build_conv,
    "cnn": build_cnn,
    "resnet": build_resnet,
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


def count_parameters(model: nn.Layer) -> int:
    """Number of trainable parameters."""
    return sum(int(p.size) for p in model.parameters() if not p.stop_gradient)
