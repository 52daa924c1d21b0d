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

    def _nadam(self, p, g, s, lr):
        nadam_step(p, g, s, lr, self.t + 1, self.h.get("beta_1", 0.9), self.h.get("beta_2", 0.999),
                   self.h.get("epsilon", 1e-7))

    def _adagrad(self, p, g, s, lr):
        if "acc" not in s:
            s["acc"] = np.full_like(p, self.h.get("initial_accumulator_value", 0.1), np.float64)
        adagrad_step(p, g, s, lr, self.h.get("epsilon", 1e-7))

    def _adadelta(self, p, g, s, lr):
        adadelta_step(p, g, s, lr, self.h.get("rho", 0.95), self.h.get("epsilon", 1e-7))

    def _adamax(self, p, g, s, lr):
        adamax_step(p, g, s, lr, self.t + 1, self.h.get("beta_1", 0.9), self.h.get("beta_2", 0.999),
                    self.h.get("epsilon", 1e-7))

    def _lion(self, p, g, s, lr):
        lion_step(p, g, s, lr, self.h.get("beta_1", 0.9), self.h.get("beta_2", 0.99))


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


def nadam_step(p, g, s, lr, t, beta_1=0.9, beta_2=0.999, epsilon=1e-7):
    """Nadam at step t = 1, 2, ... as Keras 3 writes it: u_t = beta_1 (1 - 0.5 * 0.96^t), the
    product of u_1..u_t kept across steps (the same for every variable of a step)."""
    u_t = beta_1 * (1 - 0.5 * 0.96 ** t)
    u_t_1 = beta_1 * (1 - 0.5 * 0.96 ** (t + 1))
    u_product_t = np.prod([beta_1 * (1 - 0.5 * 0.96 ** k) for k in range(1, t + 1)])
    u_product_t_1 = u_product_t * u_t_1
    s["m"] += (g - s["m"]) * (1 - beta_1)
    s["v"] += (g * g - s["v"]) * (1 - beta_2)
    m_hat = u_t_1 * s["m"] / (1 - u_product_t_1) + (1 - u_t) * g / (1 - u_product_t)
    v_hat = s["v"] / (1 - beta_2 ** t)
    p -= m_hat * lr / (np.sqrt(v_hat) + epsilon)


def adagrad_step(p, g, s, lr, epsilon=1e-7):
    """Adagrad; s["acc"] starts at initial_accumulator_value."""
    s["acc"] += g * g
    p -= lr * g / np.sqrt(s["acc"] + epsilon)


def adadelta_step(p, g, s, lr, rho=0.95, epsilon=1e-7):
    """Adadelta; s["v"] accumulates g^2 (accumulated_grad), s["a"] the updates (accumulated_delta_var)."""
    s["v"] = rho * s["v"] + (1 - rho) * g * g
    delta = -np.sqrt(s["a"] + epsilon) * g / np.sqrt(s["v"] + epsilon)
    s["a"] = rho * s["a"] + (1 - rho) * delta * delta
    p += lr * delta


def adamax_step(p, g, s, lr, t, beta_1=0.9, beta_2=0.999, epsilon=1e-7):
    """Adamax at step t = 1, 2, ...; s["v"] is the infinity norm u."""
    s["m"] += (g - s["m"]) * (1 - beta_1)
    s["v"] = np.maximum(beta_2 * s["v"], np.abs(g))
    p -= lr * s["m"] / ((1 - beta_1 ** t) * (s["v"] + epsilon))


def lion_step(p, g, s, lr, beta_1=0.9, beta_2=0.99):
    p -= lr * np.sign(s["m"] * beta_1 + g * (1 - beta_1))
    s["m"] = s["m"] * beta_2 + g * (1 - beta_2)


def segment_sumsq(g, bounds):
    """Sum of squares of g over each segment [bounds[i], bounds[i + 1])."""
    g = np.asarray(g, np.float64)
    return np.array([(g[a:b] ** 2).sum() for a, b in zip(bounds[:-1], bounds[1:])])


def l1l2_penalty(w, l1, l2):
    """l1 * sum|w| + l2 * sum w**2 in float64."""
    w = np.asarray(w, np.float64)
    return float(l1 * np.abs(w).sum() + l2 * (w ** 2).sum())


def add_l1l2_grad(w, l1, l2, g):
    """g + the gradient of l1l2_penalty (a new array)."""
    w = np.asarray(w, np.float64)
    return np.asarray(g, np.float64) + l1 * np.sign(w) + 2 * l2 * w


def clip_norms(w, lo, hi, rate, eps):
    """w (p, m, q) scaled so that its norms over axis 1 are rate * clip(n, lo, hi) + (1 - rate) * n."""
    w = np.asarray(w, np.float64)
    n = np.sqrt((w ** 2).sum(axis=1, keepdims=True))
    return w * (rate * np.clip(n, lo, hi) + (1 - rate) * n) / (eps + n)


def non_neg(w):
    return np.maximum(np.asarray(w, np.float64), 0.0)
