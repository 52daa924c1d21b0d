"""Losses (Keras 3 names, arguments and values), computed with their gradient in one kernel pass.

A loss returns the SUM of its weighted loss elements and how many elements
there are; the Keras value (reduction "sum_over_batch_size") is total / count:

    total, count, dy = loss.forward_backward(y_true, y_pred, sample_weight)
    loss(y_true, y_pred) == total / count

``dy`` is d total / d y_pred (not divided by count): the model divides once,
after summing over data-parallel replicas, so N workers reproduce one process.
``dy`` lives in a workspace the loss owns and is overwritten by the next call
with the same shape.

Loss elements: the per-sample losses of mse, mae, huber and binary
cross-entropy are means over the last axis, so y_pred (b, d) has b elements
(a 1-D y_pred (b,) is read as (b, 1)); the cross-entropies have one element per
row of y_pred's last axis (b for (b, C), b*t for (b, t, C)). With
``ignore_class``, ignored labels are not counted (Keras divides by the number
of valid labels too); if every label is ignored, count is 0 and ``__call__``
returns 0.0.

This module does not import numba: kernels come from the loss's device
(``loss.device.kernels("losses")``, the default device until a model's
``compile`` or ``to`` sets it) on the first call.
"""
from __future__ import annotations

import numpy as np

from . import config
from .backend import Device, default_device, get_device
from .kernels.codes import BCE, BCE_LOGITS, HUBER, MAE, MSE  # the elementwise losses' kernel codes

__all__ = ["Loss", "MeanSquaredError", "MeanAbsoluteError", "Huber", "BinaryCrossentropy",
           "CategoricalCrossentropy", "SparseCategoricalCrossentropy", "get", "serialize", "mask_weights",
           "deserialize", "EPSILON"]


EPSILON = 1e-7  # Keras backend.epsilon(): probabilities are clipped to [EPSILON, 1 - EPSILON]

_WORKSPACES_KEPT = 4  # (shape, dtype) workspaces kept per loss: train, last batch, validation


def _numeric(arr, loss_name, what, device):
    """``arr`` as it is when on ``device``, else as a NumPy array; TypeError if not numeric."""
    arr = arr if device.is_array(arr) else np.asarray(arr)
    if np.dtype(arr.dtype).kind not in "fiub":
        raise TypeError(f"{loss_name}: expected a numeric {what}, got dtype {arr.dtype}")
    return arr


def _float_dtype(arr):
    return arr.dtype if arr.dtype in (np.float32, np.float64) else np.dtype(config.floatx())


class Loss:
    """Base class: subclasses set ``name`` and implement ``_kernel``.

    Subclass it for a custom loss by overriding ``forward_backward`` (return
    the weighted SUM, the element count and d sum / d y_pred).
    """

    name = "loss"

    def __init__(self, name=None):
        if name is not None:
            self.name = name
        self._ws: dict = {}
        self.device: Device = default_device()

    def to(self, device) -> Loss:
        """Run on ``device`` from now on (a model's compile and ``to`` call this)."""
        dev = get_device(device)
        if dev is not self.device:
            self.device = dev
            self._ws = {}
        return self

    # ------------------------------------------------------------------ API
    def forward_backward(self, y_true, y_pred, sample_weight=None):
        """(total, count, dy_pred): weighted sum of loss elements, their number, d total / d y_pred."""
        return self._run(y_true, y_pred, sample_weight, True)

    def forward(self, y_true, y_pred, sample_weight=None):
        """(total, count) without the gradient (evaluation)."""
        total, count, _ = self._run(y_true, y_pred, sample_weight, False)
        return total, count

    def __call__(self, y_true, y_pred, sample_weight=None):
        total, count = self.forward(y_true, y_pred, sample_weight)
        return total / count if count else 0.0

    def masked(self, y_true, y_pred, sample_weight, mask, need_grad=True):
        """(total, count, dy or None) for an output that carries a Keras mask, as Keras 3:
        the mask (the loss elements' shape, y_pred's less its last axis) multiplies the
        sample weights, and the count is the number of unmasked elements, so the mean
        runs over the real steps only."""
        m = np.asarray(self.device.to_host(mask) if self.device.is_array(mask) else mask) != 0
        shape = tuple(np.shape(y_pred)[:-1])
        if m.shape != shape:
            raise ValueError(f"{self.name}: the output's mask has shape {m.shape}, expected the loss elements' "
                             f"shape {shape} (y_pred's shape less its last axis)")
        weights = mask_weights(self.name, sample_weight, m, self.device)
        if need_grad:
            total, _, dy = self.forward_backward(y_true, y_pred, weights)
        else:
            (total, _), dy = self.forward(y_true, y_pred, weights), None
        return total, self.masked_count(y_true, m), dy

    def masked_count(self, y_true, mask) -> int:
        """How many loss elements count under the bool ``mask`` (all unmasked ones here)."""
        return int(mask.sum())

    def get_config(self):
        return {"name": self.name}

    @classmethod
    def from_config(cls, cfg):
        return cls(**cfg)

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"

    # ------------------------------------------------------------- helpers
    def _workspace(self, kind, shape, dtype):
        key = (kind, tuple(shape), np.dtype(dtype))
        arr = self._ws.get(key)
        if arr is None:
            if len(self._ws) >= 2 * _WORKSPACES_KEPT:
                self._ws.pop(next(iter(self._ws)))
            arr = self._ws[key] = self.device.empty(shape, dtype)
        return arr

    def _kernels(self):
        return self.device.kernels("losses")

    def _numeric(self, arr, what):
        return _numeric(arr, self.name, what, self.device)

    def _total(self, rows) -> float:
        """float64 sum of the per-element losses (the only float64 arithmetic)."""
        return self.device.kernels("array").total(rows)

    def _zero_grad(self, dy):
        self.device.kernels("array").fill(dy, 0)

    def _weights(self, sample_weight, loss_shape, n_rows, dtype):
        """(w, w_per, use_w) for a kernel: one weight per w_per consecutive loss elements."""
        if sample_weight is None:  # a placeholder the kernels never read
            return self._workspace("no_weight", (1,), dtype), 1, False
        sw = self._numeric(sample_weight, "sample_weight")
        if sw.ndim == 0:
            return self.device.full((1,), float(sw), dtype), max(n_rows, 1), True
        while sw.ndim > len(loss_shape) and sw.shape[-1] == 1:
            sw = sw.reshape(sw.shape[:-1])
        if sw.shape != tuple(loss_shape[:sw.ndim]):
            raise ValueError(f"{self.name}: sample_weight of shape {sw.shape} does not match the "
                             f"loss elements of shape {tuple(loss_shape)}")
        w = self.device.asarray(sw, dtype).reshape(-1)
        return w, (n_rows // w.size if w.size else 1), True

    def _run(self, y_true, y_pred, sample_weight, need_grad):
        raise NotImplementedError(f"{type(self).__name__} does not implement forward_backward")


def mask_weights(name, sample_weight, mask, device) -> np.ndarray:
    """Sample weights times a bool Keras mask, as weights of the mask's shape: a weight
    per sample (or per element, or one scalar) spread over the masked axes."""
    w = mask.astype(np.float64)
    if sample_weight is None:
        return w
    sw = np.asarray(device.to_host(sample_weight) if device.is_array(sample_weight) else sample_weight,
                    np.float64)
    while sw.ndim > w.ndim and sw.shape[-1] == 1:
        sw = sw.reshape(sw.shape[:-1])
    if sw.shape != w.shape[:sw.ndim]:
        raise ValueError(f"{name}: sample_weight of shape {sw.shape} does not match the output's mask of "
                         f"shape {w.shape}")
    return w * sw.reshape(sw.shape + (1,) * (w.ndim - sw.ndim))


class _ElementwiseLoss(Loss):
    """Losses averaged over the last axis (mse, mae, huber, binary CE)."""

    def _code_params(self, dtype):
        raise NotImplementedError

    def _run(self, y_true, y_pred, sample_weight, need_grad):
        y_pred = self._numeric(y_pred, "y_pred")
        y_true = self._numeric(y_true, "y_true")
        shape_in = y_pred.shape
        if y_true.shape != y_pred.shape:
            # Keras squeezes or expands a trailing axis of size 1: (b,) vs (b, 1)
            if y_true.size == y_pred.size and (y_true.shape == y_pred.shape + (1,)
                                               or y_true.shape + (1,) == y_pred.shape):
                y_true = y_true.reshape(y_pred.shape)
            else:
                raise ValueError(f"{self.name}: y_true shape {y_true.shape} does not match "
                                 f"y_pred shape {y_pred.shape}")
        if y_pred.ndim == 0:
            raise ValueError(f"{self.name}: expected y_pred with a batch dimension, got a scalar")
        dtype = _float_dtype(y_pred)
        yp = self.device.asarray(y_pred, dtype)
        yt = self.device.asarray(y_true, dtype)
        d = yp.shape[-1] if yp.ndim >= 2 else 1
        n = yp.size // d if d else 0
        loss_shape = yp.shape[:-1] if yp.ndim >= 2 else yp.shape
        yp2 = yp.reshape(n, d)
        yt2 = yt.reshape(n, d)
        w, w_per, use_w = self._weights(sample_weight, loss_shape, n, dtype)
        rows = self._workspace("rows", (n,), dtype)
        dy = self._workspace("dy", shape_in, dtype) if need_grad else self._workspace("dy", (1, 1), dtype)
        code, a, b = self._code_params(dtype)
        if n and d:
            self._kernels().dense_loss(code, yt2, yp2, a, b, dtype.type(EPSILON), w, w_per, use_w,
                                       need_grad, rows, dy.reshape(n, d) if need_grad else dy)
        elif need_grad:
            self._zero_grad(dy)
        return self._total(rows), int(n), (dy if need_grad else None)


class MeanSquaredError(_ElementwiseLoss):
    name = "mean_squared_error"

    def _code_params(self, dtype):
        return MSE, dtype.type(0), dtype.type(0)


class MeanAbsoluteError(_ElementwiseLoss):
    name = "mean_absolute_error"

    def _code_params(self, dtype):
        return MAE, dtype.type(0), dtype.type(0)


class Huber(_ElementwiseLoss):
    """0.5 e^2 where |e| <= delta, else delta (|e| - 0.5 delta); e = y_pred - y_true."""

    name = "huber_loss"

    def __init__(self, delta=1.0, name=None):
        super().__init__(name)
        delta = float(delta)
        if not delta > 0:
            raise ValueError(f"{self.name}: delta must be > 0, got {delta}")
        self.delta = delta

    def _code_params(self, dtype):
        return HUBER, dtype.type(self.delta), dtype.type(0)

    def get_config(self):
        return {**super().get_config(), "delta": self.delta}


def _check_smoothing(loss, value):
    value = float(value)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{loss.name}: label_smoothing must be in [0, 1], got {value}")
    return value


class BinaryCrossentropy(_ElementwiseLoss):
    """Binary cross-entropy averaged over the last axis.

    Probabilities are clipped to [1e-7, 1 - 1e-7] (no gradient where clipped);
    with from_logits the loss is computed stably from the logits.
    Label smoothing: y_true * (1 - s) + 0.5 * s.
    """

    name = "binary_crossentropy"

    def __init__(self, from_logits=False, label_smoothing=0.0, name=None):
        super().__init__(name)
        self.from_logits = bool(from_logits)
        self.label_smoothing = _check_smoothing(self, label_smoothing)

    def _code_params(self, dtype):
        s = self.label_smoothing
        return (BCE_LOGITS if self.from_logits else BCE), dtype.type(1.0 - s), dtype.type(0.5 * s)

    def get_config(self):
        return {**super().get_config(), "from_logits": self.from_logits,
                "label_smoothing": self.label_smoothing}


class CategoricalCrossentropy(Loss):
    """Cross-entropy against one-hot (or soft) targets over the last axis.

    from_logits: log-softmax and its gradient (softmax * sum(t) - t) in one
    pass. Otherwise y_pred is renormalized to sum 1 and clipped to
    [1e-7, 1 - 1e-7], like Keras. Label smoothing: t * (1 - s) + s / C.
    """

    name = "categorical_crossentropy"

    def __init__(self, from_logits=False, label_smoothing=0.0, name=None):
        super().__init__(name)
        self.from_logits = bool(from_logits)
        self.label_smoothing = _check_smoothing(self, label_smoothing)

    def get_config(self):
        return {**super().get_config(), "from_logits": self.from_logits,
                "label_smoothing": self.label_smoothing}

    def _run(self, y_true, y_pred, sample_weight, need_grad):
        y_pred = self._numeric(y_pred, "y_pred")
        y_true = self._numeric(y_true, "y_true")
        if y_true.shape != y_pred.shape or y_pred.ndim < 2:
            hint = ""
            if y_true.ndim == y_pred.ndim - 1 or (y_true.ndim == y_pred.ndim and y_true.shape[-1:] == (1,)):
                hint = " (integer labels need sparse_categorical_crossentropy)"
            raise ValueError(f"{self.name}: y_true shape {y_true.shape} does not match y_pred shape "
                             f"{y_pred.shape}; expected one-hot targets of rank >= 2{hint}")
        dtype = _float_dtype(y_pred)
        yp = self.device.asarray(y_pred, dtype)
        yt = self.device.asarray(y_true, dtype)
        c = yp.shape[-1]
        n = yp.size // c if c else 0
        w, w_per, use_w = self._weights(sample_weight, yp.shape[:-1], n, dtype)
        rows = self._workspace("rows", (n,), dtype)
        dy = self._workspace("dy", yp.shape, dtype) if need_grad else self._workspace("dy", (1, 1), dtype)
        s = self.label_smoothing
        if n and c:
            self._kernels().categorical_ce(yt.reshape(n, c), yp.reshape(n, c), self.from_logits,
                                           dtype.type(1.0 - s), dtype.type(s / c), dtype.type(EPSILON),
                                           w, w_per, use_w, need_grad, rows,
                                           dy.reshape(n, c) if need_grad else dy)
        elif need_grad:
            self._zero_grad(dy)
        return self._total(rows), int(n), (dy if need_grad else None)


_LABEL_DTYPES = (np.dtype(np.int64), np.dtype(np.int32), np.dtype(np.float32), np.dtype(np.float64))


class SparseCategoricalCrossentropy(Loss):
    """Cross-entropy against integer labels: y_true (b,) or (b, 1) for y_pred (b, C),
    (b, t) for (b, t, C). Labels may be integers or whole-valued floats in [0, C).

    from_logits: the softmax and its gradient (softmax - onehot) are fused.
    ignore_class: labels equal to it add nothing and are not counted.
    """

    name = "sparse_categorical_crossentropy"

    def __init__(self, from_logits=False, ignore_class=None, name=None):
        super().__init__(name)
        self.from_logits = bool(from_logits)
        if ignore_class is not None:
            if int(ignore_class) != ignore_class:
                raise ValueError(f"{self.name}: ignore_class must be an integer, got {ignore_class!r}")
            ignore_class = int(ignore_class)
        self.ignore_class = ignore_class

    def get_config(self):
        return {**super().get_config(), "from_logits": self.from_logits, "ignore_class": self.ignore_class}

    def _run(self, y_true, y_pred, sample_weight, need_grad):
        y_pred = self._numeric(y_pred, "y_pred")
        y_true = self._numeric(y_true, "y_true")
        if y_pred.ndim < 2:
            raise ValueError(f"{self.name}: expected y_pred of rank >= 2 (batch, ..., classes), "
                             f"got shape {y_pred.shape}")
        lab_shape = y_pred.shape[:-1]
        if y_true.shape != lab_shape:
            if y_true.shape == lab_shape + (1,):
                y_true = y_true.reshape(lab_shape)
            else:
                raise ValueError(f"{self.name}: y_true shape {y_true.shape} does not match y_pred shape "
                                 f"{y_pred.shape}; expected integer labels of shape {lab_shape}")
        dtype = _float_dtype(y_pred)
        yp = self.device.asarray(y_pred, dtype)
        c = yp.shape[-1]
        n = yp.size // c if c else 0
        labels = self.device.asarray(y_true, y_true.dtype if y_true.dtype in _LABEL_DTYPES else np.int64)
        labels = labels.reshape(n)
        w, w_per, use_w = self._weights(sample_weight, lab_shape, n, dtype)
        rows = self._workspace("rows", (n,), dtype)
        dy = self._workspace("dy", yp.shape, dtype) if need_grad else self._workspace("dy", (1, 1), dtype)
        use_ignore = self.ignore_class is not None
        if n and c:
            used, bad = self._kernels().sparse_ce(
                labels, yp.reshape(n, c), self.from_logits, self.ignore_class if use_ignore else 0,
                use_ignore, dtype.type(EPSILON), w, w_per, use_w, need_grad, rows,
                dy.reshape(n, c) if need_grad else dy)
        else:
            used, bad = 0, 0
            if need_grad:
                self._zero_grad(dy)
        if bad:
            self._raise_bad_label(labels, c)
        return self._total(rows), int(used), (dy if need_grad else None)

    def masked_count(self, y_true, mask) -> int:
        """Unmasked labels that are not ``ignore_class`` (Keras ANDs both masks)."""
        if self.ignore_class is None:
            return int(mask.sum())
        labels = np.asarray(self.device.to_host(y_true) if self.device.is_array(y_true) else y_true)
        return int((mask & (labels.reshape(mask.shape) != self.ignore_class)).sum())

    def _raise_bad_label(self, labels, c):
        labels = self.device.to_host(labels)
        lab = np.asarray(labels, np.float64)
        ok = (lab >= 0) & (lab < c) & (lab == np.floor(lab))
        if self.ignore_class is not None:
            ok |= lab == self.ignore_class
        i = int(np.argmin(ok))
        v = labels[i].item()
        what = "not a whole number" if np.isfinite(lab[i]) and lab[i] != np.floor(lab[i]) else f"outside [0, {c})"
        raise ValueError(f"{self.name}: label {v!r} at flat index {i} is {what}; "
                         f"labels must be class indices in [0, {c}) for y_pred with {c} classes")


_ALIASES = {
    "mse": MeanSquaredError, "meansquarederror": MeanSquaredError,
    "mae": MeanAbsoluteError, "meanabsoluteerror": MeanAbsoluteError,
    "huber": Huber, "huberloss": Huber,
    "binarycrossentropy": BinaryCrossentropy, "bce": BinaryCrossentropy,
    "categoricalcrossentropy": CategoricalCrossentropy,
    "sparsecategoricalcrossentropy": SparseCategoricalCrossentropy,
}
_KNOWN = ["binary_crossentropy", "categorical_crossentropy", "huber", "mae", "mean_absolute_error",
          "mean_squared_error", "mse", "sparse_categorical_crossentropy"]
_CLASSES = {c.__name__: c for c in (MeanSquaredError, MeanAbsoluteError, Huber, BinaryCrossentropy,
                                    CategoricalCrossentropy, SparseCategoricalCrossentropy)}


def _key(name: str) -> str:
    return name.lower().replace("_", "")


def get(identifier) -> Loss:
    """A Loss from a Keras name or alias (case-insensitive), a config dict, or a Loss instance.

    A string gives a new instance with Keras defaults (from_logits=False), named
    with the Keras name of its class.
    """
    if isinstance(identifier, Loss):
        return identifier
    if isinstance(identifier, str):
        cls = _ALIASES.get(_key(identifier))
        if cls is None:
            raise ValueError(f"Unknown loss {identifier!r}: argument `loss` must be one of {_KNOWN} "
                             f"or a nbmodel.losses.Loss instance")
        return cls()
    if isinstance(identifier, dict):
        return deserialize(identifier)
    if callable(identifier):
        raise ValueError(f"loss: got the callable {identifier!r}; argument `loss` must be a name or a "
                         f"nbmodel.losses.Loss subclass instance (a custom loss subclasses Loss and "
                         f"implements forward_backward, which returns the gradient too)")
    raise ValueError(f"Unknown loss {identifier!r}: argument `loss` must be one of {_KNOWN} "
                     f"or a nbmodel.losses.Loss instance")


def serialize(loss: Loss) -> dict:
    return {"class_name": type(loss).__name__, "config": loss.get_config()}


def deserialize(cfg: dict, custom_objects=None) -> Loss:
    name = cfg.get("class_name")
    classes = {**_CLASSES, **{c.__name__: c for c in _subclasses(Loss)}, **(custom_objects or {})}
    cls = classes.get(name)
    if cls is None:
        raise ValueError(f"loss: unknown loss class {name!r}; known: {sorted(_CLASSES)}")
    return cls.from_config(dict(cfg.get("config", {})))


def _subclasses(cls):
    for sub in cls.__subclasses__():
        yield sub
        yield from _subclasses(sub)
