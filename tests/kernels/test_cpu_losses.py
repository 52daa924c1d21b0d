"""CPU losses kernels: float32 calls stay in float32."""
import numpy as np

from nbmodel.kernels.codes import BCE_LOGITS
from nbmodel.kernels.cpu import losses as k
from nbmodel.testing import float64_ops


def test_float32_kernels_have_no_float64_ops():
    r = np.random.default_rng(9)
    f = np.float32
    yt = r.random((4, 3)).astype(f)
    yp = r.random((4, 3)).astype(f)
    rows = np.empty(4, f)
    dy = np.empty((4, 3), f)
    w = np.ones(2, f)
    # the loss code is a runtime argument: one compilation covers every elementwise loss
    assert float64_ops(k.dense_loss, BCE_LOGITS, yt, yp, f(0.9), f(0.05), f(1e-7), w, 2, True, True,
                       rows, dy) == []
    assert float64_ops(k.categorical_ce, yt, yp, True, f(0.9), f(0.1), f(1e-7), w, 2, True, True, rows, dy) == []
    assert float64_ops(k.sparse_ce, np.array([0, 1, 2, 1]), yp, False, -1, True, f(1e-7), w, 2, True, True,
                       rows, dy) == []
