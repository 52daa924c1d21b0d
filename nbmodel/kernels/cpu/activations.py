"""Elementwise activations, forward and backward, for every activation code.

``act_scalar``/``act_grad_scalar`` are inlined into the kernels of other
families (dense, conv, recurrent) so that bias + activation fuse into the pass
that follows a GEMM. Constants are cast to the input's type so float32 kernels
stay in float32: numba promotes ``float32 op <Python literal>`` to float64,
so the scalar helpers take ``one`` (``x.dtype.type(1)``) from the calling
kernel and build every other constant from it.
"""
import math

import numpy as np

from ...activations import ELU, GELU, LEAKY_RELU, RELU, SIGMOID, SILU, TANH
from ._jit import inline, jit


@inline
def sigmoid_scalar(v, one):
    if v >= one - one:
        return one / (one + math.exp(-v))
    e = math.exp(v)
    return e / (one + e)


@inline
def leaky_slope(one):
    return one / (one + one + one + one + one)  # 0.2 in the caller's float type


@inline
def act_scalar(code, v, one):
    """Activation ``code`` applied to one value (softmax is not elementwise)."""
    zero = one - one
    if code == RELU:
        return v if v > zero else zero
    if code == SIGMOID:
        return sigmoid_scalar(v, one)
    if code == TANH:
        return math.tanh(v)
    if code == GELU:
        half = one / (one + one)
        return half * v * (one + math.erf(v * (one / math.sqrt(one + one))))
    if code == LEAKY_RELU:
        return v if v > zero else v * leaky_slope(one)
    if code == ELU:
        return v if v > zero else math.expm1(v)
    if code == SILU:
        return v * sigmoid_scalar(v, one)
    return v


@inline
def act_grad_scalar(code, z, y, one):
    """d act / d z, from the pre-activation z and/or the output y."""
    zero = one - one
    if code == RELU:
        return one if y > zero else zero
    if code == SIGMOID:
        return y * (one - y)
    if code == TANH:
        return one - y * y
    if code == GELU:
        half = one / (one + one)
        cdf = half * (one + math.erf(z * (one / math.sqrt(one + one))))
        pdf = math.exp(-half * z * z) / math.sqrt((one + one) * math.acos(-one))
        return cdf + z * pdf
    if code == LEAKY_RELU:
        return one if y > zero else leaky_slope(one)
    if code == ELU:
        return one if y > zero else y + one
    if code == SILU:
        s = sigmoid_scalar(z, one)
        return s * (one + z * (one - s))
    return one


@jit
def softmax_rows(x, out):
    """Numerically safe softmax over the last axis of a 2-D array."""
    n, m = x.shape
    for i in range(n):
        mx = x[i, 0]
        for j in range(1, m):
            if x[i, j] > mx:
                mx = x[i, j]
        s = x.dtype.type(0)
        for j in range(m):
            e = math.exp(x[i, j] - mx)
            out[i, j] = e
            s += e
        inv = x.dtype.type(1) / s
        for j in range(m):
            out[i, j] *= inv


@jit
def softmax_rows_backward(y, dy, dx):
    """dx = y * (dy - sum(dy * y)) row by row."""
    n, m = y.shape
    for i in range(n):
        dot = y.dtype.type(0)
        for j in range(m):
            dot += dy[i, j] * y[i, j]
        for j in range(m):
            dx[i, j] = y[i, j] * (dy[i, j] - dot)


@jit
def activation_forward(code, x, out):
    """out = act(x) over a flat (contiguous, raveled) array; softmax needs 2-D."""
    one = x.dtype.type(1)
    for i in range(x.size):
        out[i] = act_scalar(code, x[i], one)


@jit
def activation_backward(code, z, y, dy, dx):
    """dx = dy * act'(z) over flat arrays (z may be y when the code does not need z)."""
    one = y.dtype.type(1)
    for i in range(y.size):
        dx[i] = dy[i] * act_grad_scalar(code, z[i], y[i], one)
