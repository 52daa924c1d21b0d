"""Reference SimpleRNN, LSTM and GRU (float64 NumPy, step by step, written for clarity).

Each function takes batch-major x (batch, time, features) and Keras-layout
weights and returns (outputs (batch, time, units) in processing order,
final states list). ``go_backwards`` processes the steps from last to first.

Dropout as Keras 3 (keras/src/layers/rnn/*.py): ``mask_x`` (batch, k,
features) and ``mask_h`` (batch, k, units), already scaled by 1/(1-rate),
fixed over the steps; k = 1 multiplies the input (state) of every gate's
product, k = n_gates gives gate g its own mask g (Keras' implementation 1).
The masked state only enters the recurrent products: the GRU's update
h = z * h_{t-1} + (1 - z) * hh and the LSTM cell use the unmasked state.

Step masks as Keras 3 (keras/src/backend/*/rnn.py): ``step_mask`` (batch,
time), in input time order, nonzero = a real step. At a masked step every
state is carried over unchanged and the output is the previous output (zeros
before the first real step, even with an initial state), or zeros with
``zero_masked`` (Keras' zero_output_for_mask). The last output is the last
step's output, so it can differ from the final state.
"""
import numpy as np

from .dense import activation


def _masked_product(v, w, masks, n_gates):
    """v @ w, gate block g of the columns computed from v * masks[:, g] (masks[:, 0] for all if one)."""
    if masks is None:
        return v @ w
    u = w.shape[1] // n_gates
    return np.concatenate([(v * masks[:, g if masks.shape[1] > 1 else 0]) @ w[:, g * u:(g + 1) * u]
                           for g in range(n_gates)], axis=1)


def _steps(x, go_backwards):
    T = x.shape[1]
    return range(T - 1, -1, -1) if go_backwards else range(T)


class _StepMask:
    """Keras' masked step: states carried, output the previous output or zeros."""

    def __init__(self, step_mask, zero_masked, shape):
        self.m = None if step_mask is None else np.asarray(step_mask) != 0
        self.zero_masked = zero_masked
        self.prev = np.zeros(shape)

    def states(self, t, new, old):
        if self.m is None:
            return new
        keep = self.m[:, t, None]
        return [np.where(keep, n, o) for n, o in zip(new, old)]

    def output(self, t, h):
        if self.m is None:
            return h
        out = np.where(self.m[:, t, None], h, 0.0 if self.zero_masked else self.prev)
        self.prev = out
        return out


def simple_rnn_forward(x, kernel, recurrent_kernel, bias, h0=None, activation_name="tanh", go_backwards=False,
                       mask_x=None, mask_h=None, step_mask=None, zero_masked=False):
    x = np.asarray(x, np.float64)
    B = x.shape[0]
    u = kernel.shape[1]
    h = np.zeros((B, u)) if h0 is None else np.asarray(h0, np.float64)
    sm = _StepMask(step_mask, zero_masked, (B, u))
    outs = []
    for t in _steps(x, go_backwards):
        hn = activation(activation_name, _masked_product(x[:, t], kernel, mask_x, 1)
                        + _masked_product(h, recurrent_kernel, mask_h, 1) + bias)
        outs.append(sm.output(t, hn))
        [h] = sm.states(t, [hn], [h])
    return np.stack(outs, axis=1), [h]


def lstm_forward(x, kernel, recurrent_kernel, bias, h0=None, c0=None, activation_name="tanh",
                 recurrent_activation="sigmoid", go_backwards=False, mask_x=None, mask_h=None, step_mask=None,
                 zero_masked=False):
    """Keras LSTM, gate order i, f, c, o."""
    x = np.asarray(x, np.float64)
    B = x.shape[0]
    u = recurrent_kernel.shape[0]
    h = np.zeros((B, u)) if h0 is None else np.asarray(h0, np.float64)
    c = np.zeros((B, u)) if c0 is None else np.asarray(c0, np.float64)
    sm = _StepMask(step_mask, zero_masked, (B, u))
    outs = []
    for t in _steps(x, go_backwards):
        z = _masked_product(x[:, t], kernel, mask_x, 4) + _masked_product(h, recurrent_kernel, mask_h, 4) + bias
        i = activation(recurrent_activation, z[:, :u])
        f = activation(recurrent_activation, z[:, u:2 * u])
        g = activation(activation_name, z[:, 2 * u:3 * u])
        o = activation(recurrent_activation, z[:, 3 * u:])
        cn = f * c + i * g
        hn = o * activation(activation_name, cn)
        outs.append(sm.output(t, hn))
        h, c = sm.states(t, [hn, cn], [h, c])
    return np.stack(outs, axis=1), [h, c]


def gru_forward(x, kernel, recurrent_kernel, bias, h0=None, activation_name="tanh",
                recurrent_activation="sigmoid", go_backwards=False, mask_x=None, mask_h=None, step_mask=None,
                zero_masked=False, reset_after=True):
    """Keras GRU, gate order z, r, h. reset_after (Keras 3 default): bias (2, 3u),
    candidate act(x_h + r * (h U_h + b_rec_h)); reset_after=False (Keras 2 / TF1):
    bias (3u,), candidate act(x_h + b_h + (r * h) U_h)."""
    x = np.asarray(x, np.float64)
    B = x.shape[0]
    u = recurrent_kernel.shape[0]
    h = np.zeros((B, u)) if h0 is None else np.asarray(h0, np.float64)
    sm = _StepMask(step_mask, zero_masked, (B, u))
    outs = []
    for t in _steps(x, go_backwards):
        xp = _masked_product(x[:, t], kernel, mask_x, 3) + (bias[0] if reset_after else bias)
        hp = _masked_product(h, recurrent_kernel, mask_h, 3) + (bias[1] if reset_after else 0.0)
        z = activation(recurrent_activation, xp[:, :u] + hp[:, :u])
        r = activation(recurrent_activation, xp[:, u:2 * u] + hp[:, u:2 * u])
        if reset_after:
            hh = activation(activation_name, xp[:, 2 * u:] + r * hp[:, 2 * u:])
        else:
            hm = h if mask_h is None else h * mask_h[:, 2 if mask_h.shape[1] > 1 else 0]
            hh = activation(activation_name, xp[:, 2 * u:] + (r * hm) @ recurrent_kernel[:, 2 * u:])
        hn = z * h + (1.0 - z) * hh
        outs.append(sm.output(t, hn))
        [h] = sm.states(t, [hn], [h])
    return np.stack(outs, axis=1), [h]
