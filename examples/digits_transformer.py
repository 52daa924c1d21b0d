"""A small Transformer classifier on the bundled handwritten digits: each 8x8
image is a sequence of 8 tokens (its rows, 8 pixels each).

    python examples/digits_transformer.py

Attention is order-blind, so every row token also carries a one-hot code of
its row index (the token width becomes 8 + 8); a Dense layer embeds the tokens,
one TransformerEncoder block mixes them, and the mean over tokens feeds the
classifier. Reaches 0.97-0.98 test accuracy (30 epochs, about 5 s of CPU
time on one thread). On a machine shared with other jobs, run with
NBMODEL_NUM_THREADS=1: small GEMMs gain nothing from a second BLAS thread and
lose a lot when its core is busy.
"""
import numpy as np

import nbmodel as nb
from nbmodel import layers


def as_row_tokens(images):
    rows = images.reshape(len(images), 8, 8)
    position = np.broadcast_to(np.eye(8, dtype=rows.dtype), rows.shape)
    return np.concatenate([rows, position], axis=-1)  # (n, 8 tokens, 16 features)


(x_train, y_train), (x_test, y_test) = nb.datasets.load_digits()
x_train, x_test = as_row_tokens(x_train), as_row_tokens(x_test)

model = nb.Sequential([
    layers.Input((8, 16)),
    layers.Dense(64),
    layers.TransformerEncoder(num_heads=4, key_dim=16, ff_dim=128),
    layers.GlobalAveragePooling1D(),
    layers.Dense(10, activation="softmax"),
], seed=0)
model.compile(optimizer=nb.optimizers.Adam(2e-3), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
model.summary()
model.fit(x_train, y_train, epochs=30, batch_size=32, validation_split=0.1, verbose=2)
loss, acc = model.evaluate(x_test, y_test)
print(f"test loss {loss:.4f} - test accuracy {acc:.4f}")
