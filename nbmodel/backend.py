"""Devices: which kernel package runs a layer, and where its arrays live.

Layers never import numba or a kernel module directly; they ask their device
for a kernel family (``device.kernels("dense")``), which imports
``nbmodel.kernels.<device>.<family>`` on first use. That keeps ``import nbmodel``
free of numba and lets the CUDA package be imported only when asked for.
"""
from __future__ import annotations

import importlib

import numpy as np

from . import config

_DEVICES: dict[str, "Device"] = {}


class Device:
    """A place where kernels run. ``name`` is "cpu" or "cuda"."""

    def __init__(self, name: str):
        if name not in ("cpu", "cuda"):
            raise ValueError(f"unknown device {name!r}: expected 'cpu' or 'cuda'")
        self.name = name
        self._modules: dict[str, object] = {}

    def kernels(self, family: str):
        """The kernel module of ``family`` ("dense", "conv", ...) for this device."""
        mod = self._modules.get(family)
        if mod is None:
            if self.name == "cpu":
                config.ensure_thread_policy()
            mod = importlib.import_module(f"nbmodel.kernels.{self.name}.{family}")
            self._modules[family] = mod
        return mod

    def to_device(self, a):
        if self.name == "cpu":
            return np.ascontiguousarray(a)
        from numba import cuda  # imported only when the cuda device is used

        return cuda.to_device(np.ascontiguousarray(a))

    def to_host(self, a):
        if self.name == "cpu":
            return a
        return a.copy_to_host()

    def __repr__(self):
        return f"Device({self.name!r})"


def get_device(name: "str | Device" = "cpu") -> Device:
    if isinstance(name, Device):
        return name
    dev = _DEVICES.get(name)
    if dev is None:
        dev = _DEVICES[name] = Device(name)
    return dev
