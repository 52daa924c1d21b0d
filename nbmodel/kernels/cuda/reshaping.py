"""Reshaping family on CUDA: repeats and their sums, linear upsampling along
an axis and its gradient, zero padding, cropping and axis permutations (see
nbmodel/kernels/contract.py and the CPU twin nbmodel/kernels/cpu/reshaping.py).

One thread per output element, index arithmetic mapping it back to its
source. ``sum_rows`` is a gather, not an atomic scatter: each output element's
thread adds the m copies in their order (0, 1, ..., m - 1), the CPU's order,
so gradients are reproducible; so is ``resize_linear_backward`` (a thread per
input element gathers the outputs within reach, in increasing order), with
the CPU's ``linear_source`` for the interpolation weights. ``permute`` takes the CPU's geometry (output
shape and source strides padded to 8 axes) as 16 int64 scalars.
"""
from __future__ import annotations

from ..cpu.reshaping import MAX_RANK, linear_source, permute_geometry
from .runtime import cuda, kernel, launch_1d, shared_helper, types

_source = shared_helper(linear_source)

_F = (types.float32, types.float64)
_I = types.int64


def _one(t):
    return t[::1]


def _flat(a):
    return a.reshape(a.size)


@kernel(*[(_one(t), _one(t), _I, _I) for t in _F])
def _repeat_rows(src, out, m, q):
    i = cuda.grid(1)
    if i < out.size:
        e = i % q
        r = i // (q * m)
        out[i] = src[r * q + e]


@kernel(*[(_one(t), _one(t), _I, _I) for t in _F])
def _sum_rows(src, out, m, q):
    i = cuda.grid(1)
    if i < out.size:
        e = i % q
        r = i // q
        s = r * m * q + e
        acc = src[s]
        for j in range(1, m):
            acc += src[s + j * q]
        out[i] = acc


@kernel(*[(_one(t), _one(t), _I, _I, _I) for t in _F])
def _resize_linear(src, out, m, big, q):
    """out (p, big, q) from src (p, m, q), a thread per out element."""
    i = cuda.grid(1)
    if i < out.size:
        e = i % q
        j = (i // q) % big
        r = i // (q * big)
        i0, i1, rem, den = _source(j, big // m, m)
        w1 = out.dtype.type(rem) / out.dtype.type(den)
        out[i] = src[(r * m + i0) * q + e] * (out.dtype.type(1) - w1) + src[(r * m + i1) * q + e] * w1


@kernel(*[(_one(t), _one(t), _I, _I, _I) for t in _F])
def _resize_linear_backward(dy, dx, m, big, q):
    """dx (p, m, q) from dy (p, big, q), a thread per dx element gathering in increasing j."""
    i = cuda.grid(1)
    if i < dx.size:
        e = i % q
        k = (i // q) % m
        r = i // (q * m)
        s = big // m
        one = dx.dtype.type(1)
        zero = one - one
        acc = zero
        for j in range(max(0, (k - 1) * s), min(big, (k + 2) * s)):
            i0, i1, rem, den = _source(j, s, m)
            w1 = dx.dtype.type(rem) / dx.dtype.type(den)
            w = zero
            if i0 == k:
                w += one - w1
            if i1 == k:
                w += w1
            if w != zero:
                acc += w * dy[(r * big + j) * q + e]
        dx[i] = acc


@kernel(*[(_one(t), _one(t), _I, _I, _I, _I, _I, _I, _I) for t in _F])
def _pad_2d(src, out, h, w, c, hh, ww, top, left):
    i = cuda.grid(1)
    if i < out.size:
        ch = i % c
        j = (i // c) % ww - left
        k = (i // (c * ww)) % hh - top
        b = i // (c * ww * hh)
        if k >= 0 and k < h and j >= 0 and j < w:
            out[i] = src[((b * h + k) * w + j) * c + ch]
        else:
            out[i] = out.dtype.type(0)


@kernel(*[(_one(t), _one(t), _I, _I, _I, _I, _I, _I, _I) for t in _F])
def _crop_2d(src, out, h, w, c, oh, ow, top, left):
    i = cuda.grid(1)
    if i < out.size:
        ch = i % c
        j = (i // c) % ow + left
        k = (i // (c * ow)) % oh + top
        b = i // (c * ow * oh)
        out[i] = src[((b * h + k) * w + j) * c + ch]


@kernel(*[(_one(t), _one(t)) + (_I,) * (2 * MAX_RANK) for t in _F])
def _permute(src, out, d0, d1, d2, d3, d4, d5, d6, d7, s0, s1, s2, s3, s4, s5, s6, s7):
    i = cuda.grid(1)
    if i < out.size:
        rem = i
        s = (rem % d7) * s7
        rem //= d7
        s += (rem % d6) * s6
        rem //= d6
        s += (rem % d5) * s5
        rem //= d5
        s += (rem % d4) * s4
        rem //= d4
        s += (rem % d3) * s3
        rem //= d3
        s += (rem % d2) * s2
        rem //= d2
        s += (rem % d1) * s1
        rem //= d1
        s += (rem % d0) * s0
        out[i] = src[s]


# ------------------------------------------------------------ launchers
def repeat_rows(src, out):
    p, m, q = out.shape
    if out.size:
        _repeat_rows[launch_1d(out.size)](_flat(src), _flat(out), m, q)


def sum_rows(src, out):
    p, m, q = src.shape
    if out.size:
        _sum_rows[launch_1d(out.size)](_flat(src), _flat(out), m, q)


def resize_linear(src, out):
    p, m, q = src.shape
    if out.size:
        _resize_linear[launch_1d(out.size)](_flat(src), _flat(out), m, out.shape[1], q)


def resize_linear_backward(dy, dx):
    p, m, q = dx.shape
    if dx.size:
        _resize_linear_backward[launch_1d(dx.size)](_flat(dy), _flat(dx), m, dy.shape[1], q)


def pad_2d(src, top, left, out):
    n, h, w, c = src.shape
    if out.size:
        _pad_2d[launch_1d(out.size)](_flat(src), _flat(out), h, w, c, out.shape[1], out.shape[2], int(top),
                                     int(left))


def crop_2d(src, top, left, out):
    n, h, w, c = src.shape
    if out.size:
        _crop_2d[launch_1d(out.size)](_flat(src), _flat(out), h, w, c, out.shape[1], out.shape[2], int(top),
                                      int(left))


def permute(src, axes, out):
    if out.size:
        shape, strides = permute_geometry(src.shape, axes)
        _permute[launch_1d(out.size)](_flat(src), _flat(out), *shape, *strides)
