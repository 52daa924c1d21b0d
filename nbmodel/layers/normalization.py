"""Normalization layers: LayerNormalization, BatchNormalization, GroupNormalization.

Kernels: nbmodel/kernels/cpu/norm.py.
"""
from __future__ import annotations

import math

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

    supports_masking = True  # Keras: the input's mask passes through

    weight_options = {"gamma": "gamma", "beta": "beta"}

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
        d = math.prod(self._pshape)
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
        dy2 = self.asarray(dy).reshape(n, d)
        dx = self.workspace("dx", shape)
        # reshape of the (C-contiguous) grads is a view: the kernel writes through it
        gamma = self.params["gamma"].reshape(-1) if self.scale else x2[0, :0]
        dgamma = self.grads["gamma"].reshape(-1) if self.scale else x2[0, :0]
        dbeta = self.grads["beta"].reshape(-1) if self.center else x2[0, :0]
        self.kernels("norm").layer_norm_backward(x2, gamma, mean, rstd, dy2, self.scale, self.center,
                                                 dx.reshape(n, d), dgamma, dbeta)
        return dx

    def get_config(self):
        cfg = super().get_config()
        cfg.update(axis=self.axis, epsilon=self.epsilon, center=self.center, scale=self.scale,
                   beta_initializer=self.beta_initializer, gamma_initializer=self.gamma_initializer)
        return cfg


class _ChannelAxis(Layer):
    """A layer with per-channel params on one ``axis`` (an int): the axis checks, and moving
    that axis last (and back) through the array kernels, so the kernels see channels last."""

    weight_options = {"gamma": "gamma", "beta": "beta"}

    def _channel_axis(self, ndim):
        if ndim < 2:
            raise ValueError(f"{self.name}: expected input of rank >= 2, got rank {ndim}")
        ax = self.axis + ndim if self.axis < 0 else self.axis
        if not 1 <= ax < ndim:
            raise ValueError(f"{self.name}: axis {self.axis} is out of range for input of rank {ndim} "
                             "(the batch axis cannot be normalized over)")
        return ax

    def _channels_last(self, a, ax, key):
        """``a`` with axis ``ax`` moved last, in a workspace (C-contiguous)."""
        p, c = math.prod(a.shape[:ax]), a.shape[ax]
        out = self.workspace(key, a.shape[:ax] + a.shape[ax + 1:] + (c,))
        self.kernels("array").move_axis_last(a.reshape(p, c, -1), out.reshape(p, -1, c))
        return out

    def _channels_back(self, a, shape, key):
        """The inverse of _channels_last: ``a`` (channels last) back to ``shape``."""
        ax = self._channel_axis(len(shape))
        p, c = math.prod(shape[:ax]), shape[ax]
        out = self.workspace(key, shape)
        self.kernels("array").move_axis_back(a.reshape(p, -1, c), out.reshape(p, c, -1))
        return out


class BatchNormalization(_ChannelAxis):
    """Normalizes each channel (``axis``, default -1) with batch statistics in
    training and with moving averages in inference, then scales by ``gamma``
    and shifts by ``beta``.

    Params: ``gamma``, ``beta`` (channels,); state: ``moving_mean``,
    ``moving_variance`` (channels,), updated in training as
    ``moving = moving * momentum + batch * (1 - momentum)`` with the biased
    batch variance (Keras). A layer with ``trainable=False`` always runs in
    inference mode, like Keras.

    Under data-parallel training, ``stat_sync`` (set by the trainer, see
    ``nbmodel.parallel``) sums the per-channel sums of every replica's shard,
    so each shard is normalized with the statistics of the whole global batch
    and training matches one process.
    """

    supports_masking = True  # Keras: the input's mask passes through

    stat_sync = None  # set on replicas by nbmodel.parallel: sums float64 vectors over replicas

    def __init__(self, axis=-1, momentum=0.99, epsilon=1e-3, center=True, scale=True,
                 beta_initializer="zeros", gamma_initializer="ones", moving_mean_initializer="zeros",
                 moving_variance_initializer="ones", **kwargs):
        super().__init__(**kwargs)
        if not isinstance(axis, (int, np.integer)):
            raise ValueError(f"{self.name}: axis must be an int, got {axis!r}")
        self.axis = int(axis)
        self.momentum = float(momentum)
        if not 0.0 <= self.momentum <= 1.0:
            raise ValueError(f"{self.name}: momentum must be in [0, 1], got {momentum!r}")
        self.epsilon = float(epsilon)
        if not self.epsilon > 0:
            raise ValueError(f"{self.name}: epsilon must be > 0, got {epsilon!r}")
        self.center = bool(center)
        self.scale = bool(scale)
        self.beta_initializer = beta_initializer
        self.gamma_initializer = gamma_initializer
        self.moving_mean_initializer = moving_mean_initializer
        self.moving_variance_initializer = moving_variance_initializer

    def build(self, input_shape):
        input_shape = tuple(input_shape)
        ax = self._channel_axis(len(input_shape))
        c = input_shape[ax]
        if c is None:
            raise ValueError(f"{self.name}: the size of axis {self.axis} must be known, got {input_shape}")
        if self.scale:
            self.add_param("gamma", (c,), self.gamma_initializer)
        if self.center:
            self.add_param("beta", (c,), self.beta_initializer)
        self.add_state("moving_mean", (c,), self.moving_mean_initializer)
        self.add_state("moving_variance", (c,), self.moving_variance_initializer)
        super().build(input_shape)

    def forward(self, x, training=False):
        self.ensure_built(np.shape(x))
        c = self.state["moving_mean"].shape[0]
        x = self.check_input(x, min_ndim=2)
        ax = self._channel_axis(x.ndim)
        if x.shape[ax] != c:
            raise ValueError(f"{self.name}: expected input with {c} channels on axis {self.axis}, "
                             f"got shape {x.shape}")
        last = ax == x.ndim - 1
        xl = x if last else self._channels_last(x, ax, "xl")
        x2 = xl.reshape(-1, c)
        train = bool(training) and self.trainable
        synced = train and self.stat_sync is not None
        count = x2.shape[0]
        if train and not synced and count < 2:
            self._too_few(x.shape)
        dt = self.dtype.type
        gamma = self.params["gamma"] if self.scale else self.state["moving_mean"][:0]
        beta = self.params["beta"] if self.center else self.state["moving_mean"][:0]
        mean = self.workspace("mean", (c,))
        rstd = self.workspace("rstd", (c,))
        work = self.workspace("work", (c,))
        y2 = self.workspace("y", x2.shape)
        k = self.kernels("norm")
        if synced:  # statistics of the global batch: sums over every replica's shard
            dev = self.device
            k.batch_norm_column_sums(x2, work, mean)
            sums = self.stat_sync(np.append(dev.to_host(mean), count))
            count = int(round(sums[c]))
            if count < 2:
                self._too_few(x.shape)
            dev.assign(mean, sums[:c] / count)
            k.batch_norm_centered_squares(x2, mean, work, rstd)  # rstd holds the variance for now
            dev.assign(rstd, self.stat_sync(dev.to_host(rstd)) / count)
            k.batch_norm_update_moving(mean, rstd, dt(self.epsilon), dt(self.momentum),
                                       self.state["moving_mean"], self.state["moving_variance"], rstd)
            k.batch_norm_apply(x2, gamma, beta, mean, rstd, self.scale, self.center, work, y2)
        else:
            k.batch_norm_forward(x2, gamma, beta, dt(self.epsilon), dt(self.momentum), train, self.scale,
                                 self.center, self.state["moving_mean"], self.state["moving_variance"],
                                 work, mean, rstd, y2)
        self._cache = (x2, xl.shape, ax, train, synced, count)
        y = y2.reshape(xl.shape)
        return y if last else self._channels_back(y, x.shape, "y_out")

    def backward(self, dy):
        x2, xl_shape, ax, train, synced, count = self._cache
        c = x2.shape[1]
        dy = self.asarray(dy)
        last = ax == len(xl_shape) - 1
        if dy.size != x2.size or (not last and dy.shape[ax] != c):
            raise ValueError(f"{self.name}: gradient of shape {dy.shape} does not match the output")
        dyl = dy if last else self._channels_last(dy, ax, "dyl")
        dy2 = dyl.reshape(-1, c)
        dx2 = self.workspace("dx", x2.shape)
        gamma = self.params["gamma"] if self.scale else self.state["moving_mean"][:0]
        mean, rstd, work = self.workspace("mean", (c,)), self.workspace("rstd", (c,)), self.workspace("bwork", (4, c))
        # the column sums of dy and dy * xhat are dbeta and dgamma
        sdy = self.grads["beta"] if self.center else work[2]
        sdx = self.grads["gamma"] if self.scale else work[3]
        k = self.kernels("norm")
        if synced:
            # dx needs the global batch's sums; dgamma/dbeta keep this shard's (the trainer sums them)
            dev = self.device
            k.batch_norm_backward_sums(x2, dy2, mean, rstd, work, sdy, sdx)
            sums = dev.asarray(self.stat_sync(np.concatenate([dev.to_host(sdy), dev.to_host(sdx)])), self.dtype)
            k.batch_norm_backward_dx(x2, dy2, gamma, mean, rstd, sums[:c], sums[c:], count, True, self.scale,
                                     work, dx2)
        else:
            k.batch_norm_backward(x2, dy2, gamma, mean, rstd, train, self.scale, self.center, work, dx2,
                                  sdx, sdy)
        dx = dx2.reshape(xl_shape)
        return dx if last else self._channels_back(dx, dy.shape, "dx_out")

    def _too_few(self, shape):
        raise ValueError(f"{self.name}: batch statistics need at least 2 values per channel, "
                         f"got input of shape {shape}")

    def get_config(self):
        cfg = super().get_config()
        cfg.update(axis=self.axis, momentum=self.momentum, epsilon=self.epsilon, center=self.center,
                   scale=self.scale)
        for k in ("beta_initializer", "gamma_initializer", "moving_mean_initializer",
                  "moving_variance_initializer"):
            init = getattr(self, k)
            if not isinstance(init, str):
                raise ValueError(f"{self.name}: only initializers given by name can be saved with the model")
            cfg[k] = init
        return cfg


__all__ += ["BatchNormalization", "GroupNormalization"]


class GroupNormalization(_ChannelAxis):
    """Group normalization (Keras 3): the channels (``axis``, default -1) are split into
    ``groups`` groups of consecutive channels, and each sample's group is normalized over
    its channels and every other non-batch axis (biased variance), then each channel is
    scaled by ``gamma`` and shifted by ``beta``. The same in training and inference.

    Params: ``gamma``, ``beta`` (channels,). ``groups`` must divide the channels;
    ``groups=-1`` means one group per channel (instance normalization), as in
    Keras. groups=1 normalizes each sample over all its values.
    """

    supports_masking = True  # Keras: the input's mask passes through

    def __init__(self, groups=32, axis=-1, epsilon=1e-3, center=True, scale=True, beta_initializer="zeros",
                 gamma_initializer="ones", **kwargs):
        super().__init__(**kwargs)
        if not isinstance(groups, (int, np.integer)) or not (groups >= 1 or groups == -1):
            raise ValueError(f"{self.name}: groups must be a positive integer (or -1: one per channel), "
                             f"got {groups!r}")
        self.groups = int(groups)
        if not isinstance(axis, (int, np.integer)):
            raise ValueError(f"{self.name}: axis must be an int, got {axis!r}")
        self.axis = int(axis)
        self.epsilon = float(epsilon)
        if not self.epsilon > 0:
            raise ValueError(f"{self.name}: epsilon must be > 0, got {epsilon!r}")
        self.center = bool(center)
        self.scale = bool(scale)
        self.beta_initializer = beta_initializer
        self.gamma_initializer = gamma_initializer

    def build(self, input_shape):
        input_shape = tuple(input_shape)
        ax = self._channel_axis(len(input_shape))
        c = input_shape[ax]
        if c is None:
            raise ValueError(f"{self.name}: the size of axis {self.axis} must be known, got {input_shape}")
        if self.groups == -1:
            self.groups = c
        if self.groups > c:
            raise ValueError(f"{self.name}: the number of groups ({self.groups}) cannot be more than the "
                             f"number of channels ({c})")
        if c % self.groups:
            raise ValueError(f"{self.name}: the number of groups ({self.groups}) must divide the number of "
                             f"channels ({c})")
        self._c = c
        if self.scale:
            self.add_param("gamma", (c,), self.gamma_initializer)
        if self.center:
            self.add_param("beta", (c,), self.beta_initializer)
        super().build(input_shape)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def forward(self, x, training=False):
        self.ensure_built(np.shape(x))
        x = self.check_input(x, min_ndim=2)
        ax = self._channel_axis(x.ndim)
        c = self._c
        if x.shape[ax] != c:
            raise ValueError(f"{self.name}: expected input with {c} channels on axis {self.axis}, "
                             f"got shape {x.shape}")
        last = ax == x.ndim - 1
        xl = x if last else self._channels_last(x, ax, "xl")
        n = x.shape[0]
        x3 = xl.reshape(n, -1, c)
        mean = self.workspace("mean", (n, self.groups))
        rstd = self.workspace("rstd", (n, self.groups))
        y = self.workspace("y", xl.shape)
        empty = x3[0, 0, :0]
        gamma = self.params["gamma"] if self.scale else empty
        beta = self.params["beta"] if self.center else empty
        self.kernels("norm").group_norm_forward(x3, gamma, beta, self.dtype.type(self.epsilon), self.groups,
                                                self.scale, self.center, y.reshape(x3.shape), mean, rstd)
        self._cache = (x3, mean, rstd, xl.shape, x.shape, ax)
        return y if last else self._channels_back(y, x.shape, "y_out")

    def backward(self, dy):
        x3, mean, rstd, xl_shape, shape, ax = self._cache
        dy = self.asarray(dy)
        if tuple(dy.shape) != tuple(shape):
            raise ValueError(f"{self.name}: gradient of shape {dy.shape} does not match the output {shape}")
        last = ax == len(shape) - 1
        dyl = dy if last else self._channels_last(dy, ax, "dyl")
        dx = self.workspace("dx", xl_shape)
        empty = x3[0, 0, :0]
        gamma = self.params["gamma"] if self.scale else empty
        dgamma = self.grads["gamma"] if self.scale else empty
        dbeta = self.grads["beta"] if self.center else empty
        self.kernels("norm").group_norm_backward(x3, gamma, mean, rstd, dyl.reshape(x3.shape), self.groups,
                                                 self.scale, self.center, dx.reshape(x3.shape), dgamma, dbeta)
        return dx if last else self._channels_back(dx, shape, "dx_out")

    def get_config(self):
        cfg = super().get_config()
        cfg.update(groups=self.groups, axis=self.axis, epsilon=self.epsilon, center=self.center,
                   scale=self.scale)
        for k in ("beta_initializer", "gamma_initializer"):
            init = getattr(self, k)
            if not isinstance(init, str):
                raise ValueError(f"{self.name}: only initializers given by name can be saved with the model")
            cfg[k] = init
        return cfg
