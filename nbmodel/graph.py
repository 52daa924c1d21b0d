"""The layer graph of a Model: topological order, forward and backward passes.

Forward runs the nodes in topological order; backward runs them in reverse,
adding gradients where a tensor fans out to several consumers. Values are
kept in dicts keyed by symbolic tensor id, so one step allocates only what
the layers' workspaces do not already hold.

A shared layer (one layer object called at several nodes) keeps one cache per
call: around each forward and backward of such a node, ``_CallState`` swaps
in the attributes that node's calls wrote (workspaces included) and records
them again afterwards; backward sums the weight gradients over the calls.
"""
from __future__ import annotations

import numpy as np

from .layers.base import KTensor, Node


def _kt_in(value):
    """KTensors inside a node kwarg value (a tensor or a list of tensors)."""
    if isinstance(value, KTensor):
        return [value]
    if isinstance(value, (list, tuple)):
        return [v for v in value if isinstance(v, KTensor)]
    return []


def topological_nodes(inputs: list[KTensor], outputs: list[KTensor]) -> list[Node]:
    """Nodes needed to compute ``outputs`` from ``inputs``, in execution order."""
    input_ids = {t.id for t in inputs}
    order: list[Node] = []
    seen: set[int] = set()
    visiting: set[int] = set()

    def visit_tensor(t: KTensor):
        if t.id in input_ids:
            return
        if t.node is None:
            name = getattr(getattr(t, "input_layer", None), "name", "?")
            raise ValueError(f"Model: output depends on input {name!r}, which is not in the model's inputs")
        visit_node(t.node)

    def visit_node(node: Node):
        key = id(node)
        if key in seen:
            return
        if key in visiting:
            raise ValueError(f"Model: the graph has a cycle through layer {node.layer.name!r}")
        visiting.add(key)
        for t in node.inputs:
            visit_tensor(t)
        for v in node.kwargs.values():
            for t in _kt_in(v):
                visit_tensor(t)
        visiting.discard(key)
        seen.add(key)
        order.append(node)

    for t in outputs:
        visit_tensor(t)
    return order


_ABSENT = object()
# attributes every call of a layer shares (weights, config, the graph's bookkeeping)
_SHARED_ATTRS = frozenset({"params", "grads", "state", "device", "dtype", "trainable", "rng", "built",
                           "built_input_shape", "name", "_nodes", "_inits", "input_grad_needed", "stat_sync"})
_OWN_ATTRS = frozenset({"_call_contexts", "_call_keys"})  # where a shared layer keeps its calls' states


def layer_tree(layer) -> list:
    """``layer`` and, depth first, its sub-layers (a nested model's layers included)."""
    out = [layer]
    for sub in layer.sublayers():
        out += layer_tree(sub)
    return out


class _CallState:
    """Gives each call (node) of a shared layer its own cache.

    A layer keeps what backward needs, and its workspaces, as attributes on
    itself, so a second call would overwrite the first one's. For a node of a
    shared layer, ``enter`` restores the attributes this node's previous
    forward/backward rebound, on the layer and on every layer of its tree
    (sub-layers, a nested model's layers); ``exit`` finds the attributes the
    call rebound (compared by identity) and keeps their values for this node.
    A node's first call starts from the values those attributes had before
    any call rebound them (no workspaces: fresh ones). The states live on the
    shared layer (``_call_contexts``, ``_call_keys``: replaced, never mutated,
    so an enclosing shared model keeps them per call of its own).
    """

    def __init__(self, node):
        self.node = node
        self.tree = layer_tree(node.layer)

    def enter(self):
        root = self.tree[0]
        keys = root.__dict__.get("_call_keys")  # per tree layer: {attribute: value before any call}
        if keys is None:
            keys = root.__dict__["_call_keys"] = [{"_workspaces": _ABSENT} for _ in self.tree]
        ctx = root.__dict__.get("_call_contexts", {}).get(self.node)
        for i, layer in enumerate(self.tree):
            d = layer.__dict__
            src = keys[i] if ctx is None else ctx[i]
            for k in keys[i]:
                v = src.get(k, _ABSENT)
                if v is _ABSENT:
                    d.pop(k, None)
                else:
                    d[k] = v
        return [dict(layer.__dict__) for layer in self.tree]

    def exit(self, before):
        root = self.tree[0]
        ctxs = dict(root.__dict__.get("_call_contexts", {}))
        keys = root.__dict__["_call_keys"]
        for i, (layer, pre) in enumerate(zip(self.tree, before)):
            d = layer.__dict__
            skip = _SHARED_ATTRS | (_OWN_ATTRS if i == 0 else frozenset())
            touched = {k for k, v in d.items() if pre.get(k, _ABSENT) is not v}
            touched |= {k for k in pre if k not in d}
            new = touched - skip - keys[i].keys()
            if new:  # until now every call had the value from before this one
                old = {k: pre.get(k, _ABSENT) for k in new}
                for node, c in ctxs.items():
                    if node is not self.node:
                        ctxs[node] = c[:i] + [{**c[i], **old}] + c[i + 1:]
                keys = keys[:i] + [{**keys[i], **old}] + keys[i + 1:]
        ctxs[self.node] = [{k: layer.__dict__.get(k, _ABSENT) for k in keys[i]}
                           for i, layer in enumerate(self.tree)]
        root.__dict__["_call_keys"] = keys
        root.__dict__["_call_contexts"] = ctxs


class Graph:
    """Executable form of a functional model."""

    def __init__(self, inputs: list[KTensor], outputs: list[KTensor], device=None):
        self.inputs = inputs
        self.outputs = outputs
        self.device = device  # where fan-in gradients are summed (the model's device)
        self.nodes = topological_nodes(inputs, outputs)
        calls: dict[int, list[Node]] = {}
        self.layers = []  # each layer once, in the order of its first call
        for node in self.nodes:
            if id(node.layer) not in calls:
                calls[id(node.layer)] = []
                self.layers.append(node.layer)
            calls[id(node.layer)].append(node)
        _check_layers(self.layers)
        # a shared layer's nodes run with their own cache (see _CallState)
        self._call_state = {id(n): _CallState(n) for ns in calls.values() if len(ns) > 1 for n in ns}
        # layers fed only by model inputs need no input gradient (unless all_input_grads)
        input_ids = {t.id for t in inputs}
        for node in self.nodes:
            node.input_grad_needed = not all(t.id in input_ids for t in node.inputs)
            node.layer.input_grad_needed = node.input_grad_needed  # set again before each call (_run)
        self.all_input_grads = False
        _promote_id_inputs(inputs, self.nodes)
        # how many consumers each tensor has: gradients of fan-outs are summed
        self.consumers: dict[int, int] = {}
        for node in self.nodes:
            for t in node.inputs:
                self.consumers[t.id] = self.consumers.get(t.id, 0) + 1
        self.ran: set[int] = set()
        self._stash: dict = {}
        self.activity_penalty = 0.0  # of the last forward pass (see _activity_penalty)
        self.activity_batch = None  # the batch size activity penalties divide by (None: the output's)

    def _run(self, node, fn, *args, **kwargs):
        """Call ``fn`` (the node's layer's forward or backward) with that node's flags and cache."""
        node.layer.input_grad_needed = node.input_grad_needed or self.all_input_grads
        state = self._call_state.get(id(node))
        if state is None:
            return fn(*args, **kwargs)
        before = state.enter()
        try:
            return fn(*args, **kwargs)
        finally:
            state.exit(before)

    # ---------------------------------------------------------------- forward
    def forward_batch(self, xs: list, training: bool) -> list:
        """Outputs for one batch of host (or device) arrays: each goes to the device once,
        here (a no-op for contiguous host data on the cpu)."""
        return self.forward([self.device.asarray(a) for a in xs], training)

    def forward(self, xs: list, training: bool, masks: list | None = None) -> list:
        """Outputs for inputs ``xs``; ``masks``: the inputs' Keras masks (None: none)."""
        values = {t.id: x for t, x in zip(self.inputs, xs)}
        # Keras masks flow with the values: host bool arrays, None where there is none
        mask_of = {t.id: m for t, m in zip(self.inputs, masks or []) if m is not None}
        self.activity_penalty = 0.0
        for node in self.nodes:
            layer = node.layer
            args = [values[t.id] for t in node.inputs]
            kwargs = {k: _resolve(v, values) for k, v in node.kwargs.items()}
            x = tuple(args) if node.nested else args[0]
            in_mask = [mask_of.get(t.id) for t in node.inputs]
            in_mask = in_mask if node.nested else in_mask[0]
            has_mask = any(m is not None for m in in_mask) if node.nested else in_mask is not None
            if has_mask and "mask" not in kwargs and layer.takes_mask():
                kwargs["mask"] = in_mask
            inner = getattr(layer, "_graph", None)
            if isinstance(inner, Graph):  # a nested model divides its activity penalties alike
                inner.activity_batch = self.activity_batch
            out = self._run(node, layer.forward, x, training=training, **kwargs)
            outs = out if isinstance(out, (list, tuple)) and len(node.outputs) > 1 else [out]
            for t, o in zip(node.outputs, outs):
                values[t.id] = o
            out_mask = layer.compute_mask(x, kwargs.get("mask", in_mask if has_mask else None))
            if out_mask is not None:
                # several outputs: a list, one mask each; one mask alone belongs to the first
                per_out = (out_mask if isinstance(out_mask, list) else [out_mask]) if len(node.outputs) > 1 \
                    else [out_mask]
                for t, m in zip(node.outputs, per_out):
                    if m is not None:
                        mask_of[t.id] = m
            self.activity_penalty += _activity_penalty(layer, outs, self.device, self.activity_batch)
        self._values = values
        self._masks = mask_of
        return [values[t.id] for t in self.outputs]

    def may_create_masks(self) -> bool:
        """Whether a Keras mask can start anywhere in this graph (then loss counts depend on
        the data): a layer that makes one (``creates_mask``, e.g. Embedding with mask_zero,
        Masking), a mask passed to a call, or a layer from outside nbmodel with its own
        compute_mask."""
        from .layers.base import Layer

        for node in self.nodes:
            if "mask" in node.kwargs:
                return True
            for layer in layer_tree(node.layer):
                own = type(layer).compute_mask is not Layer.compute_mask
                if layer.creates_mask() or (own and not type(layer).__module__.startswith("nbmodel.")):
                    return True
        return False

    def output_masks(self) -> list:
        """The Keras mask of each output in the last forward pass (None where there is none)."""
        return [self._masks.get(t.id) for t in self.outputs]

    def value_of(self, t: KTensor):
        """Value of a symbolic tensor in the last forward pass."""
        return self._values[t.id]

    # --------------------------------------------------------------- backward
    def backward(self, dys: list, input_grads=False):
        """Run backward from output gradients (None: no gradient for that output).

        Returns the ids of layers that ran (also kept in ``self.ran``), or with
        ``input_grads`` the gradient of each model input (None if none)."""
        grads: dict[int, np.ndarray] = {}
        owned: set[int] = set()  # gradient arrays we allocated (safe to add into)

        def _accumulate(tid, d):
            prev = grads.get(tid)
            if prev is None:
                grads[tid] = d
                return
            k = self.device.kernels("array")
            if tid in owned:
                k.add_into(prev, d)
            else:  # never add into an array a layer owns (its workspace or dy)
                total = self.device.empty(prev.shape, prev.dtype)
                k.add(prev, d, total)
                grads[tid] = total
                owned.add(tid)

        for t, d in zip(self.outputs, dys):
            if d is not None:
                _accumulate(t.id, d)
        ran = set()
        for node in reversed(self.nodes):
            douts = [grads.get(t.id) for t in node.outputs]
            if all(d is None for d in douts):
                continue  # nothing downstream depends on this node
            layer = node.layer
            if len(node.outputs) == 1:
                dy = douts[0]
            else:
                dy = [d for d in douts]
            shared_again = id(layer) in ran and layer.grads
            if shared_again:  # an earlier call's weight gradients: backward overwrites grads
                saved = self._save_grads(layer)
            if getattr(layer, "activity_regularizer", None) is not None and len(node.outputs) == 1:
                dy = _add_activity_grad(layer, self._values[node.outputs[0].id], dy, self.device,
                                        self.activity_batch)
            dx = self._run(node, layer.backward, dy)
            if shared_again:
                self._add_saved_grads(layer, saved)
            ran.add(id(layer))
            if not node.nested:
                if isinstance(dx, tuple) and len(dx) == 2 and _is_state_grad(dx):
                    dx, dstates = dx
                    # a recurrent layer's initial_state tensors get their gradients too
                    states = node.kwargs.get("initial_state")
                    states = states if isinstance(states, (list, tuple)) else [states]
                    for t, d in zip(states, dstates):
                        if isinstance(t, KTensor) and d is not None:
                            _accumulate(t.id, d)
                dxs = [dx]
            else:
                dxs = list(dx) if dx is not None else [None] * len(node.inputs)
            for t, d in zip(node.inputs, dxs):
                if d is not None:
                    _accumulate(t.id, d)
        self.ran = ran
        if input_grads:
            return [grads.get(t.id) for t in self.inputs]
        return ran

    def _save_grads(self, layer):
        """Copies of ``layer``'s gradients into arrays the graph keeps (one per param)."""
        copy = self.device.kernels("array").copy
        saved = []
        for key, g in layer.grads.items():
            slot = (id(layer), key)
            buf = self._stash.get(slot)
            if buf is None or buf.shape != g.shape or buf.dtype != g.dtype or not self.device.is_array(buf):
                buf = self._stash[slot] = self.device.empty(g.shape, g.dtype)
            copy(g, buf)
            saved.append((key, buf))
        return saved

    def _add_saved_grads(self, layer, saved):
        add_into = self.device.kernels("array").add_into
        for key, buf in saved:
            add_into(layer.grads[key], buf)


def _activity_penalty(layer, outs, device, batch=None) -> float:
    """Keras 3: a layer's activity penalty is its regularizer of each output
    divided by the batch size (``batch``, else the output's: a data-parallel
    shard divides by the global batch); a nested model's are its layers'."""
    reg = getattr(layer, "activity_regularizer", None)
    total = 0.0
    if reg is not None:
        for o in outs:
            total += reg.penalty(device, o, 1.0 / max(batch or o.shape[0], 1))
    inner = getattr(layer, "_graph", None)
    if isinstance(inner, Graph):
        total += inner.activity_penalty
    return total


def _add_activity_grad(layer, y, dy, device, batch=None):
    """dy plus the gradient of the layer's activity penalty at output ``y``
    (a copy in the layer's workspace: dy may belong to another layer)."""
    out = layer.workspace("activity_dy", dy.shape, dy.dtype)
    device.kernels("array").copy(dy, out)
    layer.activity_regularizer.add_grad(device, y, out, 1.0 / max(batch or y.shape[0], 1))
    return out


def _check_layers(layers) -> None:
    """Layer names must be unique (saving refers to layers by name), and a layer
    inside a nested model may not also be called elsewhere in the same model."""
    seen: dict[str, object] = {}
    owner: dict[int, str] = {}
    for layer in layers:
        other = seen.get(layer.name)
        if other is not None and other is not layer:
            raise ValueError(f"Model: two different layers are named {layer.name!r}; layer names in a "
                             "model must be unique")
        seen[layer.name] = layer
        for sub in layer_tree(layer):
            prev = owner.get(id(sub))
            if prev is not None and prev != layer.name:
                raise ValueError(f"Model: layer {sub.name!r} is used both in {prev!r} and in {layer.name!r}; "
                                 "call a nested model's layers only through that model")
            owner[id(sub)] = layer.name


def _promote_id_inputs(inputs, nodes) -> None:
    """Keras casts whole-number ids for Embedding: a model input whose dtype was
    not given and that feeds only id-taking layers (``integer_input``) becomes
    int64, so float ids are checked and cast once and integer ids stay integers."""
    for i, t in enumerate(inputs):
        layer = t.input_layer
        if layer._dtype_given or t.dtype.kind in "iub":
            continue
        users = [(n, j) for n in nodes for j, u in enumerate(n.inputs) if u.id == t.id]
        if users and all(n.layer.integer_input(j) for n, j in users):
            t.dtype = layer.dtype = np.dtype("int64")


def _is_state_grad(dx):
    """(dx, [dh0, ...]) returned by a recurrent layer given an initial state."""
    return isinstance(dx[1], (list, tuple))


def _resolve(v, values):
    if isinstance(v, KTensor):
        return values[v.id]
    if isinstance(v, (list, tuple)) and any(isinstance(e, KTensor) for e in v):
        return [values[e.id] if isinstance(e, KTensor) else e for e in v]
    return v

