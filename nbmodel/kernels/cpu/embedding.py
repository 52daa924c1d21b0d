"""Embedding: row gather forward, scatter-add backward.

Ids are validated in the same pass as the gather (the kernel returns the
position of the first id out of range, or -1), so a batch is read once.
"""
from ._jit import jit


@jit
def embedding_forward(ids, table, out):
    """out[i] = table[ids[i]] for flat ids (n,), table (V, d), out (n, d).

    Returns the index of the first id outside [0, V), or -1 when all are valid.
    """
    V, d = table.shape
    for i in range(ids.size):
        k = ids[i]
        if k < 0 or k >= V:
            return i
        row = table[k]
        o = out[i]
        for j in range(d):
            o[j] = row[j]
    return -1


@jit
def embedding_backward(ids, dy, dtable):
    """dtable = sum over positions i of dy[i] added into row ids[i] (repeated
    ids accumulate). Serial: a parallel scatter would race on repeated rows."""
    dtable[:, :] = 0
    d = dtable.shape[1]
    for i in range(ids.size):
        row = dtable[ids[i]]
        g = dy[i]
        for j in range(d):
            row[j] += g[j]
