"""CPU pooling kernels (nbmodel/kernels/cpu/pooling.py) called directly: the global pooling
kernels stay in float32 for float32 inputs. (The window pooling launchers choose their own
schedule; their private jitted bodies are checked in test_cpu_scheduling.py.)"""
import numpy as np

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
