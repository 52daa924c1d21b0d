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

from ..codes import ELU, GELU, LEAKY_RELU, LINEAR, RELU, SIGMOID, SILU, TANH
from ._jit import inline, jit
from ._math import exp_store, row_dot, row_max, scale_row


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
        return zero if v <= zero else v  # NaN stays NaN (Keras, PyTorch); max(0, NaN) would give 0
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


# ---------------------------------------------------------------------------
# Fused "bias + activation" passes over a GEMM output, for every layer family
# (dense calls them on the whole output, conv on blocks of rows, one block per
# thread). The activation code is a runtime value; a loop that tests it per
# element does not vectorize (measured: 135 us vs 2.4 us for 128x256 float32
# relu). So each kernel dispatches once on the code to a loop inlined with
# that code as a constant, which LLVM then specializes and vectorizes.
# ---------------------------------------------------------------------------


@inline
def _bias_act_loop(out, bias, code, keep_pre, r0, r1, pre, one):
    m = out.shape[1]
    for r in range(r0, r1):
        for f in range(m):
            v = out[r, f] + bias[f]
            if keep_pre:
                pre[r, f] = v
            out[r, f] = act_scalar(code, v, one)


@jit
def bias_act_rows(out, bias, code, keep_pre, r0, r1, pre):
    """In place over rows r0..r1 of a 2-D GEMM output: out = act(out + bias);
    pre = out + bias as well when keep_pre (pre is unused, may be ``out``,
    otherwise).

    keep_pre is what GELU and SILU need for their gradient; it is honoured
    for every code (the other codes then run the generic loop). In place on
    purpose: with a separate input array the loop would need a runtime
    overlap check, which fails when the caller passes the output as input,
    and runs scalar (measured 3.5x slower for float32 relu).
    """
    one = out.dtype.type(1)
    if keep_pre:
        if code == GELU:
            _bias_act_loop(out, bias, GELU, True, r0, r1, pre, one)
        elif code == SILU:
            _bias_act_loop(out, bias, SILU, True, r0, r1, pre, one)
        else:
            _bias_act_loop(out, bias, code, True, r0, r1, pre, one)
    elif code == RELU:
        _bias_act_loop(out, bias, RELU, False, r0, r1, pre, one)
    elif code == SIGMOID:
        _bias_act_loop(out, bias, SIGMOID, False, r0, r1, pre, one)
    elif code == TANH:
        _bias_act_loop(out, bias, TANH, False, r0, r1, pre, one)
    elif code == GELU:
        _bias_act_loop(out, bias, GELU, False, r0, r1, pre, one)
    elif code == LEAKY_RELU:
        _bias_act_loop(out, bias, LEAKY_RELU, False, r0, r1, pre, one)
    elif code == ELU:
        _bias_act_loop(out, bias, ELU, False, r0, r1, pre, one)
    elif code == SILU:
        _bias_act_loop(out, bias, SILU, False, r0, r1, pre, one)
    else:
        _bias_act_loop(out, bias, LINEAR, False, r0, r1, pre, one)


@jit
def bias_act(out, bias, code, pre):
    """In place over a 2-D GEMM output: out = act(out + bias).

    For GELU and SILU, whose gradient needs the pre-activation, pre = out + bias
    is kept as well (pre is unused, may be ``out``, for the other codes).
    """
    bias_act_rows(out, bias, code, code == GELU or code == SILU, 0, out.shape[0], pre)


@inline
def act_grad(code, dy, z, y, one):
    """dy * act'(z, y); ReLU as a select, so a masked gradient is 0 even when dy is not finite."""
    if code == RELU:
        return dy if y > one - one else one - one
    return dy * act_grad_scalar(code, z, y, one)


@inline
def _act_grad_loop(pre, y, dy, code, r0, r1, dz, one):
    # one flat loop over the rows' elements (C-contiguous rows): a loop per row of a
    # few dozen features pays its alias checks and remainder every row (a 50176 x 32
    # ReLU gradient: 536 -> 292 us)
    m = dy.shape[1]
    pf = pre.reshape(-1)
    yf = y.reshape(-1)
    dyf = dy.reshape(-1)
    dzf = dz.reshape(-1)
    for q in range(r0 * m, r1 * m):
        u = np.uint64(q)
        dzf[u] = act_grad(code, dyf[u], pf[u], yf[u], one)


@inline
def _act_grad_sum_loop(pre, y, dy, code, r0, r1, dz, acc, one):
    # the gradient of a block of rows that stays in L1, then its column sums: adding
    # into acc in the same loop stops it vectorizing (acc may alias dz), 2.6x slower
    m = dy.shape[1]
    step = max(1, 4096 // m)
    for b0 in range(r0, r1, step):
        b1 = min(r1, b0 + step)
        _act_grad_loop(pre, y, dy, code, b0, b1, dz, one)
        for r in range(b0, b1):
            for f in range(m):
                acc[f] += dz[r, f]


@inline
def act_grad_rows(pre, y, dy, code, r0, r1, dz):
    """dz[r] = dy[r] * act'(pre[r], y[r]) for rows r0..r1 of 2-D arrays (dz may be dy).

    Inlined into its caller (like act_grad_sum_rows): a caller that passes one
    array as dy and dz then runs in place at vector speed; as a separate
    function the two would be distinct pointers and the loop would fall back
    to scalar code behind a failed overlap check.
    """
    one = dy.dtype.type(1)
    if code == RELU:
        _act_grad_loop(pre, y, dy, RELU, r0, r1, dz, one)
    elif code == SIGMOID:
        _act_grad_loop(pre, y, dy, SIGMOID, r0, r1, dz, one)
    elif code == TANH:
        _act_grad_loop(pre, y, dy, TANH, r0, r1, dz, one)
    elif code == GELU:
        _act_grad_loop(pre, y, dy, GELU, r0, r1, dz, one)
    elif code == LEAKY_RELU:
        _act_grad_loop(pre, y, dy, LEAKY_RELU, r0, r1, dz, one)
    elif code == ELU:
        _act_grad_loop(pre, y, dy, ELU, r0, r1, dz, one)
    elif code == SILU:
        _act_grad_loop(pre, y, dy, SILU, r0, r1, dz, one)
    else:
        _act_grad_loop(pre, y, dy, LINEAR, r0, r1, dz, one)


@inline
def act_grad_sum_rows(pre, y, dy, code, r0, r1, dz, acc):
    """act_grad_rows, and acc[f] += the sum of dz[r0:r1, f] (acc is not zeroed)
    in the same pass: the bias gradient."""
    one = dy.dtype.type(1)
    if code == RELU:
        _act_grad_sum_loop(pre, y, dy, RELU, r0, r1, dz, acc, one)
    elif code == SIGMOID:
        _act_grad_sum_loop(pre, y, dy, SIGMOID, r0, r1, dz, acc, one)
    elif code == TANH:
        _act_grad_sum_loop(pre, y, dy, TANH, r0, r1, dz, acc, one)
    elif code == GELU:
        _act_grad_sum_loop(pre, y, dy, GELU, r0, r1, dz, acc, one)
    elif code == LEAKY_RELU:
        _act_grad_sum_loop(pre, y, dy, LEAKY_RELU, r0, r1, dz, acc, one)
    elif code == ELU:
        _act_grad_sum_loop(pre, y, dy, ELU, r0, r1, dz, acc, one)
    elif code == SILU:
        _act_grad_sum_loop(pre, y, dy, SILU, r0, r1, dz, acc, one)
    else:
        _act_grad_sum_loop(pre, y, dy, LINEAR, r0, r1, dz, acc, one)


@jit
def act_grad_bias(dy, pre, y, code, dz, dbias):
    """dz = dy * act'(pre, y) over a 2-D array and dbias = sum of dz over rows, in one pass."""
    dbias[:] = 0
    act_grad_sum_rows(pre, y, dy, code, 0, dy.shape[0], dz, dbias)


@jit
def softmax_rows(x, out):
    """Numerically safe softmax over the last axis of a 2-D array (out may be x)."""
    one = x.dtype.type(1)
    for i in range(x.shape[0]):
        m = row_max(x[i])
        s = exp_store(x[i], m, out[i])
        scale_row(out[i], one / s)


@jit
def softmax_rows_backward(y, dy, dx):
    """dx = y * (dy - sum(dy * y)) row by row."""
    n, m = y.shape
    for i in range(n):
        dot = row_dot(dy[i], y[i])
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
