"""LayerNormalization against the float64 reference, finite differences and torch's layer_norm."""
import numpy as np
import pytest

from nbmodel import layers as L
from nbmodel.kernels.reference import norm as ref
from nbmodel.testing import float64_ops, gradcheck


def rng(seed=0):
    return np.random.default_rng(seed)


def built(shape, dtype=None, seed=0, **kw):
    layer = L.LayerNormalization(dtype=dtype, seed=seed, **kw)
    layer.build(shape)
    r = rng(seed + 1)
    for p in layer.params.values():
        p[...] = r.standard_normal(p.shape)
    return layer


def test_defaults_params_and_epsilon():
    layer = L.LayerNormalization()
    assert layer.epsilon == 1e-3
    layer.build((None, 3, 5))
    assert list(layer.params) == ["gamma", "beta"]
    assert layer.params["gamma"].shape == (5,) and (layer.params["gamma"] == 1).all()
    assert (layer.params["beta"] == 0).all()


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("shape", [(6, 5), (2, 3, 7)])
def test_forward_matches_reference(dtype, shape):
    x = (rng().standard_normal(shape) * 3 + 2).astype(dtype)
    layer = built(shape, dtype)
    y = layer.forward(x)
    assert y.dtype == np.dtype(dtype) and y.shape == shape
    e = ref.layer_norm(x, layer.params["gamma"], layer.params["beta"], 1e-3)
    tol = 1e-5 if dtype == "float32" else 1e-12
    np.testing.assert_allclose(y, e, rtol=tol, atol=tol)


def test_backward_matches_reference(float64):
    x = rng().standard_normal((2, 3, 6))
    layer = built(x.shape)
    layer.forward(x, training=True)
    dy = rng(2).standard_normal(x.shape)
    dx = layer.backward(dy)
    edx, eg, eb = ref.layer_norm_backward(x, layer.params["gamma"], dy, 1e-3)
    np.testing.assert_allclose(dx, edx, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(layer.grads["gamma"], eg, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(layer.grads["beta"], eb, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("kw", [{}, {"center": False}, {"scale": False}, {"epsilon": 1e-5}, {"axis": [-2, -1]}])
def test_gradients_finite_differences(kw):
    x = rng().standard_normal((3, 2, 4))
    layer = built(x.shape, **kw)
    gradcheck(layer, x)
    names = [n for n, on in (("gamma", kw.get("scale", True)), ("beta", kw.get("center", True))) if on]
    assert list(layer.params) == names


def test_multiple_axes_normalize_the_trailing_block():
    x = rng().standard_normal((3, 2, 4))
    layer = built(x.shape, axis=[1, 2], dtype="float64")
    assert layer.params["gamma"].shape == (2, 4)
    y = layer.forward(x)
    flat = x.reshape(3, 8)
    e = ref.layer_norm(flat, layer.params["gamma"].reshape(-1), layer.params["beta"].reshape(-1), 1e-3)
    np.testing.assert_allclose(y.reshape(3, 8), e, rtol=1e-12)


def test_constant_rows_are_finite():
    x = np.ones((4, 8), np.float32) * 3
    y = L.LayerNormalization()(x)
    assert np.isfinite(y).all() and np.allclose(y, 0)


def test_matches_torch_layer_norm():
    torch = pytest.importorskip("torch")
    x = (rng().standard_normal((4, 5, 16)) * 2 + 1).astype(np.float32)
    layer = built(x.shape, epsilon=1e-5)
    y = layer.forward(x, training=True)
    dy = rng(3).standard_normal(x.shape).astype(np.float32)
    dx = layer.backward(dy)
    tx = torch.tensor(x, requires_grad=True)
    tg = torch.tensor(layer.params["gamma"], requires_grad=True)
    tb = torch.tensor(layer.params["beta"], requires_grad=True)
    ty = torch.nn.functional.layer_norm(tx, (16,), tg, tb, eps=1e-5)
    ty.backward(torch.from_numpy(dy))
    np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dx, tx.grad.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(layer.grads["gamma"], tg.grad.numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(layer.grads["beta"], tb.grad.numpy(), rtol=1e-4, atol=1e-4)


def test_kernels_stay_float32():
    from nbmodel.kernels.cpu import norm as K

    f = np.float32
    x = rng().standard_normal((4, 6)).astype(f)
    g = np.ones(6, f)
    z = np.zeros((4, 6), f)
    m, r = np.zeros(4, f), np.ones(4, f)
    assert float64_ops(K.layer_norm_forward, x, g, g, f(1e-3), True, True, z, m, r) == []
    assert float64_ops(K.layer_norm_backward, x, g, m, r, x, True, True, z, g.copy(), g.copy()) == []
    assert float64_ops(K.add_layer_norm_forward, x, x, g, g, f(1e-3), z, z.copy(), m, r) == []
    assert float64_ops(K.layer_norm_backward_sum, x, g, m, r, x, x, z, g.copy(), g.copy()) == []


def test_bad_input_raises_errors_naming_the_layer():
    layer = L.LayerNormalization(name="ln")
    layer.build((None, 3, 5))
    with pytest.raises(ValueError, match="^ln: .*trailing dimensions"):
        layer.forward(np.ones((2, 3, 4)))
    with pytest.raises(ValueError, match="^ln: .*NaN"):
        layer.forward(np.full((2, 3, 5), np.nan))
    with pytest.raises(TypeError, match="^ln: "):
        layer.forward(np.array([["a"] * 5]))
    with pytest.raises(ValueError, match="^ln2: .*batch axis"):
        L.LayerNormalization(axis=0, name="ln2").build((4, 5))
    with pytest.raises(ValueError, match="^ln3: .*trailing"):
        L.LayerNormalization(axis=1, name="ln3").build((4, 5, 6))
    with pytest.raises(ValueError, match="epsilon"):
        L.LayerNormalization(epsilon=0)
