"""Array family on the CPU: fills, elementwise sums and layout copies that
layers and the model need between the fused kernels (merge layers, gradient
fan-in, loss scaling, concatenation, moving an axis last).

On the CPU the plain copies and sums are NumPy calls: they are memory-bound
and NumPy's loops are as fast as a compiled loop here. The merge layers'
kernels that NumPy would do with temporaries (Maximum/Minimum with the
winner's index, the Dot layer's batched product and L2 normalization) are
@njit. See nbmodel/kernels/contract.py.
"""
from __future__ import annotations

import math

import numpy as np

from ._blas import gemm
from ._jit import jit


def fill(out, value):
    out[...] = value


def copy(src, out):
    out[...] = src


def add(a, b, out):
    np.add(a, b, out=out)


def add_into(out, a):
    out += a


def multiply(a, b, out):
    np.multiply(a, b, out=out)


def scale(out, factor):
    out *= out.dtype.type(factor)


def copy_block(src, out, offset):
    """out[:, offset:offset + src.shape[1], :] = src (3-D views: outer, axis, inner)."""
    out[:, offset:offset + src.shape[1], :] = src


def take_block(src, offset, out):
    """out = src[:, offset:offset + out.shape[1], :] (3-D views: outer, axis, inner)."""
    out[...] = src[:, offset:offset + out.shape[1], :]


def move_axis_last(src, out):
    """(p, c, q) -> (p, q, c): put a channel axis last."""
    out[...] = src.transpose(0, 2, 1)


def move_axis_back(src, out):
    """(p, q, c) -> (p, c, q): the inverse of move_axis_last."""
    out[...] = src.transpose(0, 2, 1)


def reverse_steps(src, out):
    """out[:, t] = src[:, T - 1 - t] for (batch, T, ...) arrays: time reversal."""
    out[...] = src[:, ::-1]


def total(a) -> float:
    """Sum of every element, accumulated in float64, returned as a Python float."""
    return float(a.sum(dtype=np.float64))


def subtract(a, b, out):
    np.subtract(a, b, out=out)


@jit
def _extremum_into(out, arg, a, index, largest):
    for i in range(out.size):
        v = a[i]
        better = v > out[i] if largest else v < out[i]
        if better:
            out[i] = v
            arg[i] = index


def extremum_into(out, arg, a, index, largest):
    """Running maximum (largest) or minimum of merged inputs; arg records which input won.

    Strict comparisons: at a tie the earlier input keeps the element (and its gradient),
    TensorFlow's rule for ``maximum(x, y)`` (x wins when x >= y) applied input by input."""
    if out.size:
        _extremum_into(out.reshape(-1), arg.reshape(-1), a.reshape(-1), int(index), bool(largest))


@jit
def _take_where(dy, arg, index, dx):
    zero = dx.dtype.type(0)
    for i in range(dx.size):
        dx[i] = dy[i] if arg[i] == index else zero


def take_where(dy, arg, index, dx):
    """dx = dy where arg == index, else 0 (the gradient of extremum_into's input ``index``)."""
    if dx.size:
        _take_where(dy.reshape(-1), arg.reshape(-1), int(index), dx.reshape(-1))


@jit
def _batch_matmul(a, b, ta, tb, out):
    for p in range(out.shape[0]):
        if ta and tb:
            gemm(a[p].T, b[p].T, out[p])
        elif ta:
            gemm(a[p].T, b[p], out[p])
        elif tb:
            gemm(a[p], b[p].T, out[p])
        else:
            gemm(a[p], b[p], out[p])


def batch_matmul(a, b, ta, tb, out):
    """out[p] = op(a[p]) @ op(b[p]) (BLAS per sample); op transposes where ta / tb."""
    if out.size:
        if a.shape[1 if ta else 2] == 0:
            out[...] = 0
        else:
            _batch_matmul(a, b, bool(ta), bool(tb), out)


@jit
def _l2_normalize(x, eps, out, inv):
    p, m, q = x.shape
    cap = x.dtype.type(1) / eps
    zero = x.dtype.type(0)
    for r in range(p):
        for e in range(q):
            s = zero
            for j in range(m):
                s += x[r, j, e] * x[r, j, e]
            f = cap if s * cap * cap <= 1 else x.dtype.type(1) / math.sqrt(s)
            inv[r, e] = f
            for j in range(m):
                out[r, j, e] = x[r, j, e] * f


def l2_normalize(x, eps, out, inv):
    """out = x * min(1 / ||x||, 1 / eps) along axis 1 of x (p, m, q) (Keras ops.normalize, order 2)."""
    if x.size:
        _l2_normalize(x, x.dtype.type(eps), out, inv)


@jit
def _l2_normalize_backward(y, inv, dy, eps, dx):
    p, m, q = y.shape
    cap = y.dtype.type(1) / eps
    zero = y.dtype.type(0)
    for r in range(p):
        for e in range(q):
            f = inv[r, e]
            dot = zero
            if f < cap:  # the norm's own gradient; where the cap holds, inv is a constant
                for j in range(m):
                    dot += dy[r, j, e] * y[r, j, e]
            for j in range(m):
                dx[r, j, e] = f * (dy[r, j, e] - y[r, j, e] * dot)


def l2_normalize_backward(y, inv, dy, eps, dx):
    """Gradient of l2_normalize from its output y and inv: inv * (dy - y * sum(dy * y)) (uncapped)."""
    if y.size:
        _l2_normalize_backward(y, inv, dy, y.dtype.type(eps), dx)
