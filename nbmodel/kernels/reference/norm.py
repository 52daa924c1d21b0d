"""Reference normalization layers (float64 NumPy, written for clarity)."""
import numpy as np


def batch_norm_forward(x, gamma, beta, epsilon):
    """BatchNormalization in training mode over every axis but the last.

    Returns (y, batch mean, batch variance); the variance is the biased one
    (divided by the count), which is also what updates the moving variance.
    """
    x = np.asarray(x, np.float64)
    axes = tuple(range(x.ndim - 1))
    mean = x.mean(axis=axes)
    var = x.var(axis=axes)
    y = (x - mean) / np.sqrt(var + epsilon) * gamma + beta
    return y, mean, var


def batch_norm_infer(x, gamma, beta, moving_mean, moving_variance, epsilon):
    """BatchNormalization in inference mode (or frozen): the moving statistics normalize."""
    x = np.asarray(x, np.float64)
    return (x - moving_mean) / np.sqrt(moving_variance + epsilon) * gamma + beta


def batch_norm_backward(x, gamma, dy, epsilon):
    """(dx, dgamma, dbeta) of batch_norm_forward (training mode), written out from the chain rule."""
    x = np.asarray(x, np.float64)
    dy = np.asarray(dy, np.float64)
    axes = tuple(range(x.ndim - 1))
    m = x.size // x.shape[-1]
    mean = x.mean(axis=axes)
    var = x.var(axis=axes)
    inv = 1.0 / np.sqrt(var + epsilon)
    xhat = (x - mean) * inv
    dgamma = (dy * xhat).sum(axis=axes)
    dbeta = dy.sum(axis=axes)
    dxhat = dy * gamma
    dx = inv / m * (m * dxhat - dxhat.sum(axis=axes) - xhat * (dxhat * xhat).sum(axis=axes))
    return dx, dgamma, dbeta


def layer_norm_forward(x, gamma, beta, epsilon):
    """LayerNormalization over the last axis (biased variance, like Keras); gamma/beta None: off."""
    x = np.asarray(x, np.float64)
    mean = x.mean(axis=-1, keepdims=True)
    var = x.var(axis=-1, keepdims=True)
    y = (x - mean) / np.sqrt(var + epsilon)
    if gamma is not None:
        y = y * gamma
    if beta is not None:
        y = y + beta
    return y


def layer_norm_backward(x, gamma, dy, epsilon):
    """(dx, dgamma, dbeta) of layer_norm_forward, written out from the chain rule."""
    x = np.asarray(x, np.float64)
    dy = np.asarray(dy, np.float64)
    d = x.shape[-1]
    mean = x.mean(axis=-1, keepdims=True)
    inv = 1.0 / np.sqrt(x.var(axis=-1, keepdims=True) + epsilon)
    xhat = (x - mean) * inv
    lead = tuple(range(x.ndim - 1))
    dgamma = (dy * xhat).sum(axis=lead)
    dbeta = dy.sum(axis=lead)
    g = dy * (1.0 if gamma is None else gamma)
    dx = inv / d * (d * g - g.sum(axis=-1, keepdims=True) - xhat * (g * xhat).sum(axis=-1, keepdims=True))
    return dx, dgamma, dbeta


def group_norm_forward(x, gamma, beta, groups, epsilon):
    """GroupNormalization over the last axis (channels) as Keras 3 computes it: channels split
    into ``groups`` consecutive groups, each sample's group normalized over its positions and
    channels (biased variance); gamma/beta None: off."""
    x = np.asarray(x, np.float64)
    n, c = x.shape[0], x.shape[-1]
    xg = x.reshape(n, -1, groups, c // groups)
    mean = xg.mean(axis=(1, 3), keepdims=True)
    var = xg.var(axis=(1, 3), keepdims=True)
    y = ((xg - mean) / np.sqrt(var + epsilon)).reshape(x.shape)
    if gamma is not None:
        y = y * gamma
    if beta is not None:
        y = y + beta
    return y


def group_norm_backward(x, gamma, dy, groups, epsilon):
    """(dx, dgamma, dbeta) of group_norm_forward, written out from the chain rule."""
    x = np.asarray(x, np.float64)
    dy = np.asarray(dy, np.float64)
    n, c = x.shape[0], x.shape[-1]
    xg = x.reshape(n, -1, groups, c // groups)
    k = xg.shape[1] * xg.shape[3]
    mean = xg.mean(axis=(1, 3), keepdims=True)
    inv = 1.0 / np.sqrt(xg.var(axis=(1, 3), keepdims=True) + epsilon)
    xhat = ((xg - mean) * inv).reshape(x.shape)
    lead = tuple(range(x.ndim - 1))
    dgamma = (dy * xhat).sum(axis=lead)
    dbeta = dy.sum(axis=lead)
    g = (dy * (1.0 if gamma is None else gamma)).reshape(xg.shape)
    xh = xhat.reshape(xg.shape)
    dx = inv / k * (k * g - g.sum(axis=(1, 3), keepdims=True) - xh * (g * xh).sum(axis=(1, 3), keepdims=True))
    return dx.reshape(x.shape), dgamma, dbeta
