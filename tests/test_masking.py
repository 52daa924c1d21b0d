"""Keras masking end to end outside the recurrent layers: Embedding(mask_zero) and
Masking make a mask, layers pass it on or drop it as Keras 3 does, GlobalAveragePooling1D,
MultiHeadAttention and TransformerEncoder read it, losses and metrics weight by it; nested
models, data parallel. Layer cases (reference, gradients, every device) and the Keras 3
oracle (skipped without keras and torch)."""
import os

import numpy as np
import pytest

import nbmodel as nb
from nbmodel import layers as L
from nbmodel.kernels.reference import attention as ref_att
from nbmodel.kernels.reference import pooling as ref_pool
from nbmodel.testing import LayerCase, gradcheck

MASK = np.array([[1, 1, 0, 0], [0, 1, 1, 1], [1, 0, 1, 0]], bool)  # trailing, leading, interior


def ids_with_padding(rng, shape=(3, 4), vocab=9):
    ids = rng.integers(1, vocab, shape)
    ids[~MASK] = 0
    return ids


def _mha_reference(w, x, mask):
    return ref_att.mha_forward(x, x, None, w, ref_att.input_masks(mask, mask))[0]


CASES = [
    LayerCase("global-avg-1d-masked", lambda dt: L.GlobalAveragePooling1D(dtype=dt),
              inputs=lambda r: r.standard_normal((3, 4, 2)), forward_kwargs={"mask": MASK},
              reference=lambda w, x: ref_pool.global_avg_masked(x, MASK)),
    LayerCase("global-avg-1d-masked-keepdims", lambda dt: L.GlobalAveragePooling1D(keepdims=True, dtype=dt),
              inputs=lambda r: r.standard_normal((3, 4, 2)), forward_kwargs={"mask": MASK},
              reference=lambda w, x: ref_pool.global_avg_masked(x, MASK)[:, None]),
    LayerCase("mha-input-masks", lambda dt: L.MultiHeadAttention(2, 3, dtype=dt, seed=5),
              inputs=lambda r: (r.standard_normal((3, 4, 5)), r.standard_normal((3, 4, 5))),
              forward_kwargs={"mask": [MASK, MASK]},
              reference=lambda w, q, v: ref_att.mha_forward(q, v, None, w, ref_att.input_masks(MASK, MASK))[0]),
    LayerCase("mha-key-mask-only", lambda dt: L.MultiHeadAttention(2, 3, dtype=dt, seed=5),
              inputs=lambda r: (r.standard_normal((3, 2, 5)), r.standard_normal((3, 4, 5))),
              forward_kwargs={"mask": [None, MASK]},
              reference=lambda w, q, v: ref_att.mha_forward(q, v, None, w, ref_att.input_masks(None, MASK))[0]),
    LayerCase("transformer-padding-mask", lambda dt: L.TransformerEncoder(2, 3, 6, dtype=dt, seed=6),
              inputs=lambda r: r.standard_normal((3, 4, 4)), forward_kwargs={"mask": MASK},
              reference=lambda w, x: ref_att.transformer_encoder(x, w, attention_mask=ref_att.input_masks(
                  None, MASK))),
    LayerCase("masking", lambda dt: L.Masking(dtype=dt),
              inputs=lambda r: r.standard_normal((3, 4, 2)) * MASK[:, :, None],
              reference=lambda w, x: x * MASK[:, :, None], gradients=False),  # mask_value steps are kinks
]


@pytest.mark.parametrize("case", CASES, ids=str)
def test_layer_case(case, device):
    case.check(device)


# ------------------------------------------------------------------ making masks
def test_embedding_mask_zero_makes_the_mask_and_round_trips():
    emb = L.Embedding(9, 3, mask_zero=True)
    ids = ids_with_padding(np.random.default_rng(0))
    emb(ids)
    np.testing.assert_array_equal(emb.compute_mask(ids, None), MASK)
    assert emb.creates_mask() and L.Embedding(9, 3).compute_mask(ids, None) is None
    again = L.Embedding.from_config(emb.get_config())
    assert again.mask_zero is True


def test_positional_embedding_mask_zero():
    pe = L.PositionalEmbedding(4, 9, 3, mask_zero=True)
    ids = ids_with_padding(np.random.default_rng(1))
    pe(ids)
    np.testing.assert_array_equal(pe.compute_mask(ids, None), MASK)
    assert L.PositionalEmbedding.from_config(pe.get_config()).mask_zero is True


def test_masking_layer_mask_value_and_backward():
    x = np.random.default_rng(2).standard_normal((3, 4, 2))
    x[~MASK] = -1.0
    layer = L.Masking(mask_value=-1.0, dtype="float64")
    y = layer.forward(x, training=True)
    np.testing.assert_array_equal(layer.compute_mask(x, None), MASK)
    np.testing.assert_array_equal(y, x * MASK[:, :, None])
    dy = np.random.default_rng(3).standard_normal(x.shape)
    np.testing.assert_array_equal(layer.backward(dy), dy * MASK[:, :, None])
    assert L.Masking.from_config(layer.get_config()).mask_value == -1.0
    x[0, 0, 0] = -1.0  # one feature equal to mask_value does not mask the step
    assert layer.compute_mask(x, None)[0, 0]


def test_masked_pooling_all_masked_sample_and_errors():
    x = np.ones((2, 3, 2))
    layer = L.GlobalAveragePooling1D(dtype="float64")
    y = layer.forward(x, mask=np.array([[0, 0, 0], [1, 0, 1]], bool))
    np.testing.assert_array_equal(y, [[0, 0], [1, 1]])
    with pytest.raises(ValueError, match="global_average_pooling1d.*mask must have shape"):
        layer.forward(x, mask=np.ones((2, 4), bool))
    assert layer.compute_mask(x, MASK) is None
    gradcheck(L.GlobalAveragePooling1D(), np.random.default_rng(4).standard_normal((3, 4, 2)),
              forward_kwargs={"mask": MASK})


def test_mha_masks_equal_the_explicit_attention_mask_and_need_rank_3():
    rng = np.random.default_rng(5)
    q, v = rng.standard_normal((3, 4, 5)), rng.standard_normal((3, 4, 5))
    mha = L.MultiHeadAttention(2, 3, dtype="float64")
    a = mha.forward((q, v), mask=[MASK, MASK])
    b = mha.forward((q, v), attention_mask=MASK[:, :, None] & MASK[:, None, :])
    np.testing.assert_array_equal(a, b)
    both = mha.forward((q, v), mask=[None, MASK], attention_mask=np.tril(np.ones((4, 4), bool)))
    want = mha.forward((q, v), attention_mask=np.tril(np.ones((4, 4), bool))[None] & MASK[:, None, :])
    np.testing.assert_array_equal(both, want)
    assert mha.compute_mask((q, v), [MASK, None]) is MASK
    with pytest.raises(ValueError, match="value mask must have shape"):
        mha.forward((q, v), mask=[None, MASK[:, :3]])
    m4 = L.MultiHeadAttention(1, 2, attention_axes=(1, 2))
    x4 = rng.standard_normal((2, 2, 2, 3))
    with pytest.raises(ValueError, match="input masks.*rank 3"):
        m4.forward((x4, x4), mask=[np.ones((2, 2), bool), None])


# ------------------------------------------------------------------ passing masks on
def test_merges_and_pass_through_layers():
    a, b = MASK, np.array([[1, 0, 0, 1], [0, 0, 0, 1], [0, 0, 1, 1]], bool)
    x = np.zeros((3, 4, 2))
    np.testing.assert_array_equal(L.Add().compute_mask([x, x], [a, b]), a | b)
    assert L.Add().compute_mask([x, x], [a, None]) is None
    assert L.Dot(axes=2).compute_mask([x, x], [a, b]) is None
    np.testing.assert_array_equal(L.Concatenate().compute_mask([x, x], [a, None]), np.ones_like(a))
    np.testing.assert_array_equal(L.Concatenate(axis=1).compute_mask([x, x], [a, None]),
                                  np.concatenate([a, np.ones_like(a)], axis=1))
    for layer in (L.Dense(2), L.Activation("relu"), L.Dropout(0.5), L.LayerNormalization(),
                  L.BatchNormalization()):
        assert layer.compute_mask(x, a) is a, layer.name
    for layer in (L.Flatten(), L.Conv1D(2, 2), L.SpatialDropout1D(0.5)):
        assert layer.compute_mask(x, a) is None, layer.name


def _text_model(dense_after=True):
    inp = nb.Input((4,), dtype="int64")
    h = L.Embedding(9, 3, mask_zero=True)(inp)
    h = L.Dense(3, activation="tanh")(h) if dense_after else h
    return inp, h


def test_mask_flows_to_the_output_and_through_a_nested_model():
    inp, h = _text_model()
    model = nb.Model(inp, L.Dense(2)(h))
    ids = ids_with_padding(np.random.default_rng(6))
    model.predict(ids)
    np.testing.assert_array_equal(model.graph.output_masks()[0], MASK)
    outer_in = nb.Input((4,), dtype="int64")
    outer = nb.Model(outer_in, L.GlobalAveragePooling1D()(model(outer_in)))
    inner_out = model.predict(ids)
    want = ref_pool.global_avg_masked(inner_out, MASK)
    np.testing.assert_allclose(outer.predict(ids), want, rtol=1e-6, atol=1e-7)


# ------------------------------------------------------------------ losses and metrics
def test_loss_masked_is_the_mean_over_unmasked_elements():
    rng = np.random.default_rng(7)
    yp, yt = rng.random((3, 4, 2)), rng.random((3, 4, 2))
    sw = np.array([1.0, 2.0, 0.5])
    loss = nb.losses.MeanSquaredError()
    total, count, dy = loss.masked(yt, yp, sw, MASK)
    per = ((yp - yt) ** 2).mean(axis=-1) * sw[:, None] * MASK
    assert count == MASK.sum()
    np.testing.assert_allclose(total, per.sum(), rtol=1e-12)
    np.testing.assert_allclose(dy, 2 * (yp - yt) / 2 * (sw[:, None] * MASK)[:, :, None], rtol=1e-12)
    with pytest.raises(ValueError, match="mask has shape"):
        loss.masked(yt, yp, None, MASK[:, :3])
    sce = nb.losses.SparseCategoricalCrossentropy(ignore_class=1)
    labels = np.array([[0, 1, 1, 0], [1, 0, 0, 0], [0, 0, 0, 1]])
    _, count, _ = sce.masked(labels, rng.random((3, 4, 2)), None, MASK)
    assert count == int((MASK & (labels != 1)).sum())


def test_model_loss_and_metrics_ignore_masked_steps():
    rng = np.random.default_rng(8)
    inp, h = _text_model()
    model = nb.Model(inp, L.Dense(2)(h))
    model.compile("sgd", "mse", metrics=["mae"])
    ids = ids_with_padding(rng)
    y = rng.random((3, 4, 2))
    pred = model.predict(ids)
    logs = model.evaluate(ids, y, return_dict=True)
    err = pred - y
    np.testing.assert_allclose(logs["loss"], (err ** 2).mean(-1)[MASK].mean(), rtol=1e-5)
    np.testing.assert_allclose(logs["mae"], np.abs(err).mean(-1)[MASK].mean(), rtol=1e-5)
    y2 = y.copy()
    y2[~MASK] = 1e3  # targets at padded steps change nothing
    assert model.evaluate(ids, y2, return_dict=True)["loss"] == pytest.approx(logs["loss"], rel=1e-6)


def test_masked_model_trains_the_same_with_two_workers(one_thread):
    rng = np.random.default_rng(9)
    ids = rng.integers(1, 9, (16, 4))
    ids[rng.random((16, 4)) < 0.4] = 0
    y = rng.random((16, 4, 1))

    def train(workers):
        inp = nb.Input((4,), dtype="int64")
        h = L.Embedding(9, 3, mask_zero=True)(inp)
        model = nb.Model(inp, L.Dense(1)(h), seed=3)
        model.compile("sgd", "mse")
        hist = model.fit(ids, y, batch_size=8, epochs=2, shuffle=False, verbose=0, workers=workers)
        return hist.history["loss"], model.get_weights()

    l1, w1 = train(1)
    l2, w2 = train(2)
    np.testing.assert_allclose(l2, l1, rtol=1e-5)
    for a, b in zip(w1, w2):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-7)


# ------------------------------------------------------------------ Keras 3 oracle
@pytest.fixture
def keras():
    pytest.importorskip("torch")
    os.environ.setdefault("KERAS_BACKEND", "torch")
    k = pytest.importorskip("keras")
    if k.backend.backend() != "torch":
        pytest.skip("keras runs on another backend here")
    return k


def _pair(keras, build):
    km, nm = build(keras), build(nb)
    nm.set_weights([keras.ops.convert_to_numpy(w) for w in km.weights])
    return km, nm


def test_keras_text_classifier_with_mask_zero(keras):
    def build(lib):
        inp = lib.Input((4,), dtype="int32")
        h = lib.layers.Embedding(9, 6, mask_zero=True)(inp)
        h = lib.layers.Dense(5, activation="tanh")(h)
        h = lib.layers.GlobalAveragePooling1D()(h)
        return lib.Model(inp, lib.layers.Dense(1, activation="sigmoid")(h))

    km, nm = _pair(keras, build)
    rng = np.random.default_rng(10)
    ids = ids_with_padding(rng)
    y = (rng.random((3, 1)) > 0.5).astype("float32")
    np.testing.assert_allclose(nm.predict(ids), km.predict(ids, verbose=0), rtol=1e-5, atol=1e-6)
    for m in (km, nm):
        m.compile("sgd", "binary_crossentropy", metrics=["accuracy"])
    hk = km.fit(ids, y, epochs=3, batch_size=2, shuffle=False, verbose=0).history
    hn = nm.fit(ids, y, epochs=3, batch_size=2, shuffle=False, verbose=0).history
    np.testing.assert_allclose(hn["loss"], hk["loss"], rtol=1e-5)


def test_keras_sequence_loss_masking_layer_and_attention(keras):
    def build(lib):
        inp = lib.Input((4, 3))
        h = lib.layers.Masking(0.0)(inp)
        a = lib.layers.MultiHeadAttention(2, 4)(h, h)  # the output keeps the query's mask
        return lib.Model(inp, lib.layers.Dense(2)(a))

    km, nm = _pair(keras, build)
    rng = np.random.default_rng(11)
    x = (rng.standard_normal((3, 4, 3)) * MASK[:, :, None]).astype("float32")
    y = rng.standard_normal((3, 4, 2)).astype("float32")
    # Keras' fused attention path gives rows with no key to attend to a uniform average; the
    # masked (padded) query rows differ, and the loss never reads them
    np.testing.assert_allclose(nm.predict(x)[MASK], km.predict(x, verbose=0)[MASK], rtol=1e-5, atol=1e-6)
    for m in (km, nm):
        m.compile("sgd", "mse", metrics=["mae"])
    ek = km.evaluate(x, y, verbose=0, return_dict=True)
    en = nm.evaluate(x, y, verbose=0, return_dict=True)
    assert en["loss"] == pytest.approx(ek["loss"], rel=1e-5)
    assert en["mae"] == pytest.approx(ek["mae"], rel=1e-5)
    hk = km.fit(x, y, epochs=3, batch_size=2, shuffle=False, verbose=0).history
    hn = nm.fit(x, y, epochs=3, batch_size=2, shuffle=False, verbose=0).history
    np.testing.assert_allclose(hn["loss"], hk["loss"], rtol=1e-4)


# ------------------------------------------------------------------ pad_sequences
def test_pad_sequences_keras_behaviour():
    seqs = [[711, 632, 71], [73, 8, 3215, 55, 927], [83, 91, 1, 645, 1253, 927]]
    post = nb.utils.pad_sequences(seqs, padding="post")
    np.testing.assert_array_equal(post[0], [711, 632, 71, 0, 0, 0])
    assert post.dtype == np.int32 and post.shape == (3, 6)
    np.testing.assert_array_equal(nb.utils.pad_sequences(seqs, maxlen=4)[0], [0, 711, 632, 71])
    np.testing.assert_array_equal(nb.utils.pad_sequences(seqs, maxlen=2)[1], [55, 927])
    np.testing.assert_array_equal(nb.utils.pad_sequences(seqs, maxlen=2, truncating="post")[1], [73, 8])
    np.testing.assert_array_equal(nb.utils.pad_sequences([[1.5], []], dtype="float32", value=-1.0),
                                  [[1.5], [-1.0]])
    with pytest.raises(ValueError, match="padding must be"):
        nb.utils.pad_sequences(seqs, padding="middle")


def test_pad_sequences_matches_keras(keras):
    rng = np.random.default_rng(12)
    seqs = [list(rng.integers(1, 50, n)) for n in (0, 3, 7, 5)]
    for kw in ({}, {"padding": "post"}, {"maxlen": 4}, {"maxlen": 4, "truncating": "post", "padding": "post"},
               {"value": 9}):
        np.testing.assert_array_equal(nb.utils.pad_sequences(seqs, **kw), keras.utils.pad_sequences(seqs, **kw))
