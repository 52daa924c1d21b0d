"""Weight constraints (Keras 3): MaxNorm, MinMaxNorm, UnitNorm, NonNeg.

A layer takes them as ``kernel_constraint`` / ``bias_constraint`` (Embedding:
``embeddings_constraint``); the model applies each to its weight after every
optimizer step, in place, through the ``optim`` kernels ``clip_norms`` and
``non_neg`` on the model's device. Norms run over ``axis`` (an int or a run of
consecutive axes: Dense kernels ``axis=0``, Conv2D kernels ``axis=[0, 1, 2]``).
"""
from __future__ import annotations

import math

_EPSILON = 1e-7  # Keras' backend.epsilon()


class Constraint:
    """Base class: ``apply(device, w)`` changes ``w`` in place."""

    def apply(self, device, w) -> None:
        raise NotImplementedError

    def get_config(self) -> dict:
        return {}

    @classmethod
    def from_config(cls, config: dict) -> Constraint:
        return cls(**config)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"


def _axes(axis, ndim: int, owner: str) -> tuple[int, int]:
    """(first, last + 1) of ``axis`` in a weight of rank ``ndim``; the axes must be consecutive."""
    axes = sorted({int(a) % ndim if -ndim <= int(a) < ndim else _bad_axis(axis, ndim, owner)
                   for a in (axis if isinstance(axis, (list, tuple)) else [axis])})
    if axes != list(range(axes[0], axes[-1] + 1)):
        raise ValueError(f"{owner}: axis {axis} must be consecutive axes of the weight")
    return axes[0], axes[-1] + 1


def _bad_axis(axis, ndim, owner):
    raise ValueError(f"{owner}: axis {axis} is out of range for a weight of rank {ndim}")


def _check_axis(axis, owner):
    items = axis if isinstance(axis, (list, tuple)) else [axis]
    if not items or not all(isinstance(a, int) and not isinstance(a, bool) for a in items):
        raise ValueError(f"{owner}: axis must be an int or a list of ints, got {axis!r}")
    return list(axis) if isinstance(axis, (list, tuple)) else axis


def _number(value, arg, owner, minimum=0.0, maximum=math.inf):
    try:
        v = float(value)
    except (TypeError, ValueError):
        v = math.nan
    if not (minimum <= v <= maximum):
        raise ValueError(f"{owner}: {arg} must be a number in [{minimum}, {maximum}], got {value!r}")
    return v


class MinMaxNorm(Constraint):
    """Norms over ``axis`` pulled into [min_value, max_value] at ``rate``."""

    def __init__(self, min_value: float = 0.0, max_value: float = 1.0, rate: float = 1.0, axis=0):
        owner = type(self).__name__
        self.min_value = _number(min_value, "min_value", owner)
        self.max_value = _number(max_value, "max_value", owner, minimum=self.min_value)
        self.rate = _number(rate, "rate", owner, maximum=1.0)
        self.axis = _check_axis(axis, owner)

    def apply(self, device, w) -> None:
        shape = tuple(w.shape)
        if not shape:
            return
        a, b = _axes(self.axis, len(shape), type(self).__name__)
        p, m, q = math.prod(shape[:a]), math.prod(shape[a:b]), math.prod(shape[b:])
        device.kernels("optim").clip_norms(w.reshape(p, m, q), self.min_value, self.max_value, self.rate,
                                           _EPSILON)

    def get_config(self) -> dict:
        return {"min_value": self.min_value, "max_value": self.max_value, "rate": self.rate, "axis": self.axis}


class MaxNorm(MinMaxNorm):
    """Norms over ``axis`` at most ``max_value``."""

    def __init__(self, max_value: float = 2.0, axis=0):
        super().__init__(0.0, max_value, 1.0, axis)

    def get_config(self) -> dict:
        return {"max_value": self.max_value, "axis": self.axis}


class UnitNorm(MinMaxNorm):
    """Norms over ``axis`` equal to 1."""

    def __init__(self, axis=0):
        super().__init__(1.0, 1.0, 1.0, axis)

    def get_config(self) -> dict:
        return {"axis": self.axis}


class NonNeg(Constraint):
    """Negative weights become 0."""

    def apply(self, device, w) -> None:
        device.kernels("optim").non_neg(w)


_BY_NAME = {"max_norm": MaxNorm, "maxnorm": MaxNorm, "min_max_norm": MinMaxNorm, "minmaxnorm": MinMaxNorm,
            "unit_norm": UnitNorm, "unitnorm": UnitNorm, "non_neg": NonNeg, "nonneg": NonNeg}


def serialize(constraint: Constraint | None) -> dict | None:
    """``{"class_name": ..., "config": ...}`` (what ``get`` takes back)."""
    if constraint is None:
        return None
    return {"class_name": type(constraint).__name__, "config": constraint.get_config()}


def get(identifier, where: str = "constraint") -> Constraint | None:
    """A constraint from None, a name ("max_norm", "non_neg", "unit_norm",
    "min_max_norm", class names), a ``serialize`` dict or an instance."""
    if identifier is None or isinstance(identifier, Constraint):
        return identifier
    if isinstance(identifier, (str, dict)):
        name = identifier if isinstance(identifier, str) else identifier.get("class_name")
        cls = _BY_NAME.get(str(name).lower())
        if cls is None:
            raise ValueError(f"{where}: unknown constraint {name!r}; known: 'max_norm', 'min_max_norm', "
                             "'unit_norm', 'non_neg'")
        try:
            return cls(**(identifier.get("config", {}) if isinstance(identifier, dict) else {}))
        except ValueError as e:
            raise ValueError(f"{where}: {e}") from None
    raise TypeError(f"{where}: expected a constraint name, config dict or Constraint, "
                    f"got {type(identifier).__name__}")
