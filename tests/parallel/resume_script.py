"""Training that a test kills with SIGKILL mid-epoch and restarts (test_resume.py).

    python resume_script.py OUT_DIR one|workers|mpi [--kill | --term] [--save-freq N]

Dropout, BatchNormalization, ReduceLROnPlateau (lowers the rate every epoch)
and EarlyStopping (carries counters) under BackupAndRestore in OUT_DIR/backup.
With --kill the process (rank 0 under MPI) sends itself SIGKILL at epoch 4,
step 3; with --term it sends itself SIGTERM there instead (fit finishes the
step, writes the backup and exits with code 75); without, training runs to the
end and writes OUT_DIR/final.npz (the weights, the optimizer state and the
learning rate). --save-freq N: BackupAndRestore(save_freq=N), a backup every N
batches, so a kill lands mid-epoch after a step backup.
"""
import os
import signal
import sys

import numpy as np

import nbmodel as nb
from nbmodel import layers as L
from nbmodel.callbacks import BackupAndRestore, Callback, EarlyStopping, ReduceLROnPlateau


class KillAt(Callback):
    def __init__(self, sig):
        super().__init__()
        self.sig = sig

    def on_train_batch_begin(self, batch, logs=None):
        if self.epoch == 3 and batch == 2:
            os.kill(os.getpid(), self.sig)

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch


def main(out, mode, kill=None, save_freq="epoch"):
    x = np.random.default_rng(0).standard_normal((96, 6)).astype(np.float32)
    y = (x[:, 0] + x[:, 1] > 0).astype(np.int64) + (x[:, 2] > 1).astype(np.int64)
    model = nb.Sequential([L.Input((6,)), L.Dense(16, activation="relu"), L.BatchNormalization(),
                           L.Dropout(0.3), L.Dense(3)], seed=0)
    model.compile(optimizer=nb.optimizers.Adam(1e-2),
                  loss=nb.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    callbacks = [BackupAndRestore(os.path.join(out, "backup"), save_freq=save_freq),
                 ReduceLROnPlateau(monitor="loss", factor=0.5, patience=0, min_delta=10.0),
                 EarlyStopping(monitor="loss", patience=100, restore_best_weights=True)]
    if kill:
        callbacks.append(KillAt(kill))
    parallel = {"one": {}, "workers": {"workers": 2}, "mpi": {"distributed": "mpi"}}[mode]
    model.fit(x, y, batch_size=16, epochs=6, verbose=0, callbacks=callbacks, **parallel)
    if mode == "mpi":
        from nbmodel.parallel import mpi

        if mpi.rank() != 0:
            return
    state = model.optimizer.get_state()
    np.savez(os.path.join(out, "final.npz"), lr=np.float64(model.optimizer.learning_rate),
             **{f"w{i}": w for i, w in enumerate(model.get_weights())},
             **{f"opt_{k}": np.asarray(v) for k, v in state.items()})


if __name__ == "__main__":
    flags = sys.argv[3:]
    sig = signal.SIGKILL if "--kill" in flags else signal.SIGTERM if "--term" in flags else None
    freq = int(flags[flags.index("--save-freq") + 1]) if "--save-freq" in flags else "epoch"
    main(sys.argv[1], sys.argv[2], sig, freq)
