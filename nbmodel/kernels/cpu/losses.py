"""Loss kernels (value and gradient in one pass) and metric match counting.

Every loss kernel writes, for each row i of the 2-D view of y_pred,
``row_loss[i] = w_i * loss_i`` (in y_pred's dtype) and, when ``need_grad``,
``dy = d(sum_i row_loss[i]) / d y_pred``. The caller sums ``row_loss`` in
float64 (NumPy's pairwise sum), so the kernels themselves stay in the float
type of their inputs and give the same result whatever the thread count: rows
are independent, there is no floating-point reduction across threads.

Rows are run serially below ``PAR_MIN_ELEMENTWISE`` elements (_jit.py: a
thread launch costs more than a small batch) and with ``prange`` above it.
The softmax pieces and the float32 exp come from _math.py.

Sample weights: ``w`` holds one weight per group of ``w_per`` consecutive rows
(``w_per = t`` for per-sample weights on (b, t) sequence losses, 1 for
per-element weights), read only when ``use_w``.
"""
import math

from ..codes import BCE, BCE_LOGITS, HUBER, MAE, MSE
from ._jit import PAR_MIN_ELEMENTWISE, inline, pjit, prange
from ._math import exp_store, exp_sum, fast_exp, row_max


@inline
def row_weight(w, w_per, use_w, i, one):
    return w[i // w_per] if use_w else one


@inline
def dense_element(code, t, p, a, b, eps, ez, one):
    """(loss, d loss / d p) of one element for the dense loss codes; ``ez`` is
    exp(-|p|), read only by BCE_LOGITS (the caller computes it with its
    device's exp: the CPU's vectorizable float32 exp cannot compile for CUDA)."""
    zero = one - one
    half = one / (one + one)
    if code == MSE:
        e = p - t
        return e * e, e + e
    if code == MAE:
        e = p - t
        return abs(e), (one if e > zero else (-one if e < zero else zero))
    if code == HUBER:  # a = delta
        e = p - t
        ae = abs(e)
        if ae <= a:
            return half * e * e, e
        return a * ae - half * a * a, (a if e > zero else -a)
    tt = t * a + b  # a, b: label smoothing t' = t * a + b
    if code == BCE:  # p clipped to [eps, 1 - eps], no gradient where clipped
        c = p
        inside = True
        if c < eps:
            c = eps
            inside = False
        elif c > one - eps:
            c = one - eps
            inside = False
        return -(tt * math.log(c) + (one - tt) * math.log(one - c)), ((c - tt) / (c * (one - c)) if inside else zero)
    # BCE_LOGITS, stable form: max(z, 0) - z t + log1p(exp(-|z|))
    sig = one / (one + ez) if p >= zero else ez / (one + ez)
    return max(zero, p) - p * tt + math.log1p(ez), sig - tt


@inline
def _dense_row(i, code, y_true, y_pred, a, b, eps, w, w_per, use_w, need_grad, row_loss, dy):
    d = y_pred.shape[1]
    one = y_pred.dtype.type(1)
    zero = one - one
    gs = row_weight(w, w_per, use_w, i, one) * (one / y_pred.dtype.type(d))
    s = zero
    for j in range(d):
        p = y_pred[i, j]
        ez = fast_exp(-abs(p)) if code == BCE_LOGITS else zero
        l, g = dense_element(code, y_true[i, j], p, a, b, eps, ez, one)
        s += l
        if need_grad:
            dy[i, j] = g * gs
    row_loss[i] = s * gs


@pjit
def dense_loss(code, y_true, y_pred, a, b, eps, w, w_per, use_w, need_grad, row_loss, dy):
    """Elementwise losses averaged over the last axis: mse, mae, huber, binary CE.

    y_true, y_pred, dy (n, d) of one float type; row_loss (n,); a, b, eps
    scalars of that type (huber: a = delta; binary CE: t' = t * a + b).
    """
    n = y_pred.shape[0]
    if n * y_pred.shape[1] < PAR_MIN_ELEMENTWISE:
        for i in range(n):
            _dense_row(i, code, y_true, y_pred, a, b, eps, w, w_per, use_w, need_grad, row_loss, dy)
    else:
        for i in prange(n):
            _dense_row(i, code, y_true, y_pred, a, b, eps, w, w_per, use_w, need_grad, row_loss, dy)


@inline
def _cce_row(i, y_true, y_pred, from_logits, a, b, eps, w, w_per, use_w, need_grad, row_loss, dy):
    c_n = y_pred.shape[1]
    one = y_pred.dtype.type(1)
    zero = one - one
    wi = row_weight(w, w_per, use_w, i, one)
    loss = zero
    if from_logits:
        xr = y_pred[i]
        tr = y_true[i]
        m = row_max(xr)
        s = exp_store(xr, m, dy[i]) if need_grad else exp_sum(xr, m)
        lse = m + math.log(s)
        tsum = zero
        for j in range(c_n):
            tt = tr[j] * a + b
            tsum += tt
            loss += tt * (lse - xr[j])
        if need_grad:
            # d/dz of -sum_j t_j log_softmax_j = softmax * sum(t) - t
            dr = dy[i]
            k = tsum / s
            for j in range(c_n):
                dr[j] = (dr[j] * k - (tr[j] * a + b)) * wi
    else:
        # q = p / sum(p), clipped to [eps, 1 - eps]; loss = -sum t log q
        s = zero
        for j in range(c_n):
            s += y_pred[i, j]
        inv_s = one / s
        gq = zero  # sum_j g_j q_j with g_j = dloss/dq_j
        for j in range(c_n):
            tt = y_true[i, j] * a + b
            q = y_pred[i, j] * inv_s
            c = q
            inside = True
            if c < eps:
                c = eps
                inside = False
            elif c > one - eps:
                c = one - eps
                inside = False
            loss -= tt * math.log(c)
            if inside:
                gq -= tt  # (-t / q) * q
            if need_grad:
                dy[i, j] = -tt / q if inside else zero
        if need_grad:
            for j in range(c_n):
                dy[i, j] = (dy[i, j] - gq) * inv_s * wi
    row_loss[i] = loss * wi


@pjit
def categorical_ce(y_true, y_pred, from_logits, a, b, eps, w, w_per, use_w, need_grad, row_loss, dy):
    """Categorical cross-entropy over the last axis, softmax fused when from_logits.

    y_true, y_pred, dy (n, C); label smoothing t' = t * a + b.
    """
    n = y_pred.shape[0]
    if n * y_pred.shape[1] < PAR_MIN_ELEMENTWISE:
        for i in range(n):
            _cce_row(i, y_true, y_pred, from_logits, a, b, eps, w, w_per, use_w, need_grad, row_loss, dy)
    else:
        for i in prange(n):
            _cce_row(i, y_true, y_pred, from_logits, a, b, eps, w, w_per, use_w, need_grad, row_loss, dy)


@inline
def _sparse_row(i, labels, y_pred, from_logits, ignore, use_ignore, eps, w, w_per, use_w, need_grad,
                row_loss, dy):
    """Returns 0 for a used label, 1 for an ignored one, 2 for a bad one."""
    c_n = y_pred.shape[1]
    one = y_pred.dtype.type(1)
    zero = one - one
    lab = labels[i]
    if use_ignore and lab == ignore:
        row_loss[i] = zero
        if need_grad:
            for j in range(c_n):
                dy[i, j] = zero
        return 1
    if not (lab >= 0 and lab < c_n):  # also catches NaN
        return 2
    k = int(lab)
    if k != lab:  # a float label that is not a whole number
        return 2
    wi = row_weight(w, w_per, use_w, i, one)
    if from_logits:
        xr = y_pred[i]
        m = row_max(xr)
        if need_grad:
            dr = dy[i]
            s = exp_store(xr, m, dr)
            # softmax - onehot: the normalization and the -1 in one pass
            k_s = wi / s
            for j in range(c_n):
                dr[j] *= k_s
            dr[k] -= wi
        else:
            s = exp_sum(xr, m)
        row_loss[i] = (m + math.log(s) - xr[k]) * wi
    else:
        s = zero
        for j in range(c_n):
            s += y_pred[i, j]
        inv_s = one / s
        q = y_pred[i, k] * inv_s
        c = q
        inside = True
        if c < eps:
            c = eps
            inside = False
        elif c > one - eps:
            c = one - eps
            inside = False
        row_loss[i] = -math.log(c) * wi
        if need_grad:
            if inside:
                # d(-log(p_k / s)) / dp_j = 1 / s - [j == k] / p_k
                g = inv_s * wi
                for j in range(c_n):
                    dy[i, j] = g
                dy[i, k] -= wi / y_pred[i, k]
            else:
                for j in range(c_n):
                    dy[i, j] = zero
    return 0


@pjit
def sparse_ce(labels, y_pred, from_logits, ignore, use_ignore, eps, w, w_per, use_w, need_grad,
              row_loss, dy):
    """Sparse categorical cross-entropy: integer labels (n,) (int or whole floats), y_pred (n, C).

    Returns (number of labels used, number of bad labels); labels equal to
    ``ignore`` (when use_ignore) count as neither and get zero loss and gradient.
    A bad label (outside [0, C) or not a whole number) leaves its row unwritten.
    """
    n = y_pred.shape[0]
    used = 0
    bad = 0
    if n * y_pred.shape[1] < PAR_MIN_ELEMENTWISE:
        for i in range(n):
            r = _sparse_row(i, labels, y_pred, from_logits, ignore, use_ignore, eps, w, w_per, use_w,
                            need_grad, row_loss, dy)
            used += 1 if r == 0 else 0
            bad += 1 if r == 2 else 0
    else:
        for i in prange(n):
            r = _sparse_row(i, labels, y_pred, from_logits, ignore, use_ignore, eps, w, w_per, use_w,
                            need_grad, row_loss, dy)
            used += 1 if r == 0 else 0
            bad += 1 if r == 2 else 0
    return used, bad


# ---------------------------------------------------------------- metrics
@inline
def argmax_row(x, i):
    c_n = x.shape[1]
    best = 0
    m = x[i, 0]
    for j in range(1, c_n):
        if x[i, j] > m:
            m = x[i, j]
            best = j
    return best


@inline
def in_top_k(x, i, k, target):
    """True when fewer than k classes score strictly above the target's score
    (ties at the boundary count as in the top k)."""
    c_n = x.shape[1]
    v = x[i, target]
    if math.isnan(v):
        return False
    above = 0
    for j in range(c_n):
        if x[i, j] > v:
            above += 1
    return above < k


@inline
def _sparse_match(labels, y_pred, k, out, i):
    c_n = y_pred.shape[1]
    lab = labels[i]
    hit = 0.0
    if lab >= 0 and lab < c_n and int(lab) == lab:
        t = int(lab)
        if k == 0:
            hit = 1.0 if argmax_row(y_pred, i) == t else 0.0
        else:
            hit = 1.0 if in_top_k(y_pred, i, k, t) else 0.0
    out[i] = hit


@pjit
def sparse_matches(labels, y_pred, k, out):
    """out[i] = 1.0 when row i is right: argmax equals the label (k == 0) or the
    label is in the top k (k >= 1); labels outside [0, C) never match."""
    n = y_pred.shape[0]
    if n * y_pred.shape[1] < PAR_MIN_ELEMENTWISE:
        for i in range(n):
            _sparse_match(labels, y_pred, k, out, i)
    else:
        for i in prange(n):
            _sparse_match(labels, y_pred, k, out, i)


@inline
def _categorical_match(y_true, y_pred, k, out, i):
    t = argmax_row(y_true, i)
    if k == 0:
        out[i] = 1.0 if argmax_row(y_pred, i) == t else 0.0
    else:
        out[i] = 1.0 if in_top_k(y_pred, i, k, t) else 0.0


@pjit
def categorical_matches(y_true, y_pred, k, out):
    """Like sparse_matches, the label being argmax(y_true[i])."""
    n = y_pred.shape[0]
    if n * y_pred.shape[1] < PAR_MIN_ELEMENTWISE:
        for i in range(n):
            _categorical_match(y_true, y_pred, k, out, i)
    else:
        for i in prange(n):
            _categorical_match(y_true, y_pred, k, out, i)
