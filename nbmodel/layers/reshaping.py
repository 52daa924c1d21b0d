"""Reshaping layers: UpSampling1D/2D, ZeroPadding1D/2D, Cropping1D/2D, Permute,
RepeatVector (Keras 3 names, arguments and defaults; channels_last only).

Kernels: nbmodel/kernels/cpu/reshaping.py (CUDA twin kernels/cuda/reshaping.py).
One implementation per idea, as in pooling: a 1-D layer is its 2-D layer on
(batch, 1, steps, channels). Upsampling is one pass along the width, then
one along the height (each skipped for a factor of 1): nearest is
``repeat_rows``, its gradient ``sum_rows`` in the reverse order (the copies
of each element added in a fixed order); bilinear is ``resize_linear``
(half-pixel centres, edges clamped: TensorFlow's resize that Keras calls and
PyTorch's ``align_corners=False``) and its gather-style gradient. Padding
and cropping are each other's gradient.
"""
from __future__ import annotations

import numpy as np

from .base import Layer
from .conv import int_tuple

__all__ = ["UpSampling1D", "UpSampling2D", "ZeroPadding1D", "ZeroPadding2D", "Cropping1D", "Cropping2D",
           "Permute", "RepeatVector"]

_INTERPOLATIONS = ("nearest", "bilinear")
_KERAS_ONLY = ("bicubic", "lanczos3", "lanczos5", "area")


def _channels_last(layer: str, data_format) -> None:
    if data_format not in (None, "channels_last"):
        raise ValueError(f"{layer}: only data_format='channels_last' is supported, got {data_format!r}")


def _rank_error(layer: Layer, rank: int, shape) -> ValueError:
    what = "steps" if rank == 1 else "height, width"
    return ValueError(f"{layer.name}: expected input of rank {rank + 2} (batch, {what}, channels), "
                      f"got shape {tuple(shape)}")


def _pair(layer: str, value, what: str) -> tuple[int, int]:
    """An int or a pair of non-negative ints as (before, after)."""
    if isinstance(value, (int, np.integer)):
        value = (value, value)
    try:
        pair = tuple(value)
    except TypeError:
        pair = ()
    if len(pair) != 2 or not all(isinstance(v, (int, np.integer)) and v >= 0 for v in pair):
        raise ValueError(f"{layer}: {what} must be a non-negative int or a tuple of 2 non-negative ints, "
                         f"got {value!r}")
    return int(pair[0]), int(pair[1])


def _amounts(layer: str, value, rank: int, what: str) -> tuple[tuple[int, int], ...]:
    """Keras' forms of padding / cropping: 1-D an int or (before, after); 2-D an int,
    (symmetric_height, symmetric_width) or ((top, bottom), (left, right))."""
    if rank == 1:
        return (_pair(layer, value, what),)
    if isinstance(value, (int, np.integer)):
        return (_pair(layer, value, what),) * 2
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise ValueError(f"{layer}: {what} must be an int, a tuple of 2 ints or a tuple of 2 tuples of 2 ints, "
                         f"got {value!r}")
    return tuple(_pair(layer, v, what) for v in value)


class _Spatial(Layer):
    """Base of the 1-D/2-D layers: input (batch, [height,] width, channels) seen as 4-D."""

    rank = 2

    def build(self, input_shape):
        if len(input_shape) != self.rank + 2:
            raise _rank_error(self, self.rank, input_shape)
        super().build(input_shape)

    def _as4(self, x):
        """``x`` as (n, h, w, c); 1-D inputs get h = 1."""
        return x.reshape((x.shape[0], 1) + x.shape[1:]) if self.rank == 1 else x

    def _out(self, y4):
        """A 4-D result back in the layer's rank."""
        return y4.reshape((y4.shape[0],) + y4.shape[2:]) if self.rank == 1 else y4

    def _checked(self, x):
        self.ensure_built(np.shape(x))
        x = self.check_input(x)
        if x.ndim != self.rank + 2:
            raise _rank_error(self, self.rank, x.shape)
        return x


class _UpSampling(_Spatial):
    def __init__(self, size, data_format=None, interpolation="nearest", **kwargs):
        super().__init__(**kwargs)
        _channels_last(self.name, data_format)
        self.size = int_tuple(self.name, size, self.rank, "size")
        interpolation = interpolation.lower() if isinstance(interpolation, str) else interpolation
        if interpolation in _KERAS_ONLY:
            raise ValueError(f"{self.name}: interpolation={interpolation!r} is not supported; "
                             f"expected one of {list(_INTERPOLATIONS)}")
        if interpolation not in _INTERPOLATIONS:
            raise ValueError(f"{self.name}: unknown interpolation {interpolation!r}; "
                             f"expected one of {list(_INTERPOLATIONS)}")
        self.interpolation = interpolation
        self._sizes = (1,) + self.size if self.rank == 1 else self.size  # (height, width) factors

    def compute_output_shape(self, input_shape):
        spatial = [None if s is None else s * f for s, f in zip(input_shape[1:-1], self.size)]
        return (input_shape[0], *spatial, input_shape[-1])

    def _passes(self, shape4):
        """The (p, m, q) views of the width and height passes (factor > 1 only), in forward order."""
        n, h, w, c = shape4
        sh, sw = self._sizes
        passes = []
        if sw > 1:
            passes.append(((n * h, w, c), sw))
        if sh > 1:
            passes.append(((n, h, w * sw * c), sh))
        return passes

    def forward(self, x, training=False):
        x4 = self._as4(self._checked(x))
        k = self.kernels("reshaping")
        passes = self._passes(x4.shape)
        cur = x4
        for i, ((p, m, q), s) in enumerate(passes):
            nxt = self.workspace("y" if i == len(passes) - 1 else "mid", (p, m * s, q))
            if self.interpolation == "nearest":  # each element of axis m repeated s times
                k.repeat_rows(cur.reshape(p * m, q), nxt.reshape(p * m, s, q))
            else:
                k.resize_linear(cur.reshape(p, m, q), nxt)
            cur = nxt
        self._shape4 = x4.shape
        n, h, w, c = x4.shape
        return self._out(cur.reshape(n, h * self._sizes[0], w * self._sizes[1], c))

    def backward(self, dy):
        n, h, w, c = self._shape4
        k = self.kernels("reshaping")
        passes = self._passes(self._shape4)
        cur = self.asarray(dy)
        for i, ((p, m, q), s) in reversed(list(enumerate(passes))):
            nxt = self.workspace("dx" if i == 0 else "dmid", (p, m, q))
            if self.interpolation == "nearest":  # the s copies of each element added in order
                k.sum_rows(cur.reshape(p * m, s, q), nxt.reshape(p * m, q))
            else:
                k.resize_linear_backward(cur.reshape(p, m * s, q), nxt)
            cur = nxt
        return self._out(cur.reshape(n, h, w, c))

    def get_config(self):
        cfg = super().get_config()
        cfg["size"] = self.size[0] if self.rank == 1 else list(self.size)
        if self.rank == 2:
            cfg.update(data_format="channels_last", interpolation=self.interpolation)
        return cfg


class UpSampling1D(_UpSampling):
    """Repeats each step ``size`` times: (batch, steps, c) -> (batch, steps * size, c)."""

    rank = 1

    def __init__(self, size=2, **kwargs):
        super().__init__(size, **kwargs)


class UpSampling2D(_UpSampling):
    """(batch, h, w, c) -> (batch, h * sh, w * sw, c): rows and columns repeated ("nearest") or
    interpolated ("bilinear")."""

    rank = 2

    def __init__(self, size=(2, 2), data_format=None, interpolation="nearest", **kwargs):
        super().__init__(size, data_format=data_format, interpolation=interpolation, **kwargs)


class _PadCrop(_Spatial):
    """Zero padding (crop=False) or cropping (crop=True) of the spatial axes; each is the
    other's gradient."""

    crop = False
    argument = "padding"

    def __init__(self, amounts, data_format=None, **kwargs):
        super().__init__(**kwargs)
        _channels_last(self.name, data_format)
        self.amounts = _amounts(self.name, amounts, self.rank, self.argument)
        self._amounts4 = ((0, 0),) + self.amounts if self.rank == 1 else self.amounts

    def _spatial_out(self, spatial):
        out = []
        for ax, (size, (before, after)) in enumerate(zip(spatial, self.amounts)):
            if size is None:
                out.append(None)
            elif not self.crop:
                out.append(size + before + after)
            elif before + after >= size:
                raise ValueError(f"{self.name}: cropping {(before, after)} must leave something of spatial axis "
                                 f"{ax + 1} of size {size}")
            else:
                out.append(size - before - after)
        return out

    def build(self, input_shape):
        if len(input_shape) == self.rank + 2:
            self._spatial_out(input_shape[1:-1])
        super().build(input_shape)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], *self._spatial_out(input_shape[1:-1]), input_shape[-1])

    def forward(self, x, training=False):
        x = self._checked(x)
        x4 = self._as4(x)
        n, h, w, c = x4.shape
        oh, ow = self._spatial_out((h, w)) if self.rank == 2 else (1, self._spatial_out((w,))[0])
        (top, _), (left, _) = self._amounts4
        y = self.workspace("y", (n, oh, ow, c))
        k = self.kernels("reshaping")
        (k.crop_2d if self.crop else k.pad_2d)(x4, top, left, y)
        self._shape4 = x4.shape
        return self._out(y)

    def backward(self, dy):
        n, h, w, c = self._shape4
        (top, bottom), (left, right) = self._amounts4
        sign = -1 if self.crop else 1
        dy4 = self.asarray(dy).reshape(n, h + sign * (top + bottom), w + sign * (left + right), c)
        dx = self.workspace("dx", self._shape4)
        k = self.kernels("reshaping")
        (k.pad_2d if self.crop else k.crop_2d)(dy4, top, left, dx)
        return self._out(dx)

    def get_config(self):
        cfg = super().get_config()
        cfg[self.argument] = list(self.amounts[0]) if self.rank == 1 else [list(a) for a in self.amounts]
        return cfg


class ZeroPadding1D(_PadCrop):
    """Zeros before and after the steps: ``padding`` an int or (left, right)."""

    rank, crop, argument = 1, False, "padding"

    def __init__(self, padding=1, data_format=None, **kwargs):
        super().__init__(padding, data_format=data_format, **kwargs)


class ZeroPadding2D(_PadCrop):
    """Zero rows and columns around images: ``padding`` an int, (h, w) or ((top, bottom), (left, right))."""

    rank, crop, argument = 2, False, "padding"

    def __init__(self, padding=(1, 1), data_format=None, **kwargs):
        super().__init__(padding, data_format=data_format, **kwargs)


class Cropping1D(_PadCrop):
    """Removes steps at the start and end: ``cropping`` an int or (start, end)."""

    rank, crop, argument = 1, True, "cropping"

    def __init__(self, cropping=(1, 1), data_format=None, **kwargs):
        super().__init__(cropping, data_format=data_format, **kwargs)


class Cropping2D(_PadCrop):
    """Removes rows and columns: ``cropping`` an int, (h, w) or ((top, bottom), (left, right))."""

    rank, crop, argument = 2, True, "cropping"

    def __init__(self, cropping=((0, 0), (0, 0)), data_format=None, **kwargs):
        super().__init__(cropping, data_format=data_format, **kwargs)


class Permute(Layer):
    """Permutes the non-batch axes: ``dims`` numbers them from 1, e.g. (2, 1) swaps the two axes
    of (batch, a, b)."""

    def __init__(self, dims, **kwargs):
        super().__init__(**kwargs)
        try:
            dims = tuple(dims)
        except TypeError:
            dims = None
        if (not dims or not all(isinstance(d, (int, np.integer)) for d in dims)
                or sorted(int(d) for d in dims) != list(range(1, len(dims) + 1))):
            raise ValueError(f"{self.name}: dims must be a permutation of 1..{len(dims or ()) or 'rank'} "
                             f"(axes counted from 1, the batch axis excluded), got {dims!r}")
        self.dims = tuple(int(d) for d in dims)
        self._axes = (0,) + self.dims
        self._inverse = tuple(int(a) for a in np.argsort(self._axes))

    def build(self, input_shape):
        if len(input_shape) != len(self.dims) + 1:
            raise ValueError(f"{self.name}: dims {self.dims} need input of rank {len(self.dims) + 1}, "
                             f"got shape {tuple(input_shape)}")
        super().build(input_shape)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[a] for a in self._axes)

    def forward(self, x, training=False):
        self.ensure_built(np.shape(x))
        x = self.check_input(x, ndim=len(self._axes))
        y = self.workspace("y", self.compute_output_shape(x.shape))
        self.kernels("reshaping").permute(x, self._axes, y)
        self._shape = x.shape
        return y

    def backward(self, dy):
        dx = self.workspace("dx", self._shape)
        self.kernels("reshaping").permute(self.asarray(dy), self._inverse, dx)
        return dx

    def get_config(self):
        cfg = super().get_config()
        cfg["dims"] = list(self.dims)
        return cfg


class RepeatVector(Layer):
    """Repeats a vector ``n`` times: (batch, features) -> (batch, n, features)."""

    def __init__(self, n, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n <= 0:
            raise ValueError(f"{self.name}: n must be a positive integer, got {n!r}")
        self.n = int(n)

    def build(self, input_shape):
        if len(input_shape) != 2:
            raise ValueError(f"{self.name}: expected input of rank 2 (batch, features), "
                             f"got shape {tuple(input_shape)}")
        super().build(input_shape)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.n, input_shape[1])

    def forward(self, x, training=False):
        self.ensure_built(np.shape(x))
        x = self.check_input(x, ndim=2)
        y = self.workspace("y", (x.shape[0], self.n, x.shape[1]))
        self.kernels("reshaping").repeat_rows(x, y)
        self._shape = x.shape
        return y

    def backward(self, dy):
        dx = self.workspace("dx", self._shape)
        self.kernels("reshaping").sum_rows(self.asarray(dy).reshape(self._shape[0], self.n, self._shape[1]), dx)
        return dx

    def get_config(self):
        cfg = super().get_config()
        cfg["n"] = self.n
        return cfg
