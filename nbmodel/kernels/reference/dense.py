"""Reference Dense and Dropout (float64 NumPy), and the activations they fuse.

``activation`` is the one implementation of every activation by name; the
activations family's oracle (``activations.activation_forward``) and the
other reference modules use it.
"""
import math

import numpy as np

_erf = np.vectorize(math.erf)


def activation(name, z):
    """``act(z)`` for an activation given by name (softmax: over the last axis)."""
    z = np.asarray(z, np.float64)
    if name in (None, "linear"):
        return z.copy()
    if name == "relu":
        return np.maximum(z, 0.0)
    if name == "sigmoid":
        return 1.0 / (1.0 + np.exp(-z))
    if name == "tanh":
        return np.tanh(z)
    if name == "gelu":
        return 0.5 * z * (1.0 + _erf(z / math.sqrt(2.0)))
    if name == "leaky_relu":
        return np.where(z > 0, z, 0.2 * z)
    if name == "elu":
        return np.where(z > 0, z, np.expm1(np.minimum(z, 0.0)))
    if name in ("silu", "swish"):
        return z / (1.0 + np.exp(-z))
    if name == "softmax":
        e = np.exp(z - z.max(axis=-1, keepdims=True))
        return e / e.sum(axis=-1, keepdims=True)
    raise ValueError(name)


def dense_forward(x, kernel, bias=None, activation_name=None):
    """``act(x @ kernel + bias)`` over the last axis of x (any leading axes); no bias when None."""
    z = np.asarray(x, np.float64) @ np.asarray(kernel, np.float64)
    if bias is not None:
        z = z + bias
    return activation(activation_name, z)


def dropout_forward(x, u, rate):
    """``x / (1 - rate)`` where the uniform draw ``u >= rate``, else 0."""
    x = np.asarray(x, np.float64)
    return np.where(np.asarray(u) >= rate, x / (1.0 - rate), 0.0)
