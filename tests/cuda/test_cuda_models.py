"""Whole models trained on the cuda device equal the same models on cpu
(weights, losses, predictions): simulator or GPU. Tiny sizes: the simulator
runs about 1 ms per thread."""
import numpy as np
import pytest

import nbmodel as nb
from nbmodel import layers as L


def _mlp(device):
    m = nb.Sequential([L.Input((6,)), L.Dense(8, activation="relu"), L.Dense(8, activation="relu"), L.Dense(3)],
                      seed=0, device=device)
    m.compile(optimizer=nb.optimizers.Adam(1e-2),
              loss=nb.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    return m


def _embedding_norms(device):
    ids = L.Input((5,), dtype="int64")
    h = L.Embedding(11, 4)(ids)
    h = L.LayerNormalization()(h)
    h = L.Flatten()(h)
    h = L.Dense(6, activation="tanh")(h)
    h = L.BatchNormalization()(h)
    out = L.Dense(1, activation="sigmoid")(h)
    m = nb.Model(ids, out, seed=1, device=device)
    m.compile(optimizer=nb.optimizers.RMSprop(1e-2, momentum=0.5), loss="binary_crossentropy",
              metrics=["accuracy"])
    return m


CASES = {
    "mlp": (_mlp, lambda r: (r.standard_normal((12, 6)), r.integers(0, 3, 12))),
    "embedding_norms": (_embedding_norms, lambda r: (r.integers(0, 11, (12, 5)), r.integers(0, 2, (12, 1)))),
}


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("dtype, rtol", [("float64", 1e-9), ("float32", 2e-4)])
def test_training_on_cuda_equals_cpu(cuda_device, name, dtype, rtol, float64):
    if dtype == "float32":
        nb.config.set_floatx("float32")
    build, data = CASES[name]
    x, y = data(np.random.default_rng(0))
    cpu, gpu = build("cpu"), build("cuda")
    assert gpu.device is cuda_device
    h_cpu = cpu.fit(x, y, epochs=1, batch_size=6, shuffle=False, verbose=0)
    h_gpu = gpu.fit(x, y, epochs=1, batch_size=6, shuffle=False, verbose=0)
    for k in h_cpu.history:
        np.testing.assert_allclose(h_gpu.history[k], h_cpu.history[k], rtol=rtol, atol=rtol, err_msg=k)
    for a, b in zip(gpu.get_weights(), cpu.get_weights()):
        assert isinstance(a, np.ndarray)
        np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol)
    np.testing.assert_allclose(gpu.predict(x), cpu.predict(x), rtol=rtol, atol=rtol)
    np.testing.assert_allclose(gpu.evaluate(x, y), cpu.evaluate(x, y), rtol=rtol, atol=rtol)


def test_model_moves_between_devices(cuda_device, float64):
    x, y = CASES["mlp"][1](np.random.default_rng(0))
    m = _mlp("cpu")
    m.fit(x, y, epochs=1, batch_size=8, verbose=0)
    before = m.get_weights()
    m.to("cuda")
    assert m.device is cuda_device and all(layer.device is cuda_device for layer in m.layers)
    assert cuda_device.is_array(m.layers[0].params["kernel"])
    for a, b in zip(m.get_weights(), before):
        np.testing.assert_array_equal(a, b)
    m.fit(x, y, epochs=1, batch_size=8, verbose=0)
    m.to("cpu")
    assert isinstance(m.layers[0].params["kernel"], np.ndarray)
    m.fit(x, y, epochs=1, batch_size=8, verbose=0)


def test_family_without_a_cuda_twin_names_the_layer(cuda_device):
    m = nb.Sequential([L.Input((4, 4, 1)), L.Conv2D(2, 3), L.Flatten(), L.Dense(2)], device="cuda")
    with pytest.raises(NotImplementedError, match=r"conv2d \(Conv2D\): cuda: the 'conv' kernel family has no CUDA"):
        m.predict(np.zeros((1, 4, 4, 1)))
