"""MultiHeadAttention: layer cases (forward against the float64 reference, finite
differences, on every device) over masks, causal mask, cross-attention, returned scores,
output shapes and dropout; backward against the reference, PyTorch, shapes, errors."""
import numpy as np
import pytest

import nbmodel as nb
from nbmodel import layers as L
from nbmodel.kernels.reference import attention as ref
from nbmodel.testing import LayerCase

PARAMS = ["query_kernel", "query_bias", "key_kernel", "key_bias", "value_kernel", "value_bias",
          "output_kernel", "output_bias"]


def rng(seed=0):
    return np.random.default_rng(seed)


def randomize_biases(layer, seed=5):
    r = rng(seed)
    for k, v in layer.params.items():
        if k.endswith("bias"):
            v[...] = r.standard_normal(v.shape) * 0.5


def inputs(b=2, tq=4, tk=5, dq=6, dv=7, dk=3, seed=0):
    r = rng(seed)
    return (r.standard_normal((b, tq, dq)), r.standard_normal((b, tk, dv)), r.standard_normal((b, tk, dk)))


def test_params_keras_names_shapes_and_order():
    layer = L.MultiHeadAttention(2, 3, value_dim=4, output_shape=5)
    layer.build(((None, 4, 6), (None, 5, 7), (None, 5, 8)))
    assert list(layer.params) == PARAMS
    shapes = [w.shape for w in layer.get_weights()]
    assert shapes == [(6, 2, 3), (2, 3), (8, 2, 3), (2, 3), (7, 2, 4), (2, 4), (2, 4, 5), (5,)]
    # Keras weights load through set_weights in that order
    ws = [rng(i).standard_normal(s) for i, s in enumerate(shapes)]
    layer.set_weights(ws)
    for a, b in zip(layer.get_weights(), ws):
        np.testing.assert_array_equal(a, b.astype(np.float32))
    no_bias = L.MultiHeadAttention(2, 3, use_bias=False)
    no_bias.build(((None, 4, 6), (None, 5, 6)))
    assert list(no_bias.params) == ["query_kernel", "key_kernel", "value_kernel", "output_kernel"]


SETTINGS = {
    "self": dict(key=False, mask=None, causal=False),
    "cross_key": dict(key=True, mask=None, causal=False),
    "mask3d": dict(key=True, mask="3d", causal=False),
    "mask4d_heads": dict(key=False, mask="4d", causal=False),
    "mask_padding": dict(key=False, mask="pad", causal=False),
    "causal": dict(key=False, mask=None, causal=True),
    "causal_and_mask": dict(key=True, mask="3d", causal=True),
}


def make_mask(kind, b=2, h=2, tq=4, tk=5):
    r = rng(9)
    if kind is None:
        return None
    if kind == "3d":
        m = r.random((b, tq, tk)) > 0.4
        m[0, 1] = False  # one fully masked row
        return m
    if kind == "4d":
        return r.random((b, h, tq, tk)) > 0.3
    if kind == "pad":  # (b, 1, 1, tk) key padding mask, broadcast over heads and queries
        m = np.ones((b, 1, 1, tk), bool)
        m[1, ..., 3:] = False
        return m
    raise ValueError(kind)


def with_random_biases(layer, shapes, seed=5):
    """``layer`` built on ``shapes`` with non-zero biases (through set_weights, so on any device)."""
    layer.build(shapes)
    r = rng(seed)
    layer.set_weights([r.standard_normal(w.shape) * 0.5 if n.endswith("bias") else w
                       for n, w in zip(layer.params, layer.get_weights())])
    return layer


class FixedDropMHA(L.MultiHeadAttention):
    def forward(self, inputs, training=False, **kw):
        self.rng = np.random.default_rng(123)  # the same dropout mask at every call
        return super().forward(inputs, training, **kw)


TOL = {"float32": 2e-5, "float64": 1e-12}


def mha_case(name, make, dims, key=False, mask=None, causal=False, scores=False, rtol=TOL, atol=TOL):
    """A case on inputs (query, value[, key]) of ``dims`` = (b, tq, tk, dq, dv, dk); the reference
    gives (output, scores) when the layer returns its attention scores."""
    b, tq, tk, dq, dv, dk = dims
    kwargs = dict(attention_mask=mask, use_causal_mask=causal)
    if scores:
        kwargs["return_attention_scores"] = True

    def make_inputs(r):
        q, v, k = r.standard_normal((b, tq, dq)), r.standard_normal((b, tk, dv)), r.standard_normal((b, tk, dk))
        return (q, v, k) if key else (q, v)

    def reference(w, q, v, k=None):
        out, p = ref.mha_forward(q, v, k, w, mask, causal)
        return (out, p) if scores else out

    return LayerCase(name, make, inputs=make_inputs, reference=reference, forward_kwargs=kwargs,
                     rtol=rtol, atol=atol)


def _setting_cases(setting, c):
    # small shapes with output only; larger ones returning the scores too (their gradient included)
    small = (2, 3, 4, 4, 5, 3)
    large = (2, 4, 5, 6, 7, 3)
    qs = [(None, t, d) for t, d in ((small[1], small[3]), (small[2], small[4]), (small[2], small[5]))]
    ql = [(None, t, d) for t, d in ((large[1], large[3]), (large[2], large[4]), (large[2], large[5]))]
    n = 3 if c["key"] else 2
    return [
        mha_case(f"mha-{setting}",
                 lambda dt: with_random_biases(L.MultiHeadAttention(2, 2, value_dim=3, dtype=dt, seed=4),
                                               tuple(qs[:n])),
                 small, c["key"], make_mask(c["mask"], tq=3, tk=4), c["causal"]),
        mha_case(f"mha-{setting}-scores",
                 lambda dt: with_random_biases(L.MultiHeadAttention(2, 3, value_dim=4, dtype=dt, seed=1),
                                               tuple(ql[:n])),
                 large, c["key"], make_mask(c["mask"]), c["causal"], scores=True),
    ]


CASES = [case for setting, c in SETTINGS.items() for case in _setting_cases(setting, c)]
CASES += [
    mha_case("mha-output-shape-tuple-no-bias",
             lambda dt: L.MultiHeadAttention(2, 2, output_shape=(2, 3), use_bias=False, dtype=dt, seed=0),
             (2, 3, 3, 4, 4, 4)),
    # dropout: gradients with a fixed mask in training, the reference (no dropout) in inference
    mha_case("mha-dropout-fixed-mask", lambda dt: FixedDropMHA(2, 2, dropout=0.4, dtype=dt, seed=0),
             (2, 3, 4, 4, 4, 4), rtol={"float32": 2e-5, "float64": 1e-12}, atol={"float32": 2e-5, "float64": 0.0}),
]


def axes_case(name, axes, q_shape, v_shape, key=False, output_shape=None):
    """attention_axes on rank-4 inputs: the reference moves the batch-like axes next to the
    batch, flattens both groups and runs the rank-3 reference (Keras' einsum semantics)."""
    rank = len(q_shape)
    middle = list(range(1, rank - 1))
    attn = middle if axes is None else sorted(a % rank for a in axes)
    perm = (0, *[a for a in middle if a not in attn], *attn, rank - 1)
    n_lead = 1 + len(middle) - len(attn)

    def to3(a):
        a = a.transpose(perm)
        return a.reshape(int(np.prod(a.shape[:n_lead])), -1, a.shape[-1])

    def make(dt):
        layer = L.MultiHeadAttention(2, 2, value_dim=3, attention_axes=axes, output_shape=output_shape, dtype=dt,
                                     seed=3)
        shapes = [(None,) + q_shape[1:], (None,) + v_shape[1:]] + ([(None,) + v_shape[1:-1] + (4,)] if key else [])
        return with_random_biases(layer, shapes)

    def make_inputs(r):
        xs = [r.standard_normal(q_shape), r.standard_normal(v_shape)]
        return tuple(xs + [r.standard_normal(v_shape[:-1] + (4,))]) if key else tuple(xs)

    def reference(w, q, v, k=None):
        out, _ = ref.mha_forward(to3(q), to3(v), None if k is None else to3(k), w)
        moved = out.reshape(tuple(q.shape[a] for a in perm[:-1]) + out.shape[2:])
        inv = tuple(int(i) for i in np.argsort(perm[:-1]))
        return moved.transpose(inv + tuple(range(rank - 1, moved.ndim)))

    return LayerCase(name, make, inputs=make_inputs, reference=reference, rtol=TOL, atol=TOL)


CASES += [
    axes_case("mha-axes-2", (2,), (2, 3, 4, 5), (2, 3, 6, 5)),
    axes_case("mha-axes-1", (1,), (2, 3, 4, 5), (2, 5, 4, 5)),
    axes_case("mha-axes-default-rank4", None, (2, 3, 2, 5), (2, 2, 2, 5)),
    axes_case("mha-axes-neg-key-output-shape", (-2,), (2, 2, 3, 4), (2, 2, 2, 4), key=True, output_shape=(2, 3)),
    axes_case("mha-axes-rank5", (1, 3), (2, 2, 3, 2, 4), (2, 3, 3, 2, 4)),
]


def test_attention_axes_config_and_errors():
    layer = L.MultiHeadAttention(2, 3, attention_axes=(1,))
    assert L.MultiHeadAttention.from_config(layer.get_config()).attention_axes == (1,)
    x = np.zeros((2, 3, 4, 5))
    with pytest.raises(ValueError, match="input masks, use_causal_mask and return_attention_scores need"):
        L.MultiHeadAttention(2, 3, attention_axes=(2,)).forward((x, x), attention_mask=np.ones((2, 4, 4), bool))
    for bad in ((0,), (3,), (1, 1)):
        with pytest.raises(ValueError, match="attention_axes .* must name distinct axes"):
            L.MultiHeadAttention(2, 3, attention_axes=bad).forward((x, x))
    with pytest.raises(ValueError, match="attention_axes must be an int or a tuple of ints"):
        L.MultiHeadAttention(2, 3, attention_axes="time")
    with pytest.raises(ValueError, match="does not match the query .* on the batch axes"):
        L.MultiHeadAttention(2, 3, attention_axes=(2,)).forward((x, np.zeros((2, 4, 4, 5))))


@pytest.mark.parametrize("case", CASES, ids=str)
def test_layer_case(case, device):
    case.check(device)


@pytest.mark.parametrize("case", [c for c in CASES if c.name.endswith("-scores")], ids=str)
def test_output_is_the_same_without_scores(case, device):
    """Inference without the scores gives the output of the case (checked against the reference there)."""
    from nbmodel.backend import get_device

    for dtype in ("float32", "float64"):
        xs = tuple(np.asarray(a, dtype) for a in case.inputs(np.random.default_rng(case.seed)))
        layer = case.make(dtype).to(get_device(device))
        kwargs = dict(case.forward_kwargs)
        y, scores = (layer.device.to_host(a) for a in layer.forward(xs, **kwargs))
        assert y.shape == (2, 4, 6) and scores.shape == (2, 2, 4, 5)
        del kwargs["return_attention_scores"]
        np.testing.assert_array_equal(layer.device.to_host(layer.forward(xs, **kwargs)), y)


@pytest.mark.parametrize("case", ["cross_key", "self", "causal_and_mask", "mask_padding"])
def test_backward_matches_reference(case, float64):
    c = SETTINGS[case]
    q, v, k = inputs()
    layer = L.MultiHeadAttention(2, 3, value_dim=4, output_shape=5, seed=2)
    xs = (q, v, k) if c["key"] else (q, v)
    layer.build(tuple(a.shape for a in xs))
    randomize_biases(layer)
    mask = make_mask(c["mask"])
    layer.forward(xs, training=True, attention_mask=mask, use_causal_mask=c["causal"])
    dy = rng(3).standard_normal((2, 4, 5))
    got = layer.backward(dy)
    assert len(got) == len(xs)
    dq, dv, dk, g = ref.mha_backward(q, v, k if c["key"] else None, layer.params, dy, mask, c["causal"])
    np.testing.assert_allclose(got[0], dq, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(got[1], dv, rtol=1e-10, atol=1e-12)
    if c["key"]:
        np.testing.assert_allclose(got[2], dk, rtol=1e-10, atol=1e-12)
    for name in PARAMS:
        np.testing.assert_allclose(layer.grads[name], g[name], rtol=1e-10, atol=1e-12, err_msg=name)


def test_output_shape_tuple(float64):
    """output_shape=(2, 3): the output and the output kernel shapes (the layer case compares the values)."""
    q, v, _ = inputs(tq=3, tk=3, dq=4, dv=4)
    layer = L.MultiHeadAttention(2, 2, output_shape=(2, 3), use_bias=False, seed=0)
    y = layer.forward((q, v))
    assert y.shape == (2, 3, 2, 3)
    assert layer.params["output_kernel"].shape == (2, 2, 2, 3)


def test_dropout_is_active_in_training_only(float64):
    """The layer case checks the gradients with a fixed mask and inference against the reference."""
    q, v, _ = inputs(tq=3, tk=4, dq=4, dv=4)
    layer = FixedDropMHA(2, 2, dropout=0.4, seed=0)
    a = layer.forward((q, v), training=False)
    e, _ = ref.mha_forward(q, v, None, layer.params)
    np.testing.assert_allclose(a, e, rtol=1e-12)
    b = layer.forward((q, v), training=True)
    assert not np.allclose(b, e)


def test_fully_masked_rows_give_finite_zero_weights():
    q, v, _ = inputs()
    layer = L.MultiHeadAttention(2, 3, seed=1)
    mask = np.zeros((2, 4, 5), bool)
    mask[1, 2, 1] = True
    for dtype in ("float32", "float64"):
        layer.cast(dtype)
        y, p = layer.forward((q, v), training=True, attention_mask=mask, return_attention_scores=True)
        assert np.isfinite(y).all()
        assert (p[0] == 0).all() and (p[1, :, :2] == 0).all()
        np.testing.assert_allclose(p[1, :, 2, 1], 1.0)
        grads = layer.backward(np.ones_like(y))
        assert all(np.isfinite(g).all() for g in grads)
        assert all(np.isfinite(g).all() for g in layer.grads.values())


def test_large_scores_are_stable():
    q, v, _ = inputs()
    layer = L.MultiHeadAttention(1, 3, seed=1)
    layer.build((q.shape, v.shape))
    layer.params["query_kernel"][...] *= 300.0  # scores of several thousands
    y, p = layer.forward((q.astype(np.float32), v.astype(np.float32)), return_attention_scores=True)
    assert np.isfinite(y).all()
    np.testing.assert_allclose(p.sum(-1), 1.0, rtol=1e-5)
    _, ep = ref.mha_forward(q, v, None, layer.params)
    np.testing.assert_allclose(p, ep, atol=1e-5)


def test_inference_keeps_no_probabilities():
    q, v, _ = inputs()
    layer = L.MultiHeadAttention(2, 3, seed=1)
    layer.forward((q, v), training=False)
    assert "probs" not in layer.__dict__.get("_workspaces", {})
    with pytest.raises(RuntimeError, match=layer.name):
        layer.backward(np.ones((2, 4, 6)))


def test_input_gradient_skipped_when_not_needed(float64):
    q, v, k = inputs()
    layer = L.MultiHeadAttention(2, 3, seed=1)
    layer.forward((q, v, k), training=True)
    dy = rng(1).standard_normal((2, 4, 6))
    layer.backward(dy)
    full = {n: g.copy() for n, g in layer.grads.items()}
    layer.input_grad_needed = False
    layer.forward((q, v, k), training=True)
    assert layer.backward(dy) is None
    for n in PARAMS:
        np.testing.assert_allclose(layer.grads[n], full[n], rtol=1e-12)


def test_keyword_key_and_eager_call():
    q, v, k = inputs()
    layer = L.MultiHeadAttention(2, 3, seed=1)
    y = layer(q, v, key=k)
    e, _ = ref.mha_forward(q, v, k, layer.params)
    np.testing.assert_allclose(y, e, rtol=2e-5, atol=2e-5)


def test_functional_model_with_scores(one_thread):
    q_in = L.Input((4, 6))
    v_in = L.Input((5, 7))
    out, scores = L.MultiHeadAttention(2, 3, name="mha")(q_in, v_in, return_attention_scores=True)
    assert out.shape == (None, 4, 6) and scores.shape == (None, 2, 4, 5)
    model = nb.Model(inputs=[q_in, v_in], outputs=[out, scores])
    q, v, _ = inputs()
    y, p = model.predict([q.astype(np.float32), v.astype(np.float32)])
    e, ep = ref.mha_forward(q, v, None, model.get_layer("mha").params)
    np.testing.assert_allclose(y, e, rtol=2e-5, atol=2e-5)
    np.testing.assert_allclose(p, ep, rtol=2e-5, atol=2e-5)


# ------------------------------------------------------------------ errors
def test_bad_inputs_raise_errors_naming_the_layer():
    q, v, k = inputs()
    layer = L.MultiHeadAttention(2, 3, name="att")
    layer.build((q.shape, v.shape, k.shape))
    with pytest.raises(ValueError, match="^att: .*query.*last dimension 6"):
        layer.forward((q[..., :5], v, k))
    with pytest.raises(ValueError, match="^att: .*value.*last dimension 7"):
        layer.forward((q, v[..., :3], k))
    with pytest.raises(ValueError, match="^att: .*key.*last dimension 3"):
        layer.forward((q, v, v))
    with pytest.raises(ValueError, match="^att: .*same length"):
        layer.forward((q, v, k[:, :3]))
    with pytest.raises(ValueError, match="^att: .*batch"):
        layer.forward((q[:1], v, k))
    with pytest.raises(ValueError, match="^att: .*rank 3"):
        layer.forward((q[0], v, k))
    with pytest.raises(ValueError, match="^att: attention_mask .* not broadcastable"):
        layer.forward((q, v, k), attention_mask=np.ones((2, 4, 4), bool))
    with pytest.raises(ValueError, match="^att: attention_mask"):
        layer.forward((q, v, k), attention_mask=np.ones((5,), bool))
    with pytest.raises(ValueError, match="^att: attention_mask .* not broadcastable"):
        layer.forward((q, v, k), attention_mask=np.ones((2, 3, 4, 5), bool))
    with pytest.raises(TypeError, match="^att: attention_mask"):
        layer.forward((q, v, k), attention_mask=np.array([["a"]]))
    with pytest.raises(TypeError, match="^att: "):
        layer.forward((q.astype(str), v, k))
    bad = q.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="^att: .*NaN"):
        layer.forward((bad, v, k))
    with pytest.raises(ValueError, match="^att: expected inputs"):
        layer.forward(q)
    with pytest.raises(ValueError, match="num_heads"):
        L.MultiHeadAttention(0, 3)
    with pytest.raises(ValueError, match="dropout"):
        L.MultiHeadAttention(2, 3, dropout=1.5)


# ------------------------------------------------------------------ PyTorch
def torch_mha(torch, q, v, k, w, h, mask=None, causal=False):
    """Multi-head attention written with torch ops, Keras weight layout."""
    kd = w["query_kernel"].shape[-1]
    Q = torch.einsum("bti,ihd->bhtd", q, w["query_kernel"]) + w["query_bias"][None, :, None, :]
    K = torch.einsum("bti,ihd->bhtd", k, w["key_kernel"]) + w["key_bias"][None, :, None, :]
    V = torch.einsum("bti,ihd->bhtd", v, w["value_kernel"]) + w["value_bias"][None, :, None, :]
    s = (Q / kd ** 0.5) @ K.transpose(-1, -2)
    m = torch.ones_like(s, dtype=torch.bool)
    if mask is not None:
        m = m & torch.as_tensor(mask)[:, None]
    if causal:
        m = m & torch.tril(torch.ones(s.shape[-2:], dtype=torch.bool))
    p = torch.softmax(s.masked_fill(~m, float("-inf")), dim=-1)
    p = torch.nan_to_num(p, nan=0.0)  # fully masked rows
    o = torch.einsum("bhqk,bhkd->bqhd", p, V)
    return torch.einsum("bqhd,hdo->bqo", o, w["output_kernel"]) + w["output_bias"]


@pytest.mark.parametrize("causal", [False, True])
def test_matches_pytorch(causal):
    torch = pytest.importorskip("torch")
    q, v, k = inputs(b=3, tq=5, tk=6, dq=8, dv=8, dk=4)
    mask = rng(4).random((3, 5, 6)) > 0.3
    layer = L.MultiHeadAttention(2, 4, value_dim=3, seed=7)
    layer.build((q.shape, v.shape, k.shape))
    randomize_biases(layer)
    f = np.float32
    y = layer.forward((q.astype(f), v.astype(f), k.astype(f)), training=True, attention_mask=mask,
                      use_causal_mask=causal)
    dy = rng(5).standard_normal(y.shape).astype(f)
    dq, dv, dk = layer.backward(dy)
    tw = {n: torch.tensor(a, requires_grad=True) for n, a in layer.params.items()}
    tq, tv, tk = (torch.tensor(a.astype(f), requires_grad=True) for a in (q, v, k))
    ty = torch_mha(torch, tq, tv, tk, tw, 2, mask, causal)
    ty.backward(torch.from_numpy(dy))
    np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-4, atol=1e-5)
    for got, t in ((dq, tq), (dv, tv), (dk, tk)):
        np.testing.assert_allclose(got, t.grad.numpy(), rtol=1e-4, atol=1e-5)
    for n in PARAMS:
        np.testing.assert_allclose(layer.grads[n], tw[n].grad.numpy(), rtol=1e-4, atol=1e-5, err_msg=n)


def test_fused_self_attention_matches_separate_projections(float64):
    """The one-GEMM QKV path (used by TransformerEncoder) gives the summed input gradient."""
    x = rng().standard_normal((2, 4, 6))
    plain = L.MultiHeadAttention(2, 3, value_dim=4, seed=1)
    plain.build((x.shape, x.shape))
    randomize_biases(plain)
    fused = L.MultiHeadAttention(2, 3, value_dim=4, seed=2)
    fused.build((x.shape, x.shape))
    fused.set_weights(plain.get_weights())
    fused._fuse_self = True
    dy = rng(1).standard_normal((2, 4, 6))
    y1 = plain.forward((x, x), training=True, use_causal_mask=True)
    dq, dv = plain.backward(dy)
    y2 = fused.forward((x, x), training=True, use_causal_mask=True)
    dx, none = fused.backward(dy)
    assert none is None
    np.testing.assert_allclose(y2, y1, rtol=1e-12)
    np.testing.assert_allclose(dx, dq + dv, rtol=1e-10, atol=1e-12)
    for n in PARAMS:
        np.testing.assert_allclose(fused.grads[n], plain.grads[n], rtol=1e-10, atol=1e-12, err_msg=n)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_nan_scores_propagate(dtype):
    """With the per-layer input check off (as inside fit), a NaN must not be hidden by the softmax."""
    from nbmodel.layers.base import finite_checks

    q, v, _ = inputs()
    q = q.astype(dtype)
    q[1, 2, 0] = np.nan
    layer = L.MultiHeadAttention(2, 3, dtype=dtype, seed=1)
    with finite_checks(False):
        y = layer.forward((q, v.astype(dtype)))
    assert np.isnan(y[1, 2]).all()
    assert np.isfinite(y[0]).all()
