"""Weight initializers (Keras 3 names and fan rules).

An initializer is a callable ``init(shape, dtype, rng) -> np.ndarray``; every
random draw goes through the layer's ``numpy.random.Generator``, so a seed
fixes every weight.
"""
from __future__ import annotations

import math

import numpy as np

_GLOBAL_SEED = [None, 0]  # [seed set by set_random_seed, layers created since]


def set_random_seed(seed: int) -> None:
    """Make layers created from now on draw reproducible weights (like keras.utils.set_random_seed)."""
    _GLOBAL_SEED[0] = int(seed)
    _GLOBAL_SEED[1] = 0


def layer_rng(seed=None) -> np.random.Generator:
    """RNG of a new layer: its own seed, else the global seed sequence, else fresh entropy."""
    if seed is not None:
        return np.random.default_rng(seed)
    if _GLOBAL_SEED[0] is not None:
        _GLOBAL_SEED[1] += 1
        return np.random.default_rng([_GLOBAL_SEED[0], _GLOBAL_SEED[1]])
    return np.random.default_rng()


def compute_fans(shape):
    shape = tuple(shape)
    if len(shape) == 0:
        return 1, 1
    if len(shape) == 1:
        return shape[0], shape[0]
    if len(shape) == 2:
        return shape[0], shape[1]
    receptive = math.prod(shape[:-2])
    return shape[-2] * receptive, shape[-1] * receptive


def _variance_scaling(scale, mode, distribution):
    def init(shape, dtype, rng):
        fan_in, fan_out = compute_fans(shape)
        n = {"fan_in": fan_in, "fan_out": fan_out, "fan_avg": (fan_in + fan_out) / 2}[mode]
        var = scale / max(1.0, n)
        if distribution == "uniform":
            lim = math.sqrt(3.0 * var)
            out = rng.uniform(-lim, lim, size=shape)
        else:  # truncated normal at 2 std, std corrected like Keras
            std = math.sqrt(var) / 0.87962566103423978
            out = _truncated_normal(rng, shape, std)
        return out.astype(dtype)
    return init


def _truncated_normal(rng, shape, std):
    out = rng.standard_normal(size=shape)
    bad = np.abs(out) > 2
    while bad.any():
        out[bad] = rng.standard_normal(size=int(bad.sum()))
        bad = np.abs(out) > 2
    return out * std


def zeros(shape, dtype, rng=None):
    return np.zeros(shape, dtype)


def ones(shape, dtype, rng=None):
    return np.ones(shape, dtype)


def orthogonal(shape, dtype, rng):
    rows = math.prod(shape[:-1])
    cols = shape[-1]
    a = rng.standard_normal(size=(max(rows, cols), min(rows, cols)))
    q, r = np.linalg.qr(a)
    q *= np.sign(np.diag(r))
    if rows < cols:
        q = q.T
    return q[:rows, :cols].reshape(shape).astype(dtype)


def constant(value):
    def init(shape, dtype, rng=None):
        return np.full(shape, value, dtype)
    return init


def random_normal(mean=0.0, stddev=0.05):
    def init(shape, dtype, rng):
        return (mean + stddev * rng.standard_normal(size=shape)).astype(dtype)
    return init


def random_uniform(minval=-0.05, maxval=0.05):
    def init(shape, dtype, rng):
        return rng.uniform(minval, maxval, size=shape).astype(dtype)
    return init


_NAMED = {
    "glorot_uniform": _variance_scaling(1.0, "fan_avg", "uniform"),
    "glorot_normal": _variance_scaling(1.0, "fan_avg", "normal"),
    "he_uniform": _variance_scaling(2.0, "fan_in", "uniform"),
    "he_normal": _variance_scaling(2.0, "fan_in", "normal"),
    "lecun_uniform": _variance_scaling(1.0, "fan_in", "uniform"),
    "lecun_normal": _variance_scaling(1.0, "fan_in", "normal"),
    "orthogonal": orthogonal,
    "zeros": zeros,
    "ones": ones,
    "random_normal": random_normal(),
    "random_uniform": random_uniform(),
    "truncated_normal": lambda shape, dtype, rng: _truncated_normal(rng, shape, 0.05).astype(dtype),
}


def get(identifier, layer_name="layer"):
    """An initializer from a Keras name or a callable ``(shape, dtype, rng)``."""
    if callable(identifier):
        return identifier
    if isinstance(identifier, str) and identifier.lower() in _NAMED:
        return _NAMED[identifier.lower()]
    raise ValueError(f"{layer_name}: unknown initializer {identifier!r}; expected one of {sorted(_NAMED)}")
