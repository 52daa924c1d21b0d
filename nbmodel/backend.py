"""Devices: where arrays live and which kernel package runs.

A device owns two things (see docs/architecture.md, "Devices"):

- memory: ``empty``/``zeros``/``full`` allocate on the device, ``asarray``
  takes host (or device) data in, ``to_host`` gives a NumPy array back,
  ``assign`` writes into an existing array in place, ``synchronize`` waits
  for queued work;
- kernels: ``kernels("dense")`` is the device's module of the ``dense``
  family, implementing the launch functions listed in
  ``nbmodel/kernels/contract.py``.

A device is chosen once (``Model(..., device=...)`` or ``model.to(device)``)
and flows down to every layer, loss, metric, optimizer and buffer; nothing
below the model picks one, and nothing outside the device classes branches on
a device's name. Devices register by name (``register_device``), so a new one
is a new class plus a new kernel package, with no edit to any layer.

This module does not import numba: kernel modules are imported the first time
a family is asked for, so ``import nbmodel`` compiles nothing.
"""
from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

import numpy as np

from . import config

__all__ = ["Device", "CpuDevice", "register_device", "unregister_device", "get_device",
           "default_device", "registered_devices", "available_devices"]


class Device:
    """Base class of devices: the memory and kernel API the package uses.

    Subclasses set ``name`` and ``kernel_package`` (the dotted name of the
    package holding one module per kernel family) and implement the memory
    methods for their kind of array.
    """

    name = "device"
    kernel_package = ""

    def __init__(self) -> None:
        self._modules: dict[str, Any] = {}

    # ---------------------------------------------------------------- kernels
    def kernels(self, family: str):
        """The kernel module of ``family`` ("dense", "conv", ...) on this device."""
        mod = self._modules.get(family)
        if mod is None:
            mod = self._modules[family] = self._load_kernels(family)
        return mod

    def _load_kernels(self, family: str):
        from .kernels.contract import FAMILIES

        if family not in FAMILIES:
            raise ValueError(f"{self!r}: unknown kernel family {family!r}; expected one of {sorted(FAMILIES)}")
        try:
            return importlib.import_module(f"{self.kernel_package}.{family}")
        except ModuleNotFoundError as e:
            if e.name != f"{self.kernel_package}.{family}":
                raise
            raise NotImplementedError(f"{self!r}: the {family!r} kernel family has no implementation on this "
                                      "device yet") from None

    # ----------------------------------------------------------------- memory
    def empty(self, shape, dtype) -> Any:
        """An uninitialized C-contiguous array on this device."""
        raise NotImplementedError

    def zeros(self, shape, dtype) -> Any:
        return self.full(shape, 0, dtype)

    def full(self, shape, value, dtype) -> Any:
        arr = self.empty(shape, dtype)
        self.kernels("array").fill(arr.reshape(-1), value)
        return arr

    def asarray(self, x, dtype=None) -> Any:
        """``x`` (host or device data) as a C-contiguous array of ``dtype`` on
        this device; no copy when it already is one."""
        raise NotImplementedError

    def to_host(self, a) -> np.ndarray:
        """A NumPy array with the values of ``a`` (may share memory on the CPU:
        copy it before keeping it)."""
        raise NotImplementedError

    def assign(self, dst, src) -> None:
        """Write ``src`` (host or device data of ``dst``'s shape) into ``dst`` in place."""
        raise NotImplementedError

    def synchronize(self) -> None:
        """Wait until every kernel launched so far has finished."""

    def is_array(self, a) -> bool:
        """Whether ``a`` is an array of this device (as opposed to host data)."""
        raise NotImplementedError

    # ---------------------------------------------------------------- helpers
    def fill_uniform(self, rng: np.random.Generator, out) -> None:
        """Fill ``out`` with uniform [0, 1) draws from the NumPy generator
        ``rng``. Every device draws on the host, so a seeded model draws the
        same numbers (dropout masks) on every device."""
        host = rng.random(out.shape, dtype=np.dtype(out.dtype))
        self.assign(out, host)

    def all_finite(self, a) -> bool:
        """False if ``a`` holds a NaN or an infinity."""
        return bool(np.isfinite(self.to_host(a)).all())

    def describe(self) -> str:
        """One line for ``nbmodel info``."""
        return self.name

    def __repr__(self) -> str:
        return f"Device({self.name!r})"

    def __reduce__(self):
        # by name: a model sent to a worker process finds that process's device of the same name
        return get_device, (self.name,)


class CpuDevice(Device):
    """NumPy arrays in host memory; ``@njit`` kernels from ``nbmodel.kernels.cpu``."""

    name = "cpu"
    kernel_package = "nbmodel.kernels.cpu"

    def _load_kernels(self, family):
        config.ensure_thread_policy()  # before the first kernel runs: one thread pool at a time
        return super()._load_kernels(family)

    def empty(self, shape, dtype):
        return np.empty(shape, dtype)

    def zeros(self, shape, dtype):
        return np.zeros(shape, dtype)

    def full(self, shape, value, dtype):
        return np.full(shape, value, dtype)

    def asarray(self, x, dtype=None):
        return np.asarray(x, dtype=dtype, order="C")

    def to_host(self, a):
        return np.asarray(a)

    def assign(self, dst, src):
        dst[...] = src

    def is_array(self, a):
        return isinstance(a, np.ndarray)

    def fill_uniform(self, rng, out):
        rng.random(dtype=out.dtype, out=out)

    def all_finite(self, a):
        return bool(np.isfinite(a).all())

    def describe(self):
        return f"cpu ({config.available_cores()} cores, {config.get_num_threads()} threads)"


_FACTORIES: dict[str, Callable[[], Device]] = {}
_AVAILABLE: dict[str, Callable[[], bool]] = {}
_DEVICES: dict[str, Device] = {}


def register_device(name: str, factory: Callable[[], Device], available: Callable[[], bool] | None = None) -> None:
    """Make ``get_device(name)`` return ``factory()`` (created once, on first use).

    ``available()`` says whether the device can run here (e.g. a GPU or its
    simulator is present) without creating it; None means always."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"register_device: name must be a non-empty string, got {name!r}")
    _FACTORIES[name] = factory
    _AVAILABLE[name] = available or (lambda: True)
    _DEVICES.pop(name, None)


def unregister_device(name: str) -> None:
    """Forget a registered device (tests register temporary ones)."""
    _FACTORIES.pop(name, None)
    _AVAILABLE.pop(name, None)
    _DEVICES.pop(name, None)


def registered_devices() -> list[str]:
    return sorted(_FACTORIES)


def available_devices() -> list[str]:
    """The registered devices that can run on this machine."""
    return [name for name in registered_devices() if _AVAILABLE[name]()]


def get_device(device: str | Device | None = None) -> Device:
    """The device called ``device`` (a Device passes through; None is the default device)."""
    if isinstance(device, Device):
        return device
    if device is None:
        device = config.default_device()
    dev = _DEVICES.get(device)
    if dev is None:
        factory = _FACTORIES.get(device)
        if factory is None:
            raise ValueError(f"unknown device {device!r}: expected one of {registered_devices()}")
        dev = _DEVICES[device] = factory()
    return dev


def default_device() -> Device:
    """The device of layers, losses, metrics and optimizers until a model sets theirs."""
    return get_device(None)


def _cuda_device() -> Device:
    from .cuda import CudaDevice  # imports numba-cuda: only when the cuda device is asked for

    return CudaDevice()


def _cuda_available() -> bool:
    from .cuda import cuda_available

    return cuda_available()


register_device("cpu", CpuDevice)
register_device("cuda", _cuda_device, _cuda_available)
