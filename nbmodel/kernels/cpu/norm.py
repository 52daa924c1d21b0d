"""Normalization kernels (LayerNormalization; BatchNormalization).

Layer norm: each row (the normalized axes flattened) is normalized with its
own mean and variance. Forward keeps only the per-row mean and 1/std; backward
recomputes x_hat from them in the same pass that forms dx, dgamma and dbeta,
so x is read once per pass and nothing of size x is cached but x itself.
Rows are independent: with more than one thread and LN_PAR_MIN elements
(``row_blocks``) each thread takes a block of rows; backward sums dgamma and
dbeta per block, then adds the blocks' sums.
"""
import math

import numpy as np

from ._jit import jit, pjit, prange, row_blocks
from ._math import row_dot_centered, row_sum

# Elements a layer-norm pass needs before its rows are split across threads. Measured
# at 2 threads (float32, rows of 128, blocks / serial): 2**17 elements forward 1.4,
# backward 1.06 (the transformer reference: a parallel region's wake-up, 60-100 us
# with passive OpenMP workers on the shared machine, outweighs 60-170 us of work);
# 2**18 1.2 and 0.62; 2**19 0.71 and 0.82; 2**20 0.59 and 0.73.
LN_PAR_MIN = 1 << 19


@jit
def _ln_forward_rows(x, gamma, beta, eps, use_scale, use_center, out, mean, rstd, i0, i1):
    n, d = x.shape
    one = x.dtype.type(1)
    zero = one - one
    inv_d = one / x.dtype.type(d)
    for i in range(i0, i1):
        mu = row_sum(x[i], zero, False) * inv_d
        r = one / math.sqrt(row_sum(x[i], mu, True) * inv_d + eps)
        mean[i] = mu
        rstd[i] = r
        for j in range(d):
            h = (x[i, j] - mu) * r
            if use_scale:
                h = h * gamma[j]
            if use_center:
                h = h + beta[j]
            out[i, j] = h


@pjit
def _ln_forward_par(x, gamma, beta, eps, use_scale, use_center, out, mean, rstd, nb):
    n = x.shape[0]
    for k in prange(nb):
        _ln_forward_rows(x, gamma, beta, eps, use_scale, use_center, out, mean, rstd, n * k // nb, n * (k + 1) // nb)


def layer_norm_forward(x, gamma, beta, eps, use_scale, use_center, out, mean, rstd):
    """out = (x - mean) / sqrt(var + eps) * gamma + beta, row by row.

    x, out (n, d); gamma, beta (d,); mean, rstd (n,) are written for backward.
    Two passes over each row (mean, then centred variance): accurate in float32.
    """
    nb = row_blocks(x.shape[0], x.size, LN_PAR_MIN)
    if nb > 1:
        _ln_forward_par(x, gamma, beta, eps, use_scale, use_center, out, mean, rstd, nb)
    else:
        _ln_forward_rows(x, gamma, beta, eps, use_scale, use_center, out, mean, rstd, 0, x.shape[0])


@jit
def _add_ln_forward_rows(a, b, gamma, beta, eps, s, out, mean, rstd, i0, i1):
    n, d = a.shape
    one = a.dtype.type(1)
    zero = one - one
    inv_d = one / a.dtype.type(d)
    for i in range(i0, i1):
        for j in range(d):
            s[i, j] = a[i, j] + b[i, j]
        mu = row_sum(s[i], zero, False) * inv_d
        r = one / math.sqrt(row_sum(s[i], mu, True) * inv_d + eps)
        mean[i] = mu
        rstd[i] = r
        for j in range(d):
            out[i, j] = (s[i, j] - mu) * r * gamma[j] + beta[j]


@pjit
def _add_ln_forward_par(a, b, gamma, beta, eps, s, out, mean, rstd, nb):
    n = a.shape[0]
    for k in prange(nb):
        _add_ln_forward_rows(a, b, gamma, beta, eps, s, out, mean, rstd, n * k // nb, n * (k + 1) // nb)


def add_layer_norm_forward(a, b, gamma, beta, eps, s, out, mean, rstd):
    """Residual + layer norm in one pass: s = a + b (kept for backward), out = LN(s).

    a, b, s, out (n, d); gamma, beta (d,); mean, rstd (n,).
    """
    nb = row_blocks(a.shape[0], a.size, LN_PAR_MIN)
    if nb > 1:
        _add_ln_forward_par(a, b, gamma, beta, eps, s, out, mean, rstd, nb)
    else:
        _add_ln_forward_rows(a, b, gamma, beta, eps, s, out, mean, rstd, 0, a.shape[0])


@jit
def _ln_backward_rows(x, gamma, mean, rstd, dya, dyb, has_dyb, use_scale, use_center, dx, dgamma, dbeta, i0, i1):
    """layer norm gradients of rows i0..i1 for dy = dya (+ dyb with has_dyb): dx of those
    rows, their sums into dgamma and dbeta (zeroed here; each is only touched when used,
    so it may be empty otherwise)."""
    n, d = x.shape
    one = x.dtype.type(1)
    zero = one - one
    inv_d = one / x.dtype.type(d)
    if use_scale:
        dgamma[:] = zero
    if use_center:
        dbeta[:] = zero
    for i in range(i0, i1):
        mu = mean[i]
        r = rstd[i]
        # three passes over the row, each of which vectorizes: g (times gamma) into dx with
        # the dgamma/dbeta sums; the row's two sums in interleaved partials (one running sum
        # with the stores in its loop ran scalar, 1.3 ns per element); then dx
        for j in range(d):
            g = dya[i, j] + dyb[i, j] if has_dyb else dya[i, j]
            if use_center:
                dbeta[j] += g
            if use_scale:
                dgamma[j] += g * ((x[i, j] - mu) * r)
                g = g * gamma[j]
            dx[i, j] = g
        sg = row_sum(dx[i], zero, False) * inv_d
        sgx = r * row_dot_centered(dx[i], x[i], mu) * inv_d
        for j in range(d):
            dx[i, j] = r * (dx[i, j] - sg - (x[i, j] - mu) * r * sgx)


@pjit
def _ln_backward_par(x, gamma, mean, rstd, dya, dyb, has_dyb, use_scale, use_center, dx, dgamma, dbeta, nb):
    """_ln_backward_rows over nb blocks of rows, each summing into its own dgamma and dbeta
    rows, added up after the blocks."""
    n, d = x.shape
    pg = np.empty((nb, d), dgamma.dtype)
    pb = np.empty((nb, d), dbeta.dtype)
    for k in prange(nb):
        _ln_backward_rows(x, gamma, mean, rstd, dya, dyb, has_dyb, use_scale, use_center, dx, pg[k], pb[k],
                          n * k // nb, n * (k + 1) // nb)
    for k in range(nb):
        for j in range(d):
            if use_scale:
                dgamma[j] = pg[k, j] if k == 0 else dgamma[j] + pg[k, j]
            if use_center:
                dbeta[j] = pb[k, j] if k == 0 else dbeta[j] + pb[k, j]


def _ln_backward(x, gamma, mean, rstd, dya, dyb, has_dyb, use_scale, use_center, dx, dgamma, dbeta):
    nb = row_blocks(x.shape[0], x.size, LN_PAR_MIN)
    if nb > 1:
        _ln_backward_par(x, gamma, mean, rstd, dya, dyb, has_dyb, use_scale, use_center, dx, dgamma, dbeta, nb)
    else:
        _ln_backward_rows(x, gamma, mean, rstd, dya, dyb, has_dyb, use_scale, use_center, dx, dgamma, dbeta,
                          0, x.shape[0])


def layer_norm_backward(x, gamma, mean, rstd, dy, use_scale, use_center, dx, dgamma, dbeta):
    """Gradients of layer_norm_forward (dgamma/dbeta overwritten, summed over rows).

    dx = rstd * (g - mean(g) - x_hat * mean(g * x_hat)), g = dy * gamma.
    """
    _ln_backward(x, gamma, mean, rstd, dy, dy, False, use_scale, use_center, dx, dgamma, dbeta)


def layer_norm_backward_sum(x, gamma, mean, rstd, dya, dyb, dx, dgamma, dbeta):
    """layer_norm_backward (scale and center on) for dy = dya + dyb, the sum of
    two incoming gradients (a residual branch and its skip), formed on the fly."""
    _ln_backward(x, gamma, mean, rstd, dya, dyb, True, True, True, dx, dgamma, dbeta)


# ---------------------------------------------------------------- BatchNormalization
# x is (m, c): every axis but the channel axis flattened into rows. Column sums
# run in blocks of rows (a float32 partial per block, then added up) so float32
# statistics over tens of thousands of rows keep their precision.

_BN_BLOCK = 256


@jit
def batch_norm_column_sums(x, work, out):
    """out[j] = sum over rows of x[:, j]; work (c,) is scratch."""
    m, c = x.shape
    zero = x.dtype.type(0)
    out[:] = zero
    for r0 in range(0, m, _BN_BLOCK):
        work[:] = zero
        for r in range(r0, min(m, r0 + _BN_BLOCK)):
            for j in range(c):
                work[j] += x[r, j]
        for j in range(c):
            out[j] += work[j]


@jit
def batch_norm_centered_squares(x, mean, work, out):
    """out[j] = sum over rows of (x[:, j] - mean[j])**2; work (c,) is scratch."""
    m, c = x.shape
    zero = x.dtype.type(0)
    out[:] = zero
    for r0 in range(0, m, _BN_BLOCK):
        work[:] = zero
        for r in range(r0, min(m, r0 + _BN_BLOCK)):
            for j in range(c):
                d = x[r, j] - mean[j]
                work[j] += d * d
        for j in range(c):
            out[j] += work[j]


@jit
def batch_norm_stats(x, work, mean, var):
    """mean and biased variance of each column of x (two passes); work (c,) is scratch."""
    inv_m = x.dtype.type(1) / x.dtype.type(x.shape[0])
    batch_norm_column_sums(x, work, mean)
    for j in range(mean.shape[0]):
        mean[j] *= inv_m
    batch_norm_centered_squares(x, mean, work, var)
    for j in range(var.shape[0]):
        var[j] *= inv_m


@jit
def batch_norm_update_moving(mean, var, eps, momentum, moving_mean, moving_var, rstd):
    """moving = moving * momentum + batch * (1 - momentum); rstd = 1 / sqrt(var + eps)."""
    one = mean.dtype.type(1)
    for j in range(mean.shape[0]):
        moving_mean[j] = moving_mean[j] * momentum + mean[j] * (one - momentum)
        moving_var[j] = moving_var[j] * momentum + var[j] * (one - momentum)
        rstd[j] = one / np.sqrt(var[j] + eps)


@jit
def batch_norm_apply(x, gamma, beta, mean, rstd, use_scale, use_center, work, out):
    """out = (x - mean) * rstd * gamma + beta; work (c,) is scratch."""
    m, c = x.shape
    for j in range(c):
        work[j] = rstd[j] * gamma[j] if use_scale else rstd[j]
    for r in range(m):
        for j in range(c):
            v = (x[r, j] - mean[j]) * work[j]
            out[r, j] = v + beta[j] if use_center else v


@jit
def batch_norm_forward(x, gamma, beta, eps, momentum, training, use_scale, use_center,
                       moving_mean, moving_var, work, mean, rstd, out):
    """out = (x - mean) * rstd * gamma + beta over columns of x (m, c).

    training: mean/variance of this batch (biased), and the moving statistics
    are updated in place: moving = moving * momentum + batch * (1 - momentum).
    Otherwise the moving statistics are used. mean and rstd (c,) are written
    for backward; work (c,) is scratch.
    """
    one = x.dtype.type(1)
    if training:
        batch_norm_stats(x, work, mean, rstd)  # rstd holds the variance for now
        batch_norm_update_moving(mean, rstd, eps, momentum, moving_mean, moving_var, rstd)
    else:
        for j in range(x.shape[1]):
            mean[j] = moving_mean[j]
            rstd[j] = one / np.sqrt(moving_var[j] + eps)
    batch_norm_apply(x, gamma, beta, mean, rstd, use_scale, use_center, work, out)


@jit
def batch_norm_backward_sums(x, dy, mean, rstd, work, sdy, sdx):
    """sdy[j] = sum(dy[:, j]) and sdx[j] = sum(dy[:, j] * xhat[:, j]); work (2, c) is scratch."""
    m, c = x.shape
    zero = x.dtype.type(0)
    sdy[:] = zero
    sdx[:] = zero
    for r0 in range(0, m, _BN_BLOCK):
        for j in range(c):
            work[0, j] = zero
            work[1, j] = zero
        for r in range(r0, min(m, r0 + _BN_BLOCK)):
            for j in range(c):
                g = dy[r, j]
                work[0, j] += g
                work[1, j] += g * (x[r, j] - mean[j])
        for j in range(c):
            sdy[j] += work[0, j]
            sdx[j] += work[1, j] * rstd[j]


@jit
def batch_norm_backward_dx(x, dy, gamma, mean, rstd, sdy, sdx, count, training, use_scale, work, dx):
    """dx from the column sums of batch_norm_backward_sums taken over ``count`` rows
    (this x's rows, or the global batch's under data parallel); work (2, c) is scratch.

    training: dx = g * rstd / count * (count * dy - sdy - xhat * sdx), g = gamma;
    in inference mode the statistics are constants: dx = dy * g * rstd.
    """
    m, c = x.shape
    inv_m = x.dtype.type(1) / x.dtype.type(count)
    for j in range(c):
        work[0, j] = rstd[j] * gamma[j] if use_scale else rstd[j]
        work[1, j] = sdy[j] * inv_m
    if training:
        for r in range(m):
            for j in range(c):
                xh = (x[r, j] - mean[j]) * rstd[j]
                dx[r, j] = work[0, j] * (dy[r, j] - work[1, j] - xh * sdx[j] * inv_m)
    else:
        for r in range(m):
            for j in range(c):
                dx[r, j] = dy[r, j] * work[0, j]


@jit
def batch_norm_backward(x, dy, gamma, mean, rstd, training, use_scale, use_center, work,
                        dx, dgamma, dbeta):
    """Gradients of batch_norm_forward; dgamma/dbeta (c,) overwritten. work (4, c) is scratch."""
    sdy = dbeta if use_center else work[2]
    sdx = dgamma if use_scale else work[3]
    batch_norm_backward_sums(x, dy, mean, rstd, work, sdy, sdx)
    batch_norm_backward_dx(x, dy, gamma, mean, rstd, sdy, sdx, x.shape[0], training, use_scale, work, dx)


# ---------------------------------------------------------------- GroupNormalization
# x is (n, m, c): a sample's positions (every axis but batch and channels) flattened into
# m, channels last. Channel j is in group j // (c // groups); a group of a sample is
# normalized over its m * c / groups values, two passes (mean, then centred squares) as
# for layer norm, then each channel is scaled and shifted by its own gamma, beta.
@jit
def group_norm_forward(x, gamma, beta, eps, groups, use_scale, use_center, out, mean, rstd):
    """out = (x - mean) / sqrt(var + eps) * gamma + beta with per-(sample, group)
    statistics; mean, rstd (n, groups) are written for backward."""
    n, m, c = x.shape
    cg = c // groups
    one = x.dtype.type(1)
    zero = one - one
    inv = one / x.dtype.type(m * cg)
    for b in range(n):
        for g in range(groups):
            j0 = g * cg
            s = zero
            for p in range(m):
                for j in range(j0, j0 + cg):
                    s += x[b, p, j]
            mu = s * inv
            s = zero
            for p in range(m):
                for j in range(j0, j0 + cg):
                    e = x[b, p, j] - mu
                    s += e * e
            r = one / math.sqrt(s * inv + eps)
            mean[b, g] = mu
            rstd[b, g] = r
            for p in range(m):
                for j in range(j0, j0 + cg):
                    h = (x[b, p, j] - mu) * r
                    if use_scale:
                        h = h * gamma[j]
                    if use_center:
                        h = h + beta[j]
                    out[b, p, j] = h


@jit
def group_norm_backward(x, gamma, mean, rstd, dy, groups, use_scale, use_center, dx, dgamma, dbeta):
    """Gradients of group_norm_forward (dgamma/dbeta overwritten, summed over samples and
    positions). Per group, with g = dy * gamma and k = m * c / groups values:
    dx = rstd * (g - mean(g) - x_hat * mean(g * x_hat))."""
    n, m, c = x.shape
    cg = c // groups
    one = x.dtype.type(1)
    zero = one - one
    inv = one / x.dtype.type(m * cg)
    if use_scale:
        dgamma[:] = zero
    if use_center:
        dbeta[:] = zero
    for b in range(n):
        for g in range(groups):
            j0 = g * cg
            mu = mean[b, g]
            r = rstd[b, g]
            sg = zero
            sgx = zero
            for p in range(m):
                for j in range(j0, j0 + cg):
                    xh = (x[b, p, j] - mu) * r
                    gy = dy[b, p, j]
                    if use_scale:
                        dgamma[j] += gy * xh
                        gy = gy * gamma[j]
                    if use_center:
                        dbeta[j] += dy[b, p, j]
                    sg += gy
                    sgx += gy * xh
            sg *= inv
            sgx *= inv
            for p in range(m):
                for j in range(j0, j0 + cg):
                    xh = (x[b, p, j] - mu) * r
                    gy = dy[b, p, j] * gamma[j] if use_scale else dy[b, p, j]
                    dx[b, p, j] = r * (gy - sg - xh * sgx)
