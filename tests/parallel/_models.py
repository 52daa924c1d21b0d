"""Tiny float64 models, one per layer family, shared by the process and MPI tests.

Each case gives ``build()`` -> a compiled model (seeded, so every call gives
the same weights), the training data and the fit arguments. The sample counts
and batch sizes leave an uneven last batch (e.g. 29 samples in batches of 8 over
3 workers: shards 3/3/2 then 2/2/1; the dropout case ends with a batch of 1). A family whose layer module is absent is
left out, so the tests skip it cleanly.
"""
from __future__ import annotations

import importlib.util

import numpy as np

import nbmodel as nb
from nbmodel import layers as L
from nbmodel.layers.base import Layer


def _have(module):
    return importlib.util.find_spec(f"nbmodel.layers.{module}") is not None


# family -> modules it needs
FAMILIES = {
    "dense": ("core", "normalization"),
    "multi_output": ("core",),
    "ignore_class": ("core",),
    "dropout": ("core",),
    "conv": ("conv", "pooling"),
    "batchnorm": ("conv", "pooling", "normalization"),
    "recurrent": ("recurrent", "embedding"),
    "attention": ("attention",),
    "regularized": ("core", "embedding"),
}


def available(family):
    return all(_have(m) for m in FAMILIES[family])


def _sparse_ce():
    return nb.losses.SparseCategoricalCrossentropy(from_logits=True)


def case(family):
    """(build, x, y, fit_kwargs) of a family; call under float64 floatx."""
    rng = np.random.default_rng(7)
    fit = dict(batch_size=8, epochs=2, shuffle=True)

    if family == "dense":
        x = rng.standard_normal((29, 5))
        y = rng.integers(0, 3, 29)

        def build():
            m = nb.Sequential([L.Input((5,)), L.Dense(7, activation="tanh"), L.LayerNormalization(),
                               L.Dense(3)], seed=3)
            m.compile(optimizer=nb.optimizers.Adam(1e-2), loss=_sparse_ce(), metrics=["accuracy"])
            return m
        fit.update(sample_weight=rng.uniform(0.5, 2.0, 29), validation_split=0.2)
        return build, x, y, fit

    if family == "multi_output":
        x = rng.standard_normal((29, 4))
        y = [rng.standard_normal((29, 2)), rng.integers(0, 3, 29)]

        def build():
            inp = L.Input((4,))
            h = L.Dense(6, activation="relu", name="trunk")(inp)
            a = L.Dense(2, name="reg")(h)
            b = L.Dense(3, name="cls")(h)
            m = nb.Model(inputs=inp, outputs=[a, b], seed=5)
            m.compile(optimizer=nb.optimizers.SGD(0.05, momentum=0.9), loss=["mse", _sparse_ce()],
                      loss_weights=[0.5, 2.0])
            return m
        return build, x, y, fit

    if family == "ignore_class":
        # a loss whose count depends on the labels: the reduction-then-scale path
        x = rng.standard_normal((29, 4))
        y = rng.integers(0, 4, 29)

        def build():
            m = nb.Sequential([L.Input((4,)), L.Dense(4)], seed=2)
            m.compile(optimizer=nb.optimizers.RMSprop(1e-2),
                      loss=nb.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=3))
            return m
        return build, x, y, fit

    if family == "regularized":
        # weight penalties and constraints once on the reduced step, activity penalties per shard over
        # the global batch (a nested model's too)
        from nbmodel import constraints, regularizers

        x = rng.standard_normal((29, 5))
        y = rng.integers(0, 3, 29)

        def build():
            inner = nb.Sequential([L.Input((7,)), L.Dense(6, activation="tanh", activity_regularizer="l2",
                                                          kernel_constraint="unit_norm")], name="inner")
            m = nb.Sequential([L.Input((5,)),
                               L.Dense(7, activation="tanh", kernel_regularizer=regularizers.L1L2(0.01, 0.05),
                                       bias_regularizer="l2", kernel_constraint=constraints.MaxNorm(0.6),
                                       activity_regularizer=regularizers.L1L2(0.02, 0.05)),
                               inner,
                               L.Dense(3, kernel_regularizer=regularizers.L2(0.1), bias_constraint="non_neg")],
                              seed=3)
            m.compile(optimizer=nb.optimizers.Adam(5e-2), loss=_sparse_ce(), metrics=["accuracy"])
            return m
        fit.update(sample_weight=rng.uniform(0.5, 2.0, 29))
        return build, x, y, fit

    if family == "dropout":
        # 28 = 3 * 9 + 1: the last batch leaves 1 or 2 replicas an empty shard (their
        # generators must still advance as if they had drawn the whole batch's noise)
        x = rng.standard_normal((28, 6))
        y = rng.integers(0, 3, 28)
        fit.update(batch_size=9)

        def build():
            m = nb.Sequential([L.Input((6,)), L.Dense(8, activation="relu"), L.Dropout(0.4),
                               L.Dense(3)], seed=4)
            m.compile(optimizer=nb.optimizers.Adam(1e-2), loss=_sparse_ce())
            return m
        return build, x, y, fit

    if family == "conv":
        x = rng.random((21, 6, 6, 2))
        y = rng.integers(0, 3, 21)

        def build():
            m = nb.Sequential([L.Input((6, 6, 2)), L.Conv2D(3, 3, padding="same", activation="relu"),
                               L.MaxPooling2D(2), L.Conv2D(4, 2, activation="tanh"),
                               L.GlobalAveragePooling2D(), L.Dense(3)], seed=6)
            m.compile(optimizer=nb.optimizers.Adam(1e-2), loss=_sparse_ce())
            return m
        fit.update(batch_size=8)
        return build, x, y, fit

    if family == "batchnorm":
        # 26 = 3 * 8 + 2: the last batch of 2 leaves one of 3 replicas an empty shard, and the
        # Dense-side BatchNormalization then has 1 row per non-empty shard (2 in the global batch)
        x = rng.random((26, 5, 5, 2)) * 2 + 1
        y = rng.integers(0, 3, 26)

        def build():
            m = nb.Sequential([L.Input((5, 5, 2)), L.Conv2D(3, 3, padding="same"),
                               L.BatchNormalization(momentum=0.5), L.Activation("relu"), L.MaxPooling2D(2),
                               L.Flatten(), L.Dense(4), L.BatchNormalization(center=False, momentum=0.8),
                               L.Dense(3)], seed=10)
            m.compile(optimizer=nb.optimizers.Adam(1e-2), loss=_sparse_ce(), metrics=["accuracy"])
            return m
        fit.update(validation_split=0.1)  # validation runs on the moving statistics
        return build, x, y, fit

    if family == "recurrent":
        x = rng.integers(0, 9, (21, 5))
        y = rng.integers(0, 3, 21)

        def build():
            m = nb.Sequential([L.Input((5,), dtype="int64"), L.Embedding(9, 4),
                               L.LSTM(5, return_sequences=True, dropout=0.2, recurrent_dropout=0.3),
                               L.GRU(4, return_sequences=True, dropout=0.2),
                               L.Bidirectional(L.GRU(2, return_sequences=True, reset_after=False)), L.SimpleRNN(3),
                               L.Dense(3)], seed=8)
            m.compile(optimizer=nb.optimizers.Adam(1e-2), loss=_sparse_ce())
            return m
        return build, x, y, fit

    if family == "attention":
        x = rng.integers(0, 9, (21, 4))
        y = rng.integers(0, 3, 21)

        def build():
            inp = L.Input((4,), dtype="int64")
            e = L.PositionalEmbedding(4, 9, 8)(inp)
            a = L.MultiHeadAttention(2, 3)(e, e)
            h = L.TransformerEncoder(2, 4, 16)(L.Add()([e, a]))
            m = nb.Model(inputs=inp, outputs=L.Dense(3)(L.Flatten()(h)), seed=9)
            m.compile(optimizer=nb.optimizers.Adam(1e-2), loss=_sparse_ce())
            return m
        return build, x, y, fit

    raise KeyError(family)


class RaiseInTraining(Layer):
    """Identity; raises in training in a spawned worker process (the parent, replica 0,
    goes on to wait for it)."""

    def forward(self, x, training=False):
        import multiprocessing

        if training and multiprocessing.parent_process() is not None:
            raise RuntimeError("RaiseInTraining: deliberate failure in a worker")
        return x

    def backward(self, dy):
        return dy


class DieOnShardOf(Layer):
    """Identity; in training, SIGKILLs its own process when its input has ``rows`` rows
    (so exactly one data-parallel worker dies, mid-step, while the others go on)."""

    def __init__(self, rows=2, **kwargs):
        super().__init__(**kwargs)
        self.rows = rows

    def forward(self, x, training=False):
        if training and x.shape[0] == self.rows:
            import os
            import signal

            os.kill(os.getpid(), signal.SIGKILL)
        return x

    def backward(self, dy):
        return dy

    def get_config(self):
        return dict(super().get_config(), rows=self.rows)


def assert_same_training(ref_model, ref_hist, model, hist, rtol=1e-10):
    """Weights and every history entry equal to ``rtol``.

    A weight is compared relative to the largest weight of the model: some have
    a zero gradient in exact arithmetic (an attention key bias does not change
    the softmax) and hold only rounding noise (~1e-14), which no relative
    tolerance of their own can compare."""
    assert sorted(ref_hist.history) == sorted(hist.history)
    for k, v in ref_hist.history.items():
        np.testing.assert_allclose(hist.history[k], v, rtol=rtol, atol=0, err_msg=f"history[{k!r}]")
    wa, wb = ref_model.get_weights(), model.get_weights()
    assert len(wa) == len(wb)
    scale = max(float(np.max(np.abs(a))) for a in wa if a.size)
    for i, (a, b) in enumerate(zip(wa, wb)):
        np.testing.assert_allclose(b, a, rtol=rtol, atol=rtol * scale, err_msg=f"weight {i}")


def assert_same_final(done_dir, resumed_dir):
    """resume_script.py's final.npz of an uninterrupted and of a killed-and-resumed run:
    the same weights, optimizer state and learning rate, bit for bit."""
    import os

    with np.load(os.path.join(done_dir, "final.npz")) as a, np.load(os.path.join(resumed_dir, "final.npz")) as b:
        assert sorted(a.files) == sorted(b.files)
        for k in a.files:
            np.testing.assert_array_equal(b[k], a[k], err_msg=k)
        assert float(a["lr"]) < 1e-2 / 8  # ReduceLROnPlateau lowered it every epoch
