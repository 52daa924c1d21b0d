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
"""
from __future__ import annotations

import numpy as np

from . import losses as losses_module
from .backend import Device, default_device, get_device

__all__ = ["Metric", "Mean", "BinaryAccuracy", "CategoricalAccuracy", "SparseCategoricalAccuracy",
           "TopKCategoricalAccuracy", "SparseTopKCategoricalAccuracy", "MeanSquaredError",
           "MeanAbsoluteError", "LossMetric", "get", "serialize", "deserialize"]


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
        n = int(np.prod(lab_shape))
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


_CLASSES = {c.__name__: c for c in (Mean, BinaryAccuracy, CategoricalAccuracy, SparseCategoricalAccuracy,
                                    TopKCategoricalAccuracy, SparseTopKCategoricalAccuracy,
                                    MeanSquaredError, MeanAbsoluteError)}
_BY_NAME = {
    "binary_accuracy": BinaryAccuracy, "categorical_accuracy": CategoricalAccuracy,
    "sparse_categorical_accuracy": SparseCategoricalAccuracy,
    "top_k_categorical_accuracy": TopKCategoricalAccuracy,
    "sparse_top_k_categorical_accuracy": SparseTopKCategoricalAccuracy,
    "mse": MeanSquaredError, "mean_squared_error": MeanSquaredError,
    "mae": MeanAbsoluteError, "mean_absolute_error": MeanAbsoluteError,
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
