"""Recurrent layers: SimpleRNN, LSTM, GRU and the Bidirectional wrapper.

Keras 3 semantics and weight layouts: sequences are batch-major (batch, time,
features); LSTM gates i, f, c, o; GRU gates z, r, h, bias (2, 3u) with
reset_after=True (default), (3u,) with reset_after=False. Kernels:
nbmodel/kernels/cpu/recurrent.py (one GEMM for the input projection of every
step, one recurrent GEMM + one fused gate pass per step, weight gradients as
large GEMMs after the backward loop).

Multi-output: with ``return_state=True`` forward returns ``[output, *states]``
and backward takes one gradient per output (None = unused output). With an
``initial_state`` backward returns ``(dx, [d_state, ...])``.

Keras 3 options: ``dropout`` / ``recurrent_dropout`` (masks drawn once per
call from the layer's generator, fixed over the steps, training only; one
input mask, or with recurrent_dropout > 0 one input and one recurrent mask per
gate, as Keras' implementation 1), ``stateful`` (the final states of a batch
are the initial states of the next; ``reset_states()``), ``unroll`` (accepted,
no effect: the kernels always loop over the steps).

Masking (Keras 3): ``forward(x, mask=m)`` with m (batch, time) bool, True = a
real step. A masked step is skipped: every state is carried over unchanged,
and the output there is the previous output (zeros before the first real
step, even with an initial state), or zeros with ``zero_output_for_mask``.
The final states are those after the last real step; the last output
(``return_sequences=False``) is the last step's output. Bidirectional runs
both directions with ``zero_output_for_mask = return_sequences``, as Keras.
The output mask (``compute_mask``) is the input mask with return_sequences,
else None.
"""
from __future__ import annotations

from collections.abc import MutableMapping

import numpy as np

from .. import activations as act_codes
from .base import Layer, as_float_array, check_finite_enabled

__all__ = ["SimpleRNN", "LSTM", "GRU", "Bidirectional"]

# The backward kernels take activation derivatives from the activation's output.
_Y_ONLY = frozenset({act_codes.LINEAR, act_codes.RELU, act_codes.SIGMOID, act_codes.TANH,
                     act_codes.LEAKY_RELU, act_codes.ELU})


def _act_code(layer_name, activation, what):
    code = act_codes.get(activation, layer_name)
    if code not in _Y_ONLY:
        raise ValueError(f"{layer_name}: {what} {activation!r} is not supported in recurrent layers; "
                         f"use one of tanh, sigmoid, relu, linear, leaky_relu, elu")
    return code


def _forget_bias_init(units, base):
    """Keras unit_forget_bias: the bias initializer, then ones on the forget block."""
    def init(shape, dtype, rng):
        b = np.array(base(shape, dtype, rng), dtype=dtype)
        b[units:2 * units] = 1
        return b
    return init


class _RNN(Layer):
    """Shared machinery of SimpleRNN, LSTM and GRU."""

    _gates = 1      # blocks of `units` columns in kernel / recurrent_kernel
    _n_states = 1   # h (and c for LSTM)
    _family = "recurrent"
    supports_masking = True

    weight_options = {"kernel": "kernel", "recurrent": "recurrent_kernel", "bias": "bias"}

    def __init__(self, units, activation="tanh", recurrent_activation="sigmoid", use_bias=True,
                 kernel_initializer="glorot_uniform", recurrent_initializer="orthogonal",
                 bias_initializer="zeros", dropout=0.0, recurrent_dropout=0.0, return_sequences=False,
                 return_state=False, go_backwards=False, stateful=False, unroll=False, zero_output_for_mask=False,
                 **kwargs):
        super().__init__(**kwargs)
        if not isinstance(units, (int, np.integer)) or units <= 0:
            raise ValueError(f"{self.name}: units must be a positive integer, got {units!r}")
        self.units = int(units)
        self.activation = activation
        self.recurrent_activation = recurrent_activation
        self.act = _act_code(self.name, activation, "activation")
        self.rec_act = _act_code(self.name, recurrent_activation, "recurrent_activation")
        self.use_bias = bool(use_bias)
        self.kernel_initializer = kernel_initializer
        self.recurrent_initializer = recurrent_initializer
        self.bias_initializer = bias_initializer
        self.dropout = _rate(self.name, "dropout", dropout)
        self.recurrent_dropout = _rate(self.name, "recurrent_dropout", recurrent_dropout)
        self.stateful = bool(stateful)
        self._carry = None  # stateful: the final states of the last call
        self.return_sequences = bool(return_sequences)
        self.return_state = bool(return_state)
        self.go_backwards = bool(go_backwards)
        self.unroll = bool(unroll)  # accepted for Keras compatibility; the kernel loop is the same
        self.zero_output_for_mask = bool(zero_output_for_mask)
        self._last_keep = None  # see _step_mask

    # ------------------------------------------------------------------ shapes
    def _bias_shape(self):
        return (self._gates * self.units,)

    def _bias_initializer(self):
        return self.bias_initializer

    def build(self, input_shape):
        if len(input_shape) != 3:
            raise ValueError(f"{self.name}: expected input of rank 3 (batch, time, features), "
                             f"got shape {tuple(input_shape)}")
        d = input_shape[-1]
        if d is None:
            raise ValueError(f"{self.name}: the feature dimension must be known, got {tuple(input_shape)}")
        n = self._gates * self.units
        self.add_param("kernel", (d, n), self.kernel_initializer)
        self.add_param("recurrent_kernel", (self.units, n), self.recurrent_initializer)
        if self.use_bias:
            self.add_param("bias", self._bias_shape(), self._bias_initializer())
        if self.stateful and input_shape[0] is None:
            raise ValueError(f"{self.name}: stateful=True needs a fixed batch size; pass batch_size= to "
                             f"Input (got input shape {tuple(input_shape)})")
        super().build(input_shape)

    def compute_output_shape(self, input_shape):
        b = input_shape[0]
        if self.stateful and getattr(self, "built", False) and b is None:
            b = self.built_input_shape[0]
        out = (b, input_shape[1], self.units) if self.return_sequences else (b, self.units)
        if self.return_state:
            return [out] + [(b, self.units)] * self._n_states
        return out

    def compute_mask(self, inputs, mask):
        """Keras 3: the input's mask with return_sequences, else None; with return_state
        one more None per state."""
        return _rnn_output_mask(mask, self.return_sequences, self.return_state, self._n_states)

    # ----------------------------------------------------------------- helpers
    def _check(self, x):
        self.ensure_built(np.shape(x))
        d = self.params["kernel"].shape[0]
        x = self.check_input(x, ndim=3, last_dim=d)
        if x.shape[1] < 1:
            raise ValueError(f"{self.name}: expected at least one time step, got shape {x.shape}")
        return x

    def _bias(self):
        return self.params["bias"] if self.use_bias else self.constant("zero_bias", self._bias_shape(), 0)

    def _dbias(self):
        return self.grads["bias"] if self.use_bias else self.workspace("dzero_bias", self._bias_shape())

    def _initial_states(self, initial_state, B):
        """The initial states as (B, units) arrays of the layer dtype, or None; sets
        ``_has_init`` (states given: backward returns their gradients) and
        ``_use_init`` (the kernels start from H[0]: given or carried states)."""
        if self.stateful and B != self.built_input_shape[0]:
            raise ValueError(f"{self.name}: stateful layer built for batch size {self.built_input_shape[0]}, "
                             f"got a batch of {B}; every batch (the last one too) must have that size")
        self._has_init = initial_state is not None
        self._use_init = self._has_init
        if initial_state is None:
            if self.stateful and self._carry is not None:
                self._carry = [self.asarray(c) for c in self._carry]
                self._use_init = True  # truncated BPTT: no gradient flows into the previous batch
                return self._carry
            return None
        states = list(initial_state) if isinstance(initial_state, (list, tuple)) else [initial_state]
        if len(states) != self._n_states:
            raise ValueError(f"{self.name}: expected {self._n_states} initial state array(s), got {len(states)}")
        out = []
        for i, s in enumerate(states):
            s = as_float_array(s, self.name, self.dtype, f"initial_state[{i}]", self.device)
            if s.shape != (B, self.units):
                raise ValueError(f"{self.name}: initial_state[{i}] must have shape {(B, self.units)}, "
                                 f"got {s.shape}")
            if check_finite_enabled() and not self.device.all_finite(s):
                raise ValueError(f"{self.name}: initial_state[{i}] contains NaN or infinity")
            out.append(s)
        return out

    def _step_mask(self, mask, B, T, use_init):
        """The kernels' (step_mask, has_step_mask, zero_masked) for a Keras mask (None, or
        (B, T) bool or 0/1, host or device data), kept for backward: the mask as a
        layer-dtype workspace, or a (1, 1) dummy that the kernels do not read.

        Without return_sequences it also sets ``_last_keep`` (B, u) where the last output
        (the last step's) differs from the final state h: zeros in the rows whose last
        step is masked with zero_output_for_mask, or that have no real step at all but an
        initial state; None where they agree everywhere."""
        zero = self.zero_output_for_mask
        self._last_keep = None
        if mask is None:
            self._sm = (self.constant("no_step_mask", (1, 1), 0), False, zero)
            return self._sm
        real = _real_steps(self.name, self.device, mask, B, T)
        sm = self.workspace("step_mask", (B, T))
        self.device.assign(sm, real)
        if not self.return_sequences:
            keep = real[:, 0 if self.go_backwards else T - 1] if zero else real.any(axis=1) | (not use_init)
            if not keep.all():
                self._last_keep = self.workspace("last_keep", (B, self.units))
                self.device.assign(self._last_keep, np.repeat(keep[:, None], self.units, axis=1))
        self._sm = (sm, True, zero)
        return self._sm

    def _outputs(self, y, states):
        if self.stateful:
            k = self.kernels("array")
            if self._carry is None:
                self._carry = [self.device.full(s.shape, 0, self.dtype) for s in states]
            for s, c in zip(states, self._carry):
                k.copy(s, c)
        if self.return_sequences:
            out = y
        elif self._last_keep is not None:  # a masked last output: zeros where it is not h
            out = self.workspace("y_last", states[0].shape)
            self.kernels("array").multiply(states[0], self._last_keep, out)
        else:
            out = states[0]
        if self.return_state:
            return [out] + list(states)
        return out

    def _split_dy(self, dy, B, T):
        """(d_seq or None, dh_last (B, u) workspace, [d_state...]) from the output gradient(s)."""
        if self.return_state:
            if not isinstance(dy, (list, tuple)) or len(dy) != 1 + self._n_states:
                raise ValueError(f"{self.name}: backward expects {1 + self._n_states} gradients "
                                 "(output and states)")
            d_out, d_states = dy[0], list(dy[1:])
        else:
            d_out, d_states = dy, [None] * self._n_states
        u = self.units
        k = self.kernels("array")
        dh = self.workspace("dh", (B, u))
        k.fill(dh, 0)
        d_seq = None
        if d_out is not None:
            d_out = self.asarray(d_out)
            if self.return_sequences:
                if d_out.shape != (B, T, u):
                    raise ValueError(f"{self.name}: output gradient has shape {d_out.shape}, expected {(B, T, u)}")
                d_seq = d_out
            else:
                if d_out.shape != (B, u):
                    raise ValueError(f"{self.name}: output gradient has shape {d_out.shape}, expected {(B, u)}")
                if self._last_keep is not None:
                    kept = self.workspace("d_last", (B, u))
                    k.multiply(d_out, self._last_keep, kept)
                    d_out = kept
                k.add_into(dh, d_out)
        if d_states[0] is not None:
            k.add_into(dh, self.asarray(d_states[0]))
        return d_seq, dh, d_states

    def _uniforms(self, key, shape):
        """Uniform [0, 1) draws from the layer's generator (a subclass can fix them in tests)."""
        u = self.workspace(("uniform", key), shape)
        self.device.fill_uniform(self.rng, u)
        return u

    def _mask(self, key, shape, rate):
        """A dropout mask: 1/(1-rate) where a uniform draw is >= rate, else 0."""
        m = self.workspace(("mask", key), shape)
        self.kernels("dense").dropout_forward(self.constant("ones_" + key, shape, 1).reshape(-1),
                                              self._uniforms(key, shape).reshape(-1),
                                              self.dtype.type(rate), m.reshape(-1))
        return m

    def _dropout_masks(self, training, B, T, D):
        """(mask_x, n_mx, mask_h, n_mh, xs, HM) for one call: as Keras 3, one input mask
        (n_mx = 1) unless recurrent_dropout > 0, which gives every gate its own input and
        recurrent masks (Keras' implementation 1); none outside training."""
        u = self.units
        rx = self.dropout if training else 0.0
        rh = self.recurrent_dropout if training else 0.0
        n_mh = self._gates if rh > 0 else 0
        n_mx = 0 if rx == 0 else (self._gates if rh > 0 else 1)
        none = self.constant("no_mask", (1, 1, 1), 0)
        mask_x = self._mask("x", (B, n_mx, D), rx) if n_mx else none  # batch first (data-parallel shards)
        mask_h = self._mask("h", (B, n_mh, u), rh) if n_mh else none
        xs = self.workspace("xs", (max(n_mx, 1), T, B, D))
        HM = self.workspace("HM", (n_mh, T, B, u)) if n_mh else self.workspace("dummy4", (1, 1, 1, 1))
        self._drop = (mask_x, n_mx, mask_h, n_mh, HM)
        self._xs = xs
        return mask_x, n_mx, mask_h, n_mh, HM, xs

    def reset_states(self) -> None:
        """Stateful layers: forget the carried states (the next batch starts from zeros)."""
        if self._carry is not None:
            for c in self._carry:
                self.kernels("array").fill(c, 0)

    def reset_state(self) -> None:
        """Keras 3 name of reset_states."""
        self.reset_states()

    def _set_initial(self, H, init, i):
        """Step 0 of a state sequence: the given initial state, else zeros."""
        k = self.kernels("array")
        if init is None:
            k.fill(H[0], 0)
        else:
            k.copy(init[i], H[0])

    def _finish_backward(self, dx, states_grads):
        dx = dx if self._need_dx else None
        if self._has_init:  # copies: the state gradients are workspaces
            return dx, [self.device.asarray(self.device.to_host(s).copy()) for s in states_grads]
        return dx

    def get_config(self):
        cfg = super().get_config()
        cfg.update(units=self.units, activation=self.activation, use_bias=self.use_bias,
                   kernel_initializer=_init_name(self.name, self.kernel_initializer),
                   recurrent_initializer=_init_name(self.name, self.recurrent_initializer),
                   bias_initializer=_init_name(self.name, self.bias_initializer),
                   return_sequences=self.return_sequences, return_state=self.return_state,
                   go_backwards=self.go_backwards, stateful=self.stateful, unroll=self.unroll,
                   dropout=self.dropout, recurrent_dropout=self.recurrent_dropout,
                   zero_output_for_mask=self.zero_output_for_mask)
        return cfg


def _real_steps(layer, device, mask, B, T):
    """A Keras mask (host or device data) as a host bool array (B, T), True = a real step;
    a clear error for another shape or values other than bool / 0 and 1."""
    host = np.asarray(device.to_host(mask) if device.is_array(mask) else mask)
    if host.shape != (B, T):
        raise ValueError(f"{layer}: mask must have shape (batch, time) = {(B, T)}, got {host.shape}")
    if host.dtype != np.bool_ and (host.dtype.kind not in "iuf" or not np.isin(host, (0, 1)).all()):
        raise ValueError(f"{layer}: mask must be a bool array (True = a real step) or hold only 0 and 1, "
                         f"got dtype {host.dtype}")
    return host != 0


def _rnn_output_mask(mask, return_sequences, return_state, n_states):
    """Keras 3 RNN.compute_mask: the (first) input mask with return_sequences, else None;
    with return_state a list with None for each state."""
    if isinstance(mask, (list, tuple)):
        mask = mask[0] if mask else None
    out = mask if return_sequences else None
    if return_state:
        return [out] + [None] * n_states
    return out


def _rate(layer, what, value):
    """A dropout rate in [0, 1) (Keras clips silently; a rate of 1 would drop everything)."""
    try:
        r = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{layer}: {what} must be a number in [0, 1), got {value!r}") from None
    if not 0.0 <= r < 1.0:
        raise ValueError(f"{layer}: {what} must be in [0, 1), got {value!r}")
    return r


def _init_name(layer, init):
    if isinstance(init, str):
        return init
    raise ValueError(f"{layer}: only initializers given by name can be saved with the model")


class SimpleRNN(_RNN):
    """Fully connected recurrence ``h_t = activation(x_t W + h_{t-1} U + b)``.

    Params: ``kernel`` (in, u), ``recurrent_kernel`` (u, u), ``bias`` (u,).
    """

    def __init__(self, units, activation="tanh", use_bias=True, kernel_initializer="glorot_uniform",
                 recurrent_initializer="orthogonal", bias_initializer="zeros", **kwargs):
        super().__init__(units, activation=activation, recurrent_activation="sigmoid", use_bias=use_bias,
                         kernel_initializer=kernel_initializer, recurrent_initializer=recurrent_initializer,
                         bias_initializer=bias_initializer, **kwargs)

    def forward(self, x, training=False, initial_state=None, mask=None):
        x = self._check(x)
        B, T, D = x.shape
        u = self.units
        init = self._initial_states(initial_state, B)
        mask_x, n_mx, mask_h, n_mh, HM, xs = self._dropout_masks(training, B, T, D)
        step_mask, has_sm, zero = self._step_mask(mask, B, T, init is not None)
        P = self.workspace("P", (T, B, u))
        H = self.workspace("H", (T + 1, B, u))
        rec = self.workspace("rec", (B, u))
        y = self.workspace("y", (B, T, u)) if self.return_sequences else self.workspace("dummy", (1, 1, 1))
        self._set_initial(H, init, 0)
        self.kernels("recurrent").simple_rnn_forward(
            x, self.go_backwards, self.params["kernel"], self.params["recurrent_kernel"], self._bias(),
            init is not None, self.act, self.return_sequences, mask_x, n_mx, mask_h, n_mh, HM, step_mask, has_sm,
            zero, xs, P, H, rec, y)
        self._shape = (B, T, D)
        return self._outputs(y, [H[T]])

    def backward(self, dy):
        B, T, D = self._shape
        u = self.units
        d_seq, dh, _ = self._split_dy(dy, B, T)
        self._need_dx = self.input_grad_needed
        dZ = self.workspace("dZ", (T, B, u))
        dxs = self.workspace("dxs", (T, B, D))
        dx = self.workspace("dx", (B, T, D))
        has_seq = d_seq is not None
        self.kernels("recurrent").simple_rnn_backward(
            self._xs, self.go_backwards, self.params["kernel"],
            self.params["recurrent_kernel"], self.workspace("H", (T + 1, B, u)),
            d_seq if has_seq else self.workspace("dummy", (1, 1, 1)), has_seq, self.act, *self._drop, *self._sm,
            self._use_init, self._need_dx, dh, dZ, self.grads["kernel"], self.grads["recurrent_kernel"],
            self._dbias(), dxs, dx)
        return self._finish_backward(dx, [dh])

    def get_config(self):
        return super().get_config()


class LSTM(_RNN):
    """Long short-term memory, Keras layout (gate order i, f, c, o).

    Params: ``kernel`` (in, 4u), ``recurrent_kernel`` (u, 4u), ``bias`` (4u,).
    ``unit_forget_bias`` sets the forget-gate bias to 1 at initialization.
    """

    _gates = 4
    _n_states = 2

    def __init__(self, units, activation="tanh", recurrent_activation="sigmoid", use_bias=True,
                 kernel_initializer="glorot_uniform", recurrent_initializer="orthogonal",
                 bias_initializer="zeros", unit_forget_bias=True, **kwargs):
        super().__init__(units, activation=activation, recurrent_activation=recurrent_activation,
                         use_bias=use_bias, kernel_initializer=kernel_initializer,
                         recurrent_initializer=recurrent_initializer, bias_initializer=bias_initializer,
                         **kwargs)
        self.unit_forget_bias = bool(unit_forget_bias)

    def _bias_initializer(self):
        if not self.unit_forget_bias:
            return self.bias_initializer
        from .. import initializers

        return _forget_bias_init(self.units, initializers.get(self.bias_initializer, self.name))

    def forward(self, x, training=False, initial_state=None, mask=None):
        x = self._check(x)
        B, T, D = x.shape
        u = self.units
        init = self._initial_states(initial_state, B)
        mask_x, n_mx, mask_h, n_mh, HM, xs = self._dropout_masks(training, B, T, D)
        step_mask, has_sm, zero = self._step_mask(mask, B, T, init is not None)
        G = self.workspace("G", (T, B, 4 * u))
        H = self.workspace("H", (T + 1, B, u))
        C = self.workspace("C", (T + 1, B, u))
        TC = self.workspace("TC", (T, B, u))
        rec = self.workspace("rec", (B, 4 * u))
        y = self.workspace("y", (B, T, u)) if self.return_sequences else self.workspace("dummy", (1, 1, 1))
        self._set_initial(H, init, 0)
        self._set_initial(C, init, 1)
        self.kernels("recurrent").lstm_forward(
            x, self.go_backwards, self.params["kernel"], self.params["recurrent_kernel"], self._bias(),
            init is not None, self.act, self.rec_act, self.return_sequences, mask_x, n_mx, mask_h, n_mh, HM,
            step_mask, has_sm, zero, xs, G, H, C, TC, rec, y)
        self._shape = (B, T, D)
        return self._outputs(y, [H[T], C[T]])

    def backward(self, dy):
        B, T, D = self._shape
        u = self.units
        d_seq, dh, d_states = self._split_dy(dy, B, T)
        dc = self.workspace("dc", (B, u))
        if d_states[1] is not None:
            self.kernels("array").copy(self.asarray(d_states[1]), dc)
        else:
            self.kernels("array").fill(dc, 0)
        self._need_dx = self.input_grad_needed
        ws = self.workspace
        has_seq = d_seq is not None
        dx = ws("dx", (B, T, D))
        self.kernels("recurrent").lstm_backward(
            self._xs, self.go_backwards, self.params["kernel"], self.params["recurrent_kernel"],
            ws("G", (T, B, 4 * u)), ws("H", (T + 1, B, u)), ws("C", (T + 1, B, u)), ws("TC", (T, B, u)),
            d_seq if has_seq else ws("dummy", (1, 1, 1)), has_seq, self.act, self.rec_act, *self._drop, *self._sm,
            self._use_init, self._need_dx, dh, dc, ws("dZ", (T, B, 4 * u)), self.grads["kernel"],
            self.grads["recurrent_kernel"], self._dbias(), ws("dxs", (T, B, D)), dx)
        return self._finish_backward(dx, [dh, dc])

    def get_config(self):
        cfg = super().get_config()
        cfg.update(recurrent_activation=self.recurrent_activation, unit_forget_bias=self.unit_forget_bias)
        return cfg


class GRU(_RNN):
    """Gated recurrent unit, Keras 3 layout (gate order z, r, h).

    Params: ``kernel`` (in, 3u), ``recurrent_kernel`` (u, 3u), ``bias`` (2, 3u)
    (row 0 input bias, row 1 recurrent bias) with ``reset_after=True`` (Keras 3
    default, PyTorch's and cuDNN's GRU); with ``reset_after=False`` (Keras 2 /
    TF1: the reset gate multiplies h before the recurrent product) ``bias`` (3u,).
    """

    _gates = 3
    _n_states = 1

    def __init__(self, units, activation="tanh", recurrent_activation="sigmoid", use_bias=True,
                 kernel_initializer="glorot_uniform", recurrent_initializer="orthogonal",
                 bias_initializer="zeros", reset_after=True, **kwargs):
        super().__init__(units, activation=activation, recurrent_activation=recurrent_activation,
                         use_bias=use_bias, kernel_initializer=kernel_initializer,
                         recurrent_initializer=recurrent_initializer, bias_initializer=bias_initializer,
                         **kwargs)
        self.reset_after = bool(reset_after)

    def _bias_shape(self):
        return (2, 3 * self.units) if self.reset_after else (3 * self.units,)

    def forward(self, x, training=False, initial_state=None, mask=None):
        x = self._check(x)
        B, T, D = x.shape
        u = self.units
        init = self._initial_states(initial_state, B)
        mask_x, n_mx, mask_h, n_mh, HM, xs = self._dropout_masks(training, B, T, D)
        step_mask, has_sm, zero = self._step_mask(mask, B, T, init is not None)
        G = self.workspace("G", (T, B, 3 * u))
        H = self.workspace("H", (T + 1, B, u))
        RH = self.workspace("RH", (T, B, u))
        rec = self.workspace("rec", (B, 3 * u))
        y = self.workspace("y", (B, T, u)) if self.return_sequences else self.workspace("dummy", (1, 1, 1))
        self._set_initial(H, init, 0)
        self.kernels("recurrent").gru_forward(
            x, self.go_backwards, self.params["kernel"], self.params["recurrent_kernel"],
            self._bias().reshape(-1, 3 * u), init is not None, self.act, self.rec_act, self.reset_after,
            self.return_sequences, mask_x, n_mx, mask_h, n_mh, HM, step_mask, has_sm, zero, xs, G, H, RH, rec, y)
        self._shape = (B, T, D)
        return self._outputs(y, [H[T]])

    def backward(self, dy):
        B, T, D = self._shape
        u = self.units
        d_seq, dh, _ = self._split_dy(dy, B, T)
        self._need_dx = self.input_grad_needed
        ws = self.workspace
        has_seq = d_seq is not None
        dx = ws("dx", (B, T, D))
        self.kernels("recurrent").gru_backward(
            self._xs, self.go_backwards, self.params["kernel"], self.params["recurrent_kernel"],
            ws("G", (T, B, 3 * u)), ws("H", (T + 1, B, u)), ws("RH", (T, B, u)),
            d_seq if has_seq else ws("dummy", (1, 1, 1)), has_seq, self.act, self.rec_act, self.reset_after,
            *self._drop, *self._sm, self._use_init, self._need_dx, dh, ws("dhz", (B, u)), ws("dZ", (T, B, 3 * u)),
            ws("dR", (T, B, 3 * u)), self.grads["kernel"], self.grads["recurrent_kernel"],
            self._dbias().reshape(-1, 3 * u), ws("dxs", (T, B, D)), dx)
        return self._finish_backward(dx, [dh])

    def get_config(self):
        cfg = super().get_config()
        cfg.update(recurrent_activation=self.recurrent_activation, reset_after=self.reset_after)
        return cfg


# ----------------------------------------------------------- Bidirectional
class _Prefixed(MutableMapping):
    """params/grads/state of a composite layer: the sub-layers' dicts under
    prefixed names, read and written through (a Model that rebinds an entry
    rebinds the sub-layer's array)."""

    def __init__(self, parts, attr):
        self._parts = parts  # [(prefix, layer)]
        self._attr = attr

    def _locate(self, key):
        for prefix, layer in self._parts:
            if key.startswith(prefix):
                d = getattr(layer, self._attr)
                name = key[len(prefix):]
                if name in d:
                    return d, name
        raise KeyError(key)

    def __getitem__(self, key):
        d, name = self._locate(key)
        return d[name]

    def __setitem__(self, key, value):
        d, name = self._locate(key)
        d[name] = value

    def __delitem__(self, key):
        raise TypeError("params of a composite layer cannot be deleted")

    def __iter__(self):
        for prefix, layer in self._parts:
            for name in getattr(layer, self._attr):
                yield prefix + name

    def __len__(self):
        return sum(len(getattr(layer, self._attr)) for _, layer in self._parts)


class Bidirectional(Layer):
    """Runs a recurrent layer forward and a copy of it backward in time and
    merges the two outputs (``merge_mode`` "concat", "sum", "mul" or "ave").

    Params: the forward layer's as ``forward_<name>``, then the backward
    layer's as ``backward_<name>`` (Keras get_weights order). With
    ``return_sequences`` the backward output is flipped back to input order
    before merging, as in Keras. ``initial_state``: the forward layer's states
    then the backward layer's. ``mask``: passed to both directions, whose
    ``zero_output_for_mask`` is set to ``return_sequences`` (as Keras does), so
    that the masked steps of a returned sequence are zeros in both.
    """

    _MODES = ("concat", "sum", "mul", "ave")
    supports_masking = True

    def __init__(self, layer, merge_mode="concat", backward_layer=None, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(layer, _RNN):
            raise ValueError(f"{self.name}: expected a SimpleRNN, LSTM or GRU layer, got {layer!r}")
        if merge_mode not in self._MODES:
            raise ValueError(f"{self.name}: merge_mode must be one of {self._MODES}, got {merge_mode!r}")
        if layer.built:
            raise ValueError(f"{self.name}: the wrapped layer must not be built yet")
        self.merge_mode = merge_mode
        self.forward_layer = layer
        if backward_layer is None:
            cfg = dict(layer.get_config())
            cfg["go_backwards"] = not layer.go_backwards
            cfg["name"] = "backward_" + layer.name
            cfg.pop("seed", None)
            backward_layer = type(layer).from_config(cfg)
            backward_layer.rng = np.random.default_rng(self.rng.integers(2 ** 63))
        elif (not isinstance(backward_layer, _RNN) or backward_layer.units != layer.units
              or backward_layer.return_sequences != layer.return_sequences
              or backward_layer.return_state != layer.return_state
              or type(backward_layer) is not type(layer)):
            raise ValueError(f"{self.name}: backward_layer must be the same kind of layer as layer, with the "
                             "same units, return_sequences and return_state")
        self.backward_layer = backward_layer
        for sub in (self.forward_layer, self.backward_layer):  # Keras: zeros at masked steps of a sequence
            sub.zero_output_for_mask = sub.return_sequences
        self.return_sequences = layer.return_sequences
        self.return_state = layer.return_state
        parts = [("forward_", self.forward_layer), ("backward_", self.backward_layer)]
        self.params = _Prefixed(parts, "params")
        self.grads = _Prefixed(parts, "grads")
        self.state = _Prefixed(parts, "state")

    def sublayers(self):
        return [self.forward_layer, self.backward_layer]

    def reset_states(self) -> None:
        """Stateful wrapped layers: forget both directions' carried states."""
        for layer in self.sublayers():
            layer.reset_states()

    def reset_state(self) -> None:
        """Keras 3 name of reset_states."""
        self.reset_states()

    def bind_param(self, name, param, grad):
        for prefix, layer in (("forward_", self.forward_layer), ("backward_", self.backward_layer)):
            if name.startswith(prefix) and name[len(prefix):] in layer.params:
                layer.bind_param(name[len(prefix):], param, grad)
                return
        raise KeyError(name)

    def build(self, input_shape):
        for layer in self.sublayers():
            if layer.dtype != self.dtype and not layer._dtype_given:
                layer.dtype = self.dtype
            layer.build(input_shape)
        super().build(input_shape)

    def compute_output_shape(self, input_shape):
        f = self.forward_layer.compute_output_shape(input_shape)
        b = self.backward_layer.compute_output_shape(input_shape)
        fo, bo = (f[0], b[0]) if self.return_state else (f, b)
        out = tuple(fo[:-1]) + (fo[-1] + bo[-1],) if self.merge_mode == "concat" else tuple(fo)
        if self.return_state:
            return [out] + list(f[1:]) + list(b[1:])
        return out

    def compute_mask(self, inputs, mask):
        """As the wrapped layer's (Keras 3): the input's mask with return_sequences, else None;
        with return_state one more None per state of each direction."""
        return _rnn_output_mask(mask, self.return_sequences, self.return_state, 2 * self.forward_layer._n_states)

    def forward(self, x, training=False, initial_state=None, mask=None):
        self.ensure_built(np.shape(x))
        x = self.check_input(x, ndim=3, last_dim=self.forward_layer.params["kernel"].shape[0])
        init_f = init_b = None
        if initial_state is not None:
            states = list(initial_state)
            n = self.forward_layer._n_states
            if len(states) != 2 * n:
                raise ValueError(f"{self.name}: expected {2 * n} initial state arrays (forward then backward), "
                                 f"got {len(states)}")
            init_f, init_b = states[:n], states[n:]
        if mask is not None:  # checked here too, for an error that names this layer
            mask = _real_steps(self.name, self.device, mask, x.shape[0], x.shape[1])
        of = self.forward_layer.forward(x, training, initial_state=init_f, mask=mask)
        ob = self.backward_layer.forward(x, training, initial_state=init_b, mask=mask)
        yf, sf = (of[0], of[1:]) if self.return_state else (of, [])
        yb, sb = (ob[0], ob[1:]) if self.return_state else (ob, [])
        k = self.kernels("array")
        if self.return_sequences:  # the backward layer's outputs in forward time order
            rev = self.workspace("yb_rev", yb.shape)
            k.reverse_steps(yb, rev)
            yb = rev
        self._yf, self._yb = yf, yb
        self._has_init = initial_state is not None
        u = yf.shape[-1]
        out = self.workspace("y", yf.shape[:-1] + ((2 * u,) if self.merge_mode == "concat" else (u,)))
        if self.merge_mode == "concat":
            out3 = out.reshape(-1, 2 * u, 1)
            k.copy_block(yf.reshape(-1, u, 1), out3, 0)
            k.copy_block(yb.reshape(-1, u, 1), out3, u)
        elif self.merge_mode == "mul":
            k.multiply(yf, yb, out)
        else:
            k.add(yf, yb, out)
            if self.merge_mode == "ave":
                k.scale(out, 0.5)
        if self.return_state:
            return [out] + list(sf) + list(sb)
        return out

    def backward(self, dy):
        n = self.forward_layer._n_states
        if self.return_state:
            d_out, d_sf, d_sb = dy[0], list(dy[1:1 + n]), list(dy[1 + n:])
        else:
            d_out, d_sf, d_sb = dy, [], []
        yf, yb = self._yf, self._yb
        u = yf.shape[-1]
        k = self.kernels("array")
        if d_out is None:
            dyf = dyb = None
        else:
            d_out = self.asarray(d_out)
            if self.merge_mode == "sum":
                dyf = dyb = d_out
            else:
                dyf, dyb = self.workspace("dyf", yf.shape), self.workspace("dyb", yf.shape)
                if self.merge_mode == "concat":
                    d3 = d_out.reshape(-1, 2 * u, 1)
                    k.take_block(d3, 0, dyf.reshape(-1, u, 1))
                    k.take_block(d3, u, dyb.reshape(-1, u, 1))
                elif self.merge_mode == "mul":
                    k.multiply(d_out, yb, dyf)
                    k.multiply(d_out, yf, dyb)
                else:
                    k.copy(d_out, dyf)
                    k.scale(dyf, 0.5)
                    dyb = dyf
            if self.return_sequences:  # back to the backward layer's own time order
                rev = self.workspace("dyb_rev", yf.shape)
                k.reverse_steps(dyb, rev)
                dyb = rev
        for layer in self.sublayers():
            layer.input_grad_needed = self.input_grad_needed
        rf = self.forward_layer.backward([dyf] + d_sf if self.return_state else dyf)
        rb = self.backward_layer.backward([dyb] + d_sb if self.return_state else dyb)
        if self._has_init:
            (dxf, gf), (dxb, gb) = rf, rb
        else:
            dxf, dxb, gf, gb = rf, rb, [], []
        dx = None
        if dxf is not None:
            dx = self.workspace("dx", dxf.shape)
            k.add(dxf, dxb, dx)
        if self._has_init:
            return dx, list(gf) + list(gb)
        return dx

    def get_config(self):
        cfg = super().get_config()
        cfg["merge_mode"] = self.merge_mode
        cfg["layer"] = {"class": type(self.forward_layer).__name__, "config": self.forward_layer.get_config()}
        cfg["backward_layer"] = {"class": type(self.backward_layer).__name__,
                                 "config": self.backward_layer.get_config()}
        return cfg

    @classmethod
    def from_config(cls, cfg):
        from .. import layers

        cfg = dict(cfg)
        spec = cfg.pop("layer")
        layer = getattr(layers, spec["class"]).from_config(dict(spec["config"]))
        bspec = cfg.pop("backward_layer", None)
        backward = None if bspec is None else getattr(layers, bspec["class"]).from_config(dict(bspec["config"]))
        return cls(layer, backward_layer=backward, **cfg)
