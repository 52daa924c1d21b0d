"""The CUDA device: numba device arrays and the kernels of nbmodel/kernels/cuda.

Imported only when the "cuda" device is asked for (``backend`` registers a
factory that imports this module), so ``import nbmodel`` never touches CUDA.
Without a GPU, numba's simulator runs the same kernels (set
``NUMBA_ENABLE_CUDASIM=1`` before anything imports numba).
"""
from __future__ import annotations

import numpy as np

from .backend import Device

_HOW_TO = ("install the CUDA extra (pip install 'nbmodel[cuda]') and run on a machine with an NVIDIA GPU, "
           "or set NUMBA_ENABLE_CUDASIM=1 before importing nbmodel to run the kernels in numba's (slow) "
           "CUDA simulator")


def cuda_available() -> bool:
    """A GPU or the simulator is there and numba-cuda is installed (imports numba-cuda)."""
    try:
        from .kernels.cuda import runtime
    except ImportError:
        return False
    return runtime.available()


def cuda_report() -> str:
    """One line for ``nbmodel info``: the GPU (or the simulator) the cuda device
    runs on, or why it cannot run here and how to get it."""
    try:
        from .kernels.cuda import runtime
    except ImportError as e:
        return f"cuda available: False (numba-cuda is not installed: {e}); to use it, {_HOW_TO}"
    if runtime.available():
        return f"cuda available: True, {runtime.describe()}"
    return f"cuda available: False (no CUDA GPU found and the simulator is off); to use it, {_HOW_TO}"


class CudaDevice(Device):
    """numba CUDA device arrays; kernels from ``nbmodel.kernels.cuda``."""

    name = "cuda"
    kernel_package = "nbmodel.kernels.cuda"

    def __init__(self):
        try:
            from .kernels.cuda import runtime
        except ImportError as e:
            raise RuntimeError(f"cuda: numba-cuda is not installed ({e}); {_HOW_TO}") from None
        if not runtime.available():
            raise RuntimeError(f"cuda: no CUDA GPU found and the simulator is off; {_HOW_TO}")
        super().__init__()
        self._rt = runtime

    def _load_kernels(self, family):
        try:
            return super()._load_kernels(family)
        except NotImplementedError:
            raise NotImplementedError(f"cuda: the {family!r} kernel family has no CUDA implementation yet "
                                      "(layers using it run on device='cpu')") from None

    def empty(self, shape, dtype):
        return self._rt.cuda.device_array(shape, np.dtype(dtype))

    def zeros(self, shape, dtype):
        arr = self.empty(shape, dtype)
        self.kernels("array").fill(arr, 0)
        return arr

    def full(self, shape, value, dtype):
        arr = self.empty(shape, dtype)
        self.kernels("array").fill(arr, value)
        return arr

    def is_array(self, a):
        return self._rt.is_device_array(a)

    def asarray(self, x, dtype=None):
        if self.is_array(x):
            if dtype is None or np.dtype(x.dtype) == np.dtype(dtype):
                return x
            out = self.empty(x.shape, dtype)
            self.kernels("array").copy(x, out)  # converts the dtype
            return out
        return self._rt.cuda.to_device(np.asarray(x, dtype=dtype, order="C"))

    def to_host(self, a):
        return a.copy_to_host() if self.is_array(a) else np.asarray(a)

    def assign(self, dst, src):
        if self.is_array(src):
            self.kernels("array").copy(src, dst)
            return
        host = np.empty(tuple(dst.shape), np.dtype(dst.dtype))  # fresh strides: never a stride-0 broadcast
        host[...] = src
        dst.copy_to_device(host)

    def synchronize(self):
        self._rt.cuda.synchronize()

    def describe(self):
        return self._rt.describe()
