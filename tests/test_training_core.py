"""The training core (``model.training_core``): its public API, and the boundary around Model.

The modules that drive a model (the epoch loop, data parallelism, files, data,
callbacks) and the core itself use only public attributes of Model and of the
core; the source checks here fail if one reaches into a private one again, or
if an import goes back up the one-way order (core -> model -> drivers).
"""
from __future__ import annotations

import ast
import os

import numpy as np
import pytest

import nbmodel as nb
from nbmodel import layers as L
from nbmodel.layers.base import finite_checks
from nbmodel.training_core import TrainingCore

PKG = os.path.dirname(nb.__file__)
DRIVERS = ["io.py", "training.py", "data.py", "callbacks.py", "training_core.py",
           "parallel/__init__.py", "parallel/common.py", "parallel/process.py", "parallel/mpi.py"]
# names through which these modules reach a model or its core
MODEL_NAMES = {"model", "core", "training_core"}


def _tree(rel):
    with open(os.path.join(PKG, rel)) as f:
        return ast.parse(f.read(), rel)


def _private_reaches(rel):
    """``model._x``, ``self.model._x``, ``core._x``, ``model.optimizer._x``, ... in ``rel``."""
    found = []
    for node in ast.walk(_tree(rel)):
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
            path = ast.unparse(node.value).split(".")
            if MODEL_NAMES & set(path):
                found.append(f"{rel}:{node.lineno}: {ast.unparse(node)}")
        elif isinstance(node, ast.ImportFrom) and (node.module or "").endswith("model"):
            found += [f"{rel}:{node.lineno}: imports {a.name}" for a in node.names if a.name.startswith("_")]
    return found


def _imports(rel):
    """(module imported, at module level?) for every nbmodel import in ``rel`` (relative or absolute)."""
    pkg_parts = ["nbmodel"] + rel[:-3].split("/")[:-1]
    tree = _tree(rel)
    top = {id(n) for n in tree.body}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = pkg_parts[:len(pkg_parts) - node.level + 1] if node.level else []
            mod = ".".join(base + ([node.module] if node.module else []))
            names = [f"{mod}.{a.name}" for a in node.names] if not node.module or node.level else [mod]
            out += [(n, id(node) in top) for n in names + [mod]]
        elif isinstance(node, ast.Import):
            out += [(a.name, id(node) in top) for a in node.names]
    return [(m, at_top) for m, at_top in out if m.startswith("nbmodel")]


@pytest.mark.parametrize("rel", DRIVERS)
def test_no_private_model_or_core_attribute(rel):
    assert _private_reaches(rel) == []


def test_the_private_check_sees_a_reach():
    tree = ast.parse("def f(model):\n    return model._graph, self.model.optimizer._learning_rate, core._packed\n")
    found = [ast.unparse(n) for n in ast.walk(tree) if isinstance(n, ast.Attribute) and n.attr.startswith("_")
             and MODEL_NAMES & set(ast.unparse(n.value).split("."))]
    assert found == ["model._graph", "self.model.optimizer._learning_rate", "core._packed"]


def test_imports_go_one_way():
    def hits(rel, banned, top_only):
        return [m for m, at_top in _imports(rel) if (at_top or not top_only) and any(
            m == b or m.startswith(b + ".") for b in banned)]

    # the core sits below Model and every driver, at any level
    assert hits("training_core.py", ["nbmodel.model", "nbmodel.io", "nbmodel.training", "nbmodel.data",
                                     "nbmodel.parallel", "nbmodel.callbacks"], top_only=False) == []
    # only io (which rebuilds models) imports model.py; the others work on any model through its public API
    for rel in ["data.py", "training.py", "callbacks.py", "parallel/__init__.py", "parallel/common.py",
                "parallel/process.py", "parallel/mpi.py"]:
        assert hits(rel, ["nbmodel.model"], top_only=False) == [], rel
    # model.py imports no driver at module level (fit and save reach them inside the method)
    assert hits("model.py", ["nbmodel.io", "nbmodel.training", "nbmodel.parallel", "nbmodel.callbacks"],
                top_only=True) == []
    assert "nbmodel.training_core" in {m for m, at_top in _imports("model.py") if at_top}


# ------------------------------------------------------------------ the API
def _model(seed=3, dropout=0.0):
    m = nb.Sequential([L.Input((5,)), L.Dense(7, activation="tanh", kernel_regularizer="l2"),
                       L.Dropout(dropout), L.Dense(3)], seed=seed)
    m.compile(optimizer=nb.optimizers.Adam(1e-2),
              loss=nb.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    return m


def _data(n=12):
    rng = np.random.default_rng(0)
    return rng.standard_normal((n, 5)).astype("float32"), rng.integers(0, 3, n)


def test_core_exists_after_compile_only():
    m = nb.Sequential([L.Input((5,)), L.Dense(3)])
    assert m.training_core is None
    m.compile("sgd", "mse")
    core = m.training_core
    assert isinstance(core, TrainingCore) and core.model is m and core.optimizer is m.optimizer
    assert core.metrics is None and core.loss_weights == [1.0] and len(core.losses) == 1
    m.compile("sgd", "mse")
    assert m.training_core is not core  # a new compile, a new core


def test_pack_puts_every_trainable_weight_in_one_buffer():
    m = _model()
    core = m.training_core
    trainable = [(layer, k, p) for layer in m.layers for k, p in layer.params.items()]
    assert [n for _, n in core.segments] == [p.size for _, _, p in trainable]
    np.testing.assert_array_equal(core.params, np.concatenate([p.ravel() for _, _, p in trainable]))
    for (layer, k, p), (off, n) in zip(trainable, core.segments):
        assert np.shares_memory(p, core.params) and np.shares_memory(layer.grads[k], core.grads)
    # bind_flat: the buffers become the given arrays, the layers' views follow
    params, grads = core.params.copy(), np.zeros_like(core.grads)
    core.bind_flat(params, grads)
    assert core.params is params and core.grads is grads
    assert all(np.shares_memory(layer.params[k], params) and np.shares_memory(layer.grads[k], grads)
               for layer, k, _ in trainable)


def test_one_core_step_is_train_on_batch():
    x, y = _data()
    a, b, c = _model(), _model(), _model()
    loss_a = a.train_on_batch(x, y)
    xs, ys, sw = b.standardize_data(x, y, None, "test")
    with finite_checks(False):
        loss_b, _, ok = b.training_core.train_step(xs, ys, sw)
    assert ok and loss_b == loss_a[0]
    # the same step from its pieces (what a data-parallel replica calls)
    core = c.training_core
    with finite_checks(False):
        preds = core.forward(xs, training=True)
        totals, counts, dys = core.loss_gradients(ys, preds)
        assert counts == [len(x)] and core.output_losses == [totals[0] / counts[0]]
        loss_c = core.output_losses[0] + core.penalty()
        core.backward(dys)
        core.apply_update(1.0)
    assert loss_c == loss_b
    for wa, wb, wc in zip(a.get_weights(), b.get_weights(), c.get_weights()):
        np.testing.assert_array_equal(wa, wb)
        np.testing.assert_array_equal(wa, wc)


def test_metrics_logs_and_evaluate_batches():
    x, y = _data()
    m = _model()
    m.fit(x, y, batch_size=4, epochs=1, verbose=0, shuffle=False)
    core = m.training_core
    assert core.metrics_names == m.metrics_names == ["loss", "accuracy"]
    running = core.logs(1.0, 1)["accuracy"]
    ev = m.evaluate(x, y, return_dict=True)
    assert core.logs(1.0, 1)["accuracy"] == running  # evaluate left fit's running metrics alone
    xs, ys, sw = m.standardize_data(x, y)
    from nbmodel.data import array_batches

    assert core.evaluate_batches(array_batches(m, xs, ys, sw, 5, "t"), "t") == ev


def test_random_state_round_trip():
    x, y = _data()
    m = _model(dropout=0.5)
    core = m.training_core
    state = core.get_random_state()
    assert state == m.get_random_state() and core.get_random_state(shuffle=False) == state[1:]
    assert state[0] == m.shuffle_rng.bit_generator.state
    xs, ys, _ = m.standardize_data(x, y)
    w0, opt0 = m.get_weights(), m.optimizer.get_state()
    with finite_checks(False):
        first, _, _ = core.train_step(xs, ys)
    after = m.get_weights()
    assert core.get_random_state(shuffle=False) != state[1:]  # the dropout masks drew
    m.set_weights(w0)
    m.optimizer.set_state(opt0)
    core.set_random_state(state)
    with finite_checks(False):
        again, _, _ = core.train_step(xs, ys)
    assert again == first
    for a, b in zip(after, m.get_weights()):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="expected 4 generator states, got 1"):
        core.set_random_state(state[:1])
