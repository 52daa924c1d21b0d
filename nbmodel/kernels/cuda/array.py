"""Array family on CUDA: fills, elementwise sums, block copies, axis moves,
time reversal, a float64 total and the merge layers' kernels (differences,
running maxima/minima with the winner's index, batched products, L2
normalization) (see nbmodel/kernels/contract.py).

Every launcher flattens its C-contiguous arguments and runs one thread per
output element (``runtime.launch_1d``); index arithmetic maps a flat output
index back to the input. ``total`` is a block reduction in shared memory
whose per-block sums are added atomically in float64.
"""
from __future__ import annotations

import math

import numpy as np

from ..cpu._jit import inline
from .runtime import cuda, kernel, launch_1d, result_buffer, shared_helper, types

_F = (types.float32, types.float64)
_I = types.int64
_ANY = (types.float32, types.float64, types.int64, types.int32)


def _flat(a):
    return a.reshape(a.size)


def _one(t):
    return t[::1]


@inline
def _nhwc_index_of(e, a):
    """Flat element e of a C-contiguous (n, h, w, c) array as (b, i, j, ch): the index
    of the one-thread-per-element image kernels (conv, pooling)."""
    c = a.shape[3]
    w = a.shape[2]
    h = a.shape[1]
    return e // (c * w * h), (e // (c * w)) % h, (e // c) % w, e % c


nhwc_index = shared_helper(_nhwc_index_of)


@kernel(*[(_one(t), t) for t in _F])
def _fill(out, value):
    i = cuda.grid(1)
    if i < out.size:
        out[i] = value


@kernel(*[(_one(s), _one(t)) for s in _ANY for t in _F], *[(_one(t), _one(t)) for t in _ANY[2:]])
def _copy(src, out):
    i = cuda.grid(1)
    if i < out.size:
        out[i] = src[i]


@kernel(*[(_one(t), _one(t), _one(t)) for t in _F])
def _add(a, b, out):
    i = cuda.grid(1)
    if i < out.size:
        out[i] = a[i] + b[i]


@kernel(*[(_one(t), _one(t)) for t in _F])
def _add_into(out, a):
    i = cuda.grid(1)
    if i < out.size:
        out[i] += a[i]


@kernel(*[(_one(t), _one(t), _one(t)) for t in _F])
def _multiply(a, b, out):
    i = cuda.grid(1)
    if i < out.size:
        out[i] = a[i] * b[i]


@kernel(*[(_one(t), t) for t in _F])
def _scale(out, factor):
    i = cuda.grid(1)
    if i < out.size:
        out[i] *= factor


@kernel(*[(_one(t), _one(t), types.int64, types.int64, types.int64, types.int64) for t in _F])
def _copy_block(src, out, k, m, inner, offset):
    """out (p, m, inner)[:, offset:offset + k] = src (p, k, inner), one thread per src element."""
    i = cuda.grid(1)
    if i < src.size:
        e = i % inner
        j = (i // inner) % k
        r = i // (inner * k)
        out[(r * m + offset + j) * inner + e] = src[i]


@kernel(*[(_one(t), _one(t), types.int64, types.int64, types.int64, types.int64) for t in _F])
def _take_block(src, out, k, m, inner, offset):
    """out (p, k, inner) = src (p, m, inner)[:, offset:offset + k], one thread per out element."""
    i = cuda.grid(1)
    if i < out.size:
        e = i % inner
        j = (i // inner) % k
        r = i // (inner * k)
        out[i] = src[(r * m + offset + j) * inner + e]


@kernel(*[(_one(t), _one(t), types.int64, types.int64) for t in _F])
def _move_last(src, out, c, q):
    """out (p, q, c) from src (p, c, q), one thread per out element."""
    i = cuda.grid(1)
    if i < out.size:
        ci = i % c
        qi = (i // c) % q
        p = i // (c * q)
        out[i] = src[(p * c + ci) * q + qi]


@kernel(*[(_one(t), _one(t), types.int64, types.int64) for t in _F])
def _move_back(src, out, c, q):
    """out (p, c, q) from src (p, q, c), one thread per out element."""
    i = cuda.grid(1)
    if i < out.size:
        qi = i % q
        ci = (i // q) % c
        p = i // (c * q)
        out[i] = src[(p * q + qi) * c + ci]


@kernel(*[(_one(t), _one(t), types.int64, types.int64) for t in _F])
def _reverse_steps(src, out, steps, inner):
    """out (b, T, inner)[:, t] = src[:, T - 1 - t]."""
    i = cuda.grid(1)
    if i < out.size:
        e = i % inner
        t = (i // inner) % steps
        b = i // (inner * steps)
        out[i] = src[(b * steps + steps - 1 - t) * inner + e]


_SUM_THREADS = 256  # most threads per block of _total (a power of two: the tree halves it)


@kernel(*[(_one(t), types.float64[::1]) for t in _F])
def _total(a, out):
    """out[0] += sum(a) in float64: a shared-memory tree per block, one atomic add per block."""
    part = cuda.shared.array(_SUM_THREADS, types.float64)
    tid = cuda.threadIdx.x
    acc = types.float64(0)
    i = cuda.grid(1)
    stride = cuda.gridsize(1)
    while i < a.size:
        acc += types.float64(a[i])
        i += stride
    part[tid] = acc
    cuda.syncthreads()
    s = cuda.blockDim.x // 2
    while s > 0:
        if tid < s:
            part[tid] += part[tid + s]
        cuda.syncthreads()
        s //= 2
    if tid == 0:
        cuda.atomic.add(out, 0, part[0])


@kernel(*[(_one(t), _one(t), _one(t)) for t in _F])
def _subtract(a, b, out):
    i = cuda.grid(1)
    if i < out.size:
        out[i] = a[i] - b[i]


@kernel(*[(_one(t), types.int32[::1], _one(t), types.int32, types.boolean) for t in _F])
def _extremum_into(out, arg, a, index, largest):
    i = cuda.grid(1)
    if i < out.size:
        v = a[i]
        better = v > out[i] if largest else v < out[i]
        if better:
            out[i] = v
            arg[i] = index


@kernel(*[(_one(t), types.int32[::1], types.int32, _one(t)) for t in _F])
def _take_where(dy, arg, index, dx):
    i = cuda.grid(1)
    if i < dx.size:
        dx[i] = dy[i] if arg[i] == index else dx.dtype.type(0)


@kernel(*[(_one(t), _one(t), types.boolean, types.boolean, _I, _I, _I, _one(t)) for t in _F])
def _batch_matmul(a, b, ta, tb, rows, cols, depth, out):
    """out (p, rows, cols); a (p, rows, depth) or (p, depth, rows) when ta; b likewise. A thread per out element."""
    i = cuda.grid(1)
    if i < out.size:
        c = i % cols
        r = (i // cols) % rows
        p = i // (cols * rows)
        ab = p * rows * depth
        bb = p * depth * cols
        acc = out.dtype.type(0)
        for k in range(depth):
            av = a[ab + k * rows + r] if ta else a[ab + r * depth + k]
            bv = b[bb + c * depth + k] if tb else b[bb + k * cols + c]
            acc += av * bv
        out[i] = acc


@kernel(*[(_one(t), t, _one(t), _one(t), _I, _I) for t in _F])
def _l2_normalize(x, eps, out, inv, m, q):
    """A thread per (p, q) column: its squared sum over the m entries, then the scaled copy."""
    i = cuda.grid(1)
    if i < inv.size:
        e = i % q
        base = (i // q) * m * q + e
        s = x.dtype.type(0)
        for j in range(m):
            v = x[base + j * q]
            s += v * v
        cap = x.dtype.type(1) / eps
        f = cap if s * cap * cap <= x.dtype.type(1) else x.dtype.type(1) / math.sqrt(s)
        inv[i] = f
        for j in range(m):
            out[base + j * q] = x[base + j * q] * f


@kernel(*[(_one(t), _one(t), _one(t), t, _one(t), _I, _I) for t in _F])
def _l2_normalize_backward(y, inv, dy, eps, dx, m, q):
    i = cuda.grid(1)
    if i < inv.size:
        e = i % q
        base = (i // q) * m * q + e
        f = inv[i]
        dot = y.dtype.type(0)
        if f < y.dtype.type(1) / eps:
            for j in range(m):
                dot += dy[base + j * q] * y[base + j * q]
        for j in range(m):
            dx[base + j * q] = f * (dy[base + j * q] - y[base + j * q] * dot)


# ------------------------------------------------------------ launchers
def fill(out, value):
    o = _flat(out)
    _fill[launch_1d(o.size)](o, o.dtype.type(value))


def copy(src, out):
    o = _flat(out)
    _copy[launch_1d(o.size)](_flat(src), o)


def add(a, b, out):
    o = _flat(out)
    _add[launch_1d(o.size)](_flat(a), _flat(b), o)


def add_into(out, a):
    o = _flat(out)
    _add_into[launch_1d(o.size)](o, _flat(a))


def multiply(a, b, out):
    o = _flat(out)
    _multiply[launch_1d(o.size)](_flat(a), _flat(b), o)


def scale(out, factor):
    o = _flat(out)
    _scale[launch_1d(o.size)](o, o.dtype.type(factor))


def copy_block(src, out, offset):
    p, k, inner = src.shape
    if src.size:
        _copy_block[launch_1d(src.size)](_flat(src), _flat(out), k, out.shape[1], inner, offset)


def take_block(src, offset, out):
    p, k, inner = out.shape
    if out.size:
        _take_block[launch_1d(out.size)](_flat(src), _flat(out), k, src.shape[1], inner, offset)


def move_axis_last(src, out):
    p, c, q = src.shape
    if out.size:
        _move_last[launch_1d(out.size)](_flat(src), _flat(out), c, q)


def move_axis_back(src, out):
    p, q, c = src.shape
    if out.size:
        _move_back[launch_1d(out.size)](_flat(src), _flat(out), c, q)


def reverse_steps(src, out):
    steps = src.shape[1]
    if out.size:
        _reverse_steps[launch_1d(out.size)](_flat(src), _flat(out), steps, out.size // (src.shape[0] * steps))


def total(a) -> float:
    out = result_buffer(np.zeros(1, np.float64))
    if a.size:
        threads = 32
        while threads < min(a.size, _SUM_THREADS):
            threads *= 2
        _total[min(-(-a.size // threads), 1024), threads](_flat(a), out)
    return float(out.copy_to_host()[0])


def subtract(a, b, out):
    o = _flat(out)
    _subtract[launch_1d(o.size)](_flat(a), _flat(b), o)


def extremum_into(out, arg, a, index, largest):
    o = _flat(out)
    if o.size:
        _extremum_into[launch_1d(o.size)](o, _flat(arg), _flat(a), np.int32(index), bool(largest))


def take_where(dy, arg, index, dx):
    o = _flat(dx)
    if o.size:
        _take_where[launch_1d(o.size)](_flat(dy), _flat(arg), np.int32(index), o)


def batch_matmul(a, b, ta, tb, out):
    p, rows, cols = out.shape
    depth = a.shape[1] if ta else a.shape[2]
    if out.size:
        _batch_matmul[launch_1d(out.size)](_flat(a), _flat(b), bool(ta), bool(tb), rows, cols, depth, _flat(out))


def l2_normalize(x, eps, out, inv):
    p, m, q = x.shape
    if inv.size:
        _l2_normalize[launch_1d(inv.size)](_flat(x), x.dtype.type(eps), _flat(out), _flat(inv), m, q)


def l2_normalize_backward(y, inv, dy, eps, dx):
    p, m, q = y.shape
    if inv.size:
        _l2_normalize_backward[launch_1d(inv.size)](_flat(y), _flat(inv), _flat(dy), y.dtype.type(eps), _flat(dx),
                                                     m, q)
