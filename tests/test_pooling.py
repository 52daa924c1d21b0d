"""Pooling layers as layer cases (reference for sizes that do not divide evenly, "valid" and
"same"; finite differences; on every device); backward against the reference, PyTorch
parity, errors."""
import numpy as np
import pytest

from nbmodel import layers as L
from nbmodel.kernels.reference import conv as conv_ref
from nbmodel.kernels.reference import pooling as ref
from nbmodel.testing import LayerCase

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
POOL_2D = {"max": L.MaxPooling2D, "avg": L.AveragePooling2D}
POOL_1D = {"max": L.MaxPooling1D, "avg": L.AveragePooling1D}
FORWARD = {"max": ref.max_pool_forward, "avg": ref.avg_pool_forward}
BACKWARD = {"max": ref.max_pool_backward, "avg": ref.avg_pool_backward}
GLOBAL = {"max": ref.global_max_forward, "avg": ref.global_avg_forward}
RTOL = {"float32": 1e-6, "float64": 1e-12}
ATOL = {"float32": 1e-6, "float64": 1e-12}


def rng(seed=0):
    return np.random.default_rng(seed)


def _pads(spatial, pool, strides, padding):
    strides = strides or pool
    t, b, oh = conv_ref.padding_amounts(spatial[0], pool[0], strides[0], 1, padding)
    lft, r, ow = conv_ref.padding_amounts(spatial[1], pool[1], strides[1], 1, padding)
    return (t, b, lft, r), strides, (oh, ow)


def _pads_1d(n, pool, strides, padding):
    return _pads((1, n), (1, pool), None if strides is None else (1, strides), padding)


# ------------------------------------------------------------------ layer cases
def pool2d_case(i, mode):
    spatial, pool, strides, padding = CASES_2D[i]
    pads, st, _ = _pads(spatial, pool, strides, padding)
    return LayerCase(f"{mode}-pool2d-{i}", lambda dt: POOL_2D[mode](pool, strides, padding=padding, dtype=dt),
                     inputs=lambda r: r.standard_normal((2,) + spatial + (3,)),
                     reference=lambda w, x: FORWARD[mode](x, pool, st, pads), rtol=RTOL, atol=ATOL)


def pool1d_case(i, mode):
    n, pool, strides, padding = CASES_1D[i]
    pads, st, _ = _pads_1d(n, pool, strides, padding)
    return LayerCase(f"{mode}-pool1d-{i}", lambda dt: POOL_1D[mode](pool, strides, padding=padding, dtype=dt),
                     inputs=lambda r: r.standard_normal((2, n, 3)),
                     reference=lambda w, x: FORWARD[mode](x[:, None], (1, pool), st, pads)[:, 0],
                     rtol=RTOL, atol={"float32": 1e-6, "float64": 0.0})


GLOBAL_CLASSES = {("avg", 2): L.GlobalAveragePooling2D, ("max", 2): L.GlobalMaxPooling2D,
                  ("avg", 1): L.GlobalAveragePooling1D, ("max", 1): L.GlobalMaxPooling1D}


def global_case(mode, rank, keepdims=False):
    shape = (3, 5, 4, 2) if rank == 2 else (3, 7, 2)
    cls = GLOBAL_CLASSES[mode, rank]

    def reference(w, x):
        y = GLOBAL[mode](x)
        return y.reshape((y.shape[0],) + (1,) * rank + (y.shape[1],)) if keepdims else y

    return LayerCase(f"global-{mode}-pool{rank}d" + ("-keepdims" if keepdims else ""),
                     lambda dt: cls(keepdims=keepdims, dtype=dt), inputs=lambda r: r.standard_normal(shape),
                     reference=reference, rtol={"float32": 1e-5, "float64": 1e-12},
                     atol={"float32": 1e-6, "float64": 0.0})


CASES = [pool2d_case(i, mode) for i in range(len(CASES_2D)) for mode in ("max", "avg")]
CASES += [pool1d_case(i, mode) for i in range(len(CASES_1D)) for mode in ("max", "avg")]
CASES += [global_case(mode, rank, keep) for mode in ("avg", "max") for rank in (2, 1) for keep in (False, True)]


@pytest.mark.parametrize("case", CASES, ids=str)
def test_layer_case(case, device):
    case.check(device)


# ------------------------------------------------------------------ backward, shapes
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("mode", ["max", "avg"])
@pytest.mark.parametrize("case", CASES_2D)
def test_pool2d_backward_matches_reference(case, mode, dtype):
    """Output shapes and backward against the reference (the layer cases compare the output)."""
    spatial, pool, strides, padding = case
    layer = POOL_2D[mode](pool, strides, padding=padding, dtype=dtype)
    x = rng().standard_normal((2,) + spatial + (3,)).astype(dtype)
    y = layer.forward(x, training=True)
    pads, st, (oh, ow) = _pads(spatial, pool, strides, padding)
    assert y.shape == (2, oh, ow, 3)
    assert layer.compute_output_shape((None,) + spatial + (3,)) == (None, oh, ow, 3)
    tol = 1e-6 if dtype == "float32" else 1e-12
    dy = rng(1).standard_normal(y.shape).astype(dtype)
    dx = layer.backward(dy)
    assert dx.shape == x.shape and dx.dtype == np.dtype(dtype)
    np.testing.assert_allclose(dx, BACKWARD[mode](x, dy, pool, st, pads), rtol=tol, atol=tol)


@pytest.mark.parametrize("mode", ["max", "avg"])
@pytest.mark.parametrize("case", CASES_1D)
def test_pool1d_backward_matches_reference(case, mode):
    n, pool, strides, padding = case
    layer = POOL_1D[mode](pool, strides, padding=padding, dtype="float64")
    x = rng().standard_normal((2, n, 3))
    y = layer.forward(x, training=True)
    pads, st, (_, ow) = _pads_1d(n, pool, strides, padding)
    assert y.shape == (2, ow, 3)
    assert layer.compute_output_shape((None, n, 3)) == (None, ow, 3)
    dy = rng(1).standard_normal(y.shape)
    np.testing.assert_allclose(layer.backward(dy),
                               BACKWARD[mode](x[:, None], dy[:, None], (1, pool), st, pads)[:, 0],
                               rtol=1e-12, atol=1e-12)


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


@pytest.mark.parametrize("cls,rank", [(L.GlobalAveragePooling2D, 2), (L.GlobalMaxPooling2D, 2),
                                      (L.GlobalAveragePooling1D, 1), (L.GlobalMaxPooling1D, 1)])
def test_global_pooling_shapes_and_config(cls, rank):
    """(the layer cases compare the outputs, with and without keepdims)"""
    shape = (3, 5, 4, 2) if rank == 2 else (3, 7, 2)
    x = rng().standard_normal(shape)
    assert cls(dtype="float64").forward(x, training=True).shape == (3, 2)
    assert cls().compute_output_shape((None,) + shape[1:]) == (None, 2)
    keep = cls(keepdims=True, dtype="float64")
    assert keep.forward(x).shape == (3,) + (1,) * rank + (2,)
    assert cls.from_config(keep.get_config()).keepdims


def test_config_roundtrip_and_default_strides():
    layer = L.MaxPooling2D((3, 2), padding="same", name="p")
    assert layer.strides == (3, 2)
    assert L.MaxPooling2D.from_config(layer.get_config()).get_config() == layer.get_config()
    p1 = L.AveragePooling1D(3, 2, name="p1")
    assert L.AveragePooling1D.from_config(p1.get_config()).get_config() == p1.get_config()


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
