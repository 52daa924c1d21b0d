"""Synchronous data-parallel training with exact large-batch semantics.

``model.fit(..., workers=N)`` trains with N worker processes on this machine
(process.py); ``model.fit(..., distributed="mpi")`` with the ranks of an MPI
job (mpi.py). Both split every global batch by sample, sum the per-shard
gradient sums and counts, divide by the global count and apply one optimizer
step, so they train the same model as one process with the same batch size
(to float rounding; see common.py for Dropout and BatchNormalization).

Where the data is read:

- arrays in memory: validated once; the workers get a copy in shared memory, MPI
  ranks index their own;
- a NumPy memmap input (or memmap targets): never copied whole. Each worker maps
  the same file again (read-only) and each MPI rank uses its own map; a replica
  reads, casts and checks only its shard's rows, per step;
- a PyDataset or a generator: read as one process reads it (``data.BatchStream``:
  shuffled batch order, class weights, steps_per_epoch, on_epoch_end). With
  workers, the parent reads each global batch and copies it into shared buffers
  sized by the first batch; each worker takes its shard's rows. Under MPI every
  rank reads the stream itself and keeps its rows; the ranks compare the batch
  size of every step (mpi.RankCheckedStream).
"""
from __future__ import annotations

from ..data import BatchStream, is_stream, prepare_fit_data, split_validation
from .common import ParallelError, shard_bounds

__all__ = ["fit_parallel", "ParallelError", "shard_bounds"]


def fit_parallel(model, x=None, y=None, batch_size=None, epochs=1, verbose=1, callbacks=None,
                 validation_split=0.0, validation_data=None, shuffle=True, class_weight=None,
                 sample_weight=None, initial_epoch=0, workers=1, distributed=None, steps_per_epoch=None,
                 validation_batch_size=None, validation_freq=1, validation_steps=None):
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
    val_stream = batches = None
    if is_stream(validation_data):  # read where validation runs: the parent, or rank 0
        val_stream = BatchStream(model, validation_data, "fit (validation_data)", steps=validation_steps)
        validation_data = None
    if is_stream(x):
        batches = BatchStream(model, x, "fit", shuffle=shuffle, rng=model.shuffle_rng, steps=steps_per_epoch,
                              class_weight=class_weight)
        xs = ys = sw = None
        val = val_stream
        if validation_data is not None:
            _, val = split_validation(None, None, None, 0.0, validation_data, model, lazy=True)
    else:
        batch_size = 32 if batch_size is None else int(batch_size)
        if batch_size < 1:
            raise ValueError(f"fit: batch_size must be >= 1, got {batch_size}")
        # lazy: a memmap input stays a memmap, read per shard by the workers or ranks
        xs, ys, sw, val = prepare_fit_data(model, x, y, sample_weight, class_weight, validation_split,
                                           validation_data, lazy=True)
        val = val_stream or val
    kw = dict(batch_size=batch_size, epochs=epochs, verbose=verbose, callbacks=callbacks, shuffle=shuffle,
              initial_epoch=initial_epoch, steps_per_epoch=steps_per_epoch,
              validation_batch_size=validation_batch_size, validation_freq=validation_freq, batches=batches)
    if distributed == "mpi":
        from .mpi import fit_mpi

        return fit_mpi(model, xs, ys, sw, val, **kw)
    from .process import fit_process

    return fit_process(model, workers, xs, ys, sw, val, **kw)
