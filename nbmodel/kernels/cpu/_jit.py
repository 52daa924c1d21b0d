"""The one place that sets how CPU kernels are compiled and when they run in parallel.

Every kernel uses ``@jit`` (serial) or ``@pjit`` (``parallel=True``, for prange
over the batch). ``cache=True`` keeps compiled code on disk across processes;
numba falls back to a user cache directory when the package is read-only and
respects NUMBA_CACHE_DIR.

Scalar and row helpers are ``@inline`` (``inline="always"``): numba inlines
them into the kernel that calls them (so a constant argument such as an
activation code specializes the loop), and a CUDA kernel can call the same
function.
"""
import numba

from ...config import FASTMATH, get_num_threads

jit = numba.njit(cache=True, fastmath=set(FASTMATH), error_model="numpy")
pjit = numba.njit(cache=True, fastmath=set(FASTMATH), error_model="numpy", parallel=True)
# small scalar helpers that are inlined into the kernels that call them
inline = numba.njit(inline="always", fastmath=set(FASTMATH), error_model="numpy", cache=True)
prange = numba.prange

# Elements a pass must touch before it is split across threads: a parallel
# region costs a fork/join (and, on a busy machine, a barrier that waits for a
# descheduled thread) that a small pass cannot repay. Two thresholds, both
# measured where they are used:
#   PAR_MIN              passes that move data with a few flops per element,
#                        split into one block of rows/images per thread by a
#                        separate parallel wrapper (conv im2col/col2im, bias +
#                        activation rows, pooling);
#   PAR_MIN_ELEMENTWISE  loops whose every element does more arithmetic (loss
#                        value and gradient with exp/log, optimizer updates
#                        reading several state arrays), run as a prange over
#                        rows or chunks inside the kernel itself (losses, optim).
PAR_MIN = 1 << 17
PAR_MIN_ELEMENTWISE = 1 << 16


def row_blocks(n: int, work: int, min_work: int | None = None) -> int:
    """Blocks of rows (one per thread) to split a pass over n independent rows into:
    1 (the serial loop) unless there is more than one thread and ``work`` elements
    reach ``min_work`` (default PAR_MIN) and so repay the parallel region."""
    return min(get_num_threads(), n) if work >= (PAR_MIN if min_work is None else min_work) else 1
