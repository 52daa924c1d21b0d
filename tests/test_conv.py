"""Conv1D and Conv2D as layer cases (reference for every padding, stride, dilation and fused
activation; finite differences; on every device); backward against the reference, PyTorch
parity (TF-style "same" padding mapped by hand), errors."""
import numpy as np
import pytest

from nbmodel import layers as L
from nbmodel.kernels.reference import conv as ref
from nbmodel.testing import LayerCase

# (input spatial, kernel, strides, padding, dilation, in channels, filters)
CASES_2D = [
    ((5, 6), (3, 3), (1, 1), "valid", (1, 1), 1, 2),
    ((5, 6), (3, 3), (1, 1), "same", (1, 1), 2, 3),
    ((7, 5), (3, 2), (2, 2), "same", (1, 1), 3, 2),   # odd sizes: the extra pad goes at the end
    ((6, 7), (2, 3), (2, 1), "valid", (1, 1), 2, 4),
    ((7, 7), (3, 3), (1, 1), "same", (2, 2), 2, 2),
    ((8, 6), (3, 2), (1, 1), "valid", (2, 1), 1, 3),
    ((6, 5), (3, 3), (2, 2), "same", (2, 1), 2, 2),   # stride and dilation together
    ((4, 4), (1, 1), (1, 1), "valid", (1, 1), 3, 2),
]
CASES_1D = [
    (7, 3, 1, "valid", 1, 1, 2),
    (7, 3, 1, "same", 1, 2, 3),
    (8, 4, 2, "same", 1, 2, 2),
    (9, 3, 2, "valid", 1, 3, 2),
    (7, 3, 1, "causal", 1, 2, 2),
    (9, 3, 1, "causal", 2, 2, 3),
    (8, 2, 2, "causal", 1, 1, 2),
    (9, 3, 1, "same", 2, 1, 2),
]


def rng(seed=0):
    return np.random.default_rng(seed)


def _case_2d(case):
    spatial, k, s, pad, d, c, f = case
    return spatial, k, s, pad, d, c, f


def _pads_2d(spatial, k, s, pad, d):
    t, b, oh = ref.padding_amounts(spatial[0], k[0], s[0], d[0], pad)
    lft, r, ow = ref.padding_amounts(spatial[1], k[1], s[1], d[1], pad)
    return (t, b, lft, r), (oh, ow)


def _pads_1d(n, k, s, pad, d):
    lft, r, out = ref.padding_amounts(n, k, s, d, pad)
    return (0, 0, lft, r), out


def _make_2d(case, dtype, activation=None, use_bias=True, batch=2, seed=0):
    spatial, k, s, pad, d, c, f = case
    layer = L.Conv2D(f, k, strides=s, padding=pad, dilation_rate=d, activation=activation,
                     use_bias=use_bias, dtype=dtype, seed=seed)
    x = rng(seed).standard_normal((batch,) + spatial + (c,)).astype(dtype)
    layer.build(x.shape)
    if use_bias:
        layer.params["bias"][:] = rng(seed + 1).standard_normal(f)
    return layer, x


def _make_1d(case, dtype, activation=None, use_bias=True, batch=2, seed=0):
    n, k, s, pad, d, c, f = case
    layer = L.Conv1D(f, k, strides=s, padding=pad, dilation_rate=d, activation=activation,
                     use_bias=use_bias, dtype=dtype, seed=seed)
    x = rng(seed).standard_normal((batch, n, c)).astype(dtype)
    layer.build(x.shape)
    if use_bias:
        layer.params["bias"][:] = rng(seed + 1).standard_normal(f)
    return layer, x


# ------------------------------------------------------------------ layer cases
RTOL = {"float32": 1e-5, "float64": 1e-12}
ATOL = {"float32": 1e-5, "float64": 1e-12}


def _built(layer, input_shape, use_bias):
    """``layer`` built, with a random bias (set through set_weights, so on any device)."""
    layer.build(input_shape)
    if use_bias:
        kernel, bias = layer.get_weights()
        layer.set_weights([kernel, rng(1).standard_normal(bias.shape)])
    return layer


def conv2d_case(label, case, activation=None, use_bias=True):
    spatial, k, s, pad, d, c, f = case
    pads, _ = _pads_2d(spatial, k, s, pad, d)

    def make(dt):
        return _built(L.Conv2D(f, k, strides=s, padding=pad, dilation_rate=d, activation=activation,
                               use_bias=use_bias, dtype=dt, seed=0), (None,) + spatial + (c,), use_bias)

    return LayerCase(f"conv2d-{label}", make, inputs=lambda r: r.standard_normal((2,) + spatial + (c,)),
                     reference=lambda w, x: ref.conv_forward(x, w["kernel"], w.get("bias"), s, pads, d, activation),
                     rtol=RTOL, atol=ATOL)


def conv1d_case(label, case, activation=None):
    n, k, s, pad, d, c, f = case
    pads, _ = _pads_1d(n, k, s, pad, d)

    def make(dt):
        return _built(L.Conv1D(f, k, strides=s, padding=pad, dilation_rate=d, activation=activation,
                               dtype=dt, seed=0), (None, n, c), True)

    def reference(w, x):
        return ref.conv_forward(x[:, None], w["kernel"][None], w["bias"], (1, s), pads, (1, d), activation)[:, 0]

    return LayerCase(f"conv1d-{label}", make, inputs=lambda r: r.standard_normal((2, n, c)), reference=reference,
                     rtol=RTOL, atol=ATOL)


CASES = [conv2d_case(f"{i}-{act}", case, act) for i, case in enumerate(CASES_2D) for act in ("relu", "tanh")]
CASES += [conv1d_case(f"{i}-{act}", case, act) for i, case in enumerate(CASES_1D) for act in ("linear", "sigmoid")]
CASES += [conv2d_case(f"fused-{act}", CASES_2D[2], act)
          for act in ("linear", "relu", "gelu", "silu", "elu", "leaky_relu", "softmax")]
CASES += [conv2d_case("no-bias", CASES_2D[1], use_bias=False)]


@pytest.mark.parametrize("case", CASES, ids=str)
def test_layer_case(case, device):
    case.check(device)


# ------------------------------------------------------------------ backward, shapes
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("case", CASES_2D)
def test_conv2d_backward_matches_reference(case, dtype):
    """Output shapes and backward against the reference (the layer cases compare the output)."""
    spatial, k, s, pad, d, c, f = case
    layer, x = _make_2d(case, dtype, activation="relu")
    y = layer.forward(x, training=True)
    pads, (oh, ow) = _pads_2d(spatial, k, s, pad, d)
    assert y.shape == (2, oh, ow, f) and y.dtype == np.dtype(dtype)
    assert layer.compute_output_shape((None,) + spatial + (c,)) == (None, oh, ow, f)
    kernel, bias = layer.params["kernel"], layer.params["bias"]
    expected = ref.conv_forward(x, kernel, bias, s, pads, d, "relu")
    dy = rng(5).standard_normal(y.shape).astype(dtype)
    dx = layer.backward(dy)
    assert dx.dtype == np.dtype(dtype) and dx.shape == x.shape
    dz = dy * (expected > 0)
    rdx, rdk, rdb = ref.conv_backward(x, kernel, dz, s, pads, d)
    tol = 1e-4 if dtype == "float32" else 1e-11
    np.testing.assert_allclose(dx, rdx, rtol=tol, atol=tol)
    np.testing.assert_allclose(layer.grads["kernel"], rdk, rtol=tol, atol=tol)
    np.testing.assert_allclose(layer.grads["bias"], rdb, rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("case", CASES_1D)
def test_conv1d_backward_matches_reference(case, dtype):
    """Output shapes and backward against the reference (the layer cases compare the output)."""
    n, k, s, pad, d, c, f = case
    layer, x = _make_1d(case, dtype)
    y = layer.forward(x, training=True)
    pads, out = _pads_1d(n, k, s, pad, d)
    assert y.shape == (2, out, f) and y.dtype == np.dtype(dtype)
    assert layer.compute_output_shape((None, n, c)) == (None, out, f)
    kernel = layer.params["kernel"]
    assert kernel.shape == (k, c, f)
    dy = rng(5).standard_normal(y.shape).astype(dtype)
    dx = layer.backward(dy)
    rdx, rdk, rdb = ref.conv_backward(x[:, None], kernel[None], dy[:, None], (1, s), pads, (1, d))
    tol = 1e-4 if dtype == "float32" else 1e-11
    np.testing.assert_allclose(dx, rdx[:, 0], rtol=tol, atol=tol)
    np.testing.assert_allclose(layer.grads["kernel"], rdk[0], rtol=tol, atol=tol)
    np.testing.assert_allclose(layer.grads["bias"], rdb, rtol=tol, atol=tol)


def test_causal_output_sees_only_the_past():
    layer = L.Conv1D(2, 3, padding="causal", dilation_rate=2, dtype="float64", seed=0)
    x = rng().standard_normal((1, 10, 2))
    y0 = np.array(layer.forward(x))
    x2 = x.copy()
    x2[:, 6:] += 1.0
    y1 = np.array(layer.forward(x2))
    np.testing.assert_array_equal(y0[:, :6], y1[:, :6])
    assert not np.allclose(y0[:, 6:], y1[:, 6:])


def test_no_bias_params():
    layer, _ = _make_2d(CASES_2D[1], "float64", use_bias=False)
    assert list(layer.params) == ["kernel"]


@pytest.mark.parametrize("threads", [1, 2])
def test_batch_of_one_and_many_chunks(threads):
    # a batch big enough for several im2col chunks (one thread), and a batch of one
    import nbmodel as nb

    before = nb.get_num_threads()
    nb.set_num_threads(threads)
    try:
        _check_chunks()
    finally:
        nb.set_num_threads(before)


def _check_chunks():
    layer = L.Conv2D(3, 3, padding="same", dtype="float64", seed=0)
    x = rng().standard_normal((40, 12, 12, 4))
    layer.build(x.shape)
    pads, _ = _pads_2d((12, 12), (3, 3), (1, 1), "same", (1, 1))
    for xb in (x, x[:1]):
        y = layer.forward(xb, training=True)
        np.testing.assert_allclose(y, ref.conv_forward(xb, layer.params["kernel"], layer.params["bias"], (1, 1), pads),
                                   rtol=1e-12, atol=1e-12)
        dy = rng(1).standard_normal(y.shape)
        dx = layer.backward(dy)
        rdx, rdk, _ = ref.conv_backward(xb, layer.params["kernel"], dy, (1, 1), pads)
        np.testing.assert_allclose(dx, rdx, rtol=1e-11, atol=1e-11)
        np.testing.assert_allclose(layer.grads["kernel"], rdk, rtol=1e-11, atol=1e-11)
    # inference keeps only one chunk of patches and gives the same output
    np.testing.assert_allclose(np.array(layer.forward(x)), np.array(layer.forward(x, training=True)),
                               rtol=1e-12)


def test_input_gradient_skipped_when_not_needed():
    layer, x = _make_2d(CASES_2D[1], "float32")
    y = layer.forward(x, training=True)
    layer.input_grad_needed = False
    dy = np.ones(y.shape, np.float32)
    assert layer.backward(dy) is None
    pads, _ = _pads_2d((5, 6), (3, 3), (1, 1), "same", (1, 1))
    _, rdk, _ = ref.conv_backward(x, layer.params["kernel"], dy, (1, 1), pads)
    np.testing.assert_allclose(layer.grads["kernel"], rdk, rtol=1e-5, atol=1e-5)


def test_workspaces_reused_between_steps():
    layer, x = _make_2d(CASES_2D[2], "float32", activation="relu")
    y1 = layer.forward(x, training=True)
    dx1 = layer.backward(np.ones(y1.shape, np.float32))
    ws = {k: id(v) for k, v in layer._workspaces.items()}
    y2 = layer.forward(x, training=True)
    dx2 = layer.backward(np.ones(y2.shape, np.float32))
    assert np.shares_memory(y1, y2) and np.shares_memory(dx1, dx2)
    assert {k: id(v) for k, v in layer._workspaces.items()} == ws


def test_grads_written_in_place():
    layer, x = _make_2d(CASES_2D[1], "float64")
    gk, gb = layer.grads["kernel"], layer.grads["bias"]
    y = layer.forward(x, training=True)
    layer.backward(np.ones_like(y))
    assert layer.grads["kernel"] is gk and layer.grads["bias"] is gb
    assert np.abs(gk).sum() > 0 and np.abs(gb).sum() > 0


def test_keras_weight_shapes_and_config_roundtrip():
    layer = L.Conv2D(4, (3, 2), strides=(2, 1), padding="same", dilation_rate=(1, 2), activation="relu",
                     name="c2")
    layer.build((None, 8, 8, 3))
    assert layer.params["kernel"].shape == (3, 2, 3, 4) and layer.params["bias"].shape == (4,)
    again = L.Conv2D.from_config(layer.get_config())
    assert again.get_config() == layer.get_config()
    c1 = L.Conv1D(5, 3, padding="causal", name="c1")
    c1.build((None, 10, 2))
    assert c1.params["kernel"].shape == (3, 2, 5)
    assert L.Conv1D.from_config(c1.get_config()).get_config() == c1.get_config()
    # glorot uniform over the receptive field, like Keras
    lim = np.sqrt(6.0 / (3 * 2 * 3 + 3 * 2 * 4))
    assert np.abs(layer.params["kernel"]).max() <= lim


def test_bad_input_names_the_layer():
    layer = L.Conv2D(2, 3, name="conv_a")
    layer.build((None, 6, 6, 3))
    with pytest.raises(ValueError, match="conv_a.*rank 4"):
        layer.forward(np.zeros((2, 6, 3), np.float32))
    with pytest.raises(ValueError, match="conv_a.*last dimension 3"):
        layer.forward(np.zeros((2, 6, 6, 2), np.float32))
    with pytest.raises(ValueError, match="conv_a.*larger than the padded input"):
        layer.forward(np.zeros((2, 2, 6, 3), np.float32))
    with pytest.raises(ValueError, match="conv_a.*NaN"):
        layer.forward(np.full((1, 6, 6, 3), np.nan, np.float32))
    with pytest.raises(TypeError, match="conv_a.*numeric"):
        layer.forward(np.full((1, 6, 6, 3), "a"))
    with pytest.raises(ValueError, match="conv_b.*larger than the padded input"):
        L.Conv1D(2, 5, dilation_rate=2, name="conv_b").build((None, 8, 1))
    with pytest.raises(ValueError, match="conv_c.*rank 3"):
        L.Conv1D(2, 3, name="conv_c").build((None, 8, 8, 1))
    with pytest.raises(ValueError, match="conv_d.*padding"):
        L.Conv2D(2, 3, padding="causal", name="conv_d")
    with pytest.raises(ValueError, match="conv_e.*kernel_size"):
        L.Conv2D(2, (3, 3, 3), name="conv_e")
    with pytest.raises(ValueError, match="conv_f.*strides"):
        L.Conv1D(2, 3, strides=0, name="conv_f")
    with pytest.raises(ValueError, match="conv_g.*filters"):
        L.Conv2D(0, 3, name="conv_g")


def _torch_same_pads(n, k, s, d, padding):
    before, after, _ = ref.padding_amounts(n, k, s, d, padding)
    return before, after


@pytest.mark.parametrize("case", [CASES_2D[1], CASES_2D[2], CASES_2D[6], CASES_2D[3]])
def test_conv2d_matches_torch(case):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    spatial, k, s, pad, d, c, f = case
    layer, x = _make_2d(case, "float64", activation="relu", batch=3)
    y = layer.forward(x, training=True)
    dy = rng(7).standard_normal(y.shape)
    dx = layer.backward(dy)

    t, b = _torch_same_pads(spatial[0], k[0], s[0], d[0], pad)
    lft, r = _torch_same_pads(spatial[1], k[1], s[1], d[1], pad)
    xt = torch.tensor(x.transpose(0, 3, 1, 2), requires_grad=True)
    wt = torch.tensor(layer.params["kernel"].transpose(3, 2, 0, 1).copy(), requires_grad=True)
    bt = torch.tensor(layer.params["bias"].copy(), requires_grad=True)
    yt = torch.relu(F.conv2d(F.pad(xt, (lft, r, t, b)), wt, bt, stride=s, dilation=d))
    yt.backward(torch.tensor(dy.transpose(0, 3, 1, 2)))
    np.testing.assert_allclose(y, yt.detach().numpy().transpose(0, 2, 3, 1), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(dx, xt.grad.numpy().transpose(0, 2, 3, 1), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(layer.grads["kernel"], wt.grad.numpy().transpose(2, 3, 1, 0), rtol=1e-10,
                               atol=1e-10)
    np.testing.assert_allclose(layer.grads["bias"], bt.grad.numpy(), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("case", [CASES_1D[2], CASES_1D[5], CASES_1D[6]])
def test_conv1d_matches_torch(case):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    n, k, s, pad, d, c, f = case
    layer, x = _make_1d(case, "float64", batch=3)
    y = layer.forward(x, training=True)
    dy = rng(7).standard_normal(y.shape)
    dx = layer.backward(dy)
    lft, r = _torch_same_pads(n, k, s, d, pad)
    xt = torch.tensor(x.transpose(0, 2, 1), requires_grad=True)
    wt = torch.tensor(layer.params["kernel"].transpose(2, 1, 0).copy(), requires_grad=True)
    bt = torch.tensor(layer.params["bias"].copy(), requires_grad=True)
    yt = F.conv1d(F.pad(xt, (lft, r)), wt, bt, stride=s, dilation=d)
    yt.backward(torch.tensor(dy.transpose(0, 2, 1)))
    np.testing.assert_allclose(y, yt.detach().numpy().transpose(0, 2, 1), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(dx, xt.grad.numpy().transpose(0, 2, 1), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(layer.grads["kernel"], wt.grad.numpy().transpose(2, 1, 0), rtol=1e-10,
                               atol=1e-10)


@pytest.mark.parametrize("threads", [1, 2])
def test_same_gradients_at_one_and_two_threads(threads):
    # one thread takes the weight gradient through NumPy's BLAS, more threads through numba's
    import nbmodel as nb

    before = nb.get_num_threads()
    nb.set_num_threads(threads)
    try:
        layer, x = _make_2d(CASES_2D[2], "float64", activation="relu")
        y = layer.forward(x, training=True)
        dy = rng(5).standard_normal(y.shape)
        dx = layer.backward(dy)
        spatial, k, s, pad, d, c, f = CASES_2D[2]
        pads, _ = _pads_2d(spatial, k, s, pad, d)
        rdx, rdk, rdb = ref.conv_backward(x, layer.params["kernel"], dy * (y > 0), s, pads, d)
        np.testing.assert_allclose(dx, rdx, rtol=1e-11, atol=1e-11)
        np.testing.assert_allclose(layer.grads["kernel"], rdk, rtol=1e-11, atol=1e-11)
        np.testing.assert_allclose(layer.grads["bias"], rdb, rtol=1e-11, atol=1e-11)
    finally:
        nb.set_num_threads(before)
