"""Keras-style MLP on the bundled handwritten digits (8x8 images, 10 classes).

    python examples/digits_mlp.py
"""
import nbmodel as nb
from nbmodel import layers

(x_train, y_train), (x_test, y_test) = nb.datasets.load_digits()

model = nb.Sequential([
    layers.Input((8, 8, 1)),
    layers.Flatten(),
    layers.Dense(1000, activation="relu"),
    layers.Dense(1000, activation="relu"),
    layers.Dense(10, activation="softmax"),
], seed=0)
model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
model.summary()
model.fit(x_train, y_train, epochs=5, batch_size=32, validation_split=0.1, verbose=2)
loss, acc = model.evaluate(x_test, y_test)
print(f"test loss {loss:.4f} - test accuracy {acc:.4f}")
