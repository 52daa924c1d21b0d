"""Embedding: integer token ids -> rows of a trainable table.

Kernels: nbmodel/kernels/cpu/embedding.py. Ids are not differentiable:
backward writes the table gradient and returns None.
"""
from __future__ import annotations

import numpy as np

from .base import Layer

__all__ = ["Embedding", "padding_mask"]


def padding_mask(device, ids) -> np.ndarray:
    """The Keras mask of ``mask_zero`` embeddings: a host bool array, True where the id is not 0."""
    return (device.to_host(ids) if device.is_array(ids) else np.asarray(ids)) != 0


class Embedding(Layer):
    """Maps ids in [0, input_dim) to vectors of size ``output_dim``.

    Params: ``embeddings`` (input_dim, output_dim), initialized uniform(-0.05, 0.05).
    Input: integer array of any shape; output: that shape + (output_dim,).
    """

    weight_options = {"embeddings": "embeddings"}

    def __init__(self, input_dim, output_dim, embeddings_initializer="uniform", mask_zero=False, **kwargs):
        kwargs.pop("input_length", None)  # Keras 2 argument; the shape comes from the input
        super().__init__(**kwargs)
        for what, v in (("input_dim", input_dim), ("output_dim", output_dim)):
            if not isinstance(v, (int, np.integer)) or v <= 0:
                raise ValueError(f"{self.name}: {what} must be a positive integer, got {v!r}")
        self.input_dim = int(input_dim)
        self.output_dim = int(output_dim)
        self.embeddings_initializer = embeddings_initializer
        self.mask_zero = bool(mask_zero)  # id 0 is padding: the output carries a Keras mask

    def build(self, input_shape):
        init = self.embeddings_initializer
        if isinstance(init, str) and init.lower() == "uniform":  # Keras' "uniform" is uniform(-0.05, 0.05)
            init = "random_uniform"
        self.add_param("embeddings", (self.input_dim, self.output_dim), init)
        super().build(input_shape)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape) + (self.output_dim,)

    def validate_build_shape(self, shapes):
        """Ids of any shape: a shared Embedding may embed sequences of different lengths."""

    def integer_input(self, index: int = 0) -> bool:
        return True

    def creates_mask(self) -> bool:
        return self.mask_zero

    def compute_mask(self, inputs, mask=None):
        """With ``mask_zero``: True where the id is not 0 (Keras), else no mask."""
        return padding_mask(self.device, inputs) if self.mask_zero else None

    def _ids(self, x):
        ids = x if self.device.is_array(x) else np.asarray(x)
        if ids.dtype.kind == "f":
            raise TypeError(f"{self.name}: expected integer token ids, got dtype {ids.dtype} "
                            "(cast the ids to an integer type)")
        if ids.dtype.kind not in "iu":
            raise TypeError(f"{self.name}: expected integer token ids, got dtype {ids.dtype}")
        if ids.ndim < 1:
            raise ValueError(f"{self.name}: expected ids of rank >= 1 (batch, ...), got shape {ids.shape}")
        return self.device.asarray(ids, ids.dtype if ids.dtype in (np.int32, np.int64) else np.int64)

    def forward(self, x, training=False):
        ids = self._ids(x)
        self.ensure_built(ids.shape)
        table = self.params["embeddings"]
        flat = ids.reshape(-1)
        out = self.workspace("y", (flat.size, self.output_dim))
        bad = self.kernels("embedding").embedding_forward(flat, table, out)
        if bad >= 0:
            pos = np.unravel_index(int(bad), ids.shape)
            raise ValueError(f"{self.name}: token id {int(flat[bad])} at position {tuple(int(p) for p in pos)} "
                             f"is out of range [0, {self.input_dim})")
        self._ids_cache = flat
        self._shape = ids.shape
        return out.reshape(ids.shape + (self.output_dim,))

    def backward(self, dy):
        flat = self._ids_cache
        dy2 = self.asarray(dy).reshape(flat.size, self.output_dim)
        self.kernels("embedding").embedding_backward(flat, dy2, self.grads["embeddings"])
        return None

    def get_config(self):
        cfg = super().get_config()
        init = self.embeddings_initializer
        if not isinstance(init, str):
            raise ValueError(f"{self.name}: only initializers given by name can be saved with the model")
        cfg.update(input_dim=self.input_dim, output_dim=self.output_dim, embeddings_initializer=init,
                   mask_zero=self.mask_zero)
        return cfg
