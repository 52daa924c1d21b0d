"""Learning-rate schedules (Keras 3 names, arguments and formulas).

A schedule maps the optimizer's step count (the number of updates already
applied) to a learning rate: ``schedule(step) -> float``. Pass one as an
optimizer's ``learning_rate``. Subclass LearningRateSchedule (``__call__`` and
``get_config``) for your own; ``serialize``/``deserialize`` save and rebuild it.
"""
from __future__ import annotations

import math

__all__ = ["LearningRateSchedule", "ExponentialDecay", "PiecewiseConstantDecay", "CosineDecay",
           "InverseTimeDecay", "serialize", "deserialize"]


class LearningRateSchedule:
    """Base class of schedules: ``__call__(step) -> float`` and ``get_config()``."""

    def __call__(self, step) -> float:
        raise NotImplementedError(f"{type(self).__name__} must implement __call__(step)")

    def get_config(self) -> dict:
        raise NotImplementedError(f"{type(self).__name__} must implement get_config()")

    @classmethod
    def from_config(cls, cfg):
        return cls(**cfg)

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"


def _positive_steps(cls_name, decay_steps):
    if not decay_steps > 0:
        raise ValueError(f"{cls_name}: argument `decay_steps` must be > 0, got {decay_steps!r}")
    return decay_steps


class _RateDecay(LearningRateSchedule):
    """Shared by ExponentialDecay and InverseTimeDecay: the same arguments, and
    ``_progress(step) = step / decay_steps``, floored when staircase."""

    def __init__(self, initial_learning_rate, decay_steps, decay_rate, staircase=False, name=None):
        self.initial_learning_rate = float(initial_learning_rate)
        self.decay_steps = _positive_steps(type(self).__name__, decay_steps)
        self.decay_rate = float(decay_rate)
        self.staircase = bool(staircase)
        self.name = type(self).__name__ if name is None else name

    def _progress(self, step):
        p = float(step) / self.decay_steps
        return math.floor(p) if self.staircase else p

    def get_config(self):
        return {"initial_learning_rate": self.initial_learning_rate, "decay_steps": self.decay_steps,
                "decay_rate": self.decay_rate, "staircase": self.staircase, "name": self.name}


class ExponentialDecay(_RateDecay):
    """initial_learning_rate * decay_rate ** (step / decay_steps), the exponent floored when staircase."""

    def __call__(self, step):
        return self.initial_learning_rate * self.decay_rate ** self._progress(step)


class PiecewiseConstantDecay(LearningRateSchedule):
    """values[0] while step <= boundaries[0], values[i] for boundaries[i-1] < step <= boundaries[i],
    values[-1] after the last boundary."""

    def __init__(self, boundaries, values, name="PiecewiseConstant"):
        boundaries = list(boundaries)
        values = [float(v) for v in values]
        if len(values) != len(boundaries) + 1:
            raise ValueError(f"PiecewiseConstantDecay: the length of `values` ({len(values)}) must be "
                             f"the length of `boundaries` ({len(boundaries)}) plus 1")
        if any(b2 < b1 for b1, b2 in zip(boundaries, boundaries[1:])):
            raise ValueError(f"PiecewiseConstantDecay: `boundaries` must be increasing, got {boundaries}")
        self.boundaries = boundaries
        self.values = values
        self.name = name

    def __call__(self, step):
        for b, v in zip(self.boundaries, self.values):
            if step <= b:
                return v
        return self.values[-1]

    def get_config(self):
        return {"boundaries": list(self.boundaries), "values": list(self.values), "name": self.name}


class InverseTimeDecay(_RateDecay):
    """initial_learning_rate / (1 + decay_rate * step / decay_steps), the ratio floored when staircase."""

    def __call__(self, step):
        return self.initial_learning_rate / (1.0 + self.decay_rate * self._progress(step))


class CosineDecay(LearningRateSchedule):
    """Cosine decay from initial_learning_rate (or warmup_target) to alpha times it over decay_steps.

    With warmup_target set, the rate first rises linearly from
    initial_learning_rate to warmup_target over warmup_steps, then decays from
    warmup_target over the next decay_steps (Keras 3 semantics); after that it
    stays at alpha * (warmup_target or initial_learning_rate).
    """

    def __init__(self, initial_learning_rate, decay_steps, alpha=0.0, name="CosineDecay",
                 warmup_target=None, warmup_steps=0):
        self.initial_learning_rate = float(initial_learning_rate)
        self.decay_steps = _positive_steps("CosineDecay", decay_steps)
        self.alpha = float(alpha)
        self.name = name
        self.warmup_target = None if warmup_target is None else float(warmup_target)
        if warmup_steps < 0:
            raise ValueError(f"CosineDecay: argument `warmup_steps` must be >= 0, got {warmup_steps!r}")
        self.warmup_steps = warmup_steps

    def _decay(self, step, decay_from):
        frac = step / self.decay_steps
        cosine = 0.5 * (1.0 + math.cos(math.pi * frac))
        return decay_from * ((1.0 - self.alpha) * cosine + self.alpha)

    def __call__(self, step):
        step = float(step)
        if self.warmup_target is None:
            return self._decay(min(step, self.decay_steps), self.initial_learning_rate)
        step = min(step, self.decay_steps + self.warmup_steps)
        if step < self.warmup_steps:
            frac = step / self.warmup_steps
            return (self.warmup_target - self.initial_learning_rate) * frac + self.initial_learning_rate
        return self._decay(step - self.warmup_steps, self.warmup_target)

    def get_config(self):
        return {"initial_learning_rate": self.initial_learning_rate, "decay_steps": self.decay_steps,
                "alpha": self.alpha, "name": self.name, "warmup_target": self.warmup_target,
                "warmup_steps": self.warmup_steps}


_BUILTIN = {c.__name__: c for c in (ExponentialDecay, PiecewiseConstantDecay, CosineDecay, InverseTimeDecay)}


def serialize(schedule) -> dict:
    """{"class_name": ..., "config": ...} of a schedule (anything with get_config)."""
    if not hasattr(schedule, "get_config"):
        raise ValueError(f"schedules.serialize: {schedule!r} has no get_config(); subclass "
                         f"nbmodel.schedules.LearningRateSchedule to save a custom schedule")
    return {"class_name": type(schedule).__name__, "config": schedule.get_config()}


def _subclasses(cls):
    for sub in cls.__subclasses__():
        yield sub
        yield from _subclasses(sub)


def deserialize(cfg: dict, custom_objects=None):
    """Rebuild a schedule from serialize()'s dict; custom classes are found among the
    LearningRateSchedule subclasses defined so far or in ``custom_objects``."""
    if not isinstance(cfg, dict) or "class_name" not in cfg:
        raise ValueError(f"schedules.deserialize: expected a dict with 'class_name' and 'config', got {cfg!r}")
    classes = {**_BUILTIN, **{c.__name__: c for c in _subclasses(LearningRateSchedule)},
               **(custom_objects or {})}
    cls = classes.get(cfg["class_name"])
    if cls is None:
        raise ValueError(f"schedules.deserialize: unknown schedule {cfg['class_name']!r}; "
                         f"known: {sorted(_BUILTIN)} (pass custom_objects for your own)")
    return cls.from_config(dict(cfg.get("config", {})))
