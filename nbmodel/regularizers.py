"""Weight and activity regularizers (Keras 3): L1, L2, L1L2.

A regularizer adds ``l1 * sum|w| + l2 * sum w**2`` to the model's loss. The
model computes the value and adds its gradient through the ``optim`` kernels
``l1l2_penalty`` / ``add_l1l2_grad`` on the model's device, so a cuda model
stays on the GPU. Layers take them as ``kernel_regularizer``,
``bias_regularizer``, ``activity_regularizer`` (Embedding:
``embeddings_regularizer``), by name, config dict or instance (``get``).
"""
from __future__ import annotations

import math

import numpy as np


def _coefficient(value, arg: str, owner: str) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{owner}: {arg} must be a non-negative number, got {value!r}") from None
    if not math.isfinite(v) or v < 0:
        raise ValueError(f"{owner}: {arg} must be a non-negative number, got {value!r}")
    return v


class Regularizer:
    """Base class: ``penalty(device, w) -> float`` and ``add_grad(device, w, g, scale)``."""

    l1 = 0.0
    l2 = 0.0

    def penalty(self, device, w, scale: float = 1.0) -> float:
        """``scale`` times the penalty of ``w`` (a device array)."""
        return scale * device.kernels("optim").l1l2_penalty(w, self.l1, self.l2)

    def add_grad(self, device, w, g, scale: float = 1.0) -> None:
        """g += scale * d penalty / d w (in place, on the device)."""
        device.kernels("optim").add_l1l2_grad(w, scale * self.l1, scale * self.l2, g)

    def __call__(self, x) -> float:
        """The penalty of a NumPy array (Keras' ``regularizer(x)``)."""
        x = np.asarray(x, np.float64)
        return float(self.l1 * np.abs(x).sum() + self.l2 * (x ** 2).sum())

    def get_config(self) -> dict:
        return {}

    @classmethod
    def from_config(cls, config: dict) -> Regularizer:
        return cls(**config)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"


class L1L2(Regularizer):
    """``l1 * sum|w| + l2 * sum w**2`` (Keras 3 defaults: both 0)."""

    def __init__(self, l1: float = 0.0, l2: float = 0.0):
        self.l1 = _coefficient(l1, "l1", type(self).__name__)
        self.l2 = _coefficient(l2, "l2", type(self).__name__)

    def get_config(self) -> dict:
        return {"l1": self.l1, "l2": self.l2}


class L1(L1L2):
    """``l1 * sum|w|``."""

    def __init__(self, l1: float = 0.01):
        super().__init__(l1=l1)

    def get_config(self) -> dict:
        return {"l1": self.l1}


class L2(L1L2):
    """``l2 * sum w**2``."""

    def __init__(self, l2: float = 0.01):
        super().__init__(l2=l2)

    def get_config(self) -> dict:
        return {"l2": self.l2}


_BY_NAME = {"l1": L1, "l2": L2, "l1l2": L1L2, "l1_l2": L1L2}


def serialize(regularizer: Regularizer | None) -> dict | None:
    """``{"class_name": ..., "config": ...}`` (what ``get`` takes back)."""
    if regularizer is None:
        return None
    return {"class_name": type(regularizer).__name__, "config": regularizer.get_config()}


def get(identifier, where: str = "regularizer") -> Regularizer | None:
    """A regularizer from None, a name ("l1", "l2", "l1_l2", class names), a
    ``serialize`` dict or an instance; ``where`` names the argument in errors."""
    if identifier is None or isinstance(identifier, Regularizer):
        return identifier
    if isinstance(identifier, str):
        cls = _BY_NAME.get(identifier.lower())
        if cls is None:
            raise ValueError(f"{where}: unknown regularizer {identifier!r}; known: 'l1', 'l2', 'l1_l2'")
        return cls()
    if isinstance(identifier, dict):
        name = identifier.get("class_name")
        cls = _BY_NAME.get(str(name).lower())
        if cls is None:
            raise ValueError(f"{where}: unknown regularizer class {name!r}; known: L1, L2, L1L2")
        try:
            return cls(**identifier.get("config", {}))
        except ValueError as e:
            raise ValueError(f"{where}: {e}") from None
    raise TypeError(f"{where}: expected a regularizer name, config dict or Regularizer, "
                    f"got {type(identifier).__name__}")
