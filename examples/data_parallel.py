"""Data-parallel training of a small CNN on the bundled digits.

On one machine, with worker processes (each gets cores // N threads):

    python examples/data_parallel.py --workers 2

On a cluster, one process per MPI rank (pip install "nbmodel[mpi]"):

    mpiexec -n 4 python -m mpi4py examples/data_parallel.py --mpi

Both train exactly the model one process would train with the same global
batch (every worker computes the gradient sum of its shard of each batch, the
sums are added, the optimizer steps once); ``--check`` trains it again in one
process and prints the largest weight difference to show it.
"""
import argparse
import time

import numpy as np

import nbmodel as nb
from nbmodel import layers


def build():
    model = nb.Sequential([
        layers.Input((8, 8, 1)),
        layers.Conv2D(16, 3, padding="same", activation="relu"),
        layers.MaxPooling2D(2),
        layers.Conv2D(32, 3, padding="same", activation="relu"),
        layers.GlobalAveragePooling2D(),
        layers.Dense(10),
    ], seed=0)
    model.compile(optimizer=nb.optimizers.Adam(3e-3),
                  loss=nb.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    return model


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workers", type=int, default=2, help="worker processes on this machine")
    p.add_argument("--mpi", action="store_true", help="one replica per MPI rank (run under mpiexec)")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=128, help="GLOBAL batch, split over the replicas")
    p.add_argument("--check", action="store_true", help="also train in one process and compare")
    args = p.parse_args()

    (x_train, y_train), (x_test, y_test) = nb.datasets.load_digits()
    root = True
    if args.mpi:
        from nbmodel.parallel import mpi

        root = mpi.is_root()
        parallel = dict(distributed="mpi")
        what = f"{mpi.size()} MPI ranks"
    else:
        parallel = dict(workers=args.workers)
        what = f"{args.workers} worker processes"

    model = build()
    t0 = time.perf_counter()
    history = model.fit(x_train, y_train, batch_size=args.batch_size, epochs=args.epochs,
                        validation_split=0.1, verbose=2 if root else 0, **parallel)
    dt = time.perf_counter() - t0
    loss, acc = model.evaluate(x_test, y_test, verbose=0)
    if root:
        print(f"{what}: {len(history.epoch)} epochs in {dt:.1f} s (spawn and kernel loading included); "
              f"test loss {loss:.4f}, test accuracy {acc:.4f}")
    if args.check and root:
        single = build()
        single.fit(x_train, y_train, batch_size=args.batch_size, epochs=args.epochs, validation_split=0.1,
                   verbose=0)
        diff = max(float(np.max(np.abs(a - b))) for a, b in zip(single.get_weights(), model.get_weights()))
        print(f"largest weight difference to one process: {diff:.2e} (float32 rounding)")


if __name__ == "__main__":  # required: worker processes are spawned and import this file
    main()
