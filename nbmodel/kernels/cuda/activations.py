"""Activations family on CUDA (see nbmodel/kernels/contract.py).

The elementwise kernels run one thread per element and compute through the
CPU kernels' scalar helpers (``act_scalar``, ``act_grad_scalar`` of
nbmodel/kernels/cpu/activations.py, ``@njit(inline="always")``): numba-cuda
compiles a plain njit function called from a CUDA kernel as a device
function, so the math is written once. Their constants derive from
``one = x.dtype.type(1)``, which keeps float32 kernels in float32.

Softmax over rows: one thread per row when a row is short (up to 32
elements), otherwise one block per row (32 to 256 threads, by width) with a
shared-memory tree for the row maximum and the sum. A row holding a NaN, or
+inf, comes out all NaN, as on the CPU.
"""
from __future__ import annotations

import math

from ..cpu.activations import act_grad_scalar, act_scalar
from .gemm import FLOATS, per_dtype
from .runtime import cuda, kernel, launch_1d, types

_THREAD_ROW_MAX = 32   # widths up to this: one thread per row
_ROW_THREADS = 256     # most threads of a block per row (the shared reduction arrays' size)


def _one(t):
    return t[::1]


def _mat(t):
    return t[:, ::1]


def _flat(a):
    return a.reshape(a.size)


# ------------------------------------------------------------ elementwise
@kernel(*[(types.int64, _one(t), _one(t)) for t in FLOATS])
def _act_forward(code, x, out):
    i = cuda.grid(1)
    if i < x.size:
        out[i] = act_scalar(code, x[i], x.dtype.type(1))


@kernel(*[(types.int64, _one(t), _one(t), _one(t), _one(t)) for t in FLOATS])
def _act_backward(code, z, y, dy, dx):
    i = cuda.grid(1)
    if i < y.size:
        dx[i] = dy[i] * act_grad_scalar(code, z[i], y[i], y.dtype.type(1))


# ------------------------------------------------------------ softmax, one thread per row
@kernel(*[(_mat(t), _mat(t)) for t in FLOATS])
def _softmax_thread(x, out):
    r = cuda.grid(1)
    if r < x.shape[0]:
        w = x.shape[1]
        m = x[r, 0]
        for j in range(1, w):
            m = max(m, x[r, j])
        s = x.dtype.type(0)
        for j in range(w):
            e = math.exp(x[r, j] - m)
            out[r, j] = e
            s += e
        inv = x.dtype.type(1) / s
        for j in range(w):
            out[r, j] *= inv


@kernel(*[(_mat(t), _mat(t), _mat(t)) for t in FLOATS])
def _softmax_back_thread(y, dy, dx):
    r = cuda.grid(1)
    if r < y.shape[0]:
        w = y.shape[1]
        dot = y.dtype.type(0)
        for j in range(w):
            dot += dy[r, j] * y[r, j]
        for j in range(w):
            dx[r, j] = y[r, j] * (dy[r, j] - dot)


# ------------------------------------------------------------ softmax, one block per row
def _build_softmax_block(nbt):
    def _softmax_block(x, out):
        """Block r: row r; every thread strides over the row (out may be x: each element
        is read and written by the same thread, after the whole row's maximum is known)."""
        red = cuda.shared.array(_ROW_THREADS, nbt)
        r = cuda.blockIdx.x
        tid = cuda.threadIdx.x
        nt = cuda.blockDim.x
        w = x.shape[1]
        m = x[r, 0]
        for j in range(tid, w, nt):
            m = max(m, x[r, j])
        red[tid] = m
        cuda.syncthreads()
        s = nt // 2
        while s > 0:
            if tid < s:
                red[tid] = max(red[tid], red[tid + s])
            cuda.syncthreads()
            s //= 2
        m = red[0]
        cuda.syncthreads()  # everyone has read red[0] before it is reused
        acc = nbt(0)
        for j in range(tid, w, nt):
            e = math.exp(x[r, j] - m)
            out[r, j] = e
            acc += e
        red[tid] = acc
        cuda.syncthreads()
        s = nt // 2
        while s > 0:
            if tid < s:
                red[tid] += red[tid + s]
            cuda.syncthreads()
            s //= 2
        inv = nbt(1) / red[0]
        for j in range(tid, w, nt):
            out[r, j] *= inv

    return _softmax_block


def _build_softmax_back_block(nbt):
    def _softmax_back_block(y, dy, dx):
        """Block r: dx[r] = y[r] * (dy[r] - sum(dy[r] * y[r])) (dx may be dy)."""
        red = cuda.shared.array(_ROW_THREADS, nbt)
        r = cuda.blockIdx.x
        tid = cuda.threadIdx.x
        nt = cuda.blockDim.x
        w = y.shape[1]
        acc = nbt(0)
        for j in range(tid, w, nt):
            acc += dy[r, j] * y[r, j]
        red[tid] = acc
        cuda.syncthreads()
        s = nt // 2
        while s > 0:
            if tid < s:
                red[tid] += red[tid + s]
            cuda.syncthreads()
            s //= 2
        dot = red[0]
        for j in range(tid, w, nt):
            dx[r, j] = y[r, j] * (dy[r, j] - dot)

    return _softmax_back_block


_SOFTMAX_BLOCK = per_dtype(_build_softmax_block, lambda t: (_mat(t), _mat(t)))
_SOFTMAX_BACK_BLOCK = per_dtype(_build_softmax_back_block, lambda t: (_mat(t), _mat(t), _mat(t)))


def _row_threads(width: int) -> int:
    """Threads per row block: a power of two from 32 to 256, about 4 elements each."""
    nt = 32
    while nt < _ROW_THREADS and nt * 4 < width:
        nt *= 2
    return nt


# ------------------------------------------------------------ launchers
def activation_forward(code, x, out):
    """out = act(x) elementwise (any code but softmax; softmax is linear here, as on the CPU)."""
    o = _flat(out)
    if o.size:
        _act_forward[launch_1d(o.size)](int(code), _flat(x), o)


def activation_backward(code, z, y, dy, dx):
    """dx = dy * act'(z, y) elementwise (z may be y when the code does not need z)."""
    d = _flat(dx)
    if d.size:
        _act_backward[launch_1d(d.size)](int(code), _flat(z), _flat(y), _flat(dy), d)


def softmax_rows(x, out):
    """Softmax over the last axis of 2-D x (out may be x)."""
    n, w = x.shape
    if n == 0 or w == 0:
        return
    if w <= _THREAD_ROW_MAX:
        _softmax_thread[launch_1d(n)](x, out)
    else:
        _SOFTMAX_BLOCK[out.dtype][n, _row_threads(w)](x, out)


def softmax_rows_backward(y, dy, dx):
    """dx = y * (dy - sum(dy * y)) per row (dx may be dy)."""
    n, w = y.shape
    if n == 0 or w == 0:
        return
    if w <= _THREAD_ROW_MAX:
        _softmax_back_thread[launch_1d(n)](y, dy, dx)
    else:
        _SOFTMAX_BACK_BLOCK[dx.dtype][n, _row_threads(w)](y, dy, dx)
