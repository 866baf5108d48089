"""Model registry: a plain dict of builder functions returning paddle.nn layers."""
from __future__ import annotations

import inspect
from typing import Callable

import numpy as np
import paddle
from paddle import nn

from .errors import CompetitionError

N_CLASSES = 10


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


def build_cnn(width: int = 16, hidden: int = 0) -> nn.Layer:
    """The PyTorch reference's three conv+BN layers (91.89% there after 70 epochs).

    `width` channels in the first conv (then 2x, 4x; 16 is the reference) and, when
    `hidden` > 0, a hidden fully connected layer of that size before the classifier.
    """
    _check_sizes("cnn", width=width, hidden=(hidden, 0))

    def block(c_in: int, c_out: int, k: int, pad: int = 0) -> list[nn.Layer]:
        # BatchNorm's shift makes a conv bias redundant; dropping it saves ~29% of a CPU step.
        return [nn.Conv2D(c_in, c_out, k, padding=pad, bias_attr=False), nn.BatchNorm2D(c_out), nn.ReLU()]

    # A hidden layer is cheap capacity on a CPU: 1600x256 multiply-adds next to the convs' 2.8M.
    head = [nn.Linear(100 * width, hidden), nn.ReLU(), nn.Linear(hidden, N_CLASSES)] if hidden else \
        [nn.Linear(100 * width, N_CLASSES)]
    return nn.Sequential(
        *block(1, width, 5, pad=2),
        nn.MaxPool2D(2),
        *block(width, 2 * width, 3),
        *block(2 * width, 4 * width, 3),
        nn.MaxPool2D(2),
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

    def __init__(self, c_in: int, c_out: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2D(c_in, c_out, 3, stride=stride, padding=1, bias_attr=False)
        self.bn1 = nn.BatchNorm2D(c_out)
        self.conv2 = nn.Conv2D(c_out, c_out, 3, padding=1, bias_attr=False)
        self.bn2 = nn.BatchNorm2D(c_out)
        self.relu = nn.ReLU()
        # Identity as a layer, not an `if` in forward(): the graph stays the same for paddle.jit.save.
        self.shortcut: nn.Layer = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2D(c_in, c_out, 1, stride=stride, bias_attr=False),
                                          nn.BatchNorm2D(c_out))

    def residual(self, x: paddle.Tensor) -> paddle.Tensor:
        """bn2(conv2(relu(bn1(conv1(x))))): what the block adds to its shortcut."""
        return self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        """relu(residual(x) + shortcut(x))."""
        return self.relu(self.residual(x) + self.shortcut(x))


def build_resnet(width: int = 32, depth: int = 2) -> nn.Layer:
    """A small ResNet for 28x28 images: stages of `depth` blocks, width/2w/4w channels at 28/14/7 pixels."""
    _check_sizes("resnet", width=width, depth=depth)
    # No conv bias anywhere: each conv feeds a BatchNorm, whose shift replaces it.
    layers: list[nn.Layer] = [nn.Conv2D(1, width, 3, padding=1, bias_attr=False), nn.BatchNorm2D(width), nn.ReLU()]
    c_in = width
    for stage, c_out in enumerate((width, 2 * width, 4 * width)):
        for block in range(depth):
            stride = 2 if stage > 0 and block == 0 else 1
            layers.append(BasicBlock(c_in, c_out, stride))
            c_in = c_out
    layers += [nn.AdaptiveAvgPool2D(1), nn.Flatten(), nn.Linear(c_in, N_CLASSES)]
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


def build_airnet(width: int = 64) -> nn.Layer:
    """airbench94's net for 28x28 grayscale: a fixed 2x2 whitening conv, then three groups of
    conv-pool-BN-GELU-conv-BN-GELU at width/4w/4w channels (27, 13, 6 pixels), max-pool, linear/9.

    BatchNorm has no learned scale (only a shift) and keeps 40% of its running statistics per step.
    """
    _check_sizes("airnet", width=width)

    def group(c_in: int, c_out: int) -> list[nn.Layer]:
        first = nn.Conv2D(c_in, c_out, 3, padding=1, bias_attr=False)
        second = nn.Conv2D(c_out, c_out, 3, padding=1, bias_attr=False)
        _identity_init(first), _identity_init(second)
        return [first, nn.MaxPool2D(2), _norm(c_out), nn.GELU(), second, _norm(c_out), nn.GELU()]

    return nn.Sequential(Whitening(), nn.GELU(), *group(8, width), *group(width, 4 * width),
                         *group(4 * width, 4 * width), nn.MaxPool2D(3), nn.Flatten(),
                         nn.Linear(4 * width, N_CLASSES, bias_attr=False), Scale(1 / 9))


def _norm(channels: int) -> nn.BatchNorm2D:
    # Paddle's momentum is the share of the old statistics kept (PyTorch's 0.6 is Paddle's 0.4).
    # The scale stays 1 through a learning rate of 0. Not weight_attr=False: paddle.jit.save cannot export a
    # BatchNorm without a scale; not trainable=False: Paddle 3.3 then computes no gradient for the shift either.
    return nn.BatchNorm2D(channels, momentum=0.4, epsilon=1e-12, weight_attr=paddle.ParamAttr(learning_rate=0.0))


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
    """The size options a registered model's builder takes, in signature order."""
    return list(inspect.signature(MODELS[name]).parameters)


def build_model(name: str, **options: object) -> nn.Layer:
    """Instantiate a registered model by name, of plain paddle.nn layers; options go to its builder (e.g.
    resnet's width, depth). kernels.accelerate puts the compiled CPU kernels into it for training."""
    if name not in MODELS:
        raise CompetitionError(f"unknown model '{name}'; expected one of {', '.join(MODELS)}.")
    unknown = [option for option in options if option not in model_options(name)]
    if unknown:
        takers = [f"{other} takes {', '.join(model_options(other))}" for other in MODELS if model_options(other)]
        listed = ", ".join(f"'{option}'" for option in unknown)
        raise CompetitionError(f"model '{name}' takes no option {listed}; "
                               f"{'; '.join(takers) or 'no model takes options'}.")
    return MODELS[name](**options)


def learned(param: paddle.Tensor) -> bool:
    """Whether training changes a parameter: not frozen by stop_gradient or by a learning rate of 0."""
    return not param.stop_gradient and param.optimize_attr.get("learning_rate", 1.0) != 0


def count_parameters(model: nn.Layer) -> int:
    """Number of trained parameters."""
    return sum(int(p.size) for p in model.parameters() if learned(p))
