"""Reference multi-head attention, transformer encoder and positional
embedding (float64 NumPy, written for clarity with einsum).

Shapes follow the layers: query (b, tq, dq), value (b, tk, dv), key (b, tk, dk);
query_kernel (dq, h, kd), key_kernel (dk, h, kd), value_kernel (dv, h, vd),
output_kernel (h, vd, dout). Masks are boolean, broadcastable to (b, h, tq, tk),
True = attend.
"""
import numpy as np

from .dense import activation
from .norm import layer_norm_forward


def full_mask(b, h, tq, tk, attention_mask=None, use_causal_mask=False):
    """The boolean (b, h, tq, tk) mask; a 3-D mask is (b, tq, tk) like Keras."""
    m = np.ones((b, h, tq, tk), bool)
    if attention_mask is not None:
        am = np.asarray(attention_mask).astype(bool)
        if am.ndim == 3:
            am = am[:, None]
        m &= np.broadcast_to(am, m.shape)
    if use_causal_mask:
        m &= np.tril(np.ones((tq, tk), bool))
    return m


def mha_forward(query, value, key, w, attention_mask=None, use_causal_mask=False):
    """(output, probabilities). ``w``: dict of the eight params (biases may be absent)."""
    q_in = np.asarray(query, np.float64)
    v_in = np.asarray(value, np.float64)
    k_in = v_in if key is None else np.asarray(key, np.float64)
    w = {k: np.asarray(a, np.float64) for k, a in w.items()}
    kd = w["query_kernel"].shape[-1]
    q = np.einsum("bti,ihd->bthd", q_in, w["query_kernel"]) + w.get("query_bias", 0.0)
    k = np.einsum("bti,ihd->bthd", k_in, w["key_kernel"]) + w.get("key_bias", 0.0)
    v = np.einsum("bti,ihd->bthd", v_in, w["value_kernel"]) + w.get("value_bias", 0.0)
    q = q / np.sqrt(kd)
    s = np.einsum("bqhd,bkhd->bhqk", q, k)
    b, h, tq, tk = s.shape
    m = full_mask(b, h, tq, tk, attention_mask, use_causal_mask)
    s = np.where(m, s, -np.inf)
    mx = s.max(axis=-1, keepdims=True)
    mx = np.where(np.isfinite(mx), mx, 0.0)
    e = np.where(m, np.exp(s - mx), 0.0)
    tot = e.sum(axis=-1, keepdims=True)
    p = np.where(tot > 0, e / np.where(tot > 0, tot, 1.0), 0.0)  # fully masked row -> zeros
    o = np.einsum("bhqk,bkhd->bqhd", p, v)
    out = np.einsum("bqhd,hdo->bqo", o, w["output_kernel"].reshape(h, v.shape[-1], -1))
    out = out + np.reshape(w.get("output_bias", 0.0), -1)  # a tuple output_shape's bias is flattened too
    out = out.reshape(out.shape[:2] + w["output_kernel"].shape[2:])
    return out, p


def mha_backward(query, value, key, w, dout, attention_mask=None, use_causal_mask=False):
    """Gradients of mha_forward's output: (dquery, dvalue, dkey or None, dict of param grads).

    When key is None the key gradient is added into dvalue (key = value).
    """
    q_in = np.asarray(query, np.float64)
    v_in = np.asarray(value, np.float64)
    k_in = v_in if key is None else np.asarray(key, np.float64)
    w = {k: np.asarray(a, np.float64) for k, a in w.items()}
    kd = w["query_kernel"].shape[-1]
    h = w["query_kernel"].shape[1]
    vd = w["value_kernel"].shape[-1]
    wo = w["output_kernel"].reshape(h, vd, -1)
    dout = np.asarray(dout, np.float64).reshape(dout.shape[:2] + (-1,))
    scale = 1.0 / np.sqrt(kd)
    q = (np.einsum("bti,ihd->bthd", q_in, w["query_kernel"]) + w.get("query_bias", 0.0)) * scale
    k = np.einsum("bti,ihd->bthd", k_in, w["key_kernel"]) + w.get("key_bias", 0.0)
    v = np.einsum("bti,ihd->bthd", v_in, w["value_kernel"]) + w.get("value_bias", 0.0)
    _, p = mha_forward(q_in, v_in, k_in, w, attention_mask, use_causal_mask)
    o = np.einsum("bhqk,bkhd->bqhd", p, v)
    g = {}
    g["output_kernel"] = np.einsum("bqhd,bqo->hdo", o, dout).reshape(w["output_kernel"].shape)
    g["output_bias"] = dout.sum(axis=(0, 1)).reshape(w["output_kernel"].shape[2:])
    do = np.einsum("bqo,hdo->bqhd", dout, wo)
    dp = np.einsum("bqhd,bkhd->bhqk", do, v)
    dv = np.einsum("bhqk,bqhd->bkhd", p, do)
    ds = p * (dp - (dp * p).sum(axis=-1, keepdims=True))
    dqs = np.einsum("bhqk,bkhd->bqhd", ds, k)
    dk = np.einsum("bhqk,bqhd->bkhd", ds, q)
    dq = dqs * scale
    g["query_kernel"] = np.einsum("bti,bthd->ihd", q_in, dq)
    g["query_bias"] = dq.sum(axis=(0, 1))
    g["key_kernel"] = np.einsum("bti,bthd->ihd", k_in, dk)
    g["key_bias"] = dk.sum(axis=(0, 1))
    g["value_kernel"] = np.einsum("bti,bthd->ihd", v_in, dv)
    g["value_bias"] = dv.sum(axis=(0, 1))
    dq_in = np.einsum("bthd,ihd->bti", dq, w["query_kernel"])
    dk_in = np.einsum("bthd,ihd->bti", dk, w["key_kernel"])
    dv_in = np.einsum("bthd,ihd->bti", dv, w["value_kernel"])
    if key is None:
        return dq_in, dv_in + dk_in, None, g
    return dq_in, dv_in, dk_in, g


def transformer_encoder(x, w, activation_name="relu", norm_first=False, epsilon=1e-5,
                        use_causal_mask=False, attention_mask=None):
    """Post-norm: LN1(x + MHA(x)), then LN2(h + FF(h)); pre-norm: x + MHA(LN1(x)), h + FF(LN2(h)).

    ``w`` has keys attention/<param>, norm1/gamma, norm1/beta, norm2/..., dense1/kernel, ... .
    """
    x = np.asarray(x, np.float64)
    att = {k.split("/", 1)[1]: v for k, v in w.items() if k.startswith("attention/")}

    def ln(name, a):
        return layer_norm_forward(a, w[f"{name}/gamma"], w[f"{name}/beta"], epsilon)

    def ff(a):
        hdn = activation(activation_name, a @ w["dense1/kernel"] + w["dense1/bias"])
        return hdn @ w["dense2/kernel"] + w["dense2/bias"]

    if norm_first:
        a = ln("norm1", x)
        h = x + mha_forward(a, a, None, att, attention_mask, use_causal_mask)[0]
        return h + ff(ln("norm2", h))
    h = ln("norm1", x + mha_forward(x, x, None, att, attention_mask, use_causal_mask)[0])
    return ln("norm2", h + ff(h))


def pos_embed_forward(ids, token_embeddings, position_embeddings):
    ids = np.asarray(ids)
    t = ids.shape[1]
    return (np.asarray(token_embeddings, np.float64)[ids]
            + np.asarray(position_embeddings, np.float64)[None, :t])


def input_masks(query_mask=None, value_mask=None, key_mask=None):
    """Keras 3: the inputs' masks (b, t) as one (b, tq, tk) attention mask (query rows AND
    value columns AND key columns); None when no mask is given."""
    out = None
    for m, axis in ((query_mask, -1), (value_mask, -2), (key_mask, -2)):
        if m is not None:
            e = np.expand_dims(np.asarray(m, bool), axis)
            out = e if out is None else out & e
    return out
