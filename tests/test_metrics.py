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


# ------------------------------------------- AUC, Precision, Recall, F1Score, R2Score
def _auc_reference(y, p, w, num_thresholds=200, curve="ROC"):
    """Keras' AUC written out in float64: confusion counts at -1e-7, 1/(n-1), ..., 1 + 1e-7 (y_pred > t,
    predictions clipped to [0, 1]); ROC by trapezoids, PR by Davis & Goadrich's interpolation."""
    y, p, w = (np.asarray(a, np.float64).reshape(-1) for a in (y, p, w))
    p = np.clip(p, 0, 1)
    ts = [-1e-7] + [(i + 1) / (num_thresholds - 1) for i in range(num_thresholds - 2)] + [1 + 1e-7]
    tp = np.array([np.sum(w * (y == 1) * (p > t)) for t in ts])
    fp = np.array([np.sum(w * (y == 0) * (p > t)) for t in ts])
    fn = np.sum(w * (y == 1)) - tp
    tn = np.sum(w * (y == 0)) - fp
    total = 0.0
    for i in range(num_thresholds - 1):
        if curve == "ROC":
            def rates(j):
                tpr = tp[j] / (tp[j] + fn[j]) if tp[j] + fn[j] else 0.0
                fpr = fp[j] / (fp[j] + tn[j]) if fp[j] + tn[j] else 0.0
                return fpr, tpr
            (x0, y0), (x1, y1) = rates(i), rates(i + 1)
            total += (x0 - x1) * (y0 + y1) / 2
        else:
            # precision along the segment, with tp linear in the number of predicted positives P
            p0, p1 = tp[i] + fp[i], tp[i + 1] + fp[i + 1]
            dtp = tp[i] - tp[i + 1]
            slope = dtp / (p0 - p1) if p0 - p1 > 0 else 0.0
            intercept = tp[i + 1] - slope * p1
            ratio = p0 / p1 if p0 > 0 and p1 > 0 else 1.0
            pos = tp[i + 1] + fn[i + 1]
            total += slope * (dtp + intercept * np.log(ratio)) / pos if pos > 0 else 0.0
    return total


def _binary_batches(seed, n=3, b=7):
    r = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        y = (r.random((b, 1)) > 0.4).astype(np.float32)
        p = np.clip(r.random((b, 1)) * 0.7 + 0.3 * y, 0, 1).astype(np.float32)
        out.append((y, p, r.random(b) + 0.1))
    out[0][1][0, 0] = 0.5  # exactly on a threshold: not above it
    out[0][1][1, 0] = 1.0
    return out


@pytest.mark.parametrize("curve", ["ROC", "PR"])
@pytest.mark.parametrize("weighted", [False, True])
def test_auc_matches_reference_and_streams(curve, weighted):
    batches = _binary_batches(8)
    streamed = metrics.AUC(curve=curve)
    for y, p, w in batches:
        streamed.update(y, p, w if weighted else None)
    y, p, w = (np.concatenate(a) for a in zip(*batches))
    w = w if weighted else np.ones_like(w)
    once = metrics.AUC(curve=curve)
    once.update(y, p, w)
    expected = _auc_reference(y, p, w, curve=curve)
    assert 0.5 < expected < 1.0
    assert streamed.result() == pytest.approx(expected, rel=1e-12)
    assert once.result() == pytest.approx(expected, rel=1e-12)
    assert isinstance(streamed.result(), float)


def test_auc_hand_values_and_options():
    y = np.array([1.0, 0.0, 1.0, 0.0])
    roc = metrics.AUC(num_thresholds=3)  # thresholds -1e-7, 0.5, 1 + 1e-7
    roc.update(y, np.array([0.9, 0.8, 0.3, 0.1]))  # tpr/fpr (1, 1), (0.5, 0.5), (0, 0)
    assert roc.result() == pytest.approx(0.5)
    roc.reset()
    roc.update(y, np.array([0.9, 0.3, 0.8, 0.1]))  # (1, 1), (1, 0), (0, 0)
    assert roc.result() == pytest.approx(1.0)
    minor = metrics.AUC(num_thresholds=3, summation_method="minoring")
    minor.update(y, np.array([0.9, 0.8, 0.3, 0.1]))
    assert minor.result() == pytest.approx(0.5 * 0.5)  # heights min(1, .5), min(.5, 0)
    major = metrics.AUC(num_thresholds=3, summation_method="majoring")
    major.update(y, np.array([0.9, 0.8, 0.3, 0.1]))
    assert major.result() == pytest.approx(0.5 * 1 + 0.5 * 0.5)
    # from_logits: the sigmoid first; a perfect ranking gives 1 for ROC and (nearly) 1 for PR
    logits = np.array([[3.0], [-2.0], [0.4], [-0.1]])
    lab = np.array([[1.0], [0.0], [1.0], [0.0]])
    a, b = metrics.AUC(from_logits=True), metrics.AUC()
    a.update(lab, logits)
    b.update(lab, 1 / (1 + np.exp(-logits)))
    assert a.result() == b.result() == pytest.approx(1.0)
    pr = metrics.AUC(curve="PR")
    pr.update(lab, 1 / (1 + np.exp(-logits)))
    assert pr.result() == pytest.approx(1.0, abs=0.02)
    # multi_label: one curve per column, averaged (label_weights: weighted)
    r = np.random.default_rng(3)
    yy = (r.random((12, 2)) > 0.5).astype(float)
    pp = r.random((12, 2))
    per = [_auc_reference(yy[:, j], pp[:, j], np.ones(12)) for j in range(2)]
    ml = metrics.AUC(multi_label=True)
    ml.update(yy, pp)
    assert ml.result() == pytest.approx(np.mean(per), rel=1e-12)
    mlw = metrics.AUC(multi_label=True, label_weights=[1.0, 3.0])
    mlw.update(yy, pp)
    assert mlw.result() == pytest.approx((per[0] + 3 * per[1]) / 4, rel=1e-12)
    flat = metrics.AUC()
    flat.update(yy, pp)
    assert flat.result() == pytest.approx(_auc_reference(yy, pp, np.ones(24)), rel=1e-12)


def test_precision_recall_hand_values():
    y = np.array([[1.0], [0.0], [1.0], [1.0], [0.0]])
    p = np.array([[0.7], [0.6], [0.5], [0.2], [0.1]])
    prec, rec = metrics.Precision(), metrics.Recall()  # threshold 0.5, strictly above
    prec.update(y, p)
    rec.update(y, p)
    assert prec.result() == pytest.approx(1 / 2) and rec.result() == pytest.approx(1 / 3)
    multi = metrics.Precision(thresholds=[0.4, 0.65, 0.0])
    multi.update(y, p)
    np.testing.assert_allclose(multi.result(), [2 / 3, 1.0, 3 / 5])
    wr = metrics.Recall(thresholds=0.3)
    wr.update(y, p, sample_weight=np.array([1.0, 1.0, 2.0, 4.0, 1.0]))
    assert wr.result() == pytest.approx(3 / 7)
    none = metrics.Precision()  # nothing predicted positive: 0, not NaN
    none.update(y, np.zeros((5, 1)))
    assert none.result() == 0.0
    # top_k and class_id on multi-class scores
    yt = np.array([[0, 1, 0], [1, 0, 0], [0, 0, 1], [0, 1, 0]], float)
    sc = np.array([[0.1, 0.6, 0.3], [0.2, 0.7, 0.1], [0.5, 0.1, 0.4], [0.3, 0.3, 0.4]])
    top1 = metrics.Precision(top_k=1)
    top1.update(yt, sc)  # top-1 picks: 1 (hit), 1 (miss), 0 (miss), 2 (miss)
    assert top1.result() == pytest.approx(1 / 4)
    top2 = metrics.Recall(top_k=2)
    top2.update(yt, sc)  # top-2: {1,2} hit, {0,1} hit, {0,2} hit, {2, 0 (first of the tie)} miss
    assert top2.result() == pytest.approx(3 / 4)
    c1 = metrics.Precision(class_id=1)
    c1.update(yt, sc)  # column 1 > 0.5: rows 0 (y=1), 1 (y=0)
    assert c1.result() == pytest.approx(1 / 2)
    c2 = metrics.Recall(class_id=2, thresholds=0.35)
    c2.update(yt, sc)  # class 2 positives: row 2 (0.4 > 0.35)
    assert c2.result() == pytest.approx(1.0)


def test_confusion_metrics_stream_and_merge():
    batches = _binary_batches(11, n=4)
    y, p, w = (np.concatenate(a) for a in zip(*batches))
    for make in (lambda: metrics.Precision(thresholds=[0.3, 0.6]), lambda: metrics.Recall(),
                 lambda: metrics.AUC(curve="PR", num_thresholds=50)):
        once, streamed, other = make(), make(), make()
        once.update(y, p, w)
        for i, (yb, pb, wb) in enumerate(batches):
            (streamed if i % 2 == 0 else other).update(yb, pb, wb)
        streamed.merge_totals(other.totals())
        np.testing.assert_allclose(streamed.result(), once.result(), rtol=1e-12)
        before = streamed.totals()
        streamed.reset()
        assert not streamed.totals().any() and before.any()
        with pytest.raises(ValueError, match="merge_totals expects"):
            streamed.merge_totals([1.0, 2.0])


def test_f1_score_hand_values():
    yt = np.array([[1, 0, 0], [0, 1, 0], [0, 1, 0], [0, 0, 1]], float)
    yp = np.array([[0.8, 0.1, 0.1], [0.6, 0.3, 0.1], [0.2, 0.7, 0.1], [0.3, 0.3, 0.4]])
    # argmax predictions: 0, 0, 1, 2 -> class 0: tp 1 fp 1 fn 0; class 1: tp 1 fn 1; class 2: tp 1
    e = 1e-7

    def f1(tp, fp, fn):
        prec, rec = tp / (tp + fp + e), tp / (tp + fn + e)
        return 2 * prec * rec / (prec + rec + e)

    per = np.array([f1(1, 1, 0), f1(1, 0, 1), f1(1, 0, 0)])
    m = metrics.F1Score()
    m.update(yt, yp)
    np.testing.assert_allclose(m.result(), per, rtol=1e-12)
    for average, want in (("macro", per.mean()), ("micro", f1(3, 1, 1)),
                          ("weighted", np.sum(per * np.array([1, 2, 1]) / (4 + e)))):
        a = metrics.F1Score(average=average)
        a.update(yt[:2], yp[:2])  # streaming: two batches
        a.update(yt[2:], yp[2:])
        assert a.result() == pytest.approx(want, rel=1e-12), average
    t = metrics.F1Score(average="macro", threshold=0.25)  # y_pred > 0.25: several per row
    t.update(yt, yp, sample_weight=np.array([1.0, 2.0, 1.0, 1.0]))
    tp = np.array([1, 3, 1.0])
    fp = np.array([2 + 1, 1, 0.0])  # class 0: rows 1 (w 2), 3; class 1: row 3
    fn = np.zeros(3)
    assert t.result() == pytest.approx(np.mean([f1(*v) for v in zip(tp, fp, fn)]), rel=1e-12)
    fb = metrics.FBetaScore(beta=2.0, average="micro")
    fb.update(yt, yp)
    prec, rec = 3 / (4 + e), 3 / (4 + e)
    assert fb.result() == pytest.approx(5 * prec * rec / (4 * prec + rec + e), rel=1e-12)


def test_r2_score_closed_form():
    r = np.random.default_rng(5)
    yt = r.standard_normal((9, 3))
    yp = yt + r.standard_normal((9, 3)) * 0.5
    w = r.random(9) + 0.2
    ss_res = ((yt - yp) ** 2 * w[:, None]).sum(0)
    mean = (yt * w[:, None]).sum(0) / w.sum()
    ss_tot = ((yt - mean) ** 2 * w[:, None]).sum(0)
    raw = 1 - ss_res / ss_tot
    for agg, want in ((None, raw), ("uniform_average", raw.mean()),
                      ("variance_weighted_average", np.sum(raw * ss_tot) / ss_tot.sum())):
        m = metrics.R2Score(class_aggregation=agg)
        m.update(yt[:4], yp[:4], w[:4])
        m.update(yt[4:], yp[4:], w[4:])
        np.testing.assert_allclose(m.result(), want, rtol=1e-10, err_msg=str(agg))
    adj = metrics.R2Score(num_regressors=2)
    adj.update(yt, yp)
    plain = 1 - ((yt - yp) ** 2).sum(0) / ((yt - yt.mean(0)) ** 2).sum(0)
    n = yt.size  # Keras counts every value as a sample
    assert adj.result() == pytest.approx(1 - (1 - plain.mean()) * (n - 1) / (n - 2 - 1), rel=1e-10)
    const = metrics.R2Score()  # a constant target: Keras turns the infinite score into 0
    const.update(np.ones((3, 1)), np.array([[1.0], [2.0], [0.5]]))
    assert const.result() == 0.0
    with pytest.warns(UserWarning, match="predictors"):
        tiny = metrics.R2Score(num_regressors=5)
        tiny.update(yt[:2, :1], yp[:2, :1])
        tiny.result()


def test_new_metric_names_config_and_errors():
    for key, cls in (("auc", metrics.AUC), ("AUC", metrics.AUC), ("precision", metrics.Precision),
                     ("recall", metrics.Recall), ("f1_score", metrics.F1Score), ("r2_score", metrics.R2Score)):
        m = metrics.get(key)
        assert type(m) is cls and m.name == key
    assert metrics.AUC().name == "auc" and metrics.F1Score().name == "f1_score"
    for m in (metrics.AUC(num_thresholds=50, curve="PR", summation_method="majoring", from_logits=True),
              metrics.AUC(thresholds=[0.2, 0.6], multi_label=True, num_labels=2, label_weights=[1.0, 2.0]),
              metrics.Precision(thresholds=[0.3, 0.7], class_id=1, name="p1"), metrics.Recall(top_k=2),
              metrics.F1Score(average="weighted", threshold=0.4), metrics.FBetaScore(beta=0.5),
              metrics.R2Score(class_aggregation=None, num_regressors=1)):
        back = metrics.deserialize(metrics.serialize(m))
        assert type(back) is type(m) and back.get_config() == m.get_config()
    assert metrics.AUC().get_config()["num_thresholds"] == 200
    assert metrics.Recall().get_config()["thresholds"] is None
    bad_labels = metrics.AUC()
    with pytest.raises(ValueError, match=r"auc: labels y_true must be in \[0, 1\], got 2"):
        bad_labels.update(np.array([0.0, 2.0]), np.array([0.1, 0.9]))
    with pytest.raises(ValueError, match=r"precision: labels y_true must be in \[0, 1\]"):
        metrics.Precision().update(np.array([-1.0]), np.array([0.9]))
    with pytest.raises(ValueError, match="auc: y_true shape"):
        metrics.AUC().update(np.zeros((4, 2)), np.zeros((4, 3)))
    with pytest.raises(ValueError, match="rank 2"):
        metrics.AUC(multi_label=True).update(np.zeros((2, 3, 2)), np.zeros((2, 3, 2)))
    with pytest.raises(ValueError, match="f1_score: expects 2D inputs"):
        metrics.F1Score().update(np.zeros((2, 3, 2)), np.zeros((2, 3, 2)))
    with pytest.raises(ValueError, match="r2_score: y_true shape"):
        metrics.R2Score().update(np.zeros((4, 2)), np.zeros((4, 3)))
    with pytest.raises(ValueError, match="sample_weight"):
        metrics.Recall().update(np.zeros((4, 1)), np.zeros((4, 1)), np.ones(3))
    with pytest.raises(ValueError, match="class_id 3 is out of range"):
        metrics.Precision(class_id=3).update(np.zeros((2, 3)), np.zeros((2, 3)))
    grown = metrics.F1Score()
    grown.update(np.eye(3), np.eye(3))
    with pytest.raises(ValueError, match="f1_score: got 4 values per sample"):
        grown.update(np.eye(4), np.eye(4))
    for make, msg in ((lambda: metrics.AUC(curve="XY"), "invalid `curve`"),
                      (lambda: metrics.AUC(summation_method="sum"), "invalid `summation_method`"),
                      (lambda: metrics.AUC(num_thresholds=1), "num_thresholds"),
                      (lambda: metrics.AUC(num_labels=3), "num_labels"),
                      (lambda: metrics.Precision(thresholds=[0.5, 1.5]), r"precision: thresholds must be"),
                      (lambda: metrics.Recall(top_k=0), "recall: top_k"),
                      (lambda: metrics.Recall(class_id=-1), "recall: class_id"),
                      (lambda: metrics.F1Score(average="mean"), "f1_score: invalid `average`"),
                      (lambda: metrics.F1Score(threshold=1.5), "f1_score: `threshold`"),
                      (lambda: metrics.FBetaScore(beta=0.0), "fbeta_score: `beta`"),
                      (lambda: metrics.R2Score(class_aggregation="variance_weighted"), "invalid `class_aggregation`"),
                      (lambda: metrics.R2Score(num_regressors=-1), "num_regressors")):
        with pytest.raises(ValueError, match=msg):
            make()


def test_new_metrics_in_compile_fit_and_evaluate():
    import nbmodel as nb
    from nbmodel import layers

    r = np.random.default_rng(0)
    x = r.standard_normal((24, 3)).astype(np.float32)
    y = (x[:, :1] + 0.5 * r.standard_normal((24, 1)) > 0).astype(np.float32)
    model = nb.Sequential([layers.Input((3,)), layers.Dense(1, activation="sigmoid")], seed=0)
    model.compile(optimizer="adam", loss="binary_crossentropy", metrics=["auc", "precision", "recall"])
    hist = model.fit(x, y, batch_size=8, epochs=2, verbose=0, validation_data=(x, y))
    assert {"auc", "precision", "recall", "val_auc", "val_precision", "val_recall"} <= set(hist.history)
    logs = model.evaluate(x, y, batch_size=5, return_dict=True)  # batches of 5: streaming state
    p = model.predict(x)
    want = {"auc": metrics.AUC(), "precision": metrics.Precision(), "recall": metrics.Recall()}
    for name, m in want.items():
        m.update(y, p)
        assert logs[name] == pytest.approx(m.result(), rel=1e-6), name
    assert logs["auc"] == pytest.approx(_auc_reference(y, p, np.ones(24)), rel=1e-6)
