"""Reference losses and metric values (float64 NumPy, Keras 3 formulas).

Each loss returns (total, count, dy) like ``nbmodel.losses.Loss.forward_backward``:
total = sum over loss elements of w_i * loss_i, count = number of elements
(valid labels with ignore_class), dy = d total / d y_pred. Gradients are the
textbook derivatives, written with whole-array NumPy operations.
"""
import numpy as np

EPS = 1e-7


def _weights(sample_weight, loss_shape):
    if sample_weight is None:
        return np.ones(loss_shape)
    w = np.asarray(sample_weight, np.float64)
    while w.ndim > len(loss_shape) and w.shape[-1] == 1:
        w = w[..., 0]
    w = w.reshape(w.shape + (1,) * (len(loss_shape) - w.ndim))
    return np.broadcast_to(w, loss_shape)


def _as_pairs(y_true, y_pred):
    yp = np.asarray(y_pred, np.float64)
    yt = np.asarray(y_true, np.float64).reshape(yp.shape)
    if yp.ndim == 1:
        yp, yt = yp[:, None], yt[:, None]
    return yt, yp


def _mean_last(elem, delem, yp, sample_weight, shape_in):
    """Loss = mean over the last axis of elem; dy from the elementwise derivative delem."""
    d = yp.shape[-1]
    per = elem.mean(axis=-1)
    w = _weights(sample_weight, per.shape)
    dy = delem * (w / d)[..., None]
    return float((w * per).sum()), per.size, dy.reshape(shape_in)


def mse(y_true, y_pred, sample_weight=None):
    yt, yp = _as_pairs(y_true, y_pred)
    e = yp - yt
    return _mean_last(e ** 2, 2 * e, yp, sample_weight, np.shape(y_pred))


def mae(y_true, y_pred, sample_weight=None):
    yt, yp = _as_pairs(y_true, y_pred)
    e = yp - yt
    return _mean_last(np.abs(e), np.sign(e), yp, sample_weight, np.shape(y_pred))


def huber(y_true, y_pred, delta=1.0, sample_weight=None):
    yt, yp = _as_pairs(y_true, y_pred)
    e = yp - yt
    small = np.abs(e) <= delta
    elem = np.where(small, 0.5 * e ** 2, delta * np.abs(e) - 0.5 * delta ** 2)
    delem = np.where(small, e, delta * np.sign(e))
    return _mean_last(elem, delem, yp, sample_weight, np.shape(y_pred))


def sigmoid(z):
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def binary_crossentropy(y_true, y_pred, from_logits=False, label_smoothing=0.0, sample_weight=None):
    yt, yp = _as_pairs(y_true, y_pred)
    t = yt * (1.0 - label_smoothing) + 0.5 * label_smoothing
    if from_logits:
        elem = np.maximum(yp, 0) - yp * t + np.log1p(np.exp(-np.abs(yp)))
        delem = sigmoid(yp) - t
    else:
        c = np.clip(yp, EPS, 1.0 - EPS)
        elem = -(t * np.log(c) + (1.0 - t) * np.log(1.0 - c))
        inside = (yp >= EPS) & (yp <= 1.0 - EPS)
        delem = np.where(inside, -t / c + (1.0 - t) / (1.0 - c), 0.0)
    return _mean_last(elem, delem, yp, sample_weight, np.shape(y_pred))


def log_softmax(z):
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def categorical_crossentropy(y_true, y_pred, from_logits=False, label_smoothing=0.0, sample_weight=None):
    yp = np.asarray(y_pred, np.float64)
    c_n = yp.shape[-1]
    t = np.asarray(y_true, np.float64) * (1.0 - label_smoothing) + label_smoothing / c_n
    w = _weights(sample_weight, yp.shape[:-1])
    if from_logits:
        ls = log_softmax(yp)
        per = -(t * ls).sum(axis=-1)
        dy = np.exp(ls) * t.sum(axis=-1, keepdims=True) - t
    else:
        s = yp.sum(axis=-1, keepdims=True)
        q = yp / s
        c = np.clip(q, EPS, 1.0 - EPS)
        per = -(t * np.log(c)).sum(axis=-1)
        # chain rule through the clip (zero where clipped) and the normalization q = p / s
        g = np.where((q >= EPS) & (q <= 1.0 - EPS), -t / c, 0.0)
        dy = (g - (g * q).sum(axis=-1, keepdims=True)) / s
    return float((w * per).sum()), per.size, dy * w[..., None]


def sparse_categorical_crossentropy(y_true, y_pred, from_logits=False, ignore_class=None, sample_weight=None):
    yp = np.asarray(y_pred, np.float64)
    c_n = yp.shape[-1]
    labels = np.asarray(y_true).reshape(yp.shape[:-1])
    valid = np.ones(labels.shape, bool) if ignore_class is None else labels != ignore_class
    safe = np.where(valid, labels, 0).astype(np.int64)
    onehot = np.eye(c_n)[safe]
    total, _, dy = categorical_crossentropy(onehot, yp, from_logits=from_logits,
                                            sample_weight=_weights(sample_weight, labels.shape) * valid)
    return total, int(valid.sum()), dy


# ------------------------------------------------------------------ metrics
def accuracy_values(kind, y_true, y_pred, k=5, threshold=0.5):
    """One value per loss element: 1.0 where the prediction counts as right."""
    yp = np.asarray(y_pred, np.float64)
    if kind == "binary":
        yt, yp = _as_pairs(y_true, y_pred)
        return ((yp > threshold) == (yt == 1)).mean(axis=-1)
    if kind in ("sparse", "sparse_top_k"):
        labels = np.asarray(y_true, np.float64).reshape(yp.shape[:-1])
    else:
        labels = np.asarray(y_true, np.float64).argmax(axis=-1)
    flat = yp.reshape(-1, yp.shape[-1])
    lab = labels.reshape(-1)
    out = np.zeros(lab.size)
    for i, (row, t) in enumerate(zip(flat, lab)):
        if t != int(t) or not 0 <= t < row.size:
            continue
        t = int(t)
        if kind in ("sparse", "categorical"):
            out[i] = float(np.argmax(row) == t)
        else:  # ties at the boundary count as in the top k
            out[i] = float((row > row[t]).sum() < k)
    return out.reshape(labels.shape)


def weighted_mean(values, sample_weight=None):
    """Keras mean-metric result over one batch: samplewise means, weighted by sample."""
    v = np.asarray(values, np.float64)
    v = v.reshape(v.shape[0], -1).mean(axis=1)
    w = np.ones_like(v) if sample_weight is None else np.asarray(sample_weight, np.float64).reshape(-1)
    return float((v * w).sum() / w.sum())


# ------------------------------------------------- the contract's names
_DENSE = {"mse": mse, "mae": mae, "huber": huber, "binary_crossentropy": binary_crossentropy}


def dense_loss(kind, y_true, y_pred, **kwargs):
    """The elementwise losses (mse, mae, huber, binary_crossentropy by name): (total, count, dy)."""
    return _DENSE[kind](y_true, y_pred, **kwargs)


categorical_ce = categorical_crossentropy
sparse_ce = sparse_categorical_crossentropy


def sparse_matches(labels, y_pred, k=0):
    """1.0 where the label is the argmax (k = 0) or among the k highest scores."""
    return accuracy_values("sparse" if k == 0 else "sparse_top_k", labels, y_pred, k=k)


def categorical_matches(y_true, y_pred, k=0):
    """sparse_matches against one-hot targets."""
    return accuracy_values("categorical" if k == 0 else "top_k", y_true, y_pred, k=k)
