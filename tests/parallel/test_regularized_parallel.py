"""fit(workers=2) of a model with weight regularizers and constraints trains the
same as one process: the penalty and its gradient are applied once, to the
reduced gradient, and the constraints after the one optimizer step."""
from __future__ import annotations

import numpy as np
from _models import assert_same_training

import nbmodel as nb
from nbmodel import constraints, regularizers
from nbmodel import layers as L


def _build():
    m = nb.Sequential([L.Input((5,)),
                       L.Dense(6, activation="tanh", kernel_regularizer=regularizers.L1L2(0.01, 0.05),
                               bias_regularizer="l2", kernel_constraint=constraints.MaxNorm(0.6)),
                       L.Dense(3, kernel_regularizer=regularizers.L2(0.1), bias_constraint="non_neg")], seed=3)
    m.compile(nb.optimizers.Adam(0.05), nb.losses.SparseCategoricalCrossentropy(from_logits=True))
    return m


def test_regularized_training_with_two_workers_equals_one_process(float64):
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(20, 5)), rng.integers(0, 3, 20)
    fit = dict(batch_size=8, epochs=2, verbose=0)
    ref = _build()
    ref_hist = ref.fit(x, y, **fit)
    model = _build()
    hist = model.fit(x, y, workers=2, **fit)
    assert_same_training(ref, ref_hist, model, hist)
    assert np.sqrt((model.get_weights()[0] ** 2).sum(axis=0)).max() <= 0.6 + 1e-9
