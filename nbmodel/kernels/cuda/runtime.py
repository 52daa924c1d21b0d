"""The one module through which nbmodel imports numba-cuda.

Every CUDA kernel module imports ``cuda`` and the ``kernel`` decorator from
here, so moving to another CUDA toolchain (numba-cuda is in maintenance mode)
is a change to this file. Nothing here compiles at import: ``kernel`` records
the Python function with the signatures it is launched with (for the PTX
check, ``check_ptx``) and returns a lazily compiled ``cuda.jit`` kernel.

numba-cuda must be imported after ``NUMBA_ENABLE_CUDASIM`` is set: with
``NUMBA_ENABLE_CUDASIM=1`` in the environment before the first numba import,
kernels run in numba's simulator (about 1 ms per thread) on a machine
without a GPU.
"""
from __future__ import annotations

import re
import threading
from dataclasses import dataclass

import numpy as np

if not hasattr(np, "row_stack"):  # numba-cuda 0.30 calls np.row_stack, removed in NumPy 2.5
    np.row_stack = np.vstack

from numba import config as _numba_config  # noqa: E402
from numba import cuda, types  # noqa: E402

if _numba_config.ENABLE_CUDASIM:
    import sys

    from numba.cuda import types as _simtypes
    from numba.cuda.np import numpy_support as _numpy_support
    from numba.cuda.simulator import kernelapi as _simapi
    from numba.cuda.simulator.cudadrv import devicearray as _simarray

    # the simulator's shape object refuses negative indices (x.shape[-1])
    _simarray.FakeShape.__getitem__ = tuple.__getitem__

    # The simulator's shared arrays are found by call site and made on first
    # use, unlocked: two threads of a block that both miss make two arrays and
    # the block computes garbage (seen under a short sys.setswitchinterval).
    _SHARED_LOCK = threading.Lock()
    _simulator_shared_array = _simapi.FakeCUDAShared.array

    def _shared_array(self, shape, dtype, alignment=None):
        if shape == 0 or alignment is not None:  # dynamic shared memory, or the simulator's error
            return _simulator_shared_array(self, shape, dtype, alignment)
        if isinstance(dtype, _simtypes.Type):
            dtype = _numpy_support.as_dtype(dtype)
        frame = sys._getframe(1)
        site = (frame.f_code.co_filename, frame.f_lineno)
        with _SHARED_LOCK:
            arr = self._allocations.get(site)
            if arr is None:
                arr = self._allocations[site] = np.empty(shape, dtype)
        return arr

    _simapi.FakeCUDAShared.array = _shared_array

__all__ = ["cuda", "types", "kernel", "simulator", "gpu_present", "available", "describe", "KERNELS",
           "compile_ptx", "link", "float64_instructions", "is_device_array", "launch_1d", "shared_helper",
           "result_buffer", "THREADS"]

THREADS = 256  # threads per block of the 1-D elementwise launches
WARP = 32

# fastmath flags of every CUDA kernel: none. numba-cuda 0.30 takes any non-empty set as
# fastmath=True: every LLVM fast flag (nnan and ninf included, which would let the compiler
# drop the NaN checks the CPU kernels keep) plus flush-to-zero and approximate division and
# square root. Without it, division and sqrt are IEEE-rounded and NVVM still fuses
# multiply-adds (its default), the CPU set's "contract".
FASTMATH = frozenset()


@dataclass(frozen=True)
class KernelSpec:
    """A CUDA kernel and the argument types it is launched with."""

    name: str
    py_func: object
    signatures: tuple
    fastmath: frozenset


KERNELS: list[KernelSpec] = []


def kernel(*signatures):
    """Decorate a CUDA kernel: lazily compiled on first launch; ``signatures``
    (tuples of numba types) are the ones the PTX check compiles."""
    def wrap(fn):
        KERNELS.append(KernelSpec(f"{fn.__module__}.{fn.__name__}", fn, tuple(signatures), FASTMATH))
        return cuda.jit(fastmath=bool(FASTMATH))(fn)
    return wrap


_RESULTS: dict = {}


def result_buffer(initial: np.ndarray):
    """A small device array set to ``initial``, for a kernel to leave results
    that its launcher copies back to the host right after. One per thread,
    shape and dtype, reused by every later call: no device allocation per step
    (each would be a cudaMalloc and cudaFree), one host-to-device copy."""
    key = (threading.get_ident(), initial.shape, initial.dtype.str)
    buf = _RESULTS.get(key)
    if buf is None:
        buf = _RESULTS[key] = cuda.to_device(initial)
    else:
        buf.copy_to_device(initial)
    return buf


def is_device_array(a) -> bool:
    """True for a numba CUDA device array (or the simulator's stand-in)."""
    return bool(cuda.devicearray.is_cuda_ndarray(a))


def launch_1d(n: int) -> tuple[int, int]:
    """(blocks, threads) covering n elements with one thread each; a launch of
    fewer than THREADS elements takes whole warps only (no idle warps)."""
    if n >= THREADS:
        return -(-n // THREADS), THREADS
    return 1, max(WARP, -(-n // WARP) * WARP)


def shared_helper(fn):
    """A CPU ``@inline`` helper (kernels/cpu) for a CUDA kernel to call: numba
    inlines it when it compiles the kernel; the simulator runs its Python
    function instead (a CPU dispatcher cannot take the simulator's arrays)."""
    return fn.py_func if simulator() else fn


def simulator() -> bool:
    """True when numba runs CUDA kernels in its simulator."""
    return bool(_numba_config.ENABLE_CUDASIM)


def gpu_present() -> bool:
    if simulator():
        return False
    try:
        return bool(cuda.is_available())
    except Exception:  # noqa: BLE001 - no driver, no device: no GPU
        return False


def available() -> bool:
    """A GPU or the simulator can run the kernels here."""
    return simulator() or gpu_present()


def describe() -> str:
    if simulator():
        return "cuda (numba-cuda simulator: correct, about 1 ms per thread)"
    if gpu_present():
        dev = cuda.get_current_device()
        return f"cuda ({dev.name.decode() if isinstance(dev.name, bytes) else dev.name}, cc {dev.compute_capability})"
    return "cuda (not available: no GPU and the simulator is off)"


def compile_ptx(spec: KernelSpec, signature, cc=(9, 0)) -> str:
    """PTX of ``spec`` for ``signature`` on compute capability ``cc`` (needs no GPU)."""
    ptx, _ = cuda.compile_ptx(spec.py_func, signature, cc=cc, fastmath=bool(spec.fastmath))
    return ptx


_F64 = re.compile(r"\.f64\b")


def float64_instructions(ptx: str) -> list[str]:
    """PTX lines that compute or convert in float64."""
    return [line.strip() for line in ptx.splitlines() if _F64.search(line) and not line.strip().startswith("//")]


def link(ptx: str, arch="sm_90") -> str:
    """Link ``ptx`` to machine code with nvJitLink; returns its info log
    (registers, spill stores, shared memory per kernel). Raises on errors."""
    import cuda.bindings.nvjitlink as nvj  # the cu13 wheels' linker

    opts = [f"-arch={arch}", "-verbose"]
    handle = nvj.create(len(opts), opts)
    try:
        data = ptx.encode()
        nvj.add_data(handle, nvj.InputType.PTX, data, len(data), "kernel.ptx")
        try:
            nvj.complete(handle)
        except nvj.nvJitLinkError:
            size = nvj.get_error_log_size(handle)
            log = bytearray(size)
            nvj.get_error_log(handle, log)
            raise RuntimeError(f"nvJitLink failed: {log.decode(errors='replace')}") from None
        size = nvj.get_info_log_size(handle)
        log = bytearray(size)
        nvj.get_info_log(handle, log)
        return log.decode(errors="replace")
    finally:
        nvj.destroy(handle)
