"""Metrics (Keras 3 names and semantics) as running weighted means.

A metric keeps two float64 numbers, ``total`` and ``count``; ``result()`` is
total / count (0 when count is 0). Like Keras' mean metrics, each sample
contributes the mean of its values over the non-batch axes (a sequence of t
predictions is one sample), weighted by its sample weight; count adds the
weights (the number of samples without weights). ``totals()`` and
``merge_totals()`` let data-parallel replicas add their numbers exactly.

``get("accuracy")`` picks the accuracy like Keras ``compile``: binary when the
loss is binary cross-entropy or y_pred has one column, sparse categorical when
the loss is sparse cross-entropy or y_true has one axis fewer than y_pred (or
a last axis of 1 against C > 1 classes), else categorical. Without a loss or
data to decide from, it decides on its first update. A metric asked for by a
string is NAMED BY THAT STRING (``"acc"`` logs as ``acc``, ``"mse"`` as ``mse``),
as Keras 3 does; an instance keeps its own name.

One-dimensional y_pred (b,) is read as (b, 1).

Metrics that are not means (AUC, Precision, Recall, F1Score/FBetaScore,
R2Score) keep Keras' state variables (confusion counts per threshold, sums
per class) as one float64 array; ``totals()`` returns all of it and
``merge_totals()`` adds another copy, so streaming over batches (and merging)
gives the result of one big batch. They run on the host in NumPy.
"""
from __future__ import annotations

import math
import numbers
import warnings

import numpy as np

from . import losses as losses_module
from .backend import Device, default_device, get_device

__all__ = ["Metric", "Mean", "BinaryAccuracy", "CategoricalAccuracy", "SparseCategoricalAccuracy",
           "TopKCategoricalAccuracy", "SparseTopKCategoricalAccuracy", "MeanSquaredError",
           "MeanAbsoluteError", "LossMetric", "AUC", "Precision", "Recall", "FBetaScore", "F1Score", "R2Score",
           "get", "serialize", "deserialize"]


def _numeric(arr, name, what):
    arr = np.asarray(arr)
    if arr.dtype.kind not in "fiub":
        raise TypeError(f"{name}: expected a numeric {what}, got dtype {arr.dtype}")
    return arr


class Metric:
    """Base class: a weighted running mean of per-sample values.

    Subclasses implement ``_values(y_true, y_pred)`` returning one value per
    loss element (shape y_pred.shape[:-1]); custom metrics may override
    ``update`` and keep ``total``/``count`` themselves.
    """

    name = "metric"

    def __init__(self, name=None, dtype=None):
        if name is not None:
            self.name = name
        self.dtype = dtype
        self.total = 0.0
        self.count = 0.0
        self.device: Device = default_device()

    # Metrics whose _values take arrays on the device (kernel metrics); the
    # others get host copies of y_true and y_pred.
    on_device = False

    def to(self, device) -> Metric:
        """Read predictions from arrays on ``device`` (a model's compile and ``to`` call this)."""
        self.device = get_device(device)
        return self

    def _host(self, a):
        """``a`` as host data: device arrays are copied back, anything else passes through."""
        return self.device.to_host(a) if self.device.is_array(a) else a

    # ------------------------------------------------------------------ API
    def update(self, y_true, y_pred, sample_weight=None):
        if not self.on_device:
            y_true, y_pred = self._host(y_true), self._host(y_pred)
        self._accumulate(self._values(y_true, y_pred), sample_weight)

    def result(self) -> float:
        return self.total / self.count if self.count else 0.0

    def reset(self):
        self.total = 0.0
        self.count = 0.0

    def build(self, y_true_shape, y_pred_shape) -> None:
        """Size what ``totals()`` holds from the shapes of labels and predictions (shapes or
        arrays, batch first, None for unknown sizes) before the first update: data-parallel replicas
        size their exchange buffers from it. A mean's [total, count] needs nothing."""

    def totals(self) -> np.ndarray:
        """float64 [total, count]: what a data-parallel replica sends to be summed."""
        return np.array([self.total, self.count], np.float64)

    def merge_totals(self, arr):
        """Add another replica's ``totals()``."""
        arr = np.asarray(arr, np.float64).reshape(-1)
        if arr.size != 2:
            raise ValueError(f"{self.name}: merge_totals expects [total, count], got {arr.size} numbers")
        self.total += float(arr[0])
        self.count += float(arr[1])

    # Keras spellings
    def update_state(self, y_true, y_pred, sample_weight=None):
        self.update(y_true, y_pred, sample_weight)

    def reset_state(self):
        self.reset()

    def get_config(self) -> dict:
        cfg = {"name": self.name}
        if self.dtype is not None:
            cfg["dtype"] = self.dtype
        return cfg

    @classmethod
    def from_config(cls, cfg):
        return cls(**cfg)

    def __repr__(self):
        return f"<{type(self).__name__} name={self.name!r} result={self.result():.6g}>"

    # ------------------------------------------------------------- helpers
    def _values(self, y_true, y_pred):
        raise NotImplementedError(f"{type(self).__name__} does not implement _values")

    def _accumulate(self, values, sample_weight):
        """Keras' samplewise reduction: values averaged over non-batch axes, weighted per sample."""
        values = np.asarray(values, np.float64)
        if values.ndim == 0:
            values = values.reshape(1)
        if sample_weight is None:
            if values.ndim > 1:
                values = values.reshape(values.shape[0], -1).mean(axis=1)
            self.total += float(values.sum())
            self.count += float(values.size)
            return
        sw = np.asarray(_numeric(sample_weight, self.name, "sample_weight"), np.float64)
        if sw.ndim == values.ndim + 1 and sw.shape[-1] == 1:
            sw = sw.reshape(sw.shape[:-1])
        elif values.ndim == sw.ndim + 1 and values.shape[-1] == 1 and sw.ndim > 0:
            values = values.reshape(values.shape[:-1])
        if sw.ndim > values.ndim or sw.shape != values.shape[:sw.ndim] and sw.ndim > 0:
            raise ValueError(f"{self.name}: sample_weight of shape {sw.shape} does not match values "
                             f"of shape {values.shape}")
        if values.ndim > max(sw.ndim, 1):
            keep = max(sw.ndim, 1)
            values = values.reshape(values.shape[:keep] + (-1,)).mean(axis=-1)
        sw_b = np.broadcast_to(sw, values.shape)
        values = values * sw_b
        if values.ndim > 1:
            values = values.reshape(values.shape[0], -1).mean(axis=1)
            sw_b = sw_b.reshape(sw_b.shape[0], -1).mean(axis=1)
        self.total += float(values.sum())
        self.count += float(sw_b.sum())


class Mean(Metric):
    """Weighted mean of the values given: ``update(values, sample_weight=None)``."""

    name = "mean"

    def update(self, values, sample_weight=None):
        self._accumulate(_numeric(values, self.name, "values"), sample_weight)

    def update_state(self, values, sample_weight=None):
        self.update(values, sample_weight)


def _as_2d_pred(name, y_true, y_pred):
    """(y_true, y_pred) numeric with y_pred of rank >= 2 and matching shapes (trailing 1 squeezed)."""
    y_pred = _numeric(y_pred, name, "y_pred")
    y_true = _numeric(y_true, name, "y_true")
    if y_pred.ndim == 1:
        y_pred = y_pred.reshape(-1, 1)
    if y_true.shape != y_pred.shape:
        if y_true.shape + (1,) == y_pred.shape or y_true.shape == y_pred.shape + (1,):
            y_true = y_true.reshape(y_pred.shape)
        else:
            raise ValueError(f"{name}: y_true shape {y_true.shape} does not match y_pred shape {y_pred.shape}")
    return y_true, y_pred


class BinaryAccuracy(Metric):
    """Fraction of predictions on the right side of ``threshold``."""

    name = "binary_accuracy"

    def __init__(self, name=None, dtype=None, threshold=0.5):
        super().__init__(name, dtype)
        self.threshold = float(threshold)

    def _values(self, y_true, y_pred):
        y_true, y_pred = _as_2d_pred(self.name, y_true, y_pred)
        hits = (y_pred > self.threshold).astype(np.float64) == y_true.astype(np.float64)
        return hits.mean(axis=-1)

    def get_config(self):
        return {**super().get_config(), "threshold": self.threshold}


class _Matches(Metric):
    """Accuracy from the matches kernel: k = 0 is argmax, k >= 1 top-k."""

    sparse = False
    k = 0
    on_device = True

    def _values(self, y_true, y_pred):
        dev = self.device
        y_pred = y_pred if dev.is_array(y_pred) else _numeric(y_pred, self.name, "y_pred")
        y_true = y_true if dev.is_array(y_true) else _numeric(y_true, self.name, "y_true")
        if y_pred.ndim < 2:
            raise ValueError(f"{self.name}: expected y_pred of rank >= 2 (batch, ..., classes), "
                             f"got shape {y_pred.shape}")
        c = y_pred.shape[-1]
        lab_shape = y_pred.shape[:-1]
        n = math.prod(lab_shape)
        yp = dev.asarray(y_pred, y_pred.dtype if y_pred.dtype in (np.float32, np.float64) else np.float64)
        yp = yp.reshape(n, c)
        out = dev.empty(n, np.float64)
        kernels = dev.kernels("losses")
        if self.sparse:
            if y_true.shape != lab_shape:
                if y_true.shape == lab_shape + (1,):
                    y_true = y_true.reshape(lab_shape)
                else:
                    raise ValueError(f"{self.name}: y_true shape {y_true.shape} does not match y_pred "
                                     f"shape {y_pred.shape}; expected integer labels of shape {lab_shape}")
            labels = dev.asarray(y_true, y_true.dtype if y_true.dtype in (np.int64, np.float64) else np.float64)
            if n:
                kernels.sparse_matches(labels.reshape(n), yp, self.k, out)
        else:
            if y_true.shape != y_pred.shape:
                raise ValueError(f"{self.name}: y_true shape {y_true.shape} does not match y_pred shape "
                                 f"{y_pred.shape}; expected one-hot targets")
            yt = dev.asarray(y_true, yp.dtype).reshape(n, c)
            if n:
                kernels.categorical_matches(yt, yp, self.k, out)
        return dev.to_host(out).reshape(lab_shape)


class CategoricalAccuracy(_Matches):
    """argmax(y_pred) == argmax(y_true) (one-hot targets)."""

    name = "categorical_accuracy"


class SparseCategoricalAccuracy(_Matches):
    """argmax(y_pred) == y_true (integer labels)."""

    name = "sparse_categorical_accuracy"
    sparse = True


class TopKCategoricalAccuracy(_Matches):
    """argmax(y_true) among the k highest scores (ties at the boundary count as in)."""

    name = "top_k_categorical_accuracy"

    def __init__(self, k=5, name=None, dtype=None):
        super().__init__(name, dtype)
        if int(k) != k or k < 1:
            raise ValueError(f"{self.name}: k must be a positive integer, got {k!r}")
        self.k = int(k)

    def get_config(self):
        return {**super().get_config(), "k": self.k}


class SparseTopKCategoricalAccuracy(TopKCategoricalAccuracy):
    """The integer label among the k highest scores."""

    name = "sparse_top_k_categorical_accuracy"
    sparse = True


class MeanSquaredError(Metric):
    name = "mean_squared_error"

    def _values(self, y_true, y_pred):
        y_true, y_pred = _as_2d_pred(self.name, y_true, y_pred)
        d = np.asarray(y_pred, np.float64) - y_true
        return (d * d).mean(axis=-1)


class MeanAbsoluteError(Metric):
    name = "mean_absolute_error"

    def _values(self, y_true, y_pred):
        y_true, y_pred = _as_2d_pred(self.name, y_true, y_pred)
        return np.abs(np.asarray(y_pred, np.float64) - y_true).mean(axis=-1)


class LossMetric(Metric):
    """A loss tracked as a metric (metrics=["binary_crossentropy"]): total and count
    are the loss's own (weighted sum of loss elements, their number)."""

    def __init__(self, loss="mean_squared_error", name=None, dtype=None):
        self.loss = losses_module.get(loss)
        super().__init__(name or self.loss.name, dtype)

    def to(self, device):
        self.loss.to(device)
        return super().to(device)

    def update(self, y_true, y_pred, sample_weight=None):
        total, count = self.loss.forward(y_true, y_pred, sample_weight)
        self.total += total
        self.count += count

    def get_config(self):
        return {**super().get_config(), "loss": losses_module.serialize(self.loss)}


class _AutoAccuracy(Metric):
    """"accuracy" whose kind is decided from the shapes of its first update."""

    def __init__(self, name="accuracy", dtype=None):
        super().__init__(name, dtype)
        self._inner = None

    def update(self, y_true, y_pred, sample_weight=None):
        if self._inner is None:
            self._inner = _pick_accuracy(None, np.shape(y_true), np.shape(y_pred))(name=self.name)
        inner = self._inner.to(self.device)
        if not inner.on_device:
            y_true, y_pred = self._host(y_true), self._host(y_pred)
        self._accumulate(inner._values(y_true, y_pred), sample_weight)


# ------------------------------------------------------- state-vector metrics
_EPSILON = 1e-7  # keras.backend.epsilon()
_NEG_INF = -1e10  # Keras' threshold when top_k is set


def _div0(a, b):
    """a / b, 0 where b == 0 (Keras' divide_no_nan)."""
    a, b = np.broadcast_arrays(np.asarray(a, np.float64), np.asarray(b, np.float64))
    out = np.zeros(a.shape)
    np.divide(a, b, out=out, where=b != 0)
    return out


def _scalar(x):
    x = np.asarray(x, np.float64)
    return float(x) if x.ndim == 0 else x


class _StateMetric(Metric):
    """A metric whose state is ``_rows`` float64 vectors of sums (Keras' variables), one array
    ``state`` of shape (rows, width); the width is known at construction or from the first update."""

    _rows = 1

    def __init__(self, name=None, dtype=None, width=None):
        super().__init__(name, dtype)
        self.state = None if width is None else np.zeros((self._rows, int(width)))

    def build(self, y_true_shape, y_pred_shape) -> None:
        """The state's width from one update on zeros of these shapes, then zeroed."""
        if self.state is None:
            shapes = [tuple(1 if d is None else int(d) for d in (1,) + tuple(_shape(sh))[1:])
                      for sh in (y_true_shape, y_pred_shape)]
            self._update(np.zeros(shapes[0]), np.zeros(shapes[1]), None)
            self.reset()

    def _ensure(self, width):
        if self.state is None:
            self.state = np.zeros((self._rows, int(width)))
        elif self.state.shape[1] != width:
            raise ValueError(f"{self.name}: got {width} values per sample where earlier updates had "
                             f"{self.state.shape[1]}")
        return self.state

    def update(self, y_true, y_pred, sample_weight=None):
        self._update(self._host(y_true), self._host(y_pred),
                     None if sample_weight is None else self._host(sample_weight))

    def _update(self, y_true, y_pred, sample_weight):
        raise NotImplementedError(f"{type(self).__name__} does not implement _update")

    def reset(self):
        if self.state is not None:
            self.state[...] = 0.0

    def totals(self) -> np.ndarray:
        """float64: the whole state, flattened (empty before the first update when its size is unknown)."""
        return np.zeros(0) if self.state is None else self.state.reshape(-1).copy()

    def merge_totals(self, arr):
        arr = np.asarray(arr, np.float64).reshape(-1)
        if self.state is None:
            if arr.size == 0:
                return
            if arr.size % self._rows:
                raise ValueError(f"{self.name}: merge_totals expects this metric's totals() ({self._rows} rows), "
                                 f"got {arr.size} numbers")
            self.state = np.zeros((self._rows, arr.size // self._rows))
        if arr.size != self.state.size:
            raise ValueError(f"{self.name}: merge_totals expects {self.state.size} numbers (this metric's "
                             f"totals()), got {arr.size}")
        self.state += arr.reshape(self.state.shape)

    def __repr__(self):
        r = self.result()
        text = f"{r:.6g}" if np.ndim(r) == 0 else np.array2string(np.asarray(r), precision=6)
        return f"<{type(self).__name__} name={self.name!r} result={text}>"


def _check_labels01(name, y_true):
    y = np.asarray(y_true, np.float64)
    bad = ~((y >= 0) & (y <= 1))
    if bad.any():
        raise ValueError(f"{name}: labels y_true must be in [0, 1], got {float(y[bad].reshape(-1)[0])}")
    return y


def _broadcast_weight(name, sample_weight, shape):
    """Keras' confusion-matrix weights: (b,) -> (b, 1, ...) broadcast to ``shape``."""
    sw = np.asarray(_numeric(sample_weight, name, "sample_weight"), np.float64)
    if 0 < sw.ndim < len(shape):
        sw = sw.reshape(sw.shape + (1,) * (len(shape) - sw.ndim))
    try:
        return np.broadcast_to(sw, shape)
    except ValueError:
        raise ValueError(f"{name}: sample_weight of shape {np.shape(sample_weight)} does not broadcast to "
                         f"y_pred of shape {shape}") from None


def _confusion(y_true, y_pred, weights, thresholds):
    """(4, T, L) float64 [tp, fp, tn, fn] per threshold and column of y_true, y_pred (n, L):
    positive where y_true != 0, predicted positive where y_pred > threshold (Keras; NaN never)."""
    thresholds = np.asarray(thresholds, np.float64)
    order = np.argsort(thresholds, kind="stable")
    srt = thresholds[order]
    n_t = srt.size
    n, n_l = y_pred.shape
    # above[i, l]: how many (sorted) thresholds y_pred[i, l] exceeds
    above = np.searchsorted(srt, y_pred.reshape(-1), side="left").reshape(n, n_l)
    above[np.isnan(y_pred)] = 0
    pos = (y_true != 0).astype(np.float64) * weights
    neg = (y_true == 0).astype(np.float64) * weights
    idx = (above + np.arange(n_l) * (n_t + 1)).reshape(-1)
    out = np.empty((4, n_t, n_l))
    for row, w in ((0, pos), (1, neg)):
        hist = np.bincount(idx, w.reshape(-1), minlength=n_l * (n_t + 1)).reshape(n_l, n_t + 1)
        # predicted positive at sorted threshold j: exceeds more than j thresholds
        out[row] = np.cumsum(hist[:, ::-1], axis=1)[:, ::-1][:, 1:].T
    out[2] = neg.sum(axis=0) - out[1]
    out[3] = pos.sum(axis=0) - out[0]
    inverse = np.empty_like(order)
    inverse[order] = np.arange(n_t)
    return out[:, inverse, :]


class _ConfusionMetric(_StateMetric):
    """Precision / Recall: [tp, fp, tn, fn] per threshold (Keras' confusion-matrix variables)."""

    _rows = 4

    def __init__(self, thresholds=None, top_k=None, class_id=None, name=None, dtype=None):
        if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, numbers.Integral) or top_k < 1):
            raise ValueError(f"{name or self.name}: top_k must be a positive integer or None, got {top_k!r}")
        if class_id is not None and (isinstance(class_id, bool) or not isinstance(class_id, numbers.Integral)
                                     or class_id < 0):
            raise ValueError(f"{name or self.name}: class_id must be a non-negative integer or None, "
                             f"got {class_id!r}")
        self.init_thresholds = thresholds
        self.top_k = None if top_k is None else int(top_k)
        self.class_id = None if class_id is None else int(class_id)
        self.thresholds = _parse_thresholds(name or self.name, thresholds,
                                            0.5 if top_k is None else _NEG_INF)
        super().__init__(name, dtype, width=len(self.thresholds))

    def _update(self, y_true, y_pred, sample_weight):
        y_true, y_pred = _as_2d_pred(self.name, y_true, y_pred)
        y_true = _check_labels01(self.name, y_true)
        y_pred = np.asarray(y_pred, np.float64)
        w = (np.ones(y_pred.shape) if sample_weight is None
             else _broadcast_weight(self.name, sample_weight, y_pred.shape))
        if self.top_k is not None:
            k = min(self.top_k, y_pred.shape[-1])
            top = np.argsort(-y_pred, axis=-1, kind="stable")[..., :k]
            keep = np.zeros(y_pred.shape, bool)
            np.put_along_axis(keep, top, True, axis=-1)
            y_pred = np.where(keep, y_pred, _NEG_INF)
        if self.class_id is not None:
            if self.class_id >= y_pred.shape[-1]:
                raise ValueError(f"{self.name}: class_id {self.class_id} is out of range for y_pred with "
                                 f"{y_pred.shape[-1]} classes")
            sl = (Ellipsis, slice(self.class_id, self.class_id + 1))
            y_true, y_pred, w = y_true[sl], y_pred[sl], w[sl]
        conf = _confusion(y_true.reshape(-1, 1), y_pred.reshape(-1, 1), w.reshape(-1, 1), self.thresholds)
        self._ensure(len(self.thresholds))
        self.state += conf[:, :, 0]

    def get_config(self):
        return {**super().get_config(), "thresholds": self.init_thresholds, "top_k": self.top_k,
                "class_id": self.class_id}


def _parse_thresholds(name, thresholds, default):
    if thresholds is None:
        return [default]
    values = list(thresholds) if isinstance(thresholds, (list, tuple, np.ndarray)) else [thresholds]
    for t in values:
        if isinstance(t, bool) or not isinstance(t, numbers.Real) or not 0 <= t <= 1:
            raise ValueError(f"{name}: thresholds must be numbers in [0, 1], got {t!r}")
    if not values:
        raise ValueError(f"{name}: thresholds must not be empty")
    return [float(t) for t in values]


class Precision(_ConfusionMetric):
    """tp / (tp + fp) at each threshold (y_pred > threshold; default 0.5, or the top_k scores when
    top_k is set), optionally for one class_id; a list of thresholds gives one value per threshold."""

    name = "precision"

    def result(self):
        tp, fp = self.state[0], self.state[1]
        r = _div0(tp, tp + fp)
        return float(r[0]) if r.size == 1 else r


class Recall(_ConfusionMetric):
    """tp / (tp + fn) at each threshold (as Precision)."""

    name = "recall"

    def result(self):
        tp, fn = self.state[0], self.state[3]
        r = _div0(tp, tp + fn)
        return float(r[0]) if r.size == 1 else r


class AUC(_StateMetric):
    """Area under the ROC or PR curve from confusion counts at ``num_thresholds`` thresholds
    (Keras: -1e-7, 1/(n-1), ..., (n-2)/(n-1), 1 + 1e-7; predictions clipped to [0, 1] when the
    thresholds are evenly spaced), summed by ``summation_method`` ("interpolation": trapezoids,
    PR with Davis & Goadrich's interpolation; "minoring", "majoring"). ``multi_label``: one curve
    per column, averaged (weighted by ``label_weights``); else every value is one binary prediction."""

    name = "auc"
    _rows = 4

    def __init__(self, num_thresholds=200, curve="ROC", summation_method="interpolation", name=None, dtype=None,
                 thresholds=None, multi_label=False, num_labels=None, label_weights=None, from_logits=False):
        cls = name or self.name
        curve_key = str(curve).upper()
        if curve_key not in ("ROC", "PR"):
            raise ValueError(f"{cls}: invalid `curve` {curve!r}; expected one of ['ROC', 'PR']")
        method = str(summation_method).lower()
        if method not in ("interpolation", "minoring", "majoring"):
            raise ValueError(f"{cls}: invalid `summation_method` {summation_method!r}; expected one of "
                             f"['interpolation', 'minoring', 'majoring']")
        self._init_from_thresholds = thresholds is not None
        if thresholds is not None:
            inner = sorted(_parse_thresholds(cls, thresholds, None))
            self.num_thresholds = len(inner) + 2
            even = np.arange(self.num_thresholds) / (self.num_thresholds - 1)
            self._evenly = self.num_thresholds >= 3 and np.allclose([0.0] + inner + [1.0], even, atol=_EPSILON)
        else:
            if isinstance(num_thresholds, bool) or not isinstance(num_thresholds, numbers.Integral) \
                    or num_thresholds <= 1:
                raise ValueError(f"{cls}: argument `num_thresholds` must be an integer > 1, got {num_thresholds!r}")
            self.num_thresholds = int(num_thresholds)
            inner = [(i + 1) / (self.num_thresholds - 1) for i in range(self.num_thresholds - 2)]
            self._evenly = True
        self._thresholds = np.array([0.0 - _EPSILON] + inner + [1.0 + _EPSILON])
        if num_labels is not None and not multi_label:
            raise ValueError(f"{cls}: `num_labels` is needed only when `multi_label` is True")
        self.curve = curve_key
        self.summation_method = method
        self.multi_label = bool(multi_label)
        self.num_labels = None if num_labels is None else int(num_labels)
        self.label_weights = None if label_weights is None else [float(w) for w in np.ravel(label_weights)]
        if self.label_weights is not None and min(self.label_weights) < 0:
            raise ValueError(f"{cls}: label_weights must be non-negative, got {self.label_weights}")
        self.from_logits = bool(from_logits)
        width = self.num_thresholds * (self.num_labels if self.multi_label else 1) \
            if (not self.multi_label or self.num_labels) else None
        super().__init__(name, dtype, width=width)

    @property
    def thresholds(self) -> list:
        return list(self._thresholds)

    def _update(self, y_true, y_pred, sample_weight):
        y_true, y_pred = _as_2d_pred(self.name, y_true, y_pred)
        y_true = _check_labels01(self.name, y_true)
        y_pred = np.asarray(y_pred, np.float64)
        if self.multi_label and y_pred.ndim != 2:
            raise ValueError(f"{self.name}: y_pred must have rank 2 (batch, labels) when multi_label=True, "
                             f"got shape {y_pred.shape}")
        if self.from_logits:
            with np.errstate(over="ignore"):
                y_pred = 1.0 / (1.0 + np.exp(-y_pred))
        if self._evenly:
            y_pred = np.clip(y_pred, 0.0, 1.0)
        w = (np.ones(y_pred.shape) if sample_weight is None
             else _broadcast_weight(self.name, sample_weight, y_pred.shape))
        if self.label_weights is not None and not self.multi_label:
            lw = np.asarray(self.label_weights)
            if lw.size not in (1, y_pred.shape[-1]):
                raise ValueError(f"{self.name}: {lw.size} label_weights for {y_pred.shape[-1]} labels")
            w = w * lw
        if self.multi_label:
            n_l = y_pred.shape[1]
            if self.label_weights is not None and len(self.label_weights) != n_l:
                raise ValueError(f"{self.name}: {len(self.label_weights)} label_weights for {n_l} labels")
            conf = _confusion(y_true, y_pred, w, self._thresholds)
        else:
            n_l = 1
            conf = _confusion(y_true.reshape(-1, 1), y_pred.reshape(-1, 1), w.reshape(-1, 1), self._thresholds)
        self._ensure(self.num_thresholds * n_l)
        self.state += conf.reshape(4, -1)

    def _by_label(self, values):
        """Sum over thresholds, then Keras' label average (multi_label) or the single curve."""
        per_label = values.sum(axis=0)
        if not self.multi_label:
            return float(per_label[0])
        if self.label_weights is None:
            return float(per_label.mean())
        lw = np.asarray(self.label_weights)
        return float(_div0((per_label * lw).sum(), lw.sum()))

    def result(self):
        if self.state is None:
            return 0.0
        tp, fp, tn, fn = self.state.reshape(4, self.num_thresholds, -1)
        if self.curve == "PR" and self.summation_method == "interpolation":
            dtp = tp[:-1] - tp[1:]
            p = tp + fp
            dp = p[:-1] - p[1:]
            slope = _div0(dtp, np.maximum(dp, 0))
            intercept = tp[1:] - slope * p[1:]
            ratio = np.where((p[:-1] > 0) & (p[1:] > 0), _div0(p[:-1], np.maximum(p[1:], 0)), 1.0)
            inc = _div0(slope * (dtp + intercept * np.log(ratio)), np.maximum(tp[1:] + fn[1:], 0))
            return self._by_label(inc)
        recall = _div0(tp, tp + fn)
        if self.curve == "ROC":
            x, y = _div0(fp, fp + tn), recall
        else:
            x, y = recall, _div0(tp, tp + fp)
        if self.summation_method == "interpolation":
            heights = (y[:-1] + y[1:]) / 2
        elif self.summation_method == "minoring":
            heights = np.minimum(y[:-1], y[1:])
        else:
            heights = np.maximum(y[:-1], y[1:])
        return self._by_label((x[:-1] - x[1:]) * heights)

    def get_config(self):
        cfg = {**super().get_config(), "num_thresholds": self.num_thresholds, "curve": self.curve,
               "summation_method": self.summation_method, "multi_label": self.multi_label,
               "num_labels": self.num_labels, "label_weights": self.label_weights, "from_logits": self.from_logits}
        if self._init_from_thresholds:
            cfg["thresholds"] = [float(t) for t in self._thresholds[1:-1]]
        return cfg


def _rank2(name, y_true, y_pred):
    y_true = np.asarray(_numeric(y_true, name, "y_true"), np.float64)
    y_pred = np.asarray(_numeric(y_pred, name, "y_pred"), np.float64)
    if y_pred.ndim != 2 or y_true.ndim != 2:
        raise ValueError(f"{name}: expects 2D inputs with shape (batch_size, output_dim), got y_pred.shape="
                         f"{y_pred.shape} and y_true.shape={y_true.shape}")
    if y_true.shape != y_pred.shape:
        raise ValueError(f"{name}: y_true shape {y_true.shape} does not match y_pred shape {y_pred.shape}")
    return y_true, y_pred


def _row_weight(name, sample_weight, n):
    if sample_weight is None:
        return np.ones((n, 1))
    sw = np.asarray(_numeric(sample_weight, name, "sample_weight"), np.float64)
    if sw.ndim == 2 and sw.shape[1] == 1:
        sw = sw[:, 0]
    if sw.shape != (n,):
        raise ValueError(f"{name}: sample_weight of shape {sw.shape} does not match {n} samples")
    return sw[:, None]


class FBetaScore(_StateMetric):
    """F-beta per class from streaming tp / fp / fn (Keras 3): predicted positive where
    y_pred > threshold, or (threshold None) where y_pred is the row's maximum (and not ~0);
    ``average`` None (one score per class), "micro", "macro" or "weighted" (by class support)."""

    name = "fbeta_score"
    _rows = 4  # true_positives, false_positives, false_negatives, intermediate_weights

    def __init__(self, average=None, beta=1.0, threshold=None, name=None, dtype=None):
        cls = name or self.name
        if average not in (None, "micro", "macro", "weighted"):
            raise ValueError(f"{cls}: invalid `average` {average!r}; expected one of "
                             "{None, 'micro', 'macro', 'weighted'}")
        if isinstance(beta, bool) or not isinstance(beta, numbers.Real) or not beta > 0:
            raise ValueError(f"{cls}: `beta` must be a number > 0, got {beta!r}")
        if threshold is not None and (isinstance(threshold, bool) or not isinstance(threshold, numbers.Real)
                                      or not 0 < threshold <= 1):
            raise ValueError(f"{cls}: `threshold` must be None or a number with 0 < threshold <= 1, "
                             f"got {threshold!r}")
        self.average = average
        self.beta = float(beta)
        self.threshold = None if threshold is None else float(threshold)
        super().__init__(name, dtype)

    def _update(self, y_true, y_pred, sample_weight):
        y_true, y_pred = _rank2(self.name, y_true, y_pred)
        if self.threshold is None:
            pred = (y_pred >= y_pred.max(axis=-1, keepdims=True)) & (np.abs(y_pred) > 1e-9)
        else:
            pred = y_pred > self.threshold
        pred = pred.astype(np.float64)
        w = _row_weight(self.name, sample_weight, y_true.shape[0])
        terms = np.stack([pred * y_true, pred * (1 - y_true), (1 - pred) * y_true, y_true]) * w
        sums = terms.sum(axis=(1, 2))[:, None] if self.average == "micro" else terms.sum(axis=1)
        self._ensure(sums.shape[1])
        self.state += sums

    def result(self):
        if self.state is None:
            return 0.0
        tp, fp, fn, support = self.state
        precision = tp / (tp + fp + _EPSILON)
        recall = tp / (tp + fn + _EPSILON)
        b2 = self.beta ** 2
        score = precision * recall / (b2 * precision + recall + _EPSILON) * (1 + b2)
        if self.average == "weighted":
            return float(np.sum(score * support / (support.sum() + _EPSILON)))
        if self.average is not None:
            return float(score.mean())
        return score

    def get_config(self):
        return {**super().get_config(), "average": self.average, "beta": self.beta, "threshold": self.threshold}


class F1Score(FBetaScore):
    """FBetaScore with beta = 1."""

    name = "f1_score"

    def __init__(self, average=None, threshold=None, name=None, dtype=None):
        super().__init__(average=average, beta=1.0, threshold=threshold, name=name, dtype=dtype)

    def get_config(self):
        cfg = super().get_config()
        del cfg["beta"]
        return cfg


class R2Score(_StateMetric):
    """Coefficient of determination per output column from streaming weighted sums (Keras 3),
    aggregated by ``class_aggregation`` ("uniform_average", "variance_weighted_average" or None:
    one score per column); ``num_regressors`` > 0 gives the adjusted R2 (n = number of values seen)."""

    name = "r2_score"
    _rows = 5  # sum, squared_sum, residual, count, number of values (the same in every column)

    def __init__(self, class_aggregation="uniform_average", num_regressors=0, name=None, dtype=None):
        cls = name or self.name
        if class_aggregation not in (None, "uniform_average", "variance_weighted_average"):
            raise ValueError(f"{cls}: invalid `class_aggregation` {class_aggregation!r}; expected one of "
                             "(None, 'uniform_average', 'variance_weighted_average')")
        if isinstance(num_regressors, bool) or not isinstance(num_regressors, numbers.Integral) \
                or num_regressors < 0:
            raise ValueError(f"{cls}: `num_regressors` must be an integer >= 0, got {num_regressors!r}")
        self.class_aggregation = class_aggregation
        self.num_regressors = int(num_regressors)
        super().__init__(name, dtype)

    def _update(self, y_true, y_pred, sample_weight):
        y_true, y_pred = _as_2d_pred(self.name, y_true, y_pred)
        y_true, y_pred = _rank2(self.name, y_true, y_pred)
        w = np.broadcast_to(_row_weight(self.name, sample_weight, y_true.shape[0]), y_true.shape)
        wy = y_true * w
        sums = np.stack([wy.sum(0), (y_true * wy).sum(0), ((y_true - y_pred) ** 2 * w).sum(0), w.sum(0),
                         np.full(y_true.shape[1], float(y_true.size))])
        self._ensure(y_true.shape[1])
        self.state += sums

    def result(self):
        if self.state is None:
            return 0.0
        total_sum, squared_sum, residual, count, n_values = self.state
        with np.errstate(divide="ignore", invalid="ignore"):
            mean = total_sum / count
            total = squared_sum - total_sum * mean
            raw = 1 - residual / total
        raw = np.where(np.isinf(raw), 0.0, raw)
        if self.class_aggregation == "uniform_average":
            score = raw.mean()
        elif self.class_aggregation == "variance_weighted_average":
            with np.errstate(divide="ignore", invalid="ignore"):
                score = np.sum(total * raw) / np.sum(total)
        else:
            score = raw
        if self.num_regressors:
            n, p = n_values[0], self.num_regressors
            if p > n - 1:
                warnings.warn(f"{self.name}: more independent predictors than datapoints in adjusted R2 score; "
                              "falling back to standard R2 score", stacklevel=2)
            elif p == n - 1:
                warnings.warn(f"{self.name}: division by zero in adjusted R2 score; falling back to standard "
                              "R2 score", stacklevel=2)
            else:
                score = 1 - (1 - score) * (n - 1) / (n - p - 1)
        return _scalar(score)

    def get_config(self):
        return {**super().get_config(), "class_aggregation": self.class_aggregation,
                "num_regressors": self.num_regressors}


_CLASSES = {c.__name__: c for c in (Mean, BinaryAccuracy, CategoricalAccuracy, SparseCategoricalAccuracy,
                                    TopKCategoricalAccuracy, SparseTopKCategoricalAccuracy,
                                    MeanSquaredError, MeanAbsoluteError, AUC, Precision, Recall, FBetaScore,
                                    F1Score, R2Score)}
_BY_NAME = {
    "binary_accuracy": BinaryAccuracy, "categorical_accuracy": CategoricalAccuracy,
    "sparse_categorical_accuracy": SparseCategoricalAccuracy,
    "top_k_categorical_accuracy": TopKCategoricalAccuracy,
    "sparse_top_k_categorical_accuracy": SparseTopKCategoricalAccuracy,
    "mse": MeanSquaredError, "mean_squared_error": MeanSquaredError,
    "mae": MeanAbsoluteError, "mean_absolute_error": MeanAbsoluteError,
    "auc": AUC, "precision": Precision, "recall": Recall, "f1_score": F1Score, "f1score": F1Score,
    "r2_score": R2Score, "r2score": R2Score,
}
_LOSS_NAMES = ("binary_crossentropy", "categorical_crossentropy", "sparse_categorical_crossentropy",
               "huber", "huber_loss")


def _shape(x):
    if x is None:
        return None
    if isinstance(x, tuple) and all(isinstance(s, (int, np.integer)) or s is None for s in x):
        return x
    return np.shape(x)


def _loss_name(loss):
    if loss is None:
        return None
    if isinstance(loss, losses_module.Loss):
        return type(loss).__name__
    try:
        return type(losses_module.get(loss)).__name__
    except ValueError:
        return None


def _pick_accuracy(loss, true_shape, pred_shape):
    kind = _loss_name(loss)
    if kind == "BinaryCrossentropy" or (pred_shape is not None and len(pred_shape) >= 1
                                        and (len(pred_shape) == 1 or pred_shape[-1] == 1)):
        return BinaryAccuracy
    if kind == "SparseCategoricalCrossentropy":
        return SparseCategoricalAccuracy
    if kind == "CategoricalCrossentropy":
        return CategoricalAccuracy
    if true_shape is not None and pred_shape is not None:
        if len(true_shape) == len(pred_shape) - 1 or (len(true_shape) == len(pred_shape)
                                                      and true_shape[-1] == 1 and pred_shape[-1] != 1):
            return SparseCategoricalAccuracy
        return CategoricalAccuracy
    return None


def get(identifier, loss=None, y_true=None, y_pred=None) -> Metric:
    """A metric from a name, a serialize() dict or a Metric instance (returned as is).

    ``loss`` (name or Loss), ``y_true`` and ``y_pred`` (arrays or shapes)
    resolve "accuracy"/"acc" like Keras compile. A string names the metric.
    """
    if isinstance(identifier, Metric):
        return identifier
    if isinstance(identifier, dict):
        return deserialize(identifier)
    if isinstance(identifier, str):
        key = identifier.lower()
        if key in ("accuracy", "acc"):
            cls = _pick_accuracy(loss, _shape(y_true), _shape(y_pred))
            return _AutoAccuracy(name=identifier) if cls is None else cls(name=identifier)
        cls = _BY_NAME.get(key)
        if cls is not None:
            return cls(name=identifier)
        if key in _LOSS_NAMES:
            return LossMetric(key, name=identifier)
    raise ValueError(f"Unknown metric {identifier!r}: each entry of `metrics` must be one of "
                     f"{sorted(['accuracy', 'acc', *_BY_NAME, *_LOSS_NAMES])} or a nbmodel.metrics.Metric "
                     f"instance")


def serialize(metric: Metric) -> dict:
    if isinstance(metric, _AutoAccuracy):
        return {"class_name": "accuracy", "config": {"name": metric.name}}
    return {"class_name": type(metric).__name__, "config": metric.get_config()}


def _subclasses(cls):
    for sub in cls.__subclasses__():
        yield sub
        yield from _subclasses(sub)


def deserialize(cfg: dict, custom_objects=None) -> Metric:
    name = cfg.get("class_name")
    conf = dict(cfg.get("config", {}))
    if name == "accuracy":
        return _AutoAccuracy(**conf)
    if name == "LossMetric":
        conf["loss"] = losses_module.deserialize(conf["loss"])
        return LossMetric(**conf)
    classes = {**_CLASSES, **{c.__name__: c for c in _subclasses(Metric)}, **(custom_objects or {})}
    cls = classes.get(name)
    if cls is None:
        raise ValueError(f"metrics: unknown metric class {name!r}; known: {sorted(_CLASSES)}")
    return cls.from_config(conf)
