"""CPU embedding kernels (nbmodel/kernels/cpu/embedding.py) called directly: they stay in
float32 for a float32 table."""
import numpy as np

from nbmodel.testing import float64_ops


def test_kernels_stay_float32():
    from nbmodel.kernels.cpu import embedding as k

    ids = np.array([0, 2, 2], np.int64)
    table = np.ones((3, 4), np.float32)
    out = np.empty((3, 4), np.float32)
    assert float64_ops(k.embedding_forward, ids, table, out) == []
    assert float64_ops(k.embedding_backward, ids, out, np.empty_like(table)) == []
