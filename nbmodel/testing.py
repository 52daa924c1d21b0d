"""Checks users can run on their own layers: the layer-case harness (forward
against a float64 reference, finite-difference gradients, output dtype,
inputs left unchanged, on every device), float64 gradient checks, and
float32 purity of compiled kernels."""
from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np


def _as_tuple(x):
    return tuple(x) if isinstance(x, (list, tuple)) else (x,)


def _flat(x):
    """The arrays of a nested list/tuple structure (e.g. ``(dx, [dh0, dc0])``), in order."""
    if isinstance(x, (list, tuple)):
        return [a for item in x for a in _flat(item)]
    return [x]


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
    dev = layer.device
    multi = isinstance(x, (list, tuple))
    xs = [np.array(a, dtype=np.float64) if np.asarray(a).dtype.kind == "f" else np.asarray(a)
          for a in _as_tuple(x)]
    if not layer.built:
        layer.build(tuple(a.shape for a in xs) if multi else xs[0].shape)
    layer.cast("float64")
    rng = np.random.default_rng(seed)

    def run():
        out = layer.forward(tuple(xs) if multi else xs[0], training=True, **forward_kwargs)
        return [np.array(dev.to_host(o), dtype=np.float64) for o in _as_tuple(out)]

    outs = run()
    if dy is None:
        dys = [rng.standard_normal(o.shape) for o in outs]
    else:
        dys = [np.asarray(d, np.float64) for d in _as_tuple(dy)]

    def objective():
        return sum(float(np.sum(o * d)) for o, d in zip(run(), dys))

    run()
    dx = layer.backward(tuple(dys) if len(dys) > 1 else dys[0])
    dxs = [None if d is None else np.array(dev.to_host(d), np.float64) for d in _as_tuple(dx)]
    analytic = {k: np.array(dev.to_host(g), np.float64) for k, g in layer.grads.items()}

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
        on_device = what.startswith("param")
        host = np.array(dev.to_host(arr)) if on_device else arr  # inputs are host arrays already
        flat = host.reshape(-1)

        def put(i, v, flat=flat, host=host, arr=arr, on_device=on_device):
            flat[i] = v
            if on_device:
                dev.assign(arr, host)

        for i in range(flat.size):
            old = flat[i]
            put(i, old + eps)
            fp = objective()
            put(i, old - eps)
            fm = objective()
            put(i, old)
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


@dataclass
class LayerCase:
    """One layer declared once; its checks run on any device.

    ``make(dtype)`` builds a fresh layer of that float dtype; ``inputs(rng)``
    returns its input (or a tuple of inputs) in float64 (or integer ids);
    ``reference(weights, *inputs)`` computes the expected float64 output from
    the layer's weights (``{name: float64 array}``, params then state, as
    ``get_weights`` orders them) with the NumPy oracle of
    ``nbmodel/kernels/reference``. A test runs ``case.check(device)``, or the
    single checks, typically parametrized over cases and the ``device`` fixture:

    - ``check_forward``: float32 and float64 output against the reference,
      output dtype, inputs left unchanged;
    - ``check_gradients``: float64 backward against central differences
      (``gradcheck``) on cpu; on any other device against the cpu's backward
      for the same weights, inputs and output gradient (the cpu run of the same
      case checks that one by central differences; two forward passes per
      weight would take hours in the CUDA simulator); inputs left unchanged.
    """

    name: str
    make: Callable[[str], Any]
    inputs: Callable[[np.random.Generator], Any]
    reference: Callable[..., Any] | None = None
    forward_kwargs: dict = field(default_factory=dict)
    training: bool = False          # forward mode of the reference comparison
    gradients: bool = True          # False for layers without a backward worth checking
    check_input_grads: bool = True
    rtol: dict = field(default_factory=lambda: {"float32": 1e-5, "float64": 1e-10})
    atol: dict = field(default_factory=lambda: {"float32": 1e-5, "float64": 1e-10})
    grad_rtol: float = 1e-5
    grad_atol: float = 1e-7
    seed: int = 0

    def __str__(self) -> str:
        return self.name

    def _inputs(self, dtype):
        raw = self.inputs(np.random.default_rng(self.seed))
        return tuple(np.array(a, dtype=dtype) if np.asarray(a).dtype.kind == "f" else np.array(a)
                     for a in _as_tuple(raw)), isinstance(raw, (list, tuple))

    def _layer(self, device, dtype, xs, multi):
        from .backend import get_device

        layer = self.make(dtype)
        layer.to(get_device(device))
        if not layer.built:
            layer.build(tuple(a.shape for a in xs) if multi else xs[0].shape)
        return layer

    def check_forward(self, device) -> None:
        """Output against the reference in float32 and float64, its dtype, and the inputs unchanged."""
        for dtype in ("float32", "float64"):
            xs, multi = self._inputs(dtype)
            before = [a.copy() for a in xs]
            layer = self._layer(device, dtype, xs, multi)
            out = layer.forward(tuple(xs) if multi else xs[0], training=self.training, **self.forward_kwargs)
            outs = [layer.device.to_host(o) for o in _as_tuple(out)]
            for i, o in enumerate(outs):
                if o.dtype != np.dtype(dtype):
                    raise AssertionError(f"{self.name} on {device}: output {i} has dtype {o.dtype}, "
                                         f"expected {dtype}")
            _assert_unchanged(self.name, device, xs, before)
            if self.reference is None:
                continue
            weights = {f"{i}:{n}": w for i, (n, w) in enumerate(self._named_weights(layer))}
            weights.update({n: w for n, w in self._named_weights(layer)})
            expected = self.reference(weights, *[a.astype(np.float64) if a.dtype.kind == "f" else a
                                                 for a in before])
            for i, (o, e) in enumerate(zip(outs, _as_tuple(expected))):
                np.testing.assert_allclose(
                    o, e, rtol=self.rtol[dtype], atol=self.atol[dtype],
                    err_msg=f"{self.name} on {device} ({dtype}): output {i} differs from the reference")

    @staticmethod
    def _named_weights(layer):
        names = list(layer.params) + list(layer.state)
        return [(n, np.array(w, np.float64)) for n, w in zip(names, layer.get_weights())]

    def check_gradients(self, device) -> None:
        """float64 backward against central differences (cpu) or the cpu's backward
        (other devices); the inputs unchanged."""
        if not self.gradients:
            return
        xs, multi = self._inputs("float64")
        before = [a.copy() for a in xs]
        layer = self._layer(device, "float64", xs, multi)
        if device == "cpu":
            gradcheck(layer, tuple(xs) if multi else xs[0], rtol=self.grad_rtol, atol=self.grad_atol,
                      forward_kwargs=self.forward_kwargs, check_inputs=self.check_input_grads)
        else:
            self._compare_backward(device, layer, self._layer("cpu", "float64", xs, multi), xs, multi)
        _assert_unchanged(self.name, device, xs, before)

    def _compare_backward(self, device, layer, cpu_layer, xs, multi):
        """One float64 forward (training) + backward on ``layer`` and on ``cpu_layer`` (same
        weights): input and weight gradients equal up to the order of float64 sums."""
        def grads(lyr):
            out = lyr.forward(tuple(xs) if multi else xs[0], training=True, **self.forward_kwargs)
            outs = _as_tuple(out)
            rng = np.random.default_rng(self.seed + 1)
            dys = [lyr.device.asarray(rng.standard_normal(tuple(o.shape))) for o in outs]
            dx = lyr.backward(tuple(dys) if len(dys) > 1 else dys[0])
            found = {f"input {i}": d for i, d in enumerate(_flat(dx))
                     if d is not None and self.check_input_grads}
            found.update({f"param {k!r}": g for k, g in lyr.grads.items()})
            return {k: np.array(lyr.device.to_host(v), np.float64) for k, v in found.items()}

        want, got = grads(cpu_layer), grads(layer)
        if got.keys() != want.keys():
            raise AssertionError(f"{self.name} on {device}: gradients {sorted(got)}, on cpu {sorted(want)}")
        for k, w in want.items():
            scale = float(np.abs(w).max()) if w.size else 0.0
            np.testing.assert_allclose(got[k], w, rtol=1e-9, atol=1e-12 * (1.0 + scale),
                                       err_msg=f"{self.name} on {device}: gradient of {k} differs from cpu")

    def check(self, device) -> None:
        self.check_forward(device)
        self.check_gradients(device)


def _assert_unchanged(name, device, xs, before):
    for i, (a, b) in enumerate(zip(xs, before)):
        if not np.array_equal(a, b, equal_nan=a.dtype.kind == "f"):
            raise AssertionError(f"{name} on {device}: the layer changed its input {i}")


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
