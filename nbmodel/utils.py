"""Keras' ``keras.utils`` names that nbmodel has (``nb.utils.PyDataset``, ``nb.utils.pad_sequences``)."""
from __future__ import annotations

import numpy as np

from .data import PyDataset

__all__ = ["PyDataset", "pad_sequences"]


def pad_sequences(sequences, maxlen: int | None = None, dtype="int32", padding: str = "pre",
                  truncating: str = "pre", value=0.0) -> np.ndarray:
    """Sequences of different lengths as one (n, maxlen) array, as Keras: each is cut to
    ``maxlen`` (``truncating="pre"`` drops its start, "post" its end) and filled with ``value``
    before it (``padding="pre"``) or after it ("post"); ``maxlen`` defaults to the longest.
    Entries may be numbers or equal-shaped arrays (the result then has their shape too)."""
    for what, v in (("padding", padding), ("truncating", truncating)):
        if v not in ("pre", "post"):
            raise ValueError(f"pad_sequences: {what} must be 'pre' or 'post', got {v!r}")
    try:
        seqs = [np.asarray(s) for s in sequences]
    except TypeError:
        raise ValueError("pad_sequences: sequences must be an iterable of sequences") from None
    if maxlen is not None and (not isinstance(maxlen, (int, np.integer)) or maxlen < 0):
        raise ValueError(f"pad_sequences: maxlen must be a non-negative integer or None, got {maxlen!r}")
    lengths = [len(s) if s.ndim else 0 for s in seqs]
    n = max(lengths, default=0) if maxlen is None else int(maxlen)
    tail = next((s.shape[1:] for s in seqs if s.ndim and len(s)), ())
    out = np.full((len(seqs), n) + tuple(tail), value, dtype=dtype)
    if np.dtype(dtype).kind in "iu" and isinstance(value, float) and value != int(value):
        raise ValueError(f"pad_sequences: value {value!r} does not fit the integer dtype {np.dtype(dtype)}")
    for i, s in enumerate(seqs):
        if not lengths[i] or not n:
            continue
        if s.shape[1:] != tuple(tail):
            raise ValueError(f"pad_sequences: sequence {i} has entries of shape {s.shape[1:]}, expected {tail}")
        kept = s[-n:] if truncating == "pre" else s[:n]
        if padding == "post":
            out[i, :len(kept)] = kept
        else:
            out[i, n - len(kept):] = kept
    return out
