"""CPU dense and activation kernels (nbmodel/kernels/cpu/dense.py, activations.py) called
directly: they stay in float32 for float32 inputs."""
import numpy as np

from nbmodel.kernels.codes import GELU
from nbmodel.testing import float64_ops


def rng(seed=0):
    return np.random.default_rng(seed)


def test_float32_kernels_stay_float32():
    from nbmodel.kernels.cpu import activations, dense

    x = rng().standard_normal((4, 3)).astype(np.float32)
    w = rng().standard_normal((3, 5)).astype(np.float32)
    b = np.zeros(5, np.float32)
    out = np.empty((4, 5), np.float32)
    # the activation code is a runtime argument: one compilation covers every activation
    assert float64_ops(dense.dense_forward, x, w, b, GELU, out.copy(), out) == []
    assert float64_ops(dense.dense_backward, x, w, out, out, out, GELU, True, out.copy(),
                       w.copy(), b.copy(), x.copy()) == []
    flat = out.reshape(-1)
    assert float64_ops(activations.activation_forward, GELU, flat, flat.copy()) == []
    assert float64_ops(activations.activation_backward, GELU, flat, flat, flat, flat.copy()) == []
    assert float64_ops(activations.softmax_rows, out, out.copy()) == []
    u = rng().random(20).astype(np.float32)
    assert float64_ops(dense.dropout_forward, u, u, np.float32(0.5), u.copy()) == []


def test_dropout_kernels_match_reference():
    from nbmodel.kernels.cpu import dense
    from nbmodel.kernels.reference import dense as ref

    x = rng(1).standard_normal(40)
    u = rng(2).random(40)
    out, dx = np.empty_like(x), np.empty_like(x)
    dense.dropout_forward(x, u, 0.3, out)
    np.testing.assert_allclose(out, ref.dropout_forward(x, u, 0.3), rtol=1e-15, atol=0)
    dense.dropout_backward(x, u, 0.3, dx)  # the same mask and scale applied to dy
    np.testing.assert_allclose(dx, ref.dropout_forward(x, u, 0.3), rtol=1e-15, atol=0)
