"""Core layers: Dense, Activation, Dropout, Flatten, Reshape, Add, Concatenate.

Kernels: nbmodel/kernels/cpu/dense.py (Dense, Dropout) and activations.py.
"""
from __future__ import annotations

import numpy as np

from .. import activations as act_codes
from .base import Layer

__all__ = ["Dense", "Activation", "Dropout", "Flatten", "Reshape", "Add", "Concatenate"]


def _check_dim(layer, value, what):
    if not isinstance(value, (int, np.integer)) or value <= 0:
        raise ValueError(f"{layer}: {what} must be a positive integer, got {value!r}")
    return int(value)


class Dense(Layer):
    """``y = activation(x @ kernel + bias)`` on the last axis of ``x``.

    Params: ``kernel`` (in, units), ``bias`` (units,).
    """

    def __init__(self, units, activation=None, use_bias=True, kernel_initializer="glorot_uniform",
                 bias_initializer="zeros", **kwargs):
        super().__init__(**kwargs)
        self.units = _check_dim(self.name, units, "units")
        self.activation = activation if activation is None or isinstance(activation, str) else activation
        self.code = act_codes.get(activation, self.name)
        self.use_bias = bool(use_bias)
        self.kernel_initializer = kernel_initializer
        self.bias_initializer = bias_initializer

    def build(self, input_shape):
        if len(input_shape) < 2:
            raise ValueError(f"{self.name}: expected input of rank >= 2 (batch, ..., features), "
                             f"got shape {input_shape}")
        d_in = input_shape[-1]
        if d_in is None:
            raise ValueError(f"{self.name}: the last input dimension must be known, got {input_shape}")
        self.add_param("kernel", (d_in, self.units), self.kernel_initializer)
        if self.use_bias:
            self.add_param("bias", (self.units,), self.bias_initializer)
        super().build(input_shape)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.units,)

    def forward(self, x, training=False):
        self.ensure_built(np.shape(x))
        kernel = self.params["kernel"]
        x = self.check_input(x, min_ndim=2, last_dim=kernel.shape[0])
        lead = x.shape[:-1]
        x2 = x.reshape(-1, kernel.shape[0])
        n = x2.shape[0]
        bias = self.params["bias"] if self.use_bias else self.constant("zero_bias", (self.units,), 0)
        code = self.code if self.code != act_codes.SOFTMAX else act_codes.LINEAR
        y = self.workspace("y", (n, self.units))
        pre = self.workspace("pre", (n, self.units)) if code in act_codes.NEEDS_PREACTIVATION else y
        self.kernels("dense").dense_forward(x2, kernel, bias, code, pre, y)
        if self.code == act_codes.SOFTMAX:
            self.kernels("activations").softmax_rows(y, y)
        self._cache = (x2, pre, y, lead)
        return y.reshape(lead + (self.units,))

    def backward(self, dy):
        x2, pre, y, lead = self._cache
        kernel = self.params["kernel"]
        dy2 = self.asarray(dy).reshape(-1, self.units)
        code = self.code
        if code == act_codes.SOFTMAX:
            dz = self.workspace("dsoft", dy2.shape)
            self.kernels("activations").softmax_rows_backward(y, dy2, dz)
            dy2, code = dz, act_codes.LINEAR
        dz = self.workspace("dz", dy2.shape)
        need_dx = self.input_grad_needed
        dx = self.workspace("dx", x2.shape if need_dx else (0, 0))
        dbias = self.grads["bias"] if self.use_bias else self.workspace("dbias", (self.units,))
        self.kernels("dense").dense_backward(x2, kernel, pre, y, dy2, code, need_dx,
                                             dz, self.grads["kernel"], dbias, dx)
        return dx.reshape(lead + (kernel.shape[0],)) if need_dx else None

    def get_config(self):
        cfg = super().get_config()
        cfg.update(units=self.units, activation=self.activation, use_bias=self.use_bias,
                   kernel_initializer=_init_name(self.kernel_initializer),
                   bias_initializer=_init_name(self.bias_initializer))
        return cfg


def _init_name(init):
    if isinstance(init, str):
        return init
    raise ValueError("only initializers given by name can be saved with the model")


class Activation(Layer):
    """Applies an activation elementwise (softmax over the last axis)."""

    def __init__(self, activation, **kwargs):
        super().__init__(**kwargs)
        self.activation = activation
        self.code = act_codes.get(activation, self.name)

    def forward(self, x, training=False):
        self.ensure_built(np.shape(x))
        x = self.check_input(x)
        y = self.workspace("y", x.shape)
        k = self.kernels("activations")
        if self.code == act_codes.SOFTMAX:
            k.softmax_rows(x.reshape(-1, x.shape[-1]), y.reshape(-1, x.shape[-1]))
        else:
            k.activation_forward(self.code, x.reshape(-1), y.reshape(-1))
        self._cache = (x, y)
        return y

    def backward(self, dy):
        x, y = self._cache
        dy = self.asarray(dy)
        dx = self.workspace("dx", x.shape)
        k = self.kernels("activations")
        if self.code == act_codes.SOFTMAX:
            m = x.shape[-1]
            k.softmax_rows_backward(y.reshape(-1, m), dy.reshape(-1, m), dx.reshape(-1, m))
        else:
            k.activation_backward(self.code, x.reshape(-1), y.reshape(-1), dy.reshape(-1), dx.reshape(-1))
        return dx

    def get_config(self):
        cfg = super().get_config()
        cfg["activation"] = self.activation
        return cfg


class Dropout(Layer):
    """Zeroes a fraction ``rate`` of inputs in training and scales the rest by 1/(1-rate)."""

    def __init__(self, rate, noise_shape=None, seed=None, **kwargs):
        super().__init__(seed=seed, **kwargs)
        if not 0.0 <= float(rate) < 1.0:
            raise ValueError(f"{self.name}: rate must be in [0, 1), got {rate!r}")
        self.rate = float(rate)
        if noise_shape is not None:
            raise ValueError(f"{self.name}: noise_shape is not supported")

    def forward(self, x, training=False):
        self.ensure_built(np.shape(x))
        x = self.check_input(x)
        self._active = bool(training) and self.rate > 0.0
        if not self._active:
            return x
        u = self.workspace("u", x.shape)
        self.device.fill_uniform(self.rng, u)
        y = self.workspace("y", x.shape)
        self.kernels("dense").dropout_forward(x.reshape(-1), u.reshape(-1), self.dtype.type(self.rate),
                                              y.reshape(-1))
        return y

    def backward(self, dy):
        if not self._active:
            return dy
        u = self.workspace("u", np.shape(dy))
        dy = self.asarray(dy)
        dx = self.workspace("dx", dy.shape)
        self.kernels("dense").dropout_backward(dy.reshape(-1), u.reshape(-1), self.dtype.type(self.rate),
                                               dx.reshape(-1))
        return dx

    def get_config(self):
        cfg = super().get_config()
        cfg["rate"] = self.rate
        return cfg


class Flatten(Layer):
    """Flattens every axis but the batch axis (a view, no copy)."""

    def compute_output_shape(self, input_shape):
        rest = input_shape[1:]
        size = None if any(s is None for s in rest) else int(np.prod(rest))
        return (input_shape[0], size)

    def forward(self, x, training=False):
        x = self.check_input(x, min_ndim=1)
        self._shape = x.shape
        return x.reshape(x.shape[0], -1)

    def backward(self, dy):
        return self.asarray(dy).reshape(self._shape)


class Reshape(Layer):
    """Reshapes every sample to ``target_shape`` (one entry may be -1)."""

    def __init__(self, target_shape, **kwargs):
        super().__init__(**kwargs)
        self.target_shape = tuple(int(s) for s in target_shape)
        if sum(s == -1 for s in self.target_shape) > 1:
            raise ValueError(f"{self.name}: at most one -1 in target_shape, got {self.target_shape}")

    def _resolve(self, sample_shape):
        size = int(np.prod(sample_shape))
        known = int(np.prod([s for s in self.target_shape if s != -1]))
        shape = tuple(size // known if s == -1 else s for s in self.target_shape)
        if int(np.prod(shape)) != size:
            raise ValueError(f"{self.name}: cannot reshape samples of shape {tuple(sample_shape)} "
                             f"to {self.target_shape}")
        return shape

    def build(self, input_shape):
        if all(s is not None for s in input_shape[1:]):
            self._resolve(input_shape[1:])
        super().build(input_shape)

    def compute_output_shape(self, input_shape):
        if any(s is None for s in input_shape[1:]):
            return (input_shape[0],) + self.target_shape
        return (input_shape[0],) + self._resolve(input_shape[1:])

    def forward(self, x, training=False):
        x = self.check_input(x, min_ndim=1)
        self._shape = x.shape
        return x.reshape((x.shape[0],) + self._resolve(x.shape[1:]))

    def backward(self, dy):
        return self.asarray(dy).reshape(self._shape)

    def get_config(self):
        cfg = super().get_config()
        cfg["target_shape"] = list(self.target_shape)
        return cfg


class _Merge(Layer):
    """Base of layers that take a list of tensors."""

    def _check_inputs(self, xs):
        if not isinstance(xs, (list, tuple)) or len(xs) < 2:
            raise ValueError(f"{self.name}: expected a list of at least 2 inputs")
        return [self.check_input(x, what=f"input {i}") for i, x in enumerate(xs)]


class Add(_Merge):
    """Elementwise sum of inputs of the same shape."""

    def build(self, input_shape):
        shapes = [tuple(s[1:]) for s in input_shape]
        if len(input_shape) < 2 or any(s != shapes[0] for s in shapes):
            raise ValueError(f"{self.name}: expected at least 2 inputs of the same shape, got {input_shape}")
        super().build(input_shape)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[0])

    def forward(self, xs, training=False):
        xs = self._check_inputs(xs)
        if any(x.shape != xs[0].shape for x in xs):
            raise ValueError(f"{self.name}: inputs must have the same shape, got {[x.shape for x in xs]}")
        y = self.workspace("y", xs[0].shape)
        k = self.kernels("array")
        k.add(xs[0], xs[1], y)
        for x in xs[2:]:
            k.add_into(y, x)
        self._n = len(xs)
        return y

    def backward(self, dy):
        return tuple(dy for _ in range(self._n))


def _blocks3(a, axis):
    """C-contiguous ``a`` viewed as (outer, a.shape[axis], inner) around ``axis``."""
    return a.reshape(int(np.prod(a.shape[:axis])), a.shape[axis], int(np.prod(a.shape[axis + 1:])))


class Concatenate(_Merge):
    """Joins inputs along ``axis``."""

    def __init__(self, axis=-1, **kwargs):
        super().__init__(**kwargs)
        self.axis = int(axis)

    def _axis(self, ndim):
        ax = self.axis if self.axis >= 0 else ndim + self.axis
        if ax <= 0 or ax >= ndim:
            raise ValueError(f"{self.name}: axis {self.axis} is out of range for rank {ndim} "
                             "(the batch axis cannot be joined)")
        return ax

    def build(self, input_shape):
        if len(input_shape) < 2:
            raise ValueError(f"{self.name}: expected at least 2 inputs, got {input_shape}")
        ax = self._axis(len(input_shape[0]))
        for s in input_shape:
            if len(s) != len(input_shape[0]) or any(
                    a != b for i, (a, b) in enumerate(zip(s, input_shape[0])) if i not in (0, ax)):
                raise ValueError(f"{self.name}: shapes {input_shape} differ outside axis {self.axis}")
        super().build(input_shape)

    def compute_output_shape(self, input_shape):
        ax = self._axis(len(input_shape[0]))
        out = list(input_shape[0])
        sizes = [s[ax] for s in input_shape]
        out[ax] = None if any(v is None for v in sizes) else sum(sizes)
        return tuple(out)

    def forward(self, xs, training=False):
        xs = self._check_inputs(xs)
        ax = self._axis(xs[0].ndim)
        shapes = [x.shape for x in xs]
        if any(len(s) != len(shapes[0]) or s[:ax] + s[ax + 1:] != shapes[0][:ax] + shapes[0][ax + 1:]
               for s in shapes):
            raise ValueError(f"{self.name}: cannot join shapes {shapes} along axis {self.axis}")
        out_shape = shapes[0][:ax] + (sum(s[ax] for s in shapes),) + shapes[0][ax + 1:]
        y = self.workspace("y", out_shape)
        y3 = _blocks3(y, ax)
        k = self.kernels("array")
        offset = 0
        for x in xs:  # each input is a block of the joined axis
            k.copy_block(_blocks3(x, ax), y3, offset)
            offset += x.shape[ax]
        self._shapes, self._ax = shapes, ax
        return y

    def backward(self, dy):
        dy3 = _blocks3(self.asarray(dy), self._ax)
        k = self.kernels("array")
        dxs, offset = [], 0
        for i, shape in enumerate(self._shapes):
            dx = self.workspace(("dx", i), shape)
            k.take_block(dy3, offset, _blocks3(dx, self._ax))
            dxs.append(dx)
            offset += shape[self._ax]
        return tuple(dxs)

    def get_config(self):
        cfg = super().get_config()
        cfg["axis"] = self.axis
        return cfg
