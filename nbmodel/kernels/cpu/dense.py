"""Dense layer: y = act(x @ kernel + bias), forward and backward; Dropout.

The GEMMs go to BLAS (``_blas.gemm(a, b, out)``); bias and activation are fused
into one pass over the GEMM output, and in backward the activation gradient
and the bias gradient come from one pass over dy before the two GEMMs.
Layers without a bias pass a zero vector (one add per element costs nothing
next to the GEMM and keeps one specialized loop per activation).
"""
from ._blas import gemm
from ._jit import jit
from .activations import act_grad_bias, bias_act


@jit
def dense_forward(x, kernel, bias, code, pre, out):
    """out = act(x @ kernel + bias); pre = x @ kernel + bias for GELU/SILU.

    x (n, d_in), kernel (d_in, units), bias (units,), pre/out (n, units);
    pre may be ``out`` when the activation does not need it.
    """
    gemm(x, kernel, out)
    bias_act(out, bias, code, pre)


@jit
def dense_backward(x, kernel, pre, y, dy, code, need_dx, dz, dkernel, dbias, dx):
    """Gradients of dense_forward.

    dz (n, units) is a workspace; dkernel = x.T @ dz, dbias = sum(dz, 0),
    dx = dz @ kernel.T (skipped when need_dx is False, e.g. the first layer).
    """
    act_grad_bias(dy, pre, y, code, dz, dbias)
    gemm(x.T, dz, dkernel)
    if need_dx:
        gemm(dz, kernel.T, dx)


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
