"""Pooling layers: forward/backward vs the float64 reference (sizes that do not
divide evenly, "valid" and "same"), finite differences, PyTorch parity, errors."""
import numpy as np
import pytest

from nbmodel import layers as L
from nbmodel.kernels.reference import conv as conv_ref
from nbmodel.kernels.reference import pooling as ref
from nbmodel.testing import float64_ops, gradcheck

# (input spatial, pool, strides, padding)
CASES_2D = [
    ((4, 4), (2, 2), None, "valid"),
    ((5, 7), (2, 2), None, "valid"),       # does not divide evenly: last row/column dropped
    ((5, 7), (2, 2), None, "same"),        # ... or padded at the end
    ((7, 6), (3, 3), (2, 2), "same"),      # overlapping windows
    ((7, 6), (3, 2), (1, 2), "valid"),
    ((6, 5), (2, 3), (3, 1), "same"),
]
CASES_1D = [(7, 2, None, "valid"), (7, 2, None, "same"), (9, 3, 2, "same"), (8, 3, 1, "valid")]


def rng(seed=0):
    return np.random.default_rng(seed)


def _pads(spatial, pool, strides, padding):
    strides = strides or pool
    t, b, oh = conv_ref.padding_amounts(spatial[0], pool[0], strides[0], 1, padding)
    lft, r, ow = conv_ref.padding_amounts(spatial[1], pool[1], strides[1], 1, padding)
    return (t, b, lft, r), strides, (oh, ow)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("mode", ["max", "avg"])
@pytest.mark.parametrize("case", CASES_2D)
def test_pool2d_matches_reference(case, mode, dtype):
    spatial, pool, strides, padding = case
    cls = L.MaxPooling2D if mode == "max" else L.AveragePooling2D
    layer = cls(pool, strides, padding=padding, dtype=dtype)
    x = rng().standard_normal((2,) + spatial + (3,)).astype(dtype)
    y = layer.forward(x, training=True)
    pads, st, (oh, ow) = _pads(spatial, pool, strides, padding)
    assert y.shape == (2, oh, ow, 3) and y.dtype == np.dtype(dtype)
    assert layer.compute_output_shape((None,) + spatial + (3,)) == (None, oh, ow, 3)
    tol = 1e-6 if dtype == "float32" else 1e-12
    np.testing.assert_allclose(y, ref.pool2d(x, pool, st, pads, mode), rtol=tol, atol=tol)
    dy = rng(1).standard_normal(y.shape).astype(dtype)
    dx = layer.backward(dy)
    assert dx.shape == x.shape and dx.dtype == np.dtype(dtype)
    np.testing.assert_allclose(dx, ref.pool2d_backward(x, dy, pool, st, pads, mode), rtol=tol, atol=tol)


@pytest.mark.parametrize("mode", ["max", "avg"])
@pytest.mark.parametrize("case", CASES_1D)
def test_pool1d_matches_reference(case, mode):
    n, pool, strides, padding = case
    cls = L.MaxPooling1D if mode == "max" else L.AveragePooling1D
    layer = cls(pool, strides, padding=padding, dtype="float64")
    x = rng().standard_normal((2, n, 3))
    y = layer.forward(x, training=True)
    pads, st, (_, ow) = _pads((1, n), (1, pool), None if strides is None else (1, strides), padding)
    assert y.shape == (2, ow, 3)
    assert layer.compute_output_shape((None, n, 3)) == (None, ow, 3)
    np.testing.assert_allclose(y, ref.pool2d(x[:, None], (1, pool), st, pads, mode)[:, 0], rtol=1e-12)
    dy = rng(1).standard_normal(y.shape)
    np.testing.assert_allclose(layer.backward(dy),
                               ref.pool2d_backward(x[:, None], dy[:, None], (1, pool), st, pads, mode)[:, 0],
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("cls", [L.MaxPooling2D, L.AveragePooling2D])
@pytest.mark.parametrize("case", [CASES_2D[2], CASES_2D[3], CASES_2D[5]])
def test_pool2d_gradcheck(cls, case):
    spatial, pool, strides, padding = case
    gradcheck(cls(pool, strides, padding=padding), rng(3).standard_normal((2,) + spatial + (2,)))


@pytest.mark.parametrize("cls", [L.MaxPooling1D, L.AveragePooling1D])
def test_pool1d_gradcheck(cls):
    gradcheck(cls(3, 2, padding="same"), rng(3).standard_normal((2, 9, 2)))


def test_same_average_counts_only_real_elements():
    layer = L.AveragePooling2D(2, padding="same", dtype="float64")
    y = layer.forward(np.ones((1, 3, 3, 1)))
    np.testing.assert_array_equal(y, np.ones((1, 2, 2, 1)))


def test_max_pool_routes_gradient_to_the_max():
    x = np.array([[1.0, 5.0, 2.0], [0.0, -1.0, 7.0], [3.0, 4.0, 6.0]]).reshape(1, 3, 3, 1)
    layer = L.MaxPooling2D(2, padding="same", dtype="float64")
    y = layer.forward(x, training=True)
    np.testing.assert_array_equal(y[0, :, :, 0], [[5.0, 7.0], [4.0, 6.0]])
    dx = layer.backward(np.array([1.0, 2.0, 3.0, 4.0]).reshape(1, 2, 2, 1))
    expected = np.zeros((3, 3))
    expected[0, 1], expected[1, 2], expected[2, 1], expected[2, 2] = 1, 2, 3, 4
    np.testing.assert_array_equal(dx[0, :, :, 0], expected)


@pytest.mark.parametrize("cls,mode,rank", [(L.GlobalAveragePooling2D, "avg", 2), (L.GlobalMaxPooling2D, "max", 2),
                                           (L.GlobalAveragePooling1D, "avg", 1), (L.GlobalMaxPooling1D, "max", 1)])
def test_global_pooling(cls, mode, rank):
    shape = (3, 5, 4, 2) if rank == 2 else (3, 7, 2)
    x = rng().standard_normal(shape)
    layer = cls(dtype="float64")
    y = layer.forward(x, training=True)
    assert y.shape == (3, 2) and layer.compute_output_shape((None,) + shape[1:]) == (None, 2)
    np.testing.assert_allclose(y, ref.global_pool(x, mode), rtol=1e-12)
    gradcheck(cls(), x)
    x32 = x.astype(np.float32)
    y32 = cls().forward(x32)
    assert y32.dtype == np.float32
    np.testing.assert_allclose(y32, ref.global_pool(x32, mode), rtol=1e-5, atol=1e-6)
    keep = cls(keepdims=True, dtype="float64")
    assert keep.forward(x).shape == (3,) + (1,) * rank + (2,)
    assert cls.from_config(keep.get_config()).keepdims


def test_config_roundtrip_and_default_strides():
    layer = L.MaxPooling2D((3, 2), padding="same", name="p")
    assert layer.strides == (3, 2)
    assert L.MaxPooling2D.from_config(layer.get_config()).get_config() == layer.get_config()
    p1 = L.AveragePooling1D(3, 2, name="p1")
    assert L.AveragePooling1D.from_config(p1.get_config()).get_config() == p1.get_config()


def test_float32_kernels_stay_float32():
    from nbmodel.kernels.cpu import pooling as k

    x = rng().standard_normal((2, 5, 5, 3)).astype(np.float32)
    y = np.empty((2, 3, 3, 3), np.float32)
    arg = np.empty(y.shape, np.int32)
    assert float64_ops(k.max_pool_forward, x, 2, 2, 2, 2, 0, 0, y, arg, 1) == []
    assert float64_ops(k.avg_pool_forward, x, 2, 2, 2, 2, 0, 0, y, 1) == []
    assert float64_ops(k.avg_pool_backward, y, 2, 2, 2, 2, 0, 0, x, 1) == []
    x3 = x.reshape(2, 25, 3)
    g = np.empty((2, 3), np.float32)
    assert float64_ops(k.global_avg_forward, x3, np.empty(3, np.float32), g) == []
    assert float64_ops(k.global_avg_backward, g, x3) == []


def test_bad_input_names_the_layer():
    layer = L.MaxPooling2D(3, name="pool_a")
    with pytest.raises(ValueError, match="pool_a.*rank 4"):
        layer.forward(np.zeros((2, 6, 3), np.float32))
    with pytest.raises(ValueError, match="pool_b.*larger than the padded input"):
        L.MaxPooling2D(3, name="pool_b").forward(np.zeros((1, 2, 6, 1), np.float32))
    with pytest.raises(ValueError, match="pool_c.*larger than the padded input"):
        L.AveragePooling1D(4, name="pool_c").build((None, 3, 2))
    with pytest.raises(ValueError, match="pool_d.*padding"):
        L.MaxPooling1D(2, padding="causal", name="pool_d")
    with pytest.raises(ValueError, match="pool_e.*NaN"):
        L.AveragePooling2D(2, name="pool_e").forward(np.full((1, 4, 4, 1), np.nan))
    with pytest.raises(ValueError, match="gpool.*rank 3"):
        L.GlobalMaxPooling1D(name="gpool").forward(np.zeros((2, 3, 4, 1)))
    with pytest.raises(ValueError, match="pool_f.*pool_size"):
        L.MaxPooling2D((2, 0), name="pool_f")


@pytest.mark.parametrize("case", [CASES_2D[1], CASES_2D[4], CASES_2D[3]])
def test_matches_torch(case):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    spatial, pool, strides, padding = case
    x = rng().standard_normal((2,) + spatial + (3,))
    dy_seed = rng(2)
    pads, st, _ = _pads(spatial, pool, strides, padding)
    for cls, fn in ((L.MaxPooling2D, "max"), (L.AveragePooling2D, "avg")):
        layer = cls(pool, strides, padding=padding, dtype="float64")
        y = layer.forward(x, training=True)
        dy = dy_seed.standard_normal(y.shape)
        dx = layer.backward(dy)
        xt = torch.tensor(x.transpose(0, 3, 1, 2), requires_grad=True)
        t, b, lft, r = pads
        if fn == "max":
            yt = F.max_pool2d(F.pad(xt, (lft, r, t, b), value=-np.inf), pool, st)
        else:
            # Keras divides by the real elements: sum pooling over a zero pad / count of real elements
            ones = F.pad(torch.ones_like(xt), (lft, r, t, b))
            yt = F.avg_pool2d(F.pad(xt, (lft, r, t, b)), pool, st) / F.avg_pool2d(ones, pool, st)
        yt.backward(torch.tensor(dy.transpose(0, 3, 1, 2)))
        np.testing.assert_allclose(y, yt.detach().numpy().transpose(0, 2, 3, 1), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(dx, xt.grad.numpy().transpose(0, 2, 3, 1), rtol=1e-12, atol=1e-12)


def test_threaded_passes_match_serial():
    # blocks of images across threads must give exactly the serial result
    from nbmodel.kernels.cpu import pooling as k

    x = rng().standard_normal((5, 7, 6, 3))
    y_s, y_p = np.zeros((5, 4, 3, 3)), np.zeros((5, 4, 3, 3))
    a_s, a_p = np.zeros(y_s.shape, np.int32), np.zeros(y_s.shape, np.int32)
    k._max_pool_forward(x, 3, 3, 2, 2, 1, 1, 0, 5, y_s, a_s)
    k._max_pool_forward_par(x, 3, 3, 2, 2, 1, 1, y_p, a_p, 2)
    np.testing.assert_array_equal(y_s, y_p)
    np.testing.assert_array_equal(a_s, a_p)
    dx_s, dx_p = np.ones_like(x), np.ones_like(x)
    k._max_pool_backward(y_s, a_s, 0, 5, dx_s)
    k._max_pool_backward_par(y_s, a_s, dx_p, 3)
    np.testing.assert_array_equal(dx_s, dx_p)
    k._avg_pool_forward(x, 3, 3, 2, 2, 1, 1, 0, 5, y_s)
    k._avg_pool_forward_par(x, 3, 3, 2, 2, 1, 1, y_p, 2)
    np.testing.assert_array_equal(y_s, y_p)
    k._avg_pool_backward(y_s, 3, 3, 2, 2, 1, 1, 0, 5, dx_s)
    k._avg_pool_backward_par(y_s, 3, 3, 2, 2, 1, 1, dx_p, 3)
    np.testing.assert_array_equal(dx_s, dx_p)
