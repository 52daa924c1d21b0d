"""Which pixels does a digits classifier look at? Saliency maps of a small MLP.

Trains a small model on the bundled 8x8 digits, then plots a few test digits
(top row) above the gradient of the predicted class's probability with respect
to each pixel (bottom row: red pixels raise that probability, blue lower it).

    python examples/digits_explain.py [--out digits_saliency.png] [--epochs 15] [--n 8]
"""
import argparse
import time

import numpy as np

import nbmodel as nb
from nbmodel import layers


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="digits_saliency.png", help="PNG file to write")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--n", type=int, default=8, help="how many test digits to show")
    args = parser.parse_args(argv)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    (x_train, y_train), (x_test, y_test) = nb.datasets.load_digits()
    model = nb.Sequential([
        layers.Input((8, 8, 1)),
        layers.Flatten(),
        layers.Dense(128, activation="relu"),
        layers.Dense(10, activation="softmax"),
    ], seed=0)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    t0 = time.perf_counter()
    model.fit(x_train, y_train, epochs=args.epochs, batch_size=32, verbose=0)
    loss, acc = model.evaluate(x_test, y_test)
    print(f"trained {args.epochs} epochs in {time.perf_counter() - t0:.1f} s; test accuracy {acc:.4f}")

    # one test digit of each class first, so the figure shows several classes
    picks = [int(np.flatnonzero(y_test == c)[0]) for c in range(10)][: args.n]
    x = x_test[picks]
    probs = model.predict(x)
    pred = probs.argmax(axis=1)
    sal = nb.explain.saliency(model, x, pred)[..., 0]  # d p[pred] / d pixel, shape (n, 8, 8)

    n = len(picks)
    fig, axes = plt.subplots(2, n, figsize=(1.6 * n, 3.6), squeeze=False)
    for i in range(n):
        axes[0, i].imshow(x[i, :, :, 0], cmap="gray_r", vmin=0, vmax=1)
        axes[0, i].set_title(f"{y_test[picks[i]]} -> {pred[i]} ({probs[i, pred[i]]:.2f})", fontsize=8)
        lim = np.abs(sal[i]).max() or 1.0
        axes[1, i].imshow(sal[i], cmap="bwr", vmin=-lim, vmax=lim)
        for ax in axes[:, i]:
            ax.set_xticks([])
            ax.set_yticks([])
    axes[0, 0].set_ylabel("digit", fontsize=9)
    axes[1, 0].set_ylabel("saliency", fontsize=9)
    fig.suptitle(f"true -> predicted (probability); test accuracy {acc:.3f}", fontsize=9)
    fig.tight_layout()
    fig.savefig(args.out, dpi=120)
    plt.close(fig)
    print(args.out)


if __name__ == "__main__":
    main()
