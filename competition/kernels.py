"""CPU training kernels (oneDNN convs and batch norms, 2x2 max pooling): kernels.cc, compiled once as Paddle
custom ops, and accelerate(), the pass that swaps a plain model's layers for the ones that call them.

Paddle's own CPU conv kernel is the slow part of a training step (BENCHMARKS.md: ~80% of a
cnn step, 2.2x PyTorch's epoch time); the oneDNN primitives in kernels.cc halve a step. The
library is the libdnnl inside Paddle's wheel; its C++ headers come from the `onednn-devel`
wheel, which run.sh installs. Without a compiler or headers, training uses Paddle's conv.
"""
from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import logging
import os
import sys
import sysconfig
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Iterator, Optional

import paddle
from paddle import nn

from .errors import CompetitionError
from .files import exclusive, user_cache_dir
from .models import BasicBlock

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("kernels.cc")
# Headers only (pip install --no-deps): the library itself is the one in Paddle's wheel. run.sh reads the same file.
HEADERS = Path(__file__).with_name("onednn-headers.txt").read_text().strip()
_PADDLE_LIBS = Path(paddle.__file__).parent / "libs"  # libdnnl.so.3 ships here
CXX_FLAGS = ["-O3"]

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt's parameter numbers (malloc.h)

_NAME = "onednn_kernels"
_LIBRARY = f"{_NAME}/{_NAME}.so"  # in the build folder
# Written in the build folder once a build has loaded: its library is whole, so later processes import it.
_BUILT = "built"
_module: Optional[ModuleType] = None  # the loaded operator module: compiled and loaded once per process


def headers_dir() -> Optional[Path]:
    """The include folder holding oneapi/dnnl/dnnl.hpp, or None."""
    roots = dict.fromkeys((sysconfig.get_paths()["data"], sys.prefix, sys.base_prefix))  # in order, once
    found = [Path(root) / "include" for root in roots if (Path(root) / "include/oneapi/dnnl/dnnl.hpp").is_file()]
    return found[0] if found else None


def build_dir() -> Path:
    """Where the compiled operator lives: keyed by the source, its flags and the Paddle build it links to."""
    digest = hashlib.sha256(SOURCE.read_bytes() + " ".join(CXX_FLAGS).encode() + paddle.version.full_version.encode()
                            + paddle.version.commit.encode()).hexdigest()[:12]
    return user_cache_dir() / "kernels" / digest


@contextlib.contextmanager
def _output_to(path: Path) -> Iterator[None]:
    """Send this process's stdout/stderr (and the compiler's) to a file for the block's duration."""
    sys.stdout.flush(), sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with open(path, "a") as sink:
        os.dup2(sink.fileno(), 1), os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush(), sys.stderr.flush()
            os.dup2(saved[0], 1), os.dup2(saved[1], 2)
            os.close(saved[0]), os.close(saved[1])


def _import_built(folder: Path) -> Optional[ModuleType]:
    """The operator module of a finished build in `folder`, or None where there is none (or no way to import it)."""
    # Paddle's load() runs its generated setup.py in a subprocess even when the build is current: a new
    # process that imported and loaded the kernels took 1.32 s through it, 0.67 s through the library's own
    # importer (median of 8, 2026-12-01), for each rank and each predict.
    try:
        from paddle.utils.cpp_extension.extension_utils import _import_module_from_library
    except ImportError:  # a Paddle without it: load() imports (slower)
        return None
    if not (folder / _BUILT).exists() or not (folder / _LIBRARY).exists():
        return None
    return _import_module_from_library(_NAME, str(folder / _NAME), False)


def load() -> ModuleType:
    """Compile (first time only, ~15 s) and load the operator; CompetitionError says why it can't."""
    global _module
    if _module is not None:
        return _module
    if not sys.platform.startswith("linux"):
        raise CompetitionError(f"the CPU kernels are built on Linux only (this is {sys.platform}).")
    include = headers_dir()
    if include is None:
        raise CompetitionError(f"the oneDNN headers are missing (pip install --no-deps '{HEADERS}').")
    folder = build_dir()
    from paddle.utils.cpp_extension import load as load_extension  # imports setuptools: only when needed

    try:
        folder.mkdir(parents=True, exist_ok=True)
        # One process builds at a time (the ranks of a launched run start together).
        with exclusive(folder / ".lock"), _output_to(folder / "build.log"):
            _module = _import_built(folder)
            if _module is None:
                if not (folder / _LIBRARY).exists():
                    log.info("compiling the CPU kernels into %s (once, about 15 s)", folder)
                _module = load_extension(
                    name=_NAME, sources=[str(SOURCE)], build_directory=str(folder),
                    extra_include_paths=[str(include)], extra_cxx_cflags=CXX_FLAGS,
                    extra_ldflags=[f"-L{_PADDLE_LIBS}", "-l:libdnnl.so.3", f"-Wl,-rpath,{_PADDLE_LIBS}"])
                (folder / _BUILT).touch()
    except (RuntimeError, OSError, ImportError) as exc:  # no compiler, a failed build, an unwritable cache
        raise CompetitionError(f"the CPU kernels did not build ({exc}); see {folder / 'build.log'}.") from None
    return _module


def keep_freed_memory() -> None:
    """Have glibc's malloc keep freed activation buffers for reuse instead of handing them back to the system."""
    # Every op's output is a new buffer of up to 6.4 MB (resnet 32x2, 64 images a process). glibc maps
    # such blocks afresh and returns them on free, so each step paid page faults for every output:
    # the blocked training path's step took 160-180 ms instead of 106 ms (one process, 2026-11-30).
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc: its own allocator, its own habits
        return
    libc.mallopt(_M_MMAP_THRESHOLD, 32 << 20)  # glibc's largest: blocks up to 32 MB come from the heap
    libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1)  # and the heap is not shrunk after each step


# --- the processor: what oneDNN dispatches to --------------------------------------------------------

# dnnl_cpu_isa_t values (oneapi/dnnl/dnnl_types.h): each ISA's value holds the bits of those it extends.
_ISA_AVX512_CORE = 0x27
_ISA_AVX512_CORE_BF16 = 0xE7


@functools.lru_cache(maxsize=None)
def _onednn() -> Optional[ctypes.CDLL]:
    """The libdnnl in Paddle's wheel (the one the kernels link to), or None where there is none."""
    try:
        lib = ctypes.CDLL(str(_PADDLE_LIBS / "libdnnl.so.3"))
    except OSError:
        return None
    lib.dnnl_get_effective_cpu_isa.restype = ctypes.c_int
    lib.dnnl_set_verbose.argtypes = [ctypes.c_int]
    lib.dnnl_cpu_isa2str.argtypes, lib.dnnl_cpu_isa2str.restype = [ctypes.c_int], ctypes.c_char_p
    return lib


@contextlib.contextmanager
def onednn_verbose(path: Path) -> Iterator[None]:
    """oneDNN's verbose lines (as ONEDNN_VERBOSE=1 prints them) of the primitives run inside the block, into `path`:
    each names its implementation (`jit:avx2`, `brg_conv_fwd:avx512_core`, or `ref:` for the reference code)."""
    lib = _onednn()
    if lib is None:
        yield
        return
    with _output_to(path):
        lib.dnnl_set_verbose(1)
        try:
            yield
        finally:
            lib.dnnl_set_verbose(0)


def cpu_isa() -> int:
    """The instruction set oneDNN dispatches to here (a dnnl_cpu_isa_t): the processor's own, or the one
    ONEDNN_MAX_CPU_ISA caps it at; 0 where Paddle has no oneDNN."""
    lib = _onednn()
    return lib.dnnl_get_effective_cpu_isa() if lib is not None else 0


def isa_name() -> str:
    """cpu_isa() in oneDNN's words: avx2, avx512_core, avx512_core_bf16, ...; unknown without oneDNN."""
    lib = _onednn()
    return lib.dnnl_cpu_isa2str(cpu_isa()).decode().replace("cpu_isa_", "") if lib is not None else "unknown"


def block_size() -> int:
    """Channels per block of the kernels' blocked layout: a vector register of floats, 16 on AVX-512, 8 below."""
    # oneDNN's jit kernels work in their ISA's block: on a Zen 3 (AVX2) a batch norm in nChw16c ran its
    # reference code, and a cnn step of 128 images took 499-618 ms, 63-70 ms in nChw8c (2026-12-02).
    return 16 if cpu_isa() & _ISA_AVX512_CORE == _ISA_AVX512_CORE else 8


def cpu_has_bf16() -> bool:
    """Whether oneDNN computes bfloat16 dot products natively here (AVX512-BF16 or AMX; not under an ISA cap
    below them)."""
    return cpu_isa() & _ISA_AVX512_CORE_BF16 == _ISA_AVX512_CORE_BF16


# --- the kernels, as the layers call them -------------------------------------------------------------

@dataclass(frozen=True)
class CpuKernels:
    """The compiled kernels, as accelerate() hands them to the layers it swaps in.

    `bf16` has the training convs read bfloat16 copies of their inputs (float32 weights, sums and
    results); `block` is the blocked layout's channels per block (0: every activation NCHW): activations
    whose channels fill whole blocks stay in oneDNN's nChw8c or nChw16c layout between the kernels
    (kernels.cc) in training and validation; with `bf16_activations` too, training activations and their
    gradients between the kernels are bfloat16 (conv outputs, batch norms, ReLU, GELU, pooling, residual
    adds), so no conv casts its input and each pass over memory moves half.
    """

    # Why not paddle.amp: under paddle.amp.auto_cast(dtype="bfloat16") Paddle 3.3's CPU convs stay
    # float32 (airnet 32, batch 256, one process, 2026-11-30: Paddle's conv 1,232 ms a step, with
    # auto_cast 1,253 ms; these kernels 274 ms in float32, 198 ms with bf16).

    bf16: bool = False
    block: int = field(default_factory=block_size)
    bf16_activations: bool = False

    def conv2d(self, x: paddle.Tensor, weight: paddle.Tensor, stride: int, padding: int, src_block: int = 0,
               dst_block: int = 0) -> paddle.Tensor:
        """oneDNN conv of `x` (float32, or bfloat16 from these kernels; laid out in `src_block`) with `weight`
        (out, in, kh, kw) into layout `dst_block`; no bias, dilation or groups."""
        # bfloat16 only where gradients flow: validation, reports and predictions stay float32.
        bf16 = self.bf16 and paddle.is_grad_enabled()
        bf16_out = bf16 and self.bf16_activations and dst_block > 0
        return load().onednn_conv2d(x, weight, stride, padding, not x.stop_gradient, bf16, src_block, dst_block,
                                    bf16_out)[0]

    def add_bias(self, x: paddle.Tensor, bias: paddle.Tensor, block: int = 0) -> paddle.Tensor:
        """x + bias[c] on every channel c of a float32 activation laid out in `block`."""
        return load().onednn_add_bias(x, bias, block)

    def relu(self, x: paddle.Tensor) -> paddle.Tensor:
        """max(x, 0) of an activation, float32 or bfloat16 (Paddle's CPU relu takes float32 only)."""
        return load().onednn_relu(x)

    def gelu(self, x: paddle.Tensor) -> paddle.Tensor:
        """GELU (erf) of an activation, float32 or bfloat16 (Paddle's CPU gelu takes float32 only)."""
        return load().onednn_gelu(x)

    def fork(self, x: paddle.Tensor) -> tuple[paddle.Tensor, paddle.Tensor]:
        """A bfloat16 activation for two consumers, whose gradients the kernel sums (not Paddle, slowly)."""
        a, b = load().onednn_fork(x)
        return a, b

    def add_relu(self, a: paddle.Tensor, b: paddle.Tensor) -> paddle.Tensor:
        """max(a + b, 0) of two activations of one shape and type (a residual block's end)."""
        return load().onednn_add_relu(a, b)

    def max_pool2x2(self, x: paddle.Tensor, block: int = 0) -> paddle.Tensor:
        """2x2 max pooling with stride 2 of `x` laid out in `block`, float32 or bfloat16 (odd sizes floor)."""
        return load().max_pool2x2(x, block)[0]

    def batch_norm(self, x: paddle.Tensor, scale: paddle.Tensor, shift: paddle.Tensor, eps: float,
                   block: int = 0) -> tuple[paddle.Tensor, paddle.Tensor, paddle.Tensor]:
        """Batch-statistics normalization of `x`: (output, the batch's mean, its biased variance)."""
        out, mean, var = load().onednn_batch_norm(x, scale, shift, eps, block)
        return out, mean, var

    def batch_norm_infer(self, x: paddle.Tensor, scale: paddle.Tensor, shift: paddle.Tensor, mean: paddle.Tensor,
                         variance: paddle.Tensor, eps: float, block: int = 0) -> paddle.Tensor:
        """Normalization of `x` by running statistics (evaluation); no gradient."""
        return load().onednn_batch_norm_infer(x, scale, shift, mean, variance, eps, block)

    def to_plain(self, x: paddle.Tensor, block: int) -> paddle.Tensor:
        """An activation laid out in `block` as float32 NCHW (block 0: as it is)."""
        return load().onednn_to_plain(x, block) if block else x


def _kernel_input(x: paddle.Tensor) -> bool:
    """Whether the kernels take `x`: dynamic mode, a float32 (or the kernels' bfloat16) NCHW tensor on the CPU.
    Every layer of a model decides alike, so activations stay blocked between them or nowhere (exports)."""
    return (paddle.in_dynamic_mode() and x.place.is_cpu_place() and x.dtype in (paddle.float32, paddle.bfloat16)
            and x.ndim == 4)


def _bf16(x: paddle.Tensor) -> bool:
    """Whether `x` is one of the kernels' bfloat16 training activations (CpuKernels.bf16_activations)."""
    return paddle.in_dynamic_mode() and x.dtype == paddle.bfloat16


# --- the layers accelerate() swaps in: Paddle's, with the same parameters, another forward ------------
# Each repeats its `super().forward` fallback on purpose: one mixin for them broke paddle.jit.save, whose
# dy2static rewrite of forward() turned its super() call into endless recursion.

class KernelConv2D(nn.Conv2D):
    """paddle.nn.Conv2D (no groups or dilation) through the oneDNN kernel in CPU dynamic mode."""

    _kernels: CpuKernels
    _src_block: int  # the layouts it reads and writes (0: NCHW)
    _dst_block: int

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        """The convolution, and its bias when it has one (float32: the kernels' bfloat16 convs have none)."""
        if not _kernel_input(x):
            return super().forward(x)
        out = self._kernels.conv2d(x, self.weight, self._stride[0], self._updated_padding[0], self._src_block,
                                   self._dst_block)
        return out if self.bias is None else self._kernels.add_bias(out, self.bias, self._dst_block)


class KernelMaxPool2D(nn.MaxPool2D):
    """paddle.nn.MaxPool2D: 2x2 pooling through the kernel, any other on a blocked input after to_plain."""

    _kernels: CpuKernels
    _block: int
    _pool2x2: bool

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        """The pooling."""
        if self._pool2x2 and _kernel_input(x):
            return self._kernels.max_pool2x2(x, self._block)
        return super().forward(self._kernels.to_plain(x, self._block) if _kernel_input(x) else x)


class KernelBatchNorm2D(nn.BatchNorm2D):
    """paddle.nn.BatchNorm2D on the blocked layout, which Paddle's op cannot read: the same parameters and
    running statistics, moved as Paddle's op moves them."""

    _kernels: CpuKernels
    _block: int

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        """Normalize by the batch's statistics in training (folded into the running ones), by the running ones
        in evaluation."""
        if not _kernel_input(x):
            return super().forward(x)
        if not self.training:
            return self._kernels.batch_norm_infer(x, self.weight, self.bias, self._mean, self._variance,
                                                  self._epsilon, self._block)
        out, mean, variance = self._kernels.batch_norm(x, self.weight, self.bias, self._epsilon, self._block)
        with paddle.no_grad():
            # Paddle's momentum is the share of the old statistics kept; its variance is the biased one.
            paddle.assign(self._mean * self._momentum + mean * (1 - self._momentum), self._mean)
            paddle.assign(self._variance * self._momentum + variance * (1 - self._momentum), self._variance)
        return out


class KernelReLU(nn.ReLU):
    """paddle.nn.ReLU through oneDNN's, which also takes the kernels' bfloat16 training activations."""

    _kernels: CpuKernels

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        """max(x, 0)."""
        return self._kernels.relu(x) if _kernel_input(x) else super().forward(x)


class KernelGELU(nn.GELU):
    """paddle.nn.GELU (erf) through oneDNN's, which also takes the kernels' bfloat16 training activations."""

    _kernels: CpuKernels

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        """x * Phi(x)."""
        return self._kernels.gelu(x) if _kernel_input(x) else super().forward(x)


class KernelAdaptiveAvgPool2D(nn.AdaptiveAvgPool2D):
    """paddle.nn.AdaptiveAvgPool2D of a blocked activation, turned back to NCHW first."""

    _kernels: CpuKernels
    _block: int

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        """The pooling, on NCHW."""
        return super().forward(self._kernels.to_plain(x, self._block) if _kernel_input(x) else x)


class KernelFlatten(nn.Flatten):
    """paddle.nn.Flatten of a blocked activation, turned back to NCHW first."""

    _kernels: CpuKernels
    _block: int

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        """The flattening, of NCHW."""
        return super().forward(self._kernels.to_plain(x, self._block) if _kernel_input(x) else x)


class KernelBasicBlock(BasicBlock):
    """models.BasicBlock whose end (add, ReLU) is one oneDNN primitive, and whose bfloat16 activations fork
    through the kernels too (Paddle sums two bfloat16 gradients slowly)."""

    _kernels: CpuKernels

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        """relu(residual(x) + shortcut(x))."""
        x_body, x_short = self._kernels.fork(x) if _bf16(x) else (x, x)
        body, shortcut = self.residual(x_body), self.shortcut(x_short)
        return self._kernels.add_relu(body, shortcut) if _kernel_input(body) else self.relu(body + shortcut)


# --- the pass -------------------------------------------------------------------------------------------

def accelerate(model: nn.Layer, kernels: Optional[CpuKernels]) -> nn.Layer:
    """`model` with every layer the kernels run swapped for its twin above, sharing its parameters and buffers
    (same state-dict names, same checkpoints), as timm's convert_sync_batchnorm; `kernels` None: as it is.

    Walks the model in data order (nn.Sequential's, BasicBlock's) and knows which activations are blocked; a
    layer it cannot vouch for that would read one is refused with CompetitionError, any other is left alone.
    """
    if kernels is None:
        return model
    converted, _ = _convert(model, kernels, 0, type(model).__name__)
    return converted


def swaps(model: nn.Layer) -> bool:
    """Whether accelerate() gives `model` (which it changes) any layer of the kernels."""
    converted = accelerate(model, CpuKernels())
    return any(type(layer).__module__ == __name__ for layer in converted.sublayers(include_self=True))


def _convert(layer: nn.Layer, kernels: CpuKernels, block: int, where: str) -> tuple[nn.Layer, int]:
    """`layer` as the kernels run it, reading activations laid out in `block`, and its output's block."""
    kind = type(layer)  # exact types: a subclass may compute something else (a conv's keeping its forward may not)
    if kind is nn.Sequential:
        for name, child in layer.named_children():
            new, block = _convert(child, kernels, block, f"{where}.{name}")
            setattr(layer, name, new)
        return layer, block
    if kind is BasicBlock:
        return _convert_block(layer, kernels, block, where)
    if isinstance(layer, nn.Conv2D) and kind.forward is nn.Conv2D.forward and _conv_fits(layer, kernels):
        out = kernels.block if kernels.block and layer._out_channels % kernels.block == 0 else 0
        return _twin(_conv_twin(kind), layer, kernels, _src_block=block, _dst_block=out), out
    if kind is nn.MaxPool2D and _pool2x2(layer):
        return _twin(KernelMaxPool2D, layer, kernels, _block=block, _pool2x2=True), block
    if kind in (nn.ReLU, nn.GELU):  # element-wise, in any layout
        return _twin(KernelReLU if kind is nn.ReLU else KernelGELU, layer, kernels), block
    if kind is nn.Identity:
        return layer, block
    if not block:  # NCHW float32 in: Paddle's own layer reads it (a composite the pass does not know stays whole)
        return layer, 0
    if kind is nn.BatchNorm2D and _norm_fits(layer):
        return _twin(KernelBatchNorm2D, layer, kernels, _block=block), block
    if kind in (nn.MaxPool2D, nn.AdaptiveAvgPool2D, nn.Flatten):  # they read NCHW: to_plain first
        twin = {nn.MaxPool2D: KernelMaxPool2D, nn.AdaptiveAvgPool2D: KernelAdaptiveAvgPool2D, nn.Flatten: KernelFlatten}
        return _twin(twin[kind], layer, kernels, _block=block, _pool2x2=False), 0
    raise CompetitionError(
        f"kernels.accelerate: layer {where} ({kind.__name__}) would read activations in the kernels' blocked "
        f"layout (nChw{block}c), which only their own layers can; build the model there from Conv2D (a bias in "
        f"float32 only), BatchNorm2D with scale and shift, ReLU, GELU, MaxPool2D, AdaptiveAvgPool2D, Flatten and "
        f"models.BasicBlock, or train with --conv paddle.")


def _convert_block(layer: BasicBlock, kernels: CpuKernels, block: int, where: str) -> tuple[nn.Layer, int]:
    """A residual block: its body in order, its shortcut from the same input; both must end in one layout."""
    body = block
    for name in ("conv1", "bn1", "relu", "conv2", "bn2"):
        new, body = _convert(getattr(layer, name), kernels, body, f"{where}.{name}")
        setattr(layer, name, new)
    layer.shortcut, short = _convert(layer.shortcut, kernels, block, f"{where}.shortcut")
    if short != body:
        raise CompetitionError(f"kernels.accelerate: {where}'s body ends in layout block {body} and its shortcut in "
                               f"{short}; their sum needs one layout (give both the same channels).")
    return _twin(KernelBasicBlock, layer, kernels), body


@functools.lru_cache(maxsize=None)
def _conv_twin(kind: type) -> type:
    """KernelConv2D for nn.Conv2D; for a subclass that keeps Conv2D's forward (models.Whitening), a KernelConv2D
    that is still one of it (its fit(), isinstance)."""
    return KernelConv2D if kind is nn.Conv2D else type(f"Kernel{kind.__name__}", (KernelConv2D, kind), {})


def _twin(cls: type, layer: nn.Layer, kernels: CpuKernels, **settings: object) -> nn.Layer:
    """`layer` as an instance of `cls` (a subclass of its class): the same parameters, buffers and sublayers."""
    twin = cls.__new__(cls)
    twin.__dict__.update(layer.__dict__)
    twin._kernels = kernels
    for name, value in settings.items():
        setattr(twin, name, value)
    return twin


def _conv_fits(conv: nn.Conv2D, kernels: CpuKernels) -> bool:
    """Whether kernels.cc runs this conv: no groups or dilation, NCHW, square zero padding and stride, and a bias
    only in float32 (the bfloat16 convs may write bfloat16, which the bias op does not take)."""
    stride, padding = conv._stride, conv._updated_padding
    return ((conv.bias is None or not kernels.bf16) and conv._groups == 1 and list(conv._dilation) == [1, 1]
            and conv._data_format == "NCHW" and conv._padding_mode == "zeros"
            and conv._padding_algorithm == "EXPLICIT" and stride[0] == stride[1] and len(padding) == 2
            and padding[0] == padding[1])


def _pool2x2(pool: nn.MaxPool2D) -> bool:
    """Whether this is the 2x2, stride-2 max pooling the kernel runs."""
    return (pool.ksize in (2, [2, 2]) and pool.stride in (None, 2, [2, 2]) and pool.padding in (0, [0, 0])
            and not pool.ceil_mode and not pool.return_mask and pool.data_format == "NCHW")


def _norm_fits(norm: nn.BatchNorm2D) -> bool:
    """Whether the kernels' batch norm runs this one: a scale and a shift, NCHW, batch statistics in training."""
    return (norm.weight is not None and norm.bias is not None and norm._use_global_stats is None
            and norm._data_format == "NCHW")
