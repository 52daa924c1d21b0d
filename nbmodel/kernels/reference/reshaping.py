"""Reference of the reshaping family (float64 NumPy): repeats, their sums,
zero padding, cropping and axis permutations, written with NumPy's own
operations (the layers' oracle in tests/test_reshaping.py)."""
import numpy as np


def repeat_rows(src, m):
    """(p, q) -> (p, m, q): every row repeated m times."""
    return np.repeat(np.asarray(src, np.float64)[:, None, :], m, axis=1)


def sum_rows(src):
    """(p, m, q) -> (p, q): the sum over axis 1 (the gradient of repeat_rows)."""
    return np.asarray(src, np.float64).sum(axis=1)


def pad_2d(src, top, bottom, left, right):
    """Zero padding of the two spatial axes of (n, h, w, c)."""
    return np.pad(np.asarray(src, np.float64), ((0, 0), (top, bottom), (left, right), (0, 0)))


def crop_2d(src, top, bottom, left, right):
    """Cropping of the two spatial axes of (n, h, w, c)."""
    x = np.asarray(src, np.float64)
    return x[:, top:x.shape[1] - bottom, left:x.shape[2] - right]


def permute(src, axes):
    """``src.transpose(axes)``."""
    return np.ascontiguousarray(np.transpose(np.asarray(src, np.float64), axes))


def resize_linear(src, s):
    """(p, m, q) -> (p, m * s, q): linear interpolation at half-pixel centres
    ((j + 0.5) / s - 0.5), source coordinates clamped to [0, m - 1]."""
    x = np.asarray(src, np.float64)
    m = x.shape[1]
    c = np.clip((np.arange(m * s) + 0.5) / s - 0.5, 0.0, m - 1)
    i0 = np.floor(c).astype(int)
    i1 = np.minimum(i0 + 1, m - 1)
    t = (c - i0)[None, :, None]
    return x[:, i0] * (1 - t) + x[:, i1] * t


def upsample_bilinear(x, sizes):
    """UpSampling2D(interpolation="bilinear") of (n, h, w, c): the height, then the width."""
    n, h, w, c = np.shape(x)
    y = resize_linear(np.reshape(x, (n, h, w * c)), sizes[0]).reshape(n, h * sizes[0], w, c)
    return resize_linear(y.reshape(n * h * sizes[0], w, c), sizes[1]).reshape(n, h * sizes[0], w * sizes[1], c)


def upsample_nearest(x, sizes):
    """Each of the spatial axes 1..len(sizes) of x repeated element by element (Keras UpSampling)."""
    y = np.asarray(x, np.float64)
    for axis, s in enumerate(sizes, start=1):
        y = np.repeat(y, s, axis=axis)
    return y
