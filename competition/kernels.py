"""CPU training kernels (oneDNN convs, 2x2 max pooling): kernels.cc, compiled once as Paddle custom ops.

Paddle's own CPU conv kernel is the slow part of a training step (BENCHMARKS.md: ~80% of a
cnn step, 2.2x PyTorch's epoch time); the oneDNN primitives in kernels.cc halve a step. The
library is the libdnnl inside Paddle's wheel; its C++ headers come from the `onednn-devel`
wheel, which run.sh installs. Without a compiler or headers, training uses Paddle's conv.
"""
from __future__ import annotations

import contextlib
import ctypes
import hashlib
import logging
import os
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Iterator, Optional

import paddle

from .errors import CompetitionError
from .files import exclusive, user_cache_dir

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("kernels.cc")
# Headers only (pip install --no-deps): the library itself is the one in Paddle's wheel.
HEADERS = "onednn-devel==2025.0.1"
_PADDLE_LIBS = Path(paddle.__file__).parent / "libs"  # libdnnl.so.3 ships here
CXX_FLAGS = ["-O2"]

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


def cpu_has_bf16() -> bool:
    """Whether this CPU does bfloat16 dot products natively (AVX512-BF16 or AMX-BF16); Linux only."""
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


@dataclass(frozen=True)
class CpuKernels:
    """The compiled kernels, handed to the layers that may use them (models.py).

    A layer built without one runs Paddle's own ops; `bf16` has the training convs read
    bfloat16 copies of their inputs (float32 weights, sums and results); `blocked` has activations
    with a multiple of 16 channels stay in oneDNN's nChw16c layout between the kernels (kernels.cc)
    in training and validation, so the layers reading channels must all be the kernels' own; with
    `bf16_activations` too, training activations and their gradients between the kernels are bfloat16
    (conv outputs, batch norms, ReLU, GELU, pooling, residual adds), so no conv casts its input and each
    pass over memory moves half.
    """

    # Why not paddle.amp: under paddle.amp.auto_cast(dtype="bfloat16") Paddle 3.3's CPU convs stay
    # float32 (airnet 32, batch 256, one process, 2026-11-30: Paddle's conv 1,232 ms a step, with
    # auto_cast 1,253 ms; these kernels 274 ms in float32, 198 ms with bf16).

    bf16: bool = False
    blocked: bool = True
    bf16_activations: bool = False

    def conv2d(self, x: paddle.Tensor, weight: paddle.Tensor, stride: int, padding: int,
               blocked: bool = False) -> paddle.Tensor:
        """oneDNN conv of `x` (float32, or bfloat16 from these kernels) with `weight` (out, in, kh, kw);
        no bias, dilation or groups."""
        # bfloat16 only where gradients flow: validation, reports and predictions stay float32.
        bf16 = self.bf16 and paddle.is_grad_enabled()
        bf16_out = bf16 and self.bf16_activations and blocked and weight.shape[0] % 16 == 0
        return load().onednn_conv2d(x, weight, stride, padding, not x.stop_gradient, bf16, blocked, bf16_out)[0]

    def relu(self, x: paddle.Tensor) -> paddle.Tensor:
        """max(x, 0) of a bfloat16 activation (Paddle's CPU relu takes float32 only)."""
        return load().onednn_relu(x)

    def gelu(self, x: paddle.Tensor) -> paddle.Tensor:
        """GELU (erf) of a bfloat16 activation (Paddle's CPU gelu takes float32 only)."""
        return load().onednn_gelu(x)

    def fork(self, x: paddle.Tensor) -> tuple[paddle.Tensor, paddle.Tensor]:
        """A bfloat16 activation for two consumers, whose gradients the kernel sums (not Paddle, slowly)."""
        a, b = load().onednn_fork(x)
        return a, b

    def add_relu(self, a: paddle.Tensor, b: paddle.Tensor) -> paddle.Tensor:
        """max(a + b, 0) of two bfloat16 activations of one shape (a residual block's end)."""
        return load().onednn_add_relu(a, b)

    def max_pool2x2(self, x: paddle.Tensor, blocked: bool = False) -> paddle.Tensor:
        """2x2 max pooling with stride 2 of `x`, float32 or bfloat16 (odd sizes floor, as Paddle's)."""
        return load().max_pool2x2(x, blocked)[0]

    def batch_norm(self, x: paddle.Tensor, scale: paddle.Tensor, shift: paddle.Tensor, eps: float,
                   blocked: bool = False) -> tuple[paddle.Tensor, paddle.Tensor, paddle.Tensor]:
        """Batch-statistics normalization of `x`: (output, the batch's mean, its biased variance)."""
        out, mean, var = load().onednn_batch_norm(x, scale, shift, eps, blocked)
        return out, mean, var

    def batch_norm_infer(self, x: paddle.Tensor, scale: paddle.Tensor, shift: paddle.Tensor, mean: paddle.Tensor,
                         variance: paddle.Tensor, eps: float, blocked: bool = False) -> paddle.Tensor:
        """Normalization of `x` by running statistics (evaluation); no gradient."""
        return load().onednn_batch_norm_infer(x, scale, shift, mean, variance, eps, blocked)

    def to_plain(self, x: paddle.Tensor) -> paddle.Tensor:
        """A blocked activation (a multiple of 16 channels) as float32 NCHW; other tensors as they are."""
        return load().onednn_to_plain(x) if x.shape[1] % 16 == 0 else x
