"""Reference Embedding (float64 NumPy)."""
import numpy as np


def embedding_forward(ids, table):
    """``table[ids]``: one row of the table per id, any shape of ids."""
    return np.asarray(table, np.float64)[np.asarray(ids)]


def embedding_backward(ids, dy, input_dim):
    """Gradient of sum(embedding_forward(ids, table) * dy) with respect to the table (repeats add)."""
    ids = np.asarray(ids).reshape(-1)
    dy = np.asarray(dy, np.float64).reshape(ids.size, -1)
    g = np.zeros((input_dim, dy.shape[1]))
    np.add.at(g, ids, dy)
    return g
