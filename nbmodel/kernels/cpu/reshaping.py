"""Reshaping family on the CPU: repeats (UpSampling nearest, RepeatVector,
broadcast dropout masks) and their gradient sums, linear upsampling along
one axis (UpSampling2D bilinear, one pass per axis) and its gradient, zero
padding and cropping of (n, h, w, c) images, and axis permutations (see
nbmodel/kernels/contract.py; the CUDA twin is kernels/cuda/reshaping.py).

Every pass is a serial copy over contiguous channel rows (memory-bound: one
read and one write per element). ``sum_rows`` adds the copies of each row
in their order (0, 1, ..., m - 1), so the gradient of a repeat is the same
bits on every run and device. 1-D layers use the 2-D kernels with a height
of 1. ``permute`` handles any rank up to 8 through one geometry (output
shape, the source stride of each output axis, padded to 8 axes) that the
CUDA twin shares (``permute_geometry``).

Linear upsampling by an integer factor s uses half-pixel centres clamped at
the edges (TensorFlow's resize, which Keras calls, and PyTorch's
``align_corners=False``): output j reads inputs i0, i1 with weight
rem / den on i1, found in integers by ``linear_source`` (shared with the
CUDA twin). Its gradient is a gather: each input adds, in increasing j, the
weighted gradients of the outputs within reach (no scatter, no atomics).
"""
from __future__ import annotations

import numpy as np

from ._jit import inline, jit

MAX_RANK = 8


@inline
def linear_source(j, s, m):
    """(i0, i1, rem, den): output j of m inputs upsampled s times is
    in[i0] * (1 - rem / den) + in[i1] * rem / den (half-pixel centres, edges clamped)."""
    den = 2 * s
    num = 2 * j + 1 - s
    if num < 0:
        return 0, 0, 0, den
    i0 = num // den
    rem = num - i0 * den
    i1 = i0 + 1 if i0 + 1 < m else m - 1
    return i0, i1, rem, den


@jit
def _resize_linear(src, out):
    p, m, q = src.shape
    big = out.shape[1]
    s = big // m
    one = out.dtype.type(1)
    for r in range(p):
        for j in range(big):
            i0, i1, rem, den = linear_source(j, s, m)
            w1 = out.dtype.type(rem) / out.dtype.type(den)
            w0 = one - w1
            for e in range(q):
                out[r, j, e] = src[r, i0, e] * w0 + src[r, i1, e] * w1


@jit
def _resize_linear_backward(dy, dx):
    p, m, q = dx.shape
    big = dy.shape[1]
    s = big // m
    one = dx.dtype.type(1)
    zero = one - one
    for r in range(p):
        for i in range(m):
            for e in range(q):
                dx[r, i, e] = zero
            for j in range(max(0, (i - 1) * s), min(big, (i + 2) * s)):
                i0, i1, rem, den = linear_source(j, s, m)
                w1 = dx.dtype.type(rem) / dx.dtype.type(den)
                w = zero
                if i0 == i:
                    w += one - w1
                if i1 == i:
                    w += w1
                if w != zero:
                    for e in range(q):
                        dx[r, i, e] += w * dy[r, j, e]


@jit
def _repeat_rows(src, out):
    p, m, q = out.shape
    sf = src.reshape(-1)
    of = out.reshape(-1)
    for r in range(p):
        for j in range(m):
            o = (r * m + j) * q
            s = r * q
            for e in range(q):
                of[np.uint64(o + e)] = sf[np.uint64(s + e)]


@jit
def _sum_rows(src, out):
    p, m, q = src.shape
    sf = src.reshape(-1)
    of = out.reshape(-1)
    for r in range(p):
        o = r * q
        s = r * m * q
        for e in range(q):
            of[np.uint64(o + e)] = sf[np.uint64(s + e)]
        for j in range(1, m):
            s = (r * m + j) * q
            for e in range(q):
                of[np.uint64(o + e)] += sf[np.uint64(s + e)]


@jit
def _pad_2d(src, top, left, out):
    n, h, w, c = src.shape
    _, hh, ww, _ = out.shape
    sf = src.reshape(-1)
    of = out.reshape(-1)
    zero = out.dtype.type(0)
    row = ww * c
    for b in range(n):
        for i in range(hh):
            o = (b * hh + i) * row
            si = i - top
            if si < 0 or si >= h:
                for e in range(row):
                    of[np.uint64(o + e)] = zero
                continue
            for e in range(left * c):
                of[np.uint64(o + e)] = zero
            s = (b * h + si) * w * c
            o2 = o + left * c
            for e in range(w * c):
                of[np.uint64(o2 + e)] = sf[np.uint64(s + e)]
            for e in range((left + w) * c, row):
                of[np.uint64(o + e)] = zero


@jit
def _crop_2d(src, top, left, out):
    n, h, w, c = src.shape
    _, oh, ow, _ = out.shape
    sf = src.reshape(-1)
    of = out.reshape(-1)
    for b in range(n):
        for i in range(oh):
            o = (b * oh + i) * ow * c
            s = ((b * h + top + i) * w + left) * c
            for e in range(ow * c):
                of[np.uint64(o + e)] = sf[np.uint64(s + e)]


@jit
def _permute(src, shape, strides, out):
    """out (flat, C order over ``shape``) from src at sum(index * strides); the last axis innermost."""
    inner = shape[MAX_RANK - 1]
    step = strides[MAX_RANK - 1]
    rows = out.size // inner if inner else 0
    for r in range(rows):
        rem = r
        s = 0
        for k in range(MAX_RANK - 2, -1, -1):
            d = shape[k]
            s += (rem % d) * strides[k]
            rem //= d
        o = r * inner
        for e in range(inner):
            out[o + e] = src[s + e * step]


def permute_geometry(shape, axes) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(output shape, source stride of each output axis), both padded in front to MAX_RANK axes."""
    if len(axes) > MAX_RANK:
        raise ValueError(f"permute: at most {MAX_RANK} axes, got {len(axes)}")
    strides = [1] * len(shape)
    for k in range(len(shape) - 2, -1, -1):
        strides[k] = strides[k + 1] * int(shape[k + 1])
    pad = MAX_RANK - len(axes)
    return ((1,) * pad + tuple(int(shape[a]) for a in axes),
            (0,) * pad + tuple(strides[a] for a in axes))


# ------------------------------------------------------------ launchers
def repeat_rows(src, out):
    if out.size:
        _repeat_rows(src, out)


def sum_rows(src, out):
    if out.size:
        _sum_rows(src, out)


def resize_linear(src, out):
    if out.size:
        _resize_linear(src, out)


def resize_linear_backward(dy, dx):
    if dx.size:
        _resize_linear_backward(dy, dx)


def pad_2d(src, top, left, out):
    if out.size:
        _pad_2d(src, int(top), int(left), out)


def crop_2d(src, top, left, out):
    if out.size:
        _crop_2d(src, int(top), int(left), out)


def permute(src, axes, out):
    if out.size:
        shape, strides = permute_geometry(src.shape, axes)
        _permute(src.reshape(-1), shape, strides, out.reshape(-1))
