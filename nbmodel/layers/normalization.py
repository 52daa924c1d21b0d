"""Normalization layers: LayerNormalization (and BatchNormalization).

Kernels: nbmodel/kernels/cpu/norm.py.
"""
from __future__ import annotations

import numpy as np

from .base import Layer

__all__ = ["LayerNormalization"]


class LayerNormalization(Layer):
    """Normalizes each sample over the trailing ``axis`` (default -1), then
    scales by ``gamma`` and shifts by ``beta``.

    Params: ``gamma`` then ``beta``, each of the normalized axes' shape.
    ``axis`` may be an int or a list of axes; they must be the trailing axes
    of the input (the normalized block is then contiguous).
    """

    def __init__(self, axis=-1, epsilon=1e-3, center=True, scale=True, beta_initializer="zeros",
                 gamma_initializer="ones", **kwargs):
        super().__init__(**kwargs)
        axes = [axis] if isinstance(axis, (int, np.integer)) else list(axis)
        if not axes or not all(isinstance(a, (int, np.integer)) for a in axes):
            raise ValueError(f"{self.name}: axis must be an int or a list of ints, got {axis!r}")
        self.axis = axis if isinstance(axis, (int, np.integer)) else list(axis)
        self._axes = [int(a) for a in axes]
        self.epsilon = float(epsilon)
        if not self.epsilon > 0:
            raise ValueError(f"{self.name}: epsilon must be > 0, got {epsilon!r}")
        self.center = bool(center)
        self.scale = bool(scale)
        self.beta_initializer = beta_initializer
        self.gamma_initializer = gamma_initializer

    def _norm_axes(self, ndim):
        if any(not -ndim <= a < ndim for a in self._axes):
            raise ValueError(f"{self.name}: axis {self.axis} is out of range for inputs of rank {ndim}")
        axes = sorted({a % ndim for a in self._axes})
        if 0 in axes:
            raise ValueError(f"{self.name}: the batch axis cannot be normalized (axis {self.axis})")
        if axes != list(range(ndim - len(axes), ndim)):
            raise ValueError(f"{self.name}: axis {self.axis} must be the trailing axes of the input "
                             f"(rank {ndim})")
        return axes

    def build(self, input_shape):
        if len(input_shape) < 2:
            raise ValueError(f"{self.name}: expected input of rank >= 2, got shape {input_shape}")
        axes = self._norm_axes(len(input_shape))
        pshape = tuple(input_shape[a] for a in axes)
        if any(s is None for s in pshape):
            raise ValueError(f"{self.name}: the normalized axes must be known, got {input_shape}")
        self._pshape = pshape
        if self.scale:
            self.add_param("gamma", pshape, self.gamma_initializer)
        if self.center:
            self.add_param("beta", pshape, self.beta_initializer)
        super().build(input_shape)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def forward(self, x, training=False):
        self.ensure_built(np.shape(x))
        x = self.check_input(x, min_ndim=2)
        k = len(self._pshape)
        if x.ndim < k + 1 or tuple(x.shape[x.ndim - k:]) != self._pshape:
            raise ValueError(f"{self.name}: expected input whose trailing dimensions are {self._pshape}, "
                             f"got shape {x.shape}")
        d = int(np.prod(self._pshape))
        x2 = x.reshape(-1, d)
        n = x2.shape[0]
        y = self.workspace("y", x.shape)
        mean = self.workspace("mean", (n,))
        rstd = self.workspace("rstd", (n,))
        gamma = self.params["gamma"].reshape(-1) if self.scale else x2[0, :0]
        beta = self.params["beta"].reshape(-1) if self.center else x2[0, :0]
        self.kernels("norm").layer_norm_forward(x2, gamma, beta, self.dtype.type(self.epsilon), self.scale,
                                                self.center, y.reshape(n, d), mean, rstd)
        self._cache = (x2, mean, rstd, x.shape)
        return y

    def backward(self, dy):
        x2, mean, rstd, shape = self._cache
        n, d = x2.shape
        dy2 = np.ascontiguousarray(dy, dtype=self.dtype).reshape(n, d)
        dx = self.workspace("dx", shape)
        gamma = self.params["gamma"].reshape(-1) if self.scale else x2[0, :0]
        dgamma = self.grads["gamma"].reshape(-1) if self.scale else x2[0, :0]
        dbeta = self.grads["beta"].reshape(-1) if self.center else x2[0, :0]
        if (self.scale and not np.shares_memory(dgamma, self.grads["gamma"])) or \
                (self.center and not np.shares_memory(dbeta, self.grads["beta"])):
            raise RuntimeError(f"{self.name}: gradient arrays must be contiguous")
        self.kernels("norm").layer_norm_backward(x2, gamma, mean, rstd, dy2, self.scale, self.center,
                                                 dx.reshape(n, d), dgamma, dbeta)
        return dx

    def get_config(self):
        cfg = super().get_config()
        cfg.update(axis=self.axis, epsilon=self.epsilon, center=self.center, scale=self.scale,
                   beta_initializer=self.beta_initializer, gamma_initializer=self.gamma_initializer)
        return cfg
