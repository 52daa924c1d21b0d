"""Reference of the array family (float64 NumPy): the block moves the
recurrent and attention layers use to assemble and reorder sequences."""
import numpy as np


def copy_block(blocks):
    """The 3-D ``blocks`` side by side along axis 1: what ``copy_block(src, out, offset)``
    builds when each block is copied in at the running offset."""
    return np.concatenate([np.asarray(b, np.float64) for b in blocks], axis=1)


def move_axis_last(x):
    """(p, c, q) -> (p, q, c)."""
    return np.ascontiguousarray(np.moveaxis(np.asarray(x, np.float64), 1, -1))


def reverse_steps(x):
    """``out[:, t] = x[:, T - 1 - t]``: the steps (axis 1) in reverse order."""
    return np.ascontiguousarray(np.asarray(x, np.float64)[:, ::-1])
