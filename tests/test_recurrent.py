"""SimpleRNN, LSTM, GRU, Bidirectional: layer cases (reference, finite differences, on every
device), PyTorch parity, initial states, shapes, config, errors."""
import numpy as np
import pytest

import nbmodel as nb
from nbmodel import layers
from nbmodel.kernels.reference import recurrent as ref
from nbmodel.testing import LayerCase

B, T, D, U = 2, 3, 3, 4

REFS = {"SimpleRNN": ref.simple_rnn_forward, "LSTM": ref.lstm_forward, "GRU": ref.gru_forward}
CLASSES = {"SimpleRNN": layers.SimpleRNN, "LSTM": layers.LSTM, "GRU": layers.GRU}
N_STATES = {"SimpleRNN": 1, "LSTM": 2, "GRU": 1}
# float64 agrees with the reference to rounding; float32 (fast tanh/sigmoid) to float32 noise
RTOL = {"float32": 1e-5, "float64": 1e-12}
ATOL = {"float32": 2e-6, "float64": 1e-12}


def _x(seed=0, shape=(B, T, D)):
    return np.random.default_rng(seed).standard_normal(shape)


def _randomize(layer, seed=1):
    """Non-trivial biases too (they start at zeros/ones)."""
    rng = np.random.default_rng(seed)
    for k, p in layer.params.items():
        p[...] = 0.5 * rng.standard_normal(p.shape)


def _randomized(layer, input_shape, seed=1):
    """``layer`` built on ``input_shape`` with every weight drawn again (through set_weights, so on any device)."""
    layer.build(input_shape)
    rng = np.random.default_rng(seed)
    layer.set_weights([0.5 * rng.standard_normal(w.shape) for w in layer.get_weights()])
    return layer


def _initial_states(kind, n_layers=1, batch=B, seed=9):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((batch, U)) for _ in range(n_layers * N_STATES[kind])]


def _ref_run(kind, w, x, prefix="", init=(), **kw):
    return REFS[kind](x, w[prefix + "kernel"], w[prefix + "recurrent_kernel"], w[prefix + "bias"], *init, **kw)


# ------------------------------------------------------------------ layer cases
def rnn_case(kind, label, seq=False, state=False, backwards=False, init=None, shape=(B, T, D), scale=1.0,
             layer_kw=None, ref_kw=None):
    """A SimpleRNN/LSTM/GRU case; the reference returns ``[output, *states]`` when ``state``."""
    layer_kw = layer_kw or {}
    ref_kw = ref_kw or {}

    def make(dt):
        layer = CLASSES[kind](U, return_sequences=seq, return_state=state, go_backwards=backwards, dtype=dt,
                              seed=0, **layer_kw)
        return _randomized(layer, (None,) + shape[1:])

    def reference(w, x):
        ys, states = _ref_run(kind, w, x, init=init or (), go_backwards=backwards, **ref_kw)
        y = ys if seq else ys[:, -1]
        return (y, *states) if state else y

    return LayerCase(f"{kind}-{label}", make, inputs=lambda r: scale * r.standard_normal(shape),
                     reference=reference, forward_kwargs={} if init is None else {"initial_state": init},
                     rtol=RTOL, atol=ATOL)


def bidi_case(mode, seq=False, state=False, init=None, kind="GRU"):
    n = N_STATES[kind]

    def make(dt):
        inner = CLASSES[kind](U, return_sequences=seq, return_state=state, seed=0)
        return _randomized(layers.Bidirectional(inner, merge_mode=mode, dtype=dt, seed=1), (None, T, D), seed=20)

    def reference(w, x):
        yf, sf = _ref_run(kind, w, x, "forward_", init[:n] if init else ())
        yb, sb = _ref_run(kind, w, x, "backward_", init[n:] if init else (), go_backwards=True)
        if seq:
            yb = yb[:, ::-1]  # back to input order
        else:
            yf, yb = yf[:, -1], yb[:, -1]
        y = {"concat": np.concatenate([yf, yb], -1), "sum": yf + yb, "mul": yf * yb, "ave": (yf + yb) / 2}[mode]
        return (y, *sf, *sb) if state else y

    label = f"bidirectional-{kind}-{mode}" + ("-seq" if seq else "") + ("-state" if state else "") \
        + ("-initial" if init else "")
    return LayerCase(label, make, inputs=lambda r: r.standard_normal((B, T, D)), reference=reference,
                     forward_kwargs={} if init is None else {"initial_state": init}, rtol=RTOL, atol=ATOL)


OTHER_ACTIVATIONS = {"SimpleRNN": {"activation": "relu"},
                     "LSTM": {"activation": "elu", "recurrent_activation": "sigmoid"},
                     "GRU": {"activation": "elu", "recurrent_activation": "sigmoid"}}

CASES = []
for _kind in ("SimpleRNN", "LSTM", "GRU"):
    CASES += [
        rnn_case(_kind, "last"),
        rnn_case(_kind, "last-backwards", backwards=True),
        # longer, larger inputs: float32 stays within float32 noise of the reference over 6 steps
        rnn_case(_kind, "seq", seq=True, shape=(4, 6, D), scale=2.0),
        rnn_case(_kind, "seq-backwards", seq=True, backwards=True),
        rnn_case(_kind, "state", state=True),
        rnn_case(_kind, "seq-state", seq=True, state=True),
        rnn_case(_kind, "activation-" + OTHER_ACTIVATIONS[_kind]["activation"], seq=True,
                 layer_kw=OTHER_ACTIVATIONS[_kind], ref_kw={"activation_name": OTHER_ACTIVATIONS[_kind]["activation"]}),
        rnn_case(_kind, "initial-state-backwards", seq=True, backwards=True, init=_initial_states(_kind)),
    ]
CASES += [bidi_case(mode, seq) for mode in ("concat", "sum", "mul", "ave") for seq in (False, True)]
CASES += [bidi_case("concat", seq=True, state=True, init=_initial_states("LSTM", 2, seed=3), kind="LSTM")]


@pytest.mark.parametrize("case", CASES, ids=str)
def test_layer_case(case, device):
    case.check(device)


@pytest.mark.parametrize("name", ["SimpleRNN", "LSTM", "GRU"])
@pytest.mark.parametrize("backwards", [False, True])
def test_reference_final_state_is_last_output(name, backwards):
    layer = _randomized(CLASSES[name](U, dtype="float64", seed=0), (None, T, D))
    ys, states = _ref_run(name, layer.params, _x(), go_backwards=backwards)
    np.testing.assert_allclose(states[0], ys[:, -1], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", ["SimpleRNN", "LSTM", "GRU"])
def test_return_state_outputs(name):
    """The output structure (the layer cases compare the values)."""
    x = _x()
    layer = CLASSES[name](U, return_state=True, dtype="float64", seed=0)
    out = layer.forward(x)
    assert isinstance(out, list) and len(out) == 1 + N_STATES[name]
    shapes = layer.compute_output_shape((None, T, D))
    assert shapes == [(None, U)] * (1 + N_STATES[name])


def test_output_shape_and_symbolic_call():
    inp = layers.Input((T, D))
    out = layers.LSTM(U, return_sequences=True, return_state=True)(inp)
    assert [t.shape for t in out] == [(None, T, U), (None, U), (None, U)]
    out = layers.GRU(U)(inp)
    assert out.shape == (None, U)


def test_backward_none_gradients_mean_unused_outputs():
    x = _x()
    layer = layers.LSTM(U, return_state=True, dtype="float64", seed=0)
    out = layer.forward(x, training=True)
    dy = np.random.default_rng(0).standard_normal(out[0].shape)
    dx1 = np.array(layer.backward([dy, None, None]))
    g1 = {k: v.copy() for k, v in layer.grads.items()}
    dx2 = np.array(layer.backward([dy, np.zeros_like(dy), np.zeros_like(dy)]))
    np.testing.assert_allclose(dx1, dx2)
    for k in g1:
        np.testing.assert_allclose(g1[k], layer.grads[k])


# ------------------------------------------------------------ initial state
@pytest.mark.parametrize("name", ["SimpleRNN", "LSTM", "GRU"])
def test_initial_state_gradients(name):
    """The state gradients backward returns, against finite differences (the layer cases
    check the output and the input and param gradients with an initial state)."""
    x = _x(8)
    rng = np.random.default_rng(9)
    init = [rng.standard_normal((B, U)) for _ in range(N_STATES[name])]
    layer = CLASSES[name](U, return_sequences=True, go_backwards=True, dtype="float64", seed=0)
    layer.build(x.shape)
    _randomize(layer)
    y = layer.forward(x, training=True, initial_state=init)
    dy = rng.standard_normal(y.shape)
    dx, dstates = layer.backward(dy)
    assert dx.shape == x.shape
    assert len(dstates) == N_STATES[name]

    def objective():
        return float(np.sum(layer.forward(x, initial_state=init) * dy))

    eps = 1e-6
    for s, ds in zip(init, dstates):
        num = np.zeros_like(s)
        for idx in np.ndindex(s.shape):
            old = s[idx]
            s[idx] = old + eps
            fp = objective()
            s[idx] = old - eps
            fm = objective()
            s[idx] = old
            num[idx] = (fp - fm) / (2 * eps)
        np.testing.assert_allclose(ds, num, rtol=1e-6, atol=1e-8)


def test_initial_state_bad_shape():
    layer = layers.LSTM(U, name="enc")
    with pytest.raises(ValueError, match="^enc: .*2 initial state"):
        layer.forward(_x(), initial_state=[np.zeros((B, U))])
    with pytest.raises(ValueError, match="^enc: initial_state\\[1\\]"):
        layer.forward(_x(), initial_state=[np.zeros((B, U)), np.zeros((B, U + 1))])


# ------------------------------------------------------------ Bidirectional
@pytest.mark.parametrize("mode", ["concat", "sum", "mul", "ave"])
@pytest.mark.parametrize("seq", [False, True])
def test_bidirectional_output_shape(mode, seq):
    """compute_output_shape is the shape forward gives (the layer cases compare the values)."""
    x = _x(10)
    bi = layers.Bidirectional(layers.GRU(U, return_sequences=seq, seed=0), merge_mode=mode, seed=1)
    y = bi.forward(x)
    assert y.shape == bi.compute_output_shape((B, T, D))


def test_bidirectional_params_and_weights():
    bi = layers.Bidirectional(layers.LSTM(U, seed=0))
    bi.build((None, T, D))
    names = list(bi.params)
    assert names == ["forward_kernel", "forward_recurrent_kernel", "forward_bias",
                     "backward_kernel", "backward_recurrent_kernel", "backward_bias"]
    assert list(bi.grads) == names
    assert bi.params["forward_kernel"] is bi.forward_layer.params["kernel"]
    assert bi.backward_layer.go_backwards and not bi.forward_layer.go_backwards
    assert not np.allclose(bi.params["forward_kernel"], bi.params["backward_kernel"])
    w = bi.get_weights()
    assert [a.shape for a in w] == [(D, 4 * U), (U, 4 * U), (4 * U,)] * 2
    # a model rebinds params to views of its flat buffer: the sub-layer must see them
    p = np.zeros_like(bi.params["backward_bias"])
    g = np.zeros_like(p)
    bi.bind_param("backward_bias", p, g)
    assert bi.backward_layer.params["bias"] is p and bi.backward_layer.grads["bias"] is g
    assert bi.count_params() == 2 * (D * 4 * U + U * 4 * U + 4 * U)
    clone = layers.Bidirectional.from_config(bi.get_config())
    clone.build((None, T, D))
    assert list(clone.params) == names


def test_bidirectional_return_state_and_initial_state():
    """Outputs, state gradients and shapes (the layer case compares the values)."""
    x = _x(11)
    init = _initial_states("LSTM", 2, seed=3)
    bi = layers.Bidirectional(layers.LSTM(U, return_sequences=True, return_state=True, seed=0), seed=2)
    bi.build(x.shape)
    bi.cast("float64")
    out = bi.forward(x, training=True, initial_state=init)
    assert len(out) == 5
    dx, dstates = bi.backward([np.ones_like(out[0])] + [None] * 4)
    assert dx.shape == x.shape and len(dstates) == 4
    assert bi.compute_output_shape((None, T, D)) == [(None, T, 2 * U)] + [(None, U)] * 4


# ------------------------------------------------------------- init, config
def test_keras_initializers():
    layer = layers.LSTM(8, seed=0)
    layer.build((None, 5, 3))
    b = layer.params["bias"]
    np.testing.assert_array_equal(b[8:16], 1)
    np.testing.assert_array_equal(np.delete(b, np.s_[8:16]), 0)
    rk = layer.params["recurrent_kernel"].astype(np.float64)
    np.testing.assert_allclose(rk @ rk.T, np.eye(8), atol=1e-5)  # orthogonal rows
    lim = np.sqrt(6 / (3 + 32))
    assert np.abs(layer.params["kernel"]).max() <= lim
    g = layers.GRU(8, seed=0)
    g.build((None, 5, 3))
    assert g.params["bias"].shape == (2, 24) and not g.params["bias"].any()
    l2 = layers.LSTM(8, unit_forget_bias=False, seed=0)
    l2.build((None, 5, 3))
    assert not l2.params["bias"].any()


@pytest.mark.parametrize("name", ["SimpleRNN", "LSTM", "GRU"])
def test_config_roundtrip(name):
    layer = CLASSES[name](5, return_sequences=True, go_backwards=True, name="r")
    clone = CLASSES[name].from_config(layer.get_config())
    for k in ("units", "return_sequences", "go_backwards", "return_state", "activation"):
        assert getattr(clone, k) == getattr(layer, k)


def test_seeded_layers_are_reproducible():
    a, b = layers.GRU(4, seed=3), layers.GRU(4, seed=3)
    a.build((None, 2, 3))
    b.build((None, 2, 3))
    for k in a.params:
        np.testing.assert_array_equal(a.params[k], b.params[k])


# ------------------------------------------------------------------- errors
@pytest.mark.parametrize("name", ["SimpleRNN", "LSTM", "GRU"])
def test_bad_input(name):
    layer = CLASSES[name](U, name="seq_layer")
    layer.build((None, T, D))
    with pytest.raises(ValueError, match="^seq_layer: .*rank 3"):
        layer.forward(np.zeros((B, D)))
    with pytest.raises(ValueError, match="^seq_layer: .*last dimension 3"):
        layer.forward(np.zeros((B, T, D + 1)))
    bad = np.zeros((B, T, D))
    bad[0, 1, 2] = np.nan
    with pytest.raises(ValueError, match="^seq_layer: .*NaN"):
        layer.forward(bad)
    with pytest.raises(TypeError, match="^seq_layer: "):
        layer.forward(np.array([[["a"] * D] * T] * B))
    with pytest.raises(ValueError, match="^seq_layer: .*rank 3"):
        CLASSES[name](U, name="seq_layer").build((None, D))


def test_bad_arguments():
    with pytest.raises(ValueError, match="^lstm_x: .*gelu"):
        layers.LSTM(4, activation="gelu", name="lstm_x")
    with pytest.raises(ValueError, match="units"):
        layers.SimpleRNN(0)
    with pytest.raises(ValueError, match="merge_mode"):
        layers.Bidirectional(layers.LSTM(4), merge_mode="max")
    with pytest.raises(ValueError, match="^bi: .*expected a SimpleRNN"):
        layers.Bidirectional(layers.Dense(4), name="bi")


def test_input_grad_not_needed_returns_none():
    layer = layers.GRU(U, seed=0)
    layer.input_grad_needed = False
    y = layer.forward(_x().astype(np.float32), training=True)
    assert layer.backward(np.ones_like(y)) is None
    assert np.abs(layer.grads["kernel"]).sum() > 0


# -------------------------------------------------------------- PyTorch parity
def _torch_lstm(layer, torch):
    u = layer.units
    m = torch.nn.LSTM(layer.params["kernel"].shape[0], u, batch_first=True).double()
    p = layer.params
    with torch.no_grad():
        m.weight_ih_l0.copy_(torch.from_numpy(p["kernel"].T.copy()))
        m.weight_hh_l0.copy_(torch.from_numpy(p["recurrent_kernel"].T.copy()))
        m.bias_ih_l0.copy_(torch.from_numpy(p["bias"].copy()))
        m.bias_hh_l0.zero_()
    return m


def _gru_perm(u):
    """Keras z, r, h -> torch r, z, n."""
    return np.concatenate([np.arange(u, 2 * u), np.arange(u), np.arange(2 * u, 3 * u)])


def _torch_gru(layer, torch):
    u = layer.units
    perm = _gru_perm(u)
    m = torch.nn.GRU(layer.params["kernel"].shape[0], u, batch_first=True).double()
    p = layer.params
    with torch.no_grad():
        m.weight_ih_l0.copy_(torch.from_numpy(p["kernel"][:, perm].T.copy()))
        m.weight_hh_l0.copy_(torch.from_numpy(p["recurrent_kernel"][:, perm].T.copy()))
        m.bias_ih_l0.copy_(torch.from_numpy(p["bias"][0, perm].copy()))
        m.bias_hh_l0.copy_(torch.from_numpy(p["bias"][1, perm].copy()))
    return m


@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
@pytest.mark.parametrize("seq", [False, True])
def test_matches_torch(kind, seq):
    torch = pytest.importorskip("torch")
    x = _x(12, (3, 5, D))
    layer = CLASSES[kind](U, return_sequences=seq, return_state=True, dtype="float64", seed=0)
    layer.build(x.shape)
    _randomize(layer, 4)
    rng = np.random.default_rng(5)
    init = [rng.standard_normal((3, U)) for _ in range(N_STATES[kind])]
    out = layer.forward(x, training=True, initial_state=init)
    dy = rng.standard_normal(out[0].shape)
    dstate = rng.standard_normal((3, U))
    dx, dinit = layer.backward([dy, dstate] + [None] * (N_STATES[kind] - 1))

    m = _torch_lstm(layer, torch) if kind == "LSTM" else _torch_gru(layer, torch)
    xt = torch.from_numpy(x).requires_grad_(True)
    it = [torch.from_numpy(s[None]).requires_grad_(True) for s in init]
    yt, st = m(xt, tuple(it) if kind == "LSTM" else it[0])
    st = list(st) if kind == "LSTM" else [st]
    yt_out = yt if seq else yt[:, -1]
    np.testing.assert_allclose(out[0], yt_out.detach().numpy(), atol=1e-10)
    for got, want in zip(out[1:], st):
        np.testing.assert_allclose(got, want[0].detach().numpy(), atol=1e-10)
    loss = (yt_out * torch.from_numpy(dy)).sum() + (st[0][0] * torch.from_numpy(dstate)).sum()
    loss.backward()
    np.testing.assert_allclose(dx, xt.grad.numpy(), atol=1e-10)
    for got, want in zip(dinit, it):
        np.testing.assert_allclose(got, want.grad[0].numpy(), atol=1e-10)
    g = layer.grads
    if kind == "LSTM":
        np.testing.assert_allclose(g["kernel"], m.weight_ih_l0.grad.numpy().T, atol=1e-10)
        np.testing.assert_allclose(g["recurrent_kernel"], m.weight_hh_l0.grad.numpy().T, atol=1e-10)
        np.testing.assert_allclose(g["bias"], m.bias_ih_l0.grad.numpy(), atol=1e-10)
    else:
        inv = np.argsort(_gru_perm(U))
        np.testing.assert_allclose(g["kernel"], m.weight_ih_l0.grad.numpy().T[:, inv], atol=1e-10)
        np.testing.assert_allclose(g["recurrent_kernel"], m.weight_hh_l0.grad.numpy().T[:, inv], atol=1e-10)
        np.testing.assert_allclose(g["bias"][0], m.bias_ih_l0.grad.numpy()[inv], atol=1e-10)
        np.testing.assert_allclose(g["bias"][1], m.bias_hh_l0.grad.numpy()[inv], atol=1e-10)


def test_float32_lstm_matches_torch_at_reference_width():
    """The fast float32 tanh/sigmoid keep a float32 LSTM within float32 noise of PyTorch."""
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(13).standard_normal((4, 16, 8)).astype(np.float32)
    layer = layers.LSTM(32, return_sequences=True, seed=0)
    layer.build(x.shape)
    y = layer.forward(x)
    m = _torch_lstm(layer, torch).float()
    yt, _ = m(torch.from_numpy(x))
    np.testing.assert_allclose(y, yt.detach().numpy(), atol=2e-6)


def test_functional_initial_state_from_encoder_states():
    """Encoder states feed a decoder's initial_state through the functional API."""
    enc_in, dec_in = layers.Input((T, D)), layers.Input((T + 1, D))
    enc = layers.LSTM(U, return_state=True, seed=0)
    dec = layers.LSTM(U, return_sequences=True, seed=1)
    _, h, c = enc(enc_in)
    y = layers.Dense(2, seed=2)(dec(dec_in, initial_state=[h, c]))
    model = nb.Model(inputs=[enc_in, dec_in], outputs=y)
    model.compile(optimizer="sgd", loss="mse")
    xe = _x(20).astype(np.float32)
    xd = _x(21, (B, T + 1, D)).astype(np.float32)
    got = model.predict([xe, xd])
    _, he, ce = enc.forward(xe)
    want = dec.forward(xd, initial_state=[he.copy(), ce.copy()])
    assert got.shape == (B, T + 1, 2)
    dense = model.layers[-1]
    np.testing.assert_allclose(got, want @ dense.params["kernel"] + dense.params["bias"], rtol=1e-5, atol=1e-6)
    loss = model.train_on_batch([xe, xd], np.zeros((B, T + 1, 2), np.float32))
    assert np.isfinite(loss)


@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
def test_masked_matches_torch_packed_sequences(kind):
    """A right-padded batch with a Keras mask against PyTorch's packed sequences: the final
    states are the states after each row's last real step, and the gradients of the input and
    the weights agree (padded steps get none)."""
    torch = pytest.importorskip("torch")
    lengths = np.array([5, 2, 4])
    x = _x(13, (3, 5, D))
    mask = np.arange(5)[None, :] < lengths[:, None]
    layer = CLASSES[kind](U, return_state=True, dtype="float64", seed=0)
    layer.build(x.shape)
    _randomize(layer, 6)
    out = layer.forward(x, training=True, mask=mask)
    dstate = np.random.default_rng(7).standard_normal((3, U))
    dx = layer.backward([None, dstate] + [None] * (N_STATES[kind] - 1))

    m = _torch_lstm(layer, torch) if kind == "LSTM" else _torch_gru(layer, torch)
    xt = torch.from_numpy(x).requires_grad_(True)
    packed = torch.nn.utils.rnn.pack_padded_sequence(xt, torch.from_numpy(lengths), batch_first=True,
                                                     enforce_sorted=False)
    _, st = m(packed)
    h = st[0] if kind == "LSTM" else st
    np.testing.assert_allclose(out[1], h[0].detach().numpy(), atol=1e-10)
    (h[0] * torch.from_numpy(dstate)).sum().backward()
    np.testing.assert_allclose(dx, xt.grad.numpy(), atol=1e-10)
    np.testing.assert_allclose(dx[~mask], 0.0)
    kernel_grad = m.weight_ih_l0.grad.numpy().T
    if kind == "GRU":
        kernel_grad = kernel_grad[:, np.argsort(_gru_perm(U))]
    np.testing.assert_allclose(layer.grads["kernel"], kernel_grad, atol=1e-10)
