"""Normalization kernels (LayerNormalization; BatchNormalization).

Layer norm: each row (the normalized axes flattened) is normalized with its
own mean and variance. Forward keeps only the per-row mean and 1/std; backward
recomputes x_hat from them in the same pass that forms dx, dgamma and dbeta,
so x is read once per pass and nothing of size x is cached but x itself.
"""
import math

import numpy as np

from ._jit import jit


@jit
def layer_norm_forward(x, gamma, beta, eps, use_scale, use_center, out, mean, rstd):
    """out = (x - mean) / sqrt(var + eps) * gamma + beta, row by row.

    x, out (n, d); gamma, beta (d,); mean, rstd (n,) are written for backward.
    Two passes over each row (mean, then centred variance): accurate in float32.
    """
    n, d = x.shape
    one = x.dtype.type(1)
    zero = one - one
    inv_d = one / d
    for i in range(n):
        s = zero
        for j in range(d):
            s += x[i, j]
        mu = s * inv_d
        v = zero
        for j in range(d):
            c = x[i, j] - mu
            v += c * c
        r = one / math.sqrt(v * inv_d + eps)
        mean[i] = mu
        rstd[i] = r
        for j in range(d):
            h = (x[i, j] - mu) * r
            if use_scale:
                h = h * gamma[j]
            if use_center:
                h = h + beta[j]
            out[i, j] = h


@jit
def layer_norm_backward(x, gamma, mean, rstd, dy, use_scale, use_center, dx, dgamma, dbeta):
    """Gradients of layer_norm_forward (dgamma/dbeta overwritten, summed over rows).

    dx = rstd * (g - mean(g) - x_hat * mean(g * x_hat)), g = dy * gamma.
    """
    n, d = x.shape
    one = x.dtype.type(1)
    zero = one - one
    inv_d = one / d
    if use_scale:
        dgamma[:] = zero
    if use_center:
        dbeta[:] = zero
    for i in range(n):
        mu = mean[i]
        r = rstd[i]
        sg = zero
        sgx = zero
        for j in range(d):
            xh = (x[i, j] - mu) * r
            g = dy[i, j]
            if use_scale:
                dgamma[j] += g * xh
                g = g * gamma[j]
            if use_center:
                dbeta[j] += dy[i, j]
            sg += g
            sgx += g * xh
        sg *= inv_d
        sgx *= inv_d
        for j in range(d):
            xh = (x[i, j] - mu) * r
            g = dy[i, j] * gamma[j] if use_scale else dy[i, j]
            dx[i, j] = r * (g - sg - xh * sgx)
