"""Bad input across the API and files: every case a clear error naming the argument
or file (or documented behaviour), none silent. One table; each row builds what it
needs from the small fixtures below."""
import gc
import os

import numpy as np
import pytest

import nbmodel as nb
from nbmodel import layers as L


def _model(loss="mse", metrics=None, optimizer="sgd"):
    m = nb.Sequential([L.Input((3,)), L.Dense(4, activation="relu"), L.Dense(2)], seed=0)
    m.compile(optimizer=optimizer, loss=loss, metrics=metrics)
    return m


def _data(n=8):
    r = np.random.default_rng(0)
    return r.standard_normal((n, 3)), r.standard_normal((n, 2))


def _classifier():
    m = nb.Sequential([L.Input((3,)), L.Dense(3)], seed=0)
    m.compile(optimizer="sgd", loss=nb.losses.SparseCategoricalCrossentropy(from_logits=True))
    return m


X, Y = _data()
LABELS = np.array([0, 1, 2, 0, 1, 2, 0, 1])


def fit(**kw):
    return lambda: _model().fit(X, Y, verbose=0, **kw)


def evaluate(**kw):
    return lambda: _model().evaluate(X, Y, **kw)


def predict(**kw):
    return lambda: _model().predict(X, **kw)


def weights(w):
    return np.full(len(X), w) if np.isscalar(w) else np.asarray(w)


API = [
    ("fit batch_size float", fit(batch_size=2.7), TypeError, "fit: batch_size must be an integer"),
    ("fit batch_size 0", fit(batch_size=0), ValueError, "fit: batch_size must be >= 1"),
    ("fit batch_size -1", fit(batch_size=-1), ValueError, "fit: batch_size must be >= 1"),
    ("fit batch_size str", fit(batch_size="32"), TypeError, "fit: batch_size must be an integer"),
    ("fit batch_size bool", fit(batch_size=True), TypeError, "fit: batch_size must be an integer"),
    ("fit epochs -1", fit(epochs=-1), ValueError, "fit: epochs must be >= 0"),
    ("fit epochs float", fit(epochs=1.5), TypeError, "fit: epochs must be an integer"),
    ("fit initial_epoch -1", fit(initial_epoch=-1), ValueError, "fit: initial_epoch must be >= 0"),
    ("fit validation_freq 0", fit(validation_freq=0, validation_split=0.25), ValueError,
     "fit: validation_freq must be >= 1"),
    ("fit steps_per_epoch 0", fit(steps_per_epoch=0), ValueError, "fit: steps_per_epoch must be >= 1"),
    ("fit validation_batch_size -1", fit(validation_batch_size=-1, validation_split=0.25), ValueError,
     "fit: validation_batch_size must be >= 1"),
    ("fit workers batch_size float", fit(batch_size=2.5, workers=2), TypeError, "fit: batch_size must be"),
    ("evaluate batch_size -1", evaluate(batch_size=-1), ValueError, "evaluate: batch_size must be >= 1"),
    ("evaluate batch_size 0", evaluate(batch_size=0), ValueError, "evaluate: batch_size must be >= 1"),
    ("evaluate batch_size float", evaluate(batch_size=2.7), TypeError, "evaluate: batch_size must be an integer"),
    ("predict batch_size -1", predict(batch_size=-1), ValueError, "predict: batch_size must be >= 1"),
    ("predict batch_size 0", predict(batch_size=0), ValueError, "predict: batch_size must be >= 1"),
    ("predict batch_size float", predict(batch_size=1.5), TypeError, "predict: batch_size must be an integer"),
    ("evaluate 0 samples", lambda: _model().evaluate(X[:0], Y[:0]), ValueError, "evaluate: got 0 samples"),
    ("fit sample_weight NaN", fit(sample_weight=weights([1, 1, np.nan, 1, 1, 1, 1, 1])), ValueError,
     "fit: sample_weight holds a non-finite value .* at sample 2"),
    ("fit sample_weight inf", fit(sample_weight=weights(np.inf)), ValueError, "sample_weight holds a non-finite"),
    ("fit sample_weight negative", fit(sample_weight=weights(-1.0)), ValueError,
     "fit: sample_weight must not be negative"),
    ("fit sample_weight length", fit(sample_weight=np.ones(5)), ValueError,
     "fit: sample_weight has 5 entries for 8 samples"),
    ("fit sample_weight strings", fit(sample_weight=np.array(["a"] * 8)), TypeError,
     "fit: sample_weight must be numeric"),
    ("fit sample_weight scalar", fit(sample_weight=1.0), ValueError, "fit: sample_weight has 0 entries"),
    ("evaluate sample_weight NaN", evaluate(sample_weight=weights(np.nan)), ValueError,
     "evaluate: sample_weight holds a non-finite"),
    ("fit class_weight NaN", lambda: _classifier().fit(X, LABELS, verbose=0, class_weight={0: 1, 1: np.nan, 2: 1}),
     ValueError, r"fit: class_weight\[1\] must be a finite number"),
    ("fit class_weight negative", lambda: _classifier().fit(X, LABELS, verbose=0,
                                                            class_weight={0: 1, 1: -2, 2: 1}),
     ValueError, r"fit: class_weight\[1\] must be a finite number >= 0"),
    ("fit class_weight missing class", lambda: _classifier().fit(X, LABELS, verbose=0, class_weight={0: 1, 1: 1}),
     ValueError, r"fit: class_weight has no entry for classes \[2\]"),
    ("fit x NaN", lambda: _model().fit(np.where(X > 1, np.nan, X), Y, verbose=0), ValueError,
     "fit: input .* contains NaN or infinity"),
    ("fit y NaN", lambda: _model().fit(X, np.where(Y > 1, np.nan, Y), verbose=0), ValueError,
     "fit: .* NaN or inf"),
    ("fit x features", lambda: _model().fit(X[:, :2], Y, verbose=0), ValueError,
     r"fit: input .* expects shape \(None, 3\)"),
    ("fit labels out of range", lambda: _classifier().fit(X, LABELS + 1, verbose=0), ValueError,
     r"sparse_categorical_crossentropy: label 3 at flat index 2 is outside \[0, 3\)"),
    ("fit x and y lengths", lambda: _model().fit(X, Y[:5], verbose=0), ValueError,
     r"fit: x and y have different numbers of samples \(8 and 5\)"),
]


@pytest.mark.parametrize("case, call, exc, match", API, ids=[c[0] for c in API])
def test_api_bad_input_is_a_clear_error(case, call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_predict_on_no_samples_gives_empty_outputs():
    # documented behaviour (Model.predict): empty arrays of the output shape
    assert _model().predict(X[:0]).shape == (0, 2)


def test_integer_batch_sizes_of_numpy_types_are_accepted():
    m = _model()
    m.fit(X, Y, batch_size=np.int64(4), epochs=np.int32(1), verbose=0)
    assert m.predict(X, batch_size=np.int16(3)).shape == (8, 2)


def test_nan_weights_are_not_hidden_by_relu():
    # ReLU passes NaN through (Keras/PyTorch do): a NaN-poisoned model fails loudly
    m = _model()
    w = m.get_weights()
    w[0][0, 0] = np.nan
    m.set_weights(w)
    assert np.isnan(m.predict(X)).any()
    with pytest.raises(FloatingPointError, match="non-finite loss"):
        m.fit(X, Y, verbose=0)


# ------------------------------------------------------------------ files
class Halved(nb.losses.Loss):
    """A user's loss: half the mean squared error."""

    def __init__(self, name="halved"):
        super().__init__(name=name)
        self._mse = nb.losses.MeanSquaredError()

    def forward_backward(self, y_true, y_pred, sample_weight=None):
        total, count, dy = self._mse.forward_backward(y_true, y_pred, sample_weight)
        return 0.5 * total, count, 0.5 * dy

    def forward(self, y_true, y_pred, sample_weight=None):
        total, count = self._mse.forward(y_true, y_pred, sample_weight)
        return 0.5 * total, count


class MySGD(nb.optimizers.SGD):
    """A user's optimizer (same rule)."""


class MeanPred(nb.metrics.Metric):
    """A user's metric: the mean prediction."""

    def update(self, y_true, y_pred, sample_weight=None):
        self.total += float(np.sum(y_pred))
        self.count += float(np.size(y_pred))


@pytest.fixture
def saved(tmp_path):
    path = tmp_path / "m.nbm"
    _model().save(path)
    data = path.read_bytes()
    files = {"model": path}
    for name, content in {"truncated": data[: len(data) // 2], "random": os.urandom(400), "empty": b"",
                          "text": b"not a model\n"}.items():
        files[name] = tmp_path / f"{name}.nbm"
        files[name].write_bytes(content)
    _model().save_weights(tmp_path / "w.nbm")
    files["weights"] = tmp_path / "w.nbm"
    return files


@pytest.mark.parametrize("kind", ["truncated", "random", "empty", "text"])
def test_corrupt_model_file_names_the_path_and_never_suggests_unsafe_loading(saved, kind):
    for load in (nb.load_model, lambda p: _model().load_weights(p)):
        with pytest.raises(ValueError) as err:
            load(saved[kind])
        msg = str(err.value)
        assert str(saved[kind]) in msg and "corrupt" in msg
        assert "pickle" not in msg


def test_missing_and_weights_only_files(saved, tmp_path):
    with pytest.raises(FileNotFoundError, match="no such model file"):
        nb.load_model(tmp_path / "nope.nbm")
    with pytest.raises(ValueError, match="holds only weights"):
        nb.load_model(saved["weights"])


def test_corrupt_backup_is_reported_with_its_path_and_a_way_out(tmp_path):
    cb = nb.callbacks.BackupAndRestore(str(tmp_path / "bk"))
    m = _model()
    m.fit(X, Y, epochs=2, verbose=0, callbacks=[cb])  # deleted at the end of a finished fit
    os.makedirs(tmp_path / "bk", exist_ok=True)
    with open(cb.path, "wb") as f:
        f.write(b"\x00" * 64)
    with pytest.raises(ValueError, match="cannot resume from the backup .* Delete it"):
        _model().fit(X, Y, epochs=2, verbose=0, callbacks=[nb.callbacks.BackupAndRestore(str(tmp_path / "bk"))])


def _save_with_custom(kind, path):
    """Save a model compiled with a user class of ``kind`` defined here, then drop the class,
    as in a new process that has not imported it; returns the model's predictions."""
    cls = {"loss": Halved, "optimizer": MySGD, "metric": MeanPred}[kind]
    user = type(f"User{cls.__name__}", (cls,), {})
    m = _model(loss=user() if kind == "loss" else "mse", optimizer=user(0.1) if kind == "optimizer" else "sgd",
               metrics=[user(name="mean_pred")] if kind == "metric" else None)
    m.fit(X, Y, verbose=0)
    m.save(path)
    pred = m.predict(X)
    del m, user
    gc.collect()
    return pred


@pytest.mark.parametrize("kind", ["loss", "optimizer", "metric"])
def test_custom_objects_load_every_kind(tmp_path, kind):
    path = tmp_path / "c.nbm"
    pred = _save_with_custom(kind, path)
    name = {"loss": "UserHalved", "optimizer": "UserMySGD", "metric": "UserMeanPred"}[kind]
    with pytest.raises(ValueError, match=f"load_model .*c.nbm.*unknown {kind} class '{name}'.*custom_objects"):
        nb.load_model(path)
    base = {"loss": Halved, "optimizer": MySGD, "metric": MeanPred}[kind]
    loaded = nb.load_model(path, custom_objects={name: type(name, (base,), {})})
    np.testing.assert_array_equal(loaded.predict(X), pred)
    loaded.fit(X, Y, verbose=0)  # compiled with the user's object: trains and evaluates
    assert np.isfinite(loaded.evaluate(X, Y)).all()


def test_load_model_accepts_only_classes_of_the_right_kind(saved, tmp_path):
    # a saved config naming a module attribute that is not an optimizer (e.g. a function)
    m = _model()
    path = tmp_path / "odd.nbm"
    m.save(path)
    with pytest.raises(ValueError, match="unknown optimizer class 'SGD'"):
        nb.load_model(path, custom_objects={"SGD": nb.optimizers.get})
