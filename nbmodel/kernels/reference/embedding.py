"""Reference Embedding (float64 NumPy)."""
import numpy as np


def embedding(ids, table):
    return np.asarray(table, np.float64)[np.asarray(ids)]


def embedding_grad(ids, dy, input_dim):
    """Gradient of sum(embedding(ids, table) * dy) with respect to the table."""
    ids = np.asarray(ids).reshape(-1)
    dy = np.asarray(dy, np.float64).reshape(ids.size, -1)
    g = np.zeros((input_dim, dy.shape[1]))
    np.add.at(g, ids, dy)
    return g
