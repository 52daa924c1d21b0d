"""Synchronous data-parallel training with exact large-batch semantics.

``model.fit(..., workers=N)`` trains with N worker processes on this machine
(process.py); ``model.fit(..., distributed="mpi")`` with the ranks of an MPI
job (mpi.py). Both split every global batch by sample, sum the per-shard
gradient sums and counts, divide by the global count and apply one optimizer
step, so they train the same model as one process with the same batch size
(to float rounding; see common.py for Dropout and BatchNormalization).
"""
from __future__ import annotations

from ..data import prepare_fit_data
from .common import ParallelError, shard_bounds

__all__ = ["fit_parallel", "ParallelError", "shard_bounds"]


def fit_parallel(model, x=None, y=None, batch_size=None, epochs=1, verbose=1, callbacks=None,
                 validation_split=0.0, validation_data=None, shuffle=True, class_weight=None,
                 sample_weight=None, initial_epoch=0, workers=1, distributed=None, steps_per_epoch=None,
                 validation_batch_size=None, validation_freq=1):
    """Model.fit over worker processes or MPI ranks (Model.fit calls this; same arguments)."""
    if not model.compiled:
        raise ValueError(f"{model.name}: call compile(optimizer, loss, metrics) before training or evaluating")
    if distributed not in (None, "mpi"):
        raise ValueError(f"fit: distributed must be None or 'mpi', got {distributed!r}")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"fit: workers must be an integer >= 1, got {workers!r}")
    if distributed == "mpi" and workers != 1:
        raise ValueError("fit: use either workers=N (processes on this machine) or distributed='mpi' "
                         "(one process per MPI rank), not both")
    batch_size = 32 if batch_size is None else int(batch_size)
    if batch_size < 1:
        raise ValueError(f"fit: batch_size must be >= 1, got {batch_size}")
    xs, ys, sw, val = prepare_fit_data(model, x, y, sample_weight, class_weight, validation_split,
                                       validation_data)
    kw = dict(batch_size=batch_size, epochs=epochs, verbose=verbose, callbacks=callbacks, shuffle=shuffle,
              initial_epoch=initial_epoch, steps_per_epoch=steps_per_epoch,
              validation_batch_size=validation_batch_size, validation_freq=validation_freq)
    if distributed == "mpi":
        from .mpi import fit_mpi

        return fit_mpi(model, xs, ys, sw, val, **kw)
    from .process import fit_process

    return fit_process(model, workers, xs, ys, sw, val, **kw)
