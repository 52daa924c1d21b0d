"""The layer graph of a Model: topological order, forward and backward passes.

Forward runs the nodes in topological order; backward runs them in reverse,
adding gradients where a tensor fans out to several consumers. Values are
kept in dicts keyed by symbolic tensor id, so one step allocates only what
the layers' workspaces do not already hold.
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


class Graph:
    """Executable form of a functional model."""

    def __init__(self, inputs: list[KTensor], outputs: list[KTensor], device=None):
        self.inputs = inputs
        self.outputs = outputs
        self.device = device  # where fan-in gradients are summed (the model's device)
        self.nodes = topological_nodes(inputs, outputs)
        seen_layers = {}
        for node in self.nodes:
            other = seen_layers.get(id(node.layer))
            if other is not None:
                raise ValueError(f"Model: layer {node.layer.name!r} is called more than once in the graph; "
                                 "shared layers are not supported, create one layer per call")
            seen_layers[id(node.layer)] = node
        self.layers = [n.layer for n in self.nodes]
        # layers fed only by model inputs need no input gradient
        input_ids = {t.id for t in inputs}
        for node in self.nodes:
            node.layer.input_grad_needed = not all(t.id in input_ids for t in node.inputs)
        # how many consumers each tensor has: gradients of fan-outs are summed
        self.consumers: dict[int, int] = {}
        for node in self.nodes:
            for t in node.inputs:
                self.consumers[t.id] = self.consumers.get(t.id, 0) + 1

    # ---------------------------------------------------------------- forward
    def forward(self, xs: list, training: bool) -> list:
        values = {t.id: x for t, x in zip(self.inputs, xs)}
        for node in self.nodes:
            args = [values[t.id] for t in node.inputs]
            kwargs = {k: _resolve(v, values) for k, v in node.kwargs.items()}
            x = tuple(args) if node.nested else args[0]
            out = node.layer.forward(x, training=training, **kwargs)
            outs = out if isinstance(out, (list, tuple)) and len(node.outputs) > 1 else [out]
            for t, o in zip(node.outputs, outs):
                values[t.id] = o
        self._values = values
        return [values[t.id] for t in self.outputs]

    def value_of(self, t: KTensor):
        """Value of a symbolic tensor in the last forward pass."""
        return self._values[t.id]

    # --------------------------------------------------------------- backward
    def backward(self, dys: list, input_grads=False):
        """Run backward from output gradients; returns the ids of layers that ran,
        or with ``input_grads`` the gradient of each model input (None if none)."""
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
            dx = layer.backward(dy)
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
        if input_grads:
            return [grads.get(t.id) for t in self.inputs]
        return ran


def _is_state_grad(dx):
    """(dx, [dh0, ...]) returned by a recurrent layer given an initial state."""
    return isinstance(dx[1], (list, tuple))


def _resolve(v, values):
    if isinstance(v, KTensor):
        return values[v.id]
    if isinstance(v, (list, tuple)) and any(isinstance(e, KTensor) for e in v):
        return [values[e.id] if isinstance(e, KTensor) else e for e in v]
    return v

