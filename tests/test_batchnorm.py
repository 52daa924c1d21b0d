"""BatchNormalization as layer cases (training and inference mode against the float64
reference, finite differences, on every device); moving statistics after a step, backward
against the reference, PyTorch parity, errors."""
import numpy as np
import pytest

from nbmodel import layers as L
from nbmodel.kernels.reference import norm as ref
from nbmodel.testing import LayerCase

# float64 agrees with the reference to rounding
RTOL = {"float32": 1e-5, "float64": 1e-12}
ATOL = {"float32": 1e-5, "float64": 1e-12}
NO_ATOL = {"float32": 1e-5, "float64": 0.0}  # inference: relative tolerance only


def rng(seed=0):
    return np.random.default_rng(seed)


def _layer(c, dtype="float64", **kw):
    layer = L.BatchNormalization(dtype=dtype, **kw)
    layer.build((None, c))
    if layer.scale:
        layer.params["gamma"][:] = rng(1).uniform(0.5, 1.5, c)
    if layer.center:
        layer.params["beta"][:] = rng(2).standard_normal(c)
    return layer


def _randomized(layer, input_shape):
    """``layer`` built on ``input_shape`` with gamma in [0.5, 1.5], random beta and random
    moving statistics, set through set_weights (so on any device)."""
    layer.build(input_shape)
    c = layer.get_weights()[-1].shape[0]  # moving_variance, always there
    values = {"gamma": rng(1).uniform(0.5, 1.5, c), "beta": rng(2).standard_normal(c),
              "moving_mean": rng(3).standard_normal(c), "moving_variance": rng(4).uniform(0.5, 2.0, c)}
    names = list(layer.params) + list(layer.state)
    layer.set_weights([values.get(n, w) for n, w in zip(names, layer.get_weights())])
    return layer


def _gamma_beta(w, c):
    return w.get("gamma", np.ones(c)), w.get("beta", np.zeros(c))


def train_case(label, shape, mul=3.0, add=2.0, axis=-1, **kw):
    """Training mode: the batch statistics normalize (over every axis but ``axis``); inputs
    ``x * mul + add``."""

    def reference(w, x):
        xl = np.moveaxis(x, axis, -1)
        y = ref.batch_norm_forward(xl, *_gamma_beta(w, xl.shape[-1]), kw.get("epsilon", 1e-3))[0]
        return np.moveaxis(y, -1, axis)

    return LayerCase(f"batch-norm-train-{label}",
                     lambda dt: _randomized(L.BatchNormalization(axis=axis, dtype=dt, **kw), (None,) + shape[1:]),
                     inputs=lambda r: r.standard_normal(shape) * mul + add, reference=reference,
                     training=True, rtol=RTOL, atol=ATOL)


def infer_case(label, shape, training=False, **kw):
    """Inference mode, or a frozen layer in training: the moving statistics normalize."""

    def reference(w, x):
        return ref.batch_norm_infer(x, *_gamma_beta(w, x.shape[-1]), w["moving_mean"], w["moving_variance"],
                                    kw.get("epsilon", 1e-3))

    return LayerCase(f"batch-norm-{label}",
                     lambda dt: _randomized(L.BatchNormalization(dtype=dt, **kw), (None,) + shape[1:]),
                     inputs=lambda r: r.standard_normal(shape), reference=reference, training=training,
                     rtol=RTOL, atol=NO_ATOL)


CASES = [train_case(f"{len(shape)}d", shape) for shape in ((7, 3), (2, 5, 4), (3, 4, 5, 2))] + [
    train_case("epsilon-momentum", (5, 4, 3), mul=2.0, add=1.0, epsilon=1e-5, momentum=0.9),
    train_case("axis-1", (4, 3, 5), mul=2.0, add=1.0, axis=1),
] + [train_case(f"center-{center}-scale-{scale}", (6, 3), mul=2.0, add=0.0, center=center, scale=scale)
     for center, scale in ((False, True), (True, False), (False, False))] + [
    infer_case("inference", (6, 3)),
    infer_case("frozen-training", (4, 3), training=True, trainable=False),
]


@pytest.mark.parametrize("case", CASES, ids=str)
def test_layer_case(case, device):
    case.check(device)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("shape", [(7, 3), (2, 5, 4), (3, 4, 5, 2)])
def test_training_moving_statistics_and_backward(shape, dtype):
    """The moving statistics after a training step and backward against the reference (the
    layer cases compare the training output)."""
    c = shape[-1]
    layer = L.BatchNormalization(dtype=dtype)
    layer.build(shape)
    layer.params["gamma"][:] = rng(1).uniform(0.5, 1.5, c)
    layer.params["beta"][:] = rng(2).standard_normal(c)
    mm0 = rng(3).standard_normal(c)
    mv0 = rng(4).uniform(0.5, 2.0, c)
    layer.state["moving_mean"][:] = mm0
    layer.state["moving_variance"][:] = mv0
    x = (rng().standard_normal(shape) * 3 + 2).astype(dtype)
    layer.forward(x, training=True)
    gamma, beta = layer.params["gamma"], layer.params["beta"]
    _, mean, var = ref.batch_norm_forward(x, gamma, beta, 1e-3)
    tol = 1e-5 if dtype == "float32" else 1e-12
    # Keras: moving = moving * momentum + batch * (1 - momentum), biased variance
    np.testing.assert_allclose(layer.state["moving_mean"], mm0 * 0.99 + mean * 0.01, rtol=tol, atol=tol)
    np.testing.assert_allclose(layer.state["moving_variance"], mv0 * 0.99 + var * 0.01, rtol=tol, atol=tol)
    dy = rng(5).standard_normal(shape).astype(dtype)
    dx = layer.backward(dy)
    rdx, rdg, rdb = ref.batch_norm_backward(x, gamma, dy, 1e-3)
    tol = 1e-4 if dtype == "float32" else 1e-11
    assert dx.dtype == np.dtype(dtype)
    np.testing.assert_allclose(dx, rdx, rtol=tol, atol=tol)
    np.testing.assert_allclose(layer.grads["gamma"], rdg, rtol=tol, atol=tol)
    np.testing.assert_allclose(layer.grads["beta"], rdb, rtol=tol, atol=tol)


def test_inference_never_moves_the_statistics():
    """(the layer case "inference" compares the output)"""
    layer = _layer(3)
    layer.state["moving_mean"][:] = [0.5, -1.0, 2.0]
    layer.state["moving_variance"][:] = [1.5, 0.2, 3.0]
    x = rng().standard_normal((6, 3))
    before = [a.copy() for a in layer.state.values()]
    layer.forward(x)
    for a, b in zip(before, layer.state.values()):
        np.testing.assert_array_equal(a, b)


def test_moving_statistics_converge_over_steps():
    layer = L.BatchNormalization(momentum=0.5, dtype="float64")
    x = rng().standard_normal((50, 2)) * [2.0, 0.5] + [3.0, -1.0]
    for _ in range(30):
        layer.forward(x, training=True)
    np.testing.assert_allclose(layer.state["moving_mean"], x.mean(0), rtol=1e-6)
    np.testing.assert_allclose(layer.state["moving_variance"], x.var(0), rtol=1e-6)


def test_frozen_layer_normalizes_with_moving_statistics_in_training():
    """A frozen layer normalizes with its moving statistics even in training, like Keras (the
    layer case "frozen-training" compares it with the reference and checks its gradients)."""
    layer = _layer(3, trainable=False)
    layer.state["moving_variance"][:] = [0.5, 1.0, 2.0]
    x = rng().standard_normal((4, 3))
    np.testing.assert_allclose(layer.forward(x, training=True), layer.forward(x, training=False), rtol=1e-12)


@pytest.mark.parametrize("center,scale", [(False, True), (True, False), (False, False)])
def test_center_and_scale_flags(center, scale):
    layer = _layer(3, center=center, scale=scale)
    assert list(layer.params) == [k for k, on in (("gamma", scale), ("beta", center)) if on]


def test_other_axis():
    layer = L.BatchNormalization(axis=1, dtype="float64")
    layer.build((None, 3, 5))
    assert layer.params["gamma"].shape == (3,)


def test_epsilon_weights_and_config():
    layer = L.BatchNormalization(epsilon=1e-5, momentum=0.9, name="bn")
    assert layer.epsilon == 1e-5
    layer.build((None, 4, 4, 3))
    names = list(layer.params) + list(layer.state)
    assert names == ["gamma", "beta", "moving_mean", "moving_variance"]  # Keras get_weights order
    assert len(layer.get_weights()) == 4 and layer.count_params() == 12
    again = L.BatchNormalization.from_config(layer.get_config())
    assert again.get_config() == layer.get_config() and again.epsilon == 1e-5
    w = [np.full(3, v, np.float32) for v in (2.0, 1.0, 0.5, 4.0)]
    layer.set_weights(w)
    y = layer.forward(np.ones((1, 1, 1, 3), np.float32))
    np.testing.assert_allclose(y.ravel(), 2.0 * 0.5 / np.sqrt(4.0 + 1e-5) + 1.0, rtol=1e-6)


def test_float32_statistics_over_many_rows():
    # blocked sums keep float32 statistics accurate over a large batch
    x = (rng().standard_normal((60000, 2)) * 0.1 + 1000.0).astype(np.float32)
    layer = L.BatchNormalization(momentum=0.0)
    layer.forward(x, training=True)
    x64 = x.astype(np.float64)
    np.testing.assert_allclose(layer.state["moving_mean"], x64.mean(0), rtol=1e-6)
    np.testing.assert_allclose(layer.state["moving_variance"], x64.var(0), rtol=1e-3)


def test_bad_input_names_the_layer():
    layer = L.BatchNormalization(name="bn_a")
    layer.build((None, 4, 3))
    with pytest.raises(ValueError, match="bn_a.*3 channels"):
        layer.forward(np.zeros((2, 4, 2), np.float32))
    with pytest.raises(ValueError, match="bn_a.*NaN"):
        layer.forward(np.full((2, 4, 3), np.nan, np.float32))
    with pytest.raises(ValueError, match="bn_b.*rank >= 2"):
        L.BatchNormalization(name="bn_b").build((3,))
    with pytest.raises(ValueError, match="bn_c.*axis"):
        L.BatchNormalization(axis=0, name="bn_c").build((None, 3))
    with pytest.raises(ValueError, match="bn_d.*at least 2"):
        L.BatchNormalization(name="bn_d").forward(np.zeros((1, 3), np.float32), training=True)
    with pytest.raises(ValueError, match="bn_e.*momentum"):
        L.BatchNormalization(momentum=1.5, name="bn_e")
    with pytest.raises(TypeError, match="bn_f.*numeric"):
        L.BatchNormalization(name="bn_f").forward(np.array([["a", "b"]]))


def test_matches_torch():
    torch = pytest.importorskip("torch")
    x = rng().standard_normal((4, 5, 6, 3)) * 2 + 1
    layer = L.BatchNormalization(dtype="float64")
    layer.build(x.shape)
    layer.params["gamma"][:] = [0.5, 1.0, 2.0]
    layer.params["beta"][:] = [0.1, -0.2, 0.3]
    y = layer.forward(x, training=True)
    dy = rng(1).standard_normal(x.shape)
    dx = layer.backward(dy)
    bn = torch.nn.BatchNorm2d(3, eps=1e-3, momentum=0.01).double()
    with torch.no_grad():
        bn.weight[:] = torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64)
        bn.bias[:] = torch.tensor([0.1, -0.2, 0.3], dtype=torch.float64)
    xt = torch.tensor(x.transpose(0, 3, 1, 2), requires_grad=True)
    yt = bn(xt)
    yt.backward(torch.tensor(dy.transpose(0, 3, 1, 2)))
    np.testing.assert_allclose(y, yt.detach().numpy().transpose(0, 2, 3, 1), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(dx, xt.grad.numpy().transpose(0, 2, 3, 1), rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(layer.grads["gamma"], bn.weight.grad.numpy(), rtol=1e-10)
    np.testing.assert_allclose(layer.grads["beta"], bn.bias.grad.numpy(), rtol=1e-10)
    np.testing.assert_allclose(layer.state["moving_mean"], bn.running_mean.numpy(), rtol=1e-10)
    # PyTorch's running variance uses the unbiased batch variance, Keras the biased one
    m = x.size // 3
    torch_var_biased = 0.99 + (bn.running_var.numpy() - 0.99) * (m - 1) / m
    np.testing.assert_allclose(layer.state["moving_variance"], torch_var_biased, rtol=1e-10)
    bn.eval()
    with torch.no_grad():
        yi = bn(xt).numpy().transpose(0, 2, 3, 1)
    np.testing.assert_allclose(layer.forward(x), ref.batch_norm_infer(
        x, layer.params["gamma"], layer.params["beta"], layer.state["moving_mean"],
        layer.state["moving_variance"], 1e-3), rtol=1e-12)
    # same inference output once the variance convention is accounted for
    layer.state["moving_variance"][:] = bn.running_var.numpy()
    np.testing.assert_allclose(layer.forward(x), yi, rtol=1e-10, atol=1e-10)


def test_moving_statistics_saved_with_the_model(tmp_path):
    import nbmodel as nb

    model = nb.Sequential([L.Input((6, 6, 2)), L.Conv2D(4, 3, padding="same", activation="relu"),
                           L.BatchNormalization(), L.MaxPooling2D(2), L.Flatten(), L.Dense(3)], seed=0)
    model.compile(optimizer="adam", loss=nb.losses.SparseCategoricalCrossentropy(from_logits=True))
    x = rng().random((8, 6, 6, 2), dtype=np.float32)
    y = rng(1).integers(0, 3, 8)
    model.train_on_batch(x, y)
    bn = model.layers[1] if isinstance(model.layers[1], L.BatchNormalization) else \
        [lay for lay in model.layers if isinstance(lay, L.BatchNormalization)][0]
    assert not np.allclose(bn.state["moving_mean"], 0.0)  # moved by the step
    path = tmp_path / "m.nbm"
    model.save(str(path))
    again = nb.load_model(str(path))
    bn2 = [lay for lay in again.layers if isinstance(lay, L.BatchNormalization)][0]
    np.testing.assert_array_equal(bn2.state["moving_mean"], bn.state["moving_mean"])
    np.testing.assert_array_equal(bn2.state["moving_variance"], bn.state["moving_variance"])
    np.testing.assert_allclose(again.predict(x), model.predict(x), rtol=1e-6)
