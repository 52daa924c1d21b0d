"""Embedding family on CUDA: row gather forward, scatter-add backward (see
nbmodel/kernels/contract.py and nbmodel/kernels/cpu/embedding.py).

Forward runs one thread per output element and validates the ids in the same
pass: the first thread of each position with an id outside [0, V) lowers a
device int to its position with an atomic min, and the launcher returns it to
the host (-1 when every id is valid). Unlike the CPU, which stops at the
first bad id, the rows of the other valid ids are written; the caller raises
either way.

Backward zeroes dtable, then adds each dy element into its row with an
atomic add, so repeated ids add up (in an order that may vary from run to
run: the last bits of a float32 sum). Ids out of range add nothing.
"""
from __future__ import annotations

import numpy as np

from .runtime import cuda, kernel, launch_1d, result_buffer, types

_F = (types.float32, types.float64)
_IDS = (types.int64, types.int32)


@kernel(*[(i[::1], t[:, ::1], t[:, ::1], types.int64[::1]) for i in _IDS for t in _F])
def _gather(ids, table, out, first_bad):
    """One thread per element of out (n, d); with d == 0 one per id (the check only)."""
    k = cuda.grid(1)
    d = table.shape[1]
    w = max(d, 1)
    if k < ids.size * w:
        i = k // w
        j = k - i * w
        row = ids[i]
        if row < 0 or row >= table.shape[0]:
            if j == 0:
                cuda.atomic.min(first_bad, 0, i)
        elif j < d:
            out[i, j] = table[row, j]


@kernel(*[(t[::1],) for t in _F])
def _zero(a):
    k = cuda.grid(1)
    if k < a.size:
        a[k] = 0


@kernel(*[(i[::1], t[:, ::1], t[:, ::1]) for i in _IDS for t in _F])
def _scatter_add(ids, dy, dtable):
    k = cuda.grid(1)
    d = dtable.shape[1]
    if k < ids.size * d:
        i = k // d
        j = k - i * d
        row = ids[i]
        if row >= 0 and row < dtable.shape[0]:
            cuda.atomic.add(dtable, (row, j), dy[i, j])


def embedding_forward(ids, table, out):
    """Returns to the host the first position whose id is outside [0, V), or -1."""
    n = ids.size
    if not n:
        return -1
    first_bad = result_buffer(np.full(1, n, np.int64))
    _gather[launch_1d(n * max(table.shape[1], 1))](ids, table, out, first_bad)
    bad = int(first_bad.copy_to_host()[0])
    return -1 if bad == n else bad


def embedding_backward(ids, dy, dtable):
    if dtable.size:
        flat = dtable.reshape(dtable.size)
        _zero[launch_1d(flat.size)](flat)
    if ids.size and dtable.shape[1]:
        _scatter_add[launch_1d(ids.size * dtable.shape[1])](ids, dy, dtable)
