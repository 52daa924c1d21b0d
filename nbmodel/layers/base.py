"""The layer contract, symbolic tensors for the functional API, and Input.

A layer is a small class with explicit forward and backward (no autograd tape):

    layer.build(input_shape)            create params (initializers + the layer's RNG)
    layer.compute_output_shape(shape)   shape inference, batch dimension as None
    y = layer.forward(x, training)      keeps what backward needs on self
    dx = layer.backward(dy)             after forward(training=True); writes layer.grads

``params`` (trainable) and ``grads`` share keys and shapes; ``state`` holds
non-trainable arrays (moving statistics). Keys and their order are the Keras
names and the Keras ``get_weights`` order. Multi-input layers take and return
tuples. Layers never import numba: kernels come from ``self.kernels(family)``,
and every array a layer keeps (params, grads, state, workspaces) is allocated
through ``self.device``, so the same layer runs on any registered device.

Kernels writing params' gradients in place (into the arrays of ``grads``)
matters: a Model packs every param and grad into one flat buffer (one optimizer
kernel, one allreduce) and the arrays in ``params``/``grads`` are views into it.
A layer that rebinds ``self.grads[k]`` to a new array still works (the model
copies it back) but costs a copy.
"""
from __future__ import annotations

import functools
import inspect
import itertools
import re

import numpy as np

from .. import config, initializers
from ..backend import Device, default_device, get_device

_uid = itertools.count()
_name_counts: dict[str, itertools.count] = {}


def _auto_name(cls_name: str) -> str:
    # Keras style: LSTM -> lstm, SimpleRNN -> simple_rnn, Conv2D -> conv2d, MultiHeadAttention -> multi_head_attention
    base = re.sub(r"(?<=[a-z])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", cls_name).lower()
    counter = _name_counts.setdefault(base, itertools.count())
    n = next(counter)
    return base if n == 0 else f"{base}_{n}"


def reset_names() -> None:
    """Restart automatic layer naming (dense, dense_1, ...)."""
    _name_counts.clear()


class KTensor:
    """A symbolic tensor of the functional API: a shape (batch as None) and the
    node that produces it."""

    def __init__(self, shape, dtype, node=None, index=0):
        self.shape = tuple(shape)
        self.dtype = np.dtype(dtype)
        self.node = node          # Node that produced it; None for an Input
        self.index = index        # which output of that node
        self.id = next(_uid)

    @property
    def ndim(self):
        return len(self.shape)

    def __repr__(self):
        src = self.node.layer.name if self.node is not None else "input"
        return f"<KTensor shape={self.shape} dtype={self.dtype.name} from {src}>"


class Node:
    """One call of a layer on symbolic inputs."""

    def __init__(self, layer, inputs, outputs, kwargs):
        self.layer = layer
        self.inputs = list(inputs)
        self.outputs = list(outputs)
        self.kwargs = dict(kwargs)
        self.nested = len(self.inputs) > 1


class Layer:
    """Base class of every layer; subclass it to write your own (see docs/kernels.md).

    ``weight_options`` maps a Keras argument prefix to the param it governs, or a
    tuple of them (Dense: ``{"kernel": "kernel", "bias": "bias"}``): the layer then takes
    ``<prefix>_regularizer`` and ``<prefix>_constraint``. Every layer takes
    ``activity_regularizer`` (a penalty on its output)."""

    weight_options: dict[str, str | tuple[str, ...]] = {}
    # Keras masking: a layer that keeps the time axis as it is passes its input's
    # mask on (compute_mask); a layer whose forward takes ``mask=`` also reads it
    supports_masking: bool = False

    def __init__(self, name=None, dtype=None, trainable=True, input_shape=None, seed=None,
                 activity_regularizer=None, **kwargs):
        from .. import constraints, regularizers

        self.name = name or _auto_name(type(self).__name__)
        # param key -> Regularizer / Constraint, and the arguments as given (get_config)
        self.weight_regularizers: dict = {}
        self.weight_constraints: dict = {}
        self._option_args: dict = {}
        for prefix, keys in self.weight_options.items():
            for kind, mod, table in (("regularizer", regularizers, self.weight_regularizers),
                                     ("constraint", constraints, self.weight_constraints)):
                arg = f"{prefix}_{kind}"
                value = mod.get(kwargs.pop(arg, None), f"{self.name}: {arg}")
                self._option_args[arg] = value
                if value is not None:
                    table.update({key: value for key in ((keys,) if isinstance(keys, str) else keys)})
        self.activity_regularizer = regularizers.get(activity_regularizer, f"{self.name}: activity_regularizer")
        if kwargs:
            raise TypeError(f"{type(self).__name__}: unexpected keyword arguments {sorted(kwargs)}")
        self.dtype = config.standardize_dtype(dtype)
        self._dtype_given = dtype is not None
        self.trainable = trainable
        self.input_shape_arg = None if input_shape is None else tuple(input_shape)
        self.seed = seed
        self.params: dict[str, np.ndarray] = {}
        self.grads: dict[str, np.ndarray] = {}
        self.state: dict[str, np.ndarray] = {}
        self.built = False
        self.built_input_shape = None
        self.device: Device = default_device()  # a model sets its own with Layer.to
        # False when the layer's input is a model input: backward may then skip
        # computing dx (and return None), e.g. one GEMM less in the first Dense.
        self.input_grad_needed = True
        self.rng = initializers.layer_rng(seed)
        self._nodes: list[Node] = []

    # ----------------------------------------------------------------- contract
    def build(self, input_shape) -> None:
        """Create params for ``input_shape`` (batch dimension included, may be None)."""
        self.built_input_shape = input_shape
        self.built = True

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def forward(self, x, training=False):
        raise NotImplementedError(f"{type(self).__name__} does not implement forward")

    def backward(self, dy):
        raise NotImplementedError(f"{type(self).__name__} does not implement backward")

    def compute_mask(self, inputs, mask=None):
        """The mask of the output for input mask ``mask`` (None: no mask), as Keras 3:
        the input's mask when the layer ``supports_masking``, else none. Masks are
        host NumPy bool arrays, (batch, time) for sequences; several inputs or
        outputs: a list, one entry (or None) each."""
        return mask if self.supports_masking else None

    def creates_mask(self) -> bool:
        """Whether the output can carry a mask when the input carries none (Embedding with
        mask_zero, Masking)."""
        return False

    def takes_mask(self) -> bool:
        """Whether ``forward`` reads a ``mask=`` argument (the graph passes the input's mask).
        Asked per masked node and step: the signature is read once per function."""
        return _has_mask_parameter(vars(self).get("forward") or type(self).forward)

    # ------------------------------------------------------------------ helpers
    def kernels(self, family: str):
        """Kernel module of ``family`` on this layer's device."""
        try:
            return self.device.kernels(family)
        except NotImplementedError as e:  # a family without a twin on this device: say which layer needs it
            raise NotImplementedError(f"{self.name} ({type(self).__name__}): {e}") from None

    def add_param(self, name, shape, initializer, dtype=None):
        """Create a trainable param (and its zero grad) with the layer's RNG."""
        init = initializers.get(initializer, self.name)
        value = self.device.asarray(init(tuple(shape), dtype or self.dtype, self.rng))
        self.params[name] = value
        self.grads[name] = self.device.zeros(value.shape, value.dtype)
        self.__dict__.setdefault("_inits", {})[name] = init
        return value

    def add_state(self, name, shape, initializer):
        init = initializers.get(initializer, self.name)
        value = self.device.asarray(init(tuple(shape), self.dtype, self.rng))
        self.state[name] = value
        self.__dict__.setdefault("_inits", {})[name] = init
        return value

    def to(self, device) -> Layer:
        """Move params, grads and state (and the sub-layers') to ``device``.

        Workspaces and the cache of the last forward pass are dropped: run
        forward again before backward."""
        dev = get_device(device)
        if dev is not self.device:
            old = self.device
            for d in (self.params, self.grads, self.state):
                for k in list(d):
                    d[k] = dev.asarray(old.to_host(d[k]))
            self.device = dev
            self.clear_workspaces()
        for sub in self.sublayers():
            sub.to(dev)
        return self

    def asarray(self, x, dtype=None):
        """``x`` as a C-contiguous array of ``dtype`` (default: the layer's) on the layer's device."""
        return self.device.asarray(x, self.dtype if dtype is None else dtype)

    def reinitialize(self, rng) -> None:
        """Draw every param and state again from ``rng`` (in place), then the
        sublayers' from child generators. Model(seed=...) uses it so that the
        same seed gives bit-identical weights."""
        self.rng = rng
        inits = self.__dict__.get("_inits", {})
        for d in (self.params, self.state):
            for name, arr in d.items():
                if name in inits:
                    self.device.assign(arr, inits[name](tuple(arr.shape), arr.dtype, rng))
        for i, sub in enumerate(self.sublayers()):
            sub.reinitialize(np.random.default_rng(rng.integers(2**63)))

    def ensure_built(self, input_shape):
        if not self.built:
            self.build(input_shape)

    def check_input(self, x, ndim=None, min_ndim=None, last_dim=None, what="input"):
        """Validate one input array; raise an error that names this layer.

        Returns ``x`` as a C-contiguous array of this layer's dtype.
        """
        x = as_float_array(x, self.name, self.dtype, what, self.device)
        if ndim is not None and x.ndim != ndim:
            raise ValueError(f"{self.name}: expected {what} of rank {ndim}, got shape {x.shape}")
        if min_ndim is not None and x.ndim < min_ndim:
            raise ValueError(f"{self.name}: expected {what} of rank >= {min_ndim}, got shape {x.shape}")
        if last_dim is not None and x.shape[-1] != last_dim:
            raise ValueError(f"{self.name}: expected {what} with last dimension {last_dim}, "
                             f"got shape {x.shape}")
        if check_finite_enabled() and not self.device.all_finite(x):
            raise ValueError(f"{self.name}: {what} contains NaN or infinity")
        return x

    def workspace(self, key, shape, dtype=None):
        """A reusable uninitialized array on the layer's device: allocated once
        per (key, shape, dtype), then reused."""
        ws = self.__dict__.setdefault("_workspaces", {})
        shape = tuple(int(s) for s in shape)
        arr = ws.get(key)
        if arr is None or arr.shape != shape or (dtype is not None and arr.dtype != dtype):
            arr = self.device.empty(shape, dtype or self.dtype)
            ws[key] = arr
        return arr

    def scratch(self, key, shape, dtype=None):
        """Workspace handed to kernel launchers (``scratch=`` in the kernel
        contract); its keys never clash with the layer's own workspaces."""
        return self.workspace(("scratch", key), shape, dtype)

    def constant(self, key, shape, value, dtype=None):
        """A workspace filled with ``value`` once (kernels only read it, e.g. a zero bias)."""
        ws = self.__dict__.setdefault("_workspaces", {})
        shape = tuple(int(s) for s in shape)
        dt = np.dtype(dtype or self.dtype)
        arr = ws.get(("constant", key))
        if arr is None or arr.shape != shape or arr.dtype != dt:
            arr = ws[("constant", key)] = self.device.full(shape, value, dt)
        return arr

    def clear_workspaces(self):
        """Drop the workspaces and, for a shared layer, every call's saved cache (graph._CallState)."""
        for key in ("_workspaces", "_call_contexts", "_call_keys"):
            self.__dict__.pop(key, None)

    def cast(self, dtype):
        """Convert params, grads and state to ``dtype`` (used by gradcheck)."""
        dt = config.standardize_dtype(dtype)
        self.dtype = dt
        for d in (self.params, self.grads, self.state):
            for k in list(d):
                d[k] = self.device.asarray(d[k], dt)
        self.clear_workspaces()
        for sub in self.sublayers():
            sub.cast(dt)
        return self

    def bind_param(self, name, param, grad) -> None:
        """Make ``param``/``grad`` (views into a model's flat buffers, already
        holding the current values) the arrays behind ``params[name]`` and
        ``grads[name]``. Composite layers override this to reach the sub-layer
        that owns the array."""
        self.params[name] = param
        self.grads[name] = grad

    def sublayers(self) -> list[Layer]:
        """Layers owned by a composite layer (TransformerEncoder, Bidirectional)."""
        return []

    # ------------------------------------------------------------- weights I/O
    def weight_arrays(self) -> list[np.ndarray]:
        """Arrays in Keras ``get_weights`` order: params, then state."""
        return list(self.params.values()) + list(self.state.values())

    def get_weights(self) -> list[np.ndarray]:
        """Copies of ``weight_arrays()`` as NumPy arrays."""
        return [np.array(self.device.to_host(w), copy=True) for w in self.weight_arrays()]

    def set_weights(self, weights) -> None:
        own = self.weight_arrays()
        if len(weights) != len(own):
            raise ValueError(f"{self.name}: expected {len(own)} weight arrays, got {len(weights)}")
        for i, (dst, src) in enumerate(zip(own, weights)):
            src = np.asarray(src)
            if src.shape != dst.shape:
                raise ValueError(f"{self.name}: weight {i} has shape {src.shape}, expected {dst.shape}")
            self.device.assign(dst, src)  # in place: params may be views into a model's flat buffer

    def count_params(self) -> int:
        return int(sum(p.size for p in self.params.values()) + sum(s.size for s in self.state.values()))

    def get_config(self) -> dict:
        """Constructor arguments that rebuild this layer (saved with the model)."""
        cfg = {"name": self.name, "trainable": self.trainable}
        if self._dtype_given:
            cfg["dtype"] = self.dtype.name
        if self.input_shape_arg is not None:
            cfg["input_shape"] = list(self.input_shape_arg)
        if self.seed is not None:
            cfg["seed"] = self.seed
        from .. import constraints, regularizers

        for arg, value in self.__dict__.get("_option_args", {}).items():
            if value is not None:
                mod = regularizers if arg.endswith("_regularizer") else constraints
                cfg[arg] = mod.serialize(value)
        if getattr(self, "activity_regularizer", None) is not None:
            cfg["activity_regularizer"] = regularizers.serialize(self.activity_regularizer)
        return cfg

    @classmethod
    def from_config(cls, cfg):
        return cls(**cfg)

    # --------------------------------------------------------- functional API
    def __call__(self, *args, **kwargs):
        first = args[0] if args else None
        flat = list(first) if isinstance(first, (list, tuple)) else [first]
        flat += [a for a in args[1:]]
        if any(isinstance(t, KTensor) for t in flat):
            return self._symbolic_call(args, kwargs)
        # eager call on arrays, like Keras: build on first use, inference mode
        x = first if len(args) == 1 else tuple(args)
        if not self.built:
            self.build(shape_of(x))
        training = kwargs.pop("training", False)
        return self.forward(x, training=training, **kwargs)

    def _symbolic_call(self, args, kwargs):
        if len(args) == 1:
            inputs = args[0]
        else:
            inputs = tuple(args)
        multi = isinstance(inputs, (list, tuple))
        tensors = list(inputs) if multi else [inputs]
        for t in tensors:
            if not isinstance(t, KTensor):
                raise TypeError(f"{self.name}: mixed symbolic and concrete inputs")
        shapes = tuple(t.shape for t in tensors) if multi else tensors[0].shape
        if self.built:
            self.validate_build_shape(shapes)
        else:
            self.build(shapes)
        out_shape = self.compute_output_shape(shapes)
        node = Node(self, tensors, [], kwargs)
        node.nested = multi  # called with a list/tuple: forward gets a tuple
        if isinstance(out_shape, list):  # several outputs
            outs = [KTensor(s, self.dtype, node, i) for i, s in enumerate(out_shape)]
            node.outputs = outs
            self._nodes.append(node)
            return outs
        out = KTensor(out_shape, self.dtype, node, 0)
        node.outputs = [out]
        self._nodes.append(node)
        return out

    def validate_build_shape(self, shapes):
        """Called when a built layer is called again on symbolic inputs (a shared
        layer, Keras semantics): each input keeps its rank and its last (feature)
        dimension; other dimensions (time, image size) may differ."""
        if self.built_input_shape is None:
            return
        built, new = _shape_list(self.built_input_shape), _shape_list(shapes)
        ok = len(built) == len(new) and all(
            len(a) == len(b) and (not a or a[-1] is None or b[-1] is None or a[-1] == b[-1])
            for a, b in zip(built, new))
        if not ok:
            raise ValueError(f"{self.name}: built for input shape {self.built_input_shape}, called on "
                             f"incompatible shape {shapes} (each call of a shared layer needs inputs of "
                             "the same rank and last dimension)")

    def integer_input(self, index: int = 0) -> bool:
        """Whether input ``index`` takes integer ids (Embedding). A model input
        whose dtype was not given and that feeds only such inputs is made an
        integer input, as Keras casts whole-number ids."""
        return False

    def __repr__(self):
        return f"<{type(self).__name__} name={self.name!r}>"


def _shape_list(shapes) -> list[tuple]:
    """One shape, or a tuple of shapes, as a list of shapes."""
    if isinstance(shapes, (tuple, list)) and shapes and isinstance(shapes[0], (tuple, list)):
        return [tuple(s) for s in shapes]
    return [tuple(shapes)]


def shape_of(x):
    if isinstance(x, (list, tuple)):
        return tuple(tuple(np.shape(a)) for a in x)
    return tuple(np.shape(x))


_CHECK_FINITE = [True]


def check_finite_enabled() -> bool:
    return _CHECK_FINITE[0]


class finite_checks:
    """Context manager that turns the per-layer NaN/inf input check on or off.

    Model.fit validates the whole data set once, then runs its layers with the
    check off so that a training step does not rescan every activation.
    """

    def __init__(self, enabled: bool):
        self.enabled = enabled

    def __enter__(self):
        self.prev = _CHECK_FINITE[0]
        _CHECK_FINITE[0] = self.enabled

    def __exit__(self, *exc):
        _CHECK_FINITE[0] = self.prev


_GRADS_IN_INFERENCE = [False]


def keeps_backward_cache(training) -> bool:
    """Whether forward must keep what backward needs: in training, and in
    inference while ``inference_gradients`` is on (saliency, input gradients)."""
    return bool(training) or _GRADS_IN_INFERENCE[0]


class inference_gradients:
    """Context manager: inference-mode forward passes (no dropout, moving
    statistics) that still allow ``backward``; used by Model.input_gradient."""

    def __enter__(self):
        self.prev = _GRADS_IN_INFERENCE[0]
        _GRADS_IN_INFERENCE[0] = True

    def __exit__(self, *exc):
        _GRADS_IN_INFERENCE[0] = self.prev


def as_float_array(x, layer_name, dtype, what="input", device=None):
    """``x`` as a C-contiguous float array of ``dtype`` on ``device`` (default:
    the default device); TypeError for non-numeric input."""
    device = default_device() if device is None else device
    arr = x if device.is_array(x) else np.asarray(x)
    if np.dtype(arr.dtype).kind not in "fiub":
        raise TypeError(f"{layer_name}: expected a numeric {what}, got dtype {arr.dtype}")
    return device.asarray(arr, dtype)


class InputLayer(Layer):
    """Placeholder layer that marks a model input."""

    def __init__(self, shape=None, batch_size=None, dtype=None, name=None, input_shape=None, **kw):
        if shape is None:
            shape = input_shape
        if shape is None:
            raise ValueError("Input: a shape (without the batch dimension) is required")
        super().__init__(name=name, **kw)
        self.dtype = np.dtype(dtype or config.floatx())  # integer inputs (token ids) allowed
        self._dtype_given = dtype is not None
        self.shape = (batch_size,) + tuple(int(s) if s is not None else None for s in shape)
        self.built = True

    def forward(self, x, training=False):
        return x

    def backward(self, dy):
        return dy

    def get_config(self):
        cfg = super().get_config()
        cfg["shape"] = list(self.shape[1:])
        return cfg


def Input(shape=None, batch_size=None, dtype=None, name=None):
    """A symbolic model input of ``shape`` (batch excluded)."""
    layer = InputLayer(shape=shape, batch_size=batch_size, dtype=dtype, name=name)
    t = KTensor(layer.shape, layer.dtype, None, 0)
    t.input_layer = layer
    layer.tensor = t
    return t


@functools.cache
def _has_mask_parameter(forward) -> bool:
    return "mask" in inspect.signature(forward).parameters
