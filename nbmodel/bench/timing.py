"""Timers and the machine's BLAS ceiling, shared by ``nbmodel bench`` and the asv suite."""
from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np


def median_time(fn: Callable[[], object], warmup: int = 3, repeat: int = 30) -> float:
    """Median wall time of ``fn()`` in seconds after ``warmup`` calls."""
    return interleaved_medians({"fn": fn}, warmup, repeat)["fn"]


def interleaved_medians(fns: dict[str, Callable[[], object]], warmup: int = 3, repeat: int = 30) -> dict[str, float]:
    """Median time of each function, calls interleaved so machine noise hits all alike."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeat):
        for k, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t)
    return {k: float(np.median(v)) for k, v in times.items()}


def blas_ceiling_gflops(n: int = 1024, repeat: int = 10) -> float:
    """GFLOP/s of a large float32 matrix product through NumPy's BLAS at its current
    thread count: the machine's ceiling for the dense part of a training step."""
    a = np.random.default_rng(0).standard_normal((n, n)).astype(np.float32)
    b = a.T.copy()
    out = np.empty_like(a)
    t = median_time(lambda: np.dot(a, b, out), warmup=2, repeat=repeat)
    return 2 * n ** 3 / t / 1e9


def torch_train_step(module, loss_fn, xt, yt, opt) -> Callable[[], None]:
    """One PyTorch training step (zero grads, forward, backward, optimizer step) as a closure."""
    def step():
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(module(xt), yt)
        loss.backward()
        opt.step()
    return step
