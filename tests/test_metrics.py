"""Metrics against NumPy, Keras accuracy resolution, totals merging, errors."""
import numpy as np
import pytest

from nbmodel import losses, metrics
from nbmodel.kernels.reference import losses as ref


def _data(seed=0, b=8, c=5, t=None):
    r = np.random.default_rng(seed)
    shape = (b, c) if t is None else (b, t, c)
    logits = r.standard_normal(shape)
    labels = r.integers(0, c, shape[:-1])
    return logits, labels, r


@pytest.mark.parametrize("t", [None, 3])
@pytest.mark.parametrize("weighted", [False, True])
def test_accuracies_match_numpy(t, weighted):
    logits, labels, r = _data(1, t=t)
    onehot = np.eye(logits.shape[-1])[labels]
    sw = r.random(logits.shape[0]) + 0.1 if weighted else None
    for metric, kind, y_true in (
            (metrics.SparseCategoricalAccuracy(), "sparse", labels),
            (metrics.CategoricalAccuracy(), "categorical", onehot),
            (metrics.TopKCategoricalAccuracy(k=2), "top_k", onehot),
            (metrics.SparseTopKCategoricalAccuracy(k=3), "sparse_top_k", labels)):
        k = getattr(metric, "k", 5) or 5
        metric.update(y_true, logits.astype(np.float32), sw)
        expected = ref.weighted_mean(ref.accuracy_values(kind, y_true, logits, k=k), sw)
        assert metric.result() == pytest.approx(expected, rel=1e-12), metric.name
        # argmax by hand for the plain accuracies
        if kind in ("sparse", "categorical"):
            hits = (logits.argmax(-1) == labels).astype(float)
            assert metric.result() == pytest.approx(ref.weighted_mean(hits, sw))


def test_top_k_ties_and_bad_labels():
    scores = np.array([[0.1, 0.5, 0.5, 0.2], [0.4, 0.3, 0.2, 0.1], [0.4, 0.3, 0.2, 0.1]])
    m = metrics.SparseTopKCategoricalAccuracy(k=1)
    m.update(np.array([2, 0, 7]), scores)  # tie at the boundary counts; label 7 never matches
    assert m.result() == pytest.approx(2 / 3)
    a = metrics.SparseCategoricalAccuracy()
    a.update(np.array([[1], [0], [0]]), scores)  # first maximum wins, (b, 1) labels
    assert a.result() == pytest.approx(1.0)


def test_binary_accuracy_and_regression_metrics():
    r = np.random.default_rng(2)
    p = r.random((10, 1))
    y = (r.random(10) > 0.5).astype(np.float32)
    m = metrics.BinaryAccuracy()
    m.update(y, p)
    assert m.result() == pytest.approx(np.mean((p[:, 0] > 0.5) == (y == 1)))
    m2 = metrics.BinaryAccuracy(threshold=0.7)
    m2.update(y.reshape(10, 1), p.reshape(10))
    assert m2.result() == pytest.approx(np.mean((p[:, 0] > 0.7) == (y == 1)))
    yt, yp = r.standard_normal((6, 3)), r.standard_normal((6, 3))
    sw = r.random(6)
    mse, mae = metrics.MeanSquaredError(), metrics.MeanAbsoluteError()
    mse.update(yt, yp, sw)
    mae.update(yt, yp)
    assert mse.result() == pytest.approx(np.sum(((yp - yt) ** 2).mean(1) * sw) / sw.sum())
    assert mae.result() == pytest.approx(np.abs(yp - yt).mean())


def test_running_mean_reset_totals_merge():
    logits, labels, _ = _data(3, b=10)
    full = metrics.SparseCategoricalAccuracy()
    full.update(labels, logits)
    a, b = metrics.SparseCategoricalAccuracy(), metrics.SparseCategoricalAccuracy()
    a.update(labels[:3], logits[:3])
    b.update(labels[3:], logits[3:])
    tot = a.totals()
    assert tot.dtype == np.float64 and tot.shape == (2,) and tot[1] == 3
    b.merge_totals(tot)
    assert b.result() == pytest.approx(full.result(), rel=1e-15)
    b.reset()
    assert b.result() == 0.0 and list(b.totals()) == [0.0, 0.0]
    mean = metrics.Mean()
    mean.update(np.array([1.0, 2.0, 3.0]), sample_weight=np.array([1.0, 0.0, 1.0]))
    assert mean.result() == pytest.approx(2.0)


def test_sequence_samples_are_averaged_over_time():
    # Keras: each sample's matches are averaged over time, then weighted by its sample weight
    logits, labels, _ = _data(4, b=2, t=4)
    m = metrics.SparseCategoricalAccuracy()
    m.update(labels, logits, sample_weight=np.array([1.0, 3.0]))
    hits = (logits.argmax(-1) == labels).mean(axis=1)
    assert m.result() == pytest.approx((hits[0] + 3 * hits[1]) / 4)
    assert m.totals()[1] == 4.0


def test_accuracy_resolution_like_keras():
    probs = np.zeros((4, 3))
    labels = np.zeros(4)
    assert type(metrics.get("accuracy", y_true=labels, y_pred=probs)) is metrics.SparseCategoricalAccuracy
    assert type(metrics.get("accuracy", y_true=labels.reshape(4, 1), y_pred=probs)) is \
        metrics.SparseCategoricalAccuracy
    assert type(metrics.get("accuracy", y_true=probs, y_pred=probs)) is metrics.CategoricalAccuracy
    assert type(metrics.get("acc", y_true=labels, y_pred=np.zeros((4, 1)))) is metrics.BinaryAccuracy
    assert type(metrics.get("accuracy", loss="binary_crossentropy")) is metrics.BinaryAccuracy
    assert type(metrics.get("accuracy", loss=losses.SparseCategoricalCrossentropy(True))) is \
        metrics.SparseCategoricalAccuracy
    assert type(metrics.get("accuracy", loss="categorical_crossentropy")) is metrics.CategoricalAccuracy
    assert type(metrics.get("Accuracy", y_true=(4,), y_pred=(4, 3))) is metrics.SparseCategoricalAccuracy
    # names: the user's string is kept
    assert metrics.get("acc", y_true=labels, y_pred=probs).name == "acc"
    assert metrics.get("accuracy", loss="mse", y_true=probs, y_pred=probs).name == "accuracy"
    assert metrics.get("mse").name == "mse" and isinstance(metrics.get("mse"), metrics.MeanSquaredError)
    assert metrics.get("mean_absolute_error").name == "mean_absolute_error"
    assert metrics.get("top_k_categorical_accuracy").k == 5
    assert metrics.SparseTopKCategoricalAccuracy().name == "sparse_top_k_categorical_accuracy"
    assert metrics.MeanSquaredError().name == "mean_squared_error"
    inst = metrics.CategoricalAccuracy(name="cat")
    assert metrics.get(inst) is inst


def test_accuracy_decided_on_first_update():
    m = metrics.get("accuracy")
    logits, labels, _ = _data(5)
    m.update(labels, logits)
    assert m.name == "accuracy"
    assert m.result() == pytest.approx(np.mean(logits.argmax(-1) == labels))
    again = metrics.deserialize(metrics.serialize(m))
    assert again.name == "accuracy"


def test_loss_as_metric():
    logits, labels, _ = _data(6)
    m = metrics.get("sparse_categorical_crossentropy")
    m.update(labels, np.exp(logits) / np.exp(logits).sum(-1, keepdims=True))
    assert m.result() == pytest.approx(losses.SparseCategoricalCrossentropy(from_logits=True)(labels, logits))


def test_config_roundtrip():
    for m in (metrics.TopKCategoricalAccuracy(k=3, name="top3"), metrics.BinaryAccuracy(threshold=0.2),
              metrics.SparseCategoricalAccuracy(), metrics.MeanAbsoluteError()):
        back = metrics.deserialize(metrics.serialize(m))
        assert type(back) is type(m) and back.get_config() == m.get_config()


def test_errors():
    with pytest.raises(ValueError, match="`metrics`"):
        metrics.get("acuracy")
    with pytest.raises(ValueError, match=r"sparse_categorical_accuracy: y_true shape \(3,\)"):
        metrics.SparseCategoricalAccuracy().update(np.zeros(3), np.zeros((4, 2)))
    with pytest.raises(ValueError, match="categorical_accuracy: y_true shape"):
        metrics.CategoricalAccuracy().update(np.zeros(4), np.zeros((4, 2)))
    with pytest.raises(TypeError, match="mean_squared_error: expected a numeric y_true"):
        metrics.MeanSquaredError().update(np.array(["x", "y"]), np.zeros(2))
    with pytest.raises(ValueError, match="k must be"):
        metrics.TopKCategoricalAccuracy(k=0)
    with pytest.raises(ValueError, match="merge_totals"):
        metrics.Mean().merge_totals([1.0])


def test_large_batch_parallel_path():
    # above 65,536 elements the match kernels run in prange
    r = np.random.default_rng(7)
    scores = r.standard_normal((20000, 4)).astype(np.float32)
    labels = r.integers(0, 4, 20000)
    m = metrics.SparseCategoricalAccuracy()
    m.update(labels, scores)
    assert m.result() == pytest.approx(np.mean(scores.argmax(-1) == labels), rel=1e-12)
    top = metrics.TopKCategoricalAccuracy(k=2)
    top.update(np.eye(4)[labels], scores)
    assert top.result() == pytest.approx(ref.weighted_mean(ref.accuracy_values("top_k", np.eye(4)[labels],
                                                                              scores, k=2)), rel=1e-12)
