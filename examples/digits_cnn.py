"""A small CNN on the bundled handwritten digits (8x8 images, 10 classes).

    python examples/digits_cnn.py             # one thread
    NBMODEL_NUM_THREADS=2 python examples/digits_cnn.py

The same model as a config: ``nbmodel train examples/digits_cnn.toml``.
"""
import os
import time

import nbmodel as nb
from nbmodel import layers

# 8x8 images in batches of 32 give each layer little work to split across
# threads: on the 2-core machine (shared) one thread trained this model in
# 5.1 s, two threads in 9.7 s.
nb.set_num_threads(int(os.environ.get("NBMODEL_NUM_THREADS", 1)))

(x_train, y_train), (x_test, y_test) = nb.datasets.load_digits()

model = nb.Sequential([
    layers.Input((8, 8, 1)),
    layers.Conv2D(32, 3, padding="same", activation="relu"),
    layers.BatchNormalization(),
    layers.Conv2D(32, 3, padding="same", activation="relu"),
    layers.MaxPooling2D(2),
    layers.Conv2D(64, 3, padding="same", activation="relu"),
    layers.GlobalAveragePooling2D(),
    layers.Dense(64, activation="relu"),
    layers.Dense(10, activation="softmax"),
], seed=0)
model.compile(optimizer=nb.optimizers.Adam(2e-3), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
model.summary()
t0 = time.perf_counter()
model.fit(x_train, y_train, epochs=25, batch_size=32, validation_split=0.1, verbose=2)
elapsed = time.perf_counter() - t0
loss, acc = model.evaluate(x_test, y_test)
print(f"test loss {loss:.4f} - test accuracy {acc:.4f} - training {elapsed:.1f} s "
      f"on {nb.get_num_threads()} thread(s)")
