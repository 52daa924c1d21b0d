"""Reshaping layers (UpSampling1D/2D, ZeroPadding1D/2D, Cropping1D/2D, Permute, RepeatVector)
as layer cases (reference, finite differences, on every device); Keras arguments, defaults,
shapes, configs and errors; the kernels' summation order; PyTorch parity; a model that trains."""
import numpy as np
import pytest

import nbmodel as nb
from nbmodel import layers as L
from nbmodel.kernels.reference import reshaping as ref
from nbmodel.testing import LayerCase

EXACT = {"float32": 0.0, "float64": 0.0}


def rng(seed=0):
    return np.random.default_rng(seed)


def case(name, make, shape, reference):
    return LayerCase(name, make, inputs=lambda r: r.standard_normal(shape), reference=reference,
                     rtol=EXACT, atol=EXACT)


CASES = [
    case("upsampling1d", lambda dt: L.UpSampling1D(dtype=dt), (2, 3, 2),
         lambda w, x: ref.upsample_nearest(x, (2,))),
    case("upsampling1d-3", lambda dt: L.UpSampling1D(3, dtype=dt), (2, 2, 3),
         lambda w, x: ref.upsample_nearest(x, (3,))),
    case("upsampling2d", lambda dt: L.UpSampling2D(dtype=dt), (2, 2, 3, 2),
         lambda w, x: ref.upsample_nearest(x, (2, 2))),
    case("upsampling2d-2x3", lambda dt: L.UpSampling2D((2, 3), dtype=dt), (1, 2, 2, 3),
         lambda w, x: ref.upsample_nearest(x, (2, 3))),
    case("upsampling2d-height-only", lambda dt: L.UpSampling2D((3, 1), dtype=dt), (2, 2, 2, 1),
         lambda w, x: ref.upsample_nearest(x, (3, 1))),
    case("upsampling2d-width-only", lambda dt: L.UpSampling2D((1, 2), dtype=dt), (2, 2, 2, 1),
         lambda w, x: ref.upsample_nearest(x, (1, 2))),
    LayerCase("upsampling2d-bilinear", lambda dt: L.UpSampling2D(interpolation="bilinear", dtype=dt),
              inputs=lambda r: r.standard_normal((2, 3, 2, 2)),
              reference=lambda w, x: ref.upsample_bilinear(x, (2, 2)),
              rtol={"float32": 1e-6, "float64": 1e-14}, atol={"float32": 1e-6, "float64": 1e-14}),
    LayerCase("upsampling2d-bilinear-3x4", lambda dt: L.UpSampling2D((3, 4), interpolation="bilinear", dtype=dt),
              inputs=lambda r: r.standard_normal((1, 3, 2, 2)),
              reference=lambda w, x: ref.upsample_bilinear(x, (3, 4)),
              rtol={"float32": 1e-6, "float64": 1e-14}, atol={"float32": 1e-6, "float64": 1e-14}),
    LayerCase("upsampling2d-bilinear-width-only", lambda dt: L.UpSampling2D((1, 3), interpolation="BILINEAR",
                                                                            dtype=dt),
              inputs=lambda r: r.standard_normal((2, 2, 1, 2)),  # a single column: every output copies it
              reference=lambda w, x: ref.upsample_bilinear(x, (1, 3)),
              rtol={"float32": 1e-6, "float64": 1e-14}, atol={"float32": 1e-6, "float64": 1e-14}),
    case("zeropadding1d", lambda dt: L.ZeroPadding1D(dtype=dt), (2, 3, 2),
         lambda w, x: ref.pad_2d(x[:, None], 0, 0, 1, 1)[:, 0]),
    case("zeropadding1d-asym", lambda dt: L.ZeroPadding1D((2, 0), dtype=dt), (2, 3, 2),
         lambda w, x: ref.pad_2d(x[:, None], 0, 0, 2, 0)[:, 0]),
    case("zeropadding2d", lambda dt: L.ZeroPadding2D(dtype=dt), (2, 2, 3, 2),
         lambda w, x: ref.pad_2d(x, 1, 1, 1, 1)),
    case("zeropadding2d-hw", lambda dt: L.ZeroPadding2D((2, 1), dtype=dt), (1, 2, 3, 2),
         lambda w, x: ref.pad_2d(x, 2, 2, 1, 1)),
    case("zeropadding2d-explicit", lambda dt: L.ZeroPadding2D(((1, 0), (0, 2)), dtype=dt), (2, 2, 3, 2),
         lambda w, x: ref.pad_2d(x, 1, 0, 0, 2)),
    case("cropping1d", lambda dt: L.Cropping1D(dtype=dt), (2, 5, 2),
         lambda w, x: ref.crop_2d(x[:, None], 0, 0, 1, 1)[:, 0]),
    case("cropping1d-asym", lambda dt: L.Cropping1D((0, 2), dtype=dt), (2, 5, 2),
         lambda w, x: ref.crop_2d(x[:, None], 0, 0, 0, 2)[:, 0]),
    case("cropping2d", lambda dt: L.Cropping2D(1, dtype=dt), (2, 4, 5, 2),
         lambda w, x: ref.crop_2d(x, 1, 1, 1, 1)),
    case("cropping2d-explicit", lambda dt: L.Cropping2D(((2, 0), (1, 2)), dtype=dt), (2, 4, 5, 2),
         lambda w, x: ref.crop_2d(x, 2, 0, 1, 2)),
    case("permute-swap", lambda dt: L.Permute((2, 1), dtype=dt), (2, 3, 4),
         lambda w, x: ref.permute(x, (0, 2, 1))),
    case("permute-3", lambda dt: L.Permute((3, 1, 2), dtype=dt), (2, 3, 4, 2),
         lambda w, x: ref.permute(x, (0, 3, 1, 2))),
    case("permute-identity", lambda dt: L.Permute((1, 2), dtype=dt), (2, 3, 2),
         lambda w, x: x),
    case("repeatvector", lambda dt: L.RepeatVector(3, dtype=dt), (2, 4),
         lambda w, x: ref.repeat_rows(x, 3)),
]


@pytest.mark.parametrize("case", CASES, ids=str)
def test_layer_case(case, device):
    case.check(device)


# ------------------------------------------------------------------ Keras arguments and shapes
def test_keras_defaults_and_output_shapes():
    assert L.UpSampling1D().size == (2,)
    up = L.UpSampling2D()
    assert up.size == (2, 2) and up.interpolation == "nearest"
    assert L.UpSampling2D(3).size == (3, 3)
    assert L.ZeroPadding1D().amounts == ((1, 1),)
    assert L.ZeroPadding2D().amounts == ((1, 1), (1, 1))
    assert L.ZeroPadding2D((1, 2)).amounts == ((1, 1), (2, 2))
    assert L.Cropping1D().amounts == ((1, 1),)
    assert L.Cropping2D().amounts == ((0, 0), (0, 0))
    assert L.UpSampling2D((2, 3)).compute_output_shape((None, 4, None, 5)) == (None, 8, None, 5)
    assert L.UpSampling1D(3).compute_output_shape((None, 4, 5)) == (None, 12, 5)
    assert L.ZeroPadding2D(((1, 0), (2, 3))).compute_output_shape((None, 4, 5, 2)) == (None, 5, 10, 2)
    assert L.Cropping2D(((1, 0), (2, 1))).compute_output_shape((None, 4, 5, 2)) == (None, 3, 2, 2)
    assert L.Cropping1D((1, 2)).compute_output_shape((None, 4, 2)) == (None, 1, 2)
    assert L.Permute((2, 1)).compute_output_shape((None, 3, 4)) == (None, 4, 3)
    assert L.RepeatVector(5).compute_output_shape((None, 3)) == (None, 5, 3)


@pytest.mark.parametrize("layer", [
    L.UpSampling1D(3), L.UpSampling2D((2, 3)), L.UpSampling2D(interpolation="bilinear"),
    L.ZeroPadding1D((1, 2)), L.ZeroPadding2D(((1, 0), (2, 3))),
    L.Cropping1D((0, 1)), L.Cropping2D(((1, 0), (0, 1))), L.Permute((3, 1, 2)), L.RepeatVector(2),
], ids=lambda lyr: type(lyr).__name__)
def test_get_config_round_trip(layer):
    cfg = layer.get_config()
    clone = type(layer).from_config(cfg)
    assert clone.get_config() == cfg
    shape = {L.RepeatVector: (2, 3), L.Permute: (2, 3, 2, 2)}.get(
        type(layer), (2, 3, 4, 2) if type(layer).__name__.endswith("2D") else (2, 4, 2))
    x = rng().standard_normal(shape)
    np.testing.assert_array_equal(clone(x), layer(x))


def test_bad_arguments_name_the_layer():
    with pytest.raises(ValueError, match="up.*channels_last"):
        L.UpSampling2D(data_format="channels_first", name="up")
    with pytest.raises(ValueError, match="up.*bicubic.*not supported"):
        L.UpSampling2D(interpolation="bicubic", name="up")
    with pytest.raises(ValueError, match="up.*unknown interpolation"):
        L.UpSampling2D(interpolation="cubicle", name="up")
    with pytest.raises(ValueError, match="up.*size"):
        L.UpSampling1D(0, name="up")
    with pytest.raises(ValueError, match="pad.*padding"):
        L.ZeroPadding2D(((1, 2, 3), (0, 0)), name="pad")
    with pytest.raises(ValueError, match="pad.*padding"):
        L.ZeroPadding1D(-1, name="pad")
    with pytest.raises(ValueError, match="pad.*channels_last"):
        L.ZeroPadding2D(data_format="channels_first", name="pad")
    with pytest.raises(ValueError, match="crop.*cropping"):
        L.Cropping2D("all", name="crop")
    with pytest.raises(ValueError, match="perm.*dims"):
        L.Permute((1, 3), name="perm")
    with pytest.raises(ValueError, match="perm.*dims"):
        L.Permute((0, 1), name="perm")
    with pytest.raises(ValueError, match="rep.*n must"):
        L.RepeatVector(0, name="rep")


def test_bad_inputs_name_the_layer():
    x4 = np.ones((2, 3, 4, 2))
    with pytest.raises(ValueError, match="up.*rank 3"):
        L.UpSampling1D(name="up")(x4)
    with pytest.raises(ValueError, match="crop.*cropping.*size 4"):
        L.Cropping2D(((0, 0), (2, 2)), name="crop")(x4)
    with pytest.raises(ValueError, match="crop.*cropping"):
        L.Cropping1D((2, 2), name="crop").compute_output_shape((None, 4, 3))
    with pytest.raises(ValueError, match="perm.*rank 3"):
        L.Permute((2, 1), name="perm")(x4)
    with pytest.raises(ValueError, match="rep.*rank 2"):
        L.RepeatVector(2, name="rep")(np.ones((2, 3, 4)))
    with pytest.raises(ValueError, match="pad.*NaN"):
        L.ZeroPadding1D(name="pad")(np.full((1, 2, 1), np.nan))


# ------------------------------------------------------------------ kernels
def test_sum_rows_adds_the_copies_in_order():
    """The gradient of a repeat adds copy 0, then 1, ... : the same float32 bits as that sequence."""
    from nbmodel.backend import get_device

    k = get_device("cpu").kernels("reshaping")
    src = (rng(1).standard_normal((3, 7, 5)) * 10.0 ** rng(2).integers(-6, 6, (3, 7, 5))).astype(np.float32)
    out = np.empty((3, 5), np.float32)
    k.sum_rows(src, out)
    want = src[:, 0].copy()
    for j in range(1, 7):
        want = want + src[:, j]
    np.testing.assert_array_equal(out, want)


def test_permute_any_rank_matches_numpy():
    from nbmodel.backend import get_device

    k = get_device("cpu").kernels("reshaping")
    x = rng().standard_normal((2, 3, 1, 4, 2))
    for axes in [(0, 4, 2, 1, 3), (0, 1, 2, 3, 4), (0, 3, 4, 1, 2)]:
        out = np.empty(np.transpose(x, axes).shape)
        k.permute(x, axes, out)
        np.testing.assert_array_equal(out, ref.permute(x, axes))


def test_float32_kernels_stay_in_float32():
    from nbmodel.kernels.cpu import reshaping as kr
    from nbmodel.testing import float64_ops

    x = np.ones((2, 3, 4), np.float32)
    assert float64_ops(kr._sum_rows, x, np.empty((2, 4), np.float32)) == []
    assert float64_ops(kr._pad_2d, x.reshape(1, 2, 3, 4), 1, 1, np.empty((1, 4, 5, 4), np.float32)) == []


# ------------------------------------------------------------------ PyTorch parity
def _torch_grad(fn, x, dy):
    torch = pytest.importorskip("torch")
    xt = torch.tensor(x, requires_grad=True)
    yt = fn(xt)
    yt.backward(torch.tensor(dy))
    return yt.detach().numpy(), xt.grad.numpy()


def _ours(layer, x, dy):
    y = np.array(layer.forward(x, training=True))
    return y, np.array(layer.backward(dy))


@pytest.mark.parametrize("size", [(2, 2), (2, 3), (1, 3)])
def test_upsampling2d_matches_torch_nearest(size):
    torch = pytest.importorskip("torch")
    x = rng().standard_normal((2, 3, 2, 2))
    dy = rng(1).standard_normal((2, 3 * size[0], 2 * size[1], 2))
    up = torch.nn.Upsample(scale_factor=size, mode="nearest")
    want_y, want_dx = _torch_grad(lambda t: up(t.permute(0, 3, 1, 2)).permute(0, 2, 3, 1), x, dy)
    y, dx = _ours(L.UpSampling2D(size, dtype="float64"), x, dy)
    np.testing.assert_array_equal(y, want_y)
    np.testing.assert_allclose(dx, want_dx, rtol=1e-12)


@pytest.mark.parametrize("size", [(2, 2), (3, 2), (1, 4)])
def test_upsampling2d_bilinear_matches_torch(size):
    torch = pytest.importorskip("torch")
    x = rng().standard_normal((2, 3, 4, 2))
    dy = rng(1).standard_normal((2, 3 * size[0], 4 * size[1], 2))
    up = torch.nn.Upsample(scale_factor=size, mode="bilinear", align_corners=False)
    want_y, want_dx = _torch_grad(lambda t: up(t.permute(0, 3, 1, 2)).permute(0, 2, 3, 1), x, dy)
    y, dx = _ours(L.UpSampling2D(size, interpolation="bilinear", dtype="float64"), x, dy)
    np.testing.assert_allclose(y, want_y, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(dx, want_dx, rtol=1e-12, atol=1e-14)


def test_upsampling1d_matches_torch_nearest():
    torch = pytest.importorskip("torch")
    x = rng().standard_normal((2, 4, 3))
    dy = rng(1).standard_normal((2, 12, 3))
    up = torch.nn.Upsample(scale_factor=3, mode="nearest")
    want_y, want_dx = _torch_grad(lambda t: up(t.permute(0, 2, 1)).permute(0, 2, 1), x, dy)
    y, dx = _ours(L.UpSampling1D(3, dtype="float64"), x, dy)
    np.testing.assert_array_equal(y, want_y)
    np.testing.assert_allclose(dx, want_dx, rtol=1e-12)


def test_padding_and_cropping_match_torch_pad():
    pytest.importorskip("torch")
    import torch.nn.functional as F

    x = rng().standard_normal((2, 3, 4, 2))
    # F.pad on NHWC pads the last axes first: (c_lo, c_hi, w_lo, w_hi, h_lo, h_hi); negative pads crop
    dy = rng(1).standard_normal((2, 4, 7, 2))
    want = _torch_grad(lambda t: F.pad(t, (0, 0, 2, 1, 1, 0)), x, dy)
    got = _ours(L.ZeroPadding2D(((1, 0), (2, 1)), dtype="float64"), x, dy)
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)
    dy = rng(2).standard_normal((2, 2, 1, 2))
    want = _torch_grad(lambda t: F.pad(t, (0, 0, -1, -2, 0, -1)), x, dy)
    got = _ours(L.Cropping2D(((0, 1), (1, 2)), dtype="float64"), x, dy)
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)
    x1 = rng(3).standard_normal((2, 5, 3))
    dy = rng(4).standard_normal((2, 7, 3))
    want = _torch_grad(lambda t: F.pad(t, (0, 0, 2, 0)), x1, dy)
    got = _ours(L.ZeroPadding1D((2, 0), dtype="float64"), x1, dy)
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)


def test_permute_and_repeatvector_match_torch():
    pytest.importorskip("torch")
    x = rng().standard_normal((2, 3, 4, 2))
    dy = rng(1).standard_normal((2, 2, 3, 4))
    want = _torch_grad(lambda t: t.permute(0, 3, 1, 2), x, dy)
    got = _ours(L.Permute((3, 1, 2), dtype="float64"), x, dy)
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)
    v = rng(2).standard_normal((3, 4))
    dy = rng(3).standard_normal((3, 5, 4))
    want = _torch_grad(lambda t: t.unsqueeze(1).expand(3, 5, 4), v, dy)
    got = _ours(L.RepeatVector(5, dtype="float64"), v, dy)
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_allclose(got[1], want[1], rtol=1e-12)


# ------------------------------------------------------------------ in a model
def test_unet_like_model_trains_and_round_trips(tmp_path):
    """Conv -> pool -> UpSampling2D, a skip connection cropped to match, Concatenate: fit lowers the loss;
    save / load gives the same predictions."""
    inp = L.Input((6, 6, 1))
    skip = L.Conv2D(2, 3, padding="same", activation="relu")(inp)                  # (6, 6, 2)
    down = L.MaxPooling2D(2)(L.ZeroPadding2D(1)(skip))                              # (4, 4, 2)
    up = L.UpSampling2D()(L.Conv2D(2, 3, padding="same", activation="relu")(down))  # (8, 8, 2)
    up = L.Cropping2D(1)(up)                                                        # (6, 6, 2)
    h = L.Concatenate()([skip, up])
    h = L.Permute((3, 1, 2))(h)                                                     # (4, 6, 6)
    out = L.Dense(1)(L.Flatten()(h))
    model = nb.Model(inputs=inp, outputs=out, seed=0)
    r = rng(5)
    x = r.standard_normal((32, 6, 6, 1)).astype(np.float32)
    y = x.mean(axis=(1, 2, 3))[:, None] * 3.0
    model.compile(optimizer="adam", loss="mse")
    before = model.evaluate(x, y)
    model.fit(x, y, batch_size=8, epochs=15, verbose=0)
    after = model.evaluate(x, y)
    assert after < 0.5 * before
    model.save(tmp_path / "m.nbm")
    loaded = nb.load_model(tmp_path / "m.nbm")
    np.testing.assert_array_equal(loaded.predict(x), model.predict(x))


def test_sequence_model_with_repeatvector_and_1d_layers_trains():
    model = nb.Sequential([L.Input((4,)), L.Dense(3), L.RepeatVector(4), L.ZeroPadding1D((1, 0)),
                           L.Cropping1D((0, 1)), L.UpSampling1D(2), L.Flatten(), L.Dense(1)], seed=0)
    r = rng(6)
    x = r.standard_normal((32, 4)).astype(np.float32)
    y = x[:, :1] - x[:, 1:2]
    model.compile(optimizer="adam", loss="mse")
    before = model.evaluate(x, y)
    model.fit(x, y, batch_size=8, epochs=20, verbose=0)
    assert model.evaluate(x, y) < 0.5 * before


def test_layers_compute_only_through_device_kernels():
    """Every new layer (reshaping family, merges, noise-shaped and spatial dropout) on the test-only
    recording device of tests/test_device_seam.py: no NumPy math outside kernels, the same training
    as on "cpu" bit for bit."""
    import test_device_seam as seam

    from nbmodel.backend import register_device, unregister_device

    def build():
        inp = L.Input((6, 6, 1))
        skip = L.Conv2D(2, 3, padding="same")(inp)
        down = L.MaxPooling2D(2)(L.ZeroPadding2D(1)(skip))
        ups = [L.Cropping2D(1)(L.UpSampling2D(interpolation=i)(down)) for i in ("nearest", "bilinear")]
        h = L.SpatialDropout2D(0.2, seed=1)(L.Permute((3, 1, 2))(L.Concatenate()([skip, *ups])))
        f = L.Flatten()(h)
        a, b = L.Dense(4)(f), L.Dense(4)(f)
        merged = [L.Subtract()([a, b]), L.Multiply()([a, b]), L.Average()([a, b]), L.Maximum()([a, b, a]),
                  L.Minimum()([a, b]), L.Dot(1, normalize=True)([a, b])]
        h = L.Dropout(0.3, noise_shape=(None, 1), seed=2)(L.Concatenate()(merged))
        h = L.UpSampling1D(2)(L.Cropping1D((1, 0))(L.ZeroPadding1D(1)(L.RepeatVector(3)(h))))
        model = nb.Model(inputs=inp, outputs=L.Dense(1)(L.Flatten()(h)), seed=0)
        model.compile(optimizer="adam", loss="mse")
        return model

    x = rng(8).standard_normal((8, 6, 6, 1)).astype(np.float32)
    y = x.mean(axis=(1, 2, 3))[:, None]
    reference = build()
    want = reference.fit(x, y, epochs=2, batch_size=4, verbose=0).history
    device = seam.RecordingDevice()
    register_device(seam.NAME, lambda: device)
    try:
        model = build().to(seam.NAME)
        device.reset()
        got = model.fit(x, y, epochs=2, batch_size=4, verbose=0).history
        assert device.host_math == [], sorted(set(device.host_math))
        assert {"reshaping.resize_linear_backward", "reshaping.sum_rows", "array.extremum_into",
                "array.batch_matmul", "array.l2_normalize_backward"} <= set(device.calls)
        assert got == want
        np.testing.assert_array_equal(model.predict(x), reference.predict(x))
    finally:
        nb.config.set_default_device("cpu")
        unregister_device(seam.NAME)
