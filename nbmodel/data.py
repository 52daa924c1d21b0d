"""Turning user data into validated arrays, batches, shuffles and splits."""
from __future__ import annotations

import numpy as np


def _as_list(v, n_arrays=None):
    """One entry per model input/output. A list for a single-input (or -output)
    model whose entries are not arrays is plain nested data (e.g. a list of labels)."""
    if not isinstance(v, (list, tuple)):
        return [v]
    if n_arrays == 1 and len(v) != 1 and not any(isinstance(e, np.ndarray) for e in v):
        return [v]
    return list(v)


def _by_name(model, data, tensors, what):
    """Dict inputs/targets keyed by layer name -> list in model order."""
    from .model import _output_name

    names = [_output_name(t) for t in tensors]
    missing = [n for n in names if n not in data]
    if missing:
        raise ValueError(f"{what}: no data for {missing}; got keys {sorted(data)}")
    return [data[n] for n in names]


def check_count(where: str, name: str, value, minimum: int = 1) -> int:
    """``value`` as an int >= ``minimum``: a clear error for a float (2.7 is not truncated),
    a bool, a string or a smaller number, naming the call and the argument."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{where}: {name} must be an integer >= {minimum}, got {value!r}")
    if value < minimum:
        raise ValueError(f"{where}: {name} must be >= {minimum}, got {value}")
    return int(value)


def check_sample_weight(where: str, sample_weight, n: int) -> np.ndarray:
    """float64 per-sample weights, one per sample, finite and not negative."""
    sw = np.asarray(sample_weight)
    if sw.dtype.kind not in "fiub":
        raise TypeError(f"{where}: sample_weight must be numeric, got dtype {sw.dtype}")
    sw = sw.astype(np.float64)
    if sw.ndim == 0 or sw.shape[0] != n:
        raise ValueError(f"{where}: sample_weight has {sw.shape[0] if sw.ndim else 0} entries for {n} samples")
    bad = ~np.isfinite(sw)
    if bad.any():
        i = int(np.argmax(bad.reshape(n, -1).any(axis=1)))
        raise ValueError(f"{where}: sample_weight holds a non-finite value ({sw.reshape(n, -1)[i][0]}) at sample "
                         f"{i}")
    if (sw < 0).any():
        i = int(np.argmax((sw < 0).reshape(n, -1).any(axis=1)))
        raise ValueError(f"{where}: sample_weight must not be negative, got {sw.reshape(n, -1)[i][0]} at "
                         f"sample {i}")
    return sw


def check_numeric(arr, what):
    a = np.asarray(arr)
    if a.dtype.kind not in "fiub":
        raise TypeError(f"{what}: expected a numeric array, got dtype {a.dtype}")
    return a


def standardize_inputs(model, x, where):
    """Model inputs as C-contiguous arrays of the input dtype, checked against the model."""
    if x is None:
        raise ValueError(f"{where}: x is required")
    graph = model._graph
    xs = _by_name(model, x, graph.inputs, where) if isinstance(x, dict) else _as_list(x, len(graph.inputs))
    if len(xs) != len(graph.inputs):
        raise ValueError(f"{where}: the model has {len(graph.inputs)} inputs, got {len(xs)} arrays")
    out = []
    for t, a in zip(graph.inputs, xs):
        name = t.input_layer.name
        a = check_numeric(a, f"{where}: input {name!r}")
        if a.ndim != len(t.shape) or any(s is not None and s != d for s, d in zip(t.shape[1:], a.shape[1:])):
            raise ValueError(f"{where}: input {name!r} expects shape {t.shape} (batch first), "
                             f"got {a.shape}")
        if t.dtype.kind in "iu":
            if a.dtype.kind == "f":
                if not np.all(np.isfinite(a)) or np.any(a != np.round(a)):
                    raise ValueError(f"{where}: input {name!r} expects integer ids, got non-integer values")
            a = np.ascontiguousarray(a, dtype=t.dtype)
        else:
            a = np.ascontiguousarray(a, dtype=t.dtype)
            if not np.isfinite(a).all():
                raise ValueError(f"{where}: input {name!r} contains NaN or infinity")
        out.append(a)
    n = out[0].shape[0]
    for t, a in zip(graph.inputs, out):
        if a.shape[0] != n:
            raise ValueError(f"{where}: inputs have different numbers of samples "
                             f"({[b.shape[0] for b in out]})")
    return out


def standardize_targets(model, y, n, where):
    """Targets as contiguous arrays, one per output, with n samples each."""
    graph = model._graph
    ys = _by_name(model, y, graph.outputs, where) if isinstance(y, dict) else _as_list(y, len(graph.outputs))
    if len(ys) != len(graph.outputs):
        raise ValueError(f"{where}: the model has {len(graph.outputs)} outputs, got {len(ys)} target arrays")
    out = []
    for a in ys:
        a = check_numeric(a, f"{where}: y")
        if a.shape[0] != n:
            raise ValueError(f"{where}: x and y have different numbers of samples ({n} and {a.shape[0]})")
        if a.dtype.kind == "f":
            if not np.isfinite(a).all():
                raise ValueError(f"{where}: y contains NaN or infinity")
        out.append(np.ascontiguousarray(a))
    return out


def class_weights_to_sample_weights(class_weight, y):
    """Per-sample weights from a {class: weight} dict and labels (sparse or one-hot)."""
    y = np.asarray(y)
    if y.ndim >= 2 and y.shape[-1] > 1:
        labels = np.argmax(y, axis=-1)
    else:
        labels = y.reshape(y.shape[0], -1)[:, 0] if y.ndim > 1 else y
        if y.dtype.kind == "f":  # binary targets 0./1.
            labels = np.round(labels)
    labels = labels.astype(np.int64)
    present = np.unique(labels)
    unknown = [int(c) for c in present if int(c) not in class_weight]
    if unknown:
        raise ValueError(f"fit: class_weight has no entry for classes {unknown}")
    lut = np.zeros(int(max(max(class_weight), present.max())) + 1)
    for c, w in class_weight.items():
        if not isinstance(w, (int, float, np.integer, np.floating)) or not np.isfinite(w) or w < 0:
            raise ValueError(f"fit: class_weight[{c!r}] must be a finite number >= 0, got {w!r}")
        lut[int(c)] = float(w)
    w = lut[labels]
    return w.reshape(labels.shape[0], -1)[:, 0] if w.ndim > 1 else w


def split_validation(xs, ys, sw, validation_split, validation_data, model):
    """Keras: validation_data wins; else the LAST validation_split of the samples."""
    if validation_data is not None:
        if not isinstance(validation_data, (list, tuple)) or len(validation_data) not in (2, 3):
            raise ValueError("fit: validation_data must be (x_val, y_val) or (x_val, y_val, sample_weight)")
        vx, vy = validation_data[0], validation_data[1]
        vsw = validation_data[2] if len(validation_data) == 3 else None
        vxs, vys, vsw = model._standardize(vx, vy, vsw, "fit (validation_data)")
        return (xs, ys, sw), (vxs, vys, vsw)
    if not validation_split:
        return (xs, ys, sw), None
    if not 0.0 < validation_split < 1.0:
        raise ValueError(f"fit: validation_split must be in [0, 1), got {validation_split}")
    n = xs[0].shape[0]
    n_train = int(n * (1.0 - validation_split))
    if n_train == 0 or n_train == n:
        raise ValueError(f"fit: validation_split={validation_split} leaves no training or validation samples")
    cut = lambda arrs: ([a[:n_train] for a in arrs], [a[n_train:] for a in arrs])  # noqa: E731
    xt, xv = cut(xs)
    yt, yv = cut(ys)
    swt, swv = (None, None) if sw is None else (sw[:n_train], sw[n_train:])
    return (xt, yt, swt), (xv, yv, swv)


def prepare_fit_data(model, x, y, sample_weight, class_weight, validation_split, validation_data):
    """Validated training arrays, sample weights (class weights folded in) and the
    validation split, as ``fit`` needs them in one process or several."""
    xs, ys, sample_weight = model._standardize(x, y, sample_weight, "fit")
    if ys is None:
        raise ValueError("fit: targets y are required")
    if class_weight is not None:
        cw = class_weights_to_sample_weights(class_weight, ys[0])
        sample_weight = cw if sample_weight is None else sample_weight * cw
    (xs, ys, sample_weight), val = split_validation(xs, ys, sample_weight, validation_split,
                                                     validation_data, model)
    if xs[0].shape[0] == 0:
        raise ValueError("fit: no training samples (after the validation split)")
    return xs, ys, sample_weight, val


class BatchIterator:
    """Index batches for one epoch; shuffled with the model's seeded RNG."""

    def __init__(self, n, batch_size, shuffle, rng):
        self.n, self.batch_size, self.shuffle, self.rng = n, batch_size, shuffle, rng

    def __len__(self):
        return (self.n + self.batch_size - 1) // self.batch_size

    def epoch(self):
        order = self.rng.permutation(self.n) if self.shuffle else np.arange(self.n)
        for start in range(0, self.n, self.batch_size):
            idx = order[start:start + self.batch_size]
            yield np.sort(idx) if self.shuffle else idx

