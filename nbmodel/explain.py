"""Inspecting what a model learned."""
from __future__ import annotations

import numpy as np


def saliency(model, x, class_index, output_index=0):
    """Gradient of the score of ``class_index`` with respect to the input.

    ``x``: a batch for a single-input model; ``class_index``: an int or one int
    per sample. Returns an array shaped like ``x`` in the model's float dtype.
    The score is the model output before any loss: for a softmax output it is
    the class probability. Every layer on the way must support a backward pass
    after an inference-mode forward pass.
    """
    x = np.asarray(x)
    preds = model.predict(x, batch_size=max(len(x), 1))
    outs = preds if isinstance(preds, list) else [preds]
    out = outs[output_index]
    idx = np.broadcast_to(np.asarray(class_index, dtype=np.int64), (out.shape[0],))
    if idx.min() < 0 or idx.max() >= out.shape[-1]:
        raise ValueError(f"saliency: class_index must be in [0, {out.shape[-1]}), got {class_index}")
    dys = [np.zeros_like(o) for o in outs]
    dys[output_index].reshape(out.shape[0], -1, out.shape[-1])[np.arange(out.shape[0]), :, idx] = 1.0
    grads = model.input_gradient(x, dys if len(dys) > 1 else dys[0])
    if grads is None:
        raise ValueError("saliency: the model input holds integer ids (e.g. for an Embedding), which have no "
                         "gradient; inspect the embedding output with model.get_activations instead")
    return grads
