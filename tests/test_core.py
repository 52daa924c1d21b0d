"""Core layers: Dense, Activation, Dropout (noise_shape), SpatialDropout1D/2D, Flatten, Reshape,
and the merges Add, Subtract, Multiply, Average, Maximum, Minimum, Concatenate, Dot as layer
cases (reference, finite differences, on every device); dropout masks, shapes, configs, errors,
PyTorch parity, a model with the merges that trains and round-trips."""
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


class FixedMask:
    """Dropout that draws the same mask on every call (its generator seeded afresh), so a
    training forward has a reference and finite differences see one function."""

    def forward(self, x, training=False):
        self.rng = np.random.default_rng(DROPOUT_SEED)
        return super().forward(x, training)


class FixedMaskDropout(FixedMask, L.Dropout):
    pass


class FixedMaskSpatial1D(FixedMask, L.SpatialDropout1D):
    pass


class FixedMaskSpatial2D(FixedMask, L.SpatialDropout2D):
    pass


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


def broadcast_dropout_case(name, make_layer, shape, mask_shape, rate=0.5):
    """Dropout whose mask (drawn at ``mask_shape``, Keras noise_shape semantics) is broadcast."""
    made = {}

    def make(dt):
        made["dtype"] = dt
        return make_layer(dt)

    def reference(w, x):
        u = np.random.default_rng(DROPOUT_SEED).random(mask_shape, dtype=np.dtype(made["dtype"]))
        return ref.dropout_forward(x, np.broadcast_to(u, x.shape), rate)

    return LayerCase(name, make, inputs=lambda r: r.standard_normal(shape), reference=reference,
                     training=True, rtol=RTOL, atol=ATOL)


def merge_case(name, make, n, shape, reference, rtol=RTOL, atol=ATOL):
    return LayerCase(name, make, inputs=lambda r: tuple(r.standard_normal(shape) for _ in range(n)),
                     reference=lambda w, *xs: reference(*xs), rtol=rtol, atol=atol)


def dot_reference(axes, normalize=False):
    def reference(w, a, b):
        axes_ = [ax % x.ndim for ax, x in zip(axes, (a, b))]
        if normalize:
            a = a / np.sqrt((a * a).sum(axis=axes_[0], keepdims=True))
            b = b / np.sqrt((b * b).sum(axis=axes_[1], keepdims=True))
        out = np.stack([np.tensordot(a[i], b[i], axes=(axes_[0] - 1, axes_[1] - 1)) for i in range(a.shape[0])])
        return out.reshape(a.shape[0], -1) if out.ndim == 1 else out
    return reference


def dot_case(name, axes, shapes, normalize=False):
    return LayerCase(name, lambda dt: L.Dot(axes, normalize=normalize, dtype=dt),
                     inputs=lambda r: tuple(r.standard_normal(s) for s in shapes),
                     reference=dot_reference((axes, axes) if isinstance(axes, int) else axes, normalize),
                     rtol=RTOL, atol=ATOL)


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
    broadcast_dropout_case("dropout-noise-shape", lambda dt: FixedMaskDropout(0.5, noise_shape=(None, 1, 3),
                                                                             dtype=dt),
                           (4, 3, 3), (4, 1, 3)),
    broadcast_dropout_case("dropout-noise-shape-two-runs",
                           lambda dt: FixedMaskDropout(0.4, noise_shape=(None, 1, 1, 2, 1), dtype=dt),
                           (3, 2, 2, 2, 2), (3, 1, 1, 2, 1), rate=0.4),
    broadcast_dropout_case("spatial-dropout1d", lambda dt: FixedMaskSpatial1D(0.5, dtype=dt),
                           (4, 3, 3), (4, 1, 3)),
    broadcast_dropout_case("spatial-dropout2d", lambda dt: FixedMaskSpatial2D(0.5, dtype=dt),
                           (4, 2, 3, 3), (4, 1, 1, 3)),
    merge_case("subtract", lambda dt: L.Subtract(dtype=dt), 2, (2, 3), np.subtract,
               rtol=EXACT, atol={"float32": 1e-6, "float64": 0.0}),
    merge_case("multiply", lambda dt: L.Multiply(dtype=dt), 2, (2, 3), np.multiply),
    merge_case("multiply-three", lambda dt: L.Multiply(dtype=dt), 3, (2, 2, 3), lambda a, b, c: a * b * c),
    merge_case("average", lambda dt: L.Average(dtype=dt), 2, (2, 3), lambda a, b: (a + b) / 2),
    merge_case("average-three", lambda dt: L.Average(dtype=dt), 3, (2, 2, 3), lambda a, b, c: (a + b + c) / 3),
    merge_case("maximum", lambda dt: L.Maximum(dtype=dt), 3, (2, 2, 3), lambda *xs: np.maximum.reduce(xs),
               rtol=EXACT, atol=EXACT),
    merge_case("minimum", lambda dt: L.Minimum(dtype=dt), 2, (2, 5), np.minimum, rtol=EXACT, atol=EXACT),
    dot_case("dot-vectors", 1, [(3, 4), (3, 4)]),
    dot_case("dot-vectors-negative-axis", -1, [(3, 4), (3, 4)]),
    dot_case("dot-sequences", 2, [(2, 3, 4), (2, 5, 4)]),
    dot_case("dot-axes-1-1", (1, 1), [(2, 3, 4), (2, 3, 5)]),
    dot_case("dot-axes-2-1", (2, 1), [(2, 3, 4), (2, 4, 5)]),
    dot_case("dot-axes-1-2", (1, 2), [(2, 3, 4), (2, 5, 3)]),
    dot_case("dot-matrix-vector", (2, 1), [(2, 3, 4), (2, 4)]),
    dot_case("dot-vector-matrix", (1, 2), [(2, 4), (2, 3, 4)]),
    dot_case("dot-normalize", 1, [(3, 4), (3, 4)], normalize=True),
    dot_case("dot-normalize-3d", (1, 2), [(2, 3, 4), (2, 5, 3)], normalize=True),
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


# ------------------------------------------------------------------ dropout noise_shape, spatial dropout
def test_dropout_noise_shape_broadcasts_the_mask():
    layer = L.Dropout(0.5, noise_shape=(None, 1, 4), seed=0)
    y = layer.forward(np.ones((40, 5, 4), np.float32), training=True)
    dropped = y[:, :1] == 0
    np.testing.assert_array_equal(y == 0, np.broadcast_to(dropped, y.shape))  # whole steps axis alike
    assert 0.3 < dropped.mean() < 0.7
    dx = layer.backward(np.ones((40, 5, 4), np.float32))
    np.testing.assert_array_equal(dx, y)


def test_spatial_dropout_drops_whole_channels():
    x = np.ones((30, 3, 2, 4), np.float32)
    y = L.SpatialDropout2D(0.5, seed=1).forward(x, training=True)
    per_channel = (y == 0).reshape(30, 6, 4)
    assert (per_channel.all(axis=1) | (~per_channel).all(axis=1)).all()
    assert 0.3 < per_channel.mean() < 0.7
    y1 = L.SpatialDropout1D(0.5, seed=1).forward(np.ones((30, 5, 4), np.float32), training=True)
    assert ((y1 == 0).all(axis=1) | (y1 != 0).all(axis=1)).all()
    np.testing.assert_array_equal(L.SpatialDropout1D(0.5).forward(x[:, 0]), x[:, 0])  # inference: identity


def test_dropout_masks_follow_the_seed():
    x = np.ones((6, 3, 4), np.float32)
    a, b = L.Dropout(0.5, noise_shape=(None, 1, None), seed=3), L.Dropout(0.5, noise_shape=(None, 1, None), seed=3)
    first = a.forward(x, training=True).copy()
    np.testing.assert_array_equal(first, b.forward(x, training=True))
    assert not np.array_equal(first, a.forward(x, training=True))  # the generator moves on


def test_dropout_bad_noise_shape_names_the_layer():
    with pytest.raises(ValueError, match="drop.*noise_shape"):
        L.Dropout(0.5, noise_shape=(None, 0), name="drop")
    layer = L.Dropout(0.5, noise_shape=(None, 2, 1), name="drop")
    with pytest.raises(ValueError, match="drop.*does not broadcast"):
        layer.forward(np.ones((2, 3, 4)), training=True)
    with pytest.raises(ValueError, match="drop.*rank"):
        L.Dropout(0.5, noise_shape=(None, 1), name="drop").forward(np.ones((2, 3, 4)), training=True)
    with pytest.raises(ValueError, match="sd.*rank 4"):
        L.SpatialDropout2D(0.5, name="sd").forward(np.ones((2, 3, 4)), training=True)
    with pytest.raises(ValueError, match="sd.*channels_last"):
        L.SpatialDropout2D(0.5, data_format="channels_first", name="sd")


# ------------------------------------------------------------------ merges
def test_maximum_minimum_ties_go_to_the_first_tied_input():
    """TensorFlow's rule (the gradient of maximum(x, y) goes to x where x >= y), applied input by
    input as Keras chains Maximum: the first of the tied inputs gets all of the gradient."""
    a = np.array([[1.0, 2.0, 0.0, 5.0]])
    b = np.array([[1.0, 3.0, 0.0, 4.0]])
    c = np.array([[0.0, 3.0, 0.0, 5.0]])
    dy = np.array([[1.0, 2.0, 3.0, 4.0]])
    mx = L.Maximum(dtype="float64")
    np.testing.assert_array_equal(mx.forward([a, b, c], training=True), [[1, 3, 0, 5]])
    da, db, dc = mx.backward(dy)
    np.testing.assert_array_equal(da, [[1, 0, 3, 4]])
    np.testing.assert_array_equal(db, [[0, 2, 0, 0]])
    np.testing.assert_array_equal(dc, [[0, 0, 0, 0]])
    mn = L.Minimum(dtype="float64")
    np.testing.assert_array_equal(mn.forward([b, c], training=True), [[0, 3, 0, 4]])
    db, dc = mn.backward(dy)
    np.testing.assert_array_equal(db, [[0, 2, 3, 4]])
    np.testing.assert_array_equal(dc, [[1, 0, 0, 0]])


def test_merges_reject_bad_inputs_naming_the_layer():
    a, b, c = np.ones((2, 3)), np.ones((2, 3)), np.ones((2, 3))
    with pytest.raises(ValueError, match="sub.*exactly 2 inputs"):
        L.Subtract(name="sub").forward([a, b, c])
    with pytest.raises(ValueError, match="sub.*exactly 2 inputs"):
        L.Subtract(name="sub").build([(None, 3)] * 3)
    with pytest.raises(ValueError, match="mul.*same shape"):
        L.Multiply(name="mul").forward([a, np.ones((2, 4))])
    with pytest.raises(ValueError, match="mx.*at least 2"):
        L.Maximum(name="mx").forward([a])
    with pytest.raises(ValueError, match="dot.*incompatible"):
        L.Dot(1, name="dot").forward([a, np.ones((2, 4))])
    with pytest.raises(ValueError, match="dot.*exactly 2"):
        L.Dot(1, name="dot").forward([a, b, c])
    with pytest.raises(ValueError, match="dot.*rank 2 or 3"):
        L.Dot(1, name="dot").forward([np.ones((2, 3, 1, 1)), np.ones((2, 3, 1, 1))])
    with pytest.raises(ValueError, match="dot.*batch axis"):
        L.Dot(0, name="dot").compute_output_shape([(None, 3), (None, 3)])
    with pytest.raises(ValueError, match="dot.*axes"):
        L.Dot((1, 2, 3), name="dot")
    with pytest.raises(TypeError, match="dot.*axes"):
        L.Dot("last", name="dot")


def test_dot_output_shapes_follow_keras():
    assert L.Dot(1).compute_output_shape([(None, 4), (None, 4)]) == (None, 1)
    assert L.Dot((1, 2)).compute_output_shape([(None, 3, 5), (None, 10, 3)]) == (None, 5, 10)
    assert L.Dot((2, 1)).compute_output_shape([(None, 3, 4), (None, 4)]) == (None, 3)
    assert L.Dot(-1).compute_output_shape([(None, 3, 4), (None, 5, 4)]) == (None, 3, 5)
    # Keras' docstring example: arange inputs, axes=(1, 2)
    x = np.arange(10, dtype=np.float64).reshape(1, 5, 2)
    y = np.arange(10, 20, dtype=np.float64).reshape(1, 2, 5)
    np.testing.assert_array_equal(L.Dot((1, 2), dtype="float64")([x, y]), [[[260, 360], [320, 445]]])


def test_dot_normalize_caps_the_inverse_norm_like_keras():
    """Keras: x * min(1 / sqrt(sum x**2), 1 / 1e-7): a zero vector stays zero (no NaN)."""
    a = np.array([[0.0, 0.0], [3.0, 4.0]])
    out = L.Dot(1, normalize=True, dtype="float64")([a, np.array([[1.0, 0.0], [3.0, 4.0]])])
    np.testing.assert_allclose(out, [[0.0], [1.0]], rtol=1e-12)


@pytest.mark.parametrize("layer", [
    L.Subtract(), L.Multiply(), L.Average(), L.Maximum(), L.Minimum(), L.Dot((1, 2), normalize=True), L.Dot(-1),
    L.Dropout(0.3, noise_shape=(None, 1, None), seed=2), L.SpatialDropout1D(0.2, seed=1), L.SpatialDropout2D(0.2),
], ids=lambda lyr: type(lyr).__name__)
def test_new_layers_get_config_round_trip(layer):
    cfg = layer.get_config()
    clone = type(layer).from_config(cfg)
    assert clone.get_config() == cfg


def test_merges_match_torch():
    torch = pytest.importorskip("torch")
    r = rng(4)
    a, b, c = (r.standard_normal((3, 4)) for _ in range(3))
    dy = r.standard_normal((3, 4))
    ops = {L.Subtract: lambda x, y: x - y, L.Multiply: lambda x, y: x * y,
           L.Maximum: torch.maximum, L.Minimum: torch.minimum}
    for cls, fn in ops.items():
        at, bt = torch.tensor(a, requires_grad=True), torch.tensor(b, requires_grad=True)
        yt = fn(at, bt)
        yt.backward(torch.tensor(dy))
        layer = cls(dtype="float64")
        y = layer.forward([a, b], training=True)
        da, db = layer.backward(dy)
        np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-12, err_msg=cls.__name__)
        np.testing.assert_allclose(da, at.grad.numpy(), rtol=1e-12, err_msg=cls.__name__)
        np.testing.assert_allclose(db, bt.grad.numpy(), rtol=1e-12, err_msg=cls.__name__)
    # Dot of sequences (batched product) and normalize=True (cosine similarity)
    x, y = r.standard_normal((2, 3, 4)), r.standard_normal((2, 5, 4))
    dy = r.standard_normal((2, 3, 5))
    xt, yt = torch.tensor(x, requires_grad=True), torch.tensor(y, requires_grad=True)
    ot = torch.bmm(torch.nn.functional.normalize(xt, dim=2), torch.nn.functional.normalize(yt, dim=2).transpose(1, 2))
    ot.backward(torch.tensor(dy))
    layer = L.Dot(2, normalize=True, dtype="float64")
    out = layer.forward([x, y], training=True)
    dx, dyy = layer.backward(dy)
    np.testing.assert_allclose(out, ot.detach().numpy(), rtol=1e-12)
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(dyy, yt.grad.numpy(), rtol=1e-10, atol=1e-12)


def test_array_kernels_stay_in_float32():
    from nbmodel.kernels.cpu import array as ka
    from nbmodel.testing import float64_ops

    x = np.ones((2, 3, 4), np.float32)
    inv = np.empty((2, 4), np.float32)
    assert float64_ops(ka._l2_normalize, x, np.float32(1e-7), np.empty_like(x), inv) == []
    assert float64_ops(ka._l2_normalize_backward, x, inv, x, np.float32(1e-7), np.empty_like(x)) == []
    assert float64_ops(ka._take_where, x.reshape(-1), np.zeros(24, np.int32), 0, np.empty(24, np.float32)) == []


def test_model_with_merges_trains_and_round_trips(tmp_path):
    import nbmodel as nb

    a, b = L.Input((4,)), L.Input((4,))
    ha, hb = L.Dense(6, activation="tanh")(a), L.Dense(6, activation="tanh")(b)
    merged = [L.Subtract()([ha, hb]), L.Multiply()([ha, hb]), L.Average()([ha, hb, ha]),
              L.Maximum()([ha, hb]), L.Minimum()([ha, hb]), L.Dot(1)([ha, hb]), L.Dot(1, normalize=True)([ha, hb])]
    h = L.Dropout(0.1, noise_shape=(None, 1), seed=0)(L.Concatenate()(merged))
    model = nb.Model(inputs=[a, b], outputs=L.Dense(1)(h), seed=0)
    r = rng(7)
    xa, xb = r.standard_normal((64, 4)).astype(np.float32), r.standard_normal((64, 4)).astype(np.float32)
    y = (xa * xb).sum(axis=1, keepdims=True)
    model.compile(optimizer=nb.optimizers.Adam(0.01), loss="mse")
    before = model.evaluate([xa, xb], y)
    model.fit([xa, xb], y, batch_size=16, epochs=30, verbose=0)
    assert model.evaluate([xa, xb], y) < 0.5 * before
    model.save(tmp_path / "m.nbm")
    loaded = nb.load_model(tmp_path / "m.nbm")
    np.testing.assert_array_equal(loaded.predict([xa, xb]), model.predict([xa, xb]))


def test_noise_shaped_dropout_resumes_exactly(tmp_path):
    """SpatialDropout1D and Dropout(noise_shape) draw from the layer generators that BackupAndRestore
    saves: a run that crashes and resumes ends with the weights of an uninterrupted run."""
    import nbmodel as nb

    class Crash(nb.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            if epoch == 2:
                raise RuntimeError("crash")

    r = rng(9)
    x = r.standard_normal((24, 5, 3)).astype(np.float32)
    y = x.sum(axis=(1, 2))[:, None]

    def run(callbacks):
        model = nb.Sequential([L.Input((5, 3)), L.SpatialDropout1D(0.3, seed=1), L.Dense(4),
                               L.Dropout(0.3, noise_shape=(None, 1, None), seed=2), L.Flatten(), L.Dense(1)],
                              seed=0)
        model.compile(optimizer="adam", loss="mse")
        model.fit(x, y, epochs=4, batch_size=8, verbose=0, callbacks=callbacks)
        return model

    reference = run([])
    with pytest.raises(RuntimeError, match="crash"):
        run([nb.callbacks.BackupAndRestore(tmp_path), Crash()])
    resumed = run([nb.callbacks.BackupAndRestore(tmp_path)])
    for a, b in zip(resumed.get_weights(), reference.get_weights()):
        np.testing.assert_array_equal(a, b)
