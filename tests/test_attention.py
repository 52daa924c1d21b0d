"""MultiHeadAttention: forward/backward against the float64 reference, finite
differences and PyTorch; masks, causal mask, cross-attention, shapes, errors."""
import numpy as np
import pytest

import nbmodel as nb
from nbmodel import layers as L
from nbmodel.kernels.reference import attention as ref
from nbmodel.testing import float64_ops, gradcheck

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


CASES = {
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


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_forward_matches_reference(case, dtype):
    c = CASES[case]
    q, v, k = inputs()
    layer = L.MultiHeadAttention(2, 3, value_dim=4, dtype=dtype, seed=1)
    xs = (q, v, k) if c["key"] else (q, v)
    layer.build(tuple(a.shape for a in xs))
    randomize_biases(layer)
    mask = make_mask(c["mask"])
    y, scores = layer.forward(tuple(a.astype(dtype) for a in xs), attention_mask=mask,
                              use_causal_mask=c["causal"], return_attention_scores=True)
    assert y.dtype == np.dtype(dtype) and scores.dtype == np.dtype(dtype)
    assert y.shape == (2, 4, 6) and scores.shape == (2, 2, 4, 5)
    ey, ep = ref.mha_forward(q, v, k if c["key"] else None, layer.params, mask, c["causal"])
    tol = 2e-5 if dtype == "float32" else 1e-12
    np.testing.assert_allclose(y, ey, rtol=tol, atol=tol)
    np.testing.assert_allclose(scores, ep, rtol=tol, atol=tol)
    # inference without scores gives the same output
    y2 = layer.forward(tuple(a.astype(dtype) for a in xs), attention_mask=mask, use_causal_mask=c["causal"])
    np.testing.assert_allclose(y2, ey, rtol=tol, atol=tol)


@pytest.mark.parametrize("case", ["cross_key", "self", "causal_and_mask", "mask_padding"])
def test_backward_matches_reference(case, float64):
    c = CASES[case]
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


@pytest.mark.parametrize("case", list(CASES))
def test_gradients_finite_differences(case):
    c = CASES[case]
    q, v, k = inputs(tq=3, tk=4, dq=4, dv=5, dk=3)
    xs = (q, v, k) if c["key"] else (q, v)
    layer = L.MultiHeadAttention(2, 2, value_dim=3, seed=4)
    layer.build(tuple(a.shape for a in xs))
    randomize_biases(layer)
    mask = make_mask(c["mask"], tq=3, tk=4)
    gradcheck(layer, xs, forward_kwargs=dict(attention_mask=mask, use_causal_mask=c["causal"]))


def test_gradients_output_shape_tuple_and_no_bias():
    q, v, _ = inputs(tq=3, tk=3, dq=4, dv=4)
    layer = L.MultiHeadAttention(2, 2, output_shape=(2, 3), use_bias=False, seed=0)
    gradcheck(layer, (q, v))
    y = layer.forward((q, v))
    assert y.shape == (2, 3, 2, 3)
    assert layer.params["output_kernel"].shape == (2, 2, 2, 3)


def test_gradient_through_returned_scores():
    q, v, _ = inputs(tq=3, tk=4, dq=4, dv=4)
    layer = L.MultiHeadAttention(2, 2, seed=6)
    gradcheck(layer, (q, v), forward_kwargs=dict(return_attention_scores=True, use_causal_mask=True))


def test_dropout_gradients_with_a_fixed_mask():
    class FixedDropMHA(L.MultiHeadAttention):
        def forward(self, inputs, training=False, **kw):
            self.rng = np.random.default_rng(123)  # the same dropout mask at every call
            return super().forward(inputs, training, **kw)

    q, v, _ = inputs(tq=3, tk=4, dq=4, dv=4)
    layer = FixedDropMHA(2, 2, dropout=0.4, seed=0)
    gradcheck(layer, (q, v))
    # dropout is active in training only
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


def test_kernels_stay_float32():
    from nbmodel.kernels.cpu import attention as K

    b, t, h, kd = 2, 4, 2, 3
    f = np.float32
    r = rng()
    q2 = r.standard_normal((b * t, 5)).astype(f)
    w = r.standard_normal((5, h * kd)).astype(f)
    bias = np.zeros(h * kd, f)
    wo = r.standard_normal((h * kd, 5)).astype(f)
    bo = np.zeros(5, f)
    mask = np.ones((1, 1, t, t), bool)
    u = r.random((b, h, t, t)).astype(f)

    def z(*s):
        return np.zeros(s, f)

    args = (q2, q2, q2, w, bias, w, bias, w, bias, wo, bo, True, f(0.5), b, t, t, h, kd, kd, mask, True,
            True, True, f(0.1), u, z(b * t, h * kd), z(b * t, h * kd), z(b * t, h * kd), z(b, h, t, kd),
            z(b, h, t, kd), z(b, h, t, kd), z(b, h, t, t), z(t, t), z(t, kd), np.zeros(t, np.int32),
            z(b * t, h * kd), z(b * t, 5))
    assert float64_ops(K.mha_forward, *args) == []
    qh, kh, vh, probs, o2 = args[28], args[29], args[30], args[31], args[35]
    bargs = (q2, q2, q2, w, w, w, wo, True, f(0.5), b, t, t, h, kd, kd, f(0.1), u, qh, kh, vh, probs, o2,
             z(b * t, 5), z(b, h, t, t), True, True, z(b * t, h * kd), z(t, kd), z(t, t), z(t, t), z(t, kd),
             z(t, kd), z(t, kd), z(b * t, h * kd), z(b * t, h * kd), z(b * t, h * kd), z(5, h * kd), z(h * kd),
             z(5, h * kd), z(h * kd), z(5, h * kd), z(h * kd), z(h * kd, 5), z(5), z(b * t, 5), z(b * t, 5),
             z(b * t, 5))
    assert float64_ops(K.mha_backward, *bargs) == []


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
