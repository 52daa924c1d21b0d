"""Conv2DTranspose and Conv1DTranspose as layer cases (forward against the Keras definition
in the float64 reference: zeros between inputs, Keras 3's padding, the flipped kernel;
finite differences; on every device), Keras output sizes and weight shapes, PyTorch parity
(Keras "same" and output_padding expressed as torch padding, output_padding and cropping),
errors, config round trip, save/load and a small U-Net that trains."""
import numpy as np
import pytest

import nbmodel as nb
from nbmodel import layers as L
from nbmodel.kernels.reference import conv as ref
from nbmodel.layers.conv import transpose_padding
from nbmodel.testing import LayerCase

# (input spatial, kernel, strides, padding, output_padding, dilation, in channels, filters)
CASES_2D = [
    ((3, 4), (3, 3), (1, 1), "valid", None, (1, 1), 2, 3),
    ((3, 4), (3, 3), (2, 2), "same", None, (1, 1), 2, 3),
    ((3, 4), (2, 3), (2, 1), "same", (1, 0), (1, 1), 2, 3),   # same + output_padding (torch needs a crop)
    ((3, 3), (3, 2), (1, 1), "same", None, (2, 2), 1, 2),      # dilation
    ((3, 4), (4, 3), (3, 2), "valid", (2, 1), (1, 1), 2, 2),   # valid + output_padding
    ((2, 3), (1, 1), (3, 2), "valid", None, (1, 1), 2, 2),     # kernel smaller than the stride
    ((3, 3), (4, 4), (2, 2), "same", (0, 1), (1, 1), 2, 2),    # even kernel, same
    ((2, 2), (2, 2), (2, 2), "valid", None, (1, 1), 3, 2),     # the U-Net upsampler
]
# (steps, kernel, stride, padding, output_padding, dilation, in channels, filters)
CASES_1D = [
    (5, 3, 1, "valid", None, 1, 2, 3),
    (4, 3, 2, "same", None, 1, 1, 2),
    (4, 4, 3, "valid", 1, 1, 2, 2),
    (5, 3, 1, "same", None, 2, 2, 2),
    (4, 2, 2, "same", 1, 1, 2, 2),
]

RTOL = {"float32": 1e-5, "float64": 1e-12}
ATOL = {"float32": 1e-5, "float64": 1e-12}


def rng(seed=0):
    return np.random.default_rng(seed)


def _pads(ks, ss, pad, ops, ds):
    ops = (None,) * len(ks) if ops is None else ops
    return tuple(ref.conv_transpose_pads(k, s, d, pad, o) for k, s, o, d in zip(ks, ss, ops, ds))


def _conv_pads(spatial, k, s, d, pad, op):
    """(top, bottom, left, right) of the convolution that maps the layer's output back to its
    input: the layer's padding before, and after it as much as that convolution's last
    window needs."""
    out = []
    for n, kk, ss, dd, o in zip(spatial, k, s, d, (None,) * len(k) if op is None else op):
        before, size = transpose_padding(n, kk, ss, dd, pad, o)
        out += [before, max(0, (n - 1) * ss + (kk - 1) * dd + 1 - before - size)]
    return tuple(out)


def _built(layer, input_shape):
    """``layer`` built, with a random bias (through set_weights, so on any device)."""
    layer.build(input_shape)
    if layer.use_bias:
        kernel, bias = layer.get_weights()
        layer.set_weights([kernel, rng(1).standard_normal(bias.shape)])
    return layer


def make_2d(case, dtype, activation=None, use_bias=True):
    spatial, k, s, pad, op, d, c, f = case
    return _built(L.Conv2DTranspose(f, k, strides=s, padding=pad, output_padding=op, dilation_rate=d,
                                    activation=activation, use_bias=use_bias, dtype=dtype, seed=0),
                  (None,) + spatial + (c,))


def make_1d(case, dtype, activation=None):
    n, k, s, pad, op, d, c, f = case
    return _built(L.Conv1DTranspose(f, k, strides=s, padding=pad, output_padding=op, dilation_rate=d,
                                    activation=activation, dtype=dtype, seed=0), (None, n, c))


def ref_2d(case, activation=None):
    spatial, k, s, pad, op, d, c, f = case
    pads = _pads(k, s, pad, op, d)
    return lambda w, x: ref.conv_transpose_forward(x, w["kernel"], w.get("bias"), s, pads, d, activation)


def ref_1d(case, activation=None):
    n, k, s, pad, op, d, c, f = case
    (pads,) = _pads((k,), (s,), pad, None if op is None else (op,), (d,))

    def reference(w, x):
        return ref.conv_transpose_forward(x[:, None], w["kernel"][None], w["bias"], (1, s), ((0, 0), pads),
                                          (1, d), activation)[:, 0]
    return reference


def case_2d(label, case, activation=None, use_bias=True):
    spatial, *_, c, f = case
    return LayerCase(f"conv2d-transpose-{label}", lambda dt: make_2d(case, dt, activation, use_bias),
                     inputs=lambda r: r.standard_normal((2,) + spatial + (c,)), reference=ref_2d(case, activation),
                     rtol=RTOL, atol=ATOL)


def case_1d(label, case, activation=None):
    n, *_, c, f = case
    return LayerCase(f"conv1d-transpose-{label}", lambda dt: make_1d(case, dt, activation),
                     inputs=lambda r: r.standard_normal((2, n, c)), reference=ref_1d(case, activation),
                     rtol=RTOL, atol=ATOL)


CASES = [case_2d(f"{i}", case, "relu" if i % 2 else "tanh") for i, case in enumerate(CASES_2D)]
CASES += [case_1d(f"{i}", case, "sigmoid" if i % 2 else None) for i, case in enumerate(CASES_1D)]
CASES += [case_2d("gelu", CASES_2D[1], "gelu"), case_2d("softmax", CASES_2D[2], "softmax"),
          case_2d("no-bias", CASES_2D[3], use_bias=False)]


@pytest.mark.parametrize("case", CASES, ids=str)
def test_layer_case(case, device):
    case.check(device)


# ------------------------------------------------------------------ Keras sizes and weights
@pytest.mark.parametrize("n, k, s, pad, op, d, want", [
    (4, 3, 1, "valid", None, 1, 6), (4, 3, 2, "valid", None, 1, 9), (4, 1, 3, "valid", None, 1, 12),
    (4, 3, 2, "same", None, 1, 8), (4, 4, 2, "same", None, 1, 8), (5, 3, 1, "same", None, 2, 5),
    (4, 3, 2, "valid", 1, 1, 10), (4, 3, 2, "same", 1, 1, 8), (4, 4, 2, "same", 1, 1, 7),
    (4, 3, 2, "same", 0, 1, 7), (3, 2, 1, "valid", None, 3, 6),
])
def test_output_length_is_keras(n, k, s, pad, op, d, want):
    """Keras' deconv_output_length, and the reference's padding gives the same length."""
    assert transpose_padding(n, k, s, d, pad, op)[1] == want
    before, after = ref.conv_transpose_pads(k, s, d, pad, op)
    assert (n - 1) * s + 1 + before + after - ((k - 1) * d + 1) + 1 == want


def test_keras_weight_shapes_defaults_and_output_shape():
    layer = L.Conv2DTranspose(4, (3, 2), strides=2, padding="same", name="up")
    assert layer.output_padding is None and layer.dilation_rate == (1, 1) and layer.padding == "same"
    layer.build((None, 5, 6, 3))
    assert layer.params["kernel"].shape == (3, 2, 4, 3) and layer.params["bias"].shape == (4,)
    assert layer.compute_output_shape((None, 5, 6, 3)) == (None, 10, 12, 4)
    assert layer.compute_output_shape((None, None, 6, 3)) == (None, None, None, 4)
    c1 = L.Conv1DTranspose(5, 3, strides=2, output_padding=1)
    c1.build((None, 7, 2))
    assert c1.params["kernel"].shape == (3, 5, 2)
    assert c1.compute_output_shape((None, 7, 2)) == (None, 16, 5)  # (7 - 1) * 2 + 3 + 1
    # glorot uniform over the kernel's shape, like Keras: fans (3*2*4, 3*2*3)
    assert np.abs(layer.params["kernel"]).max() <= np.sqrt(6.0 / (3 * 2 * 4 + 3 * 2 * 3))


def test_set_weights_with_keras_ordered_arrays():
    """A Keras-ordered (kernel (kh, kw, filters, in), bias) list gives the reference output."""
    case = CASES_2D[1]
    layer = make_2d(case, "float64")
    kernel = rng(3).standard_normal((3, 3, 3, 2))
    bias = rng(4).standard_normal(3)
    layer.set_weights([kernel, bias])
    x = rng(5).standard_normal((2, 3, 4, 2))
    want = ref_2d(case)({"kernel": kernel, "bias": bias}, x)
    np.testing.assert_allclose(layer.forward(x), want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("case", [CASES_2D[1], CASES_2D[2], CASES_2D[4]])
def test_backward_is_the_convolution_forward(case, dtype):
    """dx of a transposed convolution is the convolution of dy (same kernel and geometry) and
    the kernel gradient is that convolution's weight gradient, checked with the reference."""
    spatial, k, s, pad, op, d, c, f = case
    layer = make_2d(case, dtype, activation="relu")
    x = rng().standard_normal((2,) + spatial + (c,)).astype(dtype)
    y = layer.forward(x, training=True)
    dy = rng(6).standard_normal(y.shape).astype(dtype)
    dx = layer.backward(dy)
    assert dx.dtype == np.dtype(dtype) and dx.shape == x.shape
    dz = dy * (y > 0)
    pads = _conv_pads(spatial, k, s, d, pad, op)
    kernel = layer.params["kernel"]
    rdx = ref.conv_forward(dz, kernel, None, s, pads, d)[:, :spatial[0], :spatial[1]]
    _, rdk, rdb = ref.conv_backward(dz, kernel, x, s, pads, d)
    tol = 1e-4 if dtype == "float32" else 1e-11
    np.testing.assert_allclose(dx, rdx, rtol=tol, atol=tol)
    np.testing.assert_allclose(layer.grads["kernel"], rdk, rtol=tol, atol=tol)
    np.testing.assert_allclose(layer.grads["bias"], dz.sum(axis=(0, 1, 2)), rtol=tol, atol=tol)


@pytest.mark.parametrize("threads", [1, 2])
def test_threads_and_chunks(threads):
    """A batch big enough for one block of images per thread and several chunks, and a batch of one."""
    before = nb.get_num_threads()
    nb.set_num_threads(threads)
    try:
        case = ((12, 12), (3, 3), (2, 2), "same", None, (1, 1), 4, 3)
        layer = make_2d(case, "float64", activation="elu")
        x = rng().standard_normal((40, 12, 12, 4))
        ref_fn = ref_2d(case, "elu")
        for xb in (x, x[:1]):
            y = layer.forward(xb, training=True)
            w = {"kernel": layer.params["kernel"], "bias": layer.params["bias"]}
            np.testing.assert_allclose(y, ref_fn(w, xb), rtol=1e-12, atol=1e-12)
            dy = rng(1).standard_normal(y.shape)
            dx = layer.backward(dy)
            dz = dy * np.where(y > 0, 1.0, y + 1.0)
            pads = _conv_pads((12, 12), (3, 3), (2, 2), (1, 1), "same", None)
            rdx = ref.conv_forward(dz, layer.params["kernel"], None, (2, 2), pads)[:, :12, :12]
            _, rdk, _ = ref.conv_backward(dz, layer.params["kernel"], xb, (2, 2), pads)
            np.testing.assert_allclose(dx, rdx, rtol=1e-10, atol=1e-10)
            np.testing.assert_allclose(layer.grads["kernel"], rdk, rtol=1e-10, atol=1e-10)
    finally:
        nb.set_num_threads(before)


def test_input_gradient_skipped_when_not_needed():
    layer = make_2d(CASES_2D[1], "float64")
    x = rng().standard_normal((2, 3, 4, 2))
    y = layer.forward(x, training=True)
    layer.input_grad_needed = False
    assert layer.backward(np.ones(y.shape)) is None
    assert np.abs(layer.grads["kernel"]).sum() > 0


# ------------------------------------------------------------------ PyTorch parity
def _torch_args(n, k, s, d, pad, op):
    """torch padding, output_padding and the crop that give Keras's output along one axis."""
    before, out = transpose_padding(n, k, s, d, pad, op)
    natural = (n - 1) * s - 2 * before + (k - 1) * d + 1
    extra = out - natural
    assert extra < max(s, d)  # never more than torch's output_padding can add
    return before, max(extra, 0), out


@pytest.mark.parametrize("case", CASES_2D, ids=range(len(CASES_2D)))
def test_conv2d_transpose_matches_torch(case):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    spatial, k, s, pad, op, d, c, f = case
    layer = make_2d(case, "float64", activation="relu")
    x = rng().standard_normal((3,) + spatial + (c,))
    y = layer.forward(x, training=True)
    dy = rng(7).standard_normal(y.shape)
    dx = layer.backward(dy)
    args = [_torch_args(spatial[i], k[i], s[i], d[i], pad, None if op is None else op[i]) for i in range(2)]
    xt = torch.tensor(x.transpose(0, 3, 1, 2), requires_grad=True)
    wt = torch.tensor(layer.params["kernel"].transpose(3, 2, 0, 1).copy(), requires_grad=True)  # (in, out, kh, kw)
    bt = torch.tensor(layer.params["bias"].copy(), requires_grad=True)
    yt = F.conv_transpose2d(xt, wt, bt, stride=s, padding=tuple(a[0] for a in args),
                            output_padding=tuple(a[1] for a in args), dilation=d)
    yt = torch.relu(yt[:, :, :args[0][2], :args[1][2]])
    yt.backward(torch.tensor(dy.transpose(0, 3, 1, 2)))
    np.testing.assert_allclose(y, yt.detach().numpy().transpose(0, 2, 3, 1), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(dx, xt.grad.numpy().transpose(0, 2, 3, 1), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(layer.grads["kernel"], wt.grad.numpy().transpose(2, 3, 1, 0), rtol=1e-10,
                               atol=1e-10)
    np.testing.assert_allclose(layer.grads["bias"], bt.grad.numpy(), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("case", CASES_1D, ids=range(len(CASES_1D)))
def test_conv1d_transpose_matches_torch(case):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    n, k, s, pad, op, d, c, f = case
    layer = make_1d(case, "float64")
    x = rng().standard_normal((3, n, c))
    y = layer.forward(x, training=True)
    dy = rng(7).standard_normal(y.shape)
    dx = layer.backward(dy)
    p, extra, out = _torch_args(n, k, s, d, pad, op)
    xt = torch.tensor(x.transpose(0, 2, 1), requires_grad=True)
    wt = torch.tensor(layer.params["kernel"].transpose(2, 1, 0).copy(), requires_grad=True)
    bt = torch.tensor(layer.params["bias"].copy(), requires_grad=True)
    yt = F.conv_transpose1d(xt, wt, bt, stride=s, padding=p, output_padding=extra, dilation=d)[:, :, :out]
    yt.backward(torch.tensor(dy.transpose(0, 2, 1)))
    np.testing.assert_allclose(y, yt.detach().numpy().transpose(0, 2, 1), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(dx, xt.grad.numpy().transpose(0, 2, 1), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(layer.grads["kernel"], wt.grad.numpy().transpose(2, 1, 0), rtol=1e-10,
                               atol=1e-10)


# ------------------------------------------------------------------ errors, config, models
def test_bad_arguments_and_inputs_name_the_layer():
    with pytest.raises(ValueError, match="up_a.*channels_last"):
        L.Conv2DTranspose(2, 3, data_format="channels_first", name="up_a")
    with pytest.raises(ValueError, match="up_b.*dilation_rate"):
        L.Conv2DTranspose(2, 3, strides=2, dilation_rate=2, name="up_b")
    with pytest.raises(ValueError, match="up_c.*output_padding"):
        L.Conv1DTranspose(2, 3, output_padding=-1, name="up_c")
    with pytest.raises(ValueError, match="up_d.*padding"):
        L.Conv1DTranspose(2, 3, padding="causal", name="up_d")
    with pytest.raises(ValueError, match="up_e.*filters"):
        L.Conv2DTranspose(0, 3, name="up_e")
    with pytest.raises(ValueError, match="up_f.*output would have size 0"):
        L.Conv2DTranspose(2, 2, padding="same", output_padding=0, name="up_f").build((None, 1, 3, 1))
    layer = L.Conv2DTranspose(2, 3, name="up_g")
    layer.build((None, 4, 4, 3))
    with pytest.raises(ValueError, match="up_g.*rank 4"):
        layer.forward(np.zeros((2, 4, 3), np.float32))
    with pytest.raises(ValueError, match="up_g.*last dimension 3"):
        layer.forward(np.zeros((2, 4, 4, 2), np.float32))
    with pytest.raises(ValueError, match="up_g.*NaN"):
        layer.forward(np.full((1, 4, 4, 3), np.nan, np.float32))
    with pytest.raises(ValueError, match="up_h.*rank 3"):
        L.Conv1DTranspose(2, 3, name="up_h").build((None, 4, 4, 1))


def test_config_roundtrip():
    layer = L.Conv2DTranspose(4, (3, 2), strides=(2, 1), padding="same", output_padding=(1, 0), activation="relu",
                              use_bias=False, name="t2")
    cfg = layer.get_config()
    assert cfg["output_padding"] == [1, 0] and cfg["kernel_size"] == [3, 2] and cfg["use_bias"] is False
    assert L.Conv2DTranspose.from_config(cfg).get_config() == cfg
    c1 = L.Conv1DTranspose(3, 4, strides=2, output_padding=1, dilation_rate=1, name="t1")
    assert c1.get_config()["output_padding"] == 1
    assert L.Conv1DTranspose.from_config(c1.get_config()).get_config() == c1.get_config()
    assert L.Conv1DTranspose(3, 4).get_config()["output_padding"] is None


def _unet(seed=0):
    inp = L.Input((8, 8, 1))
    d1 = L.Conv2D(4, 3, padding="same", activation="relu")(inp)
    d2 = L.Conv2D(8, 3, strides=2, padding="same", activation="relu")(d1)          # 4 x 4
    up = L.Conv2DTranspose(4, 2, strides=2, padding="same", activation="relu")(d2)  # 8 x 8
    cat = L.Concatenate()([up, d1])
    h = L.GroupNormalization(groups=4)(L.Conv2D(8, 3, padding="same", activation="relu")(cat))
    out = L.Conv2D(1, 1)(h)
    return nb.Model(inputs=inp, outputs=out, seed=seed)


def test_small_unet_trains_and_saves(tmp_path, one_thread):
    r = rng()
    x = r.random((32, 8, 8, 1)).astype(np.float32)
    y = (x > 0.5).astype(np.float32)  # a per-pixel target the model has to reproduce
    model = _unet()
    model.compile(optimizer=nb.optimizers.Adam(0.02), loss="mse")
    before = model.evaluate(x, y)
    model.fit(x, y, batch_size=8, epochs=15, verbose=0)
    after = model.evaluate(x, y)
    assert after < 0.5 * before, (before, after)
    path = tmp_path / "unet.nbm"
    model.save(path)
    again = nb.load_model(path)
    np.testing.assert_array_equal(again.predict(x[:4]), model.predict(x[:4]))
    assert [type(lyr).__name__ for lyr in again.layers].count("Conv2DTranspose") == 1


def test_kernel_bodies_stay_float32():
    from nbmodel.kernels import codes
    from nbmodel.kernels.cpu import conv as kconv
    from nbmodel.testing import float64_ops

    f = np.float32
    x = rng().standard_normal((2, 3, 3, 2)).astype(f)      # transposed-conv input (n, h, w, c)
    k2 = rng(1).standard_normal((2 * 2 * 3, 2)).astype(f)  # (kh*kw*filters, c)
    geo = (2, 2, 2, 2, 1, 1, 0, 0, 6, 6)                    # kh, kw, sh, sw, dh, dw, pt, pl, oh, ow
    out = np.zeros((2 * 36, 3), f)
    dcols = np.zeros((2 * 9, 12), f)
    assert float64_ops(kconv._transpose_forward_images, x, k2, np.zeros(3, f), codes.GELU, True, *geo, 0, 2, 2, 0,
                       dcols, out.copy(), out) == []
    dk, dx = np.zeros_like(k2), np.zeros_like(x)
    assert float64_ops(kconv._transpose_backward_images, x, k2, out.copy(), out, out.copy(), codes.GELU, True, True,
                       *geo, 0, 2, out.copy(), np.zeros(3, f), np.zeros(3, f), dcols, dk, dx) == []
