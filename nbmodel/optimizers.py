"""Optimizers (Keras 3 names, defaults and update rules) over one flat parameter buffer.

The model packs every trainable variable into one contiguous 1-D array and
their gradients into another; an optimizer keeps its slots (momentum,
velocity, ...) as flat arrays of the same size and updates everything with one
fused kernel call per step:

    opt.build(params_flat, segments)       # segments: (offset, size) of each variable, Keras order
    opt.apply(params_flat, grads_flat, grad_scale=1 / count)

``apply`` reads the gradient SUM and scales it by ``grad_scale`` inside the
kernel (``grads_flat`` is not modified), then, like Keras: clips (clipnorm per
variable, or global_clipnorm over all, or clipvalue elementwise: Keras allows
only one of the three), applies weight decay (``p -= p * weight_decay * lr``),
applies the update rule, and counts the step. The learning rate of a step is
``schedule(iterations)`` read before the step.

This module does not import numba: kernels come from the device on first use.
"""
from __future__ import annotations

import math
import numbers

import numpy as np

from . import schedules as schedules_module
from .backend import Device, default_device, get_device

__all__ = ["Optimizer", "SGD", "Adam", "AdamW", "RMSprop", "Nadam", "Adagrad", "Adadelta", "Adamax", "Lion", "get",
           "serialize", "deserialize"]


def _opt_float(cls_name, arg, value, allow_none=True, positive=False):
    if value is None:
        if allow_none:
            return None
        raise ValueError(f"{cls_name}: argument `{arg}` is required")
    if not isinstance(value, numbers.Real) or isinstance(value, bool):
        raise ValueError(f"{cls_name}: argument `{arg}` must be a number, got {value!r}")
    value = float(value)
    if value < 0 or (positive and value == 0) or not math.isfinite(value):
        raise ValueError(f"{cls_name}: argument `{arg}` must be {'> 0' if positive else '>= 0'}, got {value}")
    return value


def _opt_unit(cls_name, arg, value, low_open=False, high_open=True):
    """``value`` as a float in [0, 1) (``low_open``: (0, ...; ``high_open=False``: ..., 1]), else ValueError."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if ok:
        value = float(value)
        ok = (0 < value if low_open else 0 <= value) and (value < 1 if high_open else value <= 1)
    if not ok:
        span = f"{'(' if low_open else '['}0, 1{')' if high_open else ']'}"
        raise ValueError(f"{cls_name}: argument `{arg}` must be in {span}, got {value!r}")
    return value


class Optimizer:
    """Base class. Subclasses declare ``_slot_names()`` and implement ``_update``."""

    def __init__(self, learning_rate, clipnorm=None, clipvalue=None, global_clipnorm=None, name=None,
                 weight_decay=None):
        cls = type(self).__name__
        self.name = name or cls.lower()
        self._learning_rate = self._check_lr(learning_rate)
        self.weight_decay = _opt_float(cls, "weight_decay", weight_decay)
        self.clipnorm = _opt_float(cls, "clipnorm", clipnorm)
        self.clipvalue = _opt_float(cls, "clipvalue", clipvalue)
        self.global_clipnorm = _opt_float(cls, "global_clipnorm", global_clipnorm)
        given = [k for k, v in (("clipnorm", clipnorm), ("clipvalue", clipvalue),
                                ("global_clipnorm", global_clipnorm)) if v is not None]
        if len(given) > 1:
            raise ValueError(f"{cls}: only one of `clipnorm`, `clipvalue` and `global_clipnorm` can be "
                             f"set; got {given}")
        self.iterations = 0
        self.built = False
        self.slots: dict[str, np.ndarray] = {}
        self._pending_state = None
        self.device: Device = default_device()

    def to(self, device) -> Optimizer:
        """Keep the slots on ``device`` (moved there when built; a model's compile and ``to`` call this)."""
        dev = get_device(device)
        if dev is not self.device:
            state = self.get_state() if self.built else None
            self.device = dev
            if self.built:
                self.build(dev.empty(self._n, self._dtype), self._segments)
                self.set_state(state)
        return self

    # ------------------------------------------------------------ learning rate
    def _check_lr(self, lr):
        if isinstance(lr, numbers.Real) and not isinstance(lr, bool):
            lr = float(lr)
            if not lr >= 0 or not math.isfinite(lr):
                raise ValueError(f"{type(self).__name__}: learning_rate must be >= 0, got {lr}")
            return lr
        if callable(lr):
            return lr
        raise ValueError(f"{type(self).__name__}: learning_rate must be a float or a schedule "
                         f"(callable step -> lr), got {lr!r}")

    @property
    def current_learning_rate(self) -> float:
        """The rate the next step uses: the schedule at ``iterations``, or the float."""
        lr = self._learning_rate
        return float(lr(self.iterations)) if callable(lr) else lr

    @property
    def learning_rate(self) -> float:
        """Like Keras: reads the current rate; setting a float replaces a float rate
        (TypeError when the optimizer was made with a schedule), setting a schedule replaces it."""
        return self.current_learning_rate

    @learning_rate.setter
    def learning_rate(self, value):
        if callable(value):
            self._learning_rate = value
            return
        if callable(self._learning_rate):
            raise TypeError(f"{type(self).__name__}: this optimizer was created with a learning-rate "
                            f"schedule, so its learning rate is not settable; create it with a float "
                            f"learning_rate to change the rate during training")
        self._learning_rate = self._check_lr(value)

    @property
    def settable_learning_rate(self) -> float | None:
        """The float learning rate (what ReduceLROnPlateau or a user may have set), or None
        when a schedule drives it: what a backup or a new MPI rank restores."""
        return None if callable(self._learning_rate) else float(self._learning_rate)

    # ------------------------------------------------------------------ build
    def _slot_names(self) -> list[str]:
        return []

    def _slot_initial_value(self, name: str) -> float:
        """The value slot ``name`` starts from (0 unless a subclass says otherwise)."""
        return 0.0

    def build(self, params_flat, segments=None):
        """Allocate the slots for ``params_flat`` (1-D, float32/float64).

        ``segments``: (offset, size) of each trainable variable, in Keras
        order; None means one variable covering the buffer. clipnorm clips
        each segment separately.
        """
        p = params_flat
        cls = type(self).__name__
        if not self.device.is_array(p) or p.ndim != 1 or p.dtype not in (np.float32, np.float64):
            raise ValueError(f"{cls}: params_flat must be a 1-D float32/float64 array, got "
                             f"{type(p).__name__} {getattr(p, 'shape', '')} {getattr(p, 'dtype', '')}")
        n = p.size
        if segments is None:
            segments = [(0, n)]
        segs = sorted((int(o), int(s)) for o, s in segments)
        bounds = [0]
        real = []  # True for a variable's segment, False for a gap between variables
        for off, size in segs:
            if size < 0 or off < bounds[-1] or off + size > n:
                raise ValueError(f"{cls}: segment (offset={off}, size={size}) overlaps another or lies "
                                 f"outside the buffer of {n} elements")
            if off > bounds[-1]:
                bounds.append(off)
                real.append(False)
            bounds.append(off + size)
            real.append(True)
        if bounds[-1] < n:
            bounds.append(n)
            real.append(False)
        if len(bounds) == 1:  # empty buffer
            bounds.append(0)
            real.append(False)
        self._n = n
        self._dtype = p.dtype
        self._segments = [(o, s) for o, s in segments]
        dev = self.device
        self._seg_real = np.asarray(real, bool)  # host: the clipping factors are computed there
        self._seg_bounds = dev.asarray(np.asarray(bounds, np.int64))
        self._seg_scales = dev.empty(len(real), p.dtype)
        self._seg_sumsq = dev.empty(len(real), np.float64)
        self._one_bounds = dev.asarray(np.asarray([0, n], np.int64))
        self._one_scale = dev.empty(1, p.dtype)
        self._one_sumsq = dev.empty(1, np.float64)
        self._one_value = None  # the gradient scale held in _one_scale
        self._dummy = dev.zeros(1, p.dtype)
        self.slots = {k: dev.full(n, v, p.dtype) if (v := self._slot_initial_value(k)) else dev.zeros(n, p.dtype)
                      for k in self._slot_names()}
        self.built = True
        if self._pending_state is not None:
            state, self._pending_state = self._pending_state, None
            self.set_state(state)

    # ------------------------------------------------------------------ apply
    def apply(self, params_flat, grads_flat, grad_scale=1.0):
        """One step, in place on ``params_flat`` and the slots; ``grads_flat`` is only read.

        The gradient used is grads_flat * grad_scale (then clipped); builds on
        first use with one segment when build was not called.
        """
        if not self.built:
            self.build(params_flat)
        cls = type(self).__name__
        if params_flat.shape != (self._n,) or params_flat.dtype != self._dtype:
            raise ValueError(f"{cls}: built for {self._n} {self._dtype} parameters, got "
                             f"{params_flat.shape} {params_flat.dtype}")
        if grads_flat.shape != params_flat.shape or grads_flat.dtype != params_flat.dtype:
            raise ValueError(f"{cls}: grads_flat {grads_flat.shape} {grads_flat.dtype} does not match "
                             f"params_flat {params_flat.shape} {params_flat.dtype}")
        dev = self.device
        kern = dev.kernels("optim")
        lr = self.current_learning_rate
        scale = float(grad_scale)
        if self.clipnorm:
            # Keras: g * clipnorm / max(||g||, clipnorm), per variable
            kern.segment_sumsq(grads_flat, self._seg_bounds, self._seg_sumsq)
            norms = np.sqrt(dev.to_host(self._seg_sumsq)) * abs(scale)
            with np.errstate(invalid="ignore", divide="ignore"):
                factor = np.where(self._seg_real, self.clipnorm / np.maximum(norms, self.clipnorm), 1.0)
            dev.assign(self._seg_scales, scale * factor)
            bounds, scales = self._seg_bounds, self._seg_scales
        else:
            factor = 1.0
            if self.global_clipnorm:
                kern.segment_sumsq(grads_flat, self._one_bounds, self._one_sumsq)
                norm = math.sqrt(float(dev.to_host(self._one_sumsq)[0])) * abs(scale)
                c = self.global_clipnorm
                # Keras: c * min(1 / norm, 1 / c), and NaN when the norm is not finite
                factor = (c * min(1.0 / norm, 1.0 / c) if norm > 0 else 1.0) if math.isfinite(norm) else math.nan
            value = scale * factor
            if value != self._one_value:  # one small write to the device, only when it changes
                dev.assign(self._one_scale, np.full(1, value))
                self._one_value = value
            bounds, scales = self._one_bounds, self._one_scale
        t = self._dtype.type
        use_cv = bool(self.clipvalue)
        cv = t(self.clipvalue or 0.0)
        use_wd = bool(self.weight_decay)
        wd_lr = t((self.weight_decay or 0.0) * lr)
        self._update(kern, params_flat, grads_flat, bounds, scales, use_cv, cv, use_wd, wd_lr, lr, t)
        self.iterations += 1

    def _update(self, kern, p, g, bounds, scales, use_cv, cv, use_wd, wd_lr, lr, t):
        raise NotImplementedError(f"{type(self).__name__} does not implement its update")

    # ------------------------------------------------------------------ state
    def get_state(self) -> dict:
        """Copies of the slots (Keras names) and ``iterations``."""
        state = {k: np.array(self.device.to_host(v), copy=True) for k, v in self.slots.items()}
        state["iterations"] = np.array(self.iterations, np.int64)
        return state

    def set_state(self, state: dict) -> None:
        """Restore get_state()'s dict (before build it is kept and applied by build)."""
        if not self.built:
            self._pending_state = dict(state)
            if "iterations" in state:
                self.iterations = int(np.asarray(state["iterations"]))
            return
        cls = type(self).__name__
        unknown = set(state) - set(self.slots) - {"iterations"}
        missing = set(self.slots) - set(state)
        if unknown or missing:
            raise ValueError(f"{cls}: optimizer state has slots {sorted(set(state) - {'iterations'})}, "
                             f"expected {sorted(self.slots)}")
        for k, arr in self.slots.items():
            src = np.asarray(state[k])
            if src.size != arr.size:
                raise ValueError(f"{cls}: slot {k!r} has {src.size} elements, expected {arr.size}")
            self.device.assign(arr, src.reshape(-1))
        if "iterations" in state:
            self.iterations = int(np.asarray(state["iterations"]))

    # ----------------------------------------------------------------- config
    def get_config(self) -> dict:
        lr = self._learning_rate
        return {"name": self.name,
                "learning_rate": schedules_module.serialize(lr) if callable(lr) else lr,
                "weight_decay": self.weight_decay, "clipnorm": self.clipnorm,
                "global_clipnorm": self.global_clipnorm, "clipvalue": self.clipvalue}

    @classmethod
    def from_config(cls, cfg, custom_objects=None):
        cfg = dict(cfg)
        lr = cfg.get("learning_rate")
        if isinstance(lr, dict):
            cfg["learning_rate"] = schedules_module.deserialize(lr, custom_objects)
        return cls(**cfg)

    def __repr__(self):
        return f"<{type(self).__name__} name={self.name!r} learning_rate={self._learning_rate!r}>"


class SGD(Optimizer):
    """Gradient descent with optional (Nesterov) momentum, Keras 3 form:
    m = momentum * m - lr * g; p += m (nesterov: p += momentum * m - lr * g)."""

    def __init__(self, learning_rate=0.01, momentum=0.0, nesterov=False, weight_decay=None, clipnorm=None,
                 clipvalue=None, global_clipnorm=None, name="SGD"):
        super().__init__(learning_rate, clipnorm=clipnorm, clipvalue=clipvalue,
                         global_clipnorm=global_clipnorm, name=name, weight_decay=weight_decay)
        momentum = _opt_float("SGD", "momentum", momentum, allow_none=False)
        if momentum > 1:
            raise ValueError(f"SGD: argument `momentum` must be in [0, 1], got {momentum}")
        self.momentum = momentum
        self.nesterov = bool(nesterov)

    def _slot_names(self):
        return ["momentum"] if self.momentum != 0 else []

    def _update(self, kern, p, g, bounds, scales, use_cv, cv, use_wd, wd_lr, lr, t):
        m = self.slots.get("momentum", self._dummy)
        kern.sgd_step(p, g, bounds, scales, use_cv, cv, use_wd, wd_lr, t(lr), t(self.momentum),
                      self.nesterov, m)

    def get_config(self):
        return {**super().get_config(), "momentum": self.momentum, "nesterov": self.nesterov}


class Adam(Optimizer):
    """Adam, Keras 3 form: alpha = lr * sqrt(1 - b2^t) / (1 - b1^t);
    p -= alpha * m / (sqrt(v) + epsilon) (epsilon outside the bias correction)."""

    def __init__(self, learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-7, amsgrad=False,
                 weight_decay=None, clipnorm=None, clipvalue=None, global_clipnorm=None, name="adam"):
        super().__init__(learning_rate, clipnorm=clipnorm, clipvalue=clipvalue,
                         global_clipnorm=global_clipnorm, name=name, weight_decay=weight_decay)
        cls = type(self).__name__
        self.beta_1 = _opt_unit(cls, "beta_1", beta_1)
        self.beta_2 = _opt_unit(cls, "beta_2", beta_2)
        self.epsilon = _opt_float(cls, "epsilon", epsilon, allow_none=False)
        self.amsgrad = bool(amsgrad)

    def _slot_names(self):
        return ["momentum", "velocity"] + (["velocity_hat"] if self.amsgrad else [])

    def _update(self, kern, p, g, bounds, scales, use_cv, cv, use_wd, wd_lr, lr, t):
        step = self.iterations + 1
        alpha = lr * math.sqrt(1.0 - self.beta_2 ** step) / (1.0 - self.beta_1 ** step)
        vhat = self.slots.get("velocity_hat", self._dummy)
        kern.adam_step(p, g, bounds, scales, use_cv, cv, use_wd, wd_lr, t(alpha), t(1.0 - self.beta_1),
                       t(1.0 - self.beta_2), t(self.epsilon), self.amsgrad, self.slots["momentum"],
                       self.slots["velocity"], vhat)

    def get_config(self):
        return {**super().get_config(), "beta_1": self.beta_1, "beta_2": self.beta_2,
                "epsilon": self.epsilon, "amsgrad": self.amsgrad}


class AdamW(Adam):
    """Adam with decoupled weight decay (Keras 3): p -= p * weight_decay * lr, then the Adam step."""

    def __init__(self, learning_rate=0.001, weight_decay=0.004, beta_1=0.9, beta_2=0.999, epsilon=1e-7,
                 amsgrad=False, clipnorm=None, clipvalue=None, global_clipnorm=None, name="adamw"):
        if weight_decay is None:
            raise ValueError("AdamW: argument `weight_decay` must be a float, got None")
        super().__init__(learning_rate, beta_1=beta_1, beta_2=beta_2, epsilon=epsilon, amsgrad=amsgrad,
                         weight_decay=weight_decay, clipnorm=clipnorm, clipvalue=clipvalue,
                         global_clipnorm=global_clipnorm, name=name)


class RMSprop(Optimizer):
    """RMSprop, Keras 3 form: v = rho v + (1 - rho) g^2; inc = lr g / sqrt(v + epsilon)
    (centered: sqrt(v - a^2 + epsilon)); with momentum: m = momentum m + inc, p -= m."""

    def __init__(self, learning_rate=0.001, rho=0.9, momentum=0.0, epsilon=1e-7, centered=False,
                 weight_decay=None, clipnorm=None, clipvalue=None, global_clipnorm=None, name="rmsprop"):
        super().__init__(learning_rate, clipnorm=clipnorm, clipvalue=clipvalue,
                         global_clipnorm=global_clipnorm, name=name, weight_decay=weight_decay)
        self.rho = _opt_unit("RMSprop", "rho", rho)
        self.momentum = _opt_float("RMSprop", "momentum", momentum, allow_none=False)
        self.epsilon = _opt_float("RMSprop", "epsilon", epsilon, allow_none=False)
        self.centered = bool(centered)

    def _slot_names(self):
        return (["velocity"] + (["momentum"] if self.momentum > 0 else [])
                + (["average_gradient"] if self.centered else []))

    def _update(self, kern, p, g, bounds, scales, use_cv, cv, use_wd, wd_lr, lr, t):
        kern.rmsprop_step(p, g, bounds, scales, use_cv, cv, use_wd, wd_lr, t(lr), t(self.rho),
                          t(1.0 - self.rho), t(self.momentum), t(self.epsilon), self.centered,
                          self.slots["velocity"], self.slots.get("momentum", self._dummy),
                          self.slots.get("average_gradient", self._dummy))

    def get_config(self):
        return {**super().get_config(), "rho": self.rho, "momentum": self.momentum,
                "epsilon": self.epsilon, "centered": self.centered}


class Nadam(Optimizer):
    """Nadam, Keras 3 form: Adam's m and v with Nesterov momentum through the momentum-cache
    schedule u_t = beta_1 (1 - 0.5 * 0.96^t):
    m_hat = u_{t+1} m / (1 - u_1...u_{t+1}) + (1 - u_t) g / (1 - u_1...u_t), v_hat = v / (1 - beta_2^t),
    p -= lr * m_hat / (sqrt(v_hat) + epsilon)."""

    def __init__(self, learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-7, weight_decay=None,
                 clipnorm=None, clipvalue=None, global_clipnorm=None, name="nadam"):
        super().__init__(learning_rate, clipnorm=clipnorm, clipvalue=clipvalue,
                         global_clipnorm=global_clipnorm, name=name, weight_decay=weight_decay)
        self.beta_1 = _opt_unit("Nadam", "beta_1", beta_1)
        self.beta_2 = _opt_unit("Nadam", "beta_2", beta_2)
        self.epsilon = _opt_float("Nadam", "epsilon", epsilon, allow_none=False)
        self._u_product = (0, 1.0)  # (step t, u_1 * ... * u_t), a function of the step count only

    def _u(self, step):
        return self.beta_1 * (1.0 - 0.5 * 0.96 ** step)

    def _u_product_at(self, step):
        k, prod = self._u_product
        if k > step:  # iterations went back (set_state): start over
            k, prod = 0, 1.0
        while k < step:
            k += 1
            prod *= self._u(k)
        self._u_product = (k, prod)
        return prod

    def _slot_names(self):
        return ["momentum", "velocity"]

    def _update(self, kern, p, g, bounds, scales, use_cv, cv, use_wd, wd_lr, lr, t):
        step = self.iterations + 1
        u_t, u_next = self._u(step), self._u(step + 1)
        prod = self._u_product_at(step)
        m_coef = u_next / (1.0 - prod * u_next)
        g_coef = (1.0 - u_t) / (1.0 - prod)
        v_coef = 1.0 / (1.0 - self.beta_2 ** step)
        kern.nadam_step(p, g, bounds, scales, use_cv, cv, use_wd, wd_lr, t(lr), t(1.0 - self.beta_1),
                        t(1.0 - self.beta_2), t(m_coef), t(g_coef), t(v_coef), t(self.epsilon),
                        self.slots["momentum"], self.slots["velocity"])

    def get_config(self):
        return {**super().get_config(), "beta_1": self.beta_1, "beta_2": self.beta_2, "epsilon": self.epsilon}


class Adagrad(Optimizer):
    """Adagrad, Keras 3 form: accumulator (starting at initial_accumulator_value) += g^2;
    p -= lr * g / sqrt(accumulator + epsilon)."""

    def __init__(self, learning_rate=0.001, initial_accumulator_value=0.1, epsilon=1e-7, weight_decay=None,
                 clipnorm=None, clipvalue=None, global_clipnorm=None, name="adagrad"):
        super().__init__(learning_rate, clipnorm=clipnorm, clipvalue=clipvalue,
                         global_clipnorm=global_clipnorm, name=name, weight_decay=weight_decay)
        self.initial_accumulator_value = _opt_float("Adagrad", "initial_accumulator_value",
                                                    initial_accumulator_value, allow_none=False)
        self.epsilon = _opt_float("Adagrad", "epsilon", epsilon, allow_none=False)

    def _slot_names(self):
        return ["accumulator"]

    def _slot_initial_value(self, name):
        return self.initial_accumulator_value

    def _update(self, kern, p, g, bounds, scales, use_cv, cv, use_wd, wd_lr, lr, t):
        kern.adagrad_step(p, g, bounds, scales, use_cv, cv, use_wd, wd_lr, t(lr), t(self.epsilon),
                          self.slots["accumulator"])

    def get_config(self):
        return {**super().get_config(), "initial_accumulator_value": self.initial_accumulator_value,
                "epsilon": self.epsilon}


class Adadelta(Optimizer):
    """Adadelta, Keras 3 form: a_g = rho a_g + (1 - rho) g^2;
    d = -sqrt(a_d + epsilon) g / sqrt(a_g + epsilon); a_d = rho a_d + (1 - rho) d^2; p += lr * d."""

    def __init__(self, learning_rate=0.001, rho=0.95, epsilon=1e-7, weight_decay=None, clipnorm=None,
                 clipvalue=None, global_clipnorm=None, name="adadelta"):
        super().__init__(learning_rate, clipnorm=clipnorm, clipvalue=clipvalue,
                         global_clipnorm=global_clipnorm, name=name, weight_decay=weight_decay)
        self.rho = _opt_unit("Adadelta", "rho", rho, high_open=False)
        self.epsilon = _opt_float("Adadelta", "epsilon", epsilon, allow_none=False)

    def _slot_names(self):
        return ["accumulated_grad", "accumulated_delta_var"]

    def _update(self, kern, p, g, bounds, scales, use_cv, cv, use_wd, wd_lr, lr, t):
        kern.adadelta_step(p, g, bounds, scales, use_cv, cv, use_wd, wd_lr, t(lr), t(self.rho), t(1.0 - self.rho),
                           t(self.epsilon), self.slots["accumulated_grad"], self.slots["accumulated_delta_var"])

    def get_config(self):
        return {**super().get_config(), "rho": self.rho, "epsilon": self.epsilon}


class Adamax(Optimizer):
    """Adamax, Keras 3 form (Adam with the infinity norm): m += (g - m)(1 - beta_1);
    u = max(beta_2 u, |g|); p -= lr * m / ((1 - beta_1^t) (u + epsilon))."""

    def __init__(self, learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-7, weight_decay=None,
                 clipnorm=None, clipvalue=None, global_clipnorm=None, name="adamax"):
        super().__init__(learning_rate, clipnorm=clipnorm, clipvalue=clipvalue,
                         global_clipnorm=global_clipnorm, name=name, weight_decay=weight_decay)
        self.beta_1 = _opt_unit("Adamax", "beta_1", beta_1)
        self.beta_2 = _opt_unit("Adamax", "beta_2", beta_2, high_open=False)
        self.epsilon = _opt_float("Adamax", "epsilon", epsilon, allow_none=False)

    def _slot_names(self):
        return ["momentum", "norm"]

    def _update(self, kern, p, g, bounds, scales, use_cv, cv, use_wd, wd_lr, lr, t):
        alpha = lr / (1.0 - self.beta_1 ** (self.iterations + 1))
        kern.adamax_step(p, g, bounds, scales, use_cv, cv, use_wd, wd_lr, t(alpha), t(1.0 - self.beta_1),
                         t(self.beta_2), t(self.epsilon), self.slots["momentum"], self.slots["norm"])

    def get_config(self):
        return {**super().get_config(), "beta_1": self.beta_1, "beta_2": self.beta_2, "epsilon": self.epsilon}


class Lion(Optimizer):
    """Lion, Keras 3 form: p -= lr * sign(beta_1 m + (1 - beta_1) g); m = beta_2 m + (1 - beta_2) g.
    beta_1 must be in (0, 1] (Keras: 0 would make it SignSGD)."""

    def __init__(self, learning_rate=0.001, beta_1=0.9, beta_2=0.99, weight_decay=None, clipnorm=None,
                 clipvalue=None, global_clipnorm=None, name="lion"):
        super().__init__(learning_rate, clipnorm=clipnorm, clipvalue=clipvalue,
                         global_clipnorm=global_clipnorm, name=name, weight_decay=weight_decay)
        self.beta_1 = _opt_unit("Lion", "beta_1", beta_1, low_open=True, high_open=False)
        self.beta_2 = _opt_unit("Lion", "beta_2", beta_2, high_open=False)

    def _slot_names(self):
        return ["momentum"]

    def _update(self, kern, p, g, bounds, scales, use_cv, cv, use_wd, wd_lr, lr, t):
        kern.lion_step(p, g, bounds, scales, use_cv, cv, use_wd, wd_lr, t(lr), t(self.beta_1), t(1.0 - self.beta_1),
                       t(self.beta_2), t(1.0 - self.beta_2), self.slots["momentum"])

    def get_config(self):
        return {**super().get_config(), "beta_1": self.beta_1, "beta_2": self.beta_2}


_ALL = (SGD, Adam, AdamW, RMSprop, Nadam, Adagrad, Adadelta, Adamax, Lion)
_BY_NAME = {c.__name__.lower(): c for c in _ALL}
_CLASSES = {c.__name__: c for c in _ALL}


def get(identifier) -> Optimizer:
    """An optimizer from a name ("sgd", "adam", "adamw", "rmsprop", "nadam", "adagrad", "adadelta",
    "adamax", "lion", case-insensitive; Keras defaults), a serialize() dict, or an Optimizer instance
    (returned as is)."""
    if isinstance(identifier, Optimizer):
        return identifier
    if isinstance(identifier, str):
        cls = _BY_NAME.get(identifier.lower())
        if cls is not None:
            return cls()
    elif isinstance(identifier, dict):
        return deserialize(identifier)
    raise ValueError(f"Unknown optimizer {identifier!r}: argument `optimizer` must be one of "
                     f"{sorted(_BY_NAME)} or a nbmodel.optimizers.Optimizer instance")


def serialize(optimizer: Optimizer) -> dict:
    return {"class_name": type(optimizer).__name__, "config": optimizer.get_config()}


def _subclasses(cls):
    for sub in cls.__subclasses__():
        yield sub
        yield from _subclasses(sub)


def deserialize(cfg: dict, custom_objects=None) -> Optimizer:
    classes = {**_CLASSES, **{c.__name__: c for c in _subclasses(Optimizer)}, **(custom_objects or {})}
    cls = classes.get(cfg.get("class_name"))
    if cls is None:
        raise ValueError(f"optimizer: unknown optimizer class {cfg.get('class_name')!r}; "
                         f"known: {sorted(_CLASSES)}")
    return cls.from_config(dict(cfg.get("config", {})), custom_objects)
