"""Run under mpiexec by test_mpi.py: rank 1 gets stuck mid-epoch (a callback that
never returns) while rank 0 waits in the step's gradient sum; with a 5 s step
deadline the job must end with an error naming rank 1 instead of hanging."""
import time

import numpy as np

import nbmodel as nb
from nbmodel import layers as L
from nbmodel.callbacks import Callback
from nbmodel.parallel import mpi


class StuckOnRank1(Callback):
    def on_train_batch_begin(self, batch, logs=None):
        if batch == 2 and mpi.rank() == 1:
            print(f"STUCK AT {time.time()!r}", flush=True)
            time.sleep(3600)


nb.config.set_step_timeout(5)
x = np.random.default_rng(0).standard_normal((64, 4)).astype(np.float32)
y = (x[:, 0] > 0).astype(np.int64)
model = nb.Sequential([L.Input((4,)), L.Dense(2)], seed=0)
model.compile(optimizer="sgd", loss=nb.losses.SparseCategoricalCrossentropy(from_logits=True))
model.fit(x, y, batch_size=8, epochs=1000, verbose=0, distributed="mpi", callbacks=[StuckOnRank1()])
