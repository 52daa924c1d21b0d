"""Regularizers and constraints (Keras 3): kernels against float64 NumPy, the
penalty in the loss and its gradient (finite differences of the whole model's
loss), constraints after every step, config and save/load, bad arguments."""
from __future__ import annotations

import numpy as np
import pytest

import nbmodel as nb
from nbmodel import constraints, regularizers
from nbmodel import layers as L
from nbmodel.backend import get_device
from nbmodel.callbacks import LambdaCallback
from nbmodel.kernels.reference import optim as ref

CPU = get_device("cpu")


def _k():
    return CPU.kernels("optim")


# ------------------------------------------------------------------ kernels
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_penalty_and_gradient_kernels_match_reference(dtype):
    w = np.random.default_rng(0).normal(size=(5, 7)).astype(dtype)
    w[0, 0] = 0.0  # sign(0) = 0
    assert _k().l1l2_penalty(w, 0.03, 0.2) == pytest.approx(ref.l1l2_penalty(w, 0.03, 0.2), rel=1e-6)
    g = np.random.default_rng(1).normal(size=w.shape).astype(dtype)
    expect = ref.add_l1l2_grad(w, 0.03, 0.2, g)
    _k().add_l1l2_grad(w, 0.03, 0.2, g)
    assert g.dtype == dtype
    np.testing.assert_allclose(g, expect, rtol=1e-6, atol=1e-6)
    assert _k().l1l2_penalty(w[:0], 1.0, 1.0) == 0.0


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_constraint_kernels_match_reference(dtype):
    w = np.random.default_rng(2).normal(size=(2, 6, 3)).astype(dtype) * 3
    for lo, hi, rate in ((0.0, 2.0, 1.0), (1.0, 1.0, 1.0), (0.5, 1.5, 0.3)):
        a = w.copy()
        _k().clip_norms(a, lo, hi, rate, 1e-7)
        np.testing.assert_allclose(a, ref.clip_norms(w, lo, hi, rate, 1e-7), rtol=1e-5, atol=1e-6)
    a = w.copy()
    _k().non_neg(a)
    np.testing.assert_array_equal(a, ref.non_neg(w))


def test_regularizer_objects_are_keras_ones():
    assert regularizers.L1().l1 == 0.01 and regularizers.L1().l2 == 0.0
    assert regularizers.L2().l2 == 0.01 and regularizers.L2().l1 == 0.0
    assert (regularizers.L1L2().l1, regularizers.L1L2().l2) == (0.0, 0.0)  # Keras 3 defaults
    assert isinstance(regularizers.get("l1"), regularizers.L1)
    assert isinstance(regularizers.get("L2"), regularizers.L2)
    assert isinstance(regularizers.get("l1_l2"), regularizers.L1L2)
    r = regularizers.L1L2(l1=0.1, l2=0.3)
    assert regularizers.get(r) is r
    back = regularizers.get(regularizers.serialize(r))
    assert type(back) is regularizers.L1L2 and back.get_config() == {"l1": 0.1, "l2": 0.3}
    assert regularizers.L2.from_config({"l2": 0.5}).l2 == 0.5
    x = np.array([[1.0, -2.0], [0.0, 3.0]])
    assert r(x) == pytest.approx(0.1 * 6 + 0.3 * 14)
    assert r.penalty(CPU, x.astype("float32")) == pytest.approx(r(x))


def test_constraint_objects_by_name_and_config():
    assert isinstance(constraints.get("max_norm"), constraints.MaxNorm)
    assert constraints.get("max_norm").max_value == 2.0 and constraints.get("max_norm").axis == 0
    assert isinstance(constraints.get("non_neg"), constraints.NonNeg)
    assert isinstance(constraints.get("unit_norm"), constraints.UnitNorm)
    c = constraints.MaxNorm(3.0, axis=[0, 1, 2])
    back = constraints.get(constraints.serialize(c))
    assert type(back) is constraints.MaxNorm and back.get_config() == {"max_value": 3.0, "axis": [0, 1, 2]}
    mm = constraints.MinMaxNorm(0.5, 1.5, 0.5, axis=1)
    assert constraints.get(constraints.serialize(mm)).get_config() == mm.get_config()


def test_conv_kernel_max_norm_over_several_axes():
    w = np.random.default_rng(3).normal(size=(3, 3, 2, 4)).astype("float32") * 2
    a = w.copy()
    constraints.MaxNorm(1.0, axis=[0, 1, 2]).apply(CPU, a)
    norms = np.sqrt((a.astype(np.float64) ** 2).sum(axis=(0, 1, 2)))
    assert norms.max() <= 1.0 + 1e-6
    np.testing.assert_allclose(a, ref.clip_norms(w.reshape(1, 18, 4), 0, 1, 1, 1e-7).reshape(w.shape),
                               rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------- bad input
def test_bad_arguments_name_the_layer_and_argument():
    with pytest.raises(ValueError, match="l2"):
        regularizers.L2(-0.1)
    with pytest.raises(ValueError, match="l1"):
        regularizers.L1L2(l1=float("nan"))
    with pytest.raises(ValueError, match=r"my_dense: kernel_regularizer.*'l3'"):
        L.Dense(2, kernel_regularizer="l3", name="my_dense")
    with pytest.raises(ValueError, match=r"emb: embeddings_regularizer.*l2"):
        L.Embedding(4, 2, embeddings_regularizer={"class_name": "L2", "config": {"l2": -1}}, name="emb")
    with pytest.raises(ValueError, match=r"c2: bias_constraint.*'max'"):
        L.Conv2D(2, 3, bias_constraint="max", name="c2")
    with pytest.raises(ValueError, match="max_value"):
        constraints.MaxNorm(-1)
    with pytest.raises(TypeError, match="kernel_regularizer"):
        L.Dropout(0.5, kernel_regularizer="l2")  # a layer without a kernel
    with pytest.raises(TypeError, match=r"d1: activity_regularizer"):
        L.Dense(2, activity_regularizer=3, name="d1")
    with pytest.raises(ValueError, match="consecutive"):
        constraints.MaxNorm(axis=[0, 2]).apply(CPU, np.ones((2, 3, 4), np.float32))


# ----------------------------------------------------------------- models
def _mlp(seed=0, regularized=True, **extra):
    reg = dict(kernel_regularizer=regularizers.L2(0.01), bias_regularizer=regularizers.L1(0.02),
               activity_regularizer=regularizers.L1L2(0.01, 0.03)) if regularized else {}
    m = nb.Sequential([L.Input((4,)), L.Dense(6, activation="tanh", **reg, **extra),
                       L.Dense(3, kernel_regularizer="l1" if regularized else None)], seed=seed)
    return m


def _data(n=12):
    rng = np.random.default_rng(5)
    return rng.normal(size=(n, 4)), rng.integers(0, 3, n)


def _numpy_penalty(model, x):
    """The penalties of _mlp in float64 NumPy from the weights and the first layer's output."""
    k1, b1, k2, _ = model.get_weights()
    h = np.tanh(x @ k1 + b1)
    return (0.01 * (k1 ** 2).sum() + 0.02 * np.abs(b1).sum() + 0.01 * np.abs(k2).sum()
            + (0.01 * np.abs(h).sum() + 0.03 * (h ** 2).sum()) / x.shape[0])


def test_reported_loss_is_data_loss_plus_penalty(float64):
    x, y = _data()
    m = _mlp()
    plain = _mlp(regularized=False)
    for mod in (m, plain):
        mod.compile(nb.optimizers.SGD(0.1), nb.losses.SparseCategoricalCrossentropy(from_logits=True))
    w = m.get_weights()
    w[1] = np.linspace(-0.3, 0.3, 6)
    m.set_weights(w)
    plain.set_weights(w)
    expect = plain.evaluate(x, y, batch_size=12) + _numpy_penalty(m, x)
    assert m.evaluate(x, y, batch_size=12) == pytest.approx(expect, rel=1e-12)
    assert m.test_on_batch(x, y) == pytest.approx(expect, rel=1e-12)
    hist = m.fit(x, y, batch_size=12, epochs=1, shuffle=False, verbose=0)
    assert hist.history["loss"][0] == pytest.approx(expect, rel=1e-12)  # the loss before the step


def test_gradient_includes_penalties_finite_differences(float64):
    """SGD(lr=1) moves each weight by minus its gradient: compare with central
    differences of the whole regularized loss."""
    x, y = _data()
    m = _mlp()
    m.compile(nb.optimizers.SGD(1.0), nb.losses.SparseCategoricalCrossentropy(from_logits=True))
    w = m.get_weights()
    w[1] = np.linspace(-0.3, 0.3, 6)  # away from L1's kink at 0
    w[3] = np.array([0.1, -0.2, 0.15])
    m.set_weights(w)
    fd = []
    eps = 1e-6
    for i, a in enumerate(w):
        g = np.zeros_like(a)
        for j in range(a.size):
            for sgn in (1, -1):
                ww = [b.copy() for b in w]
                ww[i].reshape(-1)[j] += sgn * eps
                m.set_weights(ww)
                g.reshape(-1)[j] += sgn * m.test_on_batch(x, y) / (2 * eps)
        fd.append(g)
    m.set_weights(w)
    m.train_on_batch(x, y)
    for i, (a, b, g) in enumerate(zip(w, m.get_weights(), fd)):
        np.testing.assert_allclose(a - b, g, rtol=1e-6, atol=1e-8, err_msg=f"weight {i}")


def test_regularized_mlp_trains_and_weights_shrink():
    """Keras guide-like: an L2-regularized MLP's loss falls, and its kernel is
    smaller than that of the same model trained without the penalty."""
    x, y = _data(48)
    strong = nb.Sequential([L.Input((4,)), L.Dense(16, activation="relu", kernel_regularizer=regularizers.L2(0.05)),
                            L.Dense(3)], seed=1)
    free = nb.Sequential([L.Input((4,)), L.Dense(16, activation="relu"), L.Dense(3)], seed=1)
    for mod in (strong, free):
        mod.compile(nb.optimizers.Adam(0.02), nb.losses.SparseCategoricalCrossentropy(from_logits=True))
    hs = strong.fit(x, y, batch_size=16, epochs=15, verbose=0).history["loss"]
    free.fit(x, y, batch_size=16, epochs=15, verbose=0)
    assert hs[-1] < hs[0]
    assert np.abs(strong.get_weights()[0]).sum() < 0.8 * np.abs(free.get_weights()[0]).sum()


def test_constraints_hold_after_every_step():
    x, y = _data(24)
    m = nb.Sequential([L.Input((4,)),
                       L.Dense(8, activation="relu", kernel_constraint=constraints.MaxNorm(0.5),
                               bias_constraint="non_neg"),
                       L.Dense(3, kernel_constraint="unit_norm")], seed=0)
    m.compile(nb.optimizers.SGD(0.5), nb.losses.SparseCategoricalCrossentropy(from_logits=True))
    seen = []

    def check(batch, logs):
        k1, b1, k2, _ = m.get_weights()
        assert np.sqrt((k1.astype(np.float64) ** 2).sum(axis=0)).max() <= 0.5 + 1e-6
        assert b1.min() >= 0
        np.testing.assert_allclose(np.sqrt((k2.astype(np.float64) ** 2).sum(axis=0)), 1.0, rtol=1e-5)
        seen.append(batch)

    m.fit(x, y, batch_size=4, epochs=2, verbose=0, callbacks=[LambdaCallback(on_train_batch_end=check)])
    assert len(seen) == 12


def test_embedding_and_conv_take_regularizers_and_constraints(float64):
    ids = np.random.default_rng(0).integers(0, 7, (6, 5))
    emb = L.Embedding(7, 3, embeddings_regularizer="l2", embeddings_constraint=constraints.MaxNorm(0.1, axis=1))
    m = nb.Sequential([L.Input((5,), dtype="int64"), emb,
                       L.Conv1D(2, 3, kernel_regularizer="l1", kernel_constraint=constraints.MaxNorm(1.0, [0, 1])),
                       L.Flatten(), L.Dense(1)], seed=0)
    m.compile(nb.optimizers.SGD(0.1), "mse")
    e = m.get_weights()[0]
    k = m.get_weights()[1]
    yv = np.zeros((6, 1))
    pen = 0.01 * (e ** 2).sum() + 0.01 * np.abs(k).sum()
    plain = m.evaluate(ids, yv, batch_size=6)
    m.layers[0].weight_regularizers.clear()
    m.layers[1].weight_regularizers.clear()
    assert plain == pytest.approx(m.evaluate(ids, yv, batch_size=6) + pen, rel=1e-12)
    m.train_on_batch(ids, yv)
    assert np.sqrt((m.get_weights()[0] ** 2).sum(axis=1)).max() <= 0.1 + 1e-9


def test_config_round_trip_and_save_load(tmp_path):
    x, y = _data()
    m = _mlp(kernel_constraint=constraints.MaxNorm(1.5))
    m.compile(nb.optimizers.SGD(0.1), nb.losses.SparseCategoricalCrossentropy(from_logits=True))
    m.fit(x, y, batch_size=6, epochs=1, verbose=0)
    cfg = m.layers[0].get_config()
    assert cfg["kernel_regularizer"] == {"class_name": "L2", "config": {"l2": 0.01}}
    assert cfg["bias_regularizer"] == {"class_name": "L1", "config": {"l1": 0.02}}
    assert cfg["activity_regularizer"] == {"class_name": "L1L2", "config": {"l1": 0.01, "l2": 0.03}}
    assert cfg["kernel_constraint"] == {"class_name": "MaxNorm", "config": {"max_value": 1.5, "axis": 0}}
    again = L.Dense.from_config(cfg)
    assert again.get_config() == cfg
    path = tmp_path / "m.nbm"
    m.save(path)
    back = nb.load_model(path)
    assert back.layers[0].get_config() == cfg
    assert back.evaluate(x, y) == pytest.approx(m.evaluate(x, y), rel=1e-6)
    h1 = m.fit(x, y, batch_size=12, epochs=1, shuffle=False, verbose=0)
    h2 = back.fit(x, y, batch_size=12, epochs=1, shuffle=False, verbose=0)
    assert h2.history["loss"] == pytest.approx(h1.history["loss"], rel=1e-6)


def test_data_parallel_refuses_activity_regularizer_with_a_label_dependent_count():
    x, y = _data()
    m = _mlp()
    m.compile("sgd", nb.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=0))
    with pytest.raises(NotImplementedError, match="activity_regularizer"):
        m.fit(x, y, batch_size=6, epochs=1, verbose=0, workers=2)


def test_recurrent_and_transposed_conv_regularizers(float64):
    rnn = L.LSTM(3, kernel_regularizer="l2", recurrent_regularizer=regularizers.L1(0.05),
                 recurrent_constraint=constraints.MaxNorm(0.5))
    assert set(rnn.weight_regularizers) == {"kernel", "recurrent_kernel"}
    assert rnn.get_config()["recurrent_regularizer"] == {"class_name": "L1", "config": {"l1": 0.05}}
    m = nb.Sequential([L.Input((4, 2)), rnn, L.Dense(1)], seed=0)
    m.compile(nb.optimizers.SGD(0.5), "mse")
    x, y = np.random.default_rng(0).normal(size=(5, 4, 2)), np.ones((5, 1))
    k, rk = m.get_weights()[:2]
    with_pen = m.evaluate(x, y)
    rnn.weight_regularizers.clear()
    assert with_pen == pytest.approx(m.evaluate(x, y) + 0.01 * (k ** 2).sum() + 0.05 * np.abs(rk).sum(), rel=1e-12)
    m.train_on_batch(x, y)
    assert np.sqrt((m.get_weights()[1] ** 2).sum(axis=0)).max() <= 0.5 + 1e-9
    ct = L.Conv2DTranspose(2, 3, kernel_regularizer="l1", bias_constraint="non_neg")
    assert ct.get_config()["kernel_regularizer"] == {"class_name": "L1", "config": {"l1": 0.01}}


@pytest.mark.parametrize("cls", [L.LayerNormalization, L.BatchNormalization, L.GroupNormalization])
def test_normalization_gamma_beta_options(cls):
    kw = {"groups": 2} if cls is L.GroupNormalization else {}
    layer = cls(gamma_regularizer="l2", beta_constraint="non_neg", **kw)
    assert set(layer.weight_regularizers) == {"gamma"} and set(layer.weight_constraints) == {"beta"}
    assert cls.from_config(layer.get_config()).get_config() == layer.get_config()


def test_multi_head_attention_regularizers_govern_all_four_kernels_and_biases(float64):
    """Keras: MultiHeadAttention's kernel_* options apply to the query, key, value and output
    kernels, bias_* to the four biases; inside a TransformerEncoder too (its sub-layer)."""
    rng = np.random.default_rng(1)
    x, yv = rng.standard_normal((4, 3, 4)), np.zeros((4, 3, 4))
    mha = L.MultiHeadAttention(2, 2, kernel_regularizer="l2", bias_regularizer=nb.regularizers.L1(0.5),
                               kernel_constraint=constraints.MaxNorm(0.2, axis=0))
    assert sorted(mha.weight_regularizers) == sorted(
        [f"{p}_{k}" for p in ("query", "key", "value", "output") for k in ("kernel", "bias")])
    inp = L.Input((3, 4))
    m = nb.Model(inp, mha(inp, inp), seed=0)
    m.compile(nb.optimizers.SGD(0.1), "mse")
    w = [a + 0.1 for a in m.get_weights()]  # nonzero biases
    m.set_weights(w)
    names = list(mha.params)
    pen = sum(0.01 * (a ** 2).sum() if n.endswith("kernel") else 0.5 * np.abs(a).sum() for n, a in zip(names, w))
    plain = m.evaluate(x, yv)
    mha.weight_regularizers.clear()
    assert plain == pytest.approx(m.evaluate(x, yv) + pen, rel=1e-12)
    m.train_on_batch(x, yv)
    for n, a in zip(names, m.get_weights()):
        if n.endswith("kernel"):
            assert np.sqrt((a ** 2).sum(axis=0)).max() <= 0.2 + 1e-9, n
    again = L.MultiHeadAttention.from_config(mha.get_config())
    assert again.weight_constraints.keys() == mha.weight_constraints.keys()
