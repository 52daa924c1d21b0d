"""Multi-head attention and positional embedding kernels.

Layout. The projections are GEMMs over the flattened tokens: ``x (n, d) @
W (d, heads*dim)``; one pass after each GEMM adds the bias, applies the
1/sqrt(key_dim) scale (query only) and transposes to head-major ``(batch,
heads, time, dim)`` so that every (batch, head) block is a contiguous matrix
for the BLAS products of the attention core:

    S = Qs K^T           (BLAS, per (batch, head))
    P = softmax(mask(S)) (one fused pass per row: mask, max, exp, sum, scale)
    O = P V              (BLAS, written straight into the (n, heads*value_dim)
                          layout the output GEMM reads)

Backward mirrors it with the softmax backward fused into one pass per row.
The probabilities of every block are kept only when backward or the caller
needs them (``keep``); in inference one (q_len, k_len) block is reused.

A row with no key to attend to gives probabilities of zero (not NaN), so its
output is the output bias. Masks are (mask_batch, mask_heads, q_len, k_len)
with mask_batch in {1, batch} and mask_heads in {1, heads} (broadcast by
indexing, never materialized per head).

Threads: the projections are big GEMMs and run with BLAS's own threads; the
(batch, head) blocks of the attention core are spread over numba's threads
(``prange``, each block with workspaces of its own) with BLAS single-threaded
inside (``config.kernel_blas_serial``), so every thread owns whole small
products and one pool runs at a time. The feed-forward backward splits the
same way where it can: its row-wise part (dz, the activation gradient, dx)
in blocks of rows, one per thread, then the weight gradients as threaded
GEMMs (``ffn_backward``). The launchers (``mha_forward``, ``ffn_backward``,
...) are Python functions that pick the schedule and call the jitted stages.
"""
import numpy as np

from ...config import get_num_threads, kernel_blas_serial
from ._blas import gemm
from ._jit import PAR_MIN_ELEMENTWISE, inline, jit, pjit, prange
from ._math import exp_store, row_dot, row_max, scale_row
from .activations import act_grad_sum_rows, bias_act_rows

# The feed-forward backward's row blocks (ffn_backward): at least this many rows per
# block and this many multiply-adds in each of its GEMMs (rows x d x ff). Not measured
# below the reference shapes (1024 x 128 x 512, 2^26); a parallel region costs
# 60-100 us here, a single-threaded GEMM of 2^22 multiply-adds about 25 us.
FFN_MIN_BLOCK_ROWS = 16
FFN_PAR_MIN = 1 << 22


@inline
def _copy_block(src, s_row, s_col, dst, d_row, d_col, rows, width, scale):
    """dst[d_row + i, d_col + e] = src[s_row + i, s_col + e] * scale for i < rows, e < width.

    Between a head's block and its columns of the flattened tokens. 2-D
    C-contiguous arrays, flat unsigned indices: with 2-D indexing at computed
    column offsets the loop did not vectorize (6x slower for 32 columns).
    """
    sf = src.reshape(-1)
    df = dst.reshape(-1)
    sw = src.shape[1]
    dw = dst.shape[1]
    for i in range(rows):
        s = (s_row + i) * sw + s_col
        d = (d_row + i) * dw + d_col
        for e in range(width):
            df[np.uint64(d + e)] = sf[np.uint64(s + e)] * scale


@jit
def _split_heads(tmp, off, b, use_bias, scale, batch, t, heads, dim, out):
    """out[b, h, i, :] = (tmp + b)[b*t + i, off + h*dim : off + (h+1)*dim] * scale.

    tmp is the output of a projection GEMM; ``off`` picks the column block
    of one projection when Q, K and V come from one fused GEMM. Flat unsigned
    indices, as in _copy_block (150 -> 24 us for one of the transformer's).
    """
    tf = tmp.reshape(-1)
    of = out.reshape(-1)
    width = tmp.shape[1]
    for bb in range(batch):
        for h in range(heads):
            c0 = off + h * dim
            for i in range(t):
                s = (bb * t + i) * width + c0
                d = ((bb * heads + h) * t + i) * dim
                if use_bias:
                    for e in range(dim):
                        of[np.uint64(d + e)] = (tf[np.uint64(s + e)] + b[np.uint64(c0 + e)]) * scale
                else:
                    for e in range(dim):
                        of[np.uint64(d + e)] = tf[np.uint64(s + e)] * scale


@jit
def _softmax_block(s, mask, has_mask, mb, mh, causal):
    """In place masked softmax of the rows of one (q_len, k_len) block.

    Causal rows are the prefix j <= i; masked entries become -inf before the
    max so they give exp = 0; a row with nothing to attend to is all zeros.
    A NaN score makes its row NaN. Max, exp (float32: _math.fast_exp, no libm
    call) and normalization are the shared softmax pieces of _math.py.
    """
    tq, tk = s.shape
    one = s.dtype.type(1)
    zero = one - one
    ninf = s.dtype.type(-np.inf)
    for i in range(tq):
        n = min(i + 1, tk) if causal else tk
        for j in range(n, tk):
            s[i, j] = zero
        if has_mask:
            cnt = 0
            for j in range(n):
                if mask[mb, mh, i, j]:
                    cnt += 1
                else:
                    s[i, j] = ninf
            if cnt == 0:
                for j in range(n):
                    s[i, j] = zero  # nothing to attend to: zeros, not NaN
                continue
        row = s[i, :n]
        tot = exp_store(row, row_max(row), row)
        scale_row(row, one / tot)


@jit
def _attend_block(qh, kh, vh, mask, has_mask, causal, rate, u, b, h, p, pdrop, otmp, o2):
    """Attention core of one (batch b, head h) block: S = Qs K^T into p, masked
    softmax, O = P V written into o2 (batch*tq, heads*vd) at the head's column
    block. pdrop (tq, tk) and otmp (tq, vd) are the block's workspaces."""
    tq = qh.shape[2]
    tk = kh.shape[2]
    vd = vh.shape[3]
    one = o2.dtype.type(1)
    zero = one - one
    mb = b if mask.shape[0] > 1 else 0
    mh = h if mask.shape[1] > 1 else 0
    gemm(qh[b, h], kh[b, h].T, p)
    _softmax_block(p, mask, has_mask, mb, mh, causal)
    if rate > zero:
        inv_keep = one / (one - rate)
        ub = u[b, h]
        for i in range(tq):
            for j in range(tk):
                pdrop[i, j] = p[i, j] * inv_keep if ub[i, j] >= rate else zero
        gemm(pdrop, vh[b, h], otmp)
    else:
        gemm(p, vh[b, h], otmp)
    _copy_block(otmp, 0, 0, o2, b * tq, h * vd, tq, vd, one)


@jit
def _attend_forward(qh, kh, vh, mask, has_mask, causal, keep, rate, u, probs, pdrop, otmp, o2):
    """The attention core over every (batch, head) block, serially, reusing one set of
    workspaces (probs[0, 0] for every block when not keep)."""
    batch, heads = qh.shape[0], qh.shape[1]
    for b in range(batch):
        for h in range(heads):
            p = probs[b, h] if keep else probs[0, 0]
            _attend_block(qh, kh, vh, mask, has_mask, causal, rate, u, b, h, p, pdrop, otmp, o2)


@pjit
def _attend_forward_par(qh, kh, vh, mask, has_mask, causal, keep, rate, u, probs, o2):
    """_attend_forward with the (batch, head) blocks spread over threads; each block
    has workspaces of its own (BLAS single-threaded inside: the launcher's job)."""
    batch, heads, tq, _ = qh.shape
    tk = kh.shape[2]
    for bh in prange(batch * heads):
        b = bh // heads
        h = bh - b * heads
        p = probs[b, h] if keep else np.empty((tq, tk), o2.dtype)
        pdrop = np.empty((tq, tk) if rate > 0 else (1, 1), o2.dtype)
        otmp = np.empty((tq, vh.shape[3]), o2.dtype)
        _attend_block(qh, kh, vh, mask, has_mask, causal, rate, u, b, h, p, pdrop, otmp, o2)


def _attend(qh, kh, vh, mask, has_mask, causal, keep, rate, u, probs, pdrop, otmp, o2):
    """The attention core, over threads when there are blocks enough for each."""
    if _core_threads(qh, kh):
        with kernel_blas_serial():
            _attend_forward_par(qh, kh, vh, mask, has_mask, causal, keep, rate, u, probs, o2)
    else:
        _attend_forward(qh, kh, vh, mask, has_mask, causal, keep, rate, u, probs, pdrop, otmp, o2)


def _core_threads(qh, kh):
    """True when the (batch, head) blocks are worth spreading over threads: more than
    one thread, a block for each, and enough score elements (PAR_MIN_ELEMENTWISE)
    to repay a parallel region."""
    nt = get_num_threads()
    blocks = qh.shape[0] * qh.shape[1]
    return nt > 1 and blocks >= nt and blocks * qh.shape[2] * kh.shape[2] >= PAR_MIN_ELEMENTWISE


@jit
def _output_projection(o2, wo, bo, use_bias, out):
    gemm(o2, wo, out)
    if use_bias:
        n, m = out.shape
        for r in range(n):
            for c in range(m):
                out[r, c] += bo[c]


@jit
def _project_heads(q2, k2, v2, wq, bq, wk, bk, wv, bv, use_bias, scale, batch, tq, tk, heads, kd, vd,
                   qtmp, ktmp, vtmp, qh, kh, vh):
    one = qh.dtype.type(1)
    gemm(q2, wq, qtmp)
    _split_heads(qtmp, 0, bq, use_bias, scale, batch, tq, heads, kd, qh)
    gemm(k2, wk, ktmp)
    _split_heads(ktmp, 0, bk, use_bias, one, batch, tk, heads, kd, kh)
    gemm(v2, wv, vtmp)
    _split_heads(vtmp, 0, bv, use_bias, one, batch, tk, heads, vd, vh)


def mha_forward(q2, k2, v2, wq, bq, wk, bk, wv, bv, wo, bo, use_bias, scale, batch, tq, tk,
                heads, kd, vd, mask, has_mask, causal, keep, rate, u,
                qtmp, ktmp, vtmp, qh, kh, vh, probs, pdrop, otmp, o2, out):
    """Forward of multi-head attention on flattened inputs.

    q2 (batch*tq, dq), k2 (batch*tk, dk), v2 (batch*tk, dv); w* are the kernels
    reshaped to 2-D ((d, heads*dim), output (heads*vd, dout)); b* the biases
    flattened. Writes qh/kh/vh (head-major projections, qh scaled), probs
    ((batch, heads, tq, tk) when keep, else one (1, 1, tq, tk) block), o2
    ((batch*tq, heads*vd), the attention output before the output GEMM) and
    out (batch*tq, dout).
    Dropout (rate > 0) multiplies the probabilities by
    (u >= rate) / (1 - rate), u uniform of probs' shape; pdrop is a (tq, tk)
    workspace.
    """
    _project_heads(q2, k2, v2, wq, bq, wk, bk, wv, bv, use_bias, scale, batch, tq, tk, heads, kd, vd,
                   qtmp, ktmp, vtmp, qh, kh, vh)
    _attend(qh, kh, vh, mask, has_mask, causal, keep, rate, u, probs, pdrop, otmp, o2)
    _output_projection(o2, wo, bo, use_bias, out)


@jit
def _project_self(x2, wcat, bcat, use_bias, scale, batch, t, heads, kd, vd, qkv, qh, kh, vh):
    one = qh.dtype.type(1)
    hk = heads * kd
    gemm(x2, wcat, qkv)
    _split_heads(qkv, 0, bcat, use_bias, scale, batch, t, heads, kd, qh)
    _split_heads(qkv, hk, bcat, use_bias, one, batch, t, heads, kd, kh)
    _split_heads(qkv, 2 * hk, bcat, use_bias, one, batch, t, heads, vd, vh)


def mha_self_forward(x2, wcat, bcat, wo, bo, use_bias, scale, batch, t, heads, kd, vd, mask, has_mask,
                     causal, keep, rate, u, qkv, qh, kh, vh, probs, pdrop, otmp, o2, out):
    """mha_forward for self-attention (query = key = value = x2): one GEMM with
    wcat = [wq | wk | wv] (d, 2*heads*kd + heads*vd), biases bcat likewise."""
    _project_self(x2, wcat, bcat, use_bias, scale, batch, t, heads, kd, vd, qkv, qh, kh, vh)
    _attend(qh, kh, vh, mask, has_mask, causal, keep, rate, u, probs, pdrop, otmp, o2)
    _output_projection(o2, wo, bo, use_bias, out)


@jit
def _project_backward(x, w, g, use_bias, need_dx, dw, db, dx):
    """dw = x^T g, db = sum_rows(g), dx = g w^T for one projection GEMM."""
    gemm(x.T, g, dw)
    if use_bias:
        db[:] = 0
        n, m = g.shape
        for r in range(n):
            for c in range(m):
                db[c] += g[r, c]
    if need_dx:
        gemm(g, w.T, dx)


@jit
def _output_backward(o2, wo, dout, use_bias, dwo, dbo, do2):
    gemm(o2.T, dout, dwo)
    if use_bias:
        dbo[:] = 0
        n, m = dout.shape
        for r in range(n):
            for c in range(m):
                dbo[c] += dout[r, c]
    gemm(dout, wo.T, do2)


@jit
def _attend_block_backward(qh, kh, vh, probs, rate, u, do2, dscores, has_dscores, scale, b, h,
                           dotmp, dp, pdrop, tvtmp, tqtmp, tktmp, gq, qo, gk, ko, gv, vo):
    """Backward of _attend_block for block (b, h): writes its rows and columns of the
    projection gradients (before bias) into gq/gk/gv at column offsets qo/ko/vo
    (one array when fused). dotmp (tq, vd), dp and pdrop (tq, tk), tvtmp (tk, vd),
    tqtmp (tq, kd), tktmp (tk, kd) are the block's workspaces."""
    tq, kd = qh.shape[2], qh.shape[3]
    tk = kh.shape[2]
    vd = vh.shape[3]
    one = do2.dtype.type(1)
    zero = one - one
    p = probs[b, h]
    cv = h * vd
    _copy_block(do2, b * tq, cv, dotmp, 0, 0, tq, vd, one)
    gemm(dotmp, vh[b, h].T, dp)
    if rate > zero:
        inv_keep = one / (one - rate)
        ub = u[b, h]
        for i in range(tq):
            for j in range(tk):
                keepij = ub[i, j] >= rate
                pdrop[i, j] = p[i, j] * inv_keep if keepij else zero
                dp[i, j] = dp[i, j] * inv_keep if keepij else zero
        gemm(pdrop.T, dotmp, tvtmp)
    else:
        gemm(p.T, dotmp, tvtmp)
    _copy_block(tvtmp, 0, 0, gv, b * tk, vo + cv, tk, vd, one)
    # softmax backward, fused: dS = P * (dP - sum_j P dP)
    for i in range(tq):
        if has_dscores:
            for j in range(tk):
                dp[i, j] += dscores[b, h, i, j]
        dot = row_dot(p[i], dp[i])
        for j in range(tk):
            dp[i, j] = p[i, j] * (dp[i, j] - dot)
    gemm(dp, kh[b, h], tqtmp)
    gemm(dp.T, qh[b, h], tktmp)
    ck = h * kd
    _copy_block(tqtmp, 0, 0, gq, b * tq, qo + ck, tq, kd, scale)
    _copy_block(tktmp, 0, 0, gk, b * tk, ko + ck, tk, kd, one)


@jit
def _attend_backward(qh, kh, vh, probs, rate, u, do2, dscores, has_dscores, scale,
                     dotmp, dp, pdrop, tvtmp, tqtmp, tktmp, gq, qo, gk, ko, gv, vo):
    """Backward of _attend_forward, serially over the (batch, head) blocks."""
    for b in range(qh.shape[0]):
        for h in range(qh.shape[1]):
            _attend_block_backward(qh, kh, vh, probs, rate, u, do2, dscores, has_dscores, scale, b, h,
                                   dotmp, dp, pdrop, tvtmp, tqtmp, tktmp, gq, qo, gk, ko, gv, vo)


@pjit
def _attend_backward_par(qh, kh, vh, probs, rate, u, do2, dscores, has_dscores, scale,
                         gq, qo, gk, ko, gv, vo):
    """_attend_backward with the blocks spread over threads, workspaces of their own."""
    batch, heads, tq, kd = qh.shape
    tk = kh.shape[2]
    vd = vh.shape[3]
    dt = do2.dtype
    for bh in prange(batch * heads):
        b = bh // heads
        h = bh - b * heads
        _attend_block_backward(qh, kh, vh, probs, rate, u, do2, dscores, has_dscores, scale, b, h,
                               np.empty((tq, vd), dt), np.empty((tq, tk), dt),
                               np.empty((tq, tk) if rate > 0 else (1, 1), dt), np.empty((tk, vd), dt),
                               np.empty((tq, kd), dt), np.empty((tk, kd), dt), gq, qo, gk, ko, gv, vo)


def _attend_grad(qh, kh, vh, probs, rate, u, do2, dscores, has_dscores, scale,
                 dotmp, dp, pdrop, tvtmp, tqtmp, tktmp, gq, qo, gk, ko, gv, vo):
    """Backward of the attention core, over threads when _attend does so."""
    if _core_threads(qh, kh):
        with kernel_blas_serial():
            _attend_backward_par(qh, kh, vh, probs, rate, u, do2, dscores, has_dscores, scale,
                                 gq, qo, gk, ko, gv, vo)
    else:
        _attend_backward(qh, kh, vh, probs, rate, u, do2, dscores, has_dscores, scale,
                         dotmp, dp, pdrop, tvtmp, tqtmp, tktmp, gq, qo, gk, ko, gv, vo)


def mha_backward(q2, k2, v2, wq, wk, wv, wo, use_bias, scale, batch, tq, tk, heads, kd, vd,
                 rate, u, qh, kh, vh, probs, o2, dout, dscores, has_dscores, need_dx,
                 do2, dotmp, dp, pdrop, tvtmp, tqtmp, tktmp, dq2, dk2, dv2,
                 dwq, dbq, dwk, dbk, dwv, dbv, dwo, dbo, dxq, dxk, dxv):
    """Gradients of mha_forward (kept probs required) for the summed loss.

    dout (batch*tq, dout); dscores (batch, heads, tq, tk) is the gradient
    reaching the returned attention scores (has_dscores). Param gradients are
    overwritten; dq2/dk2/dv2 hold the gradients of the projections (before
    bias), dxq/dxk/dxv the input gradients (when need_dx).
    """
    _output_backward(o2, wo, dout, use_bias, dwo, dbo, do2)
    _attend_grad(qh, kh, vh, probs, rate, u, do2, dscores, has_dscores, scale,
                 dotmp, dp, pdrop, tvtmp, tqtmp, tktmp, dq2, 0, dk2, 0, dv2, 0)
    _projections_backward(q2, k2, v2, wq, wk, wv, dq2, dk2, dv2, use_bias, need_dx,
                          dwq, dbq, dwk, dbk, dwv, dbv, dxq, dxk, dxv)


@jit
def _projections_backward(q2, k2, v2, wq, wk, wv, dq2, dk2, dv2, use_bias, need_dx,
                          dwq, dbq, dwk, dbk, dwv, dbv, dxq, dxk, dxv):
    _project_backward(q2, wq, dq2, use_bias, need_dx, dwq, dbq, dxq)
    _project_backward(k2, wk, dk2, use_bias, need_dx, dwk, dbk, dxk)
    _project_backward(v2, wv, dv2, use_bias, need_dx, dwv, dbv, dxv)


def mha_self_backward(x2, wcat, wo, use_bias, scale, batch, t, heads, kd, vd, rate, u, qh, kh, vh, probs,
                      o2, dout, dscores, has_dscores, need_dx, do2, dotmp, dp, pdrop, tvtmp, tqtmp, tktmp,
                      g, dwcat, dbcat, dwo, dbo, dx):
    """Gradients of mha_self_forward: g (n, 2*heads*kd + heads*vd) holds
    [dQ | dK | dV], so the weight gradient dwcat = x^T g and the input
    gradient dx = g wcat^T (the sum over query, key and value) are one GEMM
    each."""
    hk = heads * kd
    _output_backward(o2, wo, dout, use_bias, dwo, dbo, do2)
    _attend_grad(qh, kh, vh, probs, rate, u, do2, dscores, has_dscores, scale,
                 dotmp, dp, pdrop, tvtmp, tqtmp, tktmp, g, 0, g, hk, g, 2 * hk)
    _project_backward(x2, wcat, g, use_bias, need_dx, dwcat, dbcat, dx)


@jit
def add_into(a, b, out):
    """out = a + b over flat arrays (residual connections, summed input gradients)."""
    for i in range(out.size):
        out[i] = a[i] + b[i]


@jit
def pos_embed_forward(ids, tok, pos, out):
    """out[b, t] = tok[ids[b, t]] + pos[t]; ids (batch, t), out (batch, t, d)."""
    nb, t = ids.shape
    d = tok.shape[1]
    for b in range(nb):
        for i in range(t):
            k = ids[b, i]
            for e in range(d):
                out[b, i, e] = tok[k, e] + pos[i, e]


@jit
def pos_embed_backward(ids, dy, dtok, dpos):
    """Scatter-add dy into the used token rows; sum dy over the batch for positions."""
    nb, t = ids.shape
    d = dtok.shape[1]
    dtok[:, :] = 0
    dpos[:, :] = 0
    for b in range(nb):
        for i in range(t):
            k = ids[b, i]
            for e in range(d):
                g = dy[b, i, e]
                dtok[k, e] += g
                dpos[i, e] += g


@jit
def ffn_forward(x, w1, b1, w2, b2, code, keep_pre, pre, hid, out):
    """Feed-forward block: hid = act(x @ w1 + b1), out = hid @ w2 + b2.

    pre (x @ w1 + b1) is written only when keep_pre (activations whose
    gradient needs it). Bias + activation is the activations family's row
    pass (one loop specialized per activation, so it vectorizes).
    """
    gemm(x, w1, hid)
    bias_act_rows(hid, b1, code, keep_pre, 0, hid.shape[0], pre)
    gemm(hid, w2, out)
    n2, m2 = out.shape
    for i in range(n2):
        for j in range(m2):
            out[i, j] += b2[j]


@jit
def _ffn_backward_serial(x, w1, w2, pre, hid, dout, code, need_dx, dz, dw1, db1, dw2, db2, dx):
    """ffn_backward in one pass over all rows, with BLAS's own threads."""
    _ffn_input_grads_rows(w1, w2, pre, hid, dout, code, need_dx, 0, dz.shape[0], dz, db1, dx)
    _ffn_weight_grads(x, hid, dout, dz, dw1, dw2, db2)


@jit
def _ffn_input_grads_rows(w1, w2, pre, hid, dout, code, need_dx, r0, r1, dz, db1, dx):
    """Rows r0..r1 of dz = act'(pre) * (dout w2^T) and dx = dz w1^T; db1 = the column
    sums of those dz rows (db1 is one block's partial)."""
    gemm(dout[r0:r1], w2.T, dz[r0:r1])
    db1[:] = 0
    act_grad_sum_rows(pre, hid, dz, code, r0, r1, dz, db1)
    if need_dx:
        gemm(dz[r0:r1], w1.T, dx[r0:r1])


@pjit
def _ffn_input_grads_blocks(w1, w2, pre, hid, dout, code, need_dx, nblocks, dz, db1_parts, dx):
    """_ffn_input_grads_rows over ``nblocks`` blocks of rows, one per thread (BLAS
    single-threaded inside, see ffn_backward)."""
    n = dz.shape[0]
    for b in prange(nblocks):
        _ffn_input_grads_rows(w1, w2, pre, hid, dout, code, need_dx, n * b // nblocks, n * (b + 1) // nblocks,
                              dz, db1_parts[b], dx)


@jit
def _ffn_weight_grads(x, hid, dout, dz, dw1, dw2, db2):
    """dw1 = x^T dz, dw2 = hid^T dout, db2 = the column sums of dout."""
    gemm(hid.T, dout, dw2)
    db2[:] = 0
    n2, m2 = dout.shape
    for i in range(n2):
        for j in range(m2):
            db2[j] += dout[i, j]
    gemm(x.T, dz, dw1)


def ffn_backward(x, w1, w2, pre, hid, dout, code, need_dx, dz, dw1, db1, dw2, db2, dx):
    """Gradients of ffn_forward; dz (n, ff) is a workspace.

    With more than one thread and enough work the row-wise part (dz, its
    activation gradient and dx: two GEMMs and a pass, no sums across rows)
    runs as one block of rows per thread with single-threaded BLAS inside,
    one parallel region instead of two threaded GEMMs; the weight gradients
    (sums over every row) then run as two GEMMs with BLAS's threads, so no
    thread keeps a partial copy of the weights to be summed. At the
    transformer's shapes (1024 x 128 x 512, float32, 2 threads, serial body /
    this, alternating in one process): 0.93 and 0.96 with AVX-512 kernels,
    0.93 and 0.77 with the Haswell ones.
    """
    n, ff = dz.shape
    nblocks = min(get_num_threads(), n // FFN_MIN_BLOCK_ROWS)
    if nblocks < 2 or n * ff * w1.shape[0] < FFN_PAR_MIN:
        _ffn_backward_serial(x, w1, w2, pre, hid, dout, code, need_dx, dz, dw1, db1, dw2, db2, dx)
        return
    db1_parts = np.empty((nblocks, ff), dz.dtype)
    with kernel_blas_serial():
        _ffn_input_grads_blocks(w1, w2, pre, hid, dout, code, need_dx, nblocks, dz, db1_parts, dx)
    np.sum(db1_parts, axis=0, out=db1)  # block by block, in order: the same bits every run
    _ffn_weight_grads(x, hid, dout, dz, dw1, dw2, db2)
