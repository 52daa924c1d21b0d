"""TransformerEncoder (a composite layer) and PositionalEmbedding: layer cases (forward against
the float64 reference, finite differences, on every device), PyTorch parity, params, training, errors."""
import numpy as np
import pytest

import nbmodel as nb
from nbmodel import layers as L
from nbmodel.kernels.reference import attention as ref
from nbmodel.testing import LayerCase

NAMES = ["attention/query_kernel", "attention/query_bias", "attention/key_kernel", "attention/key_bias",
         "attention/value_kernel", "attention/value_bias", "attention/output_kernel", "attention/output_bias",
         "norm1/gamma", "norm1/beta", "norm2/gamma", "norm2/beta", "dense1/kernel", "dense1/bias",
         "dense2/kernel", "dense2/bias"]


def rng(seed=0):
    return np.random.default_rng(seed)


def built(x_shape, seed=0, heads=2, key_dim=3, ff_dim=8, **kw):
    layer = L.TransformerEncoder(heads, key_dim, ff_dim, seed=seed, **kw)
    layer.build(x_shape)
    r = rng(seed + 10)
    for k, p in layer.params.items():
        if k.endswith(("bias", "beta")):
            p[...] = r.standard_normal(p.shape) * 0.3
        elif k.endswith("gamma"):
            p[...] = 1 + r.standard_normal(p.shape) * 0.3
    return layer


def test_params_are_the_sublayers_arrays():
    layer = built((None, 4, 6))
    assert list(layer.params) == NAMES and list(layer.grads) == NAMES
    assert layer.params["attention/query_kernel"] is layer.attention.params["query_kernel"]
    assert layer.grads["dense2/bias"] is layer.dense2.grads["bias"]
    assert layer.params["dense2/kernel"].shape == (8, 6)
    assert len(layer.state) == 0
    assert layer.count_params() == sum(p.size for p in layer.params.values())
    assert set(map(id, layer.sublayers())) >= {id(layer.attention), id(layer.norm1), id(layer.dense1)}


def test_rebound_params_reach_the_sublayers():
    """A model replaces params/grads with views into flat buffers (bind_param or item assignment)."""
    layer = built((None, 4, 6))
    x = rng().standard_normal((2, 4, 6)).astype(np.float32)
    y0 = layer.forward(x).copy()
    flat_p = np.concatenate([p.reshape(-1) for p in layer.params.values()])
    flat_g = np.zeros_like(flat_p)
    off = 0
    for i, (k, p) in enumerate(list(layer.params.items())):
        pv = flat_p[off:off + p.size].reshape(p.shape)
        gv = flat_g[off:off + p.size].reshape(p.shape)
        if i % 2:
            layer.bind_param(k, pv, gv)
        else:
            layer.params[k] = pv
            layer.grads[k] = gv
        off += p.size
    assert layer.attention.params["query_kernel"].base is flat_p
    assert layer.norm2.grads["beta"].base is flat_g
    np.testing.assert_array_equal(layer.forward(x), y0)
    flat_p[:] *= 0.5  # in-place writes to the buffer change what the layer computes
    assert not np.allclose(layer.forward(x, training=True), y0)
    layer.backward(np.ones_like(x))
    assert np.abs(flat_g).sum() > 0
    np.testing.assert_array_equal(flat_g[:layer.attention.params["query_kernel"].size],
                                  layer.attention.grads["query_kernel"].reshape(-1))


class FixedDropoutEncoder(L.TransformerEncoder):
    def forward(self, x, training=False, **kw):
        for i, sub in enumerate(self.sublayers()):  # the same dropout masks at every call
            sub.rng = np.random.default_rng(i)
        return super().forward(x, training, **kw)


def with_random_norms_and_biases(layer, x_shape, seed):
    """``layer`` built on ``x_shape`` with non-trivial biases, betas and gammas (through set_weights)."""
    layer.build(x_shape)
    r = rng(seed + 10)
    ws = []
    for k, w in zip(layer.params, layer.get_weights()):
        if k.endswith(("bias", "beta")):
            w = r.standard_normal(w.shape) * 0.3
        elif k.endswith("gamma"):
            w = 1 + r.standard_normal(w.shape) * 0.3
        ws.append(w)
    layer.set_weights(ws)
    return layer


def with_random_biases(layer, x_shape):
    """Biases and betas moved away from zero (ReLU pre-activations away from the kink)."""
    layer.build(x_shape)
    layer.set_weights([rng(2).standard_normal(w.shape) * 0.3 if k.endswith(("bias", "beta")) else w
                       for k, w in zip(layer.params, layer.get_weights())])
    return layer


def encoder_case(name, make, shape, activation="relu", norm_first=False, causal=False, mask=None):
    return LayerCase(
        name, make, inputs=lambda r: r.standard_normal(shape),
        reference=lambda w, x: ref.transformer_encoder(x, {k: w[k] for k in NAMES}, activation, norm_first, 1e-5,
                                                       causal, attention_mask=mask),
        forward_kwargs={} if mask is None else {"attention_mask": mask},
        rtol={"float32": 3e-5, "float64": 1e-11}, atol={"float32": 3e-5, "float64": 1e-11})


_PADDING = np.array([[1, 1, 0], [1, 0, 0]], bool)[:, None, None, :]

CASES = [
    encoder_case(f"encoder-{'pre' if nf else 'post'}-norm-gelu{'-causal' if causal else ''}",
                 lambda dt, nf=nf, causal=causal: with_random_norms_and_biases(
                     L.TransformerEncoder(2, 3, 8, norm_first=nf, use_causal_mask=causal, activation="gelu",
                                          dtype=dt, seed=0), (None, 5, 6), seed=0),
                 (2, 5, 6), "gelu", nf, causal)
    for nf in (False, True) for causal in (False, True)
]
CASES += [
    encoder_case(f"encoder-{'pre' if nf else 'post'}-norm-{act}{'-causal' if causal else ''}-small",
                 lambda dt, nf=nf, act=act, causal=causal: with_random_biases(
                     L.TransformerEncoder(2, 2, 5, norm_first=nf, activation=act, use_causal_mask=causal,
                                          dtype=dt, seed=1), (None, 3, 4)),
                 (2, 3, 4), act, nf, causal)
    for nf, act, causal in [(False, "relu", False), (True, "gelu", True), (False, "tanh", True)]
]
# dropout: gradients with fixed masks in training, the reference (no dropout) in inference
CASES += [encoder_case("encoder-padding-mask-dropout",
                       lambda dt: FixedDropoutEncoder(2, 2, 5, dropout=0.3, dtype=dt, seed=3), (2, 3, 4),
                       mask=_PADDING)]


def positional_embedding_case():
    return LayerCase(
        "positional-embedding", lambda dt: L.PositionalEmbedding(6, 7, 5, dtype=dt, seed=0),
        inputs=lambda r: r.integers(0, 7, (3, 4)),
        reference=lambda w, ids: ref.pos_embed_forward(ids, w["token_embeddings"], w["position_embeddings"]),
        rtol={"float32": 1e-6, "float64": 1e-12}, atol={"float32": 0.0, "float64": 0.0})


CASES += [positional_embedding_case()]


@pytest.mark.parametrize("case", CASES, ids=str)
def test_layer_case(case, device):
    case.check(device)


def test_input_gradient_skipped_when_not_needed(float64):
    x = rng().standard_normal((2, 4, 6))
    layer = built(x.shape)
    layer.forward(x, training=True)
    dy = rng(1).standard_normal(x.shape)
    dx = layer.backward(dy)
    assert dx.shape == x.shape
    full = {k: g.copy() for k, g in layer.grads.items()}
    layer.input_grad_needed = False
    layer.forward(x, training=True)
    assert layer.backward(dy) is None
    for k in NAMES:
        np.testing.assert_allclose(layer.grads[k], full[k], rtol=1e-12, err_msg=k)


def test_matches_pytorch_encoder_layer():
    torch = pytest.importorskip("torch")
    d, h, kd, ff = 8, 2, 4, 16
    x = rng().standard_normal((3, 5, d)).astype(np.float32)
    for norm_first in (False, True):
        layer = built(x.shape, heads=h, key_dim=kd, ff_dim=ff, norm_first=norm_first)
        y = layer.forward(x, training=True)
        dy = rng(1).standard_normal(x.shape).astype(np.float32)
        dx = layer.backward(dy)
        t = torch.nn.TransformerEncoderLayer(d, h, ff, dropout=0.0, batch_first=True, norm_first=norm_first)
        P = {k: torch.from_numpy(np.array(v)) for k, v in layer.params.items()}
        with torch.no_grad():
            wq = P["attention/query_kernel"].reshape(d, h * kd).T
            wk = P["attention/key_kernel"].reshape(d, h * kd).T
            wv = P["attention/value_kernel"].reshape(d, h * kd).T
            t.self_attn.in_proj_weight.copy_(torch.cat([wq, wk, wv]))
            t.self_attn.in_proj_bias.copy_(torch.cat([P["attention/query_bias"].reshape(-1),
                                                      P["attention/key_bias"].reshape(-1),
                                                      P["attention/value_bias"].reshape(-1)]))
            t.self_attn.out_proj.weight.copy_(P["attention/output_kernel"].reshape(h * kd, d).T)
            t.self_attn.out_proj.bias.copy_(P["attention/output_bias"])
            t.linear1.weight.copy_(P["dense1/kernel"].T)
            t.linear1.bias.copy_(P["dense1/bias"])
            t.linear2.weight.copy_(P["dense2/kernel"].T)
            t.linear2.bias.copy_(P["dense2/bias"])
            for i in (1, 2):
                getattr(t, f"norm{i}").weight.copy_(P[f"norm{i}/gamma"])
                getattr(t, f"norm{i}").bias.copy_(P[f"norm{i}/beta"])
        t.train()
        tx = torch.tensor(x, requires_grad=True)
        ty = t(tx)
        ty.backward(torch.from_numpy(dy))
        np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(dx, tx.grad.numpy(), rtol=1e-3, atol=1e-4)
        np.testing.assert_allclose(layer.grads["dense1/kernel"], t.linear1.weight.grad.numpy().T,
                                   rtol=1e-3, atol=1e-4)
        np.testing.assert_allclose(layer.grads["norm1/gamma"], t.norm1.weight.grad.numpy(), rtol=1e-3, atol=1e-4)
        gq = t.self_attn.in_proj_weight.grad.numpy()[:h * kd].T.reshape(d, h, kd)
        np.testing.assert_allclose(layer.grads["attention/query_kernel"], gq, rtol=1e-3, atol=1e-4)


def test_inside_sequential_trains_and_saves(tmp_path, one_thread):
    r = rng()
    x = r.standard_normal((32, 6, 8)).astype(np.float32)
    y = (x[:, :, 0].mean(1) > 0).astype(np.int64)
    model = nb.Sequential([L.Input((6, 8)), L.TransformerEncoder(2, 4, 16), L.Flatten(), L.Dense(2)], seed=0)
    model.compile(optimizer="adam", loss=nb.losses.SparseCategoricalCrossentropy(from_logits=True))
    before = model.evaluate(x, y)
    model.fit(x, y, epochs=15, batch_size=8, verbose=0)
    after = model.evaluate(x, y)
    assert after < before
    path = tmp_path / "m.nbm"
    model.save(path)
    again = nb.load_model(path)
    np.testing.assert_allclose(again.predict(x), model.predict(x), rtol=1e-5, atol=1e-6)
    for a, b in zip(again.get_weights(), model.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_bad_input_raises_errors_naming_the_layer():
    layer = L.TransformerEncoder(2, 3, 8, name="enc")
    layer.build((None, 4, 6))
    with pytest.raises(ValueError, match="^enc: .*last dimension 6"):
        layer.forward(np.ones((2, 4, 5)))
    with pytest.raises(ValueError, match="^enc: .*rank 3"):
        layer.forward(np.ones((4, 6)))
    with pytest.raises(ValueError, match="^enc: .*NaN"):
        layer.forward(np.full((2, 4, 6), np.nan))
    with pytest.raises(ValueError, match="^enc/attention: attention_mask"):
        layer.forward(np.ones((2, 4, 6)), attention_mask=np.ones((2, 3, 3), bool))
    with pytest.raises(ValueError, match="^enc2: "):
        L.TransformerEncoder(2, 3, 8, name="enc2").build((None, 6))
    with pytest.raises(ValueError, match="activation"):
        L.TransformerEncoder(2, 3, 8, activation="nope")


# ------------------------------------------------------------ PositionalEmbedding
def test_positional_embedding_params_and_float_ids():
    """Params, the default dtype, and whole-number float ids (the layer case compares the values)."""
    ids = rng().integers(0, 7, (3, 4))
    layer = L.PositionalEmbedding(6, 7, 5, seed=0)
    y = layer.forward(ids)
    assert y.shape == (3, 4, 5) and y.dtype == np.float32
    assert list(layer.params) == ["token_embeddings", "position_embeddings"]
    assert layer.params["position_embeddings"].shape == (6, 5)
    np.testing.assert_array_equal(layer.forward(ids.astype(np.float64)), y)  # whole-number floats are ids


def test_positional_embedding_bad_ids():
    layer = L.PositionalEmbedding(4, 7, 5, name="pe")
    with pytest.raises(ValueError, match="^pe: .*\\[0, 7\\)"):
        layer.forward(np.array([[0, 7]]))
    with pytest.raises(ValueError, match="^pe: .*exceed sequence_length"):
        layer.forward(np.zeros((1, 5), int))
    with pytest.raises(ValueError, match="^pe: .*whole numbers"):
        layer.forward(np.array([[0.5, 1.0]]))
    with pytest.raises(TypeError, match="^pe: "):
        layer.forward(np.array([["a", "b"]]))
    with pytest.raises(ValueError, match="^pe: .*rank 2"):
        layer.forward(np.zeros((1, 2, 3), int))


def test_small_causal_language_model_learns(one_thread):
    r = rng()
    seq = np.tile(np.arange(5), 40)  # a periodic sequence: next token = (token + 1) % 5
    starts = r.integers(0, len(seq) - 9, 64)
    x = np.stack([seq[s:s + 8] for s in starts])
    y = np.stack([seq[s + 1:s + 9] for s in starts])
    inp = L.Input((8,), dtype="int64")
    h = L.PositionalEmbedding(8, 5, 16)(inp)
    h = L.TransformerEncoder(2, 8, 32, use_causal_mask=True)(h)
    out = L.Dense(5)(h)
    model = nb.Model(inputs=inp, outputs=out, seed=0)
    model.compile(optimizer=nb.optimizers.Adam(0.01),
                  loss=nb.losses.SparseCategoricalCrossentropy(from_logits=True))
    before = model.evaluate(x, y)
    model.fit(x, y, epochs=10, batch_size=16, verbose=0)
    after = model.evaluate(x, y)
    assert after < 0.5 * before
