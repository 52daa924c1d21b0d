"""Optimizer updates: one fused pass over the model's flat parameter buffer.

Each step kernel reads the raw gradient sum once and, per element, scales it
(1/count times the clipnorm or global_clipnorm factor), clips it by value,
applies decoupled weight decay and the optimizer's update to the parameter and
its slots. The buffer is cut into ``bounds`` segments (one per variable when
clipnorm is set, else one), each with its own gradient scale ``scales[s]``.

Large buffers are split into fixed chunks run with ``prange``; each element is
updated independently, so the result does not depend on the thread count.
All scalars arrive in the parameters' float type (the Python side casts them),
so float32 stays float32.
"""
import math

import numpy as np

from ._jit import PAR_MIN_ELEMENTWISE, inline, jit, pjit, prange

CHUNK = 1 << 14


@inline
def segment_of(bounds, i):
    """Index s with bounds[s] <= i < bounds[s + 1] (binary search)."""
    lo = 0
    hi = bounds.size - 2
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if bounds[mid] <= i:
            lo = mid
        else:
            hi = mid - 1
    return lo


@inline
def clipped_grad(g, j, sc, use_cv, cv):
    v = g[j] * sc
    if use_cv:  # written as branches so that NaN stays NaN
        if v > cv:
            v = cv
        elif v < -cv:
            v = -cv
    return v


# The per-piece loops run over slices from index 0: LLVM can then prove the
# indices non-negative, drop numba's wraparound checks and vectorize the loop
# (9x faster than indexing the flat buffer from an arbitrary start).

# One element's update, shared with the CUDA kernels (kernels/cuda/optim.py):
# p[j] and the slots at j from the clipped, scaled gradient gj.

@inline
def sgd_update(p, m, j, gj, use_wd, wd_lr, lr, momentum, nesterov):
    pj = p[j]
    if use_wd:
        pj -= pj * wd_lr
    if momentum != p.dtype.type(0):
        mj = momentum * m[j] - gj * lr
        m[j] = mj
        if nesterov:
            pj += momentum * mj - gj * lr
        else:
            pj += mj
    else:
        pj -= gj * lr
    p[j] = pj


@inline
def adam_update(p, m, v, vhat, j, gj, use_wd, wd_lr, alpha, one_m_b1, one_m_b2, eps, amsgrad):
    pj = p[j]
    if use_wd:
        pj -= pj * wd_lr
    mj = m[j] + (gj - m[j]) * one_m_b1
    vj = v[j] + (gj * gj - v[j]) * one_m_b2
    m[j] = mj
    v[j] = vj
    if amsgrad:
        vhat[j] = max(vhat[j], vj)
        vj = vhat[j]
    p[j] = pj - (mj * alpha) / (math.sqrt(vj) + eps)


@inline
def rmsprop_update(p, vel, mom, avg, j, gj, use_wd, wd_lr, lr, rho, one_m_rho, momentum, eps, centered):
    pj = p[j]
    if use_wd:
        pj -= pj * wd_lr
    vj = rho * vel[j] + one_m_rho * (gj * gj)
    vel[j] = vj
    if centered:
        aj = rho * avg[j] + one_m_rho * gj
        avg[j] = aj
        den = vj - aj * aj + eps
    else:
        den = vj + eps
    inc = (lr * gj) / math.sqrt(den)
    if momentum > p.dtype.type(0):
        mj = momentum * mom[j] + inc
        mom[j] = mj
        p[j] = pj - mj
    else:
        p[j] = pj - inc


@inline
def nadam_update(p, m, v, j, gj, use_wd, wd_lr, lr, one_m_b1, one_m_b2, m_coef, g_coef, v_coef, eps):
    pj = p[j]
    if use_wd:
        pj -= pj * wd_lr
    mj = m[j] + (gj - m[j]) * one_m_b1
    vj = v[j] + (gj * gj - v[j]) * one_m_b2
    m[j] = mj
    v[j] = vj
    m_hat = m_coef * mj + g_coef * gj
    p[j] = pj - (m_hat * lr) / (math.sqrt(vj * v_coef) + eps)


@inline
def adagrad_update(p, acc, j, gj, use_wd, wd_lr, lr, eps):
    pj = p[j]
    if use_wd:
        pj -= pj * wd_lr
    aj = acc[j] + gj * gj
    acc[j] = aj
    p[j] = pj - (lr * gj) / math.sqrt(aj + eps)


@inline
def adadelta_update(p, acc_g, acc_d, j, gj, use_wd, wd_lr, lr, rho, one_m_rho, eps):
    pj = p[j]
    if use_wd:
        pj -= pj * wd_lr
    ag = rho * acc_g[j] + one_m_rho * (gj * gj)
    acc_g[j] = ag
    delta = -(math.sqrt(acc_d[j] + eps) * gj) / math.sqrt(ag + eps)
    acc_d[j] = rho * acc_d[j] + one_m_rho * (delta * delta)
    p[j] = pj + lr * delta


@inline
def adamax_update(p, m, u, j, gj, use_wd, wd_lr, alpha, one_m_b1, beta_2, eps):
    pj = p[j]
    if use_wd:
        pj -= pj * wd_lr
    mj = m[j] + (gj - m[j]) * one_m_b1
    m[j] = mj
    uj = beta_2 * u[j]
    ag = abs(gj)
    if not ag <= uj:  # max(beta_2 u, |g|) that keeps a NaN gradient NaN
        uj = ag
    u[j] = uj
    p[j] = pj - (alpha * mj) / (uj + eps)


@inline
def lion_update(p, m, j, gj, use_wd, wd_lr, lr, beta_1, one_m_b1, beta_2, one_m_b2):
    pj = p[j]
    if use_wd:
        pj -= pj * wd_lr
    c = m[j] * beta_1 + gj * one_m_b1
    zero = p.dtype.type(0)
    if c > zero:
        c = p.dtype.type(1)
    elif c < zero:
        c = p.dtype.type(-1)  # 0 stays 0 and NaN stays NaN, as sign()
    m[j] = m[j] * beta_2 + gj * one_m_b2
    p[j] = pj - lr * c


@inline
def _sgd_piece(p, g, sc, use_cv, cv, use_wd, wd_lr, lr, momentum, nesterov, m):
    for j in range(p.size):
        sgd_update(p, m, j, clipped_grad(g, j, sc, use_cv, cv), use_wd, wd_lr, lr, momentum, nesterov)


@inline
def _sgd_range(start, stop, p, g, bounds, scales, use_cv, cv, use_wd, wd_lr, lr, momentum, nesterov, m):
    s = segment_of(bounds, start)
    a = start
    while a < stop:
        b = min(stop, bounds[s + 1])
        _sgd_piece(p[a:b], g[a:b], scales[s], use_cv, cv, use_wd, wd_lr, lr, momentum, nesterov, m[a:b])
        a = b
        s += 1


@pjit
def sgd_step(p, g, bounds, scales, use_cv, cv, use_wd, wd_lr, lr, momentum, nesterov, m):
    """SGD (Keras 3): m = momentum m - lr g; p += m (nesterov: p += momentum m - lr g);
    without momentum p -= lr g. ``m`` is unused (may be 1 element) when momentum is 0."""
    n = p.size
    if n < PAR_MIN_ELEMENTWISE:
        _sgd_range(0, n, p, g, bounds, scales, use_cv, cv, use_wd, wd_lr, lr, momentum, nesterov, m)
    else:
        for c in prange((n + CHUNK - 1) // CHUNK):
            _sgd_range(c * CHUNK, min(n, (c + 1) * CHUNK), p, g, bounds, scales, use_cv, cv, use_wd,
                       wd_lr, lr, momentum, nesterov, m)


@inline
def _adam_piece(p, g, sc, use_cv, cv, use_wd, wd_lr, alpha, one_m_b1, one_m_b2, eps, amsgrad, m, v, vhat):
    for j in range(p.size):
        adam_update(p, m, v, vhat, j, clipped_grad(g, j, sc, use_cv, cv), use_wd, wd_lr, alpha, one_m_b1,
                    one_m_b2, eps, amsgrad)


@inline
def _adam_range(start, stop, p, g, bounds, scales, use_cv, cv, use_wd, wd_lr, alpha, one_m_b1, one_m_b2,
                eps, amsgrad, m, v, vhat):
    s = segment_of(bounds, start)
    a = start
    while a < stop:
        b = min(stop, bounds[s + 1])
        _adam_piece(p[a:b], g[a:b], scales[s], use_cv, cv, use_wd, wd_lr, alpha, one_m_b1, one_m_b2, eps,
                    amsgrad, m[a:b], v[a:b], vhat[a:b])
        a = b
        s += 1


@pjit
def adam_step(p, g, bounds, scales, use_cv, cv, use_wd, wd_lr, alpha, one_m_b1, one_m_b2, eps, amsgrad,
              m, v, vhat):
    """Adam / AdamW (Keras 3): m += (g - m)(1 - b1); v += (g^2 - v)(1 - b2);
    p -= alpha m / (sqrt(v) + eps) with alpha = lr sqrt(1 - b2^t) / (1 - b1^t);
    AdamW first decays p -= p wd lr. ``vhat`` (amsgrad) may be 1 element when unused."""
    n = p.size
    if n < PAR_MIN_ELEMENTWISE:
        _adam_range(0, n, p, g, bounds, scales, use_cv, cv, use_wd, wd_lr, alpha, one_m_b1, one_m_b2,
                    eps, amsgrad, m, v, vhat)
    else:
        for c in prange((n + CHUNK - 1) // CHUNK):
            _adam_range(c * CHUNK, min(n, (c + 1) * CHUNK), p, g, bounds, scales, use_cv, cv, use_wd,
                        wd_lr, alpha, one_m_b1, one_m_b2, eps, amsgrad, m, v, vhat)


@inline
def _rmsprop_piece(p, g, sc, use_cv, cv, use_wd, wd_lr, lr, rho, one_m_rho, momentum, eps, centered,
                   vel, mom, avg):
    for j in range(p.size):
        rmsprop_update(p, vel, mom, avg, j, clipped_grad(g, j, sc, use_cv, cv), use_wd, wd_lr, lr, rho,
                       one_m_rho, momentum, eps, centered)


@inline
def _rmsprop_range(start, stop, p, g, bounds, scales, use_cv, cv, use_wd, wd_lr, lr, rho, one_m_rho,
                   momentum, eps, centered, vel, mom, avg):
    s = segment_of(bounds, start)
    a = start
    while a < stop:
        b = min(stop, bounds[s + 1])
        _rmsprop_piece(p[a:b], g[a:b], scales[s], use_cv, cv, use_wd, wd_lr, lr, rho, one_m_rho, momentum,
                       eps, centered, vel[a:b], mom[a:b], avg[a:b])
        a = b
        s += 1


@pjit
def rmsprop_step(p, g, bounds, scales, use_cv, cv, use_wd, wd_lr, lr, rho, one_m_rho, momentum, eps,
                 centered, vel, mom, avg):
    """RMSprop (Keras 3): vel = rho vel + (1 - rho) g^2; inc = lr g / sqrt(vel + eps)
    (centered: sqrt(vel - avg^2 + eps), avg = rho avg + (1 - rho) g);
    with momentum: mom = momentum mom + inc, p -= mom; else p -= inc."""
    n = p.size
    if n < PAR_MIN_ELEMENTWISE:
        _rmsprop_range(0, n, p, g, bounds, scales, use_cv, cv, use_wd, wd_lr, lr, rho, one_m_rho,
                       momentum, eps, centered, vel, mom, avg)
    else:
        for c in prange((n + CHUNK - 1) // CHUNK):
            _rmsprop_range(c * CHUNK, min(n, (c + 1) * CHUNK), p, g, bounds, scales, use_cv, cv, use_wd,
                           wd_lr, lr, rho, one_m_rho, momentum, eps, centered, vel, mom, avg)


@inline
def _nadam_piece(p, g, sc, use_cv, cv, use_wd, wd_lr, lr, one_m_b1, one_m_b2, m_coef, g_coef, v_coef, eps, m, v):
    for j in range(p.size):
        nadam_update(p, m, v, j, clipped_grad(g, j, sc, use_cv, cv), use_wd, wd_lr, lr, one_m_b1, one_m_b2, m_coef,
                     g_coef, v_coef, eps)


@inline
def _nadam_range(start, stop, p, g, bounds, scales, use_cv, cv, use_wd, wd_lr, lr, one_m_b1, one_m_b2, m_coef, g_coef,
                 v_coef, eps, m, v):
    s = segment_of(bounds, start)
    a = start
    while a < stop:
        b = min(stop, bounds[s + 1])
        _nadam_piece(p[a:b], g[a:b], scales[s], use_cv, cv, use_wd, wd_lr, lr, one_m_b1, one_m_b2, m_coef, g_coef,
                     v_coef, eps, m[a:b], v[a:b])
        a = b
        s += 1


@pjit
def nadam_step(p, g, bounds, scales, use_cv, cv, use_wd, wd_lr, lr, one_m_b1, one_m_b2, m_coef, g_coef, v_coef, eps, m,
               v):
    """Nadam (Keras 3): m += (g - m)(1 - b1); v += (g^2 - v)(1 - b2);
    p -= lr (m_coef m + g_coef g) / (sqrt(v v_coef) + eps), the coefficients from the
    momentum-cache schedule (m_coef = u_{t+1} / (1 - prod u_1..u_{t+1}), g_coef = (1 - u_t) /
    (1 - prod u_1..u_t), v_coef = 1 / (1 - b2^t)), computed by the caller."""
    n = p.size
    if n < PAR_MIN_ELEMENTWISE:
        _nadam_range(0, n, p, g, bounds, scales, use_cv, cv, use_wd, wd_lr, lr, one_m_b1, one_m_b2, m_coef, g_coef,
                     v_coef, eps, m, v)
    else:
        for c in prange((n + CHUNK - 1) // CHUNK):
            _nadam_range(c * CHUNK, min(n, (c + 1) * CHUNK), p, g, bounds, scales, use_cv, cv, use_wd, wd_lr, lr,
                         one_m_b1, one_m_b2, m_coef, g_coef, v_coef, eps, m, v)


@inline
def _adagrad_piece(p, g, sc, use_cv, cv, use_wd, wd_lr, lr, eps, acc):
    for j in range(p.size):
        adagrad_update(p, acc, j, clipped_grad(g, j, sc, use_cv, cv), use_wd, wd_lr, lr, eps)


@inline
def _adagrad_range(start, stop, p, g, bounds, scales, use_cv, cv, use_wd, wd_lr, lr, eps, acc):
    s = segment_of(bounds, start)
    a = start
    while a < stop:
        b = min(stop, bounds[s + 1])
        _adagrad_piece(p[a:b], g[a:b], scales[s], use_cv, cv, use_wd, wd_lr, lr, eps, acc[a:b])
        a = b
        s += 1


@pjit
def adagrad_step(p, g, bounds, scales, use_cv, cv, use_wd, wd_lr, lr, eps, acc):
    """Adagrad (Keras 3): acc += g^2; p -= lr g / sqrt(acc + eps)."""
    n = p.size
    if n < PAR_MIN_ELEMENTWISE:
        _adagrad_range(0, n, p, g, bounds, scales, use_cv, cv, use_wd, wd_lr, lr, eps, acc)
    else:
        for c in prange((n + CHUNK - 1) // CHUNK):
            _adagrad_range(c * CHUNK, min(n, (c + 1) * CHUNK), p, g, bounds, scales, use_cv, cv, use_wd, wd_lr, lr,
                           eps, acc)


@inline
def _adadelta_piece(p, g, sc, use_cv, cv, use_wd, wd_lr, lr, rho, one_m_rho, eps, acc_g, acc_d):
    for j in range(p.size):
        adadelta_update(p, acc_g, acc_d, j, clipped_grad(g, j, sc, use_cv, cv), use_wd, wd_lr, lr, rho, one_m_rho, eps)


@inline
def _adadelta_range(start, stop, p, g, bounds, scales, use_cv, cv, use_wd, wd_lr, lr, rho, one_m_rho, eps, acc_g,
                    acc_d):
    s = segment_of(bounds, start)
    a = start
    while a < stop:
        b = min(stop, bounds[s + 1])
        _adadelta_piece(p[a:b], g[a:b], scales[s], use_cv, cv, use_wd, wd_lr, lr, rho, one_m_rho, eps, acc_g[a:b],
                        acc_d[a:b])
        a = b
        s += 1


@pjit
def adadelta_step(p, g, bounds, scales, use_cv, cv, use_wd, wd_lr, lr, rho, one_m_rho, eps, acc_g, acc_d):
    """Adadelta (Keras 3): acc_g = rho acc_g + (1 - rho) g^2;
    d = -sqrt(acc_d + eps) g / sqrt(acc_g + eps); acc_d = rho acc_d + (1 - rho) d^2; p += lr d."""
    n = p.size
    if n < PAR_MIN_ELEMENTWISE:
        _adadelta_range(0, n, p, g, bounds, scales, use_cv, cv, use_wd, wd_lr, lr, rho, one_m_rho, eps, acc_g, acc_d)
    else:
        for c in prange((n + CHUNK - 1) // CHUNK):
            _adadelta_range(c * CHUNK, min(n, (c + 1) * CHUNK), p, g, bounds, scales, use_cv, cv, use_wd, wd_lr, lr,
                            rho, one_m_rho, eps, acc_g, acc_d)


@inline
def _adamax_piece(p, g, sc, use_cv, cv, use_wd, wd_lr, alpha, one_m_b1, beta_2, eps, m, u):
    for j in range(p.size):
        adamax_update(p, m, u, j, clipped_grad(g, j, sc, use_cv, cv), use_wd, wd_lr, alpha, one_m_b1, beta_2, eps)


@inline
def _adamax_range(start, stop, p, g, bounds, scales, use_cv, cv, use_wd, wd_lr, alpha, one_m_b1, beta_2, eps, m, u):
    s = segment_of(bounds, start)
    a = start
    while a < stop:
        b = min(stop, bounds[s + 1])
        _adamax_piece(p[a:b], g[a:b], scales[s], use_cv, cv, use_wd, wd_lr, alpha, one_m_b1, beta_2, eps, m[a:b],
                      u[a:b])
        a = b
        s += 1


@pjit
def adamax_step(p, g, bounds, scales, use_cv, cv, use_wd, wd_lr, alpha, one_m_b1, beta_2, eps, m, u):
    """Adamax (Keras 3): m += (g - m)(1 - b1); u = max(b2 u, |g|);
    p -= alpha m / (u + eps) with alpha = lr / (1 - b1^t)."""
    n = p.size
    if n < PAR_MIN_ELEMENTWISE:
        _adamax_range(0, n, p, g, bounds, scales, use_cv, cv, use_wd, wd_lr, alpha, one_m_b1, beta_2, eps, m, u)
    else:
        for c in prange((n + CHUNK - 1) // CHUNK):
            _adamax_range(c * CHUNK, min(n, (c + 1) * CHUNK), p, g, bounds, scales, use_cv, cv, use_wd, wd_lr, alpha,
                          one_m_b1, beta_2, eps, m, u)


@inline
def _lion_piece(p, g, sc, use_cv, cv, use_wd, wd_lr, lr, beta_1, one_m_b1, beta_2, one_m_b2, m):
    for j in range(p.size):
        lion_update(p, m, j, clipped_grad(g, j, sc, use_cv, cv), use_wd, wd_lr, lr, beta_1, one_m_b1, beta_2, one_m_b2)


@inline
def _lion_range(start, stop, p, g, bounds, scales, use_cv, cv, use_wd, wd_lr, lr, beta_1, one_m_b1, beta_2, one_m_b2,
                m):
    s = segment_of(bounds, start)
    a = start
    while a < stop:
        b = min(stop, bounds[s + 1])
        _lion_piece(p[a:b], g[a:b], scales[s], use_cv, cv, use_wd, wd_lr, lr, beta_1, one_m_b1, beta_2, one_m_b2,
                    m[a:b])
        a = b
        s += 1


@pjit
def lion_step(p, g, bounds, scales, use_cv, cv, use_wd, wd_lr, lr, beta_1, one_m_b1, beta_2, one_m_b2, m):
    """Lion (Keras 3): p -= lr sign(b1 m + (1 - b1) g); m = b2 m + (1 - b2) g."""
    n = p.size
    if n < PAR_MIN_ELEMENTWISE:
        _lion_range(0, n, p, g, bounds, scales, use_cv, cv, use_wd, wd_lr, lr, beta_1, one_m_b1, beta_2, one_m_b2, m)
    else:
        for c in prange((n + CHUNK - 1) // CHUNK):
            _lion_range(c * CHUNK, min(n, (c + 1) * CHUNK), p, g, bounds, scales, use_cv, cv, use_wd, wd_lr, lr,
                        beta_1, one_m_b1, beta_2, one_m_b2, m)


@jit
def segment_sumsq(g, bounds, out):
    """out[s] = sum of g^2 over segment s, accumulated in float64 (for clip norms)."""
    for s in range(bounds.size - 1):
        piece = g[bounds[s]:bounds[s + 1]]
        acc = 0.0
        for j in range(piece.size):
            x = np.float64(piece[j])
            acc += x * x
        out[s] = acc


# ------------------------------------------- regularizers and constraints
# Penalties on weights (and activity) and the constraints applied after a
# step: small passes over one variable, serial (a variable is a few thousand
# elements; the big work of a step is elsewhere).

@inline
def l1l2_grad_term(x, l1, l2x2):
    """d/dx of l1 * |x| + l2 * x**2 (sign(0) = 0, as Keras), given l2x2 = 2 * l2."""
    d = l2x2 * x
    if x > 0:
        d += l1
    elif x < 0:
        d -= l1
    return d


@jit
def _l1l2_sums(w):
    a1 = 0.0
    a2 = 0.0
    for i in range(w.size):
        x = np.float64(w[i])
        a1 += abs(x)
        a2 += x * x
    return a1, a2


def l1l2_penalty(w, l1, l2) -> float:
    """l1 * sum|w| + l2 * sum w**2, accumulated in float64, returned to the host."""
    if w.size == 0:
        return 0.0
    a1, a2 = _l1l2_sums(w.reshape(-1))
    return float(l1) * a1 + float(l2) * a2


@jit
def _add_l1l2_grad(w, l1, l2x2, g):
    for i in range(w.size):
        g[i] += l1l2_grad_term(w[i], l1, l2x2)


def add_l1l2_grad(w, l1, l2, g):
    """g += l1 * sign(w) + 2 * l2 * w (the gradient of l1l2_penalty)."""
    t = w.dtype.type
    _add_l1l2_grad(w.reshape(-1), t(l1), t(2.0 * l2), g.reshape(-1))


@jit
def _clip_norms(w, lo, hi, rate, eps):
    for a in range(w.shape[0]):
        for c in range(w.shape[2]):
            s = 0.0
            for b in range(w.shape[1]):
                x = np.float64(w[a, b, c])
                s += x * x
            n = np.sqrt(s)
            d = min(max(n, lo), hi)
            f = w.dtype.type((rate * d + (1.0 - rate) * n) / (eps + n))
            for b in range(w.shape[1]):
                w[a, b, c] *= f


def clip_norms(w, lo, hi, rate, eps):
    """In place, w (p, m, q), n = norms over axis 1: w *= (rate * clip(n, lo, hi) + (1 - rate) * n) / (eps + n)."""
    _clip_norms(w, float(lo), float(hi), float(rate), float(eps))


@jit
def _non_neg(w):
    for i in range(w.size):
        if w[i] < 0:
            w[i] = 0


def non_neg(w):
    """In place: negative elements of w become 0."""
    _non_neg(w.reshape(-1))
