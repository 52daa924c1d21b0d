"""Core layers: Dense, Activation, Dropout, Flatten, Reshape, Add, Concatenate."""
import numpy as np
import pytest

from nbmodel import layers as L
from nbmodel.kernels.reference import dense as ref
from nbmodel.testing import float64_ops, gradcheck

ACTIVATIONS = ["linear", "relu", "sigmoid", "tanh", "softmax", "gelu", "leaky_relu", "elu", "silu"]


def rng(seed=0):
    return np.random.default_rng(seed)


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_dense_forward_matches_reference(activation, dtype):
    x = rng().standard_normal((5, 7)).astype(dtype)
    layer = L.Dense(4, activation=activation, dtype=dtype, seed=1)
    layer.build(x.shape)
    layer.params["bias"][:] = rng(2).standard_normal(4)
    y = layer.forward(x)
    assert y.dtype == np.dtype(dtype) and y.shape == (5, 4)
    expected = ref.dense(x, layer.params["kernel"], layer.params["bias"], activation)
    tol = 1e-5 if dtype == "float32" else 1e-12
    np.testing.assert_allclose(y, expected, rtol=tol, atol=tol)


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_dense_gradients(activation):
    x = rng().standard_normal((3, 5))
    gradcheck(L.Dense(4, activation=activation, seed=3), x)


def test_dense_no_bias_and_3d_input():
    x = rng().standard_normal((2, 3, 5))
    layer = L.Dense(4, use_bias=False, seed=0)
    gradcheck(layer, x)
    assert list(layer.params) == ["kernel"]
    y = layer.forward(x)
    np.testing.assert_allclose(y, x @ layer.params["kernel"], rtol=1e-12)


def test_dense_skips_input_gradient_when_not_needed():
    layer = L.Dense(3, seed=0)
    x = rng().standard_normal((4, 2)).astype(np.float32)
    layer.forward(x, training=True)
    layer.input_grad_needed = False
    assert layer.backward(np.ones((4, 3), np.float32)) is None
    np.testing.assert_allclose(layer.grads["kernel"], x.T @ np.ones((4, 3)), rtol=1e-6)


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_activation_layer(activation):
    x = rng().standard_normal((3, 4))
    layer = L.Activation(activation, dtype="float64")
    np.testing.assert_allclose(layer.forward(x), ref.activation(activation, x), rtol=1e-12, atol=1e-12)
    gradcheck(layer, x)


def test_float32_kernels_stay_float32():
    from nbmodel.kernels.cpu import activations, dense

    x = rng().standard_normal((4, 3)).astype(np.float32)
    w = rng().standard_normal((3, 5)).astype(np.float32)
    b = np.zeros(5, np.float32)
    out = np.empty((4, 5), np.float32)
    # the activation code is a runtime argument: one compilation covers every activation
    assert float64_ops(dense.dense_forward, x, w, b, 4, out.copy(), out) == []
    assert float64_ops(dense.dense_backward, x, w, out, out, out, 4, True, out.copy(),
                       w.copy(), b.copy(), x.copy()) == []
    flat = out.reshape(-1)
    assert float64_ops(activations.activation_forward, 4, flat, flat.copy()) == []
    assert float64_ops(activations.activation_backward, 4, flat, flat, flat, flat.copy()) == []
    assert float64_ops(activations.softmax_rows, out, out.copy()) == []
    u = rng().random(20).astype(np.float32)
    assert float64_ops(dense.dropout_forward, u, u, np.float32(0.5), u.copy()) == []


def test_dropout_training_and_inference():
    layer = L.Dropout(0.25, seed=0)
    x = np.ones((200, 50), np.float32)
    y = layer.forward(x, training=True)
    kept = y != 0
    assert 0.7 < kept.mean() < 0.8
    np.testing.assert_allclose(y[kept], 1 / 0.75, rtol=1e-6)
    dx = layer.backward(np.ones_like(x))
    np.testing.assert_array_equal(dx != 0, kept)
    np.testing.assert_array_equal(layer.forward(x, training=False), x)


def test_dropout_rejects_bad_rate():
    with pytest.raises(ValueError, match="dropout.*rate"):
        L.Dropout(1.0)


def test_flatten_reshape_roundtrip():
    x = rng().standard_normal((2, 3, 4))
    f = L.Flatten()
    assert f.forward(x).shape == (2, 12)
    assert f.backward(np.ones((2, 12))).shape == (2, 3, 4)
    r = L.Reshape((4, -1))
    assert r.forward(x).shape == (2, 4, 3)
    assert r.compute_output_shape((None, 3, 4)) == (None, 4, 3)
    with pytest.raises(ValueError, match="reshape"):
        L.Reshape((5, 5)).forward(x)


def test_add_and_concatenate_gradients():
    a, b = rng(1).standard_normal((2, 3)), rng(2).standard_normal((2, 3))
    gradcheck(L.Add(), [a, b])
    c = rng(3).standard_normal((2, 5))
    layer = L.Concatenate(dtype="float64")
    np.testing.assert_array_equal(layer.forward([a, c]), np.concatenate([a, c], axis=-1))
    gradcheck(L.Concatenate(), [a, c])
    with pytest.raises(ValueError, match="add"):
        L.Add().forward([a, c])


def test_bad_input_names_the_layer():
    layer = L.Dense(3, name="hidden")
    layer.build((None, 4))
    with pytest.raises(ValueError, match="hidden.*last dimension 4"):
        layer.forward(np.ones((2, 5)))
    with pytest.raises(ValueError, match="hidden.*rank >= 2"):
        layer.forward(np.ones(4))
    with pytest.raises(ValueError, match="hidden.*NaN"):
        layer.forward(np.array([[1.0, np.nan, 0, 0]]))
    with pytest.raises(TypeError, match="hidden.*numeric"):
        layer.forward(np.array([["a", "b", "c", "d"]]))
    with pytest.raises(ValueError, match="hidden.*unknown activation"):
        L.Dense(3, activation="relux", name="hidden")
    with pytest.raises(ValueError, match="units"):
        L.Dense(0)


def test_keras_2_input_shape_keyword():
    import nbmodel as nb

    model = nb.Sequential([L.Dense(3, input_shape=(4,)), L.Dense(2)])
    assert model.layers[0].params["kernel"].shape == (4, 3)
    assert model.predict(np.ones((5, 4))).shape == (5, 2)
