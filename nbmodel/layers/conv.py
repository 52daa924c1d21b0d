"""Convolution layers: Conv1D, Conv2D and their transposes Conv1DTranspose,
Conv2DTranspose, DepthwiseConv1D/2D and SeparableConv1D/2D (channels_last,
Keras 3 arguments).

Kernels: nbmodel/kernels/cpu/conv.py (im2col + one BLAS GEMM per pass, bias
and activation fused). Conv1D runs as Conv2D with a height of 1: the same
kernels, the Keras kernel (k, in, filters) viewed as (1, k, in, filters).
A transposed convolution is the input gradient of the convolution from its
output back to its input (same kernel, strides, dilation and padding before),
so its kernels are the convolution's col2im and im2col passes. A depthwise
convolution runs its own direct-loop kernels (depthwise_forward/backward); a
separable one is a depthwise convolution (no bias, linear) followed by the
1x1 pointwise convolution, which is one GEMM over every pixel: the dense
kernels, with the layer's bias and activation fused into it.
"""
from __future__ import annotations

import numpy as np

from .. import activations as act_codes
from .base import Layer, keeps_backward_cache

__all__ = ["Conv1D", "Conv2D", "Conv1DTranspose", "Conv2DTranspose", "DepthwiseConv1D", "DepthwiseConv2D",
           "SeparableConv1D", "SeparableConv2D"]


def int_tuple(layer, value, n, what, minimum=1) -> tuple[int, ...]:
    """``value`` (an int or n ints, each >= minimum) as a tuple of n ints; a ValueError naming
    ``layer`` and the argument ``what`` otherwise. Shared by the conv, pooling and reshaping layers."""
    if isinstance(value, (int, np.integer)):
        value = (int(value),) * n
    try:
        value = tuple(int(v) for v in value)
    except TypeError:
        raise ValueError(f"{layer}: {what} must be an int or a tuple of {n} ints, got {value!r}") from None
    if len(value) != n or any(v < minimum for v in value):
        kind = "positive" if minimum == 1 else "non-negative"
        raise ValueError(f"{layer}: {what} must be a {kind} int or a tuple of {n} {kind} ints, "
                         f"got {value!r}")
    return value


def padding_amounts(n, k, stride, dilation, padding):
    """(before, after, out) along one spatial axis, Keras/TF rules.

    "same": out = ceil(n / stride), the odd padding element at the end;
    "causal": every padding element before (1-D only); "valid": none.
    """
    eff = (k - 1) * dilation + 1
    if padding == "same":
        out = -(-n // stride)
        total = max((out - 1) * stride + eff - n, 0)
        before, after = total // 2, total - total // 2
    elif padding == "causal":
        before, after = eff - 1, 0
    else:
        before = after = 0
    return before, after, (n + before + after - eff) // stride + 1


def transpose_padding(n, k, stride, dilation, padding, output_padding=None):
    """(before, out) along one spatial axis of a transposed convolution, Keras 3 rules.

    out is Keras's output length: "valid" n * stride + max(eff - stride, 0),
    "same" n * stride, or with output_padding op (n - 1) * stride + eff + op
    ("valid") or (n - 1) * stride + eff % 2 + op ("same"), eff the dilated
    kernel size. before is the padding of the convolution whose input gradient
    the transposed one is (output pixel o = i * stride + tap * dilation - before):
    eff - 1 minus Keras's padding of the stride-dilated input, which puts the
    odd element of "same" padding first (capped at eff - 1).
    """
    eff = (k - 1) * dilation + 1
    if padding == "valid":
        return 0, (n * stride + max(eff - stride, 0) if output_padding is None
                   else (n - 1) * stride + eff + output_padding)
    total = stride + eff - 2 if output_padding is None else eff + eff % 2 - 2 + output_padding
    out = n * stride if output_padding is None else (n - 1) * stride + eff % 2 + output_padding
    return eff - 1 - min((total + 1) // 2, eff - 1), out


class _Conv(Layer):
    rank = 2
    paddings = ("valid", "same")

    weight_options = {"kernel": "kernel", "bias": "bias"}

    def __init__(self, filters, kernel_size, strides=1, padding="valid", data_format=None,
                 dilation_rate=1, groups=1, activation=None, use_bias=True,
                 kernel_initializer="glorot_uniform", bias_initializer="zeros", **kwargs):
        super().__init__(**kwargs)
        self.filters = _positive(self.name, filters, "filters")
        self._conv_args(kernel_size, strides, padding, data_format, dilation_rate, activation, use_bias)
        if groups != 1:
            raise ValueError(f"{self.name}: only groups=1 is supported, got {groups!r}")
        self.kernel_initializer = kernel_initializer
        self.bias_initializer = bias_initializer

    def _conv_args(self, kernel_size, strides, padding, data_format, dilation_rate, activation, use_bias):
        """Check and keep the arguments every convolution takes."""
        self.kernel_size = int_tuple(self.name, kernel_size, self.rank, "kernel_size")
        self.strides = int_tuple(self.name, strides, self.rank, "strides")
        self.dilation_rate = int_tuple(self.name, dilation_rate, self.rank, "dilation_rate")
        padding = padding.lower() if isinstance(padding, str) else padding
        if padding not in self.paddings:
            raise ValueError(f"{self.name}: padding must be one of {self.paddings}, got {padding!r}")
        self.padding = padding
        if data_format not in (None, "channels_last"):
            raise ValueError(f"{self.name}: only data_format='channels_last' is supported, got {data_format!r}")
        self.activation = activation
        self.code = act_codes.get(activation, self.name)
        self.use_bias = bool(use_bias)

    # ------------------------------------------------------------ shapes
    def _spatial4(self, shape):
        """(h, w) of the 2-D view of a spatial shape (1-D: h = 1)."""
        return (1, shape[0]) if self.rank == 1 else tuple(shape)

    def _geometry(self, spatial):
        """Per axis (before, after, out) in the 2-D view; ValueError if the kernel does not fit."""
        ks = (1,) + self.kernel_size if self.rank == 1 else self.kernel_size
        st = (1,) + self.strides if self.rank == 1 else self.strides
        dl = (1,) + self.dilation_rate if self.rank == 1 else self.dilation_rate
        geo = []
        for ax, (n, k, s, d) in enumerate(zip(self._spatial4(spatial), ks, st, dl)):
            pad = "valid" if (self.rank == 1 and ax == 0) else self.padding
            before, after, out = padding_amounts(n, k, s, d, pad)
            if out <= 0:
                raise ValueError(f"{self.name}: kernel of (dilated) size {(k - 1) * d + 1} is larger than "
                                 f"the padded input of size {n + before + after} along spatial axis "
                                 f"{ax - (2 - self.rank) + 1}")
            geo.append((before, after, out))
        return geo, ks, st, dl

    def _kernel_shape(self, c):
        """The Keras kernel's shape for c input channels."""
        return self.kernel_size + (c, self.filters)

    def _input_channels(self, input_shape):
        """The channels of a build shape, after checking its rank and (when known) that the
        kernel fits its spatial size."""
        if len(input_shape) != self.rank + 2:
            raise ValueError(f"{self.name}: expected input of rank {self.rank + 2} "
                             f"(batch, {'steps' if self.rank == 1 else 'height, width'}, channels), "
                             f"got shape {input_shape}")
        c = input_shape[-1]
        if c is None:
            raise ValueError(f"{self.name}: the channel dimension must be known, got {input_shape}")
        spatial = input_shape[1:-1]
        if all(s is not None for s in spatial):
            self._geometry(spatial)
        return c

    def build(self, input_shape):
        input_shape = tuple(input_shape)
        c = self._input_channels(input_shape)
        self.add_param("kernel", self._kernel_shape(c), self.kernel_initializer)
        if self.use_bias:
            self.add_param("bias", (self.filters,), self.bias_initializer)
        super().build(input_shape)

    def _out_channels(self, input_shape):
        return self.filters

    def compute_output_shape(self, input_shape):
        spatial = input_shape[1:-1]
        if any(s is None for s in spatial):
            out = [None] * self.rank
        else:
            geo, *_ = self._geometry(spatial)
            out = [g[2] for g in geo][2 - self.rank:]
        return (input_shape[0],) + tuple(out) + (self._out_channels(input_shape),)

    # ------------------------------------------------------------ compute
    in_axis = -2  # the input-channel axis of the Keras kernel (kh, kw, in, filters)

    @staticmethod
    def _matrix(kernel):
        """The Keras kernel as the kernels' 2-D matrix (a view)."""
        return kernel.reshape(-1, kernel.shape[-1])

    def _launch_forward(self, x4, k2, bias, code, keep_pre, geometry, keep, pre, y):
        self.kernels("conv").conv_forward(x4, k2, bias, code, keep_pre, *geometry, keep, self.scratch, pre, y)

    def _launch_backward(self, x4, k2, pre, y, dy2, code, geometry, dk2, dbias, dx):
        self.kernels("conv").conv_backward(x4, k2, pre, y, dy2, code, *geometry, self.scratch, dk2, dbias, dx)

    def forward(self, x, training=False):
        self.ensure_built(np.shape(x))
        kernel = self.params["kernel"]
        c = kernel.shape[self.in_axis]
        x = self.check_input(x, ndim=self.rank + 2, last_dim=c)
        n = x.shape[0]
        h, w = self._spatial4(x.shape[1:-1])
        geo, ks, st, dl = self._geometry(x.shape[1:-1])
        (pt, _, oh), (pl, _, ow) = geo
        x4 = x.reshape(n, h, w, c)
        f = self.filters
        # the Keras kernel as the kernels' matrix, (kh*kw*c, f) (transposed: (kh*kw*f, c); depthwise:
        # (kh*kw, c*M)); a view
        k2 = self._matrix(kernel)
        bias = self.params["bias"] if self.use_bias else self.constant("zero_bias", (f,), 0)
        rows = n * oh * ow
        keep = keeps_backward_cache(training)
        code = act_codes.LINEAR if self.code == act_codes.SOFTMAX else self.code
        keep_pre = code in act_codes.NEEDS_PREACTIVATION
        y = self.workspace("y", (rows, f))
        pre = self.workspace("pre", (rows, f)) if keep_pre else y
        geometry = (ks[0], ks[1], st[0], st[1], dl[0], dl[1], pt, pl, oh, ow)
        self._launch_forward(x4, k2, bias, code, keep_pre, geometry, keep, pre, y)
        if self.code == act_codes.SOFTMAX:
            self.kernels("activations").softmax_rows(y, y)
        self._cache = (x4, x.shape, pre, y, geometry, keep)
        out_spatial = (ow,) if self.rank == 1 else (oh, ow)
        return y.reshape((n,) + out_spatial + (f,))

    def _output_grad(self, dy, y, training):
        """The output gradient as (rows, filters) and the activation code left for the kernel:
        through the softmax backward here for a softmax layer (then LINEAR)."""
        if not training:
            raise ValueError(f"{self.name}: backward needs a forward pass with training=True")
        dy2 = self.asarray(dy).reshape(-1, self.filters)
        if dy2.shape[0] != y.shape[0]:
            raise ValueError(f"{self.name}: gradient of shape {np.shape(dy)} does not match the output")
        if self.code != act_codes.SOFTMAX:
            return dy2, self.code
        ds = self.workspace("dsoft", dy2.shape)
        self.kernels("activations").softmax_rows_backward(y, dy2, ds)
        return ds, act_codes.LINEAR

    def backward(self, dy):
        x4, x_shape, pre, y, geometry, training = self._cache
        kernel = self.params["kernel"]
        dy2, code = self._output_grad(dy, y, training)
        need_dx = self.input_grad_needed
        dx = self.workspace("dx", x4.shape) if need_dx else None
        dk = self.grads["kernel"]
        self._launch_backward(x4, self._matrix(kernel), pre, y, dy2, code, geometry, self._matrix(dk),
                              self.grads["bias"] if self.use_bias else None, dx)
        return dx.reshape(x_shape) if need_dx else None

    def get_config(self):
        cfg = super().get_config()
        one = self.rank == 1
        cfg.update(filters=self.filters,
                   kernel_size=self.kernel_size[0] if one else list(self.kernel_size),
                   strides=self.strides[0] if one else list(self.strides),
                   padding=self.padding,
                   dilation_rate=self.dilation_rate[0] if one else list(self.dilation_rate),
                   activation=self.activation, use_bias=self.use_bias,
                   kernel_initializer=_init_name(self.name, self.kernel_initializer),
                   bias_initializer=_init_name(self.name, self.bias_initializer))
        return cfg


def _positive(layer, value, what):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise ValueError(f"{layer}: {what} must be a positive integer, got {value!r}")
    return int(value)


def _init_name(layer, init):
    if isinstance(init, str):
        return init
    raise ValueError(f"{layer}: only initializers given by name can be saved with the model")


class Conv2D(_Conv):
    """2-D convolution over (batch, height, width, channels).

    Params: ``kernel`` (kh, kw, in, filters), ``bias`` (filters,). padding
    "valid" or "same" (TF rule: output ceil(n / stride), the odd padding row
    and column at the end).
    """

    rank = 2


class Conv1D(_Conv):
    """1-D convolution over (batch, steps, channels).

    Params: ``kernel`` (k, in, filters), ``bias`` (filters,). padding "valid",
    "same" or "causal" (all padding before the sequence: output t sees inputs
    <= t).
    """

    rank = 1
    paddings = ("valid", "same", "causal")



class _ConvTranspose(_Conv):
    """A transposed convolution: the input gradient of the convolution from its output back
    to its input (same kernel, strides, dilation; padding from ``transpose_padding``).

    Keras 3 arguments and output sizes (``output_padding`` None or per axis);
    the Keras kernel is (*kernel_size, filters, in_channels). As in Keras,
    strides > 1 and dilation_rate > 1 cannot be combined.
    """

    paddings = ("valid", "same")
    in_axis = -1  # the Keras kernel is (kh, kw, filters, in)

    def __init__(self, filters, kernel_size, strides=1, padding="valid", output_padding=None, data_format=None,
                 dilation_rate=1, activation=None, use_bias=True, kernel_initializer="glorot_uniform",
                 bias_initializer="zeros", **kwargs):
        super().__init__(filters, kernel_size, strides=strides, padding=padding, data_format=data_format,
                         dilation_rate=dilation_rate, activation=activation, use_bias=use_bias,
                         kernel_initializer=kernel_initializer, bias_initializer=bias_initializer, **kwargs)
        if max(self.strides) > 1 and max(self.dilation_rate) > 1:
            raise ValueError(f"{self.name}: strides > 1 together with dilation_rate > 1 is not supported "
                             f"(as in Keras), got strides={self.strides}, dilation_rate={self.dilation_rate}")
        self.output_padding = (None if output_padding is None
                               else int_tuple(self.name, output_padding, self.rank, "output_padding", minimum=0))

    def _geometry(self, spatial):
        """Per axis (before, None, out) in the 2-D view: ``before`` pads the output for the
        convolution that maps it back; ValueError if an output size is not positive."""
        one = self.rank == 1
        ks = (1,) + self.kernel_size if one else self.kernel_size
        st = (1,) + self.strides if one else self.strides
        dl = (1,) + self.dilation_rate if one else self.dilation_rate
        ops = (None, None) if self.output_padding is None else ((0,) if one else ()) + self.output_padding
        geo = []
        for ax, (n, k, s, d, op) in enumerate(zip(self._spatial4(spatial), ks, st, dl, ops)):
            before, out = transpose_padding(n, k, s, d, "valid" if (one and ax == 0) else self.padding, op)
            if out <= 0:
                raise ValueError(f"{self.name}: the output would have size {out} along spatial axis "
                                 f"{ax - (2 - self.rank) + 1} (input {n}, kernel {k}, padding "
                                 f"{self.padding!r}, output_padding {op})")
            geo.append((before, None, out))
        return geo, ks, st, dl

    def _kernel_shape(self, c):
        return self.kernel_size + (self.filters, c)

    def _launch_forward(self, x4, k2, bias, code, keep_pre, geometry, keep, pre, y):
        self.kernels("conv").conv_transpose_forward(x4, k2, bias, code, keep_pre, *geometry, self.scratch, pre, y)

    def _launch_backward(self, x4, k2, pre, y, dy2, code, geometry, dk2, dbias, dx):
        self.kernels("conv").conv_transpose_backward(x4, k2, pre, y, dy2, code, *geometry, self.scratch, dk2,
                                                     dbias, dx)

    def get_config(self):
        cfg = super().get_config()
        op = self.output_padding
        cfg["output_padding"] = None if op is None else (op[0] if self.rank == 1 else list(op))
        return cfg


class Conv2DTranspose(_ConvTranspose):
    """2-D transposed convolution over (batch, height, width, channels), e.g. the
    upsampling path of a U-Net.

    Params: ``kernel`` (kh, kw, filters, in), ``bias`` (filters,). Output size
    per axis (Keras): "valid" n * stride + max(k - stride, 0), "same" n * stride;
    with ``output_padding`` op: (n - 1) * stride + k + op ("valid") or
    (n - 1) * stride + k % 2 + op ("same"), k the dilated kernel size.
    """

    rank = 2


class Conv1DTranspose(_ConvTranspose):
    """1-D transposed convolution over (batch, steps, channels).

    Params: ``kernel`` (k, filters, in), ``bias`` (filters,); sizes as
    Conv2DTranspose along the steps.
    """

    rank = 1


class _DepthwiseConv(_Conv):
    """A depthwise convolution: input channel ch convolved with its own ``depth_multiplier``
    (M) kernels gives output channels ch*M .. ch*M + M - 1.

    Keras 3 arguments and weights: ``kernel`` (*kernel_size, in, M) (Keras 3 calls the
    depthwise layers' weight ``kernel``; its initializer, regularizer and constraint
    arguments are ``depthwise_*``), ``bias`` (in * M,).
    """

    weight_options = {"depthwise": "kernel", "bias": "bias"}

    def __init__(self, kernel_size, strides=1, padding="valid", depth_multiplier=1, data_format=None,
                 dilation_rate=1, activation=None, use_bias=True, depthwise_initializer="glorot_uniform",
                 bias_initializer="zeros", **kwargs):
        Layer.__init__(self, **kwargs)
        self.depth_multiplier = _positive(self.name, depth_multiplier, "depth_multiplier")
        self._conv_args(kernel_size, strides, padding, data_format, dilation_rate, activation, use_bias)
        self.depthwise_initializer = depthwise_initializer
        self.bias_initializer = bias_initializer
        self.filters = None  # in * depth_multiplier, known at build

    def _kernel_shape(self, c):
        return self.kernel_size + (c, self.depth_multiplier)

    def build(self, input_shape):
        input_shape = tuple(input_shape)
        c = self._input_channels(input_shape)
        self.filters = c * self.depth_multiplier
        self.add_param("kernel", self._kernel_shape(c), self.depthwise_initializer)
        if self.use_bias:
            self.add_param("bias", (self.filters,), self.bias_initializer)
        Layer.build(self, input_shape)

    def _out_channels(self, input_shape):
        c = input_shape[-1]
        return None if c is None else c * self.depth_multiplier

    @staticmethod
    def _matrix(kernel):
        """(kh*kw, in*M): row tap, column ch*M + m (a view of the Keras kernel)."""
        return kernel.reshape(-1, kernel.shape[-2] * kernel.shape[-1])

    def _launch_forward(self, x4, k2, bias, code, keep_pre, geometry, keep, pre, y):
        self.kernels("conv").depthwise_forward(x4, k2, bias, code, keep_pre, *geometry, self.scratch, pre, y)

    def _launch_backward(self, x4, k2, pre, y, dy2, code, geometry, dk2, dbias, dx):
        self.kernels("conv").depthwise_backward(x4, k2, pre, y, dy2, code, *geometry, self.scratch, dk2, dbias, dx)

    def get_config(self):
        cfg = Layer.get_config(self)
        one = self.rank == 1
        cfg.update(kernel_size=self.kernel_size[0] if one else list(self.kernel_size),
                   strides=self.strides[0] if one else list(self.strides),
                   padding=self.padding, depth_multiplier=self.depth_multiplier,
                   dilation_rate=self.dilation_rate[0] if one else list(self.dilation_rate),
                   activation=self.activation, use_bias=self.use_bias,
                   depthwise_initializer=_init_name(self.name, self.depthwise_initializer),
                   bias_initializer=_init_name(self.name, self.bias_initializer))
        return cfg


class DepthwiseConv2D(_DepthwiseConv):
    """2-D depthwise convolution over (batch, height, width, channels).

    Params: ``kernel`` (kh, kw, in, depth_multiplier), ``bias`` (in * depth_multiplier,);
    output channel ch * depth_multiplier + m comes from input channel ch. padding
    "valid" or "same" (TF rule, as Conv2D).
    """

    rank = 2


class DepthwiseConv1D(_DepthwiseConv):
    """1-D depthwise convolution over (batch, steps, channels).

    Params: ``kernel`` (k, in, depth_multiplier), ``bias`` (in * depth_multiplier,).
    padding "valid", "same" or "causal" (as Conv1D; Keras 3 itself takes only
    "valid" and "same" here).
    """

    rank = 1
    paddings = ("valid", "same", "causal")


class _SeparableConv(_Conv):
    """A depthwise convolution (no bias, linear) then a 1x1 pointwise convolution to
    ``filters`` channels, then bias and activation (Keras 3).

    Params (Keras order): ``depthwise_kernel`` (*kernel_size, in, M), ``pointwise_kernel``
    (*(1,) * rank, in * M, filters), ``bias`` (filters,). The pointwise step is one GEMM
    over every output pixel (the dense kernels, bias and activation fused).
    """

    weight_options = {"depthwise": "depthwise_kernel", "pointwise": "pointwise_kernel", "bias": "bias"}

    def __init__(self, filters, kernel_size, strides=1, padding="valid", data_format=None, dilation_rate=1,
                 depth_multiplier=1, activation=None, use_bias=True, depthwise_initializer="glorot_uniform",
                 pointwise_initializer="glorot_uniform", bias_initializer="zeros", **kwargs):
        Layer.__init__(self, **kwargs)
        self.filters = _positive(self.name, filters, "filters")
        self.depth_multiplier = _positive(self.name, depth_multiplier, "depth_multiplier")
        self._conv_args(kernel_size, strides, padding, data_format, dilation_rate, activation, use_bias)
        self.depthwise_initializer = depthwise_initializer
        self.pointwise_initializer = pointwise_initializer
        self.bias_initializer = bias_initializer

    def build(self, input_shape):
        input_shape = tuple(input_shape)
        c = self._input_channels(input_shape)
        cm = c * self.depth_multiplier
        self.add_param("depthwise_kernel", self.kernel_size + (c, self.depth_multiplier), self.depthwise_initializer)
        self.add_param("pointwise_kernel", (1,) * self.rank + (cm, self.filters), self.pointwise_initializer)
        if self.use_bias:
            self.add_param("bias", (self.filters,), self.bias_initializer)
        Layer.build(self, input_shape)

    def forward(self, x, training=False):
        self.ensure_built(np.shape(x))
        dk = self.params["depthwise_kernel"]
        c = dk.shape[-2]
        x = self.check_input(x, ndim=self.rank + 2, last_dim=c)
        n = x.shape[0]
        h, w = self._spatial4(x.shape[1:-1])
        geo, ks, st, dl = self._geometry(x.shape[1:-1])
        (pt, _, oh), (pl, _, ow) = geo
        x4 = x.reshape(n, h, w, c)
        cm, f = c * self.depth_multiplier, self.filters
        rows = n * oh * ow
        geometry = (ks[0], ks[1], st[0], st[1], dl[0], dl[1], pt, pl, oh, ow)
        # the depthwise step: no bias, linear
        t = self.workspace("depthwise_out", (rows, cm))
        self.kernels("conv").depthwise_forward(x4, _DepthwiseConv._matrix(dk), self.constant("zero_dw_bias", (cm,), 0),
                                               act_codes.LINEAR, False, *geometry, self.scratch, t, t)
        # the pointwise step: one GEMM, bias and activation fused
        bias = self.params["bias"] if self.use_bias else self.constant("zero_bias", (f,), 0)
        code = act_codes.LINEAR if self.code == act_codes.SOFTMAX else self.code
        y = self.workspace("y", (rows, f))
        pre = self.workspace("pre", (rows, f)) if code in act_codes.NEEDS_PREACTIVATION else y
        self.kernels("dense").dense_forward(t, self.params["pointwise_kernel"].reshape(cm, f), bias, code, pre, y)
        if self.code == act_codes.SOFTMAX:
            self.kernels("activations").softmax_rows(y, y)
        self._cache = (x4, x.shape, t, pre, y, geometry, keeps_backward_cache(training))
        out_spatial = (ow,) if self.rank == 1 else (oh, ow)
        return y.reshape((n,) + out_spatial + (f,))

    def backward(self, dy):
        x4, x_shape, t, pre, y, geometry, training = self._cache
        f = self.filters
        dy2, code = self._output_grad(dy, y, training)
        cm = t.shape[1]
        dz = self.workspace("dz", dy2.shape)
        dt = self.workspace("dt", t.shape)
        dbias = self.grads["bias"] if self.use_bias else self.workspace("dbias", (f,))
        self.kernels("dense").dense_backward(t, self.params["pointwise_kernel"].reshape(cm, f), pre, y, dy2, code,
                                             True, dz, self.grads["pointwise_kernel"].reshape(cm, f), dbias, dt)
        need_dx = self.input_grad_needed
        dx = self.workspace("dx", x4.shape) if need_dx else None
        self.kernels("conv").depthwise_backward(x4, _DepthwiseConv._matrix(self.params["depthwise_kernel"]), t, t, dt,
                                                act_codes.LINEAR, *geometry, self.scratch,
                                                _DepthwiseConv._matrix(self.grads["depthwise_kernel"]), None, dx)
        return dx.reshape(x_shape) if need_dx else None

    def get_config(self):
        cfg = Layer.get_config(self)
        one = self.rank == 1
        cfg.update(filters=self.filters,
                   kernel_size=self.kernel_size[0] if one else list(self.kernel_size),
                   strides=self.strides[0] if one else list(self.strides),
                   padding=self.padding,
                   dilation_rate=self.dilation_rate[0] if one else list(self.dilation_rate),
                   depth_multiplier=self.depth_multiplier, activation=self.activation, use_bias=self.use_bias,
                   depthwise_initializer=_init_name(self.name, self.depthwise_initializer),
                   pointwise_initializer=_init_name(self.name, self.pointwise_initializer),
                   bias_initializer=_init_name(self.name, self.bias_initializer))
        return cfg


class SeparableConv2D(_SeparableConv):
    """2-D depthwise separable convolution over (batch, height, width, channels).

    Params: ``depthwise_kernel`` (kh, kw, in, depth_multiplier), ``pointwise_kernel``
    (1, 1, in * depth_multiplier, filters), ``bias`` (filters,). padding "valid" or
    "same" (TF rule, as Conv2D).
    """

    rank = 2


class SeparableConv1D(_SeparableConv):
    """1-D depthwise separable convolution over (batch, steps, channels).

    Params: ``depthwise_kernel`` (k, in, depth_multiplier), ``pointwise_kernel``
    (1, in * depth_multiplier, filters), ``bias`` (filters,). padding "valid", "same" or
    "causal" (as Conv1D; Keras 3 itself takes only "valid" and "same" here).
    """

    rank = 1
    paddings = ("valid", "same", "causal")
