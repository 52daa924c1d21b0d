"""DepthwiseConv1D/2D and SeparableConv1D/2D as layer cases (forward against the float64
reference for paddings, strides, dilations, depth multipliers 1 and 2 and fused activations;
finite differences; on every device), backward against the reference (one and two threads,
the contiguous-run and per-pixel loops of the CPU kernels), PyTorch parity (grouped conv2d /
conv1d, then a 1x1 convolution), the Keras 3 oracle (same weights in, same outputs), Keras
weight shapes, config round trip, save/load, regularizer options, errors and float32 purity
of the kernel bodies."""
import os

import numpy as np
import pytest

import nbmodel as nb
from nbmodel import layers as L
from nbmodel.kernels.reference import conv as ref
from nbmodel.testing import LayerCase

# (input spatial, kernel, strides, padding, dilation, in channels, depth multiplier)
CASES_2D = [
    ((5, 6), (3, 3), (1, 1), "same", (1, 1), 3, 1),     # the contiguous-run loops (M = 1, stride 1)
    ((5, 6), (3, 3), (1, 1), "valid", (1, 1), 2, 2),    # M = 2: per-pixel loops
    ((7, 5), (3, 2), (2, 2), "same", (1, 1), 2, 1),     # strides, odd sizes: the extra pad at the end
    ((6, 7), (2, 3), (2, 1), "valid", (1, 1), 2, 2),
    ((7, 7), (3, 3), (1, 1), "same", (2, 2), 2, 1),     # dilation, runs
    ((8, 6), (3, 2), (1, 1), "valid", (2, 1), 1, 3),
    ((6, 5), (3, 3), (2, 2), "same", (2, 2), 2, 1),     # stride and dilation together (Keras 3 allows it)
    ((4, 2), (3, 3), (1, 1), "same", (1, 1), 2, 1),     # narrower than the kernel: no output sees all taps
    ((4, 4), (1, 1), (1, 1), "valid", (1, 1), 3, 2),
]
# (steps, kernel, stride, padding, dilation, in channels, depth multiplier)
CASES_1D = [
    (7, 3, 1, "valid", 1, 2, 1),
    (7, 3, 1, "same", 1, 2, 2),
    (8, 4, 2, "same", 1, 2, 1),
    (7, 3, 1, "causal", 1, 2, 1),
    (9, 3, 1, "causal", 2, 1, 2),
    (9, 3, 1, "same", 2, 3, 1),
]

RTOL = {"float32": 1e-5, "float64": 1e-12}
ATOL = {"float32": 1e-5, "float64": 1e-12}


def rng(seed=0):
    return np.random.default_rng(seed)


def _pads_2d(spatial, k, s, pad, d):
    t, b, oh = ref.padding_amounts(spatial[0], k[0], s[0], d[0], pad)
    lft, r, ow = ref.padding_amounts(spatial[1], k[1], s[1], d[1], pad)
    return (t, b, lft, r), (oh, ow)


def _pads_1d(n, k, s, pad, d):
    lft, r, out = ref.padding_amounts(n, k, s, d, pad)
    return (0, 0, lft, r), out


def _random_bias(layer):
    """A random bias (through set_weights, so on any device)."""
    if layer.use_bias:
        w = layer.get_weights()
        w[-1] = rng(1).standard_normal(w[-1].shape)
        layer.set_weights(w)
    return layer


def make_dw2(case, dtype, activation=None, use_bias=True, batch=None):
    spatial, k, s, pad, d, c, m = case
    layer = L.DepthwiseConv2D(k, strides=s, padding=pad, depth_multiplier=m, dilation_rate=d,
                              activation=activation, use_bias=use_bias, dtype=dtype, seed=0)
    layer.build((batch,) + spatial + (c,))
    return _random_bias(layer)


def make_dw1(case, dtype, activation=None, use_bias=True):
    n, k, s, pad, d, c, m = case
    layer = L.DepthwiseConv1D(k, strides=s, padding=pad, depth_multiplier=m, dilation_rate=d,
                              activation=activation, use_bias=use_bias, dtype=dtype, seed=0)
    layer.build((None, n, c))
    return _random_bias(layer)


def make_sep2(case, filters, dtype, activation=None, use_bias=True):
    spatial, k, s, pad, d, c, m = case
    layer = L.SeparableConv2D(filters, k, strides=s, padding=pad, dilation_rate=d, depth_multiplier=m,
                              activation=activation, use_bias=use_bias, dtype=dtype, seed=0)
    layer.build((None,) + spatial + (c,))
    return _random_bias(layer)


def make_sep1(case, filters, dtype, activation=None, use_bias=True):
    n, k, s, pad, d, c, m = case
    layer = L.SeparableConv1D(filters, k, strides=s, padding=pad, dilation_rate=d, depth_multiplier=m,
                              activation=activation, use_bias=use_bias, dtype=dtype, seed=0)
    layer.build((None, n, c))
    return _random_bias(layer)


def ref_dw2(case, activation=None):
    spatial, k, s, pad, d, c, m = case
    pads, _ = _pads_2d(spatial, k, s, pad, d)
    return lambda w, x: ref.depthwise_forward(x, w["kernel"], w.get("bias"), s, pads, d, activation)


def ref_dw1(case, activation=None):
    n, k, s, pad, d, c, m = case
    pads, _ = _pads_1d(n, k, s, pad, d)
    return lambda w, x: ref.depthwise_forward(x[:, None], w["kernel"][None], w.get("bias"), (1, s), pads, (1, d),
                                              activation)[:, 0]


def ref_sep2(case, activation=None):
    spatial, k, s, pad, d, c, m = case
    pads, _ = _pads_2d(spatial, k, s, pad, d)

    def reference(w, x):
        t = ref.depthwise_forward(x, w["depthwise_kernel"], None, s, pads, d)
        return ref.conv_forward(t, w["pointwise_kernel"], w.get("bias"), activation_name=activation)
    return reference


def ref_sep1(case, activation=None):
    n, k, s, pad, d, c, m = case
    pads, _ = _pads_1d(n, k, s, pad, d)

    def reference(w, x):
        t = ref.depthwise_forward(x[:, None], w["depthwise_kernel"][None], None, (1, s), pads, (1, d))
        return ref.conv_forward(t, w["pointwise_kernel"][None], w.get("bias"), activation_name=activation)[:, 0]
    return reference


def dw2_case(label, case, activation=None, use_bias=True):
    spatial, *_, c, m = case
    return LayerCase(f"depthwise2d-{label}", lambda dt: make_dw2(case, dt, activation, use_bias),
                     inputs=lambda r: r.standard_normal((2,) + spatial + (c,)), reference=ref_dw2(case, activation),
                     rtol=RTOL, atol=ATOL)


def dw1_case(label, case, activation=None):
    n, *_, c, m = case
    return LayerCase(f"depthwise1d-{label}", lambda dt: make_dw1(case, dt, activation),
                     inputs=lambda r: r.standard_normal((2, n, c)), reference=ref_dw1(case, activation),
                     rtol=RTOL, atol=ATOL)


def sep2_case(label, case, filters, activation=None, use_bias=True):
    spatial, *_, c, m = case
    return LayerCase(f"separable2d-{label}", lambda dt: make_sep2(case, filters, dt, activation, use_bias),
                     inputs=lambda r: r.standard_normal((2,) + spatial + (c,)), reference=ref_sep2(case, activation),
                     rtol=RTOL, atol=ATOL)


def sep1_case(label, case, filters, activation=None):
    n, *_, c, m = case
    return LayerCase(f"separable1d-{label}", lambda dt: make_sep1(case, filters, dt, activation),
                     inputs=lambda r: r.standard_normal((2, n, c)), reference=ref_sep1(case, activation),
                     rtol=RTOL, atol=ATOL)


CASES = [dw2_case(f"{i}", case, ("relu", "tanh", None)[i % 3]) for i, case in enumerate(CASES_2D)]
CASES += [dw1_case(f"{i}", case, "sigmoid" if i % 2 else None) for i, case in enumerate(CASES_1D)]
CASES += [dw2_case(f"fused-{act}", CASES_2D[2], act) for act in ("gelu", "silu", "elu", "softmax")]
CASES += [dw2_case("no-bias", CASES_2D[1], use_bias=False)]
CASES += [sep2_case(f"{i}", CASES_2D[i], 3, ("relu", None)[i % 2]) for i in (0, 1, 2, 5, 6)]
CASES += [sep2_case("gelu", CASES_2D[4], 2, "gelu"), sep2_case("softmax", CASES_2D[3], 3, "softmax"),
          sep2_case("no-bias", CASES_2D[0], 2, "tanh", use_bias=False)]
CASES += [sep1_case(f"{i}", case, 2, "relu" if i % 2 else None) for i, case in enumerate(CASES_1D)]


@pytest.mark.parametrize("case", CASES, ids=str)
def test_layer_case(case, device):
    case.check(device)


# ------------------------------------------------------------------ backward, shapes, threads
def _dw_backward_check(layer, x, case, dtype, tol):
    spatial, k, s, pad, d, c, m = case
    y = layer.forward(x, training=True)
    pads, (oh, ow) = _pads_2d(spatial, k, s, pad, d)
    assert y.shape == (x.shape[0], oh, ow, c * m) and y.dtype == np.dtype(dtype)
    assert layer.compute_output_shape((None,) + spatial + (c,)) == (None, oh, ow, c * m)
    kernel, bias = layer.params["kernel"], layer.params["bias"]
    expected = ref.depthwise_forward(x, kernel, bias, s, pads, d, "relu")
    np.testing.assert_allclose(y, expected, rtol=tol, atol=tol)
    dy = rng(5).standard_normal(y.shape).astype(dtype)
    dx = layer.backward(dy)
    assert dx.dtype == np.dtype(dtype) and dx.shape == x.shape
    rdx, rdk, rdb = ref.depthwise_backward(x, kernel, dy * (expected > 0), s, pads, d)
    np.testing.assert_allclose(dx, rdx, rtol=tol, atol=tol)
    np.testing.assert_allclose(layer.grads["kernel"], rdk, rtol=tol, atol=tol)
    np.testing.assert_allclose(layer.grads["bias"], rdb, rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("case", CASES_2D, ids=range(len(CASES_2D)))
def test_depthwise2d_backward_matches_reference(case, dtype):
    layer = make_dw2(case, dtype, activation="relu")
    x = rng().standard_normal((2,) + case[0] + (case[5],)).astype(dtype)
    _dw_backward_check(layer, x, case, dtype, 1e-4 if dtype == "float32" else 1e-11)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("case", [((12, 12), (3, 3), (1, 1), "same", (1, 1), 4, 1),
                                  ((12, 11), (3, 3), (2, 1), "same", (1, 2), 3, 2),
                                  ((9, 12), (5, 3), (1, 2), "valid", (1, 1), 4, 1)], ids=["runs", "m2", "stride-w"])
def test_threads_batches_and_long_sums(case, threads):
    """A batch big enough for the thread blocks (and, in float32, weight-gradient sums over
    thousands of pixels, folded every DW_FOLD rows), and a batch of one."""
    before = nb.get_num_threads()
    nb.set_num_threads(threads)
    try:
        for dtype, batch in (("float64", 40), ("float64", 1), ("float32", 64)):
            layer = make_dw2(case, dtype, activation="relu")
            x = rng(2).standard_normal((batch,) + case[0] + (case[5],)).astype(dtype)
            _dw_backward_check(layer, x, case, dtype, 2e-4 if dtype == "float32" else 1e-10)
    finally:
        nb.set_num_threads(before)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("case", CASES_1D, ids=range(len(CASES_1D)))
def test_depthwise1d_backward_matches_reference(case, dtype):
    n, k, s, pad, d, c, m = case
    layer = make_dw1(case, dtype)
    x = rng().standard_normal((3, n, c)).astype(dtype)
    y = layer.forward(x, training=True)
    pads, out = _pads_1d(n, k, s, pad, d)
    assert y.shape == (3, out, c * m) and layer.compute_output_shape((None, n, c)) == (None, out, c * m)
    assert layer.params["kernel"].shape == (k, c, m)
    dy = rng(5).standard_normal(y.shape).astype(dtype)
    dx = layer.backward(dy)
    rdx, rdk, rdb = ref.depthwise_backward(x[:, None], layer.params["kernel"][None], dy[:, None], (1, s), pads,
                                           (1, d))
    tol = 1e-4 if dtype == "float32" else 1e-11
    np.testing.assert_allclose(dx, rdx[:, 0], rtol=tol, atol=tol)
    np.testing.assert_allclose(layer.grads["kernel"], rdk[0], rtol=tol, atol=tol)
    np.testing.assert_allclose(layer.grads["bias"], rdb, rtol=tol, atol=tol)


def test_causal_output_sees_only_the_past():
    for layer in (L.DepthwiseConv1D(3, padding="causal", dilation_rate=2, depth_multiplier=2, dtype="float64"),
                  L.SeparableConv1D(3, 3, padding="causal", dilation_rate=2, dtype="float64")):
        x = rng().standard_normal((1, 10, 2))
        y0 = np.array(layer.forward(x))
        x2 = x.copy()
        x2[:, 6:] += 1.0
        y1 = np.array(layer.forward(x2))
        np.testing.assert_array_equal(y0[:, :6], y1[:, :6])
        assert not np.allclose(y0[:, 6:], y1[:, 6:])


def test_input_gradient_skipped_when_not_needed():
    for layer in (make_dw2(CASES_2D[0], "float64"), make_sep2(CASES_2D[1], 3, "float64")):
        x = rng().standard_normal((2,) + layer.built_input_shape[1:])
        y = layer.forward(x, training=True)
        layer.input_grad_needed = False
        assert layer.backward(np.ones(y.shape)) is None
        assert all(np.abs(g).sum() > 0 for g in layer.grads.values())


def test_workspaces_reused_and_grads_written_in_place():
    for layer in (make_dw2(CASES_2D[1], "float32", activation="gelu"), make_sep2(CASES_2D[2], 3, "float32", "silu")):
        x = rng().standard_normal((2,) + layer.built_input_shape[1:]).astype(np.float32)
        grads = dict(layer.grads)
        y1 = layer.forward(x, training=True)
        dx1 = layer.backward(np.ones(y1.shape, np.float32))
        ws = {k: id(v) for k, v in layer._workspaces.items()}
        y2 = layer.forward(x, training=True)
        dx2 = layer.backward(np.ones(y2.shape, np.float32))
        assert np.shares_memory(y1, y2) and np.shares_memory(dx1, dx2)
        assert {k: id(v) for k, v in layer._workspaces.items()} == ws
        assert all(layer.grads[k] is g for k, g in grads.items())


# ------------------------------------------------------------------ PyTorch parity
def _torch_pads(spatial, k, s, d, pad):
    """F.pad's (left, right, top, bottom) for Keras's padding."""
    (t, b, lft, r), _ = _pads_2d(spatial, k, s, pad, d)
    return lft, r, t, b


@pytest.mark.parametrize("case", [CASES_2D[0], CASES_2D[1], CASES_2D[2], CASES_2D[6]], ids=range(4))
@pytest.mark.parametrize("separable", [False, True], ids=["depthwise", "separable"])
def test_2d_matches_torch(case, separable):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    spatial, k, s, pad, d, c, m = case
    layer = make_sep2(case, 3, "float64", "relu") if separable else make_dw2(case, "float64", "relu")
    x = rng().standard_normal((3,) + spatial + (c,))
    y = layer.forward(x, training=True)
    dy = rng(7).standard_normal(y.shape)
    dx = layer.backward(dy)
    w = dict(zip(layer.params, layer.get_weights()))
    dk = w["depthwise_kernel" if separable else "kernel"]
    xt = torch.tensor(x.transpose(0, 3, 1, 2), requires_grad=True)
    # groups = c: out channel ch*M + mm sees input channel ch through weight[ch*M + mm, 0]
    wt = torch.tensor(dk.transpose(2, 3, 0, 1).reshape(c * m, 1, *k).copy(), requires_grad=True)
    bt = torch.tensor(w["bias"], requires_grad=True)
    xp = F.pad(xt, _torch_pads(spatial, k, s, d, pad))
    if separable:
        pt = torch.tensor(w["pointwise_kernel"].transpose(3, 2, 0, 1).copy(), requires_grad=True)
        yt = F.conv2d(F.conv2d(xp, wt, None, stride=s, dilation=d, groups=c), pt, bt)
    else:
        yt = F.conv2d(xp, wt, bt, stride=s, dilation=d, groups=c)
    yt = torch.relu(yt)
    yt.backward(torch.tensor(dy.transpose(0, 3, 1, 2)))
    tol = {"rtol": 1e-10, "atol": 1e-10}
    np.testing.assert_allclose(y, yt.detach().numpy().transpose(0, 2, 3, 1), **tol)
    np.testing.assert_allclose(dx, xt.grad.numpy().transpose(0, 2, 3, 1), **tol)
    g = layer.grads["depthwise_kernel" if separable else "kernel"]
    np.testing.assert_allclose(g, wt.grad.numpy().reshape(c, m, *k).transpose(2, 3, 0, 1), **tol)
    np.testing.assert_allclose(layer.grads["bias"], bt.grad.numpy(), **tol)
    if separable:
        np.testing.assert_allclose(layer.grads["pointwise_kernel"], pt.grad.numpy().transpose(2, 3, 1, 0), **tol)


@pytest.mark.parametrize("case", [CASES_1D[1], CASES_1D[2], CASES_1D[4]], ids=range(3))
@pytest.mark.parametrize("separable", [False, True], ids=["depthwise", "separable"])
def test_1d_matches_torch(case, separable):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    n, k, s, pad, d, c, m = case
    layer = make_sep1(case, 2, "float64") if separable else make_dw1(case, "float64")
    x = rng().standard_normal((3, n, c))
    y = layer.forward(x, training=True)
    dy = rng(7).standard_normal(y.shape)
    dx = layer.backward(dy)
    w = dict(zip(layer.params, layer.get_weights()))
    lft, r, _ = ref.padding_amounts(n, k, s, d, pad)
    xt = torch.tensor(x.transpose(0, 2, 1), requires_grad=True)
    dk = w["depthwise_kernel" if separable else "kernel"]
    wt = torch.tensor(dk.transpose(1, 2, 0).reshape(c * m, 1, k).copy(), requires_grad=True)
    bt = torch.tensor(w["bias"], requires_grad=True)
    xp = F.pad(xt, (lft, r))
    if separable:
        pt = torch.tensor(w["pointwise_kernel"].transpose(2, 1, 0).copy(), requires_grad=True)
        yt = F.conv1d(F.conv1d(xp, wt, None, stride=s, dilation=d, groups=c), pt, bt)
    else:
        yt = F.conv1d(xp, wt, bt, stride=s, dilation=d, groups=c)
    yt.backward(torch.tensor(dy.transpose(0, 2, 1)))
    tol = {"rtol": 1e-10, "atol": 1e-10}
    np.testing.assert_allclose(y, yt.detach().numpy().transpose(0, 2, 1), **tol)
    np.testing.assert_allclose(dx, xt.grad.numpy().transpose(0, 2, 1), **tol)
    g = layer.grads["depthwise_kernel" if separable else "kernel"]
    np.testing.assert_allclose(g, wt.grad.numpy().reshape(c, m, k).transpose(2, 0, 1), **tol)


# ------------------------------------------------------------------ Keras 3 oracle
@pytest.fixture(scope="module")
def keras():
    os.environ["KERAS_BACKEND"] = "torch"
    pytest.importorskip("torch")
    keras = pytest.importorskip("keras")
    if keras.backend.backend() != "torch":
        pytest.skip(f"keras runs on {keras.backend.backend()!r}, not torch")
    return keras


KERAS_CASES = [
    ("DepthwiseConv2D", (3,), dict(padding="same"), (6, 7, 3)),
    ("DepthwiseConv2D", ((3, 2),), dict(strides=2, padding="same", depth_multiplier=2, activation="relu"), (7, 6, 2)),
    ("DepthwiseConv2D", (3,), dict(strides=(2, 1), dilation_rate=(1, 2), padding="valid"), (8, 9, 2)),
    ("DepthwiseConv2D", (3,), dict(strides=2, dilation_rate=2, padding="same", use_bias=False), (9, 8, 2)),
    ("DepthwiseConv1D", (3,), dict(padding="same", depth_multiplier=3, activation="tanh"), (9, 2)),
    ("DepthwiseConv1D", (4,), dict(strides=2, padding="valid"), (11, 3)),
    ("SeparableConv2D", (4, 3), dict(padding="same"), (6, 7, 3)),
    ("SeparableConv2D", (5, (2, 3)), dict(strides=2, padding="same", depth_multiplier=2, activation="sigmoid"),
     (7, 8, 2)),
    ("SeparableConv2D", (3, 3), dict(dilation_rate=2, padding="valid", use_bias=False), (8, 8, 2)),
    ("SeparableConv1D", (4, 3), dict(padding="same", depth_multiplier=2, activation="relu"), (9, 3)),
    ("SeparableConv1D", (2, 3), dict(strides=2, dilation_rate=1, padding="valid"), (10, 2)),
]


@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # inside keras.ops
@pytest.mark.parametrize("cls, args, kwargs, shape", KERAS_CASES,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(KERAS_CASES)])
def test_matches_keras(keras, cls, args, kwargs, shape):
    """Same arguments and weights in: Keras's weight shapes and output shape, and the same output."""
    import torch

    theirs = getattr(keras.layers, cls)(*args, **kwargs)
    ours = getattr(L, cls)(*args, dtype="float64", **kwargs)
    theirs.build((None,) + shape)
    ours.build((None,) + shape)
    assert [tuple(w.shape) for w in theirs.weights] == [w.shape for w in ours.get_weights()]
    weights = [rng(i).standard_normal(w.shape) for i, w in enumerate(ours.get_weights())]
    theirs.set_weights(weights)
    ours.set_weights(weights)
    x = rng(9).standard_normal((2,) + shape)
    with torch.no_grad():
        want = keras.ops.convert_to_numpy(theirs(x.astype(np.float32))).astype(np.float64)
    got = ours.forward(x)
    assert got.shape == want.shape == tuple(theirs.compute_output_shape((2,) + shape))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_keras_rejects_causal_here_but_nbmodel_keeps_conv1d_causal(keras):
    """Keras 3's DepthwiseConv1D/SeparableConv1D take only "valid" and "same"; nbmodel also takes
    Conv1D's "causal" (Keras 2 did): a superset, checked against the reference above."""
    with pytest.raises(ValueError):
        keras.layers.DepthwiseConv1D(3, padding="causal")
    assert L.DepthwiseConv1D(3, padding="causal").padding == "causal"


# ------------------------------------------------------------------ Keras API, config, saving
def test_keras_weight_shapes_defaults_and_output_shape():
    dw = L.DepthwiseConv2D((3, 2), strides=2, padding="same", depth_multiplier=2, name="dw")
    assert (dw.depth_multiplier, dw.dilation_rate, dw.use_bias, dw.padding) == (2, (1, 1), True, "same")
    dw.build((None, 5, 6, 3))
    assert list(dw.params) == ["kernel", "bias"]
    assert dw.params["kernel"].shape == (3, 2, 3, 2) and dw.params["bias"].shape == (6,)
    assert dw.compute_output_shape((None, 5, 6, 3)) == (None, 3, 3, 6)
    assert dw.compute_output_shape((None, None, 6, 3)) == (None, None, None, 6)
    # glorot uniform over the kernel's shape (fans 3*2*3, 3*2*2), like Keras
    assert np.abs(dw.params["kernel"]).max() <= np.sqrt(6.0 / (3 * 2 * 3 + 3 * 2 * 2))
    sep = L.SeparableConv2D(4, 3, depth_multiplier=2)
    sep.build((None, 8, 8, 3))
    assert list(sep.params) == ["depthwise_kernel", "pointwise_kernel", "bias"]
    assert [w.shape for w in sep.get_weights()] == [(3, 3, 3, 2), (1, 1, 6, 4), (4,)]
    assert sep.compute_output_shape((None, 8, 8, 3)) == (None, 6, 6, 4)
    s1 = L.SeparableConv1D(5, 3, use_bias=False)
    s1.build((None, 10, 2))
    assert [w.shape for w in s1.get_weights()] == [(3, 2, 1), (1, 2, 5)]
    d1 = L.DepthwiseConv1D(3, depth_multiplier=3)
    d1.build((None, 10, 2))
    assert [w.shape for w in d1.get_weights()] == [(3, 2, 3), (6,)]
    assert sep.count_params() == 3 * 3 * 3 * 2 + 6 * 4 + 4


def test_positional_arguments_follow_keras():
    dw = L.DepthwiseConv2D(3, 2, "same", 2)  # kernel_size, strides, padding, depth_multiplier
    assert (dw.strides, dw.padding, dw.depth_multiplier) == ((2, 2), "same", 2)
    sep = L.SeparableConv2D(8, 3, 1, "valid", None, 2, 3)  # ..., data_format, dilation_rate, depth_multiplier
    assert (sep.dilation_rate, sep.depth_multiplier) == ((2, 2), 3)


def test_config_roundtrip():
    layers = [L.DepthwiseConv2D((3, 2), strides=(2, 1), padding="same", depth_multiplier=2, dilation_rate=(1, 1),
                                activation="relu", use_bias=False, depthwise_regularizer="l2",
                                bias_constraint="non_neg", name="d2"),
              L.DepthwiseConv1D(4, padding="causal", dilation_rate=2, name="d1"),
              L.SeparableConv2D(6, 3, padding="same", depth_multiplier=2, activation="gelu",
                                pointwise_initializer="he_normal", pointwise_regularizer="l1", name="s2"),
              L.SeparableConv1D(3, 5, strides=2, depthwise_constraint="non_neg", name="s1")]
    for layer in layers:
        cfg = layer.get_config()
        assert type(layer).from_config(cfg).get_config() == cfg
    assert layers[0].get_config()["kernel_size"] == [3, 2] and layers[0].get_config()["depth_multiplier"] == 2
    assert layers[1].get_config()["kernel_size"] == 4 and layers[1].get_config()["padding"] == "causal"
    assert layers[2].get_config()["pointwise_initializer"] == "he_normal"
    assert "filters" not in layers[0].get_config() and layers[3].get_config()["filters"] == 3


def test_regularizer_and_constraint_options_map_to_params(float64):
    dw = L.DepthwiseConv2D(3, depthwise_regularizer="l2", bias_regularizer="l1", depthwise_constraint="non_neg")
    assert set(dw.weight_regularizers) == {"kernel", "bias"} and set(dw.weight_constraints) == {"kernel"}
    sep = L.SeparableConv2D(2, 3, depthwise_regularizer="l2", pointwise_regularizer="l1",
                            pointwise_constraint="non_neg")
    assert set(sep.weight_regularizers) == {"depthwise_kernel", "pointwise_kernel"}
    assert set(sep.weight_constraints) == {"pointwise_kernel"}
    with pytest.raises(TypeError, match="kernel_regularizer"):
        L.SeparableConv2D(2, 3, kernel_regularizer="l2")
    # the penalties reach the loss, the constraint the weights
    m = nb.Sequential([L.Input((5, 5, 2)), sep, L.Flatten(), L.Dense(1)], seed=0)
    m.compile(nb.optimizers.SGD(0.1), "mse")
    x, y = rng().standard_normal((4, 5, 5, 2)), np.ones((4, 1))
    dk, pk = m.get_weights()[:2]
    with_pen = m.evaluate(x, y)
    regs = dict(sep.weight_regularizers)
    sep.weight_regularizers.clear()
    assert with_pen == pytest.approx(m.evaluate(x, y) + 0.01 * (dk ** 2).sum() + 0.01 * np.abs(pk).sum(), rel=1e-12)
    sep.weight_regularizers.update(regs)
    m.train_on_batch(x, y)
    assert (m.get_weights()[1] >= 0).all()


def test_model_trains_saves_and_loads(tmp_path, one_thread):
    r = rng()
    x = r.random((32, 8, 8, 2)).astype(np.float32)
    y = (x.mean(axis=(1, 2, 3)) > 0.5).astype(np.int64)
    inp = L.Input((8, 8, 2))
    h = L.SeparableConv2D(8, 3, padding="same", activation="relu", depth_multiplier=2)(inp)
    h = L.DepthwiseConv2D(3, strides=2, padding="same", activation="relu")(h)
    seq = L.Reshape((16, 8))(h)
    seq = L.SeparableConv1D(4, 3, padding="causal", activation="relu")(seq)
    seq = L.DepthwiseConv1D(3, depth_multiplier=2)(seq)
    out = L.Dense(2)(L.GlobalAveragePooling1D()(seq))
    model = nb.Model(inp, out, seed=0)
    model.compile(optimizer=nb.optimizers.Adam(0.01), loss=nb.losses.SparseCategoricalCrossentropy(from_logits=True))
    before = model.evaluate(x, y)
    model.fit(x, y, batch_size=8, epochs=10, verbose=0)
    assert model.evaluate(x, y) < before
    path = tmp_path / "sep.nbm"
    model.save(path)
    again = nb.load_model(path)
    assert [type(lyr).__name__ for lyr in again.layers if "Conv" in type(lyr).__name__] == [
        "SeparableConv2D", "DepthwiseConv2D", "SeparableConv1D", "DepthwiseConv1D"]
    np.testing.assert_array_equal(again.predict(x[:4]), model.predict(x[:4]))
    for a, b in zip(again.get_weights(), model.get_weights()):
        np.testing.assert_array_equal(a, b)


# ------------------------------------------------------------------ errors
def test_bad_arguments_and_inputs_name_the_layer():
    with pytest.raises(ValueError, match="dw_a.*depth_multiplier"):
        L.DepthwiseConv2D(3, depth_multiplier=0, name="dw_a")
    with pytest.raises(ValueError, match="dw_b.*channels_last"):
        L.DepthwiseConv2D(3, data_format="channels_first", name="dw_b")
    with pytest.raises(ValueError, match="dw_c.*padding"):
        L.DepthwiseConv2D(3, padding="causal", name="dw_c")
    with pytest.raises(ValueError, match="dw_d.*kernel_size"):
        L.DepthwiseConv1D((3, 3), name="dw_d")
    with pytest.raises(ValueError, match="dw_e.*strides"):
        L.DepthwiseConv2D(3, strides=0, name="dw_e")
    with pytest.raises(ValueError, match="dw_f.*activation"):
        L.DepthwiseConv2D(3, activation="nope", name="dw_f")
    with pytest.raises(ValueError, match="sep_a.*filters"):
        L.SeparableConv2D(0, 3, name="sep_a")
    with pytest.raises(ValueError, match="sep_b.*depth_multiplier"):
        L.SeparableConv1D(2, 3, depth_multiplier=1.5, name="sep_b")
    with pytest.raises(ValueError, match="sep_c.*dilation_rate"):
        L.SeparableConv2D(2, 3, dilation_rate=(1, 0), name="sep_c")
    with pytest.raises(TypeError, match="SeparableConv2D.*groups"):
        L.SeparableConv2D(2, 3, groups=2)
    with pytest.raises(ValueError, match="sep_d.*larger than the padded input"):
        L.SeparableConv1D(2, 5, dilation_rate=2, name="sep_d").build((None, 8, 1))
    with pytest.raises(ValueError, match="dw_g.*rank 3"):
        L.DepthwiseConv1D(3, name="dw_g").build((None, 8, 8, 1))
    for layer in (L.DepthwiseConv2D(3, name="dw_h"), L.SeparableConv2D(2, 3, name="sep_h")):
        layer.build((None, 6, 6, 3))
        name = layer.name
        with pytest.raises(ValueError, match=f"{name}.*rank 4"):
            layer.forward(np.zeros((2, 6, 3), np.float32))
        with pytest.raises(ValueError, match=f"{name}.*last dimension 3"):
            layer.forward(np.zeros((2, 6, 6, 2), np.float32))
        with pytest.raises(ValueError, match=f"{name}.*larger than the padded input"):
            layer.forward(np.zeros((2, 2, 6, 3), np.float32))
        with pytest.raises(ValueError, match=f"{name}.*NaN"):
            layer.forward(np.full((1, 6, 6, 3), np.nan, np.float32))
        with pytest.raises(TypeError, match=f"{name}.*numeric"):
            layer.forward(np.full((1, 6, 6, 3), "a"))
        with pytest.raises(ValueError, match=f"{name}.*training=True"):
            layer.forward(np.zeros((1, 6, 6, 3), np.float32))
            layer.backward(np.zeros((1, 4, 4, layer.compute_output_shape((1, 6, 6, 3))[-1]), np.float32))


# ------------------------------------------------------------------ float32 purity
@pytest.mark.parametrize("m, sw", [(1, 1), (2, 2)], ids=["runs", "per-pixel"])
def test_kernel_bodies_stay_float32(m, sw):
    from nbmodel.kernels import codes
    from nbmodel.kernels.cpu import conv as kconv
    from nbmodel.testing import float64_ops

    f = np.float32
    n, h, w, c, kh, kw = 2, 4, 5, 2, 3, 3
    cm = c * m
    x = rng().standard_normal((n, h, w, c)).astype(f)
    k2 = rng(1).standard_normal((kh * kw, cm)).astype(f)
    oh, ow = h, -(-w // sw)
    geo = (kh, kw, 1, sw, 1, 1, 1, 1, oh, ow)
    kt = np.zeros((kh * kw, max(w, ow) * c if m == 1 else 0), f)
    out = np.zeros((n * oh * ow, cm), f)
    assert float64_ops(kconv._dw_forward_rows, x, k2, kt, np.zeros(cm, f), codes.GELU, True, *geo, 0, n * oh,
                       out.copy(), out) == []
    acc = np.zeros((kh * kw, ow * cm if m == 1 else cm), f)
    assert float64_ops(kconv._dw_backward_rows, x, out.copy(), out, out.copy(), codes.GELU, True, *geo, 0, n * oh,
                       out.copy(), np.zeros(cm, f), np.zeros(cm, f), acc, np.zeros_like(k2)) == []
    assert float64_ops(kconv._dw_input_grad_rows, out, k2, kt, *geo, 0, n * h, np.zeros_like(x)) == []
