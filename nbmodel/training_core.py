"""The training core of a compiled model: what ``compile`` creates and what one step does.

``Model.compile`` resolves its arguments (Keras forms: names, lists, dicts per
output) and builds one ``TrainingCore`` (``model.training_core``, None before
compile). The core owns:

- the flat parameter and gradient buffers: every trainable param and grad is a
  view into one of them (``pack``), and ``collect_grads`` makes the gradient
  buffer hold a step's gradients;
- the losses with their weights, the per-output losses of the last batch, the
  metrics (resolved against the first data, updated, reset, logged);
- the step's pieces: ``forward``, ``loss_gradients`` (each loss's fused
  forward+backward; Keras output masks through ``output_loss`` and
  ``metric_weight``), ``backward`` into the flat gradient buffer, the
  penalties (weight and activity regularizers) and ``apply_update`` (the
  optimizer step with the weight penalties' gradients before and the
  constraints after);
- ``train_step``, one whole step in one process, and ``evaluate_batches``;
- the walk over every random generator a step draws from (``random_layers``,
  ``get_random_state``).

Callers: ``Model`` (compile / fit / evaluate / train_on_batch / test_on_batch /
to / get_random_state), ``training.LocalTrainer`` and ``training.run_fit``
(steps, metrics, logs, validation), ``parallel/`` (each replica's shard step
is ``forward`` + ``loss_gradients(global_batch=...)`` + ``backward``; the
reduced step is ``weight_penalty`` + ``apply_update(grad_scale)``) and ``io``
(the compile state it saves). The core reads the model through its public
properties (``graph``, ``device``, ``layers``, ``outputs``, ...), and imports
none of ``model``, ``data``, ``training``, ``io``, ``parallel``.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import numpy as np

from . import config
from .graph import layer_tree
from .layers.base import finite_checks

if TYPE_CHECKING:
    from .layers.base import Layer
    from .losses import Loss
    from .metrics import Metric
    from .optimizers import Optimizer

# (output index, log name, Metric): how the core lists its metrics
MetricEntry = tuple[int, str, "Metric"]


def _mean(total, count):
    """Keras 'sum_over_batch_size' value; 0 when every label was ignored (ignore_class)."""
    return total / count if count else 0.0


def output_loss_names(model) -> list[str]:
    """Keras 3 logs each output's unweighted loss as "<output>_loss" when there are several."""
    names = model.output_names
    return [name + "_loss" for name in names] if len(names) > 1 else []


# ----------------------------------------------------------- random generators
def random_layers(model) -> list[Layer]:
    """Every layer of ``model`` that owns a random generator, in a fixed order:
    ``model.layers``, each followed by its sub-layers depth first."""
    return [sub for layer in model.layers for sub in layer_tree(layer)
            if hasattr(getattr(sub, "rng", None), "bit_generator")]  # a Generator, or a wrapper around one


def generators(model, shuffle: bool = True) -> list:
    """The generators a training step draws from: the batch shuffler (``shuffle``),
    then each layer's (dropout masks, noise), in ``random_layers`` order."""
    return ([model.shuffle_rng] if shuffle else []) + [layer.rng for layer in random_layers(model)]


def get_random_state(model, shuffle: bool = True) -> list[dict]:
    """The JSON-able bit-generator states of ``generators(model, shuffle)``."""
    return [g.bit_generator.state for g in generators(model, shuffle)]


def set_random_state(model, states, shuffle: bool = True) -> None:
    """Restore what ``get_random_state(model, shuffle)`` returned (same architecture)."""
    gens = generators(model, shuffle)
    states = list(states)
    if len(states) != len(gens):
        raise ValueError(f"{model.name}: set_random_state expected {len(gens)} generator states, "
                         f"got {len(states)}")
    for g, st in zip(gens, states):
        g.bit_generator.state = st


# ------------------------------------------------------------------- the core
class TrainingCore:
    """The losses, metrics, optimizer and flat buffers of a compiled model, and its step.

    ``TrainingCore(model, losses, loss_weights, metric_specs)``: ``losses`` one resolved
    Loss per output (on the model's device), ``loss_weights`` one float per output,
    ``metric_specs`` one list of metric identifiers per output (resolved on the first
    data). The optimizer is ``model.optimizer``, built here over the flat buffers; a
    data-parallel worker's model has none (it only computes gradients).
    """

    def __init__(self, model, losses: list[Loss], loss_weights: list[float], metric_specs: list[list]):
        self.model = model
        self.losses: list[Loss] = list(losses)
        self.loss_weights: list[float] = list(loss_weights)
        self.metric_specs: list[list] = metric_specs
        self.metrics: list[MetricEntry] | None = None  # built from the first data (build_metrics)
        self.output_losses: list[float] = []  # unweighted loss per output of the last batch
        self._packed: dict | None = None
        self.pack()
        if self.optimizer is not None:
            self.optimizer.to(model.device)
            self.optimizer.build(self.params, self.segments)

    @property
    def optimizer(self) -> Optimizer | None:
        """The model's optimizer (``model.optimizer``)."""
        return self.model.optimizer

    # -------------------------------------------------------- flat buffers
    def pack(self) -> None:
        """Move every trainable param/grad into one flat buffer each (views stay in the layers)."""
        model, dev = self.model, self.model.device
        entries = [(layer, key, arr) for layer in model.trainable_layers for key, arr in layer.params.items()]
        dtypes = {arr.dtype for _, _, arr in entries}
        if len(dtypes) > 1:
            raise ValueError(f"{model.name}: trainable params have several dtypes {sorted(map(str, dtypes))}")
        dtype = dtypes.pop() if dtypes else config.standardize_dtype(None)
        total = sum(arr.size for _, _, arr in entries)
        flat_p = dev.empty(total, dtype)
        flat_g = dev.zeros(total, dtype)
        copy = dev.kernels("array").copy
        segments, views, off = [], [], 0
        for layer, key, arr in entries:
            n = arr.size
            copy(arr.reshape(-1), flat_p[off:off + n])
            p = flat_p[off:off + n].reshape(arr.shape)
            g = flat_g[off:off + n].reshape(arr.shape)
            layer.bind_param(key, p, g)
            segments.append((off, n))
            views.append((layer, key, g))
            off += n
        self._packed = {"params": flat_p, "grads": flat_g, "segments": segments, "views": views}

    def unpack(self) -> None:
        """Forget the flat buffers (the model's graph was rebuilt: compile again)."""
        self._packed = None

    @property
    def packed(self) -> bool:
        return self._packed is not None

    @property
    def params(self):
        """The flat parameter buffer (every trainable param is a view into it)."""
        return self._packed["params"]

    @property
    def grads(self):
        """The flat gradient buffer, segment for segment like ``params``."""
        return self._packed["grads"]

    @property
    def segments(self) -> list[tuple[int, int]]:
        """(offset, size) of each trainable param in the flat buffers."""
        return self._packed["segments"]

    def bind_flat(self, params, grads) -> None:
        """Make the flat buffers the given arrays (e.g. shared memory) and every
        trainable param/grad a view into them."""
        packed = self._packed
        views = []
        for (layer, key, _), (off, n) in zip(packed["views"], packed["segments"]):
            shape = layer.params[key].shape
            g = grads[off:off + n].reshape(shape)
            layer.bind_param(key, params[off:off + n].reshape(shape), g)
            views.append((layer, key, g))
        packed["params"], packed["grads"], packed["views"] = params, grads, views

    def collect_grads(self, ran_layers: set[int]) -> None:
        """Make the flat gradient buffer hold this step's gradients (``ran_layers``: ids
        of the layers backward reached; the others' gradients are zero)."""
        dev = self.model.device
        k = dev.kernels("array")
        for layer, key, g in self._packed["views"]:
            cur = layer.grads[key]
            if id(layer) not in ran_layers:
                k.fill(g, 0)  # no gradient reached this layer in this step
            elif cur is not g:
                k.copy(dev.asarray(cur, g.dtype), g)  # the layer rebound its grad: copy it back
                layer.bind_param(key, layer.params[key], g)

    def to(self, device) -> None:
        """Move the losses, metrics, flat buffers and optimizer slots to ``device``
        (the model's layers have moved already)."""
        for loss in self.losses:
            loss.to(device)
        for _, _, m in self.metrics or []:
            m.to(device)
        if self._packed is not None:
            self.pack()
            self.optimizer.to(device)

    # --------------------------------------------------------- one step
    def forward(self, xs: list, training: bool) -> list:
        """The outputs for one batch of inputs (host arrays go to the device once, here)."""
        return self.model.graph.forward_batch(xs, training)

    @contextmanager
    def global_batch(self, size: int) -> Iterator[None]:
        """Inside: activity penalties divide by ``size`` samples (the global batch of
        a data-parallel step whose shard this process computes), forward and backward."""
        graph = self.model.graph
        graph.activity_batch = size
        try:
            yield
        finally:
            graph.activity_batch = None

    def output_loss(self, k: int, y_true, y_pred, sample_weight=None, need_grad: bool = True):
        """(total, count, dy) of output ``k``'s loss for the prediction ``y_pred`` of the last
        forward pass: the weighted sum of its elements, their count and d total / d y_pred
        (None without ``need_grad``). An output that carries a Keras mask weights its elements
        by it and counts the unmasked ones (Keras 3)."""
        loss = self.losses[k]
        mask = self.model.graph.output_masks()[k]
        if mask is not None:
            return loss.masked(y_true, y_pred, sample_weight, mask, need_grad)
        if need_grad:
            return loss.forward_backward(y_true, y_pred, sample_weight)
        return (*loss.forward(y_true, y_pred, sample_weight), None)

    def metric_weight(self, k: int, sample_weight=None):
        """The sample weights output ``k``'s metrics see: times its Keras mask when it has one."""
        mask = self.model.graph.output_masks()[k]
        if mask is None:
            return sample_weight
        from .losses import mask_weights

        return mask_weights(self.model.name, sample_weight, np.asarray(mask) != 0, self.model.device)

    def loss_gradients(self, ys: list, preds: list, sample_weight=None, global_batch: int | None = None,
                       scale: bool = True) -> tuple[list, list, list]:
        """Each output's (totals, counts, dys) for the last forward pass: its loss summed
        over the batch, its element count and d total / d prediction, the latter times
        ``loss_weight / count`` when ``scale`` (what the optimizer needs). With
        ``global_batch`` this batch is a shard of a data-parallel batch of that many
        samples and ``count`` is that batch's (each output counts a fixed number of
        elements per sample). Sets ``output_losses`` (this batch's unweighted means)."""
        scale_kernel = self.model.device.kernels("array").scale
        totals, counts, dys = [], [], []
        self.output_losses = []
        for k, w in enumerate(self.loss_weights):
            total, count, dy = self.output_loss(k, ys[k], preds[k], sample_weight)
            self.output_losses.append(_mean(total, count))  # unweighted, like Keras' "<output>_loss"
            if scale:
                n = count if global_batch is None else int(round(float(count))) * global_batch // len(ys[k])
                factor = w / n if n else 0.0
                if factor != 1.0:
                    scale_kernel(dy, factor)
            totals.append(total)
            counts.append(count)
            dys.append(dy)
        return totals, counts, dys

    def loss_value(self, ys: list, preds: list, sample_weight=None) -> float:
        """Weighted loss (Keras reduction) plus the penalties, without gradients;
        the per-output means (no penalties, as Keras) in ``output_losses``."""
        self.output_losses = [_mean(*self.output_loss(k, ys[k], preds[k], sample_weight, False)[:2])
                              for k in range(len(self.losses))]
        return sum(w * m for w, m in zip(self.loss_weights, self.output_losses)) + self.penalty()

    def backward(self, dys: list) -> None:
        """Backward through the graph from the outputs' gradients ``dys`` into the flat
        gradient buffer."""
        self.collect_grads(self.model.graph.backward(dys))

    def train_step(self, xs: list, ys: list, sample_weight=None) -> tuple[float, list, bool]:
        """One optimizer step on one batch in this process: (loss value with the penalties,
        predictions, whether the loss was finite; if not, nothing was updated)."""
        preds = self.forward(xs, training=True)
        _, _, dys = self.loss_gradients(ys, preds, sample_weight)
        loss_value = 0.0
        for w, mean in zip(self.loss_weights, self.output_losses):
            loss_value += w * mean
        loss_value += self.penalty()
        if not np.isfinite(loss_value):
            return loss_value, preds, False
        self.backward(dys)
        self.apply_update(1.0)
        return loss_value, preds, True

    # ------------------------------------------ regularizers and constraints
    def weight_options(self, table: str) -> list[tuple[Layer, str, Any]]:
        """[(layer, param key, Regularizer or Constraint)] of the trainable weights
        (sub-layers and nested models included) from each layer's ``table``
        ("weight_regularizers" or "weight_constraints")."""
        out = []

        def visit(layer):
            if not layer.trainable:
                return
            for key, option in getattr(layer, table, {}).items():
                if key in layer.params:
                    out.append((layer, key, option))
            for sub in layer.sublayers():
                visit(sub)

        for layer in self.model.graph.layers:
            visit(layer)
        return out

    @property
    def activity_penalty(self) -> float:
        """The activity regularizers' penalties of the last forward pass."""
        return self.model.graph.activity_penalty

    def weight_penalty(self) -> float:
        """Sum of the weight regularizers' penalties of the current weights."""
        dev = self.model.device
        return sum((reg.penalty(dev, layer.params[key])
                    for layer, key, reg in self.weight_options("weight_regularizers")), 0.0)

    def penalty(self) -> float:
        """The weight penalties plus the activity penalties of the last forward
        pass: what Keras adds to the loss."""
        return self.activity_penalty + self.weight_penalty()

    def apply_update(self, grad_scale: float = 1.0) -> None:
        """One optimizer step from the flat gradient buffer (times ``grad_scale``):
        the weight penalties' gradients are added first, the constraints applied
        after (Keras). Called once per step, on the reduced gradient when data-parallel."""
        packed, dev = self._packed, self.model.device
        regs = self.weight_options("weight_regularizers")
        if regs:
            if grad_scale != 1.0:
                dev.kernels("array").scale(packed["grads"], grad_scale)
                grad_scale = 1.0
            for layer, key, reg in regs:
                reg.add_grad(dev, layer.params[key], layer.grads[key])
        self.optimizer.apply(packed["params"], packed["grads"], grad_scale)
        for layer, key, con in self.weight_options("weight_constraints"):
            con.apply(dev, layer.params[key])

    # ------------------------------------------------------------- metrics
    def build_metrics(self, ys: list, preds: list) -> None:
        """Resolve the metric specs against targets and predictions (arrays, or their
        shapes) and build the metrics, so their ``totals()`` are sized before any update."""
        from . import metrics as metrics_mod

        model = self.model
        names = model.output_names
        self.metrics = []
        for k, specs in enumerate(self.metric_specs):
            for spec in specs:
                m = metrics_mod.get(spec, loss=self.losses[k], y_true=ys[k], y_pred=preds[k]).to(model.device)
                m.build(ys[k], preds[k])  # totals() sized before the first update (data parallel)
                prefix = names[k] + "_" if len(names) > 1 else ""
                self.metrics.append((k, prefix + m.name, m))

    def update_metrics(self, ys: list, preds: list, sample_weight=None,
                       metrics: Iterable[MetricEntry] | None = None) -> None:
        """Add a batch to the metrics (``metrics``: other entries than the core's own,
        e.g. a data-parallel replica's private copies)."""
        if metrics is None:
            if self.metrics is None:
                self.build_metrics(ys, preds)
            metrics = self.metrics
        for k, _, m in metrics:
            m.update(ys[k], preds[k], self.metric_weight(k, sample_weight))

    def reset_metrics(self, metrics: Iterable[MetricEntry] | None = None) -> None:
        for _, _, m in (self.metrics if metrics is None else metrics) or []:
            m.reset()

    @property
    def metrics_names(self) -> list[str]:
        return ["loss"] + output_loss_names(self.model) + [name for _, name, _ in self.metrics or []]

    def logs(self, loss_sum: float, n_seen: int, prefix: str = "", output_sums=None) -> dict:
        """Epoch logs: the mean loss (and per-output losses) over ``n_seen`` samples, the metrics."""
        logs = {prefix + "loss": loss_sum / max(n_seen, 1)}
        if output_sums is not None:
            for name, v in zip(output_loss_names(self.model), output_sums):
                logs[prefix + name] = v / max(n_seen, 1)
        for _, name, m in self.metrics or []:
            logs[prefix + name] = m.result()
        return logs

    def batch_logs(self, loss_value: float, ys: list, preds: list, sample_weight=None) -> dict:
        """The logs of one batch (train_on_batch / test_on_batch): its loss, per-output
        losses and the metrics over this batch alone."""
        if self.metrics is None:
            self.build_metrics(ys, preds)
        out_names = output_loss_names(self.model)
        if not self.metrics and not out_names:
            return {"loss": loss_value}
        logs = {"loss": loss_value}
        logs.update(zip(out_names, self.output_losses))
        self.reset_metrics()
        self.update_metrics(ys, preds, sample_weight)
        logs.update({name: m.result() for _, name, m in self.metrics})
        return logs

    def evaluate_batches(self, batches: Iterable, where: str) -> dict:
        """Logs (loss, per-output losses, metrics) over validated ``data.Batch``es in
        inference mode; the running metrics (of fit) are left as they were."""
        saved = [(m.totals().copy()) for _, _, m in self.metrics or []]
        self.reset_metrics()
        loss_sum, n = 0.0, 0
        out_sums = np.zeros(len(self.losses)) if len(self.losses) > 1 else None
        with finite_checks(False):
            for b in batches:
                preds = self.forward(b.xs, training=False)
                value = self.loss_value(b.ys, preds, b.sw)
                if out_sums is not None:
                    out_sums += np.asarray(self.output_losses) * len(b)
                loss_sum += value * len(b)
                n += len(b)
                self.update_metrics(b.ys, preds, b.sw)
        if n == 0:
            raise ValueError(f"{where}: got 0 samples; a loss over no data is undefined")
        logs = self.logs(loss_sum, n, output_sums=out_sums)
        for (_, _, m), tot in zip(self.metrics or [], saved):  # keep fit's running metrics intact
            m.reset()
            m.merge_totals(tot)
        return logs

    # ---------------------------------------------------- random generators
    def random_layers(self) -> list[Layer]:
        """Every layer that owns a random generator (see the module function)."""
        return random_layers(self.model)

    def get_random_state(self, shuffle: bool = True) -> list[dict]:
        """The states of every generator a step draws from (``shuffle``: the batch
        shuffler first; without it, the layers' alone)."""
        return get_random_state(self.model, shuffle)

    def set_random_state(self, states, shuffle: bool = True) -> None:
        set_random_state(self.model, states, shuffle)
