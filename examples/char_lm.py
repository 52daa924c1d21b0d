"""Character-level LSTM language model on Python's own help texts
(pydoc_data.topics, shipped with CPython): prints the validation loss of each
epoch and text sampled from the model.

    python examples/char_lm.py [--epochs N] [--chars N]
"""
import argparse
from pydoc_data.topics import topics

import numpy as np

import nbmodel as nb
from nbmodel import layers

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--epochs", type=int, default=8)
parser.add_argument("--chars", type=int, default=300_000, help="characters of text to use")
parser.add_argument("--seq", type=int, default=64, help="characters per training sequence")
args = parser.parse_args()

# The per-step products of a recurrent layer are small: one thread is fastest
# and is not slowed down by other jobs on a shared machine.
nb.set_num_threads(1)

text = "\n".join(topics[k] for k in sorted(topics))[:args.chars]
vocab = sorted(set(text))
index = {c: i for i, c in enumerate(vocab)}
ids = np.array([index[c] for c in text], dtype=np.int64)

# non-overlapping windows; the target is the input shifted by one character
n = (len(ids) - 1) // args.seq
x = ids[:n * args.seq].reshape(n, args.seq)
y = ids[1:n * args.seq + 1].reshape(n, args.seq)
n_val = max(1, n // 10)
x_train, y_train, x_val, y_val = x[:-n_val], y[:-n_val], x[-n_val:], y[-n_val:]
print(f"{len(text)} characters, vocabulary {len(vocab)}, {len(x_train)} training and {n_val} validation sequences")

model = nb.Sequential([
    layers.Input((args.seq,), dtype="int64"),
    layers.Embedding(len(vocab), 32),
    layers.LSTM(128, return_sequences=True),
    layers.Dense(len(vocab)),
], seed=0)
model.compile(optimizer=nb.optimizers.Adam(3e-3, clipnorm=5.0),
              loss=nb.losses.SparseCategoricalCrossentropy(from_logits=True))
model.summary()

rng = np.random.default_rng(0)


def sample(prompt, length=200, temperature=0.6):
    """Continue ``prompt`` one character at a time (the model sees the last seq characters)."""
    out = [index.get(c, 0) for c in prompt]
    for _ in range(length):
        window = np.array(out[-args.seq:], dtype=np.int64)
        window = np.pad(window, (args.seq - len(window), 0))[None]  # left-pad short prompts with id 0
        logits = model.predict(window, batch_size=1)[0, -1].astype(np.float64) / temperature
        p = np.exp(logits - logits.max())
        out.append(int(rng.choice(len(vocab), p=p / p.sum())))
    return "".join(vocab[i] for i in out)


def show_sample(epoch, logs):
    print(f"--- sample after epoch {epoch + 1} (val_loss {logs['val_loss']:.3f}) ---")
    print(sample("The "))
    print("---")


history = model.fit(x_train, y_train, epochs=args.epochs, batch_size=32, validation_data=(x_val, y_val),
                    verbose=2, callbacks=[nb.callbacks.LambdaCallback(on_epoch_end=show_sample)])
val = history.history["val_loss"]
print("validation loss per epoch:", " ".join(f"{v:.3f}" for v in val))
if not val[-1] < val[0]:
    raise SystemExit("validation loss did not fall")
