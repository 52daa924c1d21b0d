"""Regularizer and constraint kernels on cuda equal the CPU's, and a tiny
regularized, constrained model trains on cuda like on cpu (simulator or GPU)."""
import numpy as np
import pytest

import nbmodel as nb
from nbmodel import constraints, regularizers
from nbmodel import layers as L


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_kernels_equal_cpu(cuda_device, dtype):
    from nbmodel.backend import get_device

    cpu, gpu = get_device("cpu").kernels("optim"), cuda_device.kernels("optim")
    rng = np.random.default_rng(0)
    w = rng.normal(size=(3, 5)).astype(dtype)
    w[1, 2] = 0
    g = rng.normal(size=w.shape).astype(dtype)
    dw, dg = cuda_device.asarray(w), cuda_device.asarray(g)
    assert gpu.l1l2_penalty(dw, 0.1, 0.2) == pytest.approx(cpu.l1l2_penalty(w, 0.1, 0.2), rel=1e-6)
    gpu.add_l1l2_grad(dw, 0.1, 0.2, dg)
    cpu.add_l1l2_grad(w, 0.1, 0.2, g)
    np.testing.assert_allclose(cuda_device.to_host(dg), g, rtol=1e-6)
    w3 = w.reshape(1, 3, 5) * 2
    d3 = cuda_device.asarray(w3)
    gpu.clip_norms(d3, 0.5, 1.0, 0.7, 1e-7)
    cpu.clip_norms(w3, 0.5, 1.0, 0.7, 1e-7)
    np.testing.assert_allclose(cuda_device.to_host(d3), w3, rtol=1e-6)
    gpu.non_neg(dw)
    cpu.non_neg(w)
    np.testing.assert_array_equal(cuda_device.to_host(dw), w)


def _model(device):
    m = nb.Sequential([L.Input((4,)),
                       L.Dense(5, activation="tanh", kernel_regularizer=regularizers.L1L2(0.01, 0.02),
                               bias_regularizer="l2", activity_regularizer=regularizers.L2(0.01),
                               kernel_constraint=constraints.MaxNorm(0.8)),
                       L.Dense(2, bias_constraint="non_neg")], seed=0, device=device)
    m.compile(nb.optimizers.SGD(0.2), nb.losses.SparseCategoricalCrossentropy(from_logits=True))
    return m


def test_regularized_model_trains_on_cuda_like_on_cpu(cuda_device):
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(6, 4)).astype("float32"), rng.integers(0, 2, 6)
    cpu, gpu = _model("cpu"), _model("cuda")
    assert gpu.device is cuda_device
    for _ in range(2):
        np.testing.assert_allclose(gpu.train_on_batch(x, y), cpu.train_on_batch(x, y), rtol=1e-5)
    for a, b in zip(gpu.get_weights(), cpu.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(gpu.evaluate(x, y), cpu.evaluate(x, y), rtol=1e-5)
