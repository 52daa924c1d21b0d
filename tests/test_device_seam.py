"""The device seam, proven with a test-only device.

``RecordingDevice`` registers itself by name like any device. It hands out the
CPU kernels wrapped so that every call is recorded, and allocates arrays of
its own type (``DeviceArray``, an ndarray subclass that stands for memory on
another device). NumPy arithmetic on a DeviceArray outside a kernel call is
recorded as a leak: a real accelerator's arrays would not support it. Every
layer family, the five reference models and ``fit`` with callbacks must run on
it, give the same numbers as "cpu", keep every array of the training step in
device memory, and do all their array math in kernels.
"""
from __future__ import annotations

import contextlib
import types

import numpy as np
import pytest

import nbmodel as nb
from nbmodel.backend import CpuDevice, get_device, register_device, unregister_device
from nbmodel.kernels.contract import CONTRACT

NAME = "test-recording"
_METADATA = {"shape", "ndim", "size"}  # NumPy functions that read no data


class DeviceArray(np.ndarray):
    """An array in the recording device's memory."""

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        _DEVICE.note_host_math(ufunc.__name__)
        inputs = tuple(i.view(np.ndarray) if isinstance(i, DeviceArray) else i for i in inputs)
        if "out" in kwargs:
            kwargs["out"] = tuple(o.view(np.ndarray) if isinstance(o, DeviceArray) else o for o in kwargs["out"])
        result = getattr(ufunc, method)(*inputs, **kwargs)
        return result

    def __array_function__(self, func, types_, args, kwargs):
        _DEVICE.note_host_math(func.__name__)
        return super().__array_function__(func, types_, args, kwargs)


class RecordingDevice(CpuDevice):
    name = NAME

    def __init__(self):
        super().__init__()
        self.calls: list[str] = []
        self.allocations = 0
        self.host_math: list[str] = []
        self._depth = 0  # > 0 inside a kernel or a device method: NumPy on device arrays is allowed there

    # ------------------------------------------------------------- recording
    @contextlib.contextmanager
    def inside(self):
        self._depth += 1
        try:
            yield
        finally:
            self._depth -= 1

    def note_host_math(self, what):
        if self._depth == 0 and what not in _METADATA:
            self.host_math.append(what)

    def reset(self):
        self.calls.clear()
        self.host_math.clear()
        self.allocations = 0

    def _load_kernels(self, family):
        real = super()._load_kernels(family)
        wrapped = types.ModuleType(f"recording.{family}")
        for fn in CONTRACT[family]:
            wrapped.__dict__[fn] = self._recorder(family, fn, getattr(real, fn))
        return wrapped

    def _recorder(self, family, fn, kernel):
        def call(*args, **kwargs):
            self.calls.append(f"{family}.{fn}")
            with self.inside():
                return kernel(*args, **kwargs)
        return call

    # ---------------------------------------------------------------- memory
    def _new(self, host):
        self.allocations += 1
        return host.view(DeviceArray)

    def empty(self, shape, dtype):
        with self.inside():
            return self._new(np.empty(shape, dtype))

    def zeros(self, shape, dtype):
        with self.inside():
            return self._new(np.zeros(shape, dtype))

    def full(self, shape, value, dtype):
        with self.inside():
            return self._new(np.full(shape, value, dtype))

    def is_array(self, a):
        return isinstance(a, DeviceArray)

    def asarray(self, x, dtype=None):
        with self.inside():
            if isinstance(x, DeviceArray) and (dtype is None or x.dtype == dtype) and x.flags.c_contiguous:
                return x
            host = np.asarray(x.view(np.ndarray) if isinstance(x, DeviceArray) else x, dtype=dtype, order="C")
            return self._new(np.array(host, copy=True))

    def to_host(self, a):
        return np.array(a.view(np.ndarray), copy=True) if isinstance(a, DeviceArray) else np.asarray(a)

    def assign(self, dst, src):
        with self.inside():
            dst.view(np.ndarray)[...] = src.view(np.ndarray) if isinstance(src, DeviceArray) else src

    def fill_uniform(self, rng, out):
        with self.inside():
            rng.random(dtype=out.dtype, out=out.view(np.ndarray))

    def all_finite(self, a):
        with self.inside():
            return bool(np.isfinite(a.view(np.ndarray)).all())


_DEVICE = RecordingDevice()


@pytest.fixture
def recording():
    register_device(NAME, lambda: _DEVICE)
    _DEVICE.reset()
    try:
        yield _DEVICE
    finally:
        nb.config.set_default_device("cpu")
        unregister_device(NAME)


def _as_list(a):
    return a if isinstance(a, list) else [a]


def fit_lr(build):
    """The learning rate a freshly built model starts with."""
    return build().optimizer.learning_rate


def _arrays_of_step(model):
    """Every array the training step touches, with a name."""
    out = []
    for layer in model.layers:
        for sub in [layer] + _all_sublayers(layer):
            for kind in ("params", "grads", "state"):
                out += [(f"{sub.name}.{kind}[{k}]", v) for k, v in getattr(sub, kind).items()]
            out += [(f"{sub.name}.workspace[{k}]", v) for k, v in sub.__dict__.get("_workspaces", {}).items()]
    core = model.training_core
    out += [("packed params", core.params), ("packed grads", core.grads)]
    out += [(f"optimizer slot {k}", v) for k, v in model.optimizer.slots.items()]
    for loss in core.losses:
        out += [(f"{loss.name} workspace {k}", v) for k, v in loss._ws.items()]
    return out


def _all_sublayers(layer):
    subs = []
    for s in layer.sublayers():
        subs += [s] + _all_sublayers(s)
    return subs


def _assert_on_device(model, device):
    assert model.device is device
    for name, arr in _arrays_of_step(model):
        assert isinstance(arr, DeviceArray), f"{name} was not allocated through the device"
    for layer in model.layers:
        assert layer.device is device, layer.name


def test_the_device_registers_by_name(recording):
    assert get_device(NAME) is recording
    model = nb.Sequential([nb.layers.Input((3,)), nb.layers.Dense(2)], device=NAME)
    assert model.device is recording and model.layers[0].device is recording
    assert isinstance(model.layers[0].params["kernel"], DeviceArray)


@pytest.mark.parametrize("family", ["dense", "multi_output", "ignore_class", "dropout", "conv", "batchnorm",
                                    "recurrent", "attention", "regularized"])
def test_every_layer_family_trains_through_the_device(recording, family, float64, tmp_path):
    from parallel import _models

    build, x, y, fit = _models.case(family)
    fit = dict(fit, verbose=0, epochs=3)

    def callbacks(tag):
        return [nb.callbacks.EarlyStopping(monitor="loss", patience=5),
                nb.callbacks.ReduceLROnPlateau(monitor="loss", patience=0, factor=0.5, min_delta=10.0),
                nb.callbacks.CSVLogger(str(tmp_path / f"{tag}.csv"))]

    reference = build()
    hist_ref = reference.fit(x, y, **fit, callbacks=callbacks("cpu"))
    model = build().to(NAME)
    recording.reset()
    hist = model.fit(x, y, **fit, callbacks=callbacks("device"))
    assert (tmp_path / "cpu.csv").read_text() == (tmp_path / "device.csv").read_text()
    assert model.optimizer.learning_rate == reference.optimizer.learning_rate < fit_lr(build)
    assert recording.calls, "no kernel call went through the device"
    assert recording.host_math == [], f"array math outside kernels: {sorted(set(recording.host_math))}"
    _assert_on_device(model, recording)
    _models.assert_same_training(reference, hist_ref, model, hist, rtol=0)
    for a, b in zip(_as_list(model.predict(x)), _as_list(reference.predict(x))):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("name", ["mlp", "cnn", "lstm", "gru", "transformer"])
def test_reference_models_step_through_the_device(recording, name):
    from nbmodel.bench import REFERENCE_MODELS

    ref = REFERENCE_MODELS[name]
    x, y = ref.data()
    x, y = x[:8], y[:8]  # the reference architectures on a small batch
    cpu = ref.build_nb()
    nb.config.set_default_device(NAME)
    model = ref.build_nb()
    assert model.device is recording
    recording.reset()
    for _ in range(2):
        loss = model.train_on_batch(x, y)
        assert loss == cpu.train_on_batch(x, y)
    assert recording.host_math == [], f"array math outside kernels: {sorted(set(recording.host_math))}"
    families = {c.split(".")[0] for c in recording.calls}
    assert {"optim", "losses"} <= families
    _assert_on_device(model, recording)
    for a, b in zip(model.get_weights(), cpu.get_weights()):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(model.predict(x), cpu.predict(x))


def test_regularizers_and_constraints_stay_in_kernels(recording, float64):
    """Weight and activity penalties, their gradients and the constraints run as kernels."""
    from nbmodel import constraints, regularizers

    def build(device):
        m = nb.Sequential([nb.layers.Input((4,)),
                           nb.layers.Dense(5, activation="tanh", kernel_regularizer=regularizers.L1L2(0.01, 0.02),
                                           activity_regularizer="l2", kernel_constraint=constraints.MaxNorm(0.7),
                                           bias_constraint="non_neg"),
                           nb.layers.Dense(2, kernel_regularizer="l1", kernel_constraint="unit_norm")],
                          seed=0, device=device)
        m.compile(nb.optimizers.SGD(0.1), nb.losses.SparseCategoricalCrossentropy(from_logits=True))
        return m

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(8, 4)), rng.integers(0, 2, 8)
    cpu, model = build("cpu"), build(NAME)
    recording.reset()
    for _ in range(2):
        assert model.train_on_batch(x, y) == cpu.train_on_batch(x, y)
    assert model.evaluate(x, y) == cpu.evaluate(x, y)
    assert recording.host_math == [], f"array math outside kernels: {sorted(set(recording.host_math))}"
    assert {"optim.l1l2_penalty", "optim.add_l1l2_grad", "optim.clip_norms", "optim.non_neg"} <= set(recording.calls)
    _assert_on_device(model, recording)
    for a, b in zip(model.get_weights(), cpu.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_model_to_moves_everything_and_back(recording, float64):
    from parallel import _models

    build, x, y, fit = _models.case("batchnorm")
    model = build()
    model.fit(x, y, epochs=1, batch_size=8, verbose=0)
    before = model.get_weights()
    state = model.optimizer.get_state()
    model.to(NAME)
    _assert_on_device(model, recording)
    for a, b in zip(model.get_weights(), before):
        np.testing.assert_array_equal(a, b)
    for k, v in model.optimizer.get_state().items():
        np.testing.assert_array_equal(v, state[k])
    model.fit(x, y, epochs=1, batch_size=8, verbose=0)
    model.to("cpu")
    cpu = model.device
    assert isinstance(cpu, CpuDevice) and cpu.name == "cpu" and all(layer.device is cpu for layer in model.layers)
    for name, arr in _arrays_of_step(model):
        assert type(arr) is np.ndarray, name
    model.fit(x, y, epochs=1, batch_size=8, verbose=0)


def test_unknown_device_and_unknown_family_are_clear_errors():
    with pytest.raises(ValueError, match="unknown device 'nowhere'"):
        nb.Sequential([nb.layers.Dense(2)], device="nowhere")
    with pytest.raises(ValueError, match="unknown kernel family"):
        CpuDevice().kernels("no_such_family")
