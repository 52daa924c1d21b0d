"""Shared pieces of the benchmark suite: the reference-model interface and timers.

Each layer family describes its reference models (BENCHMARKS.md) in
``benchmarks/models_<family>.py`` as a ``MODELS`` dict of ``RefModel``
subclasses. The asv suite (bench_models.py) and the PyTorch peer comparison
(peer.py) discover them all, so adding a model is one file.
"""
from __future__ import annotations

import importlib
import pkgutil
import time

import numpy as np


class RefModel:
    """One reference workload, built the same way in nbmodel and in PyTorch."""

    name = "?"

    def data(self, seed=0):
        """(x, y) NumPy arrays of one training batch, float32 x, int64 labels."""
        raise NotImplementedError

    def flops_per_step(self) -> float:
        """FLOPs of one training step (forward + backward; count 2 per multiply-add)."""
        raise NotImplementedError

    def build_nb(self):
        """An nbmodel model, compiled with Adam(1e-3) and its loss, seed 0."""
        raise NotImplementedError

    def build_torch(self):
        """(module, loss_fn) in PyTorch, the same architecture."""
        raise NotImplementedError

    def torch_batch(self, x, y):
        """x, y as torch tensors in the module's layout (e.g. NCHW images)."""
        import torch

        return torch.from_numpy(x), torch.from_numpy(y)


def discover_models() -> dict[str, RefModel]:
    """Every RefModel of every benchmarks/models_*.py, by name."""
    import benchmarks

    models = {}
    for info in sorted(pkgutil.iter_modules(benchmarks.__path__), key=lambda m: m.name):
        if info.name.startswith("models_"):
            mod = importlib.import_module(f"benchmarks.{info.name}")
            for name, cls in mod.MODELS.items():
                models[name] = cls()
    return models


def median_time(fn, warmup=3, repeat=30) -> float:
    """Median wall time of ``fn()`` in seconds after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def interleaved_medians(fns: dict, warmup=3, repeat=30) -> dict:
    """Median time of each function, calls interleaved so machine noise hits all alike."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times = {k: [] for k in fns}
    for _ in range(repeat):
        for k, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t)
    return {k: float(np.median(v)) for k, v in times.items()}


def blas_ceiling_gflops(n=1024, repeat=10) -> float:
    """GFLOP/s of a large float32 matrix product through NumPy's BLAS: the machine's ceiling."""
    a = np.random.default_rng(0).standard_normal((n, n)).astype(np.float32)
    b = a.T.copy()
    out = np.empty_like(a)
    t = median_time(lambda: np.dot(a, b, out), warmup=2, repeat=repeat)
    return 2 * n ** 3 / t / 1e9


def torch_train_step(module, loss_fn, xt, yt, opt):
    def step():
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(module(xt), yt)
        loss.backward()
        opt.step()
    return step
