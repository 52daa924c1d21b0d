"""Dense layer: y = act(x @ kernel + bias), forward and backward.

The GEMMs go to BLAS (``np.dot(a, b, out)``); bias and activation are fused
into one pass over the GEMM output, and in backward the activation gradient,
the bias gradient and the GEMM inputs are produced in one pass over dy.
"""
import numpy as np

from ...activations import LINEAR
from .activations import act_grad_scalar, act_scalar
from ._jit import jit


@jit
def dense_forward(x, kernel, bias, use_bias, code, keep_pre, pre, out):
    """out = act(x @ kernel + bias); pre = x @ kernel + bias when keep_pre.

    x (n, d_in), kernel (d_in, units), bias (units,), pre/out (n, units).
    """
    np.dot(x, kernel, out)
    n, m = out.shape
    one = out.dtype.type(1)
    zero = one - one
    for i in range(n):
        for j in range(m):
            v = out[i, j] + (bias[j] if use_bias else zero)
            if keep_pre:
                pre[i, j] = v
            out[i, j] = act_scalar(code, v, one)


@jit
def dense_backward(x, kernel, pre, y, dy, code, use_bias, need_dx, dz, dkernel, dbias, dx):
    """Gradients of dense_forward.

    dz (n, units) is a workspace; dkernel = x.T @ dz, dbias = sum(dz, 0),
    dx = dz @ kernel.T (skipped when need_dx is False, e.g. the first layer).
    """
    n, m = dy.shape
    one = dy.dtype.type(1)
    if use_bias:
        dbias[:] = 0
    if code == LINEAR:
        dz[:, :] = dy
        if use_bias:
            for i in range(n):
                for j in range(m):
                    dbias[j] += dy[i, j]
    else:
        for i in range(n):
            for j in range(m):
                g = dy[i, j] * act_grad_scalar(code, pre[i, j], y[i, j], one)
                dz[i, j] = g
                if use_bias:
                    dbias[j] += g
    np.dot(x.T, dz, dkernel)
    if need_dx:
        np.dot(dz, kernel.T, dx)


@jit
def dropout_forward(x, u, rate, out):
    """out = x / (1 - rate) where u >= rate, else 0 (u uniform in [0, 1))."""
    one = x.dtype.type(1)
    scale = one / (one - rate)
    zero = one - one
    for i in range(x.size):
        out[i] = x[i] * scale if u[i] >= rate else zero


@jit
def dropout_backward(dy, u, rate, dx):
    one = dy.dtype.type(1)
    scale = one / (one - rate)
    zero = one - one
    for i in range(dy.size):
        dx[i] = dy[i] * scale if u[i] >= rate else zero
