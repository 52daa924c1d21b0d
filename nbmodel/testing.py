"""Checks users can run on their own layers: float64 gradient checks and
float32 purity of compiled kernels."""
from __future__ import annotations

import re

import numpy as np


def _as_tuple(x):
    return tuple(x) if isinstance(x, (list, tuple)) else (x,)


def gradcheck(layer, x, dy=None, eps=1e-6, rtol=1e-5, atol=1e-7, seed=0, forward_kwargs=None,
              check_inputs=True, check_params=True):
    """Compare ``layer.backward`` with float64 central differences.

    The layer is built on ``x`` if needed and cast to float64. The scalar
    checked is ``sum(forward(x) * dy)`` for a fixed random ``dy``, so every
    output element contributes. Inputs and every param are checked; integer
    inputs (token ids) are skipped. Raises AssertionError naming the worst
    element on failure; returns the largest relative error seen.

    The forward pass runs with ``training=True``; layers with randomness
    (Dropout) must be checked at rate 0 or with a fixed mask.
    """
    forward_kwargs = forward_kwargs or {}
    multi = isinstance(x, (list, tuple))
    xs = [np.array(a, dtype=np.float64) if np.asarray(a).dtype.kind == "f" else np.asarray(a)
          for a in _as_tuple(x)]
    if not layer.built:
        layer.build(tuple(a.shape for a in xs) if multi else xs[0].shape)
    layer.cast("float64")
    rng = np.random.default_rng(seed)

    def run():
        out = layer.forward(tuple(xs) if multi else xs[0], training=True, **forward_kwargs)
        return [np.array(o, dtype=np.float64) for o in _as_tuple(out)]

    outs = run()
    if dy is None:
        dys = [rng.standard_normal(o.shape) for o in outs]
    else:
        dys = [np.asarray(d, np.float64) for d in _as_tuple(dy)]

    def objective():
        return sum(float(np.sum(o * d)) for o, d in zip(run(), dys))

    run()
    dx = layer.backward(tuple(dys) if len(dys) > 1 else dys[0])
    dxs = [None if d is None else np.array(d, np.float64) for d in _as_tuple(dx)]
    analytic = {k: np.array(g, np.float64) for k, g in layer.grads.items()}

    worst = 0.0
    targets = []
    if check_inputs:
        for i, a in enumerate(xs):
            if a.dtype.kind == "f" and i < len(dxs) and dxs[i] is not None:
                targets.append((f"input {i}", a, dxs[i]))
    if check_params:
        for k, p in layer.params.items():
            targets.append((f"param {k!r}", p, analytic[k]))
    for what, arr, grad in targets:
        if grad.shape != arr.shape:
            raise AssertionError(f"{layer.name}: gradient of {what} has shape {grad.shape}, expected {arr.shape}")
        num = np.zeros(grad.shape)  # C order: reshape(-1) below must be a view
        flat = arr.reshape(-1)
        for i in range(flat.size):
            old = flat[i]
            flat[i] = old + eps
            fp = objective()
            flat[i] = old - eps
            fm = objective()
            flat[i] = old
            num.reshape(-1)[i] = (fp - fm) / (2 * eps)
        err = np.abs(num - grad)
        tol = atol + rtol * np.abs(num)
        if (err > tol).any():
            j = int(np.argmax(err - tol))
            idx = np.unravel_index(j, arr.shape)
            raise AssertionError(
                f"{layer.name}: gradient of {what} wrong at {idx}: backward {grad.reshape(-1)[j]:.10g}, "
                f"finite differences {num.reshape(-1)[j]:.10g} (max abs error {err.max():.3g})")
        worst = max(worst, float((err / (np.abs(num) + atol)).max()) if err.size else 0.0)
    return worst


_F64_OPS = re.compile(r"= (?:fadd|fsub|fmul|fdiv|fneg)[^=]*\bdouble\b|fpext float .* to double")


def float64_ops(kernel, *args):
    """Lines of LLVM IR that do float64 arithmetic when ``kernel`` runs on ``args``.

    The kernel is recompiled without the disk cache (numba cannot inspect
    cached code). An empty list means a float32 call stays in float32.
    """
    import numba

    from .config import FASTMATH

    fresh = numba.njit(fastmath=set(FASTMATH), error_model="numpy")(kernel.py_func)
    fresh(*args)
    ir = fresh.inspect_llvm(fresh.signatures[0])
    return [line.strip() for line in ir.splitlines() if _F64_OPS.search(line)]
