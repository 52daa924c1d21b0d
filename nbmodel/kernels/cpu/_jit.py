"""The one place that sets how CPU kernels are compiled.

Every kernel uses ``@jit`` (serial) or ``@pjit`` (``parallel=True``, for prange
over the batch). ``cache=True`` keeps compiled code on disk across processes;
numba falls back to a user cache directory when the package is read-only and
respects NUMBA_CACHE_DIR.
"""
import numba

from ...config import FASTMATH

jit = numba.njit(cache=True, fastmath=set(FASTMATH), error_model="numpy")
pjit = numba.njit(cache=True, fastmath=set(FASTMATH), error_model="numpy", parallel=True)
# small scalar helpers that are inlined into the kernels that call them
inline = numba.njit(inline="always", fastmath=set(FASTMATH), error_model="numpy", cache=True)
prange = numba.prange
