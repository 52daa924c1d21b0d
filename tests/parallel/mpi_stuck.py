"""Run under mpiexec by test_mpi.py: rank 1 gets stuck (a callback that never
returns) mid-epoch, while rank 0 waits in the step's gradient sum; with
argument ``epoch-end`` rank 0 gets stuck at the end of an epoch, while rank 1
waits in the broadcast of rank 0's decisions. With a 5 s step deadline the job
must end with an error naming the stuck rank instead of hanging."""
import sys
import time

import numpy as np

import nbmodel as nb
from nbmodel import layers as L
from nbmodel.callbacks import Callback
from nbmodel.parallel import mpi


class StuckOnRank1(Callback):
    at_epoch_end = sys.argv[1:] == ["epoch-end"]

    def _stick(self):
        if mpi.rank() == (0 if self.at_epoch_end else 1):
            print(f"STUCK AT {time.time()!r}", flush=True)
            time.sleep(3600)

    def on_train_batch_begin(self, batch, logs=None):
        if batch == 2 and not self.at_epoch_end:
            self._stick()

    def on_epoch_end(self, epoch, logs=None):
        if self.at_epoch_end:
            self._stick()


nb.config.set_step_timeout(5)
x = np.random.default_rng(0).standard_normal((64, 4)).astype(np.float32)
y = (x[:, 0] > 0).astype(np.int64)
model = nb.Sequential([L.Input((4,)), L.Dense(2)], seed=0)
model.compile(optimizer="sgd", loss=nb.losses.SparseCategoricalCrossentropy(from_logits=True))
model.fit(x, y, batch_size=8, epochs=1000, verbose=0, distributed="mpi", callbacks=[StuckOnRank1()])
