"""LayerNormalization as layer cases (reference, finite differences, on every device), its
backward against the reference, and against torch's layer_norm."""
import numpy as np
import pytest

from nbmodel import layers as L
from nbmodel.kernels.reference import norm as ref
from nbmodel.testing import LayerCase

# float64 agrees with the reference to rounding
RTOL = {"float32": 1e-5, "float64": 1e-12}
ATOL = {"float32": 1e-5, "float64": 1e-12}


def rng(seed=0):
    return np.random.default_rng(seed)


def built(shape, dtype=None, seed=0, **kw):
    layer = L.LayerNormalization(dtype=dtype, seed=seed, **kw)
    layer.build(shape)
    r = rng(seed + 1)
    layer.set_weights([r.standard_normal(w.shape) for w in layer.get_weights()])
    return layer


def layer_norm_case(label, shape, rtol=RTOL, atol=ATOL, **kw):
    """A LayerNormalization with random gamma and beta on ``x * 3 + 2``; the reference normalizes
    the trailing block of the axes given (the last one by default) as one row."""
    axes = kw.get("axis", -1)
    ndim = len(shape)
    block = 1 if isinstance(axes, int) else len(axes)
    eps = kw.get("epsilon", 1e-3)

    def reference(w, x):
        rows = x.reshape(x.shape[:ndim - block] + (-1,))
        flat = {k: w[k].reshape(-1) for k in ("gamma", "beta") if k in w}
        return ref.layer_norm_forward(rows, flat.get("gamma"), flat.get("beta"), eps).reshape(x.shape)

    return LayerCase(f"layer-norm-{label}", lambda dt: built((None,) + shape[1:], dt, **kw),
                     inputs=lambda r: r.standard_normal(shape) * 3 + 2, reference=reference, rtol=rtol, atol=atol)


OPTIONS = [("default", {}), ("no-center", {"center": False}), ("no-scale", {"scale": False}),
           ("epsilon", {"epsilon": 1e-5}), ("axis-2", {"axis": [-2, -1]})]
CASES = [
    layer_norm_case("2d", (6, 5)),
    layer_norm_case("3d", (2, 3, 7)),
] + [layer_norm_case(f"3d-{label}", (3, 2, 4), **kw) for label, kw in OPTIONS] + [
    # the trailing block normalized as one row, to rounding (no absolute slack)
    layer_norm_case("axis-1-2", (3, 2, 4), atol={"float32": 1e-5, "float64": 0.0}, axis=[1, 2]),
]


@pytest.mark.parametrize("case", CASES, ids=str)
def test_layer_case(case, device):
    case.check(device)


def test_defaults_params_and_epsilon():
    layer = L.LayerNormalization()
    assert layer.epsilon == 1e-3
    layer.build((None, 3, 5))
    assert list(layer.params) == ["gamma", "beta"]
    assert layer.params["gamma"].shape == (5,) and (layer.params["gamma"] == 1).all()
    assert (layer.params["beta"] == 0).all()


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
def test_params_follow_center_and_scale(kw):
    layer = built((3, 2, 4), **kw)
    names = [n for n, on in (("gamma", kw.get("scale", True)), ("beta", kw.get("center", True))) if on]
    assert list(layer.params) == names


def test_multiple_axes_normalize_the_trailing_block():
    """Params over the whole block (the layer case "axis-1-2" compares the output)."""
    layer = built((3, 2, 4), axis=[1, 2], dtype="float64")
    assert layer.params["gamma"].shape == (2, 4) and layer.params["beta"].shape == (2, 4)


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
