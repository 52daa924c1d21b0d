"""nb.explain.saliency against finite differences, and Model.get_activations."""
import os
import subprocess
import sys

import numpy as np
import pytest

import nbmodel as nb
from nbmodel import layers

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny(seed=0):
    inp = layers.Input((2, 3))
    h = layers.Flatten(name="flat")(inp)
    h = layers.Dense(5, activation="tanh", name="hidden")(h)
    out = layers.Dense(4, activation="softmax", name="probs")(h)
    return nb.Model(inp, out, seed=seed)


def finite_difference_saliency(model, x, class_index, output_index=None, eps=1e-6):
    idx = np.broadcast_to(class_index, (len(x),))
    grad = np.zeros_like(x)
    for i in range(len(x)):
        for j in np.ndindex(x.shape[1:]):
            vals = []
            for sign in (1, -1):
                xp = x.copy()
                xp[(i,) + j] += sign * eps
                p = model.predict(xp)
                p = p if output_index is None else p[output_index]
                vals.append(p[i, idx[i]])
            grad[(i,) + j] = (vals[0] - vals[1]) / (2 * eps)
    return grad


def test_saliency_equals_finite_differences(float64):
    model = tiny()
    x = np.random.default_rng(0).standard_normal((3, 2, 3))
    for class_index in (2, np.array([0, 3, 1])):
        sal = nb.explain.saliency(model, x, class_index)
        assert sal.shape == x.shape and sal.dtype == np.float64
        np.testing.assert_allclose(sal, finite_difference_saliency(model, x, class_index), rtol=1e-6, atol=1e-9)
    # different classes give different maps
    assert not np.allclose(nb.explain.saliency(model, x, 0), nb.explain.saliency(model, x, 1))


def test_saliency_of_one_output_of_several(float64):
    inp = layers.Input((3,))
    h = layers.Dense(4, activation="relu", name="h")(inp)
    a = layers.Dense(2, activation="softmax", name="a")(h)
    b = layers.Dense(3, name="b")(h)
    model = nb.Model(inp, [a, b], seed=1)
    x = np.random.default_rng(1).standard_normal((2, 3))
    sal = nb.explain.saliency(model, x, 2, output_index=1)
    np.testing.assert_allclose(sal, finite_difference_saliency(model, x, 2, output_index=1), rtol=1e-6, atol=1e-9)


def test_saliency_after_training_and_bad_class(float64):
    model = tiny()
    model.compile(nb.optimizers.Adam(0.01), "sparse_categorical_crossentropy")
    rng = np.random.default_rng(2)
    x = rng.standard_normal((16, 2, 3))
    y = rng.integers(0, 4, 16)
    model.fit(x, y, epochs=2, batch_size=4, verbose=0)
    before = model.get_weights()
    sal = nb.explain.saliency(model, x[:2], 1)
    np.testing.assert_allclose(sal, finite_difference_saliency(model, x[:2], 1), rtol=1e-6, atol=1e-9)
    for a, b in zip(before, model.get_weights()):  # inspecting does not change the model
        np.testing.assert_array_equal(a, b)
    model.fit(x, y, epochs=1, batch_size=4, verbose=0)  # and training still works afterwards
    with pytest.raises(ValueError, match="class_index"):
        nb.explain.saliency(model, x[:2], 4)


def test_get_activations(float64):
    model = tiny()
    x = np.random.default_rng(3).standard_normal((4, 2, 3))
    hidden = model.get_layer("hidden")
    expected = np.tanh(x.reshape(4, 6) @ hidden.params["kernel"] + hidden.params["bias"])
    np.testing.assert_allclose(model.get_activations(x, "hidden"), expected, rtol=1e-12)
    np.testing.assert_allclose(model.get_activations(x, hidden), expected, rtol=1e-12)
    np.testing.assert_array_equal(model.get_activations(x, "flat"), x.reshape(4, 6))
    np.testing.assert_array_equal(model.get_activations(x, model.layers[0]), x)
    np.testing.assert_allclose(model.get_activations(x, "probs"), model.predict(x), rtol=1e-12)
    a = model.get_activations(x, "hidden")
    model.get_activations(x[:2] * 2, "hidden")
    np.testing.assert_allclose(a, expected, rtol=1e-12)  # a copy, not a reused workspace
    with pytest.raises(ValueError, match="no layer named 'nope'"):
        model.get_activations(x, "nope")
    with pytest.raises(ValueError, match="not part of this model"):
        model.get_activations(x, layers.Dense(2))


def test_get_activations_sequential():
    model = nb.Sequential([layers.Input((3,)), layers.Dense(4, activation="relu", name="d1"), layers.Dense(2)],
                          seed=0)
    x = np.random.default_rng(4).standard_normal((5, 3)).astype("float32")
    d1 = model.get_layer("d1")
    np.testing.assert_allclose(model.get_activations(x, "d1"),
                               np.maximum(x @ d1.params["kernel"] + d1.params["bias"], 0), rtol=1e-5, atol=1e-6)


def test_digits_explain_example(tmp_path):
    out = tmp_path / "sal.png"
    env = dict(os.environ, NBMODEL_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, os.path.join(REPO, "examples", "digits_explain.py"), "--out", str(out),
                           "--epochs", "3"], capture_output=True, text=True, cwd=tmp_path, timeout=600, env=env)
    if proc.returncode != 0 and "No module named 'matplotlib'" in proc.stderr:
        pytest.skip("matplotlib is not installed")
    assert proc.returncode == 0, proc.stderr
    assert str(out) in proc.stdout
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_saliency_of_integer_ids_is_refused():
    model = nb.Sequential([layers.Input((5,), dtype="int64"), layers.Embedding(10, 4), layers.Flatten(),
                           layers.Dense(3)], seed=0)
    ids = np.random.default_rng(5).integers(0, 10, (2, 5))
    with pytest.raises(ValueError, match="integer ids"):
        nb.explain.saliency(model, ids, 1)
    assert model.get_activations(ids, model.layers[0]).shape == (2, 5, 4)


@pytest.mark.parametrize("arch", ["cnn", "transformer"])
def test_saliency_through_conv_batchnorm_dropout_and_attention(arch, float64):
    """Inference-mode gradients: no dropout, moving statistics, yet backward works."""
    from nbmodel import layers as L

    rng = np.random.default_rng(0)
    if arch == "cnn":
        stack = [L.Input((6, 6, 1)), L.Conv2D(2, 3, activation="tanh"), L.BatchNormalization(),
                 L.MaxPooling2D(2), L.Flatten(), L.Dropout(0.5), L.Dense(3)]
        x = rng.random((2, 6, 6, 1))
    else:
        stack = [L.Input((4, 4)), L.TransformerEncoder(2, 3, 8), L.GlobalAveragePooling1D(), L.Dense(3)]
        x = rng.random((2, 4, 4))
    model = nb.Sequential(stack, seed=0)
    sal = nb.explain.saliency(model, x, 1)
    eps, num = 1e-6, np.zeros_like(x)
    for i in np.ndindex(x.shape):
        xp, xm = x.copy(), x.copy()
        xp[i] += eps
        xm[i] -= eps
        num[i] = (model.predict(xp)[:, 1].sum() - model.predict(xm)[:, 1].sum()) / (2 * eps)
    assert np.abs(num).max() > 1e-3
    np.testing.assert_allclose(sal, num, rtol=1e-5, atol=1e-8)
