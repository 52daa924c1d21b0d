"""Sequential/Model: Keras code runs unchanged, determinism, weights, evaluate/predict,
summary, errors, non-finite losses, a user-written layer with its own kernel."""
import subprocess
import sys

import numba
import numpy as np
import pytest

import nbmodel as nb
from nbmodel import callbacks, layers
from nbmodel.layers import Layer
from nbmodel.testing import gradcheck


def blobs(n=60, d=4, classes=3, seed=0, dtype="float32"):
    """Separable clusters: a tiny classification problem."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    centers = rng.standard_normal((classes, d)) * 3
    x = centers[y] + rng.standard_normal((n, d))
    return x.astype(dtype), y.astype(np.int64)


def small_model(seed=0, d=4, classes=3, **kw):
    return nb.Sequential([layers.Input((d,)), layers.Dense(8, activation="relu"),
                          layers.Dense(classes, activation="softmax")], seed=seed, **kw)


# ------------------------------------------------------------- Keras ports
def test_keras_mlp_on_digits_reaches_95_percent(digits, one_thread):
    (x_train, y_train), (x_test, y_test) = digits
    # the Keras code, with only the import changed
    model = nb.Sequential([
        layers.Input((8, 8, 1)),
        layers.Flatten(),
        layers.Dense(1000, activation="relu"),
        layers.Dense(1000, activation="relu"),
        layers.Dense(10, activation="softmax"),
    ], seed=0)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    history = model.fit(x_train, y_train, epochs=5, verbose=0)
    loss, acc = model.evaluate(x_test, y_test)
    assert len(history.history["loss"]) == 5
    assert history.history["loss"][-1] < history.history["loss"][0]
    assert acc >= 0.95, f"test accuracy {acc:.4f}"
    pred = model.predict(x_test)
    assert pred.shape == (len(x_test), 10)
    np.testing.assert_allclose(pred.sum(axis=1), 1.0, rtol=1e-5)
    assert np.mean(pred.argmax(axis=1) == y_test) == pytest.approx(acc)


def test_binary_sigmoid_classifier_trains():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((200, 5)).astype("float32")
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).astype("float32")
    model = nb.Sequential([layers.Dense(8, activation="tanh", input_shape=(5,)),
                           layers.Dense(1, activation="sigmoid")], seed=0)
    model.compile(optimizer=nb.optimizers.Adam(0.01), loss="binary_crossentropy", metrics=["accuracy"])
    hist = model.fit(x, y, epochs=15, batch_size=16, verbose=0)
    losses = hist.history["loss"]
    assert losses[-1] < 0.3 * losses[0]
    loss, acc = model.evaluate(x, y)
    p = model.predict(x)[:, 0].astype(np.float64)
    assert loss == pytest.approx(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)), rel=1e-4)
    assert acc > 0.9
    assert model.predict(x).shape == (200, 1)


def test_sequential_builds_from_data_without_input():
    x, y = blobs()
    model = nb.Sequential([layers.Dense(6, activation="relu"), layers.Dense(3, activation="softmax")])
    model.compile("sgd", "sparse_categorical_crossentropy")
    model.fit(x, y, epochs=1, verbose=0)
    assert [w.shape for w in model.get_weights()] == [(4, 6), (6,), (6, 3), (3,)]


# ------------------------------------------------------------ determinism
def _train_twice(make):
    x, y = blobs(n=40)
    runs = []
    for _ in range(2):
        model = make()
        model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
        w0 = model.get_weights()
        hist = model.fit(x, y, epochs=3, batch_size=8, verbose=0)  # shuffled: the seed fixes it
        runs.append((w0, model.get_weights(), hist.history))
    (a0, a1, ha), (b0, b1, hb) = runs
    for u, v in zip(a0 + a1, b0 + b1):
        assert u.tobytes() == v.tobytes()
    assert ha == hb


def test_same_seed_bit_identical_sequential():
    _train_twice(lambda: nb.Sequential([layers.Input((4,)), layers.Dense(8, activation="relu"),
                                        layers.Dropout(0.3), layers.Dense(3, activation="softmax")],
                                       seed=7))


def test_same_seed_bit_identical_functional():
    def make():
        inp = layers.Input((4,))
        h = layers.Dense(8, activation="relu")(inp)
        h = layers.Dropout(0.3)(h)
        return nb.Model(inputs=inp, outputs=layers.Dense(3, activation="softmax")(h), seed=7)

    _train_twice(make)


def test_different_seeds_differ():
    a, b = small_model(seed=1), small_model(seed=2)
    assert not np.array_equal(a.get_weights()[0], b.get_weights()[0])


# ---------------------------------------------------------------- weights
def test_get_set_weights_keras_order():
    model = nb.Sequential([layers.Input((4,)), layers.Dense(3, activation="relu"), layers.Dense(2)], seed=0)
    d1, d2 = model.layers
    ws = model.get_weights()
    assert [w.shape for w in ws] == [(4, 3), (3,), (3, 2), (2,)]
    for got, want in zip(ws, [d1.params["kernel"], d1.params["bias"], d2.params["kernel"], d2.params["bias"]]):
        np.testing.assert_array_equal(got, want)
    ws[0][...] = 99  # copies: changing them does not change the model
    assert not np.any(d1.params["kernel"] == 99)

    rng = np.random.default_rng(3)
    new = [rng.standard_normal(w.shape).astype("float32") for w in ws]
    model.set_weights(new)
    x = rng.standard_normal((5, 4)).astype("float32")
    h = np.maximum(x @ new[0] + new[1], 0)
    np.testing.assert_allclose(model.predict(x), h @ new[2] + new[3], rtol=1e-5, atol=1e-6)

    with pytest.raises(ValueError, match="expected 4 arrays"):
        model.set_weights(new[:3])
    bad = list(new)
    bad[2] = np.zeros((2, 3), "float32")
    with pytest.raises(ValueError, match=d2.name):
        model.set_weights(bad)


def test_set_weights_then_training_updates_the_new_values():
    # params are views into the model's flat buffer: set_weights must write through
    x, y = blobs(n=16)
    model = small_model()
    model.compile(nb.optimizers.SGD(0.1), "sparse_categorical_crossentropy")
    zeros = [np.zeros_like(w) for w in model.get_weights()]
    model.set_weights(zeros)
    model.train_on_batch(x, y)
    after = model.get_weights()
    # all-zero weights: only the last bias gets a gradient
    assert np.all(after[0] == 0) and np.any(after[3] != 0)


# --------------------------------------------------- evaluate / predict
def test_evaluate_return_types():
    x, y = blobs(n=20)
    model = small_model()
    model.compile("adam", "sparse_categorical_crossentropy")
    loss = model.evaluate(x, y)
    assert isinstance(loss, float)
    model2 = small_model()
    model2.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    out = model2.evaluate(x, y)
    assert isinstance(out, list) and len(out) == 2
    d = model2.evaluate(x, y, return_dict=True)
    assert set(d) == {"loss", "accuracy"}
    assert d["loss"] == pytest.approx(out[0]) and d["accuracy"] == pytest.approx(out[1])


def test_evaluate_matches_numpy_loss():
    x, y = blobs(n=23)
    model = small_model()
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    p = model.predict(x).astype(np.float64)
    expected = -np.mean(np.log(p[np.arange(len(y)), y]))
    loss, acc = model.evaluate(x, y, batch_size=5)  # 5 does not divide 23
    assert loss == pytest.approx(expected, rel=1e-5)
    assert acc == pytest.approx(np.mean(p.argmax(1) == y))


@pytest.mark.parametrize("batch_size", [1, 5, 7, 23, 100])
def test_predict_batch_sizes(batch_size):
    x, _ = blobs(n=23)
    model = small_model()
    full = model.predict(x, batch_size=23)
    got = model.predict(x, batch_size=batch_size)
    np.testing.assert_allclose(got, full, rtol=1e-6, atol=1e-7)
    assert got.shape == (23, 3) and got.dtype == np.float32


def test_predict_outputs_are_not_workspaces():
    x, _ = blobs(n=8)
    model = small_model()
    a = model.predict(x[:4])
    a_copy = a.copy()
    model.predict(x[4:])
    np.testing.assert_array_equal(a, a_copy)


def test_train_and_test_on_batch():
    x, y = blobs(n=16)
    model = small_model()
    model.compile(nb.optimizers.SGD(0.5), "sparse_categorical_crossentropy", metrics=["accuracy"])
    before = model.test_on_batch(x, y)
    trained = model.train_on_batch(x, y)
    # the loss train_on_batch reports is the one before its update
    assert trained[0] == pytest.approx(before[0], rel=1e-6)
    assert model.test_on_batch(x, y)[0] < before[0]
    d = model.train_on_batch(x, y, return_dict=True)
    assert set(d) == {"loss", "accuracy"}


# ----------------------------------------------------------------- summary
def test_summary_and_count_params():
    model = nb.Sequential([layers.Input((8, 8, 1)), layers.Flatten(name="flat"),
                           layers.Dense(16, activation="relu", name="hidden"),
                           layers.Dense(10, name="logits")], name="digits_mlp")
    lines = []
    model.summary(print_fn=lines.append)
    text = "\n".join(lines)
    assert "digits_mlp" in text
    for name, shape, count in [("flat", "(None, 64)", "0"), ("hidden", "(None, 16)", "1040"),
                               ("logits", "(None, 10)", "170")]:
        row = next(line for line in text.splitlines() if line.startswith(name))
        assert shape in row and row.split()[-1] == count
    assert "Total params: 1,210" in text
    assert model.count_params() == 64 * 16 + 16 + 16 * 10 + 10


# ------------------------------------------------------------------ errors
@pytest.fixture
def compiled():
    model = small_model()
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def test_wrong_feature_size(compiled):
    x, y = blobs()
    with pytest.raises(ValueError, match=r"input.*\(None, 4\).*\(60, 3\)"):
        compiled.fit(x[:, :3], y, verbose=0)
    with pytest.raises(ValueError, match="expects shape"):
        compiled.predict(x[:, :3])


def test_wrong_feature_size_names_the_layer():
    x, _ = blobs()
    layer = layers.Dense(3, name="my_dense")
    layer.build((None, 4))
    with pytest.raises(ValueError, match="^my_dense:.*last dimension 4"):
        layer.forward(x[:, :3])


def test_label_out_of_range(compiled):
    x, y = blobs()
    y = y.copy()
    y[5] = 3
    with pytest.raises(ValueError, match=r"sparse_categorical_crossentropy: label 3.*\[0, 3\)"):
        compiled.fit(x, y, verbose=0)


def test_length_mismatch(compiled):
    x, y = blobs()
    with pytest.raises(ValueError, match="different numbers of samples"):
        compiled.fit(x[:50], y, verbose=0)
    with pytest.raises(ValueError, match="different numbers of samples"):
        compiled.evaluate(x, y[:10])


def test_non_numeric(compiled):
    x, y = blobs()
    with pytest.raises(TypeError, match="numeric"):
        compiled.fit(x.astype(str), y, verbose=0)
    with pytest.raises(TypeError, match="numeric"):
        compiled.fit(x, y.astype(str), verbose=0)
    with pytest.raises(TypeError, match="numeric"):
        compiled.predict(np.array([[object()] * 4]))


def test_nan_in_x(compiled):
    x, y = blobs()
    x = x.copy()
    x[7, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        compiled.fit(x, y, verbose=0)
    with pytest.raises(ValueError, match="NaN"):
        compiled.predict(x)


def test_unknown_names():
    with pytest.raises(ValueError, match="dense_x: unknown activation 'rlu'"):
        layers.Dense(3, activation="rlu", name="dense_x")
    with pytest.raises(ValueError, match="Unknown loss 'sparse_crossentropy'"):
        small_model().compile("adam", "sparse_crossentropy")
    with pytest.raises(ValueError, match="Unknown optimizer 'adamax2'"):
        small_model().compile("adamax2", "mse")
    x, y = blobs()
    model = small_model()
    with pytest.raises(ValueError, match="Unknown metric 'acuracy'"):
        model.compile("adam", "sparse_categorical_crossentropy", metrics=["acuracy"])
        model.fit(x, y, verbose=0)


def test_fit_without_compile():
    x, y = blobs()
    with pytest.raises(ValueError, match="compile"):
        small_model().fit(x, y, verbose=0)
    with pytest.raises(ValueError, match="compile"):
        small_model().evaluate(x, y)


class Poison(Layer):
    """Identity that returns NaN on its ``at``-th training call (1-based)."""

    def __init__(self, at, **kw):
        super().__init__(**kw)
        self.at, self.calls = at, 0

    def forward(self, x, training=False):
        if training:
            self.calls += 1
            if self.calls == self.at:
                return np.full_like(x, np.nan)
        return x

    def backward(self, dy):
        return dy


def _poisoned(at):
    model = nb.Sequential([layers.Input((4,)), layers.Dense(5, activation="relu"), Poison(at),
                           layers.Dense(3, activation="softmax")], seed=0)
    model.compile(nb.optimizers.SGD(0.1), "sparse_categorical_crossentropy")
    return model


def _record_weights(model):
    """Weights after each completed training step."""
    seen = []
    return seen, callbacks.LambdaCallback(on_train_batch_end=lambda batch, logs: seen.append(model.get_weights()))


def test_nonfinite_loss_raises_naming_epoch_and_step():
    x, y = blobs(n=12)
    model = _poisoned(at=5)  # 3 steps per epoch: epoch 2, step 2
    seen, rec = _record_weights(model)
    with pytest.raises(FloatingPointError, match=r"epoch 2, step 2"):
        model.fit(x, y, batch_size=4, epochs=3, shuffle=False, verbose=0, callbacks=[rec])
    assert len(seen) == 4  # steps before the bad one
    for a, b in zip(model.get_weights(), seen[-1]):
        np.testing.assert_array_equal(a, b)  # the bad step changed nothing


def test_terminate_on_nan_stops_without_error():
    x, y = blobs(n=12)
    model = _poisoned(at=5)
    seen, rec = _record_weights(model)
    hist = model.fit(x, y, batch_size=4, epochs=3, shuffle=False, verbose=0,
                     callbacks=[rec, callbacks.TerminateOnNaN()])
    assert len(seen) == 4
    assert hist.epoch[0] == 0 and len(hist.epoch) <= 2
    assert all(np.isfinite(v) for v in hist.history["loss"])
    for a, b in zip(model.get_weights(), seen[-1]):
        np.testing.assert_array_equal(a, b)


def test_train_on_batch_nonfinite_raises():
    x, y = blobs(n=4)
    model = _poisoned(at=1)
    w = model.get_weights()
    with pytest.raises(FloatingPointError):
        model.train_on_batch(x, y)
    for a, b in zip(model.get_weights(), w):
        np.testing.assert_array_equal(a, b)


# ------------------------------------------------------ user-written layer
@numba.njit(cache=False)
def _scale_forward(x, w, y):
    n, d = x.shape
    for i in range(n):
        for j in range(d):
            y[i, j] = x[i, j] * w[j]


@numba.njit(cache=False)
def _scale_backward(x, w, dy, dx, dw):
    n, d = x.shape
    for j in range(d):
        dw[j] = 0
    for i in range(n):
        for j in range(d):
            dx[i, j] = dy[i, j] * w[j]
            dw[j] += dy[i, j] * x[i, j]


class Scale(Layer):
    """y = x * w with one learned weight per feature (a user's own layer and kernel)."""

    def build(self, input_shape):
        self.add_param("w", (input_shape[-1],), "ones")
        super().build(input_shape)

    def forward(self, x, training=False):
        self.ensure_built(np.shape(x))
        x = self.check_input(x, ndim=2, last_dim=self.params["w"].shape[0])
        y = self.workspace("y", x.shape)
        _scale_forward(x, self.params["w"], y)
        self._x = x
        return y

    def backward(self, dy):
        dy = np.ascontiguousarray(dy, dtype=self.dtype)
        dx = self.workspace("dx", dy.shape)
        _scale_backward(self._x, self.params["w"], dy, dx, self.grads["w"])  # grads in place
        return dx


def test_custom_layer_gradcheck():
    x = np.random.default_rng(0).standard_normal((3, 5))
    layer = Scale()
    layer.build(x.shape)
    layer.params["w"][...] = np.random.default_rng(1).standard_normal(5)
    gradcheck(layer, x)


def test_custom_layer_trains_in_sequential():
    x, y = blobs(n=64)
    scale = Scale(name="scale")
    model = nb.Sequential([layers.Input((4,)), scale, layers.Dense(8, activation="relu"),
                           layers.Dense(3, activation="softmax")], seed=0)
    model.compile(nb.optimizers.Adam(0.02), "sparse_categorical_crossentropy", metrics=["accuracy"])
    hist = model.fit(x, y, epochs=10, batch_size=16, verbose=0)
    assert hist.history["loss"][-1] < 0.5 * hist.history["loss"][0]
    assert not np.allclose(scale.params["w"], 1.0)  # its weights trained
    assert model.get_weights()[0].shape == (4,)


# ------------------------------------------------------------------ import
def test_import_compiles_nothing_and_imports_no_numba():
    code = ("import time, sys; t = time.perf_counter(); import nbmodel; dt = time.perf_counter() - t; "
            "assert 'numba' not in sys.modules, 'numba imported'; print(dt)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    print(f"import nbmodel took {float(out.stdout):.3f} s")  # measured, not asserted


def test_frozen_layer_keeps_its_weights():
    x, y = blobs(n=20)
    frozen = layers.Dense(5, activation="relu", trainable=False)
    model = nb.Sequential([layers.Input((4,)), frozen, layers.Dense(3, activation="softmax")], seed=0)
    model.compile("adam", "sparse_categorical_crossentropy")
    before = model.get_weights()
    model.fit(x, y, epochs=2, verbose=0)
    after = model.get_weights()
    assert [np.array_equal(a, b) for a, b in zip(before, after)] == [True, True, False, False]
    lines = []
    model.summary(print_fn=lines.append)
    assert "Trainable params: 18" in lines[0] and "Non-trainable params: 25" in lines[0]


def test_compile_argument_errors():
    with pytest.raises(ValueError, match="needs a loss"):
        small_model().compile("adam")
    with pytest.raises(ValueError, match="2 loss_weights given for 1 outputs"):
        small_model().compile("adam", "mse", loss_weights=[1.0, 2.0])
