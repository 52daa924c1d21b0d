"""Pooling family on CUDA: max, average and global pooling, forward and
backward, channels_last (see nbmodel/kernels/contract.py and the CPU twin
nbmodel/kernels/cpu/pooling.py, whose semantics these keep: x (n, h, w, c),
1-D pooling as 2-D with h = 1; padding never wins a max and is not counted
in a mean; a max records the flat position ih * w + iw of the first
maximum, a NaN at a window's first position stays, later NaNs never win).

Windowed pools, one thread per element, neighbouring threads on
neighbouring channels (coalesced):

- ``_max_pool`` / ``_avg_pool``: one thread per output element, scanning its
  window in the CPU's order (the same maximum, position and sum).
- ``_avg_pool_grad``: one thread per element of dx, gathering dy / count from
  every window that covers it, in the CPU's order of additions.
- max backward where the windows tile the input (strides equal to the
  pool size, the usual pool): ``_max_pool_route``, one thread per element
  of dx, which lies in at most one window: that window's dy where its
  recorded maximum is this element, else 0 (as the CPU writes it).
- max backward with overlapping windows (or gaps between them): dx is
  zeroed (``array.fill``), then ``_max_pool_scatter`` runs one thread per
  (image, channel), adding that column's dy to the recorded positions output
  by output. One thread per output with atomic adds would sum overlapping
  windows in a varying order; this way the result is deterministic and in
  the CPU's order.

Global pools over x (n, steps, c): ``_global_avg`` and ``_global_max``, one
block per (image, up to 32 channels), up to 8 lanes striding over the steps,
the lanes' partial sums (or maxima with their positions) meeting in a
shared-memory tree, built per dtype (``per_dtype``) for their shared arrays.
Their backward passes write one element of dx per thread.
"""
from __future__ import annotations

import math

from ..cpu._jit import inline
from .array import fill, nhwc_index
from .gemm import FLOATS, per_dtype
from .runtime import cuda, kernel, launch_1d, shared_helper, types

_COLS = 32       # channels per block of the global pools, at most (a warp along a row: coalesced)
_LANES = 8       # step lanes per block of the global pools, at most (a power of two: the tree halves it)
_LANE_STEPS = 32  # steps per lane before a global pool takes another lane

_I = types.int64
_WINDOW = (_I,) * 6  # ph, pw, sh, sw, pt, pl
_ARG4 = types.int32[:, :, :, ::1]
_ARG3 = types.int32[:, :, ::1]


def _img(t):
    return t[:, :, :, ::1]


def _seq(t):
    return t[:, :, ::1]


def _mat(t):
    return t[:, ::1]


@inline
def _window_of(e, x, out, ph, pw, sh, sw, pt, pl):
    """Output element e of out (n, oh, ow, c) as (b, i, j, ch) and its window's rows
    h0..h1 and columns w0..w1 inside x (padding cut off)."""
    b, i, j, ch = nhwc_index(e, out)
    h0 = max(i * sh - pt, 0)
    h1 = min(i * sh - pt + ph, x.shape[1])
    w0 = max(j * sw - pl, 0)
    w1 = min(j * sw - pl + pw, x.shape[2])
    return b, i, j, ch, h0, h1, w0, w1


_window = shared_helper(_window_of)


@kernel(*[(_img(t), *_WINDOW, _img(t), _ARG4) for t in FLOATS])
def _max_pool(x, ph, pw, sh, sw, pt, pl, out, arg):
    """out = the window's maximum, arg its flat position (the first one: strictly greater wins)."""
    e = cuda.grid(1)
    if e < out.size:
        w = x.shape[2]
        b, i, j, ch, h0, h1, w0, w1 = _window(e, x, out, ph, pw, sh, sw, pt, pl)
        best = x[b, h0, w0, ch]
        at = h0 * w + w0
        for ih in range(h0, h1):
            for iw in range(w0, w1):
                v = x[b, ih, iw, ch]
                if v > best:
                    best = v
                    at = ih * w + iw
        out[b, i, j, ch] = best
        arg[b, i, j, ch] = at


@kernel(*[(_img(t), _ARG4, *_WINDOW[2:], _img(t)) for t in FLOATS])
def _max_pool_route(dy, arg, sh, sw, pt, pl, dx):
    """Windows that tile the input (strides = pool size): dx[b, ih, iw, ch] = dy of the
    one window holding it if the window's maximum was recorded there, else 0; inputs
    past the last window get 0. One thread per element of dx."""
    e = cuda.grid(1)
    if e < dx.size:
        b, ih, iw, ch = nhwc_index(e, dx)
        i = (ih + pt) // sh
        j = (iw + pl) // sw
        v = dx.dtype.type(0)
        if i < dy.shape[1] and j < dy.shape[2] and arg[b, i, j, ch] == ih * dx.shape[2] + iw:
            v = dy[b, i, j, ch]
        dx[b, ih, iw, ch] = v


@kernel(*[(_seq(t), _ARG3, _seq(t)) for t in FLOATS])
def _max_pool_scatter(dy, arg, dx):
    """dx (n, h*w, c) += dy (n, oh*ow, c) at the recorded positions; one thread per
    (image, channel), outputs in order."""
    t = cuda.grid(1)
    c = dx.shape[2]
    if t < dx.shape[0] * c:
        b = t // c
        ch = t - b * c
        for q in range(dy.shape[1]):
            dx[b, arg[b, q, ch], ch] += dy[b, q, ch]


@kernel(*[(_img(t), *_WINDOW, _img(t)) for t in FLOATS])
def _avg_pool(x, ph, pw, sh, sw, pt, pl, out):
    """out = the mean of the window's real (unpadded) elements."""
    e = cuda.grid(1)
    if e < out.size:
        b, i, j, ch, h0, h1, w0, w1 = _window(e, x, out, ph, pw, sh, sw, pt, pl)
        one = out.dtype.type(1)
        acc = one - one
        for ih in range(h0, h1):
            for iw in range(w0, w1):
                acc += x[b, ih, iw, ch]
        out[b, i, j, ch] = acc * (one / out.dtype.type((h1 - h0) * (w1 - w0)))


@kernel(*[(_img(t), *_WINDOW, _img(t)) for t in FLOATS])
def _avg_pool_grad(dy, ph, pw, sh, sw, pt, pl, dx):
    """dx[b, ih, iw, ch] = the sum of dy / count over the windows that cover (ih, iw)."""
    e = cuda.grid(1)
    if e < dx.size:
        h = dx.shape[1]
        w = dx.shape[2]
        oh = dy.shape[1]
        ow = dy.shape[2]
        b, ih, iw, ch = nhwc_index(e, dx)
        # windows i cover ih when i*sh - pt <= ih < i*sh - pt + ph (numerators kept >= 0 for //)
        i_lo = 0 if ih + pt < ph else (ih + pt - ph) // sh + 1
        i_hi = min((ih + pt) // sh, oh - 1)
        j_lo = 0 if iw + pl < pw else (iw + pl - pw) // sw + 1
        j_hi = min((iw + pl) // sw, ow - 1)
        one = dx.dtype.type(1)
        acc = one - one
        for i in range(i_lo, i_hi + 1):
            rows = min(i * sh - pt + ph, h) - max(i * sh - pt, 0)
            for j in range(j_lo, j_hi + 1):
                cols = min(j * sw - pl + pw, w) - max(j * sw - pl, 0)
                acc += dy[b, i, j, ch] * (one / dx.dtype.type(rows * cols))
        dx[b, ih, iw, ch] = acc


def _build_global_avg(nbt):
    def _global_avg(x, out):
        """out[b, ch] = mean of x[b, :, ch]; block (image b, channels ch0..ch0+bx): thread (tx, ty)
        sums steps ty, ty + by, ... of channel ch0 + tx; the lanes' sums meet in shared memory."""
        part = cuda.shared.array((_LANES, _COLS), nbt)
        tx = cuda.threadIdx.x
        ty = cuda.threadIdx.y
        lanes = cuda.blockDim.y
        b = cuda.blockIdx.x
        ch = cuda.blockIdx.y * cuda.blockDim.x + tx
        steps = x.shape[1]
        acc = nbt(0)
        if ch < x.shape[2]:
            for p in range(ty, steps, lanes):
                acc += x[b, p, ch]
        part[ty, tx] = acc
        cuda.syncthreads()
        s = lanes // 2
        while s > 0:
            if ty < s:
                part[ty, tx] += part[ty + s, tx]
            cuda.syncthreads()
            s //= 2
        if ty == 0 and ch < x.shape[2]:
            out[b, ch] = part[0, tx] * (nbt(1) / nbt(steps))

    return _global_avg


def _build_global_max(nbt):
    def _global_max(x, out, arg):
        """out[b, ch] = max of x[b, :, ch], arg its first position; the layout of _global_avg.
        A lane keeps its first maximum above -inf (NaNs never win; position ``steps``: none),
        the tree the earlier of equal maxima. A column with none holds only -inf and NaN: the
        CPU's scan then keeps step 0, as does a NaN at step 0, which the last step restores."""
        val = cuda.shared.array((_LANES, _COLS), nbt)
        pos = cuda.shared.array((_LANES, _COLS), types.int64)
        tx = cuda.threadIdx.x
        ty = cuda.threadIdx.y
        lanes = cuda.blockDim.y
        b = cuda.blockIdx.x
        ch = cuda.blockIdx.y * cuda.blockDim.x + tx
        steps = x.shape[1]
        best = -nbt(math.inf)
        at = steps
        if ch < x.shape[2]:
            for p in range(ty, steps, lanes):
                v = x[b, p, ch]
                if v > best:
                    best = v
                    at = p
        val[ty, tx] = best
        pos[ty, tx] = at
        cuda.syncthreads()
        s = lanes // 2
        while s > 0:
            if ty < s:
                v = val[ty + s, tx]
                if v > val[ty, tx] or (v == val[ty, tx] and pos[ty + s, tx] < pos[ty, tx]):
                    val[ty, tx] = v
                    pos[ty, tx] = pos[ty + s, tx]
            cuda.syncthreads()
            s //= 2
        if ty == 0 and ch < x.shape[2]:
            first = x[b, 0, ch]
            if first != first or pos[0, tx] == steps:  # a leading NaN, or NaNs only
                out[b, ch] = first
                arg[b, ch] = 0
            else:
                out[b, ch] = val[0, tx]
                arg[b, ch] = pos[0, tx]

    return _global_max


_GLOBAL_AVG = per_dtype(_build_global_avg, lambda t: (_seq(t), _mat(t)))
_GLOBAL_MAX = per_dtype(_build_global_max, lambda t: (_seq(t), _mat(t), types.int32[:, ::1]))


@kernel(*[(_mat(t), _seq(t)) for t in FLOATS])
def _global_avg_grad(dy, dx):
    """dx[b, p, ch] = dy[b, ch] / steps; one thread per element of dx."""
    e = cuda.grid(1)
    if e < dx.size:
        steps = dx.shape[1]
        c = dx.shape[2]
        ch = e % c
        b = e // (c * steps)
        one = dx.dtype.type(1)
        dx[b, (e // c) % steps, ch] = dy[b, ch] * (one / dx.dtype.type(steps))


@kernel(*[(_mat(t), types.int32[:, ::1], _seq(t)) for t in FLOATS])
def _global_max_grad(dy, arg, dx):
    """dx[b, p, ch] = dy[b, ch] where p is the recorded position, else 0; one thread per element of dx."""
    e = cuda.grid(1)
    if e < dx.size:
        steps = dx.shape[1]
        c = dx.shape[2]
        ch = e % c
        p = (e // c) % steps
        b = e // (c * steps)
        dx[b, p, ch] = dy[b, ch] if arg[b, ch] == p else dx.dtype.type(0)


def _pow2(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


def _global_launch(x):
    """(grid, block) of the global pools over x (n, steps, c): channels on the block's x,
    step lanes on its y; one lane per _LANE_STEPS steps, so short inputs take one."""
    n, steps, c = x.shape
    cols = min(_COLS, _pow2(c))
    lanes = min(_LANES, _pow2(-(-steps // _LANE_STEPS)))
    return (n, -(-c // cols)), (cols, lanes)


# ------------------------------------------------------------ launchers
def max_pool_forward(x, ph: int, pw: int, sh: int, sw: int, pt: int, pl: int, out, arg) -> None:
    """out = window max of x (n, h, w, c), arg (int32) = flat spatial position
    (ih * w + iw) of the first maximum; windows ph x pw, strides sh, sw,
    padding before pt (top), pl (left)."""
    if out.size:
        _max_pool[launch_1d(out.size)](x, ph, pw, sh, sw, pt, pl, out, arg)


def max_pool_backward(dy, arg, ph: int, pw: int, sh: int, sw: int, pt: int, pl: int, dx) -> None:
    """dx = dy routed to each window's recorded maximum, 0 elsewhere (module doc)."""
    if sh == ph and sw == pw:
        if dx.size:
            _max_pool_route[launch_1d(dx.size)](dy, arg, sh, sw, pt, pl, dx)
        return
    fill(dx, 0)
    n, oh, ow, c = dy.shape
    if n * c and oh * ow:
        _max_pool_scatter[launch_1d(n * c)](dy.reshape(n, oh * ow, c), arg.reshape(n, oh * ow, c),
                                            dx.reshape(n, dx.shape[1] * dx.shape[2], c))


def avg_pool_forward(x, ph: int, pw: int, sh: int, sw: int, pt: int, pl: int, out) -> None:
    """out = mean of the real (unpadded) elements of each window."""
    if out.size:
        _avg_pool[launch_1d(out.size)](x, ph, pw, sh, sw, pt, pl, out)


def avg_pool_backward(dy, ph: int, pw: int, sh: int, sw: int, pt: int, pl: int, dx) -> None:
    """dx = each window's dy / count spread over its real elements."""
    if dx.size:
        _avg_pool_grad[launch_1d(dx.size)](dy, ph, pw, sh, sw, pt, pl, dx)


def global_avg_forward(x, part, out) -> None:
    """out (n, c) = mean over the steps of x (n, steps, c), steps >= 1; part is the
    CPU twin's scratch, unused here (the partial sums live in shared memory)."""
    if out.size:
        grid, block = _global_launch(x)
        _GLOBAL_AVG[out.dtype][grid, block](x, out)


def global_avg_backward(dy, dx) -> None:
    """dx[b, p, :] = dy[b, :] / steps."""
    if dx.size:
        _global_avg_grad[launch_1d(dx.size)](dy, dx)


def global_max_forward(x, out, arg) -> None:
    """out (n, c) = max over the steps of x (n, steps, c), steps >= 1; arg (int32) the
    position of the first maximum."""
    if out.size:
        grid, block = _global_launch(x)
        _GLOBAL_MAX[out.dtype][grid, block](x, out, arg)


def global_max_backward(dy, arg, dx) -> None:
    """dx = dy at the recorded positions, 0 elsewhere."""
    if dx.size:
        _global_max_grad[launch_1d(dx.size)](dy, arg, dx)
