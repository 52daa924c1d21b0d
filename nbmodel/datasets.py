"""Bundled data sets.

``load_digits`` ships with the package (``nbmodel/_data/digits.npz``): the
1,797 8x8 handwritten digits of the UCI optical-recognition data set (as
distributed with scikit-learn), pixel values 0..16. No network is needed.
"""
from __future__ import annotations

import os

import numpy as np

_DATA = os.path.join(os.path.dirname(__file__), "_data")


def load_digits(test_fraction=0.2, seed=0):
    """Handwritten digits as ``(x_train, y_train), (x_test, y_test)``.

    Images are float32 ``(n, 8, 8, 1)`` scaled to [0, 1]; labels int64 0..9.
    The split is stratified and fixed by ``seed`` (default: 1,438 train and
    359 test samples, round(20%) of each class in the test set).
    """
    with np.load(os.path.join(_DATA, "digits.npz")) as z:
        images, labels = z["images"], z["labels"]
    x = (images.astype(np.float32) / np.float32(16.0))[..., None]
    y = labels.astype(np.int64)
    rng = np.random.default_rng(seed)
    test = []
    for c in range(10):
        idx = np.flatnonzero(y == c)
        rng.shuffle(idx)
        test.extend(idx[: int(round(len(idx) * test_fraction))])
    test = np.sort(np.array(test))
    mask = np.ones(len(y), bool)
    mask[test] = False
    train = rng.permutation(np.flatnonzero(mask))
    return (x[train], y[train]), (x[test], y[test])


def load_text(name="pydoc_topics"):
    """A real English text that ships with Python: the help topics of ``pydoc_data.topics``."""
    if name != "pydoc_topics":
        raise ValueError(f"load_text: unknown text {name!r}; available: 'pydoc_topics'")
    from pydoc_data.topics import topics

    return "\n\n".join(topics[k] for k in sorted(topics))
