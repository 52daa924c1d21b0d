"""Core layers: Dense, Activation, Dropout (noise_shape), SpatialDropout1D/2D, Masking,
Flatten, Reshape, and the merge layers Add, Subtract, Multiply, Average,
Maximum, Minimum, Concatenate, Dot.

Kernels: nbmodel/kernels/cpu/dense.py (Dense, Dropout), activations.py,
array.py (merges) and reshaping.py (broadcasting a dropout mask).

Maximum / Minimum gradients follow TensorFlow's rule for ``maximum(x, y)``
(the whole gradient goes to x where x >= y; ``minimum``: x <= y), applied
input by input as Keras chains them: at a tie the first of the tied inputs
gets the whole gradient (PyTorch and JAX split it instead).
"""
from __future__ import annotations

import math

import numpy as np

from .. import activations as act_codes
from .base import Layer

__all__ = ["Dense", "Activation", "Dropout", "Masking", "SpatialDropout1D", "SpatialDropout2D", "Flatten",
           "Reshape", "Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum", "Concatenate", "Dot",
           "add", "subtract", "multiply", "average", "maximum", "minimum", "concatenate", "dot"]


def _check_dim(layer, value, what):
    if not isinstance(value, (int, np.integer)) or value <= 0:
        raise ValueError(f"{layer}: {what} must be a positive integer, got {value!r}")
    return int(value)


class Dense(Layer):
    """``y = activation(x @ kernel + bias)`` on the last axis of ``x``.

    Params: ``kernel`` (in, units), ``bias`` (units,).
    """

    supports_masking = True  # Keras: the input's mask passes through

    weight_options = {"kernel": "kernel", "bias": "bias"}

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

    supports_masking = True  # Keras: the input's mask passes through

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
    """Zeroes a fraction ``rate`` of inputs in training and scales the rest by 1/(1-rate).

    ``noise_shape`` (Keras): the shape of the drawn mask, broadcast over the input; None
    entries take the input's size, e.g. (None, 1, None) on (batch, steps, features) drops
    the same features at every step. The mask is drawn at that shape from the layer's generator, so a seed
    gives the same masks on every device and a resumed fit continues the sequence.
    """

    supports_masking = True  # Keras: the input's mask passes through

    def __init__(self, rate, noise_shape=None, seed=None, **kwargs):
        super().__init__(seed=seed, **kwargs)
        if not 0.0 <= float(rate) < 1.0:
            raise ValueError(f"{self.name}: rate must be in [0, 1), got {rate!r}")
        self.rate = float(rate)
        if noise_shape is not None:
            try:
                noise_shape = tuple(noise_shape)
            except TypeError:
                noise_shape = (noise_shape,)
            if not all(d is None or (isinstance(d, (int, np.integer)) and d > 0) for d in noise_shape):
                raise ValueError(f"{self.name}: noise_shape must be a tuple of positive ints or None, "
                                 f"got {noise_shape!r}")
            noise_shape = tuple(None if d is None else int(d) for d in noise_shape)
        self.noise_shape = noise_shape

    def mask_shape(self, shape) -> tuple:
        """The shape of the mask drawn for an input of ``shape`` (broadcastable to it)."""
        shape = tuple(shape)
        if self.noise_shape is None:
            return shape
        if len(self.noise_shape) != len(shape):
            raise ValueError(f"{self.name}: noise_shape {self.noise_shape} has rank {len(self.noise_shape)}, "
                             f"the input has shape {shape}")
        ns = tuple(s if d is None else d for d, s in zip(self.noise_shape, shape))
        if any(d not in (1, s) for d, s in zip(ns, shape)):
            raise ValueError(f"{self.name}: noise_shape {self.noise_shape} does not broadcast to the input "
                             f"shape {shape} (each entry must be None, 1 or the input's size)")
        return ns

    def _draw_mask(self, shape):
        """Uniform draws of mask_shape(shape), broadcast to ``shape`` (repeats of whole rows)."""
        ns = self.mask_shape(shape)
        cur = self.workspace("u" if ns == shape else "noise", ns)
        self.device.fill_uniform(self.rng, cur)
        axes = [a for a in range(len(shape)) if ns[a] != shape[a]]
        runs = []  # runs of consecutive broadcast axes: one repeat each
        for a in axes:
            if runs and runs[-1][1] == a:
                runs[-1][1] = a + 1
            else:
                runs.append([a, a + 1])
        cur_shape = list(ns)
        for i, (a0, a1) in enumerate(runs):
            p = math.prod(cur_shape[:a0])
            q = math.prod(cur_shape[a1:])
            m = math.prod(shape[a0:a1])
            cur_shape[a0:a1] = shape[a0:a1]
            nxt = self.workspace("u" if i == len(runs) - 1 else ("noise", i), cur_shape)
            self.kernels("reshaping").repeat_rows(cur.reshape(p, q), nxt.reshape(p, m, q))
            cur = nxt
        return cur

    def forward(self, x, training=False):
        self.ensure_built(np.shape(x))
        x = self.check_input(x)
        self._active = bool(training) and self.rate > 0.0
        if not self._active:
            self.mask_shape(x.shape)  # a wrong noise_shape fails in inference too
            return x
        u = self._u = self._draw_mask(x.shape)
        y = self.workspace("y", x.shape)
        self.kernels("dense").dropout_forward(x.reshape(-1), u.reshape(-1), self.dtype.type(self.rate),
                                              y.reshape(-1))
        return y

    def backward(self, dy):
        if not self._active:
            return dy
        u = self._u
        dy = self.asarray(dy)
        dx = self.workspace("dx", dy.shape)
        self.kernels("dense").dropout_backward(dy.reshape(-1), u.reshape(-1), self.dtype.type(self.rate),
                                               dx.reshape(-1))
        return dx

    def get_config(self):
        cfg = super().get_config()
        cfg["rate"] = self.rate
        cfg["noise_shape"] = None if self.noise_shape is None else list(self.noise_shape)
        return cfg


class _SpatialDropout(Dropout):
    """Dropout of whole channels: one mask value per (sample, channel), channels_last."""

    supports_masking = False  # as Keras' spatial dropouts

    rank = 1

    def __init__(self, rate, data_format=None, seed=None, **kwargs):
        super().__init__(rate, noise_shape=None, seed=seed, **kwargs)
        if data_format not in (None, "channels_last"):
            raise ValueError(f"{self.name}: only data_format='channels_last' is supported, got {data_format!r}")

    def _check_rank(self, shape):
        if len(shape) != self.rank + 2:
            what = "steps" if self.rank == 1 else "height, width"
            raise ValueError(f"{self.name}: expected input of rank {self.rank + 2} (batch, {what}, channels), "
                             f"got shape {tuple(shape)}")

    def build(self, input_shape):
        self._check_rank(input_shape)
        super().build(input_shape)

    def mask_shape(self, shape):
        self._check_rank(shape)
        return (shape[0],) + (1,) * self.rank + (shape[-1],)

    def get_config(self):
        cfg = super().get_config()
        del cfg["noise_shape"]
        return cfg


class SpatialDropout1D(_SpatialDropout):
    """Drops whole channels of (batch, steps, channels): the mask has shape (batch, 1, channels)."""

    rank = 1

    def __init__(self, rate, seed=None, **kwargs):
        super().__init__(rate, seed=seed, **kwargs)


class SpatialDropout2D(_SpatialDropout):
    """Drops whole channels of (batch, h, w, channels): the mask has shape (batch, 1, 1, channels)."""

    rank = 2


class Masking(Layer):
    """Masks time steps whose features all equal ``mask_value`` (Keras): those steps
    are set to 0 and the output carries a (batch, time) mask, True where a step is
    kept, that masking layers downstream (recurrent, attention, pooling, losses) read.
    The mask is computed on the host."""

    supports_masking = True

    def __init__(self, mask_value=0.0, **kwargs):
        super().__init__(**kwargs)
        self.mask_value = float(mask_value)

    def _keep(self, x):
        """The Keras mask of ``x``: any feature differs from mask_value (NaN differs too)."""
        host = self.device.to_host(x) if self.device.is_array(x) else np.asarray(x)
        return (host != host.dtype.type(self.mask_value)).any(axis=-1)

    def creates_mask(self) -> bool:
        return True

    def compute_mask(self, inputs, mask=None):
        return self._keep(inputs)

    def forward(self, x, training=False):
        self.ensure_built(np.shape(x))
        x = self.check_input(x, min_ndim=2)
        keep = self._keep(x)
        factor = self.workspace("keep", x.shape)  # 1 where the step is kept, broadcast over features
        self.kernels("array").copy(self.device.asarray(np.broadcast_to(keep[..., None], x.shape)
                                                       .astype(self.dtype)), factor)
        y = self.workspace("y", x.shape)
        self.kernels("array").multiply(x, factor, y)
        self._factor = factor
        return y

    def backward(self, dy):
        dx = self.workspace("dx", self._factor.shape)
        self.kernels("array").multiply(self.asarray(dy), self._factor, dx)
        return dx

    def get_config(self):
        return {**super().get_config(), "mask_value": self.mask_value}


class Flatten(Layer):
    """Flattens every axis but the batch axis (a view, no copy)."""

    def compute_output_shape(self, input_shape):
        rest = input_shape[1:]
        size = None if any(s is None for s in rest) else math.prod(rest)
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
        size = math.prod(sample_shape)
        known = math.prod([s for s in self.target_shape if s != -1])
        shape = tuple(size // known if s == -1 else s for s in self.target_shape)
        if math.prod(shape) != size:
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

    supports_masking = True

    def compute_mask(self, inputs, mask=None):
        """Keras 3: the OR of the inputs' masks, none when an input has none."""
        if not isinstance(mask, (list, tuple)) or any(m is None for m in mask):
            return None
        return np.logical_or.reduce([np.asarray(m, bool) for m in mask])

    def _check_inputs(self, xs):
        if not isinstance(xs, (list, tuple)) or len(xs) < 2:
            raise ValueError(f"{self.name}: expected a list of at least 2 inputs")
        return [self.check_input(x, what=f"input {i}") for i, x in enumerate(xs)]


class _Elementwise(_Merge):
    """Merges of inputs of one shape (``inputs``: how many it takes, None: 2 or more)."""

    inputs = None

    def _check_count(self, n):
        if self.inputs is not None and n != self.inputs:
            raise ValueError(f"{self.name}: expected exactly {self.inputs} inputs, got {n}")

    def build(self, input_shape):
        if not isinstance(input_shape, (list, tuple)) or not input_shape or \
                not isinstance(input_shape[0], (list, tuple)):
            raise ValueError(f"{self.name}: expected a list of input shapes, got {input_shape}")
        self._check_count(len(input_shape))
        shapes = [tuple(s[1:]) for s in input_shape]
        if len(input_shape) < 2 or any(s != shapes[0] for s in shapes):
            raise ValueError(f"{self.name}: expected at least 2 inputs of the same shape, got {input_shape}")
        super().build(input_shape)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[0])

    def _same_shape(self, xs):
        if isinstance(xs, (list, tuple)):
            self._check_count(len(xs))
        xs = self._check_inputs(xs)
        if any(x.shape != xs[0].shape for x in xs):
            raise ValueError(f"{self.name}: inputs must have the same shape, got {[x.shape for x in xs]}")
        return xs


class Add(_Elementwise):
    """Elementwise sum of inputs of the same shape."""

    def forward(self, xs, training=False):
        xs = self._same_shape(xs)
        y = self.workspace("y", xs[0].shape)
        k = self.kernels("array")
        k.add(xs[0], xs[1], y)
        for x in xs[2:]:
            k.add_into(y, x)
        self._n = len(xs)
        return y

    def backward(self, dy):
        return tuple(dy for _ in range(self._n))


class Subtract(_Elementwise):
    """``inputs[0] - inputs[1]`` (exactly 2 inputs of the same shape)."""

    inputs = 2

    def forward(self, xs, training=False):
        a, b = self._same_shape(xs)
        y = self.workspace("y", a.shape)
        self.kernels("array").subtract(a, b, y)
        return y

    def backward(self, dy):
        dy = self.asarray(dy)
        neg = self.workspace("dneg", dy.shape)
        self.kernels("array").subtract(self.constant("zero", dy.shape, 0), dy, neg)
        return dy, neg


class Multiply(_Elementwise):
    """Elementwise product of inputs of the same shape."""

    def forward(self, xs, training=False):
        xs = self._same_shape(xs)
        y = self.workspace("y", xs[0].shape)
        k = self.kernels("array")
        k.multiply(xs[0], xs[1], y)
        for x in xs[2:]:
            k.multiply(y, x, y)
        self._xs = xs
        return y

    def backward(self, dy):
        dy = self.asarray(dy)
        k = self.kernels("array")
        dxs = []
        for i in range(len(self._xs)):  # dy times the product of the other inputs
            dx = self.workspace(("dx", i), dy.shape)
            src = dy
            for j, x in enumerate(self._xs):
                if j != i:
                    k.multiply(src, x, dx)
                    src = dx
            dxs.append(dx)
        return tuple(dxs)


class Average(_Elementwise):
    """Elementwise mean of inputs of the same shape."""

    def forward(self, xs, training=False):
        xs = self._same_shape(xs)
        y = self.workspace("y", xs[0].shape)
        k = self.kernels("array")
        k.add(xs[0], xs[1], y)
        for x in xs[2:]:
            k.add_into(y, x)
        k.scale(y, 1.0 / len(xs))
        self._n = len(xs)
        return y

    def backward(self, dy):
        dy = self.asarray(dy)
        dx = self.workspace("dx", dy.shape)
        k = self.kernels("array")
        k.copy(dy, dx)
        k.scale(dx, 1.0 / self._n)
        return tuple(dx for _ in range(self._n))


class _Extremum(_Elementwise):
    """Elementwise maximum (largest) or minimum; the first of tied inputs gets the gradient."""

    largest = True

    def forward(self, xs, training=False):
        xs = self._same_shape(xs)
        shape = xs[0].shape
        y = self.workspace("y", shape)
        arg = self.workspace("arg", shape, np.int32)
        k = self.kernels("array")
        k.copy(xs[0], y)
        k.copy(self.constant("arg0", shape, 0, np.int32), arg)
        for i, x in enumerate(xs[1:], start=1):
            k.extremum_into(y, arg, x, i, self.largest)
        self._n = len(xs)
        return y

    def backward(self, dy):
        dy = self.asarray(dy)
        arg = self.workspace("arg", dy.shape, np.int32)
        k = self.kernels("array")
        dxs = []
        for i in range(self._n):
            dx = self.workspace(("dx", i), dy.shape)
            k.take_where(dy, arg, i, dx)
            dxs.append(dx)
        return tuple(dxs)


class Maximum(_Extremum):
    """Elementwise maximum of inputs of the same shape (ties: the first input gets the gradient)."""

    largest = True


class Minimum(_Extremum):
    """Elementwise minimum of inputs of the same shape (ties: the first input gets the gradient)."""

    largest = False


def _blocks3(a, axis):
    """C-contiguous ``a`` viewed as (outer, a.shape[axis], inner) around ``axis``."""
    return a.reshape(math.prod(a.shape[:axis]), a.shape[axis], math.prod(a.shape[axis + 1:]))


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

    def compute_mask(self, inputs, mask=None):
        """Keras 3: each input's mask spread over its shape (all True where it has none),
        joined along ``axis``, then any() over the last axis."""
        if not isinstance(mask, (list, tuple)) or all(m is None for m in mask):
            return None
        shapes = [np.shape(x) for x in inputs]
        ax = self._axis(len(shapes[0]))
        full = [np.ones(s, bool) if m is None else
                np.broadcast_to(np.asarray(m, bool).reshape(np.shape(m) + (1,) * (len(s) - np.ndim(m))), s)
                for m, s in zip(mask, shapes)]
        return np.concatenate(full, axis=ax).any(axis=-1)

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


NORMALIZE_EPSILON = 1e-7  # Keras backend.epsilon(): 1 / norm is capped at 1 / epsilon


class Dot(_Merge):
    """Batchwise dot product of 2 inputs along ``axes`` (an int or one axis per input).

    Inputs of rank 2 or 3: (b, d) . (b, d) -> (b, 1); (b, n, d) . (b, m, d) with axes=2 ->
    (b, n, m); the output is the first input's shape less its axis, then the second's less
    the batch and its axis (Keras ``batch_dot``). ``normalize=True`` L2-normalizes both
    inputs along their axes first (Keras: x * min(1 / ||x||, 1 / 1e-7)): cosine similarity.
    """

    def compute_mask(self, inputs, mask=None):
        return None  # Keras 3: a dot product's output carries no mask

    def __init__(self, axes, normalize=False, **kwargs):
        super().__init__(**kwargs)
        if isinstance(axes, (list, tuple)):
            if len(axes) != 2 or not all(isinstance(a, (int, np.integer)) for a in axes):
                raise ValueError(f"{self.name}: axes must be an int or a tuple of 2 ints, got {axes!r}")
            axes = tuple(int(a) for a in axes)
        elif isinstance(axes, (int, np.integer)):
            axes = int(axes)
        else:
            raise TypeError(f"{self.name}: axes must be an int or a tuple of 2 ints, got {axes!r}")
        self.axes = axes
        self.normalize = bool(normalize)

    def _resolve(self, shapes):
        """(axis of input 0, axis of input 1) for these shapes, validated."""
        if len(shapes) != 2:
            raise ValueError(f"{self.name}: expected exactly 2 inputs, got {len(shapes)}")
        ranks = [len(s) for s in shapes]
        if any(r not in (2, 3) for r in ranks):
            raise ValueError(f"{self.name}: inputs of rank 2 or 3 are supported, got shapes {list(shapes)}")
        axes = (self.axes, self.axes) if isinstance(self.axes, int) else self.axes
        axes = tuple(a + r if a < 0 else a for a, r in zip(axes, ranks))
        if any(a <= 0 or a >= r for a, r in zip(axes, ranks)):
            raise ValueError(f"{self.name}: axes {self.axes} out of range for shapes {list(shapes)} "
                             "(the batch axis cannot be reduced)")
        d0, d1 = shapes[0][axes[0]], shapes[1][axes[1]]
        if d0 is not None and d1 is not None and d0 != d1:
            raise ValueError(f"{self.name}: incompatible shapes {list(shapes)}: size {d0} at axis {axes[0]} "
                             f"!= {d1} at axis {axes[1]}")
        b0, b1 = shapes[0][0], shapes[1][0]
        if b0 is not None and b1 is not None and b0 != b1:
            raise ValueError(f"{self.name}: inputs have different batch sizes, got shapes {list(shapes)}")
        return axes

    def build(self, input_shape):
        if not isinstance(input_shape, (list, tuple)) or not input_shape or \
                not isinstance(input_shape[0], (list, tuple)):
            raise ValueError(f"{self.name}: expected a list of 2 input shapes, got {input_shape}")
        self._resolve(input_shape)
        super().build(input_shape)

    def compute_output_shape(self, input_shape):
        a0, a1 = self._resolve(input_shape)
        s0 = [d for i, d in enumerate(input_shape[0]) if i != a0]
        s1 = [d for i, d in enumerate(input_shape[1]) if i not in (0, a1)]
        out = s0 + s1
        return tuple(out + [1] if len(out) == 1 else out)

    @staticmethod
    def _operand(x, axis, first):
        """x as a 3-D batch of matrices and whether the product must transpose it: the first
        operand as (b, i, k), the second as (b, k, j), k the reduced axis."""
        if x.ndim == 2:
            return x.reshape((x.shape[0], 1, x.shape[1]) if first else (x.shape[0], x.shape[1], 1)), False
        return x, (axis == 1) if first else (axis == 2)

    def forward(self, xs, training=False):
        if not isinstance(xs, (list, tuple)) or len(xs) != 2:
            raise ValueError(f"{self.name}: expected a list of exactly 2 inputs")
        xs = self._check_inputs(xs)
        axes = self._resolve([x.shape for x in xs])
        k = self.kernels("array")
        norms = []
        if self.normalize:
            for i, (x, a) in enumerate(zip(xs, axes)):
                xn = self.workspace(("xn", i), x.shape)
                inv = self.workspace(("inv", i), (math.prod(x.shape[:a]), math.prod(x.shape[a + 1:])))
                k.l2_normalize(_blocks3(x, a), NORMALIZE_EPSILON, _blocks3(xn, a), inv)
                norms.append((xn, inv))
            xs = [xn for xn, _ in norms]
        (a3, ta), (b3, tb) = self._operand(xs[0], axes[0], True), self._operand(xs[1], axes[1], False)
        rows = a3.shape[2] if ta else a3.shape[1]
        cols = b3.shape[1] if tb else b3.shape[2]
        y = self.workspace("y", (a3.shape[0], rows, cols))
        k.batch_matmul(a3, b3, ta, tb, y)
        self._cache = (a3, ta, b3, tb, [x.shape for x in xs], axes, norms)
        return y.reshape((xs[0].shape[0],) + self.compute_output_shape([x.shape for x in xs])[1:])

    def backward(self, dy):
        a3, ta, b3, tb, shapes, axes, norms = self._cache
        dy3 = self.asarray(dy).reshape(a3.shape[0], a3.shape[2] if ta else a3.shape[1],
                                       b3.shape[1] if tb else b3.shape[2])
        k = self.kernels("array")
        da = self.workspace(("d", 0), a3.shape)
        db = self.workspace(("d", 1), b3.shape)
        if ta:   # a3 holds op(a)^T: d a3 = op(b) @ dy^T
            k.batch_matmul(b3, dy3, tb, True, da)
        else:    # d a3 = dy @ op(b)^T
            k.batch_matmul(dy3, b3, False, not tb, da)
        if tb:   # b3 holds op(b)^T: d b3 = dy^T @ op(a)
            k.batch_matmul(dy3, a3, True, ta, db)
        else:    # d b3 = op(a)^T @ dy
            k.batch_matmul(a3, dy3, not ta, False, db)
        dxs = [da.reshape(shapes[0]), db.reshape(shapes[1])]
        for i, (xn, inv) in enumerate(norms):
            dx = self.workspace(("dx", i), shapes[i])
            k.l2_normalize_backward(_blocks3(xn, axes[i]), inv, _blocks3(dxs[i], axes[i]), NORMALIZE_EPSILON,
                                    _blocks3(dx, axes[i]))
            dxs[i] = dx
        return tuple(dxs)

    def get_config(self):
        cfg = super().get_config()
        cfg.update(axes=list(self.axes) if isinstance(self.axes, tuple) else self.axes, normalize=self.normalize)
        return cfg


# Keras' functional spellings of the merges: layers.add([a, b]) is layers.Add()([a, b])
def add(inputs, **kwargs):
    """``Add(**kwargs)(inputs)``."""
    return Add(**kwargs)(inputs)


def subtract(inputs, **kwargs):
    """``Subtract(**kwargs)(inputs)``."""
    return Subtract(**kwargs)(inputs)


def multiply(inputs, **kwargs):
    """``Multiply(**kwargs)(inputs)``."""
    return Multiply(**kwargs)(inputs)


def average(inputs, **kwargs):
    """``Average(**kwargs)(inputs)``."""
    return Average(**kwargs)(inputs)


def maximum(inputs, **kwargs):
    """``Maximum(**kwargs)(inputs)``."""
    return Maximum(**kwargs)(inputs)


def minimum(inputs, **kwargs):
    """``Minimum(**kwargs)(inputs)``."""
    return Minimum(**kwargs)(inputs)


def concatenate(inputs, axis=-1, **kwargs):
    """``Concatenate(axis, **kwargs)(inputs)``."""
    return Concatenate(axis=axis, **kwargs)(inputs)


def dot(inputs, axes=-1, normalize=False, **kwargs):
    """``Dot(axes, normalize, **kwargs)(inputs)``."""
    return Dot(axes=axes, normalize=normalize, **kwargs)(inputs)
