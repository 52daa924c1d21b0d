"""Reference optimizer steps (float64 NumPy, Keras 3 update rules).

Variables are a list of arrays (one per trainable variable), updated in place
in the order Keras uses: clip the gradients (clipnorm per variable, or
global_clipnorm, or clipvalue), decay the weights (p -= p * wd * lr), then the
optimizer's rule; the learning rate of step t (t = 0, 1, ...) is lr(t).
"""
import numpy as np


def clip_gradients(grads, clipnorm=None, clipvalue=None, global_clipnorm=None):
    if clipnorm:
        return [g * clipnorm / max(np.sqrt((g ** 2).sum()), clipnorm) for g in grads]
    if global_clipnorm:
        norm = np.sqrt(sum((g ** 2).sum() for g in grads))
        return [g * min(1.0, global_clipnorm / norm) if norm > 0 else g for g in grads]
    if clipvalue:
        return [np.clip(g, -clipvalue, clipvalue) for g in grads]
    return list(grads)


class Reference:
    """``Reference("adam", beta_1=..., ...)``; ``step(params, grads)`` updates params in place."""

    def __init__(self, kind, learning_rate=0.01, clipnorm=None, clipvalue=None, global_clipnorm=None,
                 weight_decay=None, **hyper):
        self.kind = kind
        self.lr = learning_rate if callable(learning_rate) else (lambda t, v=learning_rate: v)
        self.clip = dict(clipnorm=clipnorm, clipvalue=clipvalue, global_clipnorm=global_clipnorm)
        self.wd = weight_decay
        self.h = hyper
        self.t = 0
        self.slots = None

    def step(self, params, grads):
        grads = clip_gradients([np.asarray(g, np.float64) for g in grads], **self.clip)
        lr = float(self.lr(self.t))
        if self.slots is None:
            self.slots = [dict(m=np.zeros_like(p, np.float64), v=np.zeros_like(p, np.float64),
                               vh=np.zeros_like(p, np.float64), a=np.zeros_like(p, np.float64))
                          for p in params]
        for p, g, s in zip(params, grads, self.slots):
            if self.wd:
                p -= p * self.wd * lr
            getattr(self, "_" + self.kind)(p, g, s, lr)
        self.t += 1

    def _sgd(self, p, g, s, lr):
        sgd_step(p, g, s, lr, self.h.get("momentum", 0.0), self.h.get("nesterov", False))

    def _adam(self, p, g, s, lr):
        adam_step(p, g, s, lr, self.t + 1, self.h.get("beta_1", 0.9), self.h.get("beta_2", 0.999),
                  self.h.get("epsilon", 1e-7), self.h.get("amsgrad", False))

    _adamw = _adam

    def _rmsprop(self, p, g, s, lr):
        rmsprop_step(p, g, s, lr, self.h.get("rho", 0.9), self.h.get("momentum", 0.0),
                     self.h.get("epsilon", 1e-7), self.h.get("centered", False))


# One step of each rule on one variable, in place on p and the slots s (the
# contract's names; the kernels run them over the flat buffer by segment).
def sgd_step(p, g, s, lr, momentum=0.0, nesterov=False):
    if momentum == 0:
        p -= lr * g
        return
    s["m"] = momentum * s["m"] - lr * g
    if nesterov:
        p += momentum * s["m"] - lr * g
    else:
        p += s["m"]


def adam_step(p, g, s, lr, t, beta_1=0.9, beta_2=0.999, epsilon=1e-7, amsgrad=False):
    """Adam at step t = 1, 2, ... (AdamW: decay the weights before)."""
    s["m"] += (g - s["m"]) * (1 - beta_1)
    s["v"] += (g * g - s["v"]) * (1 - beta_2)
    v = s["v"]
    if amsgrad:
        s["vh"] = np.maximum(s["vh"], s["v"])
        v = s["vh"]
    alpha = lr * np.sqrt(1 - beta_2 ** t) / (1 - beta_1 ** t)
    p -= alpha * s["m"] / (np.sqrt(v) + epsilon)


def rmsprop_step(p, g, s, lr, rho=0.9, momentum=0.0, epsilon=1e-7, centered=False):
    s["v"] = rho * s["v"] + (1 - rho) * g * g
    if centered:
        s["a"] = rho * s["a"] + (1 - rho) * g
        inc = lr * g / np.sqrt(s["v"] - s["a"] ** 2 + epsilon)
    else:
        inc = lr * g / np.sqrt(s["v"] + epsilon)
    if momentum > 0:
        s["m"] = momentum * s["m"] + inc
        p -= s["m"]
    else:
        p -= inc


def segment_sumsq(g, bounds):
    """Sum of squares of g over each segment [bounds[i], bounds[i + 1])."""
    g = np.asarray(g, np.float64)
    return np.array([(g[a:b] ** 2).sum() for a, b in zip(bounds[:-1], bounds[1:])])
