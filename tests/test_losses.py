"""Losses: kernels against the float64 reference, finite differences, PyTorch, errors, purity."""
import zlib

import numpy as np
import pytest

from nbmodel import losses
from nbmodel.kernels.reference import losses as ref

rng = np.random.default_rng(0)


def _probs(shape, rng):
    p = rng.random(shape) * 0.9 + 0.05
    return p / p.sum(axis=-1, keepdims=True)


# (loss instance, reference function, y_true maker, y_pred maker)
def _cases():
    reg_t = lambda s, r: r.standard_normal(s)
    reg_p = lambda s, r: r.standard_normal(s)
    bin_t = lambda s, r: (r.random(s) > 0.5).astype(np.float64)
    prob_p = lambda s, r: r.random(s) * 0.9 + 0.05
    onehot = lambda s, r: np.eye(s[-1])[r.integers(0, s[-1], s[:-1])]
    return {
        "mse": (losses.MeanSquaredError(), ref.mse, reg_t, reg_p),
        "mae": (losses.MeanAbsoluteError(), ref.mae, reg_t, reg_p),
        "huber": (losses.Huber(delta=0.7), lambda t, p, sample_weight=None: ref.huber(t, p, 0.7, sample_weight),
                  reg_t, reg_p),
        "bce": (losses.BinaryCrossentropy(), ref.binary_crossentropy, bin_t, prob_p),
        "bce_smooth": (losses.BinaryCrossentropy(label_smoothing=0.2),
                       lambda t, p, sample_weight=None: ref.binary_crossentropy(t, p, False, 0.2, sample_weight),
                       bin_t, prob_p),
        "bce_logits": (losses.BinaryCrossentropy(from_logits=True, label_smoothing=0.1),
                       lambda t, p, sample_weight=None: ref.binary_crossentropy(t, p, True, 0.1, sample_weight),
                       bin_t, reg_p),
        "cce": (losses.CategoricalCrossentropy(), ref.categorical_crossentropy, onehot, lambda s, r: _probs(s, r)),
        "cce_unnormalized": (losses.CategoricalCrossentropy(label_smoothing=0.1),
                             lambda t, p, sample_weight=None: ref.categorical_crossentropy(t, p, False, 0.1,
                                                                                           sample_weight),
                             onehot, prob_p),
        "cce_logits": (losses.CategoricalCrossentropy(from_logits=True),
                       lambda t, p, sample_weight=None: ref.categorical_crossentropy(t, p, True, 0.0, sample_weight),
                       onehot, lambda s, r: 3 * r.standard_normal(s)),
        "cce_soft_logits": (losses.CategoricalCrossentropy(from_logits=True, label_smoothing=0.3),
                            lambda t, p, sample_weight=None: ref.categorical_crossentropy(t, p, True, 0.3,
                                                                                          sample_weight),
                            lambda s, r: _probs(s, r), reg_p),
    }


CASES = _cases()


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("shape", [(5, 4), (2, 3, 4)])
@pytest.mark.parametrize("weighted", [False, True])
def test_dense_losses_match_reference(case, shape, weighted):
    loss, fn, make_t, make_p = CASES[case]
    r = np.random.default_rng(zlib.crc32(f"{case}{shape}".encode()))
    yt, yp = make_t(shape, r), make_p(shape, r)
    sw = r.random(shape[0]) + 0.5 if weighted else None
    t_ref, c_ref, dy_ref = fn(yt, yp, sample_weight=sw)
    total, count, dy = loss.forward_backward(yt, yp, sw)
    assert count == c_ref == int(np.prod(shape[:-1]))
    assert dy.dtype == np.float64 and dy.shape == yp.shape
    np.testing.assert_allclose(total, t_ref, rtol=1e-12)
    np.testing.assert_allclose(dy, dy_ref, rtol=1e-9, atol=1e-12)
    assert loss(yt, yp, sw) == pytest.approx(t_ref / c_ref, rel=1e-12)
    # float32: same numbers to float32 rounding, float32 gradient
    total32, count32, dy32 = loss.forward_backward(yt.astype(np.float32), yp.astype(np.float32), sw)
    assert dy32.dtype == np.float32 and count32 == count
    np.testing.assert_allclose(total32, t_ref, rtol=2e-5)
    np.testing.assert_allclose(dy32, dy_ref, rtol=2e-4, atol=1e-5)


def _fd_check(loss, yt, yp, sw=None, eps=1e-6):
    total, _, dy = loss.forward_backward(yt, yp, sw)
    dy = dy.copy()
    num = np.zeros_like(yp)
    for i in range(yp.size):
        old = yp.flat[i]
        yp.flat[i] = old + eps
        fp = loss.forward(yt, yp, sw)[0]
        yp.flat[i] = old - eps
        fm = loss.forward(yt, yp, sw)[0]
        yp.flat[i] = old
        num.flat[i] = (fp - fm) / (2 * eps)
    np.testing.assert_allclose(dy, num, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("case", sorted(CASES))
def test_gradient_finite_differences(case):
    loss, _, make_t, make_p = CASES[case]
    r = np.random.default_rng(7)
    shape = (3, 4)
    yt, yp = make_t(shape, r), make_p(shape, r)
    if case in ("mae", "huber"):  # keep away from the kinks
        yp = yt + np.where(r.random(shape) > 0.5, 1, -1) * (0.2 + r.random(shape))
    _fd_check(loss, yt, yp, r.random(3) + 0.5)


@pytest.mark.parametrize("from_logits", [False, True])
@pytest.mark.parametrize("label_dtype", [np.int64, np.int32, np.float32, np.uint8])
def test_sparse_ce_matches_reference(from_logits, label_dtype):
    r = np.random.default_rng(3)
    yp = 2 * r.standard_normal((2, 3, 5)) if from_logits else _probs((2, 3, 5), r)
    labels = r.integers(0, 5, (2, 3))
    sw = r.random(2) + 0.5
    loss = losses.SparseCategoricalCrossentropy(from_logits=from_logits)
    t_ref, c_ref, dy_ref = ref.sparse_categorical_crossentropy(labels, yp, from_logits, sample_weight=sw)
    total, count, dy = loss.forward_backward(labels.astype(label_dtype), yp, sw)
    assert count == c_ref == 6
    np.testing.assert_allclose(total, t_ref, rtol=1e-12)
    np.testing.assert_allclose(dy, dy_ref, rtol=1e-9, atol=1e-12)
    # (b, 1) labels for (b, C) predictions
    t2, c2, dy2 = loss.forward_backward(labels[0].reshape(3, 1), yp[0])
    t2_ref, _, dy2_ref = ref.sparse_categorical_crossentropy(labels[0], yp[0], from_logits)
    assert c2 == 3
    np.testing.assert_allclose(t2, t2_ref, rtol=1e-12)
    np.testing.assert_allclose(dy2, dy2_ref, rtol=1e-9, atol=1e-12)
    _fd_check(loss, labels, yp.copy(), sw)


def test_sparse_ce_ignore_class():
    r = np.random.default_rng(4)
    yp = r.standard_normal((4, 3, 6))
    labels = r.integers(0, 6, (4, 3))
    labels[0, 1] = labels[2, 0] = labels[3, 2] = -1
    loss = losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=-1)
    t_ref, c_ref, dy_ref = ref.sparse_categorical_crossentropy(labels, yp, True, ignore_class=-1)
    total, count, dy = loss.forward_backward(labels, yp)
    assert count == c_ref == 9
    np.testing.assert_allclose(total, t_ref, rtol=1e-12)
    np.testing.assert_allclose(dy, dy_ref, rtol=1e-9, atol=1e-12)
    assert np.all(dy[0, 1] == 0)
    assert loss(labels, yp) == pytest.approx(t_ref / 9)
    assert loss(np.full((4, 3), -1), yp) == 0.0  # nothing counted


def test_large_batches_take_the_parallel_path():
    # above PAR_MIN elements rows run in prange; values must not change
    r = np.random.default_rng(5)
    n, c = 20000, 4
    yp = r.standard_normal((n, c)).astype(np.float32)
    labels = r.integers(0, c, n)
    sparse = losses.SparseCategoricalCrossentropy(from_logits=True)
    t_ref, _, dy_ref = ref.sparse_categorical_crossentropy(labels, yp.astype(np.float64), True)
    total, count, dy = sparse.forward_backward(labels, yp)
    assert count == n
    np.testing.assert_allclose(total, t_ref, rtol=1e-5)
    np.testing.assert_allclose(dy, dy_ref, atol=1e-6)
    with pytest.raises(ValueError, match="label 7 at flat index 123"):
        bad = labels.copy()
        bad[123] = 7
        sparse(bad, yp)
    yt = r.standard_normal((n, c)).astype(np.float32)
    t_ref, _, dy_ref = ref.mse(yt, yp)
    total, _, dy = losses.MeanSquaredError().forward_backward(yt, yp)
    np.testing.assert_allclose(total, t_ref, rtol=1e-5)
    np.testing.assert_allclose(dy, dy_ref, rtol=1e-5, atol=1e-7)
    onehot = np.eye(c, dtype=np.float32)[labels]
    total, _, dy = losses.CategoricalCrossentropy(from_logits=True).forward_backward(onehot, yp)
    t_ref, _, dy_ref = ref.categorical_crossentropy(onehot, yp.astype(np.float64), True)
    np.testing.assert_allclose(total, t_ref, rtol=1e-5)
    np.testing.assert_allclose(dy, dy_ref, atol=1e-6)


def test_clipping_of_probabilities():
    # probabilities at 0 and 1 are clipped to [1e-7, 1 - 1e-7] and get no gradient there
    yt = np.array([[1.0, 0.0], [0.0, 1.0]])
    yp = np.array([[0.0, 1.0], [0.5, 0.5]])
    total, count, dy = losses.BinaryCrossentropy().forward_backward(yt, yp)
    t_ref, _, dy_ref = ref.binary_crossentropy(yt, yp)
    np.testing.assert_allclose(total, t_ref, rtol=1e-12)
    assert total == pytest.approx(-2 * np.log(1e-7) / 2 + np.log(2), rel=1e-9)
    np.testing.assert_allclose(dy, dy_ref, atol=1e-12)
    assert dy[0, 0] == 0 and dy[0, 1] == 0
    total, _, _ = losses.CategoricalCrossentropy().forward_backward(np.array([[1.0, 0, 0]]),
                                                                  np.array([[0.0, 0.5, 0.5]]))
    assert total == pytest.approx(-np.log(1e-7))


def test_stable_logits():
    big = np.array([[1000.0, -1000.0, 0.0]])
    total, _, dy = losses.CategoricalCrossentropy(from_logits=True).forward_backward(np.array([[0.0, 1, 0]]), big)
    assert total == pytest.approx(2000.0)
    np.testing.assert_allclose(dy, [[1.0, -1.0, 0.0]], atol=1e-12)
    total, _, dy = losses.BinaryCrossentropy(from_logits=True).forward_backward(
        np.array([[0.0, 1.0]]), np.array([[800.0, -800.0]], np.float32))
    assert np.isfinite(total) and total == pytest.approx(800.0)
    np.testing.assert_allclose(dy, [[0.5, -0.5]])


def test_one_dimensional_predictions_and_trailing_axis():
    r = np.random.default_rng(6)
    yt, yp = r.standard_normal(6), r.standard_normal(6)
    total, count, dy = losses.MeanSquaredError().forward_backward(yt, yp)
    assert count == 6 and dy.shape == (6,)
    assert total == pytest.approx(((yp - yt) ** 2).sum())
    # y_true (b,) against y_pred (b, 1) is accepted like Keras
    t2, c2, dy2 = losses.MeanSquaredError().forward_backward(yt, yp.reshape(6, 1))
    assert (t2, c2) == (pytest.approx(total), 6) and dy2.shape == (6, 1)


def test_workspace_reused():
    loss = losses.MeanSquaredError()
    a = np.ones((3, 2), np.float32)
    dy1 = loss.forward_backward(a, a * 2)[2]
    dy2 = loss.forward_backward(a, a * 3)[2]
    assert dy1 is dy2
    assert dy2[0, 0] == pytest.approx(2.0)  # 2 * (3 - 1) / 2


# ----------------------------------------------------------------- PyTorch
def test_against_torch():
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    r = np.random.default_rng(8)
    b, c = 6, 5
    logits = r.standard_normal((b, c))
    labels = r.integers(0, c, b)
    sw = r.random(b) + 0.5

    def torch_total(fn, yp, *args, weight=None, **kw):
        x = torch.tensor(yp, requires_grad=True)
        per = fn(x, *args, reduction="none", **kw)
        if per.ndim > 1:
            per = per.mean(dim=-1)
        w = torch.ones(per.shape, dtype=per.dtype) if weight is None else torch.tensor(weight)
        tot = (per * w).sum()
        tot.backward()
        return tot.item(), x.grad.numpy()

    # sparse CE from logits with ignore_index and weights
    lab = labels.copy()
    lab[2] = -100
    t_tot, t_grad = torch_total(F.cross_entropy, logits, torch.tensor(lab), weight=sw, ignore_index=-100)
    total, count, dy = losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=-100).forward_backward(
        lab, logits, sw)
    assert count == b - 1
    np.testing.assert_allclose(total, t_tot, rtol=1e-10)
    np.testing.assert_allclose(dy, t_grad, rtol=1e-8, atol=1e-12)
    # categorical CE from logits with label smoothing (same smoothing formula)
    t_tot, t_grad = torch_total(F.cross_entropy, logits, torch.tensor(labels), label_smoothing=0.2)
    total, _, dy = losses.CategoricalCrossentropy(from_logits=True, label_smoothing=0.2).forward_backward(
        np.eye(c)[labels], logits)
    np.testing.assert_allclose(total, t_tot, rtol=1e-10)
    np.testing.assert_allclose(dy, t_grad, rtol=1e-8, atol=1e-12)
    # categorical CE on probabilities: torch nll on log of normalized probabilities
    probs = _probs((b, c), r)
    x = torch.tensor(probs, requires_grad=True)
    tt = F.nll_loss(torch.log(x / x.sum(-1, keepdim=True)), torch.tensor(labels), reduction="sum")
    tt.backward()
    total, _, dy = losses.CategoricalCrossentropy().forward_backward(np.eye(c)[labels], probs)
    np.testing.assert_allclose(total, tt.item(), rtol=1e-10)
    np.testing.assert_allclose(dy, x.grad.numpy(), rtol=1e-8, atol=1e-12)
    # binary CE from logits and from probabilities
    yt = (r.random((b, 3)) > 0.5).astype(np.float64)
    z = 3 * r.standard_normal((b, 3))
    t_tot, t_grad = torch_total(F.binary_cross_entropy_with_logits, z, torch.tensor(yt), weight=sw)
    total, _, dy = losses.BinaryCrossentropy(from_logits=True).forward_backward(yt, z, sw)
    np.testing.assert_allclose(total, t_tot, rtol=1e-10)
    np.testing.assert_allclose(dy, t_grad, rtol=1e-8, atol=1e-12)
    p = r.random((b, 3)) * 0.9 + 0.05
    t_tot, t_grad = torch_total(F.binary_cross_entropy, p, torch.tensor(yt))
    total, _, dy = losses.BinaryCrossentropy().forward_backward(yt, p)
    np.testing.assert_allclose(total, t_tot, rtol=1e-10)
    np.testing.assert_allclose(dy, t_grad, rtol=1e-8, atol=1e-12)
    # regression losses
    y = r.standard_normal((b, 3))
    for fn, loss in ((F.mse_loss, losses.MeanSquaredError()), (F.l1_loss, losses.MeanAbsoluteError())):
        t_tot, t_grad = torch_total(fn, z, torch.tensor(y), weight=sw)
        total, _, dy = loss.forward_backward(y, z, sw)
        np.testing.assert_allclose(total, t_tot, rtol=1e-10)
        np.testing.assert_allclose(dy, t_grad, rtol=1e-8, atol=1e-12)
    t_tot, t_grad = torch_total(F.huber_loss, z, torch.tensor(y), delta=0.5)
    total, _, dy = losses.Huber(0.5).forward_backward(y, z)
    np.testing.assert_allclose(total, t_tot, rtol=1e-10)
    np.testing.assert_allclose(dy, t_grad, rtol=1e-8, atol=1e-12)


# ------------------------------------------------------------------ errors
def test_bad_labels():
    loss = losses.SparseCategoricalCrossentropy()
    p = _probs((4, 3), rng)
    with pytest.raises(ValueError, match=r"sparse_categorical_crossentropy: label 3 .*outside \[0, 3\)"):
        loss(np.array([0, 1, 3, 2]), p)
    with pytest.raises(ValueError, match=r"label -1 .*outside"):
        loss(np.array([0, -1, 1, 2]), p)
    with pytest.raises(ValueError, match="label 1.5 .*not a whole number"):
        loss(np.array([0, 1, 1.5, 2]), p)
    with pytest.raises(ValueError, match="label nan"):
        loss(np.array([0, 1, np.nan, 2]), p)
    assert loss(np.array([0.0, 1.0, 2.0, 2.0]), p) > 0  # whole-valued floats are fine


def test_bad_shapes_and_types():
    p = np.zeros((4, 3))
    with pytest.raises(ValueError,
                       match=r"mean_squared_error: y_true shape \(4, 2\) does not match y_pred shape \(4, 3\)"):
        losses.MeanSquaredError()(np.zeros((4, 2)), p)
    with pytest.raises(ValueError, match=r"categorical_crossentropy: y_true shape \(4,\).*sparse_categorical"):
        losses.CategoricalCrossentropy()(np.zeros(4), p)
    with pytest.raises(ValueError, match=r"sparse_categorical_crossentropy: y_true shape \(3,\)"):
        losses.SparseCategoricalCrossentropy()(np.zeros(3), p)
    with pytest.raises(TypeError, match="mean_squared_error: expected a numeric y_true"):
        losses.MeanSquaredError()(np.array(["a"] * 12).reshape(4, 3), p)
    with pytest.raises(TypeError, match="binary_crossentropy: expected a numeric y_pred"):
        losses.BinaryCrossentropy()(p, np.array([[None] * 3] * 4))
    with pytest.raises(ValueError, match="sample_weight of shape"):
        losses.MeanSquaredError()(p, p, np.ones(5))


def test_get_and_config():
    assert isinstance(losses.get("MSE"), losses.MeanSquaredError)
    assert isinstance(losses.get("mean_absolute_error"), losses.MeanAbsoluteError)
    assert isinstance(losses.get("Sparse_Categorical_Crossentropy"), losses.SparseCategoricalCrossentropy)
    assert isinstance(losses.get("CategoricalCrossentropy"), losses.CategoricalCrossentropy)
    assert losses.get("binary_crossentropy").name == "binary_crossentropy"
    inst = losses.Huber(2.0)
    assert losses.get(inst) is inst
    with pytest.raises(ValueError, match="`loss`.*mean_squared_error"):
        losses.get("mean_sqared_error")
    with pytest.raises(ValueError, match="Loss subclass"):
        losses.get(lambda t, p: 0)
    for loss in (losses.BinaryCrossentropy(from_logits=True, label_smoothing=0.1), losses.Huber(0.3),
                 losses.SparseCategoricalCrossentropy(True, ignore_class=0), losses.CategoricalCrossentropy()):
        back = losses.deserialize(losses.serialize(loss))
        assert type(back) is type(loss) and back.get_config() == loss.get_config()
    with pytest.raises(ValueError, match="label_smoothing"):
        losses.BinaryCrossentropy(label_smoothing=1.5)
