"""CPU pooling kernels (nbmodel/kernels/cpu/pooling.py) called directly: the global pooling
kernels stay in float32 for float32 inputs, and max pooling keeps the first maximum of a
tie. (The window pooling launchers choose their own schedule; their private jitted bodies
are checked in test_cpu_scheduling.py.)"""
import numpy as np
import pytest

from nbmodel.testing import float64_ops


def test_global_pooling_kernels_stay_float32():
    from nbmodel.kernels.cpu import pooling as k

    x3 = np.random.default_rng(0).standard_normal((2, 25, 3)).astype(np.float32)
    g = np.empty((2, 3), np.float32)
    assert float64_ops(k.global_avg_forward, x3, np.empty(3, np.float32), g) == []
    assert float64_ops(k.global_avg_backward, g, x3.copy()) == []
    arg = np.empty((2, 3), np.int32)
    assert float64_ops(k.global_max_forward, x3, g, arg) == []
    assert float64_ops(k.global_max_backward, g, arg, x3.copy()) == []


@pytest.mark.parametrize("pool, strides, pads", [((2, 2), (2, 2), (0, 0, 0, 0)), ((2, 2), (1, 1), (0, 0, 0, 0)),
                                                  ((3, 3), (2, 2), (1, 1, 1, 1)), ((2, 2), (2, 2), (0, 1, 0, 1)),
                                                  ((3, 2), (3, 2), (0, 0, 0, 0)), ((3, 3), (3, 3), (1, 1, 1, 0)),
                                                  ((2, 3), (3, 3), (0, 0, 0, 0))])
def test_max_pool_ties_route_to_first_maximum(pool, strides, pads):
    # small integers: most windows hold ties; whole 2 x 2 windows (and 3 x 3 ones clipped to
    # 2 x 2 at a padded corner) take their own loop, which must keep the first maximum.
    # Backward writes each input once where the windows tile it (strides = pool), with the
    # inputs past the last window (7 rows, 6 columns: pool 2 or 3 leaves some) zeroed;
    # strides larger than the pool leave gaps between windows (the scatter path)
    from nbmodel.kernels.cpu import pooling as kpool
    from nbmodel.kernels.reference import pooling as pref

    x = np.random.default_rng(0).integers(0, 3, (2, 7, 6, 5)).astype(np.float32)
    n, h, w, c = x.shape
    oh = (h + pads[0] + pads[1] - pool[0]) // strides[0] + 1
    ow = (w + pads[2] + pads[3] - pool[1]) // strides[1] + 1
    out, arg = np.empty((n, oh, ow, c), np.float32), np.empty((n, oh, ow, c), np.int32)
    kpool.max_pool_forward(x, *pool, *strides, pads[0], pads[2], out, arg)
    np.testing.assert_array_equal(out, pref.max_pool_forward(x, pool, strides, pads))
    dy = np.random.default_rng(1).standard_normal(out.shape).astype(np.float32)
    dx = np.full_like(x, np.nan)  # every element must be written
    kpool.max_pool_backward(dy, arg, *pool, *strides, pads[0], pads[2], dx)
    np.testing.assert_allclose(dx, pref.max_pool_backward(x, dy, pool, strides, pads), rtol=1e-6, atol=1e-6)
