"""CPU array kernels (nbmodel/kernels/cpu/array.py) called directly, against the reference
(nbmodel/kernels/reference/array.py): block copies, axis moves and time reversal are exact."""
import numpy as np

from nbmodel.kernels.cpu import array as k
from nbmodel.kernels.reference import array as ref


def rng(seed=0):
    return np.random.default_rng(seed)


def test_copy_and_take_block():
    blocks = [rng(i).standard_normal((2, t, 4)) for i, t in enumerate((3, 1, 2))]
    out = np.empty((2, 6, 4))
    offset = 0
    for b in blocks:
        k.copy_block(b, out, offset)
        offset += b.shape[1]
    np.testing.assert_array_equal(out, ref.copy_block(blocks))
    part = np.empty((2, 1, 4))
    k.take_block(out, 3, part)
    np.testing.assert_array_equal(part, blocks[1])


def test_move_axis_last_and_back():
    x = rng().standard_normal((2, 3, 5)).astype(np.float32)
    out = np.empty((2, 5, 3), np.float32)
    k.move_axis_last(x, out)
    np.testing.assert_array_equal(out, ref.move_axis_last(x))
    back = np.empty_like(x)
    k.move_axis_back(out, back)
    np.testing.assert_array_equal(back, x)


def test_reverse_steps():
    x = rng().standard_normal((2, 4, 3))
    out = np.empty_like(x)
    k.reverse_steps(x, out)
    np.testing.assert_array_equal(out, ref.reverse_steps(x))
