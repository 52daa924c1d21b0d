"""Core layers: Dense, Activation, Dropout, Flatten, Reshape, Add, Concatenate as layer
cases (reference, finite differences, on every device); dropout masks, shapes, errors."""
import numpy as np
import pytest

from nbmodel import layers as L
from nbmodel.kernels.reference import activations as aref
from nbmodel.kernels.reference import dense as ref
from nbmodel.testing import LayerCase

ACTIVATIONS = ["linear", "relu", "sigmoid", "tanh", "softmax", "gelu", "leaky_relu", "elu", "silu"]
EXACT = {"float32": 0.0, "float64": 0.0}
# float64 agrees with the reference to rounding
RTOL = {"float32": 1e-5, "float64": 1e-12}
ATOL = {"float32": 1e-5, "float64": 1e-12}


def rng(seed=0):
    return np.random.default_rng(seed)


# ------------------------------------------------------------------ layer cases
def dense_case(activation):
    def make(dt):
        layer = L.Dense(4, activation=activation, dtype=dt, seed=1)
        layer.build((None, 7))
        layer.set_weights([layer.get_weights()[0], rng(2).standard_normal(4)])  # a non-zero bias
        return layer

    return LayerCase(f"dense-{activation}", make, inputs=lambda r: r.standard_normal((5, 7)),
                     reference=lambda w, x: ref.dense_forward(x, w["kernel"], w["bias"], activation),
                     rtol=RTOL, atol=ATOL)


def activation_case(activation):
    return LayerCase(f"activation-{activation}", lambda dt: L.Activation(activation, dtype=dt),
                     inputs=lambda r: r.standard_normal((3, 4)),
                     reference=lambda w, x: aref.activation_forward(activation, x), rtol=RTOL, atol=ATOL)


DROPOUT_SEED = 7


class FixedMaskDropout(L.Dropout):
    """Dropout that draws the same mask on every call (its generator seeded afresh), so a
    training forward has a reference and finite differences see one function."""

    def forward(self, x, training=False):
        self.rng = np.random.default_rng(DROPOUT_SEED)
        return super().forward(x, training)


def dropout_training_case(rate):
    made = {}

    def make(dt):
        made["dtype"] = dt
        return FixedMaskDropout(rate, dtype=dt)

    def reference(w, x):
        # every device draws the mask on the host from the layer's generator, in the layer's dtype
        u = np.random.default_rng(DROPOUT_SEED).random(x.shape, dtype=np.dtype(made["dtype"]))
        return ref.dropout_forward(x, u, rate)

    return LayerCase(f"dropout-{rate}-training", make, inputs=lambda r: r.standard_normal((6, 5)),
                     reference=reference, training=True, rtol=RTOL, atol=ATOL)


CASES = [dense_case(a) for a in ACTIVATIONS] + [
    LayerCase("dense-no-bias-3d", lambda dt: L.Dense(4, use_bias=False, dtype=dt, seed=0),
              inputs=lambda r: r.standard_normal((2, 3, 5)),
              reference=lambda w, x: ref.dense_forward(x, w["kernel"]),
              rtol=RTOL, atol={"float32": 1e-5, "float64": 0.0}),
] + [activation_case(a) for a in ACTIVATIONS] + [
    dropout_training_case(0.25),
    dropout_training_case(0.5),
    # inference is the identity (training draws a fresh mask: no finite differences)
    LayerCase("dropout-inference", lambda dt: L.Dropout(0.25, seed=0, dtype=dt),
              inputs=lambda r: r.standard_normal((6, 5)), reference=lambda w, x: x,
              gradients=False, rtol=EXACT, atol=EXACT),
    LayerCase("flatten", lambda dt: L.Flatten(dtype=dt), inputs=lambda r: r.standard_normal((2, 3, 4)),
              reference=lambda w, x: np.reshape(x, (x.shape[0], -1)), rtol=EXACT, atol=EXACT),
    LayerCase("reshape", lambda dt: L.Reshape((4, -1), dtype=dt), inputs=lambda r: r.standard_normal((2, 3, 4)),
              reference=lambda w, x: np.reshape(x, (x.shape[0], 4, 3)), rtol=EXACT, atol=EXACT),
    LayerCase("add", lambda dt: L.Add(dtype=dt),
              inputs=lambda r: (r.standard_normal((2, 3)), r.standard_normal((2, 3))),
              reference=lambda w, a, b: a + b, rtol={"float32": 1e-5, "float64": 0.0},
              atol={"float32": 1e-5, "float64": 0.0}),
    LayerCase("add-three", lambda dt: L.Add(dtype=dt),
              inputs=lambda r: tuple(r.standard_normal((2, 2, 3)) for _ in range(3)),
              reference=lambda w, a, b, c: a + b + c, rtol=RTOL, atol=ATOL),
    LayerCase("concatenate", lambda dt: L.Concatenate(dtype=dt),
              inputs=lambda r: (r.standard_normal((2, 3)), r.standard_normal((2, 5))),
              reference=lambda w, a, c: np.concatenate([a, c], axis=-1), rtol=EXACT, atol=EXACT),
]


@pytest.mark.parametrize("case", CASES, ids=str)
def test_layer_case(case, device):
    case.check(device)


# ------------------------------------------------------------------ special behaviours
def test_dense_params_without_bias():
    layer = L.Dense(4, use_bias=False, seed=0)
    layer.build((None, 3, 5))
    assert list(layer.params) == ["kernel"]


def test_dense_skips_input_gradient_when_not_needed():
    layer = L.Dense(3, seed=0)
    x = rng().standard_normal((4, 2)).astype(np.float32)
    layer.forward(x, training=True)
    layer.input_grad_needed = False
    assert layer.backward(np.ones((4, 3), np.float32)) is None
    np.testing.assert_allclose(layer.grads["kernel"], x.T @ np.ones((4, 3)), rtol=1e-6)


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


def test_add_rejects_different_shapes():
    a, c = rng(1).standard_normal((2, 3)), rng(3).standard_normal((2, 5))
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
