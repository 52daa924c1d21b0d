"""Keras masking in SimpleRNN, LSTM, GRU and Bidirectional: the step-mask kernels against the
float64 reference, layer cases with masks (reference and finite differences), Keras 3 as the
oracle, and the layer API (all-True masks, errors, compute_mask, config, stateful)."""
import os

import numpy as np
import pytest

from nbmodel import layers
from nbmodel.kernels import codes
from nbmodel.kernels.cpu import recurrent as cpu
from nbmodel.kernels.reference import recurrent as ref
from nbmodel.testing import LayerCase

B, T, D, U = 3, 4, 3, 4
GATES = {"SimpleRNN": 1, "LSTM": 4, "GRU": 3}
REFS = {"SimpleRNN": ref.simple_rnn_forward, "LSTM": ref.lstm_forward, "GRU": ref.gru_forward}
N_STATES = {"SimpleRNN": 1, "LSTM": 2, "GRU": 1}
RTOL = {"float32": 1e-5, "float64": 1e-12}
ATOL = {"float32": 2e-6, "float64": 1e-12}
# leading and trailing skipped steps; an interior one; a row with no real step
MASK = np.array([[0, 1, 1, 0], [1, 0, 1, 1], [0, 0, 0, 0]], bool)


# ------------------------------------------------------------------ kernels
def _kernel_run(kind, dtype, reverse, use_init, ret_seq, dropout, zero_masked, reset_after=True, seed=0):
    """The CPU forward kernel of ``kind`` on random weights with MASK as the step mask;
    returns (y or None, final states, reference outputs, reference states)."""
    r = np.random.default_rng(seed)
    g = GATES[kind]
    n = g * U
    f = lambda *s: (0.5 * r.standard_normal(s)).astype(dtype)  # noqa: E731
    x = f(B, T, D) * 2
    W, R = f(D, n), f(U, n)
    bias = f(2 if reset_after else 1, n) if kind == "GRU" else f(n)
    keep = lambda *s: ((r.random(s) >= 0.3) / 0.7).astype(dtype)  # noqa: E731
    n_mx = n_mh = g if dropout else 0
    mask_x = keep(B, g, D) if dropout else np.zeros((1, 1, 1), dtype)
    mask_h = keep(B, g, U) if dropout else np.zeros((1, 1, 1), dtype)
    HM = np.empty((n_mh, T, B, U), dtype) if dropout else np.zeros((1, 1, 1, 1), dtype)
    xs = np.empty((max(n_mx, 1), T, B, D), dtype)
    init = [f(B, U) * 2 for _ in range(N_STATES[kind])] if use_init else []
    H = np.zeros((T + 1, B, U), dtype)
    if use_init:
        H[0] = init[0]
    rec = np.empty((B, n), dtype)
    y = np.full((B, T, U) if ret_seq else (1, 1, 1), np.nan, dtype)
    sm = (MASK.astype(dtype), True, zero_masked)
    tanh, sig = codes.TANH, codes.SIGMOID
    if kind == "SimpleRNN":
        cpu.simple_rnn_forward(x, reverse, W, R, bias, use_init, tanh, ret_seq, mask_x, n_mx, mask_h, n_mh, HM, *sm,
                               xs, np.empty((T, B, U), dtype), H, rec, y)
        states = [H[T]]
    elif kind == "LSTM":
        C = np.zeros((T + 1, B, U), dtype)
        if use_init:
            C[0] = init[1]
        cpu.lstm_forward(x, reverse, W, R, bias, use_init, tanh, sig, ret_seq, mask_x, n_mx, mask_h, n_mh, HM, *sm,
                         xs, np.empty((T, B, n), dtype), H, C, np.empty((T, B, U), dtype), rec, y)
        states = [H[T], C[T]]
    else:
        cpu.gru_forward(x, reverse, W, R, bias, use_init, tanh, sig, reset_after, ret_seq, mask_x, n_mx, mask_h, n_mh,
                        HM, *sm, xs, np.empty((T, B, n), dtype), H, np.empty((T, B, U), dtype), rec, y)
        states = [H[T]]
    f64 = lambda a: a.astype(np.float64)  # noqa: E731
    kw = {"reset_after": reset_after} if kind == "GRU" else {}
    if kind == "GRU" and not reset_after:
        bias = bias[0]
    ys, rstates = REFS[kind](f64(x), f64(W), f64(R), f64(bias), *[f64(s) for s in init], go_backwards=reverse,
                             mask_x=f64(mask_x) if dropout else None, mask_h=f64(mask_h) if dropout else None,
                             step_mask=MASK, zero_masked=zero_masked, **kw)
    return (y if ret_seq else None), states, ys, rstates


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kind", sorted(GATES))
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("use_init", [False, True])
@pytest.mark.parametrize("dropout", [False, True])
@pytest.mark.parametrize("ret_seq, zero_masked", [(True, False), (True, True), (False, False), (False, True)])
def test_step_mask_kernels_match_reference(kind, dtype, reverse, use_init, dropout, ret_seq, zero_masked):
    """Every state after every step and the output sequence (in processing order) against the
    reference; the dtype stays that of the inputs."""
    y, states, ys, rstates = _kernel_run(kind, dtype, reverse, use_init, ret_seq, dropout, zero_masked)
    tol = {"rtol": 1e-5, "atol": 2e-6} if dtype == np.float32 else {"rtol": 1e-12, "atol": 1e-12}
    for s, e in zip(states, rstates):
        assert s.dtype == dtype
        np.testing.assert_allclose(s, e, **tol)
    if ret_seq:
        assert y.dtype == dtype
        np.testing.assert_allclose(y, ys, **tol)
        order = MASK[:, ::-1] if reverse else MASK
        if zero_masked:
            assert not y[~order].any()
        assert not y[2].any()  # no real step: zeros, initial state or not


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("reverse, dropout", [(False, False), (True, True)])
def test_gru_reset_before_step_mask_kernels_match_reference(dtype, reverse, dropout):
    y, states, ys, rstates = _kernel_run("GRU", dtype, reverse, True, True, dropout, False, reset_after=False)
    tol = {"rtol": 1e-5, "atol": 2e-6} if dtype == np.float32 else {"rtol": 1e-12, "atol": 1e-12}
    np.testing.assert_allclose(states[0], rstates[0], **tol)
    np.testing.assert_allclose(y, ys, **tol)


def test_reference_step_mask_semantics():
    """The oracle itself on a hand-checked case (Keras: skipped steps repeat the previous
    output, zeros before the first real step)."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 4, 3))
    w = [rng.standard_normal((3, U)), rng.standard_normal((U, U)), rng.standard_normal(U)]
    m = np.array([[1, 1, 0, 0], [0, 1, 1, 1]], bool)
    ys, [h] = ref.simple_rnn_forward(x, *w, step_mask=m)
    np.testing.assert_array_equal(ys[0, 2], ys[0, 1])
    np.testing.assert_array_equal(ys[0, 3], ys[0, 1])
    assert not ys[1, 0].any()
    np.testing.assert_array_equal(h[0], ys[0, 1])
    unmasked, _ = ref.simple_rnn_forward(x[:1, :2], *w)
    np.testing.assert_allclose(ys[0, :2], unmasked[0])


# ------------------------------------------------------------------ layer cases
def _randomized(layer, input_shape, seed=1):
    layer.build(input_shape)
    rng = np.random.default_rng(seed)
    layer.set_weights([0.5 * rng.standard_normal(w.shape) for w in layer.get_weights()])
    return layer


def _initial_states(kind, n_layers=1, seed=9):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((B, U)) for _ in range(n_layers * N_STATES[kind])]


def masked_case(kind, label, seq=False, state=False, backwards=False, zero=False, init=None, mask=MASK,
                layer_kw=None):
    layer_kw = layer_kw or {}

    def make(dt):
        layer = getattr(layers, kind)(U, return_sequences=seq, return_state=state, go_backwards=backwards,
                                      zero_output_for_mask=zero, dtype=dt, seed=0, **layer_kw)
        return _randomized(layer, (None, T, D))

    def reference(w, x):
        kw = {"reset_after": layer_kw["reset_after"]} if "reset_after" in layer_kw else {}
        ys, states = REFS[kind](x, w["kernel"], w["recurrent_kernel"], w["bias"], *(init or ()),
                                go_backwards=backwards, step_mask=mask, zero_masked=zero, **kw)
        y = ys if seq else ys[:, -1]
        return (y, *states) if state else y

    fk = {"mask": mask}
    if init is not None:
        fk["initial_state"] = init
    return LayerCase(f"{kind}-mask-{label}", make, inputs=lambda r: r.standard_normal((B, T, D)),
                     reference=reference, forward_kwargs=fk, rtol=RTOL, atol=ATOL)


def bidi_case(kind, mode, seq, state=False, init=None, inner_zero=False):
    n = N_STATES[kind]

    def make(dt):
        inner = getattr(layers, kind)(U, return_sequences=seq, return_state=state, zero_output_for_mask=inner_zero,
                                      seed=0)
        return _randomized(layers.Bidirectional(inner, merge_mode=mode, dtype=dt, seed=1), (None, T, D), seed=20)

    def reference(w, x):
        run = lambda p, i, back: REFS[kind](x, w[p + "kernel"], w[p + "recurrent_kernel"], w[p + "bias"],  # noqa
                                            *i, go_backwards=back, step_mask=MASK, zero_masked=seq)
        yf, sf = run("forward_", init[:n] if init else (), False)
        yb, sb = run("backward_", init[n:] if init else (), True)
        if seq:
            yb = yb[:, ::-1]
        else:
            yf, yb = yf[:, -1], yb[:, -1]
        y = {"concat": np.concatenate([yf, yb], -1), "sum": yf + yb, "mul": yf * yb, "ave": (yf + yb) / 2}[mode]
        return (y, *sf, *sb) if state else y

    fk = {"mask": MASK}
    if init is not None:
        fk["initial_state"] = init
    label = f"bidirectional-{kind}-{mode}-mask" + ("-seq" if seq else "") + ("-state-initial" if init else "")
    return LayerCase(label, make, inputs=lambda r: r.standard_normal((B, T, D)), reference=reference,
                     forward_kwargs=fk, rtol=RTOL, atol=ATOL)


CASES = []
for _kind in ("SimpleRNN", "LSTM", "GRU"):
    CASES += [
        masked_case(_kind, "last"),
        masked_case(_kind, "seq", seq=True),
        masked_case(_kind, "seq-backwards-zero", seq=True, backwards=True, zero=True),
        masked_case(_kind, "last-zero", zero=True),
        masked_case(_kind, "seq-state-initial", seq=True, state=True, init=_initial_states(_kind)),
        # the row with no real step keeps its initial state, but its last output is zeros
        masked_case(_kind, "last-backwards-state-initial", state=True, backwards=True, init=_initial_states(_kind)),
    ]
CASES += [masked_case("GRU", "seq-reset-before-initial", seq=True, init=_initial_states("GRU"),
                      layer_kw={"reset_after": False})]
CASES += [bidi_case("GRU", "concat", True), bidi_case("LSTM", "sum", False),
          bidi_case("SimpleRNN", "mul", True, inner_zero=True),
          bidi_case("LSTM", "concat", True, state=True, init=_initial_states("LSTM", 2, seed=3))]


@pytest.mark.parametrize("case", CASES, ids=str)
def test_masked_layer_case(case, device):
    """Forward against the reference (float32, float64) and float64 finite differences of
    every gradient (inputs, weights, initial states through the reference check) with a mask."""
    case.check(device)


def _state_gradcheck(layer, x, init, mask):
    """The initial-state gradients backward returns (the layer cases check the input and
    weight gradients) against float64 central differences."""
    out = layer.forward(x, training=True, initial_state=init, mask=mask)
    outs = out if isinstance(out, list) else [out]
    rng = np.random.default_rng(11)
    dys = [rng.standard_normal(o.shape) for o in outs]
    _, dstates = layer.backward(dys if isinstance(out, list) else dys[0])
    assert len(dstates) == len(init)

    def objective():
        o = layer.forward(x, initial_state=init, mask=mask)
        return sum(float(np.sum(np.asarray(a) * d)) for a, d in zip(o if isinstance(o, list) else [o], dys))

    eps = 1e-6
    for i, (s, ds) in enumerate(zip(init, dstates)):
        num = np.zeros_like(s)
        for idx in np.ndindex(s.shape):
            old = s[idx]
            s[idx] = old + eps
            fp = objective()
            s[idx] = old - eps
            fm = objective()
            s[idx] = old
            num[idx] = (fp - fm) / (2 * eps)
        np.testing.assert_allclose(ds, num, rtol=1e-6, atol=1e-8, err_msg=f"{layer.name}: initial state {i}")


STATE_VARIANTS = {
    # skipped leading steps output zeros, not the initial state: their gradient must not reach it
    "seq": dict(return_sequences=True),
    "seq-backwards-zero": dict(return_sequences=True, go_backwards=True, zero_output_for_mask=True),
    # the row with no real step: last output zeros, final state = initial state
    "last-state": dict(return_state=True),
    "last-state-zero": dict(return_state=True, zero_output_for_mask=True),
    "seq-state-backwards": dict(return_sequences=True, return_state=True, go_backwards=True),
}


@pytest.mark.parametrize("variant", sorted(STATE_VARIANTS))
@pytest.mark.parametrize("kind", sorted(GATES) + ["GRU-reset-before", "Bidirectional"])
def test_initial_state_gradients_with_mask(kind, variant):
    kw = dict(STATE_VARIANTS[variant])
    n = 1
    if kind == "Bidirectional":
        kw.pop("go_backwards", None)
        kw.pop("zero_output_for_mask", None)
        layer, n = layers.Bidirectional(layers.LSTM(U, **kw), dtype="float64", seed=0), 2
        init = _initial_states("LSTM", 2)
    elif kind == "GRU-reset-before":
        layer = layers.GRU(U, reset_after=False, dtype="float64", seed=0, **kw)
        init = _initial_states("GRU")
    else:
        layer = getattr(layers, kind)(U, dtype="float64", seed=0, **kw)
        init = _initial_states(kind, n)
    _randomized(layer, (None, T, D))
    x = np.random.default_rng(2).standard_normal((B, T, D))
    _state_gradcheck(layer, x, init, MASK)


def _fixed_uniforms(cls):
    """``cls`` with its dropout draws fixed (the same masks at every call)."""
    class Fixed(cls):
        def _uniforms(self, key, shape):
            u = self.workspace(("uniform", key), shape)
            self.device.assign(u, np.random.default_rng(100 + len(key)).random(shape).astype(self.dtype))
            return u
    Fixed.__name__ = cls.__name__
    return Fixed


@pytest.mark.parametrize("kind", sorted(GATES))
def test_step_masks_with_dropout_gradients(kind):
    """Keras dropout masks and step masks together: float64 finite differences."""
    from nbmodel.testing import gradcheck

    layer = _fixed_uniforms(getattr(layers, kind))(U, return_sequences=True, dropout=0.25, recurrent_dropout=0.4,
                                                   dtype="float64", seed=0)
    _randomized(layer, (None, T, D))
    x = np.random.default_rng(2).standard_normal((B, T, D))
    gradcheck(layer, x, forward_kwargs={"mask": MASK})
    assert layer._drop[1] == GATES[kind] and layer._drop[3] == GATES[kind]  # the dropout masks were on


# ------------------------------------------------------------------ Keras oracle
KERAS_KINDS = ["SimpleRNN", "LSTM", "GRU", "Bidirectional-LSTM", "Bidirectional-GRU"]
# Keras 3 on torch runs its float64 layers' products in float32 (ops.matmul follows JAX's type
# promotion without x64: result_type(float64, float64) is float32), so agreement is to float32
# noise; a masking error is of order 0.1.
KERAS_TOL = {"rtol": 1e-5, "atol": 1e-6}


def _keras():
    os.environ["KERAS_BACKEND"] = "torch"
    pytest.importorskip("torch")
    keras = pytest.importorskip("keras")
    if keras.backend.backend() != "torch":
        pytest.skip(f"keras runs on {keras.backend.backend()!r}, not torch")
    return keras


def _pair(keras, kind, **kw):
    """The same layer in Keras and here, with the same (random) weights."""
    if kind.startswith("Bidirectional"):
        inner = kind.split("-")[1]
        ko = keras.layers.Bidirectional(getattr(keras.layers, inner)(U, dtype="float64", **kw), dtype="float64")
        ours = layers.Bidirectional(getattr(layers, inner)(U, **kw), dtype="float64", seed=0)
    else:
        ko = getattr(keras.layers, kind)(U, dtype="float64", **kw)
        ours = getattr(layers, kind)(U, dtype="float64", seed=0, **kw)
    ko.build((None, T, D))
    _randomized(ours, (None, T, D), seed=5)
    ko.set_weights(ours.get_weights())
    return ko, ours


@pytest.mark.parametrize("go_backwards", [False, True])
@pytest.mark.parametrize("seq", [False, True])
@pytest.mark.parametrize("kind", KERAS_KINDS)
def test_matches_keras(kind, seq, go_backwards):
    keras = _keras()
    import torch

    if go_backwards and kind.startswith("Bidirectional"):
        pytest.skip("Keras 3.15's Bidirectional rejects a wrapped go_backwards layer (both copies go backwards)")

    ko, ours = _pair(keras, kind, return_sequences=seq, go_backwards=go_backwards)
    x = np.random.default_rng(3).standard_normal((B, T, D))
    want = keras.ops.convert_to_numpy(ko(torch.from_numpy(x), mask=torch.from_numpy(MASK)))
    got = np.asarray(ours.forward(x, mask=MASK))
    np.testing.assert_allclose(got, want, **KERAS_TOL)


@pytest.mark.parametrize("seq", [False, True])
@pytest.mark.parametrize("kind", ["SimpleRNN", "LSTM", "GRU"])
def test_matches_keras_zero_output_initial_state_and_return_state(kind, seq):
    """zero_output_for_mask, an initial state (skipped leading steps output zeros, the row with
    no real step keeps its initial state) and the returned states."""
    keras = _keras()
    import torch

    for zero in (False, True):
        ko, ours = _pair(keras, kind, return_sequences=seq, return_state=True, zero_output_for_mask=zero)
        x = np.random.default_rng(4).standard_normal((B, T, D))
        init = _initial_states(kind)
        want = ko(torch.from_numpy(x), mask=torch.from_numpy(MASK), initial_state=[torch.from_numpy(s) for s in init])
        got = ours.forward(x, mask=MASK, initial_state=init)
        for i, (g, w) in enumerate(zip(got, want)):
            np.testing.assert_allclose(np.asarray(g), keras.ops.convert_to_numpy(w), **KERAS_TOL,
                                       err_msg=f"{kind} zero_output_for_mask={zero}: output {i}")


def test_matches_keras_compute_mask():
    keras = _keras()
    m = MASK
    for seq in (False, True):
        for state in (False, True):
            ko, ours = _pair(keras, "LSTM", return_sequences=seq, return_state=state)
            want, got = ko.compute_mask(None, m), ours.compute_mask(None, m)
            if state:
                assert len(got) == len(want) == 3 and got[1:] == [None, None] and want[1:] == [None, None]
                want, got = want[0], got[0]
            assert (got is None) == (want is None)
            if got is not None:
                np.testing.assert_array_equal(got, np.asarray(want))


# ------------------------------------------------------------------ layer API
def _pass(layer, x, mask, dy_seed=7):
    """Outputs, input gradient and weight gradients of one forward(training) + backward."""
    out = layer.forward(x, training=True, mask=mask)
    outs = out if isinstance(out, list) else [out]
    rng = np.random.default_rng(dy_seed)
    dys = [rng.standard_normal(o.shape).astype(o.dtype) for o in outs]
    dx = layer.backward(dys if isinstance(out, list) else dys[0])
    return [np.array(o) for o in outs], np.array(dx), {k: np.array(g) for k, g in layer.grads.items()}


@pytest.mark.parametrize("seq", [False, True])
@pytest.mark.parametrize("kind", ["SimpleRNN", "LSTM", "GRU", "Bidirectional"])
def test_all_true_mask_is_bit_identical_to_none(kind, seq):
    x = np.random.default_rng(0).standard_normal((B, T, D)).astype(np.float32)

    def make():
        if kind == "Bidirectional":
            layer = layers.Bidirectional(layers.GRU(U, return_sequences=seq), seed=1)
        else:
            layer = getattr(layers, kind)(U, return_sequences=seq, return_state=True, seed=1)
        return _randomized(layer, (None, T, D))

    a = _pass(make(), x, None)
    b = _pass(make(), x, np.ones((B, T), bool))
    for u, v in zip(a[0], b[0]):
        np.testing.assert_array_equal(u, v)
    np.testing.assert_array_equal(a[1], b[1])
    for k in a[2]:
        np.testing.assert_array_equal(a[2][k], b[2][k], err_msg=k)


def test_masked_steps_change_the_output_and_get_no_input_gradient():
    layer = _randomized(layers.LSTM(U, return_sequences=True, dtype="float64", seed=0), (None, T, D))
    x = np.random.default_rng(0).standard_normal((B, T, D))
    (y,), dx, _ = _pass(layer, x, MASK)
    (y0,), _, _ = _pass(layer, x, None)
    assert np.abs(y - y0).max() > 1e-3
    assert not dx[~MASK].any() and dx[MASK].all()


def test_mask_of_0_and_1_and_device_array_accepted():
    layer = _randomized(layers.GRU(U, return_sequences=True, seed=0), (None, T, D))
    x = np.random.default_rng(0).standard_normal((B, T, D)).astype(np.float32)
    want = np.array(layer.forward(x, mask=MASK))
    for m in (MASK.astype(np.int64), MASK.astype(np.float32), layer.device.asarray(MASK.astype(np.float32))):
        np.testing.assert_array_equal(np.array(layer.forward(x, mask=m)), want)


@pytest.mark.parametrize("kind", ["SimpleRNN", "Bidirectional"])
def test_bad_masks(kind):
    layer = layers.SimpleRNN(U, seed=0, name="rnn_m")
    if kind == "Bidirectional":
        layer = layers.Bidirectional(layer, name="bidi_m")
    name = "bidi_m" if kind == "Bidirectional" else "rnn_m"
    x = np.zeros((B, T, D), np.float32)
    with pytest.raises(ValueError, match=rf"{name}: mask must have shape \(batch, time\) = \(3, 4\), got \(3, 3\)"):
        layer.forward(x, mask=np.ones((B, T - 1), bool))
    with pytest.raises(ValueError, match=f"{name}: mask must have shape"):
        layer.forward(x, mask=np.ones((B, T, 1), bool))
    with pytest.raises(ValueError, match=f"{name}: mask must be a bool array"):
        layer.forward(x, mask=np.full((B, T), 2))
    with pytest.raises(ValueError, match=f"{name}: mask must be a bool array"):
        layer.forward(x, mask=np.full((B, T), "a"))


def test_compute_mask_and_takes_mask():
    m = MASK
    for cls in (layers.SimpleRNN, layers.LSTM, layers.GRU):
        assert cls(U).supports_masking and cls(U).takes_mask()
        assert cls(U).compute_mask(None, m) is None
        assert cls(U, return_sequences=True).compute_mask(None, m) is m
        assert cls(U).compute_mask(None, None) is None
        n = 2 if cls is layers.LSTM else 1
        assert cls(U, return_state=True).compute_mask(None, m) == [None] * (1 + n)
        got = cls(U, return_sequences=True, return_state=True).compute_mask([None, None], [m, None])
        assert got[0] is m and got[1:] == [None] * n
    bi = layers.Bidirectional(layers.LSTM(U, return_sequences=True, return_state=True))
    assert bi.supports_masking and bi.takes_mask()
    got = bi.compute_mask(None, m)
    assert got[0] is m and got[1:] == [None] * 4
    assert layers.Bidirectional(layers.GRU(U)).compute_mask(None, m) is None


def test_zero_output_for_mask_config_and_bidirectional_setting():
    layer = layers.LSTM(U, zero_output_for_mask=True)
    cfg = layer.get_config()
    assert cfg["zero_output_for_mask"] is True
    assert layers.LSTM.from_config(cfg).zero_output_for_mask is True
    assert layers.GRU(U).get_config()["zero_output_for_mask"] is False
    # Keras: Bidirectional sets it to return_sequences on both directions
    for seq, zero in ((True, False), (False, True)):
        bi = layers.Bidirectional(layers.GRU(U, return_sequences=seq, zero_output_for_mask=zero))
        assert bi.forward_layer.zero_output_for_mask is seq and bi.backward_layer.zero_output_for_mask is seq
        again = layers.Bidirectional.from_config(bi.get_config())
        assert again.forward_layer.zero_output_for_mask is seq and again.backward_layer.zero_output_for_mask is seq


@pytest.mark.parametrize("kind", sorted(GATES))
def test_stateful_carries_the_state_after_the_last_real_step(kind):
    layer = _randomized(getattr(layers, kind)(U, stateful=True, dtype="float64", seed=0), (B, T, D))
    rng = np.random.default_rng(0)
    x1, x2 = rng.standard_normal((B, T, D)), rng.standard_normal((B, T, D))
    w = [np.array(a) for a in layer.get_weights()]
    layer.forward(x1, mask=MASK)
    _, s1 = REFS[kind](x1, *w, step_mask=MASK)
    for c, e in zip(layer._carry, s1):
        np.testing.assert_allclose(np.array(c), e, rtol=1e-12, atol=1e-12)
    y2 = np.array(layer.forward(x2, mask=MASK[::-1]))
    ys, _ = REFS[kind](x2, *w, *s1, step_mask=MASK[::-1])
    np.testing.assert_allclose(y2, ys[:, -1], rtol=1e-12, atol=1e-12)
