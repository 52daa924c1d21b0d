"""SimpleRNN / LSTM / GRU Keras 3 options: dropout and recurrent_dropout (fixed masks
against the float64 reference and finite differences, mask statistics, training),
stateful with reset_states, unroll, config, save/load, errors."""
import numpy as np
import pytest

import nbmodel as nb
from nbmodel import layers
from nbmodel.kernels.reference import recurrent as ref
from nbmodel.testing import LayerCase

B, T, D, U = 2, 3, 3, 4
GATES = {"SimpleRNN": 1, "LSTM": 4, "GRU": 3}
REFS = {"SimpleRNN": ref.simple_rnn_forward, "LSTM": ref.lstm_forward, "GRU": ref.gru_forward}
RTOL = {"float32": 1e-5, "float64": 1e-12}
ATOL = {"float32": 2e-6, "float64": 1e-12}
UNIFORM_SEEDS = {"x": 100, "h": 101}


def _uniform(key, shape):
    """The fixed draws of the test layers (float32 values: the same in both dtypes)."""
    return np.random.default_rng(UNIFORM_SEEDS[key]).random(shape).astype(np.float32).astype(np.float64)


def _fixed(cls):
    """``cls`` with its dropout draws fixed (the same masks at every call)."""
    class Fixed(cls):
        def _uniforms(self, key, shape):
            u = self.workspace(("uniform", key), shape)
            self.device.assign(u, _uniform(key, shape).astype(self.dtype))
            return u
    Fixed.__name__ = cls.__name__
    return Fixed


def _ref_masks(kind, rate_x, rate_h, batch=B, d=D):
    """The masks the layer derives from the fixed draws (Keras' rule for their number)."""
    n_mh = GATES[kind] if rate_h else 0
    n_mx = 0 if not rate_x else (GATES[kind] if rate_h else 1)
    mx = (_uniform("x", (batch, n_mx, d)) >= rate_x) / (1 - rate_x) if n_mx else None
    mh = (_uniform("h", (batch, n_mh, U)) >= rate_h) / (1 - rate_h) if n_mh else None
    return mx, mh


def dropout_case(kind, rate_x, rate_h, seq=True, backwards=False, init=None, **layer_kw):
    def make(dt):
        layer = _fixed(getattr(layers, kind))(U, return_sequences=seq, go_backwards=backwards, dropout=rate_x,
                                               recurrent_dropout=rate_h, dtype=dt, seed=0, **layer_kw)
        layer.build((None, T, D))
        rng = np.random.default_rng(1)
        layer.set_weights([0.5 * rng.standard_normal(w.shape) for w in layer.get_weights()])
        return layer

    def reference(w, x):
        mx, mh = _ref_masks(kind, rate_x, rate_h)
        ys, _ = REFS[kind](x, w["kernel"], w["recurrent_kernel"], w["bias"], *(init or ()), go_backwards=backwards,
                           mask_x=mx, mask_h=mh, **layer_kw)
        return ys if seq else ys[:, -1]

    label = f"{kind}-dropout{rate_x}-recurrent{rate_h}" + ("-last" if not seq else "") + \
        ("-backwards" if backwards else "") + ("-initial" if init else "") + \
        "".join(f"-{k}={v}" for k, v in layer_kw.items())
    return LayerCase(label, make, inputs=lambda r: r.standard_normal((B, T, D)), reference=reference,
                     forward_kwargs={} if init is None else {"initial_state": init}, training=True,
                     rtol=RTOL, atol=ATOL)


def _init(kind, seed=9):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((B, U)) for _ in range(2 if kind == "LSTM" else 1)]


CASES = []
for _kind in ("SimpleRNN", "LSTM", "GRU"):
    CASES += [dropout_case(_kind, 0.25, 0.0),
              dropout_case(_kind, 0.0, 0.25, seq=False),
              dropout_case(_kind, 0.25, 0.5, backwards=True, init=_init(_kind))]
# GRU reset_after=False (Keras 2 / TF1; PyTorch has no such GRU: the float64 reference is the oracle)
CASES += [dropout_case("GRU", 0.0, 0.0, reset_after=False),
          dropout_case("GRU", 0.0, 0.0, seq=False, backwards=True, init=_init("GRU"), reset_after=False),
          dropout_case("GRU", 0.25, 0.0, seq=False, reset_after=False),
          dropout_case("GRU", 0.25, 0.5, backwards=True, init=_init("GRU"), reset_after=False),
          dropout_case("GRU", 0.0, 0.5, reset_after=False)]


@pytest.mark.parametrize("case", CASES, ids=str)
def test_dropout_layer_case(case, device):
    """Forward against the reference with the same fixed masks (float32, float64) and
    float64 finite differences of every gradient with those masks."""
    case.check(device)


def test_fixed_masks_change_the_output():
    """The cases above are not vacuous: the masks change the output."""
    x = np.random.default_rng(0).standard_normal((B, T, D))
    layer = _fixed(layers.LSTM)(U, return_sequences=True, dropout=0.25, recurrent_dropout=0.5, dtype="float64",
                                seed=0)
    y_train = np.array(layer.forward(x, training=True))
    y_infer = np.array(layer.forward(x, training=False))
    assert np.abs(y_train - y_infer).max() > 1e-3


@pytest.mark.parametrize("kind", ["SimpleRNN", "LSTM", "GRU"])
def test_masks_statistics_and_fixed_over_time(kind):
    """Keras 3: masks of 0 and 1/(1-rate) at about the rate, one per gate with recurrent
    dropout; the same mask at every step (the reference run with the layer's own masks over
    several steps reproduces the output); new masks at every call; none in inference."""
    rx, rh = 0.3, 0.2
    batch, steps = 300, 4
    x = np.random.default_rng(3).standard_normal((batch, steps, D))
    layer = getattr(layers, kind)(U, return_sequences=True, dropout=rx, recurrent_dropout=rh, dtype="float64",
                                  seed=5)
    y = np.array(layer.forward(x, training=True))
    mask_x, n_mx, mask_h, n_mh, _ = layer._drop
    assert (n_mx, n_mh) == (GATES[kind], GATES[kind])
    mx, mh = np.array(mask_x), np.array(mask_h)
    assert mx.shape == (batch, GATES[kind], D) and mh.shape == (batch, GATES[kind], U)
    for m, r in ((mx, rx), (mh, rh)):
        assert set(np.unique(m)) <= {0.0, 1 / (1 - r)}
        assert abs((m == 0).mean() - r) < 4 * np.sqrt(r * (1 - r) / m.size)
    w = layer.params
    want, _ = REFS[kind](x, w["kernel"], w["recurrent_kernel"], w["bias"], mask_x=mx, mask_h=mh)
    np.testing.assert_allclose(y, want, rtol=1e-12, atol=1e-12)
    layer.forward(x, training=True)
    assert not np.array_equal(np.array(layer._drop[0]), mx)
    # dropout only: one input mask for every gate (Keras' default implementation 2)
    only = getattr(layers, kind)(U, dropout=rx, seed=5)
    only.forward(x.astype(np.float32), training=True)
    assert only._drop[1] == 1 and only._drop[3] == 0 and np.array(only._drop[0]).shape == (batch, 1, D)


def test_no_draws_at_rate_zero_or_in_inference():
    x = np.random.default_rng(3).standard_normal((B, T, D)).astype(np.float32)
    for kw, training in (({}, True), ({"dropout": 0.5, "recurrent_dropout": 0.5}, False)):
        layer = layers.GRU(U, seed=1, **kw)
        layer.build(x.shape)
        before = layer.rng.bit_generator.state
        layer.forward(x, training=training)
        assert layer.rng.bit_generator.state == before
        assert layer._drop[1] == 0 and layer._drop[3] == 0


def test_seeded_dropout_is_reproducible():
    x = np.random.default_rng(3).standard_normal((B, T, D)).astype(np.float32)
    a, b = (layers.LSTM(U, dropout=0.3, recurrent_dropout=0.3, seed=7) for _ in range(2))
    np.testing.assert_array_equal(a.forward(x, training=True), b.forward(x, training=True))


def test_training_with_dropout_runs_and_is_reproducible():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((32, 5, D)).astype(np.float32)
    y = x.sum(axis=(1, 2))[:, None].astype(np.float32)

    def run():
        model = nb.Sequential([layers.Input((5, D)),
                               layers.Bidirectional(layers.LSTM(6, dropout=0.2, recurrent_dropout=0.2)),
                               layers.Dense(1)],
                              seed=3)
        model.compile(optimizer="adam", loss="mse")
        return model.fit(x, y, batch_size=8, epochs=3, verbose=0).history["loss"]

    h1, h2 = run(), run()
    assert np.all(np.isfinite(h1)) and h1 == h2
    assert h1[-1] < h1[0]


# ------------------------------------------------------------------ stateful
def test_stateful_windows_equal_one_run():
    """A long series split into consecutive windows gives the outputs of one unsplit run;
    reset_states starts again from zeros."""
    x = np.random.default_rng(4).standard_normal((B, 9, D))
    full = layers.LSTM(U, return_sequences=True, dtype="float64", seed=0)
    want = np.array(full.forward(x))
    st = layers.LSTM(U, return_sequences=True, stateful=True, dtype="float64", seed=0)
    got = np.concatenate([np.array(st.forward(x[:, i:i + 3])) for i in (0, 3, 6)], axis=1)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    st.reset_states()
    np.testing.assert_allclose(np.array(st.forward(x[:, :3])), want[:, :3], rtol=1e-12, atol=1e-12)
    st.reset_state()
    np.testing.assert_allclose(np.array(st.forward(x[:, :3])), want[:, :3], rtol=1e-12, atol=1e-12)


def test_stateful_model_predict_carries_and_truncates_gradients():
    x = np.random.default_rng(5).standard_normal((B, 6, D)).astype(np.float32)
    model = nb.Sequential([layers.Input((3, D), batch_size=B),
                           layers.GRU(U, return_sequences=True, stateful=True, name="g")], seed=0)
    model.compile(optimizer="sgd", loss="mse")
    gru = model.layers[-1]
    first = model.predict(x[:, :3], batch_size=B)
    second = model.predict(x[:, 3:], batch_size=B)
    ref_layer = layers.GRU(U, return_sequences=True, dtype="float64")
    ref_layer.build((B, 6, D))
    ref_layer.set_weights(gru.get_weights())
    want = np.array(ref_layer.forward(x.astype(np.float64)))
    np.testing.assert_allclose(np.concatenate([first, second], 1), want, rtol=1e-5, atol=1e-5)
    # truncated BPTT: a carried state is no input of backward
    gru.input_grad_needed = True  # the model's first layer skips dx
    y = gru.forward(x[:, :3], training=True)
    dx = gru.backward(np.ones_like(y))
    assert isinstance(dx, np.ndarray) and dx.shape == (B, 3, D)
    assert np.isfinite(model.train_on_batch(x[:, :3], np.zeros((B, 3, U), np.float32)))
    with pytest.raises(ValueError, match="^g: stateful layer built for batch size 2, got a batch of 4"):
        model.predict(np.concatenate([x, x])[:, :3], batch_size=4)


@pytest.mark.parametrize("kind", ["SimpleRNN", "LSTM", "GRU"])
def test_stateful_gradients_are_truncated_bptt(kind):
    """Backward of a stateful call: the weight and input gradients of a call that starts
    from the carried states as constants (Keras: no gradient into the previous batch)."""
    x = np.random.default_rng(6).standard_normal((B, 6, D))
    st = getattr(layers, kind)(U, return_sequences=True, stateful=True, dtype="float64", seed=0)
    st.forward(x[:, :3], training=True)
    carried = [np.array(c) for c in st._carry]
    y = st.forward(x[:, 3:], training=True)
    dy = np.random.default_rng(7).standard_normal(y.shape)
    dx = np.array(st.backward(dy))
    grads = {k: np.array(v) for k, v in st.grads.items()}
    plain = getattr(layers, kind)(U, return_sequences=True, dtype="float64", seed=0)
    plain.build((B, 3, D))
    plain.set_weights(st.get_weights())
    plain.forward(x[:, 3:], training=True, initial_state=carried)
    want_dx, _ = plain.backward(dy)
    np.testing.assert_allclose(dx, want_dx, rtol=1e-12, atol=1e-14)
    for k, g in plain.grads.items():
        np.testing.assert_allclose(grads[k], g, rtol=1e-12, atol=1e-14)
    assert np.abs(carried[0]).max() > 0.05  # the carried state is not zeros


def test_stateful_needs_fixed_batch():
    with pytest.raises(ValueError, match="^st: stateful=True needs a fixed batch size"):
        layers.LSTM(U, stateful=True, name="st").build((None, T, D))


def test_bidirectional_stateful_reset():
    x = np.random.default_rng(6).standard_normal((B, T, D))
    bi = layers.Bidirectional(layers.SimpleRNN(U, stateful=True), dtype="float64", seed=0)
    y0 = np.array(bi.forward(x))
    y1 = np.array(bi.forward(x))
    assert not np.allclose(y0, y1)
    bi.reset_states()
    np.testing.assert_allclose(np.array(bi.forward(x)), y0, rtol=1e-12)


# ------------------------------------------------------------ config, errors
@pytest.mark.parametrize("kind", ["SimpleRNN", "LSTM", "GRU"])
def test_config_roundtrip_options(kind):
    layer = getattr(layers, kind)(5, dropout=0.1, recurrent_dropout=0.2, stateful=True, unroll=True, seed=3)
    clone = getattr(layers, kind).from_config(layer.get_config())
    for k in ("dropout", "recurrent_dropout", "stateful", "unroll", "seed"):
        assert getattr(clone, k) == getattr(layer, k)


def test_save_load_with_options(tmp_path):
    x = np.random.default_rng(7).standard_normal((4, T, D)).astype(np.float32)
    model = nb.Sequential([layers.Input((T, D)), layers.LSTM(U, dropout=0.2, recurrent_dropout=0.3, unroll=True),
                           layers.Dense(2)], seed=0)
    model.compile(optimizer="adam", loss="mse")
    model.fit(x, np.zeros((4, 2), np.float32), batch_size=2, epochs=1, verbose=0)
    model.save(tmp_path / "m.nbm")
    loaded = nb.load_model(tmp_path / "m.nbm")
    lstm = loaded.layers[0] if isinstance(loaded.layers[0], layers.LSTM) else loaded.layers[1]
    assert (lstm.dropout, lstm.recurrent_dropout, lstm.unroll) == (0.2, 0.3, True)
    np.testing.assert_allclose(loaded.predict(x), model.predict(x), rtol=1e-6)


@pytest.mark.parametrize("kw", [{"dropout": -0.1}, {"dropout": 1.0}, {"recurrent_dropout": 1.5},
                                {"recurrent_dropout": "a"}])
def test_bad_rates(kw):
    with pytest.raises(ValueError, match=f"^rnn_x: {list(kw)[0]} must be"):
        layers.GRU(U, name="rnn_x", **kw)


def test_unroll_changes_nothing():
    x = np.random.default_rng(8).standard_normal((B, T, D))
    a = layers.GRU(U, unroll=True, dtype="float64", seed=0)
    b = layers.GRU(U, unroll=False, dtype="float64", seed=0)
    np.testing.assert_array_equal(np.array(a.forward(x)), np.array(b.forward(x)))


# ------------------------------------------------------- GRU reset_after=False
def test_gru_reset_before_weights_and_keras_arrays():
    """Keras 2 layout: bias (3u,); Keras arrays load through set_weights; the formulation
    differs from reset_after=True for the same weights."""
    layer = layers.GRU(U, reset_after=False, seed=0)
    layer.build((None, T, D))
    assert [w.shape for w in layer.get_weights()] == [(D, 3 * U), (U, 3 * U), (3 * U,)]
    rng = np.random.default_rng(2)
    keras_w = [0.5 * rng.standard_normal(s) for s in ((D, 3 * U), (U, 3 * U), (3 * U,))]
    layer.set_weights([w.astype(np.float32) for w in keras_w])
    x = rng.standard_normal((B, T, D))
    want, _ = ref.gru_forward(x, *keras_w, reset_after=False)
    np.testing.assert_allclose(layer.forward(x.astype(np.float32)), want[:, -1], rtol=1e-5, atol=2e-6)
    after, _ = ref.gru_forward(x, keras_w[0], keras_w[1], np.stack([keras_w[2], np.zeros(3 * U)]))
    assert np.abs(after[:, -1] - want[:, -1]).max() > 1e-3
    with pytest.raises(ValueError):
        layer.set_weights([keras_w[0], keras_w[1], np.zeros((2, 3 * U))])
    clone = layers.GRU.from_config(layer.get_config())
    assert clone.reset_after is False


def test_gru_reset_before_trains_and_saves(tmp_path):
    x = np.random.default_rng(7).standard_normal((8, T, D)).astype(np.float32)
    y = x.sum(axis=(1, 2))[:, None]
    model = nb.Sequential([layers.Input((T, D)), layers.GRU(U, reset_after=False), layers.Dense(1)], seed=0)
    model.compile(optimizer="adam", loss="mse")
    h = model.fit(x, y, batch_size=4, epochs=3, verbose=0).history["loss"]
    assert np.all(np.isfinite(h)) and h[-1] < h[0]
    model.save(tmp_path / "g.nbm")
    loaded = nb.load_model(tmp_path / "g.nbm")
    np.testing.assert_allclose(loaded.predict(x), model.predict(x), rtol=1e-6)


def test_dropout_masks_resume_exactly(tmp_path):
    """The masks come from the layer's generator, which the model's backup saves: a fit
    resumed after a crash ends with the weights of an uninterrupted one."""
    from nbmodel import callbacks as cb

    rng = np.random.default_rng(0)
    x = rng.standard_normal((16, T, D)).astype(np.float32)
    y = rng.standard_normal((16, 1)).astype(np.float32)

    class Crash(cb.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            if epoch == 2:
                raise RuntimeError("crash")

    def run(callbacks):
        m = nb.Sequential([layers.Input((T, D)), layers.GRU(U, dropout=0.3, recurrent_dropout=0.3),
                           layers.Dense(1)], seed=3)
        m.compile(optimizer="adam", loss="mse")
        m.fit(x, y, epochs=4, batch_size=4, verbose=0, callbacks=callbacks)
        return m

    reference = run([])
    with pytest.raises(RuntimeError, match="crash"):
        run([cb.BackupAndRestore(tmp_path / "b"), Crash()])
    resumed = run([cb.BackupAndRestore(tmp_path / "b")])
    for a, b in zip(resumed.get_weights(), reference.get_weights()):
        np.testing.assert_array_equal(a, b)
