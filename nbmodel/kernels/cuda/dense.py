"""Dense family on CUDA: Dense forward/backward and Dropout (see
nbmodel/kernels/contract.py and the CPU twin nbmodel/kernels/cpu/dense.py).

The products go to ``gemm`` (cuBLAS through CuPy on a GPU that has it, the
own tiled kernels otherwise). Around them, one fused pass each way, through
the CPU kernels' scalar helpers (``act_scalar``, ``act_grad``: the math is
written once):

- forward: ``_bias_act``, one thread per output element:
  out = act(out + bias), keeping pre = out + bias for GELU and SILU
  (public as ``bias_act``: the convolution runs it on its GEMM output too);
- backward: ``_act_grad_bias``, a block of 32 columns x 8 row groups:
  dz = dy * act'(pre, y) (ReLU as a select: 0 where y <= 0 even for a
  non-finite dy), and the bias gradient as the column sums of dz from the
  same pass, reduced in shared memory (deterministic: no atomics).
"""
from __future__ import annotations

from ..codes import GELU, SILU
from ..cpu.activations import act_grad, act_scalar
from .gemm import FLOATS, gemm, per_dtype
from .runtime import cuda, kernel, launch_1d, types

_COLS = 32   # columns per block of _act_grad_bias (a warp along a row: coalesced)
_ROWS = 8    # row groups per block of _act_grad_bias


def _one(t):
    return t[::1]


def _mat(t):
    return t[:, ::1]


def _flat(a):
    return a.reshape(a.size)


@kernel(*[(_one(t), _one(t), types.int64, types.boolean, _one(t), types.int64) for t in FLOATS])
def _bias_act(out, bias, code, keep_pre, pre, units):
    """In place over the flat (n * units) GEMM output: out = act(out + bias[col]);
    pre = out + bias too when keep_pre (pre may be out otherwise)."""
    i = cuda.grid(1)
    if i < out.size:
        v = out[i] + bias[i % units]
        if keep_pre:
            pre[i] = v
        out[i] = act_scalar(code, v, out.dtype.type(1))


def _build_act_grad_bias(nbt):
    def _act_grad_bias(dy, pre, y, code, dz, dbias):
        """Block (32, 8) over columns col0..col0+32: thread (ty, tx) walks rows ty, ty + 8, ...
        of column col0 + tx writing dz and summing it; the 8 partial sums meet in shared memory."""
        part = cuda.shared.array((_ROWS, _COLS), nbt)
        tx = cuda.threadIdx.x
        ty = cuda.threadIdx.y
        f = cuda.blockIdx.x * _COLS + tx
        n = dy.shape[0]
        units = dy.shape[1]
        one = nbt(1)
        acc = nbt(0)
        if f < units:
            for r in range(ty, n, _ROWS):
                g = act_grad(code, dy[r, f], pre[r, f], y[r, f], one)
                dz[r, f] = g
                acc += g
        part[ty, tx] = acc
        cuda.syncthreads()
        s = _ROWS // 2
        while s > 0:
            if ty < s:
                part[ty, tx] += part[ty + s, tx]
            cuda.syncthreads()
            s //= 2
        if ty == 0 and f < units:
            dbias[f] = part[0, tx]

    return _act_grad_bias


_ACT_GRAD_BIAS = per_dtype(_build_act_grad_bias,
                           lambda t: (_mat(t), _mat(t), _mat(t), types.int64, _mat(t), _one(t)))


@kernel(*[(_one(t), _one(t), t, _one(t)) for t in FLOATS])
def _dropout(x, u, rate, out):
    """out = x / (1 - rate) where u >= rate, else 0 (the CPU kernel's arithmetic)."""
    i = cuda.grid(1)
    if i < x.size:
        one = x.dtype.type(1)
        scale = one / (one - rate)
        out[i] = x[i] * scale if u[i] >= rate else one - one


# ------------------------------------------------------------ launchers
def bias_act(out, bias, code: int, keep_pre: bool, pre) -> None:
    """In place over a 2-D GEMM output (rows, units): out = act(out + bias);
    pre = out + bias as well when keep_pre (pre may be ``out`` otherwise).
    Not a contract function: the fused pass after the GEMM, shared with conv."""
    o = _flat(out)
    if o.size:
        _bias_act[launch_1d(o.size)](o, bias, int(code), bool(keep_pre), _flat(pre), out.shape[1])


def dense_forward(x, kernel, bias, code, pre, out):
    """out = act(x @ kernel + bias); pre = x @ kernel + bias for GELU/SILU.

    x (n, d_in), kernel (d_in, units), bias (units,), pre/out (n, units);
    pre may be ``out`` when the activation does not need it.
    """
    gemm(x, kernel, out)
    bias_act(out, bias, code, code == GELU or code == SILU, pre)


def dense_backward(x, kernel, pre, y, dy, code, need_dx, dz, dkernel, dbias, dx):
    """Gradients of dense_forward: dz = dy * act'; dbias = sum(dz, 0);
    dkernel = x.T @ dz; dx = dz @ kernel.T unless need_dx is False."""
    units = dy.shape[1]
    if units:
        _ACT_GRAD_BIAS[dz.dtype][-(-units // _COLS), (_COLS, _ROWS)](dy, pre, y, int(code), dz, dbias)
    gemm(x, dz, dkernel, trans_a=True)
    if need_dx:
        gemm(dz, kernel, dx, trans_b=True)


def dropout_forward(x, u, rate, out):
    """out = x / (1 - rate) where u >= rate, else 0 (flat arrays, u uniform in [0, 1))."""
    o = _flat(out)
    if o.size:
        _dropout[launch_1d(o.size)](_flat(x), _flat(u), o.dtype.type(rate), o)


def dropout_backward(dy, u, rate, dx):
    """The forward's mask and scale applied to dy."""
    d = _flat(dx)
    if d.size:
        _dropout[launch_1d(d.size)](_flat(dy), _flat(u), d.dtype.type(rate), d)
