"""Attention family on CUDA: multi-head attention, the Transformer's
feed-forward block and the positional embedding (see
nbmodel/kernels/contract.py and the CPU twin nbmodel/kernels/cpu/attention.py,
whose layouts and order of operations these kernels follow).

Multi-head attention:

- projections: one gemm each (``x2 @ w``; self-attention: the three as one
  gemm with ``wcat``), then ``_split_heads`` adds the bias, applies the
  1/sqrt(key_dim) scale (query) and writes head-major (batch, heads, time,
  dim) arrays, one thread per element;
- the core runs without the CPU's per-(batch, head) matrices: the layer
  hands over (q_len, k_len) workspaces for ONE (batch, head) block (the CPU
  loops over them) and nothing of size (batch, heads, q_len, k_len) but the
  probabilities, so the products are fused into row kernels instead of
  batched GEMMs:

  - ``_softmax_rows``, one thread per query row: the scores q.k, causal
    prefix and mask (a row with no key to attend to is all zeros), max, exp,
    sum and scale, written into ``probs``;
  - ``_weighted_values``, one thread per output element: the probabilities
    (dropped with ``u`` and scaled by 1/(1 - rate) when rate > 0) times the
    values, written straight into o2 (batch*q_len, heads*value_dim), the
    layout of the output gemm;

  with every block kept (``keep``) both run once over all (batch, head)
  blocks; without, ``probs`` holds one block and they run per block;
- backward, with D_i = sum_j P_ij dP_ij (dP the gradient of the kept
  probabilities: dropped and scaled as forward, plus the returned scores'
  gradient) and dS = P * (dP - D) the softmax backward: ``_row_dots`` writes
  D_i, one thread per query row, into the first column of that row's block
  of the query gradient (an output not written yet: no workspace of that
  size exists); ``_key_value_grads``, one thread per key row, sums dV_j and
  dK_j over the queries; ``_query_grads``, one thread per query row, reads
  its D_i and overwrites the block with dQ_i (scaled). dP_ij is a value_dim
  dot product, recomputed by each of the three (nothing stores a
  (q_len, k_len) block per head);
- output projection and the weight gradients: gemms, the bias gradients
  column sums.

``pdrop``, ``otmp``, ``dotmp``, ``dp``, ``tvtmp``, ``tqtmp`` and ``tktmp``
(the CPU's per-block workspaces) are not used.

The feed-forward block is two dense layers (``dense_forward``,
``dense_backward`` of this package). The positional embedding's token
gradient is the embedding family's scatter-add (atomic adds for repeated
ids: their order may vary between runs, the last bits of a float32 sum);
everything else here is deterministic.
"""
from __future__ import annotations

import math

from ..codes import LINEAR
from ..cpu._jit import inline
from .dense import dense_backward, dense_forward
from .embedding import embedding_backward
from .gemm import column_sums, gemm
from .runtime import cuda, kernel, launch_1d, shared_helper, types

_F = (types.float32, types.float64)
_IDS = (types.int64, types.int32)
_I = types.int64
_B = types.boolean
_MASK = types.boolean[:, :, :, ::1]


def _one(t):
    return t[::1]


def _two(t):
    return t[:, ::1]


def _four(t):
    return t[:, :, :, ::1]


# ------------------------------------------------------------ shared pieces
@inline
def _dprob_term(vh, do2, u, dscores, rate, inv_keep, has_dscores, b, h, i, j, r):
    """dP_ij for block (b, h): the gradient reaching P_ij = (dO_i . v_j), dropped and
    scaled as forward, plus the returned scores' gradient; r = b * q_len + i."""
    vd = vh.shape[3]
    c0 = h * vd
    zero = vh.dtype.type(0)
    d = zero
    for e in range(vd):
        d += do2[r, c0 + e] * vh[b, h, j, e]
    if rate > zero:
        d = d * inv_keep if u[b, h, i, j] >= rate else zero
    if has_dscores:
        d += dscores[b, h, i, j]
    return d


@inline
def _dropped_term(p, u, rate, inv_keep, b, h, i, j):
    """P_ij as the values see it: dropped where u < rate, else scaled by 1 / (1 - rate)."""
    zero = u.dtype.type(0)
    if rate > zero:
        return p * inv_keep if u[b, h, i, j] >= rate else zero
    return p


_dprob = shared_helper(_dprob_term)
_dropped = shared_helper(_dropped_term)


@kernel(*[(_two(t), _I, _one(t), _B, t, _four(t)) for t in _F])
def _split_heads(tmp, off, bias, use_bias, scale, out):
    """out[b, h, i, e] = (tmp + bias)[b*t + i, off + h*dim + e] * scale; out (batch, heads, t, dim),
    ``off`` the first column of this projection in tmp (and bias)."""
    n = cuda.grid(1)
    if n < out.size:
        heads = out.shape[1]
        t = out.shape[2]
        dim = out.shape[3]
        e = n % dim
        rest = n // dim
        i = rest % t
        rest //= t
        h = rest % heads
        b = rest // heads
        c = off + h * dim + e
        v = tmp[b * t + i, c]
        if use_bias:
            v += bias[c]
        out[b, h, i, e] = v * scale


@kernel(*[(_four(t), _four(t), _MASK, _B, _B, _I, _four(t)) for t in _F])
def _softmax_rows(qh, kh, mask, has_mask, causal, z0, probs):
    """One thread per query row of the (batch, head) blocks z0, z0 + 1, ... that probs holds:
    probs[.., i, :] = softmax over the allowed keys of qh[b, h, i] . kh[b, h, j] (qh is scaled);
    keys past the causal prefix, masked keys and rows with nothing to attend to give 0."""
    n = cuda.grid(1)
    tq = probs.shape[2]
    if n < probs.shape[0] * probs.shape[1] * tq:
        zl = n // tq
        i = n - zl * tq
        p = probs[zl // probs.shape[1], zl % probs.shape[1], i]
        z = z0 + zl
        heads = qh.shape[1]
        b = z // heads
        h = z - b * heads
        mb = b if mask.shape[0] > 1 else 0
        mh = h if mask.shape[1] > 1 else 0
        tk = kh.shape[2]
        zero = qh.dtype.type(0)
        ninf = qh.dtype.type(-math.inf)
        last = min(i + 1, tk) if causal else tk
        for j in range(last, tk):
            p[j] = zero
        m = ninf
        allowed = 0
        for j in range(last):
            if has_mask and not mask[mb, mh, i, j]:
                s = ninf
            else:
                s = zero
                for e in range(qh.shape[3]):
                    s += qh[b, h, i, e] * kh[b, h, j, e]
                allowed += 1
            p[j] = s
            m = max(m, s)
        if has_mask and allowed == 0:  # nothing to attend to: zeros, not NaN
            for j in range(last):
                p[j] = zero
            return
        tot = zero
        for j in range(last):
            ex = math.exp(p[j] - m)
            p[j] = ex
            tot += ex
        inv = qh.dtype.type(1) / tot
        for j in range(last):
            p[j] *= inv


@kernel(*[(_four(t), _four(t), t, _four(t), _I, _two(t)) for t in _F])
def _weighted_values(probs, u, rate, vh, z0, o2):
    """One thread per element of the (batch, head) blocks z0, ... that probs holds:
    o2[b*tq + i, h*vd + e] = sum_j dropped(P_ij) * vh[b, h, j, e]."""
    n = cuda.grid(1)
    tq = probs.shape[2]
    vd = vh.shape[3]
    if n < probs.shape[0] * probs.shape[1] * tq * vd:
        e = n % vd
        row = n // vd
        zl = row // tq
        i = row - zl * tq
        p = probs[zl // probs.shape[1], zl % probs.shape[1], i]
        z = z0 + zl
        heads = vh.shape[1]
        b = z // heads
        h = z - b * heads
        one = vh.dtype.type(1)
        inv_keep = one / (one - rate)
        acc = one - one
        for j in range(vh.shape[2]):
            acc += _dropped(p[j], u, rate, inv_keep, b, h, i, j) * vh[b, h, j, e]
        o2[b * tq + i, h * vd + e] = acc


@kernel(*[(_four(t), _four(t), t, _four(t), _two(t), _four(t), _B, _two(t), _I, _I) for t in _F])
def _row_dots(probs, u, rate, vh, do2, dscores, has_dscores, gq, qo, kd):
    """One thread per query row (b, h, i): D_i = sum_j P_ij dP_ij, kept in gq[b*tq + i, qo + h*kd]
    (the first column of the row's query-gradient block) for the two kernels that follow."""
    n = cuda.grid(1)
    heads = probs.shape[1]
    tq = probs.shape[2]
    if n < probs.shape[0] * heads * tq:
        z = n // tq
        i = n - z * tq
        b = z // heads
        h = z - b * heads
        r = b * tq + i
        one = vh.dtype.type(1)
        inv_keep = one / (one - rate)
        dot = one - one
        for j in range(probs.shape[3]):
            dot += probs[b, h, i, j] * _dprob(vh, do2, u, dscores, rate, inv_keep, has_dscores, b, h, i, j, r)
        gq[r, qo + h * kd] = dot


@kernel(*[(_four(t), _four(t), _four(t), t, _four(t), _two(t), _four(t), _B, _two(t), _I, _two(t), _I,
           _two(t), _I) for t in _F])
def _key_value_grads(qh, probs, u, rate, vh, do2, dscores, has_dscores, gq, qo, gk, ko, gv, vo):
    """One thread per key row (b, h, j): gv[b*tk + j, vo + h*vd + e] = sum_i dropped(P_ij) dO_ie
    and gk[b*tk + j, ko + h*kd + e] = sum_i dS_ij qh[b, h, i, e], dS_ij = P_ij (dP_ij - D_i)."""
    n = cuda.grid(1)
    heads = probs.shape[1]
    tq = probs.shape[2]
    tk = probs.shape[3]
    if n < probs.shape[0] * heads * tk:
        z = n // tk
        j = n - z * tk
        b = z // heads
        h = z - b * heads
        kd = qh.shape[3]
        vd = vh.shape[3]
        rk = b * tk + j
        ck = ko + h * kd
        cv = vo + h * vd
        one = vh.dtype.type(1)
        zero = one - one
        inv_keep = one / (one - rate)
        for e in range(kd):
            gk[rk, ck + e] = zero
        for e in range(vd):
            gv[rk, cv + e] = zero
        for i in range(tq):
            r = b * tq + i
            p = probs[b, h, i, j]
            pd = _dropped(p, u, rate, inv_keep, b, h, i, j)
            for e in range(vd):
                gv[rk, cv + e] += pd * do2[r, h * vd + e]
            ds = p * (_dprob(vh, do2, u, dscores, rate, inv_keep, has_dscores, b, h, i, j, r) - gq[r, qo + h * kd])
            for e in range(kd):
                gk[rk, ck + e] += ds * qh[b, h, i, e]


@kernel(*[(_four(t), _four(t), _four(t), t, _four(t), _two(t), _four(t), _B, t, _two(t), _I) for t in _F])
def _query_grads(kh, probs, u, rate, vh, do2, dscores, has_dscores, scale, gq, qo):
    """One thread per query row (b, h, i): gq[b*tq + i, qo + h*kd + e] = scale * sum_j dS_ij kh[b, h, j, e],
    D_i read first from the block's first column (``_row_dots``)."""
    n = cuda.grid(1)
    heads = probs.shape[1]
    tq = probs.shape[2]
    if n < probs.shape[0] * heads * tq:
        z = n // tq
        i = n - z * tq
        b = z // heads
        h = z - b * heads
        kd = kh.shape[3]
        r = b * tq + i
        c0 = qo + h * kd
        one = vh.dtype.type(1)
        zero = one - one
        inv_keep = one / (one - rate)
        dot = gq[r, c0]
        for e in range(kd):
            gq[r, c0 + e] = zero
        for j in range(probs.shape[3]):
            ds = probs[b, h, i, j] * (_dprob(vh, do2, u, dscores, rate, inv_keep, has_dscores, b, h, i, j, r) - dot)
            for e in range(kd):
                gq[r, c0 + e] += ds * kh[b, h, j, e]
        for e in range(kd):
            gq[r, c0 + e] *= scale


# ------------------------------------------------------------ attention pieces
def _heads(tmp, off, bias, use_bias, scale, out):
    """out = (tmp + bias)[:, off:off + heads*dim] * scale, head-major (batch, heads, t, dim)."""
    _split_heads[launch_1d(out.size)](tmp, off, bias, bool(use_bias), out.dtype.type(scale), out)


def _attend_forward(qh, kh, vh, mask, has_mask, causal, keep, rate, u, probs, o2):
    """Masked softmax of the scores into probs and the weighted values into o2, over every
    (batch, head) block at once when probs keeps them all, else one block at a time."""
    batch, heads, tq, _ = qh.shape
    rate = o2.dtype.type(rate)
    rows = probs.shape[0] * probs.shape[1] * tq
    for z0 in range(1) if keep else range(batch * heads):
        _softmax_rows[launch_1d(rows)](qh, kh, mask, bool(has_mask), bool(causal), z0, probs)
        _weighted_values[launch_1d(rows * vh.shape[3])](probs, u, rate, vh, z0, o2)


def _output_projection(o2, wo, bo, use_bias, out):
    if use_bias:
        dense_forward(o2, wo, bo, LINEAR, out, out)
    else:
        gemm(o2, wo, out)


def _attend_backward(qh, kh, vh, probs, rate, u, do2, dscores, has_dscores, scale, gq, qo, gk, ko, gv, vo):
    """Gradients of the core: the projections' gradients (before bias) into gq, gk, gv at
    column offsets qo, ko, vo (one array when the projections are fused)."""
    batch, heads, tq, kd = qh.shape
    tk = kh.shape[2]
    dt = do2.dtype.type
    rate = dt(rate)
    has_dscores = bool(has_dscores)
    rows = batch * heads * tq
    _row_dots[launch_1d(rows)](probs, u, rate, vh, do2, dscores, has_dscores, gq, qo, kd)
    _key_value_grads[launch_1d(batch * heads * tk)](qh, probs, u, rate, vh, do2, dscores, has_dscores, gq, qo,
                                                    gk, ko, gv, vo)
    _query_grads[launch_1d(rows)](kh, probs, u, rate, vh, do2, dscores, has_dscores, dt(scale), gq, qo)


def _output_backward(o2, wo, dout, use_bias, dwo, dbo, do2):
    gemm(o2, dout, dwo, trans_a=True)
    if use_bias:
        column_sums(dout, dbo)
    gemm(dout, wo, do2, trans_b=True)


def _project_backward(x, w, g, use_bias, need_dx, dw, db, dx):
    """dw = x.T @ g, db = column sums of g, dx = g @ w.T (when need_dx) for one projection."""
    gemm(x, g, dw, trans_a=True)
    if use_bias:
        column_sums(g, db)
    if need_dx:
        gemm(g, w, dx, trans_b=True)


# ------------------------------------------------------------ launchers
def mha_forward(q2, k2, v2, wq, bq, wk, bk, wv, bv, wo, bo, use_bias, scale, batch, tq, tk,
                heads, kd, vd, mask, has_mask, causal, keep, rate, u,
                qtmp, ktmp, vtmp, qh, kh, vh, probs, pdrop, otmp, o2, out):
    """Forward of multi-head attention on flattened inputs (shapes as the CPU twin's); probs
    holds every (batch, head) block when ``keep``, else one."""
    gemm(q2, wq, qtmp)
    _heads(qtmp, 0, bq, use_bias, scale, qh)
    gemm(k2, wk, ktmp)
    _heads(ktmp, 0, bk, use_bias, 1, kh)
    gemm(v2, wv, vtmp)
    _heads(vtmp, 0, bv, use_bias, 1, vh)
    _attend_forward(qh, kh, vh, mask, has_mask, causal, keep, rate, u, probs, o2)
    _output_projection(o2, wo, bo, use_bias, out)


def mha_self_forward(x2, wcat, bcat, wo, bo, use_bias, scale, batch, t, heads, kd, vd, mask, has_mask,
                     causal, keep, rate, u, qkv, qh, kh, vh, probs, pdrop, otmp, o2, out):
    """mha_forward for query = key = value = x2: the three projections as one gemm with
    wcat = [wq | wk | wv]."""
    hk = heads * kd
    gemm(x2, wcat, qkv)
    _heads(qkv, 0, bcat, use_bias, scale, qh)
    _heads(qkv, hk, bcat, use_bias, 1, kh)
    _heads(qkv, 2 * hk, bcat, use_bias, 1, vh)
    _attend_forward(qh, kh, vh, mask, has_mask, causal, keep, rate, u, probs, o2)
    _output_projection(o2, wo, bo, use_bias, out)


def mha_backward(q2, k2, v2, wq, wk, wv, wo, use_bias, scale, batch, tq, tk, heads, kd, vd,
                 rate, u, qh, kh, vh, probs, o2, dout, dscores, has_dscores, need_dx,
                 do2, dotmp, dp, pdrop, tvtmp, tqtmp, tktmp, dq2, dk2, dv2,
                 dwq, dbq, dwk, dbk, dwv, dbv, dwo, dbo, dxq, dxk, dxv):
    """Gradients of mha_forward (every probability block kept) for the summed loss."""
    _output_backward(o2, wo, dout, use_bias, dwo, dbo, do2)
    _attend_backward(qh, kh, vh, probs, rate, u, do2, dscores, has_dscores, scale, dq2, 0, dk2, 0, dv2, 0)
    _project_backward(q2, wq, dq2, use_bias, need_dx, dwq, dbq, dxq)
    _project_backward(k2, wk, dk2, use_bias, need_dx, dwk, dbk, dxk)
    _project_backward(v2, wv, dv2, use_bias, need_dx, dwv, dbv, dxv)


def mha_self_backward(x2, wcat, wo, use_bias, scale, batch, t, heads, kd, vd, rate, u, qh, kh, vh, probs,
                      o2, dout, dscores, has_dscores, need_dx, do2, dotmp, dp, pdrop, tvtmp, tqtmp, tktmp,
                      g, dwcat, dbcat, dwo, dbo, dx):
    """Gradients of mha_self_forward: g (n, 2*heads*kd + heads*vd) holds [dQ | dK | dV], so
    dwcat, dbcat and dx (the sum over the three uses of x2) are one gemm or column sum each."""
    hk = heads * kd
    _output_backward(o2, wo, dout, use_bias, dwo, dbo, do2)
    _attend_backward(qh, kh, vh, probs, rate, u, do2, dscores, has_dscores, scale, g, 0, g, hk, g, 2 * hk)
    _project_backward(x2, wcat, g, use_bias, need_dx, dwcat, dbcat, dx)


def ffn_forward(x, w1, b1, w2, b2, code, keep_pre, pre, hid, out):
    """out = act(x @ w1 + b1) @ w2 + b2; pre = x @ w1 + b1 kept for the activations whose
    gradient needs it (GELU, SILU: the set the layer's keep_pre names)."""
    dense_forward(x, w1, b1, code, pre, hid)
    dense_forward(hid, w2, b2, LINEAR, out, out)


def ffn_backward(x, w1, w2, pre, hid, dout, code, need_dx, dz, dw1, db1, dw2, db2, dx):
    """Gradients of ffn_forward; dz (n, ff) a workspace (the hidden layer's gradient)."""
    gemm(hid, dout, dw2, trans_a=True)
    column_sums(dout, db2)
    gemm(dout, w2, dz, trans_b=True)
    dense_backward(x, w1, pre, hid, dz, code, need_dx, dz, dw1, db1, dx)  # dz *= act' in place


# ------------------------------------------------------------ positional embedding
@kernel(*[(i[:, ::1], _two(t), _two(t), t[:, :, ::1]) for i in _IDS for t in _F])
def _pos_embed(ids, tok, pos, out):
    """out[b, i, e] = tok[ids[b, i], e] + pos[i, e], one thread per element."""
    n = cuda.grid(1)
    if n < out.size:
        d = out.shape[2]
        e = n % d
        bi = n // d
        i = bi % out.shape[1]
        b = bi // out.shape[1]
        out[b, i, e] = tok[ids[b, i], e] + pos[i, e]


@kernel(*[(t[:, :, ::1], _two(t)) for t in _F])
def _pos_grad(dy, dpos):
    """dpos[i, e] = sum_b dy[b, i, e] for the positions used, 0 beyond; one thread per element."""
    n = cuda.grid(1)
    if n < dpos.size:
        d = dpos.shape[1]
        i = n // d
        e = n - i * d
        acc = dpos.dtype.type(0)
        if i < dy.shape[1]:
            for b in range(dy.shape[0]):
                acc += dy[b, i, e]
        dpos[i, e] = acc


def pos_embed_forward(ids, tok, pos, out):
    """out[b, t] = tok[ids[b, t]] + pos[t]; ids (batch, t) are valid (checked by the layer)."""
    if out.size:
        _pos_embed[launch_1d(out.size)](ids, tok, pos, out)


def pos_embed_backward(ids, dy, dtok, dpos):
    """dtok = scatter-add of dy into the used token rows (repeats add), dpos = dy summed over the batch."""
    embedding_backward(ids.reshape(ids.size), dy.reshape(ids.size, dtok.shape[1]), dtok)
    if dpos.size:
        _pos_grad[launch_1d(dpos.size)](dy, dpos)
