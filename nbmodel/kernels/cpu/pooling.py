"""Pooling (max, average, global), forward and backward, channels_last.

x (n, h, w, c); 1-D pooling is 2-D pooling with h = 1. Loops run over output
pixels with the channel loop innermost (contiguous, vectorized). Max pooling
records, per output element, the flat spatial index (ih * w + iw) of the
winning input, so backward routes dy without re-reading x: where the windows
tile the input (strides equal to the pool size, the usual pool) each input
element is written once, dy or 0, in dx's order (two inputs of a window row
in one vectorized channel loop; with cold caches this beats zeroing dx and
scattering: the cnn's first pool 581-683 -> 326-565 us, hot 238-339 ->
156-166), otherwise dx is zeroed and dy added at each maximum. Padding
("same") never wins a max and is not counted in an average, like Keras.
Flat unsigned indices let numba skip its negative-index checks so the
channel loops vectorize. Each pass is a serial body over a range of images
and a wrapper that splits the images into one block per thread when there is
enough work (PAR_MIN elements) and more than one thread (``row_blocks``);
blocks of whole images keep the backward scatters free of races. The launch
functions (max_pool_*, avg_pool_*, global_*) take no thread count.
"""
import numpy as np

from ._jit import inline, jit, pjit, prange, row_blocks


@inline
def _max_of_four(xf, s00, s01, s10, s11, first, w, of, af, o, c):
    """A whole 2 x 2 window (the usual pool) in one loop over the channels: the
    first maximum in scan order and its flat spatial index. One vectorized
    loop instead of one per window position (the cnn's first pool, one thread: 0.55 -> 0.21 ms)."""
    for ch in range(c):
        m = xf[np.uint64(s00 + ch)]
        a = first
        v = xf[np.uint64(s01 + ch)]
        if v > m:
            m = v
            a = first + 1
        v = xf[np.uint64(s10 + ch)]
        if v > m:
            m = v
            a = first + w
        v = xf[np.uint64(s11 + ch)]
        if v > m:
            m = v
            a = first + w + 1
        of[np.uint64(o + ch)] = m
        af[np.uint64(o + ch)] = a


@jit
def _max_pool_forward(x, ph, pw, sh, sw, pt, pl, b0, b1, out, arg):
    _, h, w, c = x.shape
    _, oh, ow, _ = out.shape
    xf = x.reshape(-1)
    of = out.reshape(-1)
    af = arg.reshape(-1)
    for r in range(b0 * oh, b1 * oh):
        b = r // oh
        i = r - b * oh
        h0 = max(i * sh - pt, 0)
        h1 = min(i * sh - pt + ph, h)
        for j in range(ow):
            w0 = max(j * sw - pl, 0)
            w1 = min(j * sw - pl + pw, w)
            o = ((b * oh + i) * ow + j) * c
            s = ((b * h + h0) * w + w0) * c
            first = h0 * w + w0
            if h1 - h0 == 2 and w1 - w0 == 2:
                _max_of_four(xf, s, s + c, s + w * c, s + (w + 1) * c, first, w, of, af, o, c)
                continue
            for ch in range(c):
                of[np.uint64(o + ch)] = xf[np.uint64(s + ch)]
                af[np.uint64(o + ch)] = first
            for ih in range(h0, h1):
                for iw in range(w0, w1):
                    s = ((b * h + ih) * w + iw) * c
                    p = ih * w + iw
                    for ch in range(c):
                        # unconditional stores of selects: the loop vectorizes
                        v = xf[np.uint64(s + ch)]
                        m = of[np.uint64(o + ch)]
                        a = af[np.uint64(o + ch)]
                        better = v > m
                        of[np.uint64(o + ch)] = v if better else m
                        af[np.uint64(o + ch)] = p if better else a


@inline
def _route_pair(dyf, af, o, c, p, d, zero, dxf):
    """Two neighbouring inputs p, p + 1 of one window row (windows that do not overlap):
    each gets dy where it was the recorded maximum, else 0, in one loop over the
    channels (selects, stores in dx's order: a loop that vectorizes)."""
    for ch in range(c):
        a = af[np.uint64(o + ch)]
        g = dyf[np.uint64(o + ch)]
        dxf[np.uint64(d + ch)] = g if a == p else zero
        dxf[np.uint64(d + c + ch)] = g if a == p + 1 else zero


@jit
def _max_pool_backward(dy, arg, ph, pw, sh, sw, pt, pl, b0, b1, dx):
    _, h, w, c = dx.shape
    _, oh, ow, _ = dy.shape
    dyf = dy.reshape(-1)
    af = arg.reshape(-1)
    dxf = dx.reshape(-1)
    zero = dx.dtype.type(0)
    per_in = h * w * c
    per_out = oh * ow * c
    if sh != ph or sw != pw:  # overlapping windows (or gaps): zeros, then dy added at each maximum
        for b in range(b0, b1):
            for q in range(per_in):
                dxf[np.uint64(b * per_in + q)] = zero
            for q in range(per_out // c):
                o = b * per_out + q * c
                for ch in range(c):
                    d = (b * h * w + af[np.uint64(o + ch)]) * c + ch
                    dxf[np.uint64(d)] += dyf[np.uint64(o + ch)]
        return
    # windows tile the input (strides = pool size): each input element is in at most one
    # window, so dx is written once, dy or 0, row by row in dx's order (module doc)
    w_end = min(w, ow * sw - pl)  # columns and rows past the last window get zeros
    for r in range(b0 * h, b1 * h):
        b = r // h
        ih = r - b * h
        i = (ih + pt) // sh
        if i >= oh:
            for q in range(r * w * c, (r + 1) * w * c):
                dxf[np.uint64(q)] = zero
            continue
        for j in range(ow):
            w0 = max(j * sw - pl, 0)
            w1 = min(j * sw - pl + pw, w)
            o = ((b * oh + i) * ow + j) * c
            p = ih * w + w0
            d = (r * w + w0) * c
            if w1 - w0 == 2:
                _route_pair(dyf, af, o, c, p, d, zero, dxf)
                continue
            for iw in range(w0, w1):
                for ch in range(c):
                    g = dyf[np.uint64(o + ch)]
                    dxf[np.uint64(d + ch)] = g if af[np.uint64(o + ch)] == p else zero
                p += 1
                d += c
        for q in range((r * w + w_end) * c, (r + 1) * w * c):
            dxf[np.uint64(q)] = zero


@jit
def _avg_pool_forward(x, ph, pw, sh, sw, pt, pl, b0, b1, out):
    _, h, w, c = x.shape
    _, oh, ow, _ = out.shape
    xf = x.reshape(-1)
    of = out.reshape(-1)
    one = x.dtype.type(1)
    zero = one - one
    for r in range(b0 * oh, b1 * oh):
        b = r // oh
        i = r - b * oh
        h0 = max(i * sh - pt, 0)
        h1 = min(i * sh - pt + ph, h)
        for j in range(ow):
            w0 = max(j * sw - pl, 0)
            w1 = min(j * sw - pl + pw, w)
            o = ((b * oh + i) * ow + j) * c
            for ch in range(c):
                of[np.uint64(o + ch)] = zero
            for ih in range(h0, h1):
                for iw in range(w0, w1):
                    s = ((b * h + ih) * w + iw) * c
                    for ch in range(c):
                        of[np.uint64(o + ch)] += xf[np.uint64(s + ch)]
            inv = one / x.dtype.type((h1 - h0) * (w1 - w0))
            for ch in range(c):
                of[np.uint64(o + ch)] *= inv


@jit
def _avg_pool_backward(dy, ph, pw, sh, sw, pt, pl, b0, b1, dx):
    _, h, w, c = dx.shape
    _, oh, ow, _ = dy.shape
    dyf = dy.reshape(-1)
    dxf = dx.reshape(-1)
    one = dx.dtype.type(1)
    zero = one - one
    per_in = h * w * c
    for b in range(b0, b1):
        for q in range(per_in):
            dxf[np.uint64(b * per_in + q)] = zero
        for i in range(oh):
            h0 = max(i * sh - pt, 0)
            h1 = min(i * sh - pt + ph, h)
            for j in range(ow):
                w0 = max(j * sw - pl, 0)
                w1 = min(j * sw - pl + pw, w)
                o = ((b * oh + i) * ow + j) * c
                inv = one / dx.dtype.type((h1 - h0) * (w1 - w0))
                for ih in range(h0, h1):
                    for iw in range(w0, w1):
                        d = ((b * h + ih) * w + iw) * c
                        for ch in range(c):
                            dxf[np.uint64(d + ch)] += dyf[np.uint64(o + ch)] * inv


@pjit
def _max_pool_forward_par(x, ph, pw, sh, sw, pt, pl, out, arg, nb):
    n = x.shape[0]
    for k in prange(nb):
        _max_pool_forward(x, ph, pw, sh, sw, pt, pl, n * k // nb, n * (k + 1) // nb, out, arg)


def max_pool_forward(x, ph, pw, sh, sw, pt, pl, out, arg):
    """out = window max, arg = flat spatial index (ih * w + iw) of the first maximum (int32).

    x (n, h, w, c), out and arg (n, oh, ow, c); windows ph x pw, strides
    sh, sw, padding before pt (top), pl (left).
    """
    nb = row_blocks(x.shape[0], x.size)
    if nb > 1:
        _max_pool_forward_par(x, ph, pw, sh, sw, pt, pl, out, arg, nb)
    else:
        _max_pool_forward(x, ph, pw, sh, sw, pt, pl, 0, x.shape[0], out, arg)


@pjit
def _max_pool_backward_par(dy, arg, ph, pw, sh, sw, pt, pl, dx, nb):
    n = dx.shape[0]
    for k in prange(nb):
        _max_pool_backward(dy, arg, ph, pw, sh, sw, pt, pl, n * k // nb, n * (k + 1) // nb, dx)


def max_pool_backward(dy, arg, ph, pw, sh, sw, pt, pl, dx):
    """dx = dy routed to each window's recorded maximum (arg, from max_pool_forward
    with the same geometry), 0 elsewhere."""
    nb = row_blocks(dx.shape[0], dx.size)
    if nb > 1:
        _max_pool_backward_par(dy, arg, ph, pw, sh, sw, pt, pl, dx, nb)
    else:
        _max_pool_backward(dy, arg, ph, pw, sh, sw, pt, pl, 0, dx.shape[0], dx)


@pjit
def _avg_pool_forward_par(x, ph, pw, sh, sw, pt, pl, out, nb):
    n = x.shape[0]
    for k in prange(nb):
        _avg_pool_forward(x, ph, pw, sh, sw, pt, pl, n * k // nb, n * (k + 1) // nb, out)


def avg_pool_forward(x, ph, pw, sh, sw, pt, pl, out):
    """out = mean of the real (unpadded) elements of each window."""
    nb = row_blocks(x.shape[0], x.size)
    if nb > 1:
        _avg_pool_forward_par(x, ph, pw, sh, sw, pt, pl, out, nb)
    else:
        _avg_pool_forward(x, ph, pw, sh, sw, pt, pl, 0, x.shape[0], out)


@pjit
def _avg_pool_backward_par(dy, ph, pw, sh, sw, pt, pl, dx, nb):
    n = dx.shape[0]
    for k in prange(nb):
        _avg_pool_backward(dy, ph, pw, sh, sw, pt, pl, n * k // nb, n * (k + 1) // nb, dx)


def avg_pool_backward(dy, ph, pw, sh, sw, pt, pl, dx):
    """dx = 0, then each window's dy / count spread over its real elements."""
    nb = row_blocks(dx.shape[0], dx.size)
    if nb > 1:
        _avg_pool_backward_par(dy, ph, pw, sh, sw, pt, pl, dx, nb)
    else:
        _avg_pool_backward(dy, ph, pw, sh, sw, pt, pl, 0, dx.shape[0], dx)


@jit
def global_avg_forward(x, part, out):
    """x (n, s, c) -> out (n, c): mean over s, summed in blocks of 256 steps
    (partials in part (c,)) to limit float32 rounding."""
    n, s, c = x.shape
    one = x.dtype.type(1)
    zero = one - one
    inv = one / x.dtype.type(s)
    for b in range(n):
        out[b, :] = zero
        for p0 in range(0, s, 256):
            part[:] = zero
            for p in range(p0, min(s, p0 + 256)):
                for ch in range(c):
                    part[ch] += x[b, p, ch]
            for ch in range(c):
                out[b, ch] += part[ch]
        for ch in range(c):
            out[b, ch] *= inv


@jit
def global_avg_backward(dy, dx):
    """dx[b, p, :] = dy[b, :] / s."""
    n, s, c = dx.shape
    inv = dx.dtype.type(1) / dx.dtype.type(s)
    for b in range(n):
        for p in range(s):
            for ch in range(c):
                dx[b, p, ch] = dy[b, ch] * inv


@jit
def global_max_forward(x, out, arg):
    """x (n, s, c) -> out (n, c) max over s; arg (n, c) int32 position of the first maximum."""
    n, s, c = x.shape
    for b in range(n):
        for ch in range(c):
            out[b, ch] = x[b, 0, ch]
            arg[b, ch] = 0
        for p in range(1, s):
            for ch in range(c):
                v = x[b, p, ch]
                if v > out[b, ch]:
                    out[b, ch] = v
                    arg[b, ch] = p


@jit
def global_max_backward(dy, arg, dx):
    n, _, c = dx.shape
    dx[:] = 0
    for b in range(n):
        for ch in range(c):
            dx[b, arg[b, ch], ch] = dy[b, ch]
