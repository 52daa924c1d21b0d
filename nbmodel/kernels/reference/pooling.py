"""Reference pooling (float64 NumPy, written for clarity).

x (n, h, w, c); 1-D pooling is 2-D pooling with h = 1 and a pool height of 1.
Padding is given explicitly as (top, bottom, left, right). Padded positions
never win a max and are not counted in an average (Keras).
"""
import numpy as np


def pool2d(x, pool, strides, pads, mode):
    """Max ("max") or average ("avg") pooling with explicit (top, bottom, left, right) pads."""
    x = np.asarray(x, np.float64)
    n, h, w, c = x.shape
    ph, pw = pool
    sh, sw = strides
    t, b, lft, r = pads
    oh = (h + t + b - ph) // sh + 1
    ow = (w + lft + r - pw) // sw + 1
    y = np.zeros((n, oh, ow, c))
    for i in range(oh):
        for j in range(ow):
            h0, w0 = i * sh - t, j * sw - lft
            win = x[:, max(h0, 0): min(h0 + ph, h), max(w0, 0): min(w0 + pw, w), :]
            y[:, i, j, :] = win.max(axis=(1, 2)) if mode == "max" else win.mean(axis=(1, 2))
    return y


def pool2d_backward(x, dy, pool, strides, pads, mode):
    """dx of pool2d given dy; a max routes to the first largest element of its window."""
    x = np.asarray(x, np.float64)
    dy = np.asarray(dy, np.float64)
    n, h, w, c = x.shape
    ph, pw = pool
    sh, sw = strides
    t, _, lft, _ = pads
    dx = np.zeros_like(x)
    for i in range(dy.shape[1]):
        for j in range(dy.shape[2]):
            h0, w0 = i * sh - t, j * sw - lft
            hs, he = max(h0, 0), min(h0 + ph, h)
            ws, we = max(w0, 0), min(w0 + pw, w)
            win = x[:, hs:he, ws:we, :]
            if mode == "avg":
                dx[:, hs:he, ws:we, :] += dy[:, i, j, None, None, :] / ((he - hs) * (we - ws))
                continue
            flat = win.reshape(n, -1, c)
            k = flat.argmax(axis=1)  # first maximum, row-major in the window
            ww = we - ws
            for b in range(n):
                for ch in range(c):
                    kk = k[b, ch]
                    dx[b, hs + kk // ww, ws + kk % ww, ch] += dy[b, i, j, ch]
    return dx


def max_pool_forward(x, pool, strides, pads):
    """Window maxima of x (n, h, w, c)."""
    return pool2d(x, pool, strides, pads, "max")


def avg_pool_forward(x, pool, strides, pads):
    """Window means of x (n, h, w, c), padding not counted."""
    return pool2d(x, pool, strides, pads, "avg")


def max_pool_backward(x, dy, pool, strides, pads):
    """dx of max_pool_forward: dy routed to the first largest element of each window."""
    return pool2d_backward(x, dy, pool, strides, pads, "max")


def avg_pool_backward(x, dy, pool, strides, pads):
    """dx of avg_pool_forward: dy spread evenly over the real elements of each window
    (x gives the input shape only)."""
    return pool2d_backward(x, dy, pool, strides, pads, "avg")


def _spatial_axes(x):
    return tuple(range(1, x.ndim - 1))


def global_avg_forward(x):
    """Mean over every axis but batch and channels."""
    x = np.asarray(x, np.float64)
    return x.mean(axis=_spatial_axes(x))


def global_max_forward(x):
    """Max over every axis but batch and channels."""
    x = np.asarray(x, np.float64)
    return x.max(axis=_spatial_axes(x))


def global_avg_masked(x, mask):
    """GlobalAveragePooling1D with a Keras mask: the mean of x (b, t, c) over the steps where
    mask (b, t) is True; zeros for a sample with no such step."""
    x = np.asarray(x, np.float64)
    m = np.asarray(mask, bool)[:, :, None]
    count = m.sum(axis=1)
    return np.where(count > 0, (x * m).sum(axis=1) / np.maximum(count, 1), 0.0)
