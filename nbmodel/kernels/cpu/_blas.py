"""Matrix products inside the CPU kernels: ``gemm(a, b, out)``, out = a @ b.

numba's ``np.dot`` calls SciPy's OpenBLAS. NumPy's wheels ship their own,
newer build (OpenBLAS 0.3.31 beside SciPy's 0.3.30 here), and at one thread
it is faster where the left operand is transposed: the convolution's weight
gradient ``cols.T @ dz`` per block of images 3.5 vs 4.2-5.0 ms, the whole
batch 6.0-6.4 vs 8.2-9.5 ms (conv2 of the cnn), the recurrent and dense
weight gradients 0.67-0.90x the time. Untransposed operands: 0.77-1.02x. A
transposed right operand (``a @ b.T``) is the other way round: 1.05-1.23x
slower on the dense and recurrent shapes. (NumPy's time over SciPy's, both
called from numba, one thread, the reference models' shapes, AVX-512 kernels.)

So ``gemm`` calls NumPy's ``cblas_?gemm`` directly for every product whose
right operand is in rows, whenever NumPy's BLAS runs on one thread: inside the
kernels' per-thread blocks (``config.kernel_blas_serial``) and under a
one-thread policy. Otherwise it is ``np.dot``: threaded products stay in one
BLAS pool, the kernels'. (NumPy's pool no longer spins when idle: importing
nbmodel restarts it with the short timeout,
``config._quiet_openblas_loaded_before``. Its threaded products with a transposed left operand, 0.89-0.93x the time of
SciPy's alone, measured no faster in the step: ``benchmarks.compare`` at two
threads, 8 rounds, gru 1.10, transformer 1.05, the rest within 4%.)

The kernels call three symbols of our own, bound here to NumPy's library's
addresses: numba links them by name, so a kernel cached on disk stays valid
in the next process. Where NumPy's BLAS exports no such symbols (a NumPy
linked against another BLAS; Windows, where a library's dependencies are not
searched), they point at a stand-in that reports 0 threads, so every product
takes np.dot.
"""
import ctypes

import numpy as np
from llvmlite import binding as llvm
from numba import cfunc, types
from numba.extending import overload

from ...config import numpy_blas_library
from ._jit import inline

# CBLAS enums
_ROW_MAJOR, _NO_TRANS, _TRANS = 101, 111, 112


def _numpy_blas_symbols():
    """Addresses of NumPy's (s, d)gemm and get_num_threads (its bundled OpenBLAS, 64-bit
    integers), or None."""
    lib = numpy_blas_library()
    if lib is None:
        return None
    names = ("scipy_cblas_sgemm64_", "scipy_cblas_dgemm64_", "scipy_openblas_get_num_threads64_")
    try:
        return [ctypes.cast(getattr(lib, name), ctypes.c_void_p).value for name in names]
    except AttributeError:  # pragma: no cover - one OpenBLAS build exports all three
        return None


def _stand_in():  # pragma: no cover - NumPy's wheels on Linux and macOS have the symbols
    """Addresses for the three symbols where NumPy's BLAS has none: one function that
    returns 0 threads (so gemm never calls the other two)."""

    @cfunc(types.int32(), cache=True)
    def no_blas_threads():
        return 0

    return [no_blas_threads.address] * 3


def _bind() -> bool:
    """Give the symbols the kernels link their addresses; True when NumPy's BLAS is used."""
    found = _numpy_blas_symbols()
    for name, address in zip(("nbmodel_sgemm", "nbmodel_dgemm", "nbmodel_blas_threads"), found or _stand_in()):
        llvm.add_symbol(name, address)
    return found is not None


NUMPY_BLAS = _bind()

_i32, _i64, _vp = types.int32, types.int64, types.voidptr


def _gemm_type(name, real):
    # cblas_?gemm(order, transa, transb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)
    return types.ExternalFunction(name, types.void(_i32, _i32, _i32, _i64, _i64, _i64, real, _vp, _i64,
                                                   _vp, _i64, real, _vp, _i64))


_sgemm = _gemm_type("nbmodel_sgemm", types.float32)
_dgemm = _gemm_type("nbmodel_dgemm", types.float64)
_blas_threads = types.ExternalFunction("nbmodel_blas_threads", types.int32())


def gemm(a, b, out):
    """out = a @ b for 2-D arrays of one float dtype (out C-contiguous rows); in a
    kernel, NumPy's BLAS when it runs on one thread, else np.dot (module doc)."""
    np.dot(a, b, out=out)


@inline
def _operand(x, rows, cols):
    """(transpose flag, leading dimension) of a 2-D operand for row-major CBLAS, or
    (0, 0) when neither axis has unit stride (or a stride is negative)."""
    isz = x.itemsize
    s0, s1 = x.strides
    if s1 == isz and s0 >= max(1, cols) * isz and s0 % isz == 0:
        return np.int32(_NO_TRANS), s0 // isz
    if s0 == isz and s1 >= max(1, rows) * isz and s1 % isz == 0:
        return np.int32(_TRANS), s1 // isz
    if rows == 1 and s1 == isz:  # a single row: any row stride
        return np.int32(_NO_TRANS), max(1, cols)
    return np.int32(0), 0


@inline
def numpy_blas_route(a, b, out):
    """(transa, lda, ldb, ldc) of the CBLAS call that computes out = a @ b with NumPy's
    BLAS, or transa 0: take np.dot (NumPy's BLAS not on one thread, a transposed or
    strided right operand, out not in rows, or an empty product)."""
    m, k = a.shape
    n = b.shape[1]
    if _blas_threads() == 1 and m > 0 and n > 0 and k > 0 and b.shape[0] == k and out.shape == (m, n):
        ta, lda = _operand(a, m, k)
        tb, ldb = _operand(b, k, n)
        tc, ldc = _operand(out, m, n)
        if tb == _NO_TRANS and tc == _NO_TRANS:
            return ta, lda, ldb, ldc
    return np.int32(0), 0, 0, 0


@overload(gemm, jit_options={"cache": True})
def _gemm_overload(a, b, out):
    if not (isinstance(a, types.Array) and isinstance(b, types.Array) and isinstance(out, types.Array)):
        return None
    dt = a.dtype
    if dt != b.dtype or dt != out.dtype or dt not in (types.float32, types.float64):
        return lambda a, b, out: np.dot(a, b, out)
    call = _sgemm if dt == types.float32 else _dgemm

    def impl(a, b, out):
        ta, lda, ldb, ldc = numpy_blas_route(a, b, out)
        if ta == 0:
            np.dot(a, b, out)
        else:
            m, k = a.shape
            call(np.int32(_ROW_MAJOR), ta, np.int32(_NO_TRANS), m, b.shape[1], k, dt(1), a.ctypes, lda,
                 b.ctypes, ldb, dt(0), out.ctypes, ldc)

    return impl
