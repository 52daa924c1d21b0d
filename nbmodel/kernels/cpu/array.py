"""Array family on the CPU: fills, elementwise sums and layout copies that
layers and the model need between the fused kernels (merge layers, gradient
fan-in, loss scaling, concatenation, moving an axis last).

On the CPU these are NumPy calls: they are memory-bound and NumPy's loops
are as fast as a compiled loop here. See nbmodel/kernels/contract.py.
"""
from __future__ import annotations

import numpy as np


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
