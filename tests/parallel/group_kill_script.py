"""fit(workers=2) that prints TRAINING mid-epoch and keeps going: test_process.py
then kills its whole process group with SIGKILL."""
import sys

from _models import case

import nbmodel as nb
from nbmodel.callbacks import Callback


class Announce(Callback):
    def on_train_batch_end(self, batch, logs=None):
        if batch == 2 and not getattr(self, "said", False):
            self.said = True
            print("TRAINING", flush=True)


def main():
    nb.config.set_floatx("float64")
    build, x, y, fit = case("dense")
    build().fit(x, y, verbose=0, workers=2, epochs=100000, batch_size=8, callbacks=[Announce()])
    return 1  # not reached: the test kills the group


if __name__ == "__main__":
    sys.exit(main())
