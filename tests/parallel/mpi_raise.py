"""Run under mpiexec by test_mpi.py: rank 1 raises mid-epoch while rank 0 waits
in the step's Allreduce; the job must end (non-zero) instead of hanging."""
import time

import numpy as np

import nbmodel as nb
from nbmodel import layers as L
from nbmodel.callbacks import Callback
from nbmodel.parallel import mpi


class RaiseOnRank1(Callback):
    def on_train_batch_begin(self, batch, logs=None):
        if batch == 2 and mpi.rank() == 1:
            print(f"RAISING AT {time.time()!r}", flush=True)
            raise RuntimeError("deliberate failure on rank 1")


x = np.random.default_rng(0).standard_normal((64, 4)).astype(np.float32)
y = (x[:, 0] > 0).astype(np.int64)
model = nb.Sequential([L.Input((4,)), L.Dense(2)], seed=0)
model.compile(optimizer="sgd", loss=nb.losses.SparseCategoricalCrossentropy(from_logits=True))
model.fit(x, y, batch_size=8, epochs=1000, verbose=0, distributed="mpi", callbacks=[RaiseOnRank1()])
