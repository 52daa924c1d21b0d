"""Model (a graph of layer calls) and Sequential (its chain case).

compile / fit / evaluate / predict / train_on_batch / test_on_batch follow
Keras 3. ``compile`` resolves its arguments and builds the model's
``TrainingCore`` (``training_core.py``: flat buffers, losses, metrics, the
step); the methods here are the Keras API over it and over the graph
(``graph.py``). One training step is: forward (training=True), each loss's
fused forward+backward (gradient of the summed loss), backward through the
graph into one flat gradient buffer, one optimizer kernel over one flat
parameter buffer. Losses return the SUMMED loss, its element count and the
gradient of the sum; each output gradient is scaled by ``loss_weight / count``
once. Keeping the sum and the count apart is what makes data-parallel
training exact (see parallel/, which scales by the global count).
"""
from __future__ import annotations

import itertools
from collections.abc import MutableMapping

import numpy as np

from . import config, training_core
from .backend import Device, get_device
from .data import (
    BatchStream,
    apply_class_weight,
    array_batches,
    check_count,
    check_sample_weight,
    is_stream,
    prepare_fit_data,
    split_validation,
    standardize_inputs,
    standardize_targets,
)
from .graph import Graph
from .layers.base import Input, InputLayer, KTensor, Layer, _auto_name, finite_checks, inference_gradients
from .training_core import TrainingCore


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
        self._core: TrainingCore | None = None
        self._rng = np.random.default_rng(seed)  # shuffles fit's batches
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
        if self._core is not None:  # a rebuilt graph (Sequential.add/pop): compile again to train
            self._core.unpack()

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
    def input_names(self) -> list[str]:
        """The input layers' names, in input order (Keras)."""
        return [_output_name(t) for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        """The names of the layers that produce the outputs, in output order (Keras)."""
        return [_output_name(t) for t in self.outputs]

    @property
    def inputs_nested(self) -> bool:
        """Whether the model was built with a list of inputs (it then takes and gives lists)."""
        self._require_graph()
        return self._inputs_nested

    @property
    def outputs_nested(self) -> bool:
        """Whether the model was built with a list of outputs (predict then returns a list)."""
        self._require_graph()
        return self._outputs_nested

    @property
    def graph(self) -> Graph:
        """The executable layer graph (``graph.Graph``: nodes, forward, backward)."""
        self._require_graph()
        return self._graph

    @property
    def training_core(self) -> TrainingCore | None:
        """The ``TrainingCore`` that ``compile`` built (losses, metrics, optimizer, flat
        buffers, the training step); None before compile."""
        return self._core

    @property
    def shuffle_rng(self) -> np.random.Generator:
        """The generator that shuffles fit's batches (seeded with the model's ``seed``)."""
        return self._rng

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

    # --------------------------------------------------------------- compile
    def compile(self, optimizer="rmsprop", loss=None, metrics=None, loss_weights=None):
        """Keras 3 compile: resolves the optimizer, one loss and loss weight per output and
        the metrics per output, and builds the model's ``training_core``."""
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
        losses = [losses_mod.get(lo).to(self._device) for lo in loss_list]
        if loss_weights is None:
            loss_weights = [1.0] * n_out
        elif isinstance(loss_weights, dict):
            loss_weights = [loss_weights.get(_output_name(t), 1.0) for t in self._graph.outputs]
        if len(loss_weights) != n_out:
            raise ValueError(f"{self.name}: {len(loss_weights)} loss_weights given for {n_out} outputs")
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
        self._weights_given = True  # a parent's seed no longer redraws them
        self._core = TrainingCore(self, losses, [float(w) for w in loss_weights], per_output)
        self.compiled = True

    def _require_compiled(self):
        if not self.compiled:
            # ValueError like Keras 3 ("You must call `compile()` before ...")
            raise ValueError(f"{self.name}: call compile(optimizer, loss, metrics) before training or evaluating")

    @property
    def metrics_names(self):
        if self._core is None:
            return ["loss"] + training_core.output_loss_names(self)
        return self._core.metrics_names

    # ------------------------------------------------------------------ data
    def standardize_data(self, x, y=None, sample_weight=None, where="fit", lazy=False):
        """(xs, ys, sample_weight): lists of validated, contiguous arrays for the inputs and
        targets (``y`` None: ys None), float64 sample weights; ``where`` names the call in
        errors. ``lazy``: memmap inputs stay memmaps, batches are cast through
        ``data.take_inputs``."""
        self._require_graph()
        xs = standardize_inputs(self, x, where, lazy=lazy)
        ys = standardize_targets(self, y, xs[0].shape[0], where) if y is not None else None
        if sample_weight is not None:
            sample_weight = check_sample_weight(where, sample_weight, xs[0].shape[0])
        return xs, ys, sample_weight

    # ----------------------------------------------- losses of the last pass
    def output_loss(self, k, y_true, y_pred, sample_weight=None, need_grad=True):
        """(total, count, dy) of output ``k``'s loss for the prediction ``y_pred`` of the last
        forward pass: the weighted sum of its elements, their count and d total / d y_pred
        (None without ``need_grad``). An output that carries a Keras mask weights its elements
        by it and counts the unmasked ones (Keras 3). See ``TrainingCore.output_loss``."""
        return self._core.output_loss(k, y_true, y_pred, sample_weight, need_grad)

    def metric_weight(self, k, sample_weight=None):
        """The sample weights output ``k``'s metrics see: times its Keras mask when it has one."""
        return self._core.metric_weight(k, sample_weight)

    # ------------------------------------------------------------------- fit
    def fit(self, x=None, y=None, batch_size=None, epochs=1, verbose=1, callbacks=None,
            validation_split=0.0, validation_data=None, shuffle=True, class_weight=None,
            sample_weight=None, initial_epoch=0, steps_per_epoch=None, validation_batch_size=None,
            validation_freq=1, workers=1, distributed=None, validation_steps=None):
        """Train for ``epochs`` epochs; returns a History (``history.history`` dict of lists).

        ``x`` may be arrays or streamed batches: a ``PyDataset`` (its batch order shuffled
        with ``shuffle``) or a generator of ``(x, y[, sample_weight])`` (``steps_per_epoch``
        batches an epoch; without it, the generator's batches once). With ``workers=N`` this
        process reads the stream and the workers take their shards of each batch; with
        ``distributed="mpi"`` every rank reads it, so a generator must yield the same batches
        on every rank. A NumPy memmap ``x`` is read per batch (per shard), never copied whole."""
        from .training import LocalTrainer, run_fit

        self._require_compiled()
        stream = is_stream(x)
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
                                validation_freq=validation_freq, validation_steps=validation_steps)
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
        if self._core is None:  # a Sequential built and compiled from its first streamed batch
            first = next(batches, None)
            if first is None:
                raise ValueError("evaluate: got 0 samples; a loss over no data is undefined")
            batches = itertools.chain([first], batches)
        logs = self._core.evaluate_batches(batches, "evaluate")
        if verbose:
            print(" - ".join(f"{k}: {v:.4f}" for k, v in logs.items()))
        if return_dict:
            return logs
        values = list(logs.values())
        return values[0] if len(values) == 1 else values

    def _inference_batches(self, where, x, y, sample_weight, batch_size, steps, targets):
        """Validated ``data.Batch``es for evaluate / predict from arrays or streamed batches."""
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
        xs, ys, sample_weight = self.standardize_data(x, y if targets else None,
                                                      sample_weight if targets else None, where, lazy=True)
        if targets and ys is None:
            raise ValueError(f"{where}: targets y are required")
        return array_batches(self, xs, ys, sample_weight, batch_size, where, steps)

    # --------------------------------------------------------------- predict
    def predict(self, x, batch_size=None, verbose=0, steps=None):
        """Outputs for ``x`` (arrays, a PyDataset or a generator whose batches are ``x``,
        ``(x,)`` or ``(x, y[, sample_weight])``; at most ``steps`` batches) in inference mode
        (a list for several outputs); 0 samples give empty arrays of the output shapes."""
        chunks = []
        with finite_checks(False):
            for b in self._inference_batches("predict", x, None, None, batch_size, steps, targets=False):
                # copy: layer outputs are reused workspaces
                outs = self._graph.forward_batch(b.xs, training=False)
                chunks.append([np.array(self._device.to_host(o)) for o in outs])
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
        xs, _, _ = self.standardize_data(x, None, None, "call")
        outs = [np.array(self._device.to_host(o)) for o in self._graph.forward_batch(xs, training)]
        return outs if self._outputs_nested else outs[0]

    def train_on_batch(self, x, y=None, sample_weight=None, class_weight=None, return_dict=False):
        """One optimizer step on one batch; returns the loss (and metrics) of that batch."""
        self._require_compiled()
        xs, ys, sample_weight = self.standardize_data(x, y, sample_weight, "train_on_batch")
        sample_weight = apply_class_weight(class_weight, ys, sample_weight)
        with finite_checks(False):
            loss_value, preds, ok = self._core.train_step(xs, ys, sample_weight)
        if not ok:
            raise FloatingPointError(f"train_on_batch: non-finite loss {loss_value}; the weights were not updated")
        return _batch_result(self._core.batch_logs(loss_value, ys, preds, sample_weight), return_dict)

    def test_on_batch(self, x, y=None, sample_weight=None, return_dict=False):
        self._require_compiled()
        xs, ys, sample_weight = self.standardize_data(x, y, sample_weight, "test_on_batch")
        with finite_checks(False):
            preds = self._core.forward(xs, training=False)
        value = self._core.loss_value(ys, preds, sample_weight)
        return _batch_result(self._core.batch_logs(value, ys, preds, sample_weight), return_dict)

    # ------------------------------------------------------------ generators
    def get_random_state(self) -> list[dict]:
        """The bit-generator states of every random generator training draws from
        (batch shuffling, then each layer's: dropout masks, noise), JSON-able: with
        the weights and optimizer state, what a resumed ``fit`` needs to draw the
        very batches and masks an uninterrupted one would."""
        return training_core.get_random_state(self)

    def set_random_state(self, states) -> None:
        """Restore what ``get_random_state`` returned (same architecture)."""
        training_core.set_random_state(self, states)

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
        xs, _, _ = self.standardize_data(x, None, None, "get_activations")
        if isinstance(layer, str):
            layer = self.get_layer(layer)
        with finite_checks(False):
            self._graph.forward_batch(xs, training=False)
        if isinstance(layer, InputLayer):
            return np.array(xs[self.input_layers.index(layer)])
        for node in self._graph.nodes:
            if node.layer is layer:
                outs = [np.array(self._device.to_host(self._graph.value_of(t))) for t in node.outputs]
                return outs[0] if len(outs) == 1 else outs
        raise ValueError(f"{self.name}: layer {layer.name!r} is not part of this model")

    def input_gradient(self, x, output_grads):
        """Gradient of sum(outputs * output_grads) w.r.t. each input (inference mode)."""
        xs, _, _ = self.standardize_data(x, None, None, "input_gradient")
        self._graph.all_input_grads = True
        try:
            with finite_checks(False), inference_gradients():
                outs = self._graph.forward_batch(xs, training=False)
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
        if self._core is not None:
            self._core.to(dev)
        return self

    def get_config(self) -> dict:
        """The architecture as JSON-able data (``Model.from_config`` rebuilds it)."""
        from . import io

        return io.model_config(self)


def _batch_result(logs: dict, return_dict: bool):
    """train_on_batch / test_on_batch's result: the logs, their values, or the loss alone."""
    if return_dict:
        return logs
    values = list(logs.values())
    return values[0] if len(values) == 1 else values


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

    def standardize_data(self, x, y=None, sample_weight=None, where="fit", lazy=False):
        """As ``Model.standardize_data``; a Sequential without an input shape is built (and
        its compile finished) from ``x`` first."""
        self._ensure_built_from(x)
        if getattr(self, "_deferred_compile", False):
            self._deferred_compile = False
            args, kwargs = self._compile_args
            Model.compile(self, *args, **kwargs)
        return super().standardize_data(x, y, sample_weight, where, lazy=lazy)
