"""Shared layers (one layer called on several tensors), nested models (a model
used as a layer), Model.from_config, and two Keras habits of Sequential."""
import numpy as np
import pytest
import test_device_seam as seam
from test_device_seam import recording  # noqa: F401 (the fixture of the test-only device)
from test_functional import _unflat
from test_functional import check_model_gradients as check_flat_gradients

import nbmodel as nb
from nbmodel import layers as L


# ------------------------------------------------------------------ helpers
def check_model_gradients(model, x, y):
    """Gradients of the whole model's mse loss (one SGD(1.0) step) against float64
    central differences over every flat weight; returns them per weight array."""
    model.compile(nb.optimizers.SGD(1.0), "mse")
    return _unflat(check_flat_gradients(model, x, y), model.get_weights())


def roundtrip(model, x, tmp_path):
    """save/load and get_config/from_config give the same predictions, bit for bit."""
    expected = model.predict(x)
    path = tmp_path / "m.nbm"
    model.save(path)
    loaded = nb.load_model(path)
    again = type(model).from_config(model.get_config())
    again.set_weights(model.get_weights())
    for other in (loaded, again):
        assert other.get_config() == model.get_config()
        assert other.count_params() == model.count_params()
        got = other.predict(x)
        for e, g in zip(expected if isinstance(expected, list) else [expected],
                        got if isinstance(got, list) else [got]):
            np.testing.assert_array_equal(e, g)
    return loaded


def _tanh_dense(x, w, b):
    return np.tanh(x @ w + b)


# ------------------------------------------------------------ shared layers
def siamese_dense():
    a, b = L.Input((3,), name="a"), L.Input((2,), name="b")
    shared = L.Dense(4, activation="tanh", name="shared")
    ha = shared(a)                                  # fed by a model input: no dx needed
    hb = shared(L.Dense(3, name="pre")(b))         # fed by a layer: dx needed
    out = L.Dense(1, name="head")(L.Concatenate(name="cat")([ha, hb]))
    return nb.Model([a, b], out, seed=0)


def test_shared_dense_forward_weights_and_summary(float64):
    model = siamese_dense()
    rng = np.random.default_rng(0)
    x = [rng.standard_normal((5, 3)), rng.standard_normal((5, 2))]
    shared, pre, head = (model.get_layer(n) for n in ("shared", "pre", "head"))
    assert [layer.name for layer in model.layers] == ["a", "b", "shared", "pre", "cat", "head"]
    assert model.count_params() == (3 * 4 + 4) + (2 * 3 + 3) + (8 + 1)
    assert len(model.get_weights()) == 6
    w, c = shared.get_weights()
    pw, pc = pre.get_weights()
    hw, hc = head.get_weights()
    expected = np.concatenate([_tanh_dense(x[0], w, c), _tanh_dense(x[1] @ pw + pc, w, c)], 1) @ hw + hc
    np.testing.assert_allclose(model.predict(x), expected, rtol=1e-12)
    lines = []
    model.summary(print_fn=lines.append)
    assert sum("shared (Dense)" in line for line in lines) == 1
    assert "Trainable params: 34" in "\n".join(lines)


def test_shared_dense_gradients_are_summed_over_calls(float64):
    model = siamese_dense()
    rng = np.random.default_rng(1)
    x = [rng.standard_normal((4, 3)), rng.standard_normal((4, 2))]
    y = rng.standard_normal((4, 1))
    check_model_gradients(model, x, y)


def test_shared_dense_trains_and_round_trips(tmp_path):
    rng = np.random.default_rng(2)
    x = [rng.standard_normal((64, 3)).astype(np.float32), rng.standard_normal((64, 2)).astype(np.float32)]
    y = (np.tanh(x[0][:, :1]) - 0.5 * x[1][:, 1:]).astype(np.float32)
    model = siamese_dense()
    model.compile(nb.optimizers.Adam(0.03), "mse")
    hist = model.fit(x, y, epochs=40, batch_size=16, verbose=0)
    assert hist.history["loss"][-1] < 0.01 < hist.history["loss"][0]
    loaded = roundtrip(model, x, tmp_path)
    cfg = loaded.get_config()
    assert [e["config"]["name"] for e in cfg["layers"]] == ["shared", "pre", "cat", "head"]
    assert [n["layer"] for n in cfg["nodes"]].count("shared") == 2
    # the optimizer state came along: one more step is the same step
    a, b = model.train_on_batch(x, y), loaded.train_on_batch(x, y)
    assert a == pytest.approx(b, rel=1e-6)


def siamese_embedding():
    q, d = L.Input((3,), dtype="int32", name="q"), L.Input((5,), dtype="int32", name="d")
    emb = L.Embedding(7, 4, name="emb")
    pool = L.GlobalAveragePooling1D(name="pool")
    hq, hd = pool(emb(q)), pool(emb(d))            # two shared layers, sequences of different lengths
    out = L.Dense(1, name="head")(L.Concatenate()([hq, hd]))
    return nb.Model([q, d], out, seed=3)


def test_shared_embedding_forward_and_gradients(float64):
    rng = np.random.default_rng(4)
    x = [rng.integers(0, 7, (4, 3)), rng.integers(0, 7, (4, 5))]
    x[1][:, 0] = x[0][:, 0]  # ids repeated across the calls
    y = rng.standard_normal((4, 1))
    model = siamese_embedding()
    table = model.get_layer("emb").get_weights()[0]
    hw, hc = model.get_layer("head").get_weights()
    expected = np.concatenate([table[x[0]].mean(1), table[x[1]].mean(1)], 1) @ hw + hc
    np.testing.assert_allclose(model.predict(x), expected, rtol=1e-12)
    grads = check_model_gradients(model, x, y)
    ids_q, ids_d = set(x[0].ravel()), set(x[1].ravel())
    both = sorted(ids_q & ids_d)
    assert both and np.abs(grads[0][both]).max() > 1e-4  # rows reached by both calls
    unused = sorted(set(range(7)) - ids_q - ids_d)
    assert not unused or np.all(grads[0][unused] == 0)


def test_shared_embedding_trains_and_round_trips(tmp_path):
    rng = np.random.default_rng(5)
    x = [rng.integers(0, 7, (64, 3)), rng.integers(0, 7, (64, 5))]
    y = ((x[0] < 3).mean(1, keepdims=True) - (x[1] < 3).mean(1, keepdims=True)).astype(np.float32)
    model = siamese_embedding()
    model.compile(nb.optimizers.Adam(0.05), "mse")
    hist = model.fit(x, y, epochs=40, batch_size=16, verbose=0)
    assert hist.history["loss"][-1] < 0.01 < hist.history["loss"][0]
    roundtrip(model, x, tmp_path)


def test_shared_layer_called_three_times_in_a_chain(float64):
    inp = L.Input((3,))
    d = L.Dense(3, activation="tanh", name="d")
    h = d(d(d(inp)))  # the same layer three times in a chain
    model = nb.Model(inp, L.Dense(2, name="out")(h), seed=6)
    rng = np.random.default_rng(6)
    x, y = rng.standard_normal((4, 3)), rng.standard_normal((4, 2))
    w, c = model.get_layer("d").get_weights()
    expected = _tanh_dense(_tanh_dense(_tanh_dense(x, w, c), w, c), w, c)
    ow, oc = model.get_layer("out").get_weights()
    np.testing.assert_allclose(model.predict(x), expected @ ow + oc, rtol=1e-12)
    check_model_gradients(model, x, y)


def test_shared_bidirectional_lstm_on_sequences_of_different_lengths(float64):
    """A composite layer with recurrent caches, shared over lengths 3 and 4."""
    a, b = L.Input((3, 2)), L.Input((4, 2))
    enc = L.Bidirectional(L.LSTM(2), name="enc")
    model = nb.Model([a, b], L.Dense(1, name="head")(L.Concatenate()([enc(a), enc(b)])), seed=16)
    rng = np.random.default_rng(16)
    x = [rng.standard_normal((3, 3, 2)), rng.standard_normal((3, 4, 2))]
    check_model_gradients(model, x, rng.standard_normal((3, 1)))


@pytest.mark.usefixtures("recording")
def test_shared_and_nested_models_step_through_a_device(float64):
    """Call states, gradient sums and nested models allocate through the device
    and do their array math in its kernels (the test-only recording device),
    also after a step on the cpu."""
    def build():
        t_in = L.Input((3,))
        d = L.Dense(3, activation="tanh", name="twice")
        tower = nb.Model(t_in, L.Dense(2, name="proj")(d(d(t_in))), name="tower")
        a, b = L.Input((3,)), L.Input((3,))
        model = nb.Model([a, b], L.Dense(1, name="head")(L.Concatenate()([tower(a), tower(b)])), seed=17)
        model.compile(nb.optimizers.Adam(0.01), "mse")
        return model

    rng = np.random.default_rng(17)
    x, y = [rng.standard_normal((4, 3)), rng.standard_normal((4, 3))], rng.standard_normal((4, 1))
    device = seam._DEVICE
    cpu, model = build(), build()
    assert model.train_on_batch(x, y) == cpu.train_on_batch(x, y)
    model.to(seam.NAME)  # drops the calls' cpu caches and workspaces
    device.reset()
    for _ in range(2):
        assert model.train_on_batch(x, y) == cpu.train_on_batch(x, y)
    assert device.host_math == [], f"array math outside kernels: {sorted(set(device.host_math))}"
    seam._assert_on_device(model, device)
    for a, b in zip(model.get_weights(), cpu.get_weights()):
        np.testing.assert_array_equal(a, b)


# ------------------------------------------------------------ nested models
def make_inner(name="inner"):
    return nb.Sequential([L.Input((3,)), L.Dense(4, activation="tanh", name=f"{name}_1"),
                          L.Dense(2, name=f"{name}_2")], name=name, seed=7)


def nested_functional():
    inner = make_inner()
    inp = L.Input((2,), name="x")
    h = L.Dense(3, activation="tanh", name="pre")(inp)   # the inner model must pass dx back
    out = L.Dense(1, name="head")(inner(h))
    return nb.Model(inp, out, seed=8), inner


def test_nested_model_is_a_layer_with_its_weights_in_the_parent(float64):
    model, inner = nested_functional()
    assert model.layers[2] is inner and model.get_layer("inner") is inner
    assert model.count_params() == 9 + (12 + 4) + (8 + 2) + 3
    assert len(model.get_weights()) == 8
    rng = np.random.default_rng(9)
    x = rng.standard_normal((4, 2))
    pw, pc, w1, c1, w2, c2, hw, hc = model.get_weights()
    expected = (_tanh_dense(_tanh_dense(x, pw, pc), w1, c1) @ w2 + c2) @ hw + hc
    np.testing.assert_allclose(model.predict(x), expected, rtol=1e-12)
    lines = []
    model.summary(print_fn=lines.append)
    text = "\n".join(lines)
    assert "inner (Sequential)" in text and "(None, 2)" in text and "Trainable params: 38" in text


def test_nested_model_gradients(float64):
    model, _ = nested_functional()
    rng = np.random.default_rng(10)
    check_model_gradients(model, rng.standard_normal((4, 2)), rng.standard_normal((4, 1)))


def test_nested_recurrent_model_passes_input_gradients(float64):
    """The outer model needs dx of the nested model's input: its LSTM computes it."""
    inner = nb.Sequential([L.Input((4, 2)), L.LSTM(2, name="rnn")], name="rnn_model")
    inp = L.Input((4, 3))
    model = nb.Model(inp, L.Dense(1, name="head")(inner(L.Dense(2, name="pre")(inp))), seed=22)
    rng = np.random.default_rng(22)
    grads = check_model_gradients(model, rng.standard_normal((3, 4, 3)), rng.standard_normal((3, 1)))
    assert np.abs(grads[0]).max() > 1e-3  # pre/kernel, reached through the LSTM


def test_sequential_of_a_model_gradients_and_round_trip(float64, tmp_path):
    inner = make_inner()
    model = nb.Sequential([inner, L.Dense(1, name="head")], seed=11)
    assert model.layers[0] is inner and model.inputs[0].shape == (None, 3)
    rng = np.random.default_rng(11)
    x, y = rng.standard_normal((4, 3)), rng.standard_normal((4, 1))
    check_model_gradients(model, x, y)
    loaded = roundtrip(model, x, tmp_path)
    assert isinstance(loaded.layers[0], nb.Sequential)


def test_shared_nested_model_with_a_shared_layer_inside(float64):
    """A siamese tower (a model) called twice, itself calling one layer twice."""
    t_in = L.Input((3,))
    d = L.Dense(3, activation="tanh", name="twice")
    tower = nb.Model(t_in, L.Dense(2, name="proj")(d(d(t_in))), name="tower")
    a, b = L.Input((3,)), L.Input((3,))
    model = nb.Model([a, b], L.Dense(1, name="head")(L.Concatenate()([tower(a), tower(b)])), seed=12)
    assert len(model.get_weights()) == 6
    rng = np.random.default_rng(12)
    x = [rng.standard_normal((4, 3)), rng.standard_normal((4, 3))]
    w, c, pw, pc, hw, hc = model.get_weights()

    def t(v):
        return _tanh_dense(_tanh_dense(v, w, c), w, c) @ pw + pc

    np.testing.assert_allclose(model.predict(x), np.concatenate([t(x[0]), t(x[1])], 1) @ hw + hc, rtol=1e-12)
    check_model_gradients(model, x, rng.standard_normal((4, 1)))


def test_nested_model_with_two_inputs_and_an_unused_output(float64, tmp_path):
    p, q = L.Input((2,), name="p"), L.Input((3,), name="q")
    inner = nb.Model([p, q], [L.Dense(2, activation="tanh", name="both")(L.Concatenate()([p, q])),
                              L.Dense(1, name="side")(p)], name="two_two")
    a, b = L.Input((2,)), L.Input((2,))
    main, _ = inner([a, L.Dense(3, name="pre")(b)])   # the side output feeds nothing
    model = nb.Model([a, b], L.Dense(1, name="head")(main), seed=19)
    rng = np.random.default_rng(19)
    x, y = [rng.standard_normal((4, 2)), rng.standard_normal((4, 2))], rng.standard_normal((4, 1))
    grads = check_model_gradients(model, x, y)
    side = [i for i, k in enumerate(k for layer in model.layers for k in layer.params) if k.startswith("side/")]
    assert side == [4, 5] and all(np.all(grads[i] == 0) for i in side)  # no gradient reaches it
    roundtrip(model, x, tmp_path)

    # shared: the side output of one call is used, the other's is not
    main2, _ = inner([b, L.Dense(3, name="pre2")(a)])
    main1, side1 = inner([a, L.Dense(3, name="pre3")(b)])
    model2 = nb.Model([a, b], L.Dense(1, name="head2")(L.Concatenate()([main2, main1, side1])), seed=20)
    grads = check_model_gradients(model2, x, y)
    keys = [k for layer in model2.layers for k in layer.params]
    assert np.abs(grads[keys.index("side/kernel")]).max() > 1e-3  # reached by one call only


def test_a_seeded_parent_draws_a_fresh_nested_model_and_keeps_a_trained_one(tmp_path):
    """Model(seed=...) fixes the weights of a nested model built for it, but a
    compiled (trained) or loaded one keeps its weights: transfer learning."""
    def build(base):
        inp = L.Input((3,))
        return nb.Model(inp, L.Dense(1, name="top")(base(inp)), seed=23)

    def fresh():
        return nb.Sequential([L.Input((3,)), L.Dense(2, name="b1")], name="base")

    np.testing.assert_array_equal(build(fresh()).get_weights()[0], build(fresh()).get_weights()[0])
    base = fresh()
    base.compile(nb.optimizers.Adam(0.1), "mse")
    base.fit(np.ones((4, 3), np.float32), np.ones((4, 2), np.float32), epochs=2, verbose=0)
    trained = base.get_weights()
    base.save(tmp_path / "base.nbm")
    for b in (base, nb.load_model(tmp_path / "base.nbm")):
        build(b)
        for w, t in zip(b.get_weights(), trained):
            np.testing.assert_array_equal(w, t)


def test_nested_model_trains_freezes_and_round_trips(tmp_path):
    rng = np.random.default_rng(13)
    x = rng.standard_normal((64, 2)).astype(np.float32)
    y = np.sin(x[:, :1] * 2 + x[:, 1:]).astype(np.float32)
    model, inner = nested_functional()
    model.compile(nb.optimizers.Adam(0.03), "mse")
    hist = model.fit(x, y, epochs=60, batch_size=16, verbose=0)
    assert hist.history["loss"][-1] < 0.02 < hist.history["loss"][0]
    roundtrip(model, x, tmp_path)

    inner.trainable = False
    assert not any(layer.trainable for layer in inner.layers)
    model.compile(nb.optimizers.Adam(0.03), "mse")
    frozen, head = inner.get_weights(), model.get_layer("head").get_weights()
    model.fit(x, y, epochs=1, batch_size=16, verbose=0)
    for a, b in zip(frozen, inner.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(head[0], model.get_layer("head").get_weights()[0])
    lines = []
    model.summary(print_fn=lines.append)
    assert "Trainable params: 12" in "\n".join(lines)  # pre (9) + head (3)
    loaded = roundtrip(model, x, tmp_path)
    assert loaded.get_layer("inner").trainable is False


def test_gradcheck_takes_a_model_as_a_layer(float64):
    """Input gradients too: a model is a layer, so nb.testing.gradcheck checks it whole."""
    rng = np.random.default_rng(21)
    err = nb.testing.gradcheck(siamese_dense(), (rng.standard_normal((3, 3)), rng.standard_normal((3, 2))))
    assert err < 1e-5
    model, _ = nested_functional()
    assert nb.testing.gradcheck(model, rng.standard_normal((3, 2))) < 1e-5


# ------------------------------------------------------------- from_config
def test_from_config_equals_model_from_config():
    model, _ = nested_functional()
    cfg = model.get_config()
    a = nb.Model.from_config(cfg)
    b = nb.io.model_from_config(cfg)
    assert a.get_config() == b.get_config() == cfg
    seq = nb.Sequential([L.Input((3,)), L.Dense(2, name="only")], name="seq_cfg")
    again = nb.Sequential.from_config(seq.get_config())
    assert isinstance(again, nb.Sequential) and again.get_config() == seq.get_config()


def test_format_1_configs_still_load():
    cfg = {"class": "Model", "name": "old", "seed": None,
           "inputs": [{"shape": [3], "dtype": "float32", "name": "in_old"}],
           "nodes": [{"layer": {"class": "Dense", "config": {"name": "d_old", "trainable": True, "units": 2}},
                      "inputs": [["in_old", 0]], "nested": False, "kwargs": {}}],
           "outputs": [["d_old", 0]], "inputs_nested": False, "outputs_nested": False}
    model = nb.Model.from_config(cfg)
    assert model.predict(np.zeros((2, 3), np.float32)).shape == (2, 2)


# ------------------------------------------------------------- Keras habits
def test_sequential_input_then_embedding_takes_integer_ids(tmp_path):
    model = nb.Sequential([L.Input((5,)), L.Embedding(10, 4, name="e"), L.GlobalAveragePooling1D(),
                           L.Dense(1)], seed=14)
    assert model.inputs[0].dtype == np.int64  # made an id input: only an Embedding reads it
    ids = np.random.default_rng(14).integers(0, 10, (6, 5))
    p = model.predict(ids)
    table = model.get_layer("e").get_weights()[0]
    np.testing.assert_allclose(p, table[ids].mean(1) @ model.get_weights()[1] + model.get_weights()[2],
                               rtol=1e-5)
    np.testing.assert_array_equal(model.predict(ids.astype(np.float32)), p)  # whole-number floats are cast
    with pytest.raises(ValueError, match="integer ids"):
        model.predict(ids + 0.5)
    model.compile("adam", "mse")
    model.fit(ids, np.zeros((6, 1), np.float32), epochs=1, verbose=0)
    roundtrip(model, ids, tmp_path)


def test_explicit_float_input_is_left_alone():
    inp = L.Input((5,), dtype="float32")
    model = nb.Model(inp, L.Embedding(10, 2)(inp))
    assert model.inputs[0].dtype == np.float32
    with pytest.raises(TypeError, match="integer token ids"):
        model.predict(np.zeros((2, 5), np.float32))


def test_sequential_without_input_builds_on_first_use():
    x = np.random.default_rng(15).standard_normal((4, 3)).astype(np.float32)
    for first_use in ("predict", "call", "evaluate"):
        model = nb.Sequential([L.Dense(3, activation="relu"), L.Dense(1)], seed=15)
        assert not model.built
        if first_use == "predict":
            out = model.predict(x)
        elif first_use == "call":
            out = model(x)
        else:
            model.compile("sgd", "mse")
            out = model.evaluate(x, np.zeros((4, 1)))
            assert np.isfinite(out)
            out = model.predict(x)
        assert out.shape == (4, 1) and model.built
    ids = np.array([[1, 2], [3, 0]])
    emb = nb.Sequential([L.Embedding(4, 2), L.Flatten()])
    assert emb.predict(ids).shape == (2, 4)


# -------------------------------------------------------------------- errors
def test_bad_use_names_the_layer():
    shared = L.Dense(2, name="shared_bad")
    shared(L.Input((3,)))
    with pytest.raises(ValueError, match="shared_bad.*incompatible shape"):
        shared(L.Input((4,)))
    a = L.Input((3,))
    with pytest.raises(ValueError, match="named 'twin'"):
        nb.Model(a, L.Dense(1, name="twin")(L.Dense(2, name="twin")(a)))
    inner = make_inner("inner_bad")
    with pytest.raises(ValueError, match="inner_bad.*incompatible shape"):
        inner(L.Input((4,)))
    with pytest.raises(ValueError, match="inner_bad_1.*used both"):
        nb.Model(a, L.Concatenate()([inner(a), inner.get_layer("inner_bad_1")(a)]))


def test_data_parallel_training_of_shared_and_nested_models(float64):
    """Workers rebuild the model from its config: same training as one process
    (a shared tower with dropout, a nested Sequential)."""
    from parallel._models import assert_same_training

    def build():
        t_in = L.Input((3,))
        tower = nb.Model(t_in, L.Dense(2, name="proj")(L.Dropout(0.3, seed=1)(L.Dense(4, name="d")(t_in))),
                         name="tower")
        head = nb.Sequential([L.Dense(3, activation="tanh", name="h1"), L.Dense(1, name="h2")], name="head")
        a, b = L.Input((3,)), L.Input((3,))
        model = nb.Model([a, b], head(L.Concatenate()([tower(a), tower(b)])), seed=18)
        model.compile(nb.optimizers.Adam(0.01), "mse")
        return model

    rng = np.random.default_rng(18)
    x, y = [rng.standard_normal((20, 3)), rng.standard_normal((20, 3))], rng.standard_normal((20, 1))
    ref, model = build(), build()
    ref_hist = ref.fit(x, y, batch_size=8, epochs=2, verbose=0)
    hist = model.fit(x, y, batch_size=8, epochs=2, verbose=0, workers=2)
    assert_same_training(ref, ref_hist, model, hist)
