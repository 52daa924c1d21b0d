"""Turning user data into validated arrays, batches, shuffles and splits; streamed batches
(``PyDataset``, Python generators) validated one by one."""
from __future__ import annotations

import os
import warnings
from collections.abc import Iterator

import numpy as np


def _as_list(v, n_arrays=None):
    """One entry per model input/output. A list for a single-input (or -output)
    model whose entries are not arrays is plain nested data (e.g. a list of labels)."""
    if not isinstance(v, (list, tuple)):
        return [v]
    if n_arrays == 1 and len(v) != 1 and not any(isinstance(e, np.ndarray) for e in v):
        return [v]
    return list(v)


def _by_name(data, names, what):
    """Dict inputs/targets keyed by layer name -> list in model order (``names``)."""
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


def check_input(where: str, name: str, t, a: np.ndarray) -> np.ndarray:
    """``a`` as a C-contiguous array of input tensor ``t``'s dtype: ids whole, values finite."""
    if t.dtype.kind in "iu":
        if a.dtype.kind == "f":
            if not np.all(np.isfinite(a)) or np.any(a != np.round(a)):
                raise ValueError(f"{where}: input {name!r} expects integer ids, got non-integer values")
        return np.ascontiguousarray(a, dtype=t.dtype)
    a = np.ascontiguousarray(a, dtype=t.dtype)
    if not np.isfinite(a).all():
        raise ValueError(f"{where}: input {name!r} contains NaN or infinity")
    return a


def standardize_inputs(model, x, where, lazy=False):
    """Model inputs as C-contiguous arrays of the input dtype, checked against the model.

    ``lazy``: a NumPy memmap is kept as it is (shape checked only); ``take_inputs`` casts
    and checks each batch of it, so the file is never copied or scanned whole."""
    if x is None:
        raise ValueError(f"{where}: x is required")
    inputs = model.inputs
    xs = _by_name(x, model.input_names, where) if isinstance(x, dict) else _as_list(x, len(inputs))
    if len(xs) != len(inputs):
        raise ValueError(f"{where}: the model has {len(inputs)} inputs, got {len(xs)} arrays")
    out = []
    for t, given in zip(inputs, xs):
        name = t.input_layer.name
        a = check_numeric(given, f"{where}: input {name!r}")
        if a.ndim != len(t.shape) or any(s is not None and s != d for s, d in zip(t.shape[1:], a.shape[1:])):
            raise ValueError(f"{where}: input {name!r} expects shape {t.shape} (batch first), "
                             f"got {a.shape}")
        out.append(given if lazy and isinstance(given, np.memmap) else check_input(where, name, t, a))
    n = out[0].shape[0]
    for t, a in zip(inputs, out):
        if a.shape[0] != n:
            raise ValueError(f"{where}: inputs have different numbers of samples "
                             f"({[b.shape[0] for b in out]})")
    return out


def take_inputs(model, xs, sel, where: str) -> list[np.ndarray]:
    """Rows ``sel`` (a slice or indices) of standardized inputs; the rows of a memmap
    (kept by ``standardize_inputs(lazy=True)``) are cast and checked here, per batch."""
    out = []
    for t, a in zip(model.inputs, xs):
        b = a[sel]
        if isinstance(a, np.memmap):
            rows = range(a.shape[0])[sel] if isinstance(sel, slice) else np.asarray(sel)
            span = f"samples {rows[0]}..{rows[-1]}" if len(rows) else "no samples"
            b = check_input(f"{where} ({span})", t.input_layer.name, t, b)
        out.append(b)
    return out


def standardize_targets(model, y, n, where):
    """Targets as contiguous arrays, one per output, with n samples each."""
    outputs = model.outputs
    ys = _by_name(y, model.output_names, where) if isinstance(y, dict) else _as_list(y, len(outputs))
    if len(ys) != len(outputs):
        raise ValueError(f"{where}: the model has {len(outputs)} outputs, got {len(ys)} target arrays")
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


def apply_class_weight(class_weight, ys, sample_weight):
    """Sample weights with ``class_weight`` (of the first output's labels) folded in."""
    if class_weight is None:
        return sample_weight
    cw = class_weights_to_sample_weights(class_weight, ys[0])
    return cw if sample_weight is None else sample_weight * cw


def split_validation(xs, ys, sw, validation_split, validation_data, model, lazy=False):
    """Keras: validation_data wins; else the LAST validation_split of the samples."""
    if validation_data is not None:
        if not isinstance(validation_data, (list, tuple)) or len(validation_data) not in (2, 3):
            raise ValueError("fit: validation_data must be (x_val, y_val) or (x_val, y_val, sample_weight)")
        vx, vy = validation_data[0], validation_data[1]
        vsw = validation_data[2] if len(validation_data) == 3 else None
        vxs, vys, vsw = model.standardize_data(vx, vy, vsw, "fit (validation_data)", lazy=lazy)
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


def prepare_fit_data(model, x, y, sample_weight, class_weight, validation_split, validation_data,
                     lazy=False):
    """Validated training arrays, sample weights (class weights folded in) and the
    validation split, as ``fit`` needs them in one process or several (``lazy``:
    memmaps stay memmaps, see ``standardize_inputs``)."""
    xs, ys, sample_weight = model.standardize_data(x, y, sample_weight, "fit", lazy=lazy)
    if ys is None:
        raise ValueError("fit: targets y are required")
    sample_weight = apply_class_weight(class_weight, ys, sample_weight)
    (xs, ys, sample_weight), val = split_validation(xs, ys, sample_weight, validation_split,
                                                     validation_data, model, lazy=lazy)
    if xs[0].shape[0] == 0:
        raise ValueError("fit: no training samples (after the validation split)")
    return xs, ys, sample_weight, val


class BatchIterator:
    """Index batches for one epoch; shuffled with the model's seeded RNG."""

    def __init__(self, n, batch_size, shuffle, rng):
        self.n, self.batch_size, self.shuffle, self.rng = n, batch_size, shuffle, rng

    def __len__(self):
        return (self.n + self.batch_size - 1) // self.batch_size

    def epoch(self, skip=0):
        """This epoch's index arrays (``skip``: ignored, the epoch loop skips them itself)."""
        order = self.rng.permutation(self.n) if self.shuffle else np.arange(self.n)
        for start in range(0, self.n, self.batch_size):
            idx = order[start:start + self.batch_size]
            yield np.sort(idx) if self.shuffle else idx

    def epoch_end(self) -> None:
        """Nothing to tell arrays at the end of an epoch."""


class PyDataset:
    """Keras 3's PyDataset: a subclass defines ``__len__`` (batches per epoch) and
    ``__getitem__(i)``, batch ``i`` as ``(x, y)`` or ``(x, y, sample_weight)`` (``x`` or
    ``(x,)`` for ``predict``; ``x``/``y`` lists or dicts for several inputs/outputs), and
    may define ``on_epoch_end()``. Batches are read in this process, one at a time."""

    def __init__(self, workers: int = 1, use_multiprocessing: bool = False, max_queue_size: int = 10):
        if workers != 1 or use_multiprocessing:
            raise ValueError("PyDataset: batches are read in the training process; workers > 1 and "
                             "use_multiprocessing are not supported")
        self.workers, self.use_multiprocessing, self.max_queue_size = workers, use_multiprocessing, max_queue_size

    def __len__(self) -> int:
        raise NotImplementedError(f"{type(self).__name__} must define __len__ (batches per epoch)")

    def __getitem__(self, index: int):
        raise NotImplementedError(f"{type(self).__name__} must define __getitem__(index) returning a batch")

    def on_epoch_end(self) -> None:
        """Called after every epoch of fit (e.g. to reshuffle the samples)."""

    @property
    def num_batches(self) -> int:
        return len(self)


def is_stream(x) -> bool:
    """Whether ``x`` is streamed batches (a PyDataset, a generator or another iterator)."""
    return isinstance(x, (PyDataset, Iterator))


class Batch:
    """One validated batch: input, target (or None) and sample-weight arrays; ``index``:
    the batch's number in its stream (what errors name), None for arrays."""

    __slots__ = ("xs", "ys", "sw", "index")

    def __init__(self, xs, ys, sw, index=None):
        self.xs, self.ys, self.sw, self.index = xs, ys, sw, index

    def __len__(self) -> int:
        return self.xs[0].shape[0]

    def rows(self, lo: int, hi: int) -> Batch:
        """Samples lo..hi-1 (views): a data-parallel replica's shard of a global batch."""
        return Batch([a[lo:hi] for a in self.xs], None if self.ys is None else [a[lo:hi] for a in self.ys],
                     None if self.sw is None else self.sw[lo:hi], self.index)


def take_batch(model, xs, ys, sw, sel, where: str) -> Batch:
    """The Batch of samples ``sel`` (a slice or indices) of standardized arrays
    (memmap inputs cast and checked here, see ``take_inputs``)."""
    return Batch(take_inputs(model, xs, sel, where), None if ys is None else [a[sel] for a in ys],
                 None if sw is None else sw[sel])


def file_spec(a):
    """(filename, offset, shape, dtype, order) of the file bytes behind ``a`` when ``a`` is a
    NumPy memmap (or a view of one, e.g. a validation split or ``standardize_targets``'s
    array) opened shared (mode r, r+ or w+: a copy-on-write "c" map may differ from its
    file) and C- or F-contiguous; else None. ``open_file_spec`` maps the same bytes again
    (read-only) in another process."""
    import mmap

    if not isinstance(a, np.ndarray) or a.size == 0:
        return None
    top = a
    while isinstance(top.base, np.ndarray):
        top = top.base
    if (not isinstance(top, np.memmap) or not isinstance(top.base, mmap.mmap) or top.filename is None
            or getattr(top, "mode", "c") == "c"):
        return None
    if a.flags.c_contiguous:
        order = "C"
    elif a.flags.f_contiguous:
        order = "F"
    else:
        return None
    # a memmap's data pointer is file byte ``offset`` (a view's ``offset`` attribute is its parent's)
    offset = int(top.offset) + (a.ctypes.data - top.ctypes.data)
    filename = str(top.filename)
    try:  # (a file removed or truncated since it was mapped cannot be mapped again)
        if os.path.getsize(filename) < offset + a.nbytes:
            return None
    except OSError:
        return None
    return (filename, offset, tuple(a.shape), a.dtype.str, order)


def open_file_spec(spec) -> np.memmap:
    """A read-only memmap of ``file_spec``'s bytes: pages are read from the file as rows are
    taken (file-backed and shared, so not private memory of this process)."""
    filename, offset, shape, dtype, order = spec
    return np.memmap(filename, dtype=np.dtype(dtype), mode="r", offset=offset, shape=tuple(shape), order=order)


def array_batches(model, xs, ys, sw, batch_size: int, where: str, steps=None):
    """Consecutive Batches of standardized arrays (at most ``steps``)."""
    n = xs[0].shape[0]
    for step, start in enumerate(range(0, n, batch_size)):
        if steps is not None and step >= steps:
            return
        yield take_batch(model, xs, ys, sw, slice(start, min(start + batch_size, n)), where)


class BatchStream:
    """Batches from a PyDataset or a Python iterator, validated one at a time like arrays.

    A PyDataset gives ``len(dataset)`` steps an epoch (at most ``steps``), in an order
    shuffled with ``rng`` when ``shuffle``; an iterator gives ``steps`` batches an epoch,
    or all it has when ``steps`` is None, and ``exhausted`` turns True once it ends."""

    def __init__(self, model, source, where: str, shuffle: bool = False, rng=None, steps=None,
                 targets: bool = True, class_weight=None):
        self.model, self.source, self.where = model, source, where
        self.shuffle, self.rng, self.targets, self.class_weight = shuffle, rng, targets, class_weight
        self.is_dataset = isinstance(source, PyDataset)
        self.exhausted = False
        if self.is_dataset:
            n = len(source)
            check_count(where, "len(dataset)", n, minimum=0)
            self.steps = n if steps is None else min(steps, n)
        else:
            self.steps = steps

    def epoch(self, skip: int = 0):
        """This epoch's Batches; None for the first ``skip`` steps (not read or validated
        from a PyDataset; drawn and dropped from an iterator)."""
        if self.is_dataset:
            n = len(self.source)
            order = self.rng.permutation(n) if self.shuffle else np.arange(n)
            for step in range(self.steps):
                yield None if step < skip else self.load(self.source[int(order[step])], int(order[step]))
            return
        step = 0
        while self.steps is None or step < self.steps:
            try:
                item = next(self.source)
            except StopIteration:
                self.exhausted = True
                return
            yield None if step < skip else self.load(item, step)
            step += 1

    def batches(self):
        """The Batches of one pass (evaluate, predict, validation)."""
        return (b for b in self.epoch() if b is not None)

    def epoch_end(self) -> None:
        if self.is_dataset:
            self.source.on_epoch_end()

    def warn_exhausted(self, epoch: int) -> None:
        warnings.warn(f"{self.where}: the generator ran out of data after {epoch} epoch(s); training stops. "
                      "Give steps_per_epoch and a generator that yields steps_per_epoch * epochs batches "
                      "(or loops) to train for several epochs", stacklevel=3)

    def load(self, item, index: int) -> Batch:
        """Batch ``index`` validated like in-memory data (the error names the batch)."""
        where = f"{self.where} (batch {index})"
        if isinstance(item, tuple):
            if not 1 <= len(item) <= 3:
                raise ValueError(f"{where}: a batch must be x, (x,), (x, y) or (x, y, sample_weight); got a "
                                 f"tuple of {len(item)}")
            x, y, sw = (tuple(item) + (None, None))[:3]
        else:
            x, y, sw = item, None, None
        if self.targets and y is None:
            raise ValueError(f"{where}: the batch has no targets; yield (x, y) or (x, y, sample_weight)")
        xs, ys, sw = self.model.standardize_data(x, y if self.targets else None, sw if self.targets else None,
                                                 where)
        if ys is not None:
            sw = apply_class_weight(self.class_weight, ys, sw)
        return Batch(xs, ys, sw, index)
