"""Run under ``mpiexec -n N python -m mpi4py mpi_train.py OUT_DIR [FAMILY ...]`` by test_mpi.py.

Trains every available family of _models.py with fit(distributed="mpi")
(the dense family with EarlyStopping and ReduceLROnPlateau, which must decide
alike on every rank); rank 0 writes OUT_DIR/<family>.npz with the final
weights and the history, every rank writes OUT_DIR/<family>.rank<r>.npy with
a checksum of its weights (all ranks must end identical).
"""
import json
import os
import sys

import numpy as np
from _models import FAMILIES, available, case

import nbmodel as nb
from nbmodel.parallel import mpi


def callbacks_for(family):
    if family != "dense":
        return None
    from nbmodel.callbacks import EarlyStopping, ReduceLROnPlateau

    return [ReduceLROnPlateau(monitor="val_loss", factor=0.5, patience=0, min_delta=1e-2),
            EarlyStopping(monitor="val_loss", patience=1, min_delta=1e-2)]


def main(out, families):
    nb.config.set_floatx("float64")
    for family in families or list(FAMILIES):
        if not available(family):
            continue
        build, x, y, fit = case(family)
        if family == "dense":
            fit = dict(fit, epochs=8)
        model = build()
        hist = model.fit(x, y, verbose=0, distributed="mpi", callbacks=callbacks_for(family), **fit)
        weights = model.get_weights()
        np.save(os.path.join(out, f"{family}.rank{mpi.rank()}.npy"),
                np.array([float(np.sum(w, dtype=np.float64)) for w in weights]))
        if mpi.is_root():
            np.savez(os.path.join(out, f"{family}.npz"), history=np.frombuffer(
                json.dumps(hist.history).encode(), np.uint8), **{f"w{i}": w for i, w in enumerate(weights)})


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
