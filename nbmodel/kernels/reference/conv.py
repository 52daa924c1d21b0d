"""Reference convolutions (float64 NumPy, written for clarity, not speed).

Layout is channels_last: x (n, h, w, c), kernel (kh, kw, c, filters). A 1-D
convolution is the 2-D one with h = kh = 1. Padding is given explicitly as
(top, bottom, left, right) zeros; ``padding_amounts`` turns Keras padding
names into those numbers.
"""
import math

import numpy as np

from .dense import activation


def padding_amounts(n, k, stride, dilation, padding):
    """(before, after, out) for one spatial axis, Keras/TF rules.

    "valid": no padding. "same": out = ceil(n / stride), the odd pad at the end.
    "causal": all the padding before (1-D only), out = ceil(n / stride).
    """
    eff = (k - 1) * dilation + 1
    if padding == "valid":
        before = after = 0
    elif padding == "same":
        out = math.ceil(n / stride)
        total = max((out - 1) * stride + eff - n, 0)
        before, after = total // 2, total - total // 2
    elif padding == "causal":
        before, after = eff - 1, 0
    else:
        raise ValueError(padding)
    out = (n + before + after - eff) // stride + 1
    return before, after, out


def _pad(x, pads):
    t, b, lft, r = pads
    return np.pad(x, ((0, 0), (t, b), (lft, r), (0, 0)))


def _window(xp, i, j, strides, dilation, oh, ow):
    sh, sw = strides
    dh, dw = dilation
    return xp[:, i * dh: i * dh + sh * (oh - 1) + 1: sh, j * dw: j * dw + sw * (ow - 1) + 1: sw, :]


def conv_forward(x, kernel, bias=None, strides=(1, 1), pads=(0, 0, 0, 0), dilation=(1, 1),
                 activation_name=None):
    """y = act(conv(x, kernel) + bias); returns y of shape (n, oh, ow, filters)."""
    x = np.asarray(x, np.float64)
    kernel = np.asarray(kernel, np.float64)
    kh, kw, _, f = kernel.shape
    xp = _pad(x, pads)
    oh = (xp.shape[1] - (kh - 1) * dilation[0] - 1) // strides[0] + 1
    ow = (xp.shape[2] - (kw - 1) * dilation[1] - 1) // strides[1] + 1
    z = np.zeros((x.shape[0], oh, ow, f))
    for i in range(kh):
        for j in range(kw):
            z += _window(xp, i, j, strides, dilation, oh, ow) @ kernel[i, j]
    if bias is not None:
        z = z + bias
    return activation(activation_name, z)


def conv_backward(x, kernel, dz, strides=(1, 1), pads=(0, 0, 0, 0), dilation=(1, 1)):
    """Gradients (dx, dkernel, dbias) of z = conv(x, kernel) + bias given dz = dL/dz."""
    x = np.asarray(x, np.float64)
    kernel = np.asarray(kernel, np.float64)
    dz = np.asarray(dz, np.float64)
    kh, kw, _, _ = kernel.shape
    xp = _pad(x, pads)
    oh, ow = dz.shape[1:3]
    dxp = np.zeros_like(xp)
    dk = np.zeros_like(kernel)
    for i in range(kh):
        for j in range(kw):
            win = _window(xp, i, j, strides, dilation, oh, ow)
            dk[i, j] = np.einsum("nhwc,nhwf->cf", win, dz)
            _window(dxp, i, j, strides, dilation, oh, ow)[...] += dz @ kernel[i, j].T
    t, _, lft, _ = pads
    dx = dxp[:, t: t + x.shape[1], lft: lft + x.shape[2], :]
    return dx, dk, dz.sum(axis=(0, 1, 2))


def conv_transpose_pads(k, stride, dilation, padding, output_padding=None):
    """(before, after) padding of the stride-dilated input of a transposed convolution along
    one axis: Keras 3's rule for its JAX and NumPy backends, written out independently of the
    layer's (which states the same thing as output size and convolution padding)."""
    eff = (k - 1) * dilation + 1
    if padding == "valid":
        op = max(eff, stride) - eff if output_padding is None else output_padding
        return eff - 1, eff - 1 + op
    pad_len = stride + eff - 2 if output_padding is None else eff + eff % 2 - 2 + output_padding
    before = min(pad_len // 2 + pad_len % 2, eff - 1)
    return before, pad_len - before


def conv_transpose_forward(x, kernel, bias=None, strides=(1, 1), pads=((0, 0), (0, 0)), dilation=(1, 1),
                           activation_name=None):
    """y = act(conv_transpose(x, kernel) + bias) for kernel (kh, kw, filters, c), by its
    definition: stride - 1 zeros between neighbouring inputs, the result padded by
    ((top, bottom), (left, right)), then a stride-1 convolution with the spatially flipped
    kernel (and the same dilation)."""
    x = np.asarray(x, np.float64)
    kernel = np.asarray(kernel, np.float64)
    n, h, w, c = x.shape
    sh, sw = strides
    xd = np.zeros((n, (h - 1) * sh + 1, (w - 1) * sw + 1, c))
    xd[:, ::sh, ::sw] = x
    (t, b), (lft, r) = pads
    flipped = kernel[::-1, ::-1].transpose(0, 1, 3, 2)  # (kh, kw, c, filters)
    return conv_forward(xd, flipped, bias, (1, 1), (t, b, lft, r), dilation, activation_name)


def depthwise_forward(x, kernel, bias=None, strides=(1, 1), pads=(0, 0, 0, 0), dilation=(1, 1),
                      activation_name=None):
    """y = act(depthwise_conv(x, kernel) + bias) for the Keras depthwise kernel (kh, kw, c, M):
    input channel ch convolved with kernel[..., ch, mm] gives output channel ch*M + mm.
    Returns y of shape (n, oh, ow, c*M)."""
    x = np.asarray(x, np.float64)
    kernel = np.asarray(kernel, np.float64)
    kh, kw, c, m = kernel.shape
    xp = _pad(x, pads)
    oh = (xp.shape[1] - (kh - 1) * dilation[0] - 1) // strides[0] + 1
    ow = (xp.shape[2] - (kw - 1) * dilation[1] - 1) // strides[1] + 1
    z = np.zeros((x.shape[0], oh, ow, c, m))
    for i in range(kh):
        for j in range(kw):
            z += _window(xp, i, j, strides, dilation, oh, ow)[..., None] * kernel[i, j]
    z = z.reshape(x.shape[0], oh, ow, c * m)
    if bias is not None:
        z = z + bias
    return activation(activation_name, z)


def depthwise_backward(x, kernel, dz, strides=(1, 1), pads=(0, 0, 0, 0), dilation=(1, 1)):
    """Gradients (dx, dkernel, dbias) of z = depthwise_conv(x, kernel) + bias given dz = dL/dz
    (n, oh, ow, c*M)."""
    x = np.asarray(x, np.float64)
    kernel = np.asarray(kernel, np.float64)
    kh, kw, c, m = kernel.shape
    dz = np.asarray(dz, np.float64)
    n, oh, ow, _ = dz.shape
    dz5 = dz.reshape(n, oh, ow, c, m)
    xp = _pad(x, pads)
    dxp = np.zeros_like(xp)
    dk = np.zeros_like(kernel)
    for i in range(kh):
        for j in range(kw):
            win = _window(xp, i, j, strides, dilation, oh, ow)
            dk[i, j] = np.einsum("nhwc,nhwcm->cm", win, dz5)
            _window(dxp, i, j, strides, dilation, oh, ow)[...] += np.einsum("nhwcm,cm->nhwc", dz5, kernel[i, j])
    t, _, lft, _ = pads
    dx = dxp[:, t: t + x.shape[1], lft: lft + x.shape[2], :]
    return dx, dk, dz.sum(axis=(0, 1, 2))
