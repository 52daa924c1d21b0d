"""Pooling layers: Max/AveragePooling1D/2D, GlobalAverage/GlobalMaxPooling1D/2D.

Kernels: nbmodel/kernels/cpu/pooling.py. 1-D pooling runs as 2-D pooling with
a height of 1. Max pooling keeps the position of each window's maximum for
backward. "same" padding follows Keras: output ceil(n / stride), the odd
padding element at the end, padding never counted in an average.
"""
from __future__ import annotations

import math

import numpy as np

from .base import Layer
from .conv import int_tuple, padding_amounts

__all__ = ["MaxPooling1D", "MaxPooling2D", "AveragePooling1D", "AveragePooling2D",
           "GlobalAveragePooling1D", "GlobalAveragePooling2D", "GlobalMaxPooling1D",
           "GlobalMaxPooling2D"]


class _Pool(Layer):
    rank = 2
    mode = "max"

    def __init__(self, pool_size=2, strides=None, padding="valid", data_format=None, **kwargs):
        super().__init__(**kwargs)
        self.pool_size = int_tuple(self.name, pool_size, self.rank, "pool_size")
        self.strides = self.pool_size if strides is None else int_tuple(self.name, strides, self.rank, "strides")
        padding = padding.lower() if isinstance(padding, str) else padding
        if padding not in ("valid", "same"):
            raise ValueError(f"{self.name}: padding must be 'valid' or 'same', got {padding!r}")
        self.padding = padding
        if data_format not in (None, "channels_last"):
            raise ValueError(f"{self.name}: only data_format='channels_last' is supported, got {data_format!r}")

    def _geometry(self, spatial):
        """((pt, oh), (pl, ow)) in the 2-D view (1-D: height 1); ValueError if the pool does not fit."""
        hw = (1, spatial[0]) if self.rank == 1 else tuple(spatial)
        ps = (1,) + self.pool_size if self.rank == 1 else self.pool_size
        st = (1,) + self.strides if self.rank == 1 else self.strides
        geo = []
        for ax, (n, p, s) in enumerate(zip(hw, ps, st)):
            before, after, out = padding_amounts(n, p, s, 1, "valid" if (self.rank == 1 and ax == 0)
                                                 else self.padding)
            if out <= 0:
                raise ValueError(f"{self.name}: pool of size {p} is larger than the padded input of size "
                                 f"{n + before + after} along spatial axis {ax + self.rank - 1}")
            geo.append((before, out))
        return geo, ps, st

    def build(self, input_shape):
        input_shape = tuple(input_shape)
        if len(input_shape) != self.rank + 2:
            raise ValueError(f"{self.name}: expected input of rank {self.rank + 2} "
                             f"(batch, {'steps' if self.rank == 1 else 'height, width'}, channels), "
                             f"got shape {input_shape}")
        spatial = input_shape[1:-1]
        if all(s is not None for s in spatial):
            self._geometry(spatial)
        super().build(input_shape)

    def compute_output_shape(self, input_shape):
        spatial = input_shape[1:-1]
        if any(s is None for s in spatial):
            out = (None,) * self.rank
        else:
            geo, _, _ = self._geometry(spatial)
            out = tuple(g[1] for g in geo)[2 - self.rank:]
        return (input_shape[0],) + out + (input_shape[-1],)

    def forward(self, x, training=False):
        self.ensure_built(np.shape(x))
        x = self.check_input(x, ndim=self.rank + 2)
        n, c = x.shape[0], x.shape[-1]
        geo, ps, st = self._geometry(x.shape[1:-1])
        (pt, oh), (pl, ow) = geo
        x4 = x.reshape((n,) + ((1,) + x.shape[1:-1] if self.rank == 1 else x.shape[1:-1]) + (c,))
        y = self.workspace("y", (n, oh, ow, c))
        k = self.kernels("pooling")
        if self.mode == "max":
            arg = self.workspace("arg", (n, oh, ow, c), np.int32)
            k.max_pool_forward(x4, ps[0], ps[1], st[0], st[1], pt, pl, y, arg)
        else:
            k.avg_pool_forward(x4, ps[0], ps[1], st[0], st[1], pt, pl, y)
        self._cache = (x.shape, x4.shape, ps, st, pt, pl)
        self._out4 = y.shape
        return y.reshape((n,) + ((ow,) if self.rank == 1 else (oh, ow)) + (c,))

    def backward(self, dy):
        x_shape, x4_shape, ps, st, pt, pl = self._cache
        n, oh, ow, c = self._out4
        dy4 = self.asarray(dy).reshape(n, oh, ow, c)
        dx = self.workspace("dx", x4_shape)
        k = self.kernels("pooling")
        if self.mode == "max":
            k.max_pool_backward(dy4, self.workspace("arg", (n, oh, ow, c), np.int32), ps[0], ps[1], st[0], st[1],
                                pt, pl, dx)
        else:
            k.avg_pool_backward(dy4, ps[0], ps[1], st[0], st[1], pt, pl, dx)
        return dx.reshape(x_shape)

    def get_config(self):
        cfg = super().get_config()
        one = self.rank == 1
        cfg.update(pool_size=self.pool_size[0] if one else list(self.pool_size),
                   strides=self.strides[0] if one else list(self.strides), padding=self.padding)
        return cfg


class MaxPooling2D(_Pool):
    """Max over pool_size windows of (batch, height, width, channels)."""

    rank, mode = 2, "max"


class AveragePooling2D(_Pool):
    """Mean over pool_size windows of (batch, height, width, channels)."""

    rank, mode = 2, "avg"


class MaxPooling1D(_Pool):
    """Max over pool_size windows of (batch, steps, channels)."""

    rank, mode = 1, "max"


class AveragePooling1D(_Pool):
    """Mean over pool_size windows of (batch, steps, channels)."""

    rank, mode = 1, "avg"


class _GlobalPool(Layer):
    rank = 2
    mode = "avg"

    def __init__(self, data_format=None, keepdims=False, **kwargs):
        super().__init__(**kwargs)
        if data_format not in (None, "channels_last"):
            raise ValueError(f"{self.name}: only data_format='channels_last' is supported, got {data_format!r}")
        self.keepdims = bool(keepdims)

    def build(self, input_shape):
        input_shape = tuple(input_shape)
        if len(input_shape) != self.rank + 2:
            raise ValueError(f"{self.name}: expected input of rank {self.rank + 2}, got shape {input_shape}")
        super().build(input_shape)

    def compute_output_shape(self, input_shape):
        if self.keepdims:
            return (input_shape[0],) + (1,) * self.rank + (input_shape[-1],)
        return (input_shape[0], input_shape[-1])

    def forward(self, x, training=False):
        self.ensure_built(np.shape(x))
        x = self.check_input(x, ndim=self.rank + 2)
        n, c = x.shape[0], x.shape[-1]
        x3 = x.reshape(n, -1, c)
        if x3.shape[1] == 0:
            raise ValueError(f"{self.name}: cannot pool an input with no steps, got shape {x.shape}")
        y = self.workspace("y", (n, c))
        k = self.kernels("pooling")
        if self.mode == "max":
            k.global_max_forward(x3, y, self.workspace("arg", (n, c), np.int32))
        else:
            k.global_avg_forward(x3, self.workspace("part", (c,)), y)
        self._shape = x.shape
        return y.reshape(self.compute_output_shape(x.shape)) if self.keepdims else y

    def backward(self, dy):
        n, c = self._shape[0], self._shape[-1]
        dy2 = self.asarray(dy).reshape(n, c)
        dx = self.workspace("dx", (n, math.prod(self._shape[1:-1]), c))
        k = self.kernels("pooling")
        if self.mode == "max":
            k.global_max_backward(dy2, self.workspace("arg", (n, c), np.int32), dx)
        else:
            k.global_avg_backward(dy2, dx)
        return dx.reshape(self._shape)

    def get_config(self):
        cfg = super().get_config()
        cfg["keepdims"] = self.keepdims
        return cfg


class GlobalAveragePooling2D(_GlobalPool):
    """Mean over height and width: (batch, h, w, c) -> (batch, c)."""

    rank, mode = 2, "avg"


class GlobalMaxPooling2D(_GlobalPool):
    """Max over height and width: (batch, h, w, c) -> (batch, c)."""

    rank, mode = 2, "max"


class GlobalAveragePooling1D(_GlobalPool):
    """Mean over steps: (batch, steps, c) -> (batch, c).

    With a Keras mask (batch, steps) the mean runs over the unmasked steps only
    (Keras 3); the output carries no mask. A sample with every step masked gets
    zeros (Keras divides 0 by 0 there)."""

    rank, mode = 1, "avg"
    supports_masking = True

    def compute_mask(self, inputs, mask=None):
        return None

    def forward(self, x, training=False, mask=None):
        if mask is None:
            self._weights = None
            return super().forward(x, training)
        self.ensure_built(np.shape(x))
        x = self.check_input(x, ndim=3)
        n, t, c = x.shape
        m = np.asarray(self.device.to_host(mask) if self.device.is_array(mask) else mask)
        if m.shape != (n, t):
            raise ValueError(f"{self.name}: mask must have shape {(n, t)} (batch, steps), got {m.shape}")
        keep = (m != 0).astype(np.float64)
        w = keep / np.maximum(keep.sum(axis=1, keepdims=True), 1.0)  # each kept step's share of the mean
        weights = self.workspace("weights", (n, 1, t))
        self.kernels("array").copy(self.device.asarray(w.reshape(n, 1, t).astype(self.dtype)), weights)
        y = self.workspace("y", (n, 1, c))
        self.kernels("array").batch_matmul(weights, x, False, False, y)  # y[b] = w[b] @ x[b]
        self._weights, self._shape = weights, x.shape
        return y.reshape((n, 1, c) if self.keepdims else (n, c))

    def backward(self, dy):
        if self._weights is None:
            return super().backward(dy)
        n, t, c = self._shape
        dx = self.workspace("dx_masked", (n, t, c))
        dy3 = self.asarray(dy).reshape(n, 1, c)
        self.kernels("array").batch_matmul(self._weights, dy3, True, False, dx)  # dx[b] = w[b]^T dy[b]
        return dx


class GlobalMaxPooling1D(_GlobalPool):
    """Max over steps: (batch, steps, c) -> (batch, c)."""

    rank, mode = 1, "max"
