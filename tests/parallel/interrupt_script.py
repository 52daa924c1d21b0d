"""Ctrl-C during fit(workers=2): run as a script by test_process.py.

SIGINT is sent to this (the parent) process mid-epoch, as a terminal's Ctrl-C
would; the workers ignore it. Prints how many workers and shared-memory
segments are left after KeyboardInterrupt reaches the caller.
"""
import multiprocessing as mp
import os
import signal
import sys

from _models import case

import nbmodel as nb
from nbmodel.callbacks import Callback
from nbmodel.parallel.process import segment_prefix


class Interrupt(Callback):
    def on_train_batch_end(self, batch, logs=None):
        if batch == 1:
            os.kill(os.getpid(), signal.SIGINT)


def main():
    nb.config.set_floatx("float64")
    build, x, y, fit = case("dense")
    model = build()
    try:
        model.fit(x, y, verbose=0, workers=2, epochs=50, batch_size=8, callbacks=[Interrupt()])
    except KeyboardInterrupt:
        alive = [p for p in mp.active_children() if p.name.startswith("nbmodel-worker")]
        left = [f for f in os.listdir("/dev/shm") if f.startswith(segment_prefix())] \
            if os.path.isdir("/dev/shm") else []
        print(f"INTERRUPTED workers={len(alive)} segments={len(left)}", flush=True)
        return 0
    print("fit finished without an interrupt", flush=True)
    return 1


if __name__ == "__main__":
    sys.exit(main())
