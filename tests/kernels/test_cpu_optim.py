"""CPU optim kernels: float32 calls stay in float32."""
import numpy as np

from nbmodel.kernels.cpu import optim as k
from nbmodel.testing import float64_ops


def test_float32_kernels_have_no_float64_ops():
    f = np.float32
    r = np.random.default_rng(2)
    p, g, m, v, w = (r.random(10).astype(f) for _ in range(5))
    bounds = np.array([0, 4, 10])
    scales = np.array([0.5, 0.25], f)
    assert float64_ops(k.sgd_step, p, g, bounds, scales, True, f(1), True, f(1e-3), f(0.1), f(0.9), True, m) == []
    assert float64_ops(k.adam_step, p, g, bounds, scales, True, f(1), True, f(1e-3), f(0.01), f(0.1), f(0.001),
                       f(1e-7), True, m, v, w) == []
    assert float64_ops(k.rmsprop_step, p, g, bounds, scales, True, f(1), True, f(1e-3), f(0.01), f(0.9), f(0.1),
                       f(0.5), f(1e-7), True, m, v, w) == []
