"""CPU normalization kernels (nbmodel/kernels/cpu/norm.py) called directly: the layer and
batch normalization kernels stay in float32 for float32 inputs."""
import numpy as np

from nbmodel.testing import float64_ops


def rng(seed=0):
    return np.random.default_rng(seed)


def test_layer_norm_kernels_stay_float32():
    from nbmodel.kernels.cpu import norm as K

    f = np.float32
    x = rng().standard_normal((4, 6)).astype(f)
    g = np.ones(6, f)
    z = np.zeros((4, 6), f)
    m, r = np.zeros(4, f), np.ones(4, f)
    # the serial row bodies behind the launchers (the parallel wrappers only split rows)
    assert float64_ops(K._ln_forward_rows, x, g, g, f(1e-3), True, True, z, m, r, 0, 4) == []
    assert float64_ops(K._add_ln_forward_rows, x, x, g, g, f(1e-3), z, z.copy(), m, r, 0, 4) == []
    for has_dyb in (False, True):
        assert float64_ops(K._ln_backward_rows, x, g, m, r, x, x, has_dyb, True, True, z, g.copy(), g.copy(),
                           0, 4) == []


def test_batch_norm_kernels_stay_float32():
    from nbmodel.kernels.cpu import norm as k

    x = rng().standard_normal((9, 3)).astype(np.float32)
    v = [np.ones(3, np.float32) for _ in range(6)]
    y = np.empty_like(x)
    f32 = np.float32
    assert float64_ops(k.batch_norm_forward, x, v[0], v[1], f32(1e-3), f32(0.99), True, True, True,
                       v[2], v[3], v[4], v[5], np.ones(3, f32), y) == []
    assert float64_ops(k.batch_norm_backward, x, y, v[0], v[2], v[3], True, True, True,
                       np.empty((4, 3), f32), np.empty_like(x), v[4], v[5]) == []


def test_group_norm_kernels_stay_float32():
    from nbmodel.kernels.cpu import norm as k

    f = np.float32
    x = rng().standard_normal((2, 5, 4)).astype(f)
    g = np.ones(4, f)
    out = np.empty_like(x)
    m, r = np.zeros((2, 2), f), np.ones((2, 2), f)
    assert float64_ops(k.group_norm_forward, x, g, g, f(1e-3), 2, True, True, out, m, r) == []
    assert float64_ops(k.group_norm_backward, x, g, m, r, x, 2, True, True, out, g.copy(), g.copy()) == []
