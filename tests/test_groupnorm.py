"""GroupNormalization as layer cases (reference, finite differences, on every device), its
backward against the reference, Keras semantics (groups, axis, errors, weights), PyTorch's
GroupNorm, config round trip, save/load and a model that trains."""
import numpy as np
import pytest

import nbmodel as nb
from nbmodel import layers as L
from nbmodel.kernels.reference import norm as ref
from nbmodel.testing import LayerCase

RTOL = {"float32": 1e-5, "float64": 1e-12}
ATOL = {"float32": 1e-5, "float64": 1e-12}


def rng(seed=0):
    return np.random.default_rng(seed)


def built(shape, dtype=None, seed=0, **kw):
    layer = L.GroupNormalization(dtype=dtype, seed=seed, **kw)
    layer.build(shape)
    r = rng(seed + 1)
    layer.set_weights([r.standard_normal(w.shape) for w in layer.get_weights()])
    return layer


def group_norm_case(label, shape, groups, axis=-1, **kw):
    """A GroupNormalization with random gamma and beta on ``x * 3 + 2``; the reference moves
    ``axis`` last and normalizes each sample's groups of consecutive channels."""
    eps = kw.get("epsilon", 1e-3)

    def reference(w, x):
        xl = np.moveaxis(x, axis, -1)
        g = xl.shape[-1] if groups == -1 else groups
        return np.moveaxis(ref.group_norm_forward(xl, w.get("gamma"), w.get("beta"), g, eps), -1, axis)

    return LayerCase(f"group-norm-{label}", lambda dt: built((None,) + shape[1:], dt, groups=groups, axis=axis, **kw),
                     inputs=lambda r: r.standard_normal(shape) * 3 + 2, reference=reference, rtol=RTOL, atol=ATOL)


CASES = [
    group_norm_case("image", (2, 3, 2, 6), 3),
    group_norm_case("sequence", (2, 5, 4), 2),
    group_norm_case("rank-2", (3, 6), 3),
    group_norm_case("one-group", (2, 3, 4), 1),          # layer norm over every non-batch value
    group_norm_case("instance", (2, 4, 3), -1),          # one group per channel
    group_norm_case("axis-1", (2, 4, 3, 2), 2, axis=1),  # channels first, moved last and back
    group_norm_case("no-center", (2, 3, 4), 2, center=False),
    group_norm_case("no-scale", (2, 3, 4), 2, scale=False),
    group_norm_case("epsilon", (2, 3, 4), 2, epsilon=1e-5),
]


@pytest.mark.parametrize("case", CASES, ids=str)
def test_layer_case(case, device):
    case.check(device)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("shape, groups", [((2, 3, 4, 6), 3), ((3, 7, 4), 4), ((2, 8), 2)])
def test_backward_matches_reference(shape, groups, dtype):
    x = (rng().standard_normal(shape) * 2 + 1).astype(dtype)
    layer = built(shape, dtype, groups=groups)
    y = layer.forward(x, training=True)
    assert y.dtype == np.dtype(dtype)
    dy = rng(2).standard_normal(shape).astype(dtype)
    dx = layer.backward(dy)
    assert dx.dtype == np.dtype(dtype)
    edx, eg, eb = ref.group_norm_backward(x, layer.params["gamma"], dy, groups, 1e-3)
    tol = 1e-4 if dtype == "float32" else 1e-11
    np.testing.assert_allclose(dx, edx, rtol=tol, atol=tol)
    np.testing.assert_allclose(layer.grads["gamma"], eg, rtol=tol, atol=tol)
    np.testing.assert_allclose(layer.grads["beta"], eb, rtol=tol, atol=tol)


def test_keras_defaults_and_weights():
    layer = L.GroupNormalization()
    assert (layer.groups, layer.axis, layer.epsilon, layer.center, layer.scale) == (32, -1, 1e-3, True, True)
    layer.build((None, 4, 4, 64))
    assert list(layer.params) == ["gamma", "beta"]
    assert layer.params["gamma"].shape == (64,) and (layer.params["gamma"] == 1).all()
    assert (layer.params["beta"] == 0).all()
    assert layer.compute_output_shape((None, 4, 4, 64)) == (None, 4, 4, 64)
    # groups=-1 becomes one group per channel when built, as in Keras
    inst = L.GroupNormalization(groups=-1)
    inst.build((None, 5, 6))
    assert inst.groups == 6 and inst.get_config()["groups"] == 6
    assert list(built((2, 6), groups=2, center=False).params) == ["gamma"]
    assert list(built((2, 6), groups=2, scale=False, center=False).params) == []


def test_groups_are_consecutive_channels():
    """Channels 0..1 form group 0: shifting them leaves channels 2..3 (group 1) unchanged."""
    layer = L.GroupNormalization(groups=2, dtype="float64")
    x = rng().standard_normal((1, 5, 4))
    y0 = np.array(layer.forward(x))
    x2 = x.copy()
    x2[..., :2] *= 3.0
    x2[0, 0, 0] += 1.0
    y1 = np.array(layer.forward(x2))
    np.testing.assert_array_equal(y0[..., 2:], y1[..., 2:])
    assert not np.allclose(y0[..., :2], y1[..., :2])


def test_same_in_training_and_inference_and_finite_on_constants():
    layer = built((2, 3, 4), groups=2, dtype="float64")
    x = rng().standard_normal((2, 3, 4))
    np.testing.assert_array_equal(np.array(layer.forward(x, training=True)), np.array(layer.forward(x)))
    y = L.GroupNormalization(groups=2)(np.full((2, 3, 4), 5.0, np.float32))
    assert np.isfinite(y).all() and np.allclose(y, 0)


@pytest.mark.parametrize("shape, groups", [((4, 6, 5, 8), 4), ((3, 7, 6), 3), ((2, 5, 3, 4), -1)])
def test_matches_torch_group_norm(shape, groups):
    torch = pytest.importorskip("torch")
    x = (rng().standard_normal(shape) * 2 + 1).astype(np.float32)
    layer = built(shape, "float32", groups=groups, epsilon=1e-5)
    y = layer.forward(x, training=True)
    dy = rng(3).standard_normal(shape).astype(np.float32)
    dx = layer.backward(dy)
    tx = torch.tensor(np.moveaxis(x, -1, 1).copy(), requires_grad=True)  # channels to axis 1
    tg = torch.tensor(layer.params["gamma"], requires_grad=True)
    tb = torch.tensor(layer.params["beta"], requires_grad=True)
    ty = torch.nn.functional.group_norm(tx, layer.groups, tg, tb, eps=1e-5)
    ty.backward(torch.from_numpy(np.moveaxis(dy, -1, 1).copy()))
    np.testing.assert_allclose(y, np.moveaxis(ty.detach().numpy(), 1, -1), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dx, np.moveaxis(tx.grad.numpy(), 1, -1), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(layer.grads["gamma"], tg.grad.numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(layer.grads["beta"], tb.grad.numpy(), rtol=1e-4, atol=1e-4)


def test_bad_arguments_and_inputs_name_the_layer():
    with pytest.raises(ValueError, match="^gn1: .*must divide the number of channels \\(6\\)"):
        L.GroupNormalization(groups=4, name="gn1").build((None, 3, 6))
    with pytest.raises(ValueError, match="^gn2: .*cannot be more than the number of channels \\(6\\)"):
        L.GroupNormalization(name="gn2").build((None, 3, 6))  # the default 32 groups
    with pytest.raises(ValueError, match="^gn3: .*groups"):
        L.GroupNormalization(groups=0, name="gn3")
    with pytest.raises(ValueError, match="^gn4: .*batch axis"):
        L.GroupNormalization(groups=1, axis=0, name="gn4").build((None, 4))
    with pytest.raises(ValueError, match="^gn5: .*epsilon"):
        L.GroupNormalization(epsilon=0, name="gn5")
    with pytest.raises(ValueError, match="^gn6: .*axis must be an int"):
        L.GroupNormalization(axis=[1, 2], name="gn6")
    with pytest.raises(ValueError, match="^gn7: .*must be known"):
        L.GroupNormalization(groups=1, name="gn7").build((None, 3, None))
    layer = L.GroupNormalization(groups=2, name="gn8")
    layer.build((None, 3, 4))
    with pytest.raises(ValueError, match="^gn8: .*4 channels"):
        layer.forward(np.ones((2, 3, 6), np.float32))
    with pytest.raises(ValueError, match="^gn8: .*NaN"):
        layer.forward(np.full((2, 3, 4), np.nan, np.float32))
    with pytest.raises(ValueError, match="^gn8: .*rank >= 2"):
        layer.forward(np.ones(4, np.float32))


def test_config_roundtrip():
    layer = L.GroupNormalization(groups=4, axis=1, epsilon=1e-5, center=False, gamma_initializer="zeros", name="gn")
    cfg = layer.get_config()
    assert cfg["groups"] == 4 and cfg["axis"] == 1 and cfg["center"] is False and cfg["epsilon"] == 1e-5
    assert L.GroupNormalization.from_config(cfg).get_config() == cfg


def test_model_trains_and_saves(tmp_path, one_thread):
    r = rng()
    x = r.standard_normal((64, 6, 8)).astype(np.float32) * 4 + 3
    y = (x[:, :, :4].mean(axis=(1, 2)) > 3).astype(np.int64)
    model = nb.Sequential([L.Input((6, 8)), L.Dense(8), L.GroupNormalization(groups=4), L.Activation("relu"),
                           L.Flatten(), L.Dense(2)], seed=0)
    model.compile(optimizer=nb.optimizers.Adam(0.01),
                  loss=nb.losses.SparseCategoricalCrossentropy(from_logits=True))
    before = model.evaluate(x, y)
    model.fit(x, y, batch_size=16, epochs=20, verbose=0)
    after = model.evaluate(x, y)
    assert after < 0.5 * before, (before, after)
    path = tmp_path / "gn.nbm"
    model.save(path)
    again = nb.load_model(path)
    np.testing.assert_array_equal(again.predict(x[:5]), model.predict(x[:5]))
