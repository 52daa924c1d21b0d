"""Run under ``mpiexec -n 2 python -m mpi4py mpi_stream_train.py OUT_DIR`` by test_streaming_parallel.py.

Every run of _streams.py with fit(distributed="mpi"): the streamed data (each rank reads
the PyDataset or generator itself, or maps the memmaps) and, where the run has one, the
same samples as arrays. Rank 0 writes OUT_DIR/<run>.npz (weights and history of both, the
PyDataset's read order); every rank writes OUT_DIR/<run>.rank<r>.npy, a checksum of its
weights. Then two generators that differ between the ranks (other batch sizes, an early
end): every rank must stop with the same error, printed as "DISAGREE <case> rank <r>: ...".
"""
import json
import os
import sys

import numpy as np
from _models import case
from _streams import RUNS, fit

import nbmodel as nb
from nbmodel.parallel import mpi


def packed(prefix, model, hist):
    return {f"{prefix}history": np.frombuffer(json.dumps(hist.history).encode(), np.uint8),
            **{f"{prefix}w{i}": w for i, w in enumerate(model.get_weights())}}


def main(out, names):
    nb.config.set_floatx("float64")
    comm = mpi.world()
    rank = comm.Get_rank()
    if rank == 0:
        RUNS["memmap"](out)  # writes the files the ranks map
    comm.Barrier()
    for name in names or ["pydataset", "generator", "shuffled", "memmap"]:
        build, stream, arrays = RUNS[name](out)
        model, hist = fit(build, stream, distributed="mpi")
        saved = packed("s_", model, hist)
        if arrays is not None:
            saved.update(packed("a_", *fit(build, arrays, distributed="mpi")))
        if hasattr(stream["x"], "read"):
            saved["read"] = np.array(stream["x"].read)
            saved["epochs_ended"] = np.array(stream["x"].epochs_ended)
        np.save(os.path.join(out, f"{name}.rank{rank}.npy"),
                np.array([float(np.sum(w, dtype=np.float64)) for w in model.get_weights()]))
        if rank == 0:
            np.savez(os.path.join(out, f"{name}.npz"), **saved)

    build, x, y, _ = case("dense")
    # (batch size, samples) of rank 1's generator; rank 0's gives 3 batches of 8
    cases = {"sizes": (6, 24), "ended": (8, 16)}
    for what, (bs, n) in cases.items():
        bs, n = (8, 24) if rank != 1 else (bs, n)
        batches = ((x[s:s + bs], y[s:s + bs]) for s in range(0, n, bs))
        try:
            build().fit(batches, epochs=1, verbose=0, distributed="mpi")
        except ValueError as e:
            print(f"DISAGREE {what} rank {rank}: {e}", flush=True)
        else:
            print(f"AGREED {what} rank {rank}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
