"""Streamed data for the data-parallel tests (test_streaming_parallel.py, mpi_stream_train.py).

Each run trains a family of _models.py twice: once on streamed data (a PyDataset, a
generator or NumPy memmaps) and once on the same samples as in-memory arrays, with
arguments under which both see the same global batches in the same order.
``RUNS[name](tmp_dir)`` -> (build, stream fit kwargs, array fit kwargs); call it again for
each fit (a generator is read once).
"""
from __future__ import annotations

import os
import sys

import numpy as np
from _models import case

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/, for test_streaming
from test_streaming import Batches  # noqa: E402

N_TRAIN = 23  # dense: 29 samples, validation_split=0.2 keeps the first 23 for training


def weighted_gen(x, y, sw, bs, repeat=1):
    for _ in range(repeat):
        for s in range(0, len(x), bs):
            yield x[s:s + bs], y[s:s + bs], sw[s:s + bs]


def pydataset(tmp):
    """Batches of 8 with sample weights, a PyDataset as validation_data (the last 20%, weighted)."""
    build, x, y, fit = case("dense")
    sw = fit["sample_weight"]
    n = N_TRAIN
    stream = dict(x=Batches(x[:n], y[:n], 8, sw[:n]), validation_data=Batches(x[n:], y[n:], 8, sw[n:]), shuffle=False,
                  epochs=2)
    arrays = dict(x=x, y=y, sample_weight=sw, validation_split=0.2, batch_size=8, shuffle=False, epochs=2)
    return build, stream, arrays


def generator(tmp):
    """steps_per_epoch over a generator of (x, y, sample_weight), class weights, arrays as validation."""
    build, x, y, fit = case("dense")
    sw, n, cw = fit["sample_weight"], N_TRAIN, {0: 1.0, 1: 2.0, 2: 0.5}
    val = (x[n:], y[n:])
    stream = dict(x=weighted_gen(x[:n], y[:n], sw[:n], 8, repeat=2), steps_per_epoch=3, epochs=2,
                  class_weight=cw, validation_data=val)
    arrays = dict(x=x[:n], y=y[:n], sample_weight=sw[:n], batch_size=8, shuffle=False, epochs=2, class_weight=cw,
                  validation_data=val)
    return build, stream, arrays


def shuffled(tmp):
    """A PyDataset in a shuffled batch order (drawn from the model's seeded generator); its
    reference is the same PyDataset in one process (``arrays`` None)."""
    build, x, y, fit = case("dense")
    sw = fit["sample_weight"]
    return build, dict(x=Batches(x, y, 6, sw), epochs=3), None


def memmap(tmp):
    """float64 memmaps as x and y (sample weights in memory), shuffled, with a validation split."""
    build, x, y, fit = case("dense")
    paths = os.path.join(tmp, "x.npy"), os.path.join(tmp, "y.npy")
    if not os.path.exists(paths[1]):
        for path, a in zip(paths, (x, y)):
            mm = np.lib.format.open_memmap(path + ".part", mode="w+", dtype=a.dtype, shape=a.shape)
            mm[:] = a
            mm.flush()
            del mm
            os.replace(path + ".part", path)
    xm, ym = (np.load(p, mmap_mode="r") for p in paths)
    assert isinstance(xm, np.memmap) and xm.dtype == np.float64
    return build, dict(fit, x=xm, y=ym), dict(fit, x=x, y=y)


def batchnorm(tmp):
    """BatchNormalization (statistics synchronized mid-step, moving statistics gathered at
    epoch ends) over a PyDataset, unshuffled."""
    build, x, y, fit = case("batchnorm")
    return build, dict(x=Batches(x, y, 8), shuffle=False, epochs=2), dict(x=x, y=y, batch_size=8, shuffle=False,
                                                                          epochs=2)


RUNS = {"pydataset": pydataset, "generator": generator, "shuffled": shuffled, "memmap": memmap,
        "batchnorm": batchnorm}


def fit(build, kwargs, **more):
    model = build()
    hist = model.fit(verbose=0, **kwargs, **more)
    return model, hist
