"""Recurrent classifier on the bundled handwritten digits: each 8x8 image is
read row by row as a sequence of 8 steps of 8 pixels.

    python examples/digits_sequence.py [--cell lstm|gru] [--epochs N]
"""
import argparse

import nbmodel as nb
from nbmodel import layers

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--cell", choices=["lstm", "gru"], default="lstm")
parser.add_argument("--epochs", type=int, default=30)
args = parser.parse_args()

# The per-step products of a small recurrent layer are too small to split
# across threads: one thread is fastest, also on a machine shared with other jobs.
nb.set_num_threads(1)

(x_train, y_train), (x_test, y_test) = nb.datasets.load_digits()
x_train = x_train.reshape(-1, 8, 8)  # (samples, time = image rows, features = pixels of a row)
x_test = x_test.reshape(-1, 8, 8)

cell = layers.LSTM if args.cell == "lstm" else layers.GRU
model = nb.Sequential([
    layers.Input((8, 8)),
    cell(64),
    layers.Dense(10, activation="softmax"),
], seed=0)
model.compile(optimizer=nb.optimizers.Adam(5e-3), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
model.summary()
model.fit(x_train, y_train, epochs=args.epochs, batch_size=32, validation_split=0.1, verbose=2)
loss, acc = model.evaluate(x_test, y_test)
print(f"test loss {loss:.4f} - test accuracy {acc:.4f}")
if acc < 0.95:
    raise SystemExit(f"test accuracy {acc:.4f} is below 0.95")
