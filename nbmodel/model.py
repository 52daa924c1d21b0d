"""Model (a graph of layer calls) and Sequential (its chain case).

compile / fit / evaluate / predict / train_on_batch / test_on_batch follow
Keras 3. One training step is: forward (training=True), each loss's fused
forward+backward (gradient of the summed loss), backward through the graph
into one flat gradient buffer, one optimizer kernel over one flat parameter
buffer. Losses return the SUMMED loss, its element count and the gradient of
the sum; each output gradient is scaled by ``loss_weight / count`` once.
Keeping the sum and the count apart is what makes data-parallel training
exact (see parallel/, which scales by the global count).
"""
from __future__ import annotations

from collections.abc import MutableMapping

import numpy as np

from . import config
from .backend import Device, get_device
from .graph import Graph
from .layers.base import Input, InputLayer, KTensor, Layer, _auto_name, finite_checks


class _LayersDict(MutableMapping):
    """A nested model's params / grads / state: its layers' entries under
    ``"<layer name>/<key>"``, read and written through (the outer model's
    flat-buffer views reach the inner layers). params and grads list only
    trainable layers, as Keras' ``trainable_weights`` do."""

    def __init__(self, model, attr):
        self._model = model
        self._attr = attr

    def _layers(self):
        layers = self._model.sublayers()
        if self._attr != "state":
            layers = [layer for layer in layers if layer.trainable]
        return layers

    def _locate(self, key):
        name, sep, rest = str(key).partition("/")
        for layer in self._layers():
            if sep and layer.name == name:
                d = getattr(layer, self._attr)
                if rest in d:
                    return d, rest
        raise KeyError(key)

    def __getitem__(self, key):
        d, rest = self._locate(key)
        return d[rest]

    def __setitem__(self, key, value):
        d, rest = self._locate(key)
        d[rest] = value

    def __delitem__(self, key):
        raise TypeError(f"{self._model.name}: a nested model's weights cannot be deleted")

    def __iter__(self):
        for layer in self._layers():
            for k in getattr(layer, self._attr):
                yield f"{layer.name}/{k}"

    def __len__(self):
        return sum(len(getattr(layer, self._attr)) for layer in self._layers())


class Model(Layer):
    """A functional model: ``Model(inputs=x, outputs=y)`` over symbolic tensors.

    A model is also a layer: called on symbolic tensors it becomes one node of
    another model (its weights are that model's weights, ``trainable = False``
    freezes every layer in it), called on arrays it predicts."""

    def __init__(self, inputs=None, outputs=None, name=None, device=None, seed=None):
        self.name = name or _auto_name(type(self).__name__)
        self.seed = seed
        # what a Layer has (a model is used as a layer inside another model)
        self.dtype = config.standardize_dtype(None)
        self._dtype_given = False
        self._nodes = []
        self.input_grad_needed = True
        self._trainable = True
        self.rng = np.random.default_rng(seed)  # a layer's generator (a model draws from its layers')
        self._weights_given = False  # set by compile and set_weights: a parent's seed no longer redraws them
        self.compiled = False
        self.stop_training = False
        self.history = None
        self.optimizer = None
        self._device = get_device(device)
        self._losses = []
        self._metrics = None
        self._rng = np.random.default_rng(seed)
        self._graph = None
        if inputs is not None or outputs is not None:
            if inputs is None or outputs is None:
                raise ValueError("Model: both inputs and outputs are required")
            self._init_graph(inputs, outputs)

    # ----------------------------------------------------------------- graph
    def _init_graph(self, inputs, outputs):
        self._inputs_nested = isinstance(inputs, (list, tuple))
        self._outputs_nested = isinstance(outputs, (list, tuple))
        ins = list(inputs) if self._inputs_nested else [inputs]
        outs = list(outputs) if self._outputs_nested else [outputs]
        for t in ins + outs:
            if not isinstance(t, KTensor):
                raise TypeError(f"{self.name}: inputs and outputs must be symbolic tensors from "
                                f"layers.Input(...) and layer calls, got {type(t).__name__}")
        for t in ins:
            if t.node is not None:
                raise ValueError(f"{self.name}: model inputs must come from layers.Input(...)")
        self._graph = Graph(ins, outs, self._device)
        self.input_layers = [t.input_layer for t in ins]
        for layer in self.layers:
            layer.to(self._device)
        if self.seed is not None:
            for i, layer in enumerate(self._graph.layers):
                if not getattr(layer, "_weights_given", False):  # a trained or loaded nested model keeps its own
                    layer.reinitialize(np.random.default_rng([self.seed, i]))
        self._packed = None

    # ------------------------------------------------------ a model as a layer
    @property
    def trainable(self) -> bool:
        return self._trainable

    @trainable.setter
    def trainable(self, value: bool) -> None:
        """Keras 3: sets ``trainable`` of every layer inside the model too."""
        self._trainable = bool(value)
        for layer in self.sublayers():
            layer.trainable = bool(value)

    @property
    def built(self) -> bool:
        return self._graph is not None

    @property
    def built_input_shape(self):
        if self._graph is None:
            return None
        shapes = tuple(t.shape for t in self._graph.inputs)
        return shapes if self._inputs_nested else shapes[0]

    @property
    def input_shape_arg(self):
        """Shape (batch excluded) of a built single-input model, so that
        ``Sequential([model, ...])`` knows its input."""
        if self._graph is None or len(self._graph.inputs) != 1:
            return None
        return tuple(self._graph.inputs[0].shape[1:])

    @property
    def params(self):
        return _LayersDict(self, "params")

    @property
    def grads(self):
        return _LayersDict(self, "grads")

    @property
    def state(self):
        return _LayersDict(self, "state")

    def sublayers(self) -> list[Layer]:
        """The model's layers (each once, inputs excluded)."""
        if self._graph is None:
            return list(getattr(self, "_layers", []))
        return list(self._graph.layers)

    def bind_param(self, name, param, grad) -> None:
        layer_name, _, rest = name.partition("/")
        for layer in self.sublayers():
            if layer.name == layer_name:
                layer.bind_param(rest, param, grad)
                return
        raise KeyError(name)

    def weight_arrays(self) -> list:
        return [w for layer in self.layers for w in layer.weight_arrays()]

    def reinitialize(self, rng) -> None:
        for layer in self.sublayers():
            layer.reinitialize(np.random.default_rng(rng.integers(2**63)))

    def cast(self, dtype):
        self.dtype = config.standardize_dtype(dtype)
        for layer in self.sublayers():
            layer.cast(dtype)
        return self

    def clear_workspaces(self):
        Layer.clear_workspaces(self)
        for layer in self.sublayers():
            layer.clear_workspaces()

    def compute_output_shape(self, input_shape):
        shapes = [t.shape for t in self.outputs]
        return shapes if self._outputs_nested else shapes[0]

    def integer_input(self, index: int = 0) -> bool:
        return self._graph is not None and self._graph.inputs[index].dtype.kind in "iu"

    def forward(self, x, training=False, mask=None):
        """Run the model's graph on device arrays (the model as a layer of another model);
        ``mask``: the Keras masks of the inputs, as the outer graph passes them."""
        self._require_graph()
        self._called_nested = isinstance(x, (list, tuple))
        xs = list(x) if self._called_nested else [x]
        if len(xs) != len(self._graph.inputs):
            raise ValueError(f"{self.name}: expected {len(self._graph.inputs)} inputs, got {len(xs)}")
        masks = None if mask is None else list(mask) if self._called_nested else [mask]
        self._graph.all_input_grads = self.input_grad_needed  # as the outer graph set it for this call
        outs = self._graph.forward(xs, training, masks)
        return outs if self._outputs_nested else outs[0]

    def compute_mask(self, inputs, mask=None):
        """The masks of the outputs of the last forward pass (a model used as a layer)."""
        masks = self._graph.output_masks()
        if all(m is None for m in masks):
            return None
        return masks if self._outputs_nested else masks[0]

    def backward(self, dy):
        """Gradients of the model's weights (into its layers' grads) and of its inputs."""
        g = self._graph
        g.all_input_grads = self.input_grad_needed
        dxs = g.backward(list(dy) if self._outputs_nested else [dy], input_grads=True)
        fill = self._device.kernels("array").fill
        for layer in g.layers:  # layers no gradient reached in this call
            if id(layer) not in g.ran:
                for grad in layer.grads.values():
                    fill(grad, 0)
        return tuple(dxs) if self._called_nested else dxs[0]

    @classmethod
    def from_config(cls, config, custom_objects=None) -> Model:
        """The model ``get_config`` describes (new weights); same as ``io.model_from_config``."""
        from . import io

        return io.model_from_config(config, custom_objects)

    @property
    def device(self) -> Device:
        """The device every layer, loss, metric, optimizer and buffer of this model uses."""
        return self._device

    @property
    def inputs(self):
        self._require_graph()
        return list(self._graph.inputs)

    @property
    def outputs(self):
        self._require_graph()
        return list(self._graph.outputs)

    @property
    def layers(self) -> list[Layer]:
        """Every layer, inputs first, in execution order (Keras functional order)."""
        if self._graph is None:
            return []
        return list(self.input_layers) + self._graph.layers

    def get_layer(self, name=None, index=None) -> Layer:
        if index is not None:
            return self.layers[index]
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise ValueError(f"{self.name}: no layer named {name!r}")

    def _require_graph(self):
        if self._graph is None:
            raise ValueError(f"{self.name}: the model has no input shape yet; add a layers.Input, pass "
                             "input_shape= to the first layer, or call fit/predict/build first")

    def build(self, input_shape):
        """Build a model that has no known input shape yet (Sequential)."""
        self._require_graph()

    @property
    def trainable_layers(self):
        return [layer for layer in self._graph.layers if layer.trainable and layer.params]

    # ------------------------------------------------------------ flat buffers
    def _pack(self):
        """Move every trainable param/grad into one flat buffer (views stay in the layers)."""
        self._weights_given = True
        entries = []
        for layer in self.trainable_layers:
            for key, arr in layer.params.items():
                entries.append((layer, key, arr))
        dtypes = {arr.dtype for _, _, arr in entries}
        if len(dtypes) > 1:
            raise ValueError(f"{self.name}: trainable params have several dtypes {sorted(map(str, dtypes))}")
        dtype = dtypes.pop() if dtypes else config.standardize_dtype(None)
        total = sum(arr.size for _, _, arr in entries)
        dev = self._device
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
        self._packed = {"params": flat_p, "grads": flat_g, "segments": segments, "views": views,
                        "layers": {id(layer) for layer, _, _ in entries}}
        return self._packed

    def _collect_grads(self, ran_layers):
        """Make the flat grad buffer hold this step's gradients."""
        k = self._device.kernels("array")
        for layer, key, g in self._packed["views"]:
            cur = layer.grads[key]
            if id(layer) not in ran_layers:
                k.fill(g, 0)  # no gradient reached this layer in this step
            elif cur is not g:
                k.copy(self._device.asarray(cur, g.dtype), g)  # the layer rebound its grad: copy it back
                layer.bind_param(key, layer.params[key], g)

    # --------------------------------------------------------------- compile
    def compile(self, optimizer="rmsprop", loss=None, metrics=None, loss_weights=None):
        from . import losses as losses_mod
        from . import optimizers as optimizers_mod

        self._require_graph()
        n_out = len(self._graph.outputs)
        self.optimizer = optimizers_mod.get(optimizer)
        if loss is None:
            raise ValueError(f"{self.name}: compile needs a loss")
        if isinstance(loss, dict):
            loss = [loss[_output_name(t)] for t in self._graph.outputs]
        loss_list = list(loss) if isinstance(loss, (list, tuple)) else [loss] * n_out
        if len(loss_list) != n_out:
            raise ValueError(f"{self.name}: {len(loss_list)} losses given for {n_out} outputs")
        self.loss = loss
        self._losses = [losses_mod.get(lo).to(self._device) for lo in loss_list]
        if loss_weights is None:
            loss_weights = [1.0] * n_out
        elif isinstance(loss_weights, dict):
            loss_weights = [loss_weights.get(_output_name(t), 1.0) for t in self._graph.outputs]
        if len(loss_weights) != n_out:
            raise ValueError(f"{self.name}: {len(loss_weights)} loss_weights given for {n_out} outputs")
        self._loss_weights = [float(w) for w in loss_weights]
        # metrics: one list per output; resolved against real data on first use
        if metrics is None:
            metrics = []
        if isinstance(metrics, dict):
            per_output = [list(np.atleast_1d(metrics.get(_output_name(t), []))) for t in self._graph.outputs]
        elif n_out > 1 and metrics:
            # Keras 3: one entry per output, each a metric, a list of metrics or None
            if len(metrics) != n_out:
                raise ValueError(f"{self.name}: with {n_out} outputs, metrics given as a list needs one entry "
                                 f"per output (a metric, a list of metrics or None); got {len(metrics)} "
                                 "entries. Use a dict keyed by output layer name to pick outputs")
            per_output = [[] if m is None else list(m) if isinstance(m, (list, tuple)) else [m] for m in metrics]
        else:
            per_output = [list(metrics)] + [[] for _ in range(n_out - 1)]
        self._metric_specs = per_output
        self._metrics = None
        self._compile_config = {"optimizer": optimizer if isinstance(optimizer, str) else None,
                                "loss": loss_list, "metrics": metrics, "loss_weights": self._loss_weights}
        self._pack()
        self.optimizer.to(self._device)
        self.optimizer.build(self._packed["params"], self._packed["segments"])
        self.compiled = True

    def _require_compiled(self):
        if not self.compiled:
            # ValueError like Keras 3 ("You must call `compile()` before ...")
            raise ValueError(f"{self.name}: call compile(optimizer, loss, metrics) before training or evaluating")

    def _build_metrics(self, ys, preds):
        from . import metrics as metrics_mod

        self._metrics = []
        multi = len(self._graph.outputs) > 1
        for k, specs in enumerate(self._metric_specs):
            for spec in specs:
                m = metrics_mod.get(spec, loss=self._losses[k], y_true=ys[k], y_pred=preds[k]).to(self._device)
                m.build(ys[k], preds[k])  # totals() sized before the first update (data parallel)
                prefix = _output_name(self._graph.outputs[k]) + "_" if multi else ""
                self._metrics.append((k, prefix + m.name, m))

    @property
    def metrics_names(self):
        names = ["loss"] + self._output_loss_names()
        if self._metrics:
            names += [name for _, name, _ in self._metrics]
        return names

    # ------------------------------------------------------------------ data
    def _standardize(self, x, y=None, sample_weight=None, where="fit", lazy=False):
        """Lists of validated, contiguous arrays for inputs and targets (``lazy``: memmap
        inputs stay memmaps, batches are cast through ``data.take_inputs``)."""
        from .data import check_sample_weight, standardize_inputs, standardize_targets

        self._require_graph()
        xs = standardize_inputs(self, x, where, lazy=lazy)
        ys = standardize_targets(self, y, xs[0].shape[0], where) if y is not None else None
        if sample_weight is not None:
            sample_weight = check_sample_weight(where, sample_weight, xs[0].shape[0])
        return xs, ys, sample_weight

    # ------------------------------------------------------------- one step
    def _forward(self, xs, training):
        # each batch goes to the device once, here (a no-op for contiguous host data on the cpu)
        return self._graph.forward([self._device.asarray(a) for a in xs], training)

    def _loss_and_grads(self, ys, preds, sample_weight):
        """Summed loss and its gradients w.r.t. each output, scaled for the optimizer.

        Returns (loss value in Keras reduction, [dy per output])."""
        value = 0.0
        dys = []
        self._output_losses = []
        for k, (loss, w) in enumerate(zip(self._losses, self._loss_weights)):
            total, count, dy = self.output_loss(k, ys[k], preds[k], sample_weight)
            mean = _mean(total, count)
            value += w * mean
            self._output_losses.append(mean)  # unweighted, like Keras' "<output>_loss"
            scale = w / count if count else 0.0
            if scale != 1.0:
                self._device.kernels("array").scale(dy, scale)
            dys.append(dy)
        return value, dys

    def output_loss(self, k, y_true, y_pred, sample_weight=None, need_grad=True):
        """(total, count, dy) of output ``k``'s loss for the prediction ``y_pred`` of the last
        forward pass: the weighted sum of its elements, their count and d total / d y_pred
        (None without ``need_grad``). An output that carries a Keras mask weights its elements
        by it and counts the unmasked ones (Keras 3). Data-parallel replicas call it too."""
        loss = self._losses[k]
        mask = self._graph.output_masks()[k]
        if mask is not None:
            return loss.masked(y_true, y_pred, sample_weight, mask, need_grad)
        if need_grad:
            return loss.forward_backward(y_true, y_pred, sample_weight)
        return (*loss.forward(y_true, y_pred, sample_weight), None)

    def metric_weight(self, k, sample_weight=None):
        """The sample weights output ``k``'s metrics see: times its Keras mask when it has one."""
        mask = self._graph.output_masks()[k]
        if mask is None:
            return sample_weight
        from .losses import mask_weights

        return mask_weights(self.name, sample_weight, np.asarray(mask) != 0, self._device)

    def _loss_value(self, ys, preds, sample_weight):
        """Weighted loss (Keras reduction) plus the penalties, without gradients;
        per-output means (no penalties, as Keras) in _output_losses."""
        self._output_losses = [_mean(*self.output_loss(k, ys[k], preds[k], sample_weight, False)[:2])
                               for k in range(len(self._losses))]
        return sum(w * m for w, m in zip(self._loss_weights, self._output_losses)) + self._penalty()

    def _train_step(self, xs, ys, sample_weight=None):
        preds = self._forward(xs, training=True)
        loss_value, dys = self._loss_and_grads(ys, preds, sample_weight)
        loss_value += self._penalty()
        if not np.isfinite(loss_value):
            return loss_value, preds, False
        ran = self._graph.backward(dys)
        self._collect_grads(ran)
        self._apply_update(1.0)
        return loss_value, preds, True

    # ------------------------------------------- regularizers and constraints
    def _weight_options(self, table: str) -> list:
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

        for layer in self._graph.layers:
            visit(layer)
        return out

    def _penalty(self) -> float:
        """The weight penalties plus the activity penalties of the last forward
        pass: what Keras adds to the loss."""
        return self._graph.activity_penalty + self._weight_penalty()

    def _weight_penalty(self) -> float:
        """Sum of the weight regularizers' penalties of the current weights."""
        return sum((reg.penalty(self._device, layer.params[key])
                    for layer, key, reg in self._weight_options("weight_regularizers")), 0.0)

    def _apply_update(self, grad_scale: float) -> None:
        """One optimizer step from the flat gradient buffer (times ``grad_scale``):
        the weight penalties' gradients are added first, the constraints applied
        after (Keras). Called once per step, on the reduced gradient when data-parallel."""
        packed, dev = self._packed, self._device
        regs = self._weight_options("weight_regularizers")
        if regs:
            if grad_scale != 1.0:
                dev.kernels("array").scale(packed["grads"], grad_scale)
                grad_scale = 1.0
            for layer, key, reg in regs:
                reg.add_grad(dev, layer.params[key], layer.grads[key])
        self.optimizer.apply(packed["params"], packed["grads"], grad_scale)
        for layer, key, con in self._weight_options("weight_constraints"):
            con.apply(dev, layer.params[key])

    def _update_metrics(self, ys, preds, sample_weight):
        if self._metrics is None:
            self._build_metrics(ys, preds)
        for k, _, m in self._metrics:
            m.update(ys[k], preds[k], self.metric_weight(k, sample_weight))

    def _reset_metrics(self):
        for _, _, m in self._metrics or []:
            m.reset()

    def _output_loss_names(self):
        """Keras 3 logs each output's unweighted loss as "<output>_loss" when there are several."""
        if len(self._graph.outputs) < 2:
            return []
        return [_output_name(t) + "_loss" for t in self._graph.outputs]

    def _logs(self, loss_sum, n_seen, prefix="", output_sums=None):
        logs = {prefix + "loss": loss_sum / max(n_seen, 1)}
        if output_sums is not None:
            for name, v in zip(self._output_loss_names(), output_sums):
                logs[prefix + name] = v / max(n_seen, 1)
        for _, name, m in self._metrics or []:
            logs[prefix + name] = m.result()
        return logs

    # ------------------------------------------------------------------- fit
    def fit(self, x=None, y=None, batch_size=None, epochs=1, verbose=1, callbacks=None,
            validation_split=0.0, validation_data=None, shuffle=True, class_weight=None,
            sample_weight=None, initial_epoch=0, steps_per_epoch=None, validation_batch_size=None,
            validation_freq=1, workers=1, distributed=None, validation_steps=None):
        """Train for ``epochs`` epochs; returns a History (``history.history`` dict of lists).

        ``x`` may be arrays or streamed batches: a ``PyDataset`` (its batch order shuffled
        with ``shuffle``) or a generator of ``(x, y[, sample_weight])`` (``steps_per_epoch``
        batches an epoch; without it, the generator's batches once)."""
        from .data import BatchStream, check_count, is_stream, prepare_fit_data, split_validation
        from .training import LocalTrainer, run_fit

        self._require_compiled()
        stream = is_stream(x)
        if (stream or is_stream(validation_data)) and (workers != 1 or distributed is not None):
            raise ValueError("fit: a PyDataset or generator is read in one process; workers > 1 and "
                             "distributed= need in-memory arrays (or a NumPy memmap) as x and validation_data")
        if stream:
            if batch_size is not None:
                raise ValueError("fit: batch_size must be None when x is a PyDataset or generator: its batches "
                                 "set the batch size")
            if y is not None or sample_weight is not None:
                raise ValueError("fit: y and sample_weight come from the PyDataset or generator's batches; "
                                 "pass x only")
            if validation_split:
                raise ValueError("fit: validation_split needs arrays; give a PyDataset or generator as "
                                 "validation_data")
        else:
            batch_size = 32 if batch_size is None else check_count("fit", "batch_size", batch_size)
        check_count("fit", "epochs", epochs, minimum=0)
        check_count("fit", "initial_epoch", initial_epoch, minimum=0)
        check_count("fit", "validation_freq", validation_freq)
        if steps_per_epoch is not None:
            check_count("fit", "steps_per_epoch", steps_per_epoch)
        if validation_batch_size is not None:
            check_count("fit", "validation_batch_size", validation_batch_size)
        if validation_steps is not None:
            check_count("fit", "validation_steps", validation_steps)
        if workers != 1 or distributed is not None:
            from .parallel import fit_parallel

            return fit_parallel(self, x, y, batch_size=batch_size, epochs=epochs, verbose=verbose,
                                callbacks=callbacks, validation_split=validation_split,
                                validation_data=validation_data, shuffle=shuffle,
                                class_weight=class_weight, sample_weight=sample_weight,
                                initial_epoch=initial_epoch, workers=workers, distributed=distributed,
                                steps_per_epoch=steps_per_epoch, validation_batch_size=validation_batch_size,
                                validation_freq=validation_freq)
        val_stream = None
        if is_stream(validation_data):
            val_stream = BatchStream(self, validation_data, "fit (validation_data)", steps=validation_steps)
            validation_data = None
        if stream:
            batches = BatchStream(self, x, "fit", shuffle=shuffle, rng=self._rng, steps=steps_per_epoch,
                                  class_weight=class_weight)
            val = val_stream
            if validation_data is not None:
                _, val = split_validation(None, None, None, 0.0, validation_data, self, lazy=True)
            trainer, n = LocalTrainer(self, None, None, None), None
        else:
            batches = None
            xs, ys, sample_weight, val = prepare_fit_data(self, x, y, sample_weight, class_weight,
                                                          validation_split, validation_data, lazy=True)
            trainer, n, val = LocalTrainer(self, xs, ys, sample_weight), xs[0].shape[0], val_stream or val
        return run_fit(self, trainer, n, val, batch_size=batch_size, epochs=epochs, verbose=verbose,
                       callbacks=callbacks, shuffle=shuffle, initial_epoch=initial_epoch,
                       steps_per_epoch=steps_per_epoch, validation_batch_size=validation_batch_size,
                       validation_freq=validation_freq, batches=batches)

    # -------------------------------------------------------------- evaluate
    def evaluate(self, x=None, y=None, batch_size=None, verbose=0, sample_weight=None, return_dict=False,
                 callbacks=None, steps=None):
        """Loss (and metrics) over the data (arrays, a PyDataset or a generator of
        ``(x, y[, sample_weight])``; at most ``steps`` batches), in inference mode."""
        self._require_compiled()
        batches = self._inference_batches("evaluate", x, y, sample_weight, batch_size, steps, targets=True)
        logs = self._evaluate_batches(batches, "evaluate")
        if verbose:
            print(" - ".join(f"{k}: {v:.4f}" for k, v in logs.items()))
        if return_dict:
            return logs
        values = list(logs.values())
        return values[0] if len(values) == 1 else values

    def _inference_batches(self, where, x, y, sample_weight, batch_size, steps, targets):
        """Validated ``data.Batch``es for evaluate / predict from arrays or streamed batches."""
        from .data import BatchStream, array_batches, check_count, is_stream

        if steps is not None:
            check_count(where, "steps", steps)
        if is_stream(x):
            if batch_size is not None:
                raise ValueError(f"{where}: batch_size must be None when x is a PyDataset or generator: its "
                                 "batches set the batch size")
            if y is not None or sample_weight is not None:
                raise ValueError(f"{where}: y and sample_weight come from the PyDataset or generator's "
                                 "batches; pass x only")
            return BatchStream(self, x, where, steps=steps, targets=targets).batches()
        batch_size = 32 if batch_size is None else check_count(where, "batch_size", batch_size)
        xs, ys, sample_weight = self._standardize(x, y if targets else None, sample_weight if targets else None,
                                                  where, lazy=True)
        if targets and ys is None:
            raise ValueError(f"{where}: targets y are required")
        return array_batches(self, xs, ys, sample_weight, batch_size, where, steps)

    def _evaluate_batches(self, batches, where) -> dict:
        """Logs (loss, per-output losses, metrics) over validated Batches; fit's running
        metrics are left as they were."""
        saved = [(m.totals().copy()) for _, _, m in self._metrics or []]
        self._reset_metrics()
        loss_sum, n = 0.0, 0
        out_sums = np.zeros(len(self._losses)) if len(self._losses) > 1 else None
        with finite_checks(False):
            for b in batches:
                preds = self._forward(b.xs, training=False)
                value = self._loss_value(b.ys, preds, b.sw)
                if out_sums is not None:
                    out_sums += np.asarray(self._output_losses) * len(b)
                loss_sum += value * len(b)
                n += len(b)
                self._update_metrics(b.ys, preds, b.sw)
        if n == 0:
            raise ValueError(f"{where}: got 0 samples; a loss over no data is undefined")
        logs = self._logs(loss_sum, n, output_sums=out_sums)
        for (_, _, m), tot in zip(self._metrics or [], saved):  # keep fit's running metrics intact
            m.reset()
            m.merge_totals(tot)
        return logs

    # --------------------------------------------------------------- predict
    def predict(self, x, batch_size=None, verbose=0, steps=None):
        """Outputs for ``x`` (arrays, a PyDataset or a generator whose batches are ``x``,
        ``(x,)`` or ``(x, y[, sample_weight])``; at most ``steps`` batches) in inference mode
        (a list for several outputs); 0 samples give empty arrays of the output shapes."""
        chunks = []
        with finite_checks(False):
            for b in self._inference_batches("predict", x, None, None, batch_size, steps, targets=False):
                # copy: layer outputs are reused workspaces
                chunks.append([np.array(self._device.to_host(o)) for o in self._forward(b.xs, training=False)])
        self._require_graph()
        chunks = list(zip(*chunks)) or [[] for _ in self._graph.outputs]
        results = [np.concatenate(c) if c else np.empty((0,) + tuple(t.shape[1:]), t.dtype)
                   for c, t in zip(chunks, self._graph.outputs)]
        return results if self._outputs_nested else results[0]

    def __call__(self, *args, **kwargs):
        """On symbolic tensors: a node of another model. On arrays: outputs (NumPy)."""
        first = args[0] if args else None
        flat = list(first) if isinstance(first, (list, tuple)) else [first]
        if any(isinstance(t, KTensor) for t in flat):
            return Layer.__call__(self, *args, **kwargs)
        return self._eager_call(*args, **kwargs)

    def _eager_call(self, x, training=False):
        xs, _, _ = self._standardize(x, None, None, "call")
        outs = [np.array(self._device.to_host(o)) for o in self._forward(xs, training)]
        return outs if self._outputs_nested else outs[0]

    def train_on_batch(self, x, y=None, sample_weight=None, class_weight=None, return_dict=False):
        """One optimizer step on one batch; returns the loss (and metrics) of that batch."""
        from .data import apply_class_weight

        self._require_compiled()
        xs, ys, sample_weight = self._standardize(x, y, sample_weight, "train_on_batch")
        sample_weight = apply_class_weight(class_weight, ys, sample_weight)
        with finite_checks(False):
            loss_value, preds, ok = self._train_step(xs, ys, sample_weight)
        if not ok:
            raise FloatingPointError(f"train_on_batch: non-finite loss {loss_value}; the weights were not updated")
        return self._batch_logs(loss_value, ys, preds, sample_weight, return_dict)

    def test_on_batch(self, x, y=None, sample_weight=None, return_dict=False):
        self._require_compiled()
        xs, ys, sample_weight = self._standardize(x, y, sample_weight, "test_on_batch")
        with finite_checks(False):
            preds = self._forward(xs, training=False)
        value = self._loss_value(ys, preds, sample_weight)
        return self._batch_logs(value, ys, preds, sample_weight, return_dict)

    def _batch_logs(self, loss_value, ys, preds, sample_weight, return_dict):
        if self._metrics is None:
            self._build_metrics(ys, preds)
        out_names = self._output_loss_names()
        if not self._metrics and not out_names:
            return {"loss": loss_value} if return_dict else loss_value
        logs = {"loss": loss_value}
        logs.update(zip(out_names, self._output_losses))
        self._reset_metrics()
        self._update_metrics(ys, preds, sample_weight)
        logs.update({name: m.result() for _, name, m in self._metrics})
        return logs if return_dict else list(logs.values())

    # ------------------------------------------------------------ generators
    def _generators(self) -> list:
        """The shuffling generator, then each layer's (sub-layers depth first): a fixed order."""
        gens = [self._rng]

        def visit(layer):
            rng = getattr(layer, "rng", None)
            if hasattr(rng, "bit_generator"):  # a Generator, or a data-parallel wrapper around one
                gens.append(rng)
            for sub in layer.sublayers():
                visit(sub)

        for layer in self.layers:
            visit(layer)
        return gens

    def get_random_state(self) -> list[dict]:
        """The bit-generator states of every random generator training draws from
        (batch shuffling, then each layer's: dropout masks, noise), JSON-able: with
        the weights and optimizer state, what a resumed ``fit`` needs to draw the
        very batches and masks an uninterrupted one would."""
        return [g.bit_generator.state for g in self._generators()]

    def set_random_state(self, states) -> None:
        """Restore what ``get_random_state`` returned (same architecture)."""
        gens = self._generators()
        states = list(states)
        if len(states) != len(gens):
            raise ValueError(f"{self.name}: set_random_state expected {len(gens)} generator states, "
                             f"got {len(states)}")
        for g, st in zip(gens, states):
            g.bit_generator.state = st

    # --------------------------------------------------------------- weights
    def get_weights(self) -> list[np.ndarray]:
        """All weights, layer by layer, each layer's in Keras order (copies)."""
        return [w for layer in self.layers for w in layer.get_weights()]

    def set_weights(self, weights) -> None:
        self._weights_given = True
        weights = list(weights)
        expected = sum(len(layer.weight_arrays()) for layer in self.layers)
        if len(weights) != expected:
            raise ValueError(f"{self.name}: set_weights expected {expected} arrays, got {len(weights)}")
        i = 0
        for layer in self.layers:
            k = len(layer.weight_arrays())
            layer.set_weights(weights[i:i + k])
            i += k

    def count_params(self) -> int:
        return int(sum(layer.count_params() for layer in self.layers))

    def summary(self, print_fn=print, line_length=78):
        """Print one line per layer: name (type), output shape, param count."""
        self._require_graph()
        rows = [("Layer (type)", "Output Shape", "Param #")]
        out_shapes = {}
        for node in self._graph.nodes:
            out_shapes[id(node.layer)] = [t.shape for t in node.outputs]
        for layer in self.layers:
            if isinstance(layer, InputLayer):
                shape = layer.shape
            else:
                shapes = out_shapes.get(id(layer), [])
                shape = shapes[0] if len(shapes) == 1 else shapes
            rows.append((f"{layer.name} ({type(layer).__name__})", str(shape), str(layer.count_params())))
        w1 = max(len(r[0]) for r in rows) + 2
        w2 = max(len(r[1]) for r in rows) + 2
        lines = [f'Model: "{self.name}"', "=" * (w1 + w2 + 10)]
        for i, r in enumerate(rows):
            lines.append(f"{r[0]:<{w1}}{r[1]:<{w2}}{r[2]:>8}")
            if i == 0:
                lines.append("-" * (w1 + w2 + 10))
        trainable = sum(p.size for layer in self.layers if layer.trainable for p in layer.params.values())
        total = self.count_params()
        lines += ["=" * (w1 + w2 + 10), f"Total params: {total:,}", f"Trainable params: {trainable:,}",
                  f"Non-trainable params: {total - trainable:,}"]
        print_fn("\n".join(lines))

    # ------------------------------------------------------------ inspection
    def get_activations(self, x, layer):
        """Output of ``layer`` (a Layer or its name) for ``x``, in inference mode."""
        xs, _, _ = self._standardize(x, None, None, "get_activations")
        if isinstance(layer, str):
            layer = self.get_layer(layer)
        with finite_checks(False):
            self._forward(xs, training=False)
        if isinstance(layer, InputLayer):
            return np.array(xs[self.input_layers.index(layer)])
        for node in self._graph.nodes:
            if node.layer is layer:
                outs = [np.array(self._device.to_host(self._graph.value_of(t))) for t in node.outputs]
                return outs[0] if len(outs) == 1 else outs
        raise ValueError(f"{self.name}: layer {layer.name!r} is not part of this model")

    def input_gradient(self, x, output_grads):
        """Gradient of sum(outputs * output_grads) w.r.t. each input (inference mode)."""
        from .layers.base import inference_gradients

        xs, _, _ = self._standardize(x, None, None, "input_gradient")
        self._graph.all_input_grads = True
        try:
            with finite_checks(False), inference_gradients():
                outs = self._forward(xs, training=False)
                dys = output_grads if isinstance(output_grads, list) else [output_grads]
                dys = [self._device.asarray(d, o.dtype) for d, o in zip(dys, outs)]
                grads = [None if g is None else np.array(self._device.to_host(g))
                         for g in self._graph.backward(dys, input_grads=True)]
        finally:
            self._graph.all_input_grads = False
        return grads if self._inputs_nested else grads[0]

    # ------------------------------------------------------------------- I/O
    def save(self, filepath):
        """One file: architecture, weights and optimizer state (written atomically)."""
        from . import io

        io.save_model(self, filepath)

    def save_weights(self, filepath):
        from . import io

        io.save_weights(self, filepath)

    def load_weights(self, filepath):
        from . import io

        io.load_weights(self, filepath)

    def to(self, device) -> Model:
        """Move the model to ``device``: every layer's params, grads and state,
        the flat parameter and gradient buffers, the optimizer's slots, and the
        losses and metrics. Returns the model."""
        dev = get_device(device)
        if dev is self._device:
            return self
        self._device = dev
        Layer.clear_workspaces(self)  # per-call states of this model used as a shared layer
        if self._graph is None:  # a Sequential without input shape: its layers move when built
            for layer in getattr(self, "_layers", []):
                layer.to(dev)
            return self
        self._graph.device = dev
        for layer in self.layers:
            layer.to(dev)
        for loss in self._losses:
            loss.to(dev)
        for _, _, m in self._metrics or []:
            m.to(dev)
        if self._packed is not None:
            self._pack()
            self.optimizer.to(dev)
        return self

    def get_config(self) -> dict:
        """The architecture as JSON-able data (``Model.from_config`` rebuilds it)."""
        from . import io

        return io.model_config(self)


def _mean(total, count):
    """Keras 'sum_over_batch_size' value; 0 when every label was ignored (ignore_class)."""
    return total / count if count else 0.0


def _output_name(t: KTensor) -> str:
    return t.node.layer.name if t.node is not None else t.input_layer.name


class Sequential(Model):
    """A linear stack of layers: ``Sequential([Input(shape), Dense(...), ...])``."""

    def __init__(self, layers=None, name=None, device=None, seed=None):
        super().__init__(name=name, device=device, seed=seed)
        self._layers: list[Layer] = []
        self._input = None
        for layer in layers or []:
            self.add(layer)

    def add(self, layer):
        if isinstance(layer, KTensor) and getattr(layer, "input_layer", None) is not None:
            if self._layers or self._input is not None:
                raise ValueError(f"{self.name}: an Input can only be the first element")
            self._input = layer
            return
        if isinstance(layer, InputLayer):
            self._input = layer.tensor if hasattr(layer, "tensor") else Input(layer.shape[1:])
            return
        if not isinstance(layer, Layer):
            raise TypeError(f"{self.name}: expected a Layer, got {type(layer).__name__}")
        self._layers.append(layer)
        self._graph = None
        if self._input is None and len(self._layers) == 1 and layer.input_shape_arg is not None:
            self._input = Input(layer.input_shape_arg)
        if self._input is not None:
            self._build_chain()

    def pop(self):
        if not self._layers:
            raise ValueError(f"{self.name}: there are no layers to pop")
        layer = self._layers.pop()
        if self._input is not None and self._layers:
            self._rebuild_from_scratch()
        return layer

    def _rebuild_from_scratch(self):
        for layer in self._layers:
            layer._nodes.clear()
        self._build_chain()

    def _build_chain(self):
        x = self._input
        for layer in self._layers:
            layer._nodes.clear()
            x = layer(x)
            if isinstance(x, list):
                raise ValueError(f"{self.name}: layer {layer.name!r} has several outputs; "
                                 "use the functional Model API")
        self._init_graph(self._input, x)

    def build(self, input_shape=None):
        if self._graph is not None:
            return
        if input_shape is None:
            raise ValueError(f"{self.name}: build needs an input shape")
        self._input = Input(tuple(input_shape)[1:])
        self._build_chain()

    def _ensure_built_from(self, x):
        if self._graph is None:
            if not self._layers:
                raise ValueError(f"{self.name}: the model has no layers")
            arr = x[0] if isinstance(x, (list, tuple)) else x
            shape = np.shape(arr)
            if len(shape) < 1:
                raise ValueError(f"{self.name}: input must have a batch dimension")
            dtype = np.asarray(arr).dtype
            self._input = Input(shape[1:], dtype=dtype if dtype.kind in "iu" else None)
            self._build_chain()

    @property
    def layers(self):
        return list(self._layers)

    def compile(self, *args, **kwargs):
        self._compile_args = (args, kwargs)
        if self._graph is None:
            self.compiled = True  # finished on first data
            self._deferred_compile = True
            return
        self._deferred_compile = False
        super().compile(*args, **kwargs)

    def _standardize(self, x, y=None, sample_weight=None, where="fit", lazy=False):
        self._ensure_built_from(x)
        if getattr(self, "_deferred_compile", False):
            self._deferred_compile = False
            args, kwargs = self._compile_args
            Model.compile(self, *args, **kwargs)
        return super()._standardize(x, y, sample_weight, where, lazy=lazy)
