"""What both data-parallel backends share: the per-shard step, the epoch loop, RNG and state sync.

One training step over a global batch of B samples, on R replicas:

1. replica r takes a contiguous shard [lo, hi) of the batch (sizes differ by at
   most one, so any B splits) and runs forward (training=True), each loss's
   fused forward+backward and backward into its flat gradient buffer: the
   gradient of the SUM of its per-sample losses;
2. one reduction sums, over replicas in a fixed order, the flat gradients and
   a small float64 vector of extras (each loss's total and count, every
   metric's [total, count]);
3. the optimizer applies the summed gradient with ``grad_scale`` and every
   replica (or the one parent) ends up with the same parameters.

Dividing by the GLOBAL count is what makes this the exact large-batch step.
For the built-in losses the count is a fixed number of loss elements per
sample, so each replica scales its output gradients by
``loss_weight / global_count`` before backward, exactly as the single-process
step does (several outputs included). A loss whose count depends on the
labels (``ignore_class``, custom losses) is only known after the reduction:
then the model must have one output, backward runs on the unscaled gradient
and the optimizer gets ``grad_scale = loss_weight / global_count``.

Randomness: a layer's ``rng`` is wrapped so that a replica draws the dropout
noise of the WHOLE global batch and keeps its shard's rows, so Dropout gives
the same masks as one process (every replica's generator advances alike,
including replicas whose shard of a short last batch is empty).

BatchNormalization: each replica's layer gets a ``StatSync`` that sums its
per-channel sums (count and sum, then centred squares in forward; dy and
dy * xhat in backward) over every replica in a fixed order, so each shard is
normalized with the statistics of the global batch, dx is that of the global
batch, and every replica updates its moving statistics alike. A replica with
an empty shard (short last batch) adds zeros to the same sequence of sums.
At the end of an epoch the moving statistics of replica 0 (whose shard is
never empty) become everyone's.

Every piece of the step itself is the model's ``TrainingCore`` (``training_core.py``):
a replica's shard step is ``forward`` + ``loss_gradients(global_batch=...)`` +
``backward``; the reduced step ``weight_penalty`` + ``apply_update(grad_scale)``.
The functions here take that core (a worker's has no optimizer).
"""
from __future__ import annotations

import copy

import numpy as np

from .. import losses
from ..data import Batch, take_batch
from ..graph import layer_tree
from ..layers.base import finite_checks
from ..training import run_fit


class ParallelError(RuntimeError):
    """A data-parallel worker failed or died; the message says which and why."""


# ------------------------------------------------------------------ shards
def shard_bounds(n, parts):
    """[(lo, hi)] splitting range(n) into ``parts`` contiguous shards, first ones larger."""
    base, extra = divmod(int(n), int(parts))
    bounds, lo = [], 0
    for r in range(parts):
        hi = lo + base + (1 if r < extra else 0)
        bounds.append((lo, hi))
        lo = hi
    return bounds


# ------------------------------------------------------------ model walks
def walk_layers(model):
    """Every graph layer and, depth first, its sub-layers (a fixed order on every replica)."""
    return [sub for layer in model.graph.layers for sub in layer_tree(layer)]


def layer_classes(model):
    """{class name: class} of every layer, so a replica can rebuild custom layers."""
    return {type(layer).__name__: type(layer) for layer in walk_layers(model)}


def synced_layers(model):
    """Layers whose training forward needs statistics of the whole global batch (BatchNormalization)."""
    return [layer for layer in walk_layers(model) if hasattr(layer, "stat_sync")]


def stat_sync_size(model):
    """Longest vector a StatSync sums for this model (0: no synced layer): 2 * channels + 1."""
    return max((2 * layer.state["moving_mean"].shape[0] + 1 for layer in synced_layers(model)), default=0)


class StatSync:
    """Sums float64 vectors over replicas for BatchNormalization's batch statistics.

    ``reduce(buf)`` sums ``buf`` in place over every replica (each replica makes
    the same sequence of calls in a step). The sizes of the last non-empty
    step's calls are kept so that a replica with an empty shard can ``replay``
    the sequence with zeros.
    """

    def __init__(self, reduce):
        self.reduce = reduce
        self._sizes = None
        self._last = ()

    def __call__(self, values):
        buf = np.array(values, dtype=np.float64).reshape(-1)
        if self._sizes is not None:
            self._sizes.append(buf.size)
        self.reduce(buf)
        return buf

    def begin(self):
        self._sizes = []

    def end(self):
        if self._sizes:
            self._last = tuple(self._sizes)
        self._sizes = None

    def replay(self):
        for size in self._last:
            self.reduce(np.zeros(size))


class SharedSlotsReduce:
    """StatSync's reduction between worker processes: each writes its vector to
    its row of a shared (2, replicas, size) array, waits at a barrier, and sums
    the rows in replica order (so every replica gets the same bits). Calls
    alternate between the two halves: a replica can only write the half it read
    two calls ago after everyone has passed the barrier of the call between."""

    def __init__(self, slots, rank, barrier):
        self.slots, self.rank, self.barrier = slots, rank, barrier
        self.half = 0

    def __call__(self, buf):
        rows = self.slots[self.half, :, :buf.size]
        self.half ^= 1
        rows[self.rank] = buf
        self.barrier.wait()
        np.copyto(buf, rows[0])
        for r in range(1, rows.shape[0]):
            buf += rows[r]


def install_stat_sync(model, sync):
    for layer in synced_layers(model):
        layer.stat_sync = sync


def uninstall_stat_sync(model):
    for layer in synced_layers(model):
        layer.__dict__.pop("stat_sync", None)


def state_positions(core):
    """Indices in ``get_weights()`` of the arrays the optimizer does not own (moving statistics)."""
    flat = core.params
    pos, i = [], 0
    for layer in core.model.layers:
        for arr in layer.weight_arrays():
            if not np.may_share_memory(arr, flat):  # packed params are slices of flat
                pos.append(i)
            i += 1
    return pos


def get_state_arrays(model, positions):
    weights = model.get_weights()
    return [weights[i] for i in positions]


def set_state_arrays(model, positions, arrays):
    if not positions:
        return
    weights = model.get_weights()
    for i, a in zip(positions, arrays):
        weights[i] = a
    model.set_weights(weights)


# ---------------------------------------------------------------- losses
def _fixed_count(loss):
    """True when the loss counts a fixed number of elements per sample (knowable from shapes)."""
    builtin = (losses.MeanSquaredError, losses.MeanAbsoluteError, losses.Huber, losses.BinaryCrossentropy,
               losses.CategoricalCrossentropy, losses.SparseCategoricalCrossentropy)
    return type(loss) in builtin and getattr(loss, "ignore_class", None) is None


def loss_plan(core):
    """"scaled" (each replica scales dy by w / global count) or "sum" (scale after the reduction)."""
    model = core.model
    if all(_fixed_count(lo) for lo in core.losses) and not model.graph.may_create_masks():
        return "scaled"  # (a Keras mask makes the count depend on the data, like ignore_class)
    if has_activity_penalty(model):  # its gradient is added to dy before any scale after the reduction
        raise NotImplementedError(f"{model.name}: data-parallel fit of a model with an activity_regularizer "
                                  "needs built-in losses without ignore_class and no Keras mask; train it with "
                                  "workers=1")
    if len(core.losses) == 1:
        return "sum"
    raise NotImplementedError(
        f"{model.name}: data-parallel fit of a model with several outputs needs losses whose element "
        "count per sample is fixed (no ignore_class, no custom loss, no Keras mask); train it with workers=1")


def ensure_metrics(core, ys):
    """Build the core's metric objects from data and output SHAPES (no forward pass needed)."""
    if core.metrics is None:
        preds = [tuple(1 if s is None else s for s in (1,) + tuple(t.shape[1:])) for t in core.model.outputs]
        core.build_metrics([tuple(a.shape) for a in ys], preds)


def metric_slices(core):
    """Where each metric's ``totals()`` sits in a step's extras, after the losses'
    [totals, counts]: 2 numbers for a mean, the whole state for AUC and the like."""
    off = 2 * len(core.losses)
    out = []
    for _, _, m in core.metrics or []:
        n = m.totals().size
        out.append(slice(off, off + n))
        off += n
    return out


def has_activity_penalty(model) -> bool:
    return any(getattr(layer, "activity_regularizer", None) is not None for layer in walk_layers(model))


def extras_size(core):
    """Losses' [totals, counts], metrics' totals, then one slot for the activity
    penalties (summed over the replicas' shards) when the model has any."""
    slices = metric_slices(core)
    size = slices[-1].stop if slices else 2 * len(core.losses)
    return size + (1 if has_activity_penalty(core.model) else 0)


def reduce_step(core, extras, plan):
    """(loss value, [unweighted loss per output], grad_scale) of a step from its reduced extras."""
    n_out = len(core.losses)
    totals, counts = extras[:n_out], extras[n_out:2 * n_out]
    value, per_output = 0.0, []
    for w, t, c in zip(core.loss_weights, totals, counts):
        t, c = float(t), float(c)
        mean = t / c if c else 0.0  # every label ignored: no loss, as in one process
        value += w * mean
        per_output.append(mean)
    if has_activity_penalty(core.model):
        value += float(extras[-1])
    if plan == "sum":
        c = float(counts[0])
        return value, per_output, (core.loss_weights[0] / c if c else 0.0)
    return value, per_output, 1.0


def merge_metrics(core, extras):
    for (_, _, m), where in zip(core.metrics or [], metric_slices(core)):
        m.merge_totals(extras[where])


# ------------------------------------------------------------------ RNGs
class GlobalBatchRNG:
    """Wraps a layer's Generator: ``random(out=u)`` for a shard draws the noise of
    the whole global batch (batch-major, so rows lo..hi of it are the shard's)
    and keeps the shard's rows. Everything else is passed to the Generator."""

    def __init__(self, rng):
        self.rng = rng
        self._shard = None
        self._draws = []

    def begin(self, lo, hi, total):
        self._shard = (lo, hi, total)
        self._draws = []

    def replay(self, total):
        """Advance like a step over ``total`` samples whose shard here is empty."""
        for rest, rows_per_sample, dtype in self._last:
            self.rng.random((rows_per_sample * total,) + rest, dtype=dtype)

    def end(self):
        if self._draws:
            self._last = self._draws
        self._shard = None

    _last = ()

    def random(self, size=None, dtype=np.float64, out=None):
        if self._shard is None:
            return self.rng.random(size, dtype=dtype, out=out)
        lo, hi, total = self._shard
        shape = tuple(out.shape) if out is not None else (
            (size,) if isinstance(size, (int, np.integer)) else tuple(size or ()))
        n = hi - lo
        if not shape or n == 0 or shape[0] % n:
            raise ValueError("data-parallel fit: a layer drew random numbers whose first axis "
                             f"{shape[:1]} is not a multiple of the shard's {n} samples")
        k = shape[0] // n
        full = self.rng.random((k * total,) + shape[1:], dtype=dtype)
        self._draws.append((shape[1:], k, np.dtype(dtype)))
        part = full[k * lo:k * hi]
        if out is None:
            return part.copy()
        out[...] = part
        return out

    def __getattr__(self, name):
        return getattr(self.rng, name)

    def __getstate__(self):
        return {"rng": self.rng}

    def __setstate__(self, state):
        self.__init__(state["rng"])


def raw_rng(rng):
    return rng.rng if isinstance(rng, GlobalBatchRNG) else rng


def install_rngs(core):
    """Wrap every layer generator the core's step draws from in a GlobalBatchRNG (once)."""
    proxies = {}
    for layer in core.random_layers():
        rng = layer.rng
        if not isinstance(rng, GlobalBatchRNG):
            rng = GlobalBatchRNG(rng)
            layer.rng = rng
        proxies[id(rng)] = rng
    return list(proxies.values())


def uninstall_rngs(core):
    for layer in core.random_layers():
        layer.rng = raw_rng(layer.rng)


# -------------------------------------------------------- the shard step
class ShardRunner:
    """One replica's part of a step: the core's forward, loss gradients and backward
    over its shard into the flat gradient buffer, and the extras into ``extras``."""

    def __init__(self, core, plan, extras, stat_sync=None):
        self.core, self.plan = core, plan
        self.extras = extras
        self.proxies = install_rngs(core)
        self.stat_sync = stat_sync
        if stat_sync is not None:
            install_stat_sync(core.model, stat_sync)
        # private metric objects: the core's own accumulate the reduced totals (same process under MPI)
        self.metrics = [(k, name, copy.deepcopy(m)) for k, name, m in core.metrics or []]
        self.metric_slices = metric_slices(core)
        self.activity_slot = has_activity_penalty(core.model)

    def run(self, shard, lo, hi, total):
        """``shard``: a callable giving this replica's rows [lo, hi) of the global batch of
        ``total`` samples as a ``data.Batch`` (only called when the shard is not empty)."""
        core = self.core
        ex = self.extras
        ex[:] = 0.0
        n = hi - lo
        if n == 0:
            core.grads[...] = 0
            for p in self.proxies:
                p.replay(total)
            if self.stat_sync is not None:
                self.stat_sync.replay()
            return
        b = shard()  # (read before the generators are wrapped for the step: a bad batch leaves them alone)
        for p in self.proxies:
            p.begin(lo, hi, total)
        if self.stat_sync is not None:
            self.stat_sync.begin()
        try:
            bx, by, bw = b.xs, b.ys, b.sw
            n_out = len(core.losses)
            # activity penalties divide by the global batch; "scaled": each dy times the single-process
            # w / count with the count of the global batch ("sum": scaled after the reduction)
            with finite_checks(False), core.global_batch(total):
                preds = core.forward(bx, training=True)
                totals, counts, dys = core.loss_gradients(by, preds, bw, global_batch=total,
                                                          scale=self.plan == "scaled")
                ex[:n_out], ex[n_out:2 * n_out] = totals, counts
                core.backward(dys)
                if self.activity_slot:
                    ex[-1] = core.activity_penalty
                core.reset_metrics(self.metrics)
                core.update_metrics(by, preds, bw, self.metrics)
        finally:
            for p in self.proxies:
                p.end()
            if self.stat_sync is not None:
                self.stat_sync.end()
        for (_, _, m), where in zip(self.metrics, self.metric_slices):
            ex[where] = m.totals()


def array_shard(model, xs, ys, sw, idx):
    """``ShardRunner.run``'s ``shard`` for samples ``idx`` of standardized arrays (a memmap
    input's rows are read, cast and checked here, as one process does per batch)."""
    return lambda: take_batch(model, xs, ys, sw, idx, "fit")


def stream_batch_size(batch, replicas, first):
    """The size of a streamed global batch, checked: not empty, and the first one large
    enough to split over the replicas (later ones may be smaller, like a last batch)."""
    n = len(batch)
    if n == 0:
        raise ValueError(f"fit (batch {batch.index}): an empty batch; a data-parallel step needs samples")
    if first and n < replicas:
        raise ValueError(f"fit (batch {batch.index}): a global batch of {n} samples cannot be split over "
                         f"{replicas} replicas; yield batches of at least {replicas} samples")
    return n


# ------------------------------------------------------------ the trainers
class ReplicatedTrainer:
    """What the process and MPI trainers share (``nbmodel.training.run_fit`` drives them).

    A subclass provides ``model``, ``replicas``, ``is_root``, ``keep_callback``,
    ``agree``, ``start()`` (which may read ``self.plan``), ``epoch_begin``,
    ``sync_state``, ``finish`` and ``step(idx) -> extras``: the reduced extras of
    the step, with the summed gradient in the model's flat grad buffer.
    """

    plan = None
    first_batch = True  # a streamed fit: the next Batch is the first (metrics built from its targets)

    def train_step(self, idx):
        core = self.model.training_core
        if isinstance(idx, Batch):  # a global batch streamed from a PyDataset or a generator
            stream_batch_size(idx, self.replicas, self.first_batch)
            if self.first_batch:
                ensure_metrics(core, idx.ys)
                self.first_batch = False
        extras = self.step(idx)
        loss_value, per_output, grad_scale = reduce_step(core, extras, self.plan)
        # the weight penalties once, on the root's weights (the activity penalties came with the extras)
        loss_value += core.weight_penalty()
        if np.isfinite(loss_value):
            core.apply_update(grad_scale)
            merge_metrics(core, extras)
        return loss_value, per_output


def fit_replicated(model, trainer, xs, ys, val, batch_size, batches=None, **kw):
    """``run_fit`` with a ReplicatedTrainer, once the global batch is known to split.

    ``batches``: a ``data.BatchStream`` (xs, ys None): the global batches come from a
    PyDataset or a generator; each is checked as it comes (``stream_batch_size``) and
    the metrics are built from the first one's targets."""
    core = model.training_core
    if core is None:
        raise ValueError(f"{model.name}: data-parallel fit on a PyDataset or generator needs a built model; give "
                         "the Sequential an Input (or call build) first, or train it with workers=1")
    trainer.plan = loss_plan(core)
    if batches is not None:
        trainer.first_batch = True
        return run_fit(model, trainer, None, val, batch_size=None, batches=batches, **kw)
    n = xs[0].shape[0]
    if min(batch_size, n) < trainer.replicas:
        raise ValueError(f"fit: a global batch of {min(batch_size, n)} samples cannot be split over "
                         f"{trainer.replicas} replicas; use batch_size >= {trainer.replicas}")
    ensure_metrics(core, ys)
    return run_fit(model, trainer, n, val, batch_size=batch_size, **kw)
