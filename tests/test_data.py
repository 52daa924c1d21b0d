"""How fit feeds data: validation split and data, shuffling, batch order, sample and
class weights, targets checks, and the bundled digits."""
import numpy as np
import pytest

import nbmodel as nb
from nbmodel import layers
from nbmodel.data import BatchIterator, class_weights_to_sample_weights


class Recorder(layers.Layer):
    """Identity that remembers the first feature of every batch it sees, by mode."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.train_batches, self.infer_batches = [], []

    def forward(self, x, training=False):
        (self.train_batches if training else self.infer_batches).append(np.array(x[:, 0]))
        return x

    def backward(self, dy):
        return dy


def recorded_model(seed=0):
    rec = Recorder()
    m = nb.Sequential([layers.Input((2,)), rec, layers.Dense(3, activation="softmax")], seed=seed)
    m.compile("sgd", "sparse_categorical_crossentropy", metrics=["accuracy"])
    return m, rec


def ids(n):
    """x[:, 0] holds the sample index, so the Recorder shows which samples were used."""
    x = np.stack([np.arange(n), np.ones(n)], axis=1).astype("float32")
    return x, np.arange(n) % 3


def test_validation_split_takes_the_last_samples():
    x, y = ids(10)
    m, rec = recorded_model()
    h = m.fit(x, y, epochs=2, batch_size=4, validation_split=0.3, verbose=0)
    train = np.concatenate(rec.train_batches)
    assert sorted(train) == sorted(list(range(7)) * 2)  # shuffled, but only the first 7
    assert np.array_equal(np.concatenate(rec.infer_batches), [7, 8, 9, 7, 8, 9])
    # and the validation loss is the loss on those samples
    assert "val_loss" in h.history and "val_accuracy" in h.history
    loss_now = m.evaluate(x[7:], y[7:], return_dict=True)["loss"]
    assert h.history["val_loss"][-1] == pytest.approx(loss_now, rel=1e-6)


def test_validation_split_errors():
    x, y = ids(10)
    m, _ = recorded_model()
    with pytest.raises(ValueError, match="validation_split"):
        m.fit(x, y, validation_split=1.5, verbose=0)
    with pytest.raises(ValueError, match="no training or validation samples"):
        m.fit(x[:1], y[:1], validation_split=0.1, verbose=0)


def test_validation_data_wins_over_split():
    x, y = ids(10)
    vx, vy = ids(4)
    vx[:, 0] += 100
    m, rec = recorded_model()
    h = m.fit(x, y, epochs=1, batch_size=5, validation_split=0.5, validation_data=(vx, vy), verbose=0)
    assert sorted(np.concatenate(rec.train_batches)) == list(range(10))
    assert np.array_equal(np.concatenate(rec.infer_batches), [100, 101, 102, 103])
    assert h.history["val_loss"][0] == pytest.approx(m.evaluate(vx, vy, return_dict=True)["loss"], rel=1e-6)
    with pytest.raises(ValueError, match="validation_data"):
        m.fit(x, y, validation_data=(vx,), verbose=0)
    with pytest.raises(ValueError, match="expects shape"):
        m.fit(x, y, validation_data=(vx[:, :1], vy), verbose=0)


def test_validation_data_with_sample_weight():
    x, y = ids(10)
    m, _ = recorded_model()
    w = np.array([1.0, 0.0, 2.0, 1.0])
    h = m.fit(x, y, epochs=1, validation_data=(x[:4], y[:4], w), verbose=0)
    expected = m.evaluate(x[:4], y[:4], sample_weight=w, return_dict=True)["loss"]
    assert h.history["val_loss"][0] == pytest.approx(expected, rel=1e-6)


def test_shuffle_false_keeps_order_and_shuffle_true_permutes():
    x, y = ids(10)
    m, rec = recorded_model()
    m.fit(x, y, epochs=2, batch_size=4, shuffle=False, verbose=0)
    assert [list(b) for b in rec.train_batches] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]] * 2
    m, rec = recorded_model(seed=1)
    m.fit(x, y, epochs=2, batch_size=4, shuffle=True, verbose=0)
    epoch1 = np.concatenate(rec.train_batches[:3])
    epoch2 = np.concatenate(rec.train_batches[3:])
    assert sorted(epoch1) == sorted(epoch2) == list(range(10))  # each sample once per epoch
    assert [len(b) for b in rec.train_batches] == [4, 4, 2, 4, 4, 2]
    assert not (np.array_equal(epoch1, np.arange(10)) and np.array_equal(epoch2, np.arange(10)))


def test_batch_iterator():
    it = BatchIterator(10, 3, shuffle=False, rng=np.random.default_rng(0))
    assert len(it) == 4
    assert [list(i) for i in it.epoch()] == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9]]
    it = BatchIterator(10, 3, shuffle=True, rng=np.random.default_rng(0))
    assert sorted(np.concatenate(list(it.epoch()))) == list(range(10))


def weighted_setup(n=12):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, 2)).astype("float32")
    y = rng.integers(0, 3, n)
    y[:3] = [0, 1, 2]
    m = nb.Sequential([layers.Input((2,)), layers.Dense(3, activation="softmax")], seed=0)
    m.compile(nb.optimizers.SGD(0.1), "sparse_categorical_crossentropy")
    return m, x, y


def test_sample_weight_weights_the_loss():
    m, x, y = weighted_setup()
    p = m.predict(x).astype(np.float64)
    per_sample = -np.log(p[np.arange(len(y)), y])
    w = np.linspace(0.0, 2.0, len(y))
    # Keras "sum_over_batch_size": sum(w * loss) / number of samples
    assert m.evaluate(x, y, sample_weight=w) == pytest.approx(np.sum(w * per_sample) / len(y), rel=1e-5)
    assert m.evaluate(x, y) == pytest.approx(per_sample.mean(), rel=1e-5)
    with pytest.raises(ValueError, match="sample_weight"):
        m.evaluate(x, y, sample_weight=w[:5])


def test_class_weight_equals_the_matching_sample_weight():
    class_weight = {0: 0.5, 1: 2.0, 2: 1.0}
    m, x, y = weighted_setup()
    sw = np.array([class_weight[c] for c in y])
    np.testing.assert_array_equal(class_weights_to_sample_weights(class_weight, y), sw)
    # the loss train_on_batch reports (before its step) is the sample-weighted loss
    before = m.get_weights()
    expected = m.test_on_batch(x, y, sample_weight=sw)
    got = m.train_on_batch(x, y, class_weight=class_weight)
    assert got == pytest.approx(expected, rel=1e-6)
    after_cw = m.get_weights()
    # and the step is the sample-weighted step
    m.set_weights(before)
    m.optimizer.iterations = 0
    m.train_on_batch(x, y, sample_weight=sw)
    for a, b in zip(after_cw, m.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    # fit: class_weight and the equivalent sample_weight give the same run
    runs = []
    for kw in ({"class_weight": class_weight}, {"sample_weight": sw}, {}):
        m, x, y = weighted_setup()
        h = m.fit(x, y, epochs=2, batch_size=5, shuffle=False, verbose=0, **kw)
        runs.append((h.history["loss"], m.get_weights()))
    assert runs[0][0] == pytest.approx(runs[1][0], rel=1e-6)
    for a, b in zip(runs[0][1], runs[1][1]):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    assert runs[0][0] != pytest.approx(runs[2][0], rel=1e-3)  # and it does change the loss


def test_class_weight_doubles_the_loss():
    m, x, y = weighted_setup()
    base = m.test_on_batch(x, y)
    assert m.train_on_batch(x, y, class_weight={0: 2.0, 1: 2.0, 2: 2.0}) == pytest.approx(2 * base, rel=1e-6)


def test_class_weight_errors_and_one_hot():
    with pytest.raises(ValueError, match=r"no entry for classes \[2\]"):
        class_weights_to_sample_weights({0: 1.0, 1: 1.0}, np.array([0, 1, 2]))
    onehot = np.eye(3)[[2, 0, 1]]
    np.testing.assert_array_equal(class_weights_to_sample_weights({0: 1, 1: 2, 2: 3}, onehot), [3, 1, 2])
    binary = np.array([[0.0], [1.0], [1.0]])
    np.testing.assert_array_equal(class_weights_to_sample_weights({0: 1, 1: 4}, binary), [1, 4, 4])


def test_target_checks():
    m, x, y = weighted_setup()
    with pytest.raises(ValueError, match="NaN"):
        m.fit(x, np.full((12, 3), np.nan), verbose=0)
    with pytest.raises(ValueError, match="targets y are required"):
        m.fit(x, verbose=0)
    with pytest.raises(ValueError, match="x is required"):
        m.predict(None)
    with pytest.raises(ValueError, match="batch_size"):
        m.fit(x, y, batch_size=0, verbose=0)


def test_integer_and_float64_inputs_are_converted():
    m, x, y = weighted_setup()
    a = m.predict(x.astype(np.float64))
    assert a.dtype == np.float32
    np.testing.assert_allclose(a, m.predict(x), rtol=1e-6)
    m.predict(np.ones((2, 2), dtype=np.int32))  # ints are numbers too
    m.fit(x.tolist(), list(y), verbose=0, epochs=1)  # plain nested lists are data too


def test_steps_per_epoch_limits_steps():
    x, y = ids(20)
    m, rec = recorded_model()
    m.fit(x, y, batch_size=4, epochs=2, steps_per_epoch=2, shuffle=False, verbose=0)
    assert [list(b) for b in rec.train_batches] == [[0, 1, 2, 3], [4, 5, 6, 7]] * 2


def test_load_digits(digits):
    (x_train, y_train), (x_test, y_test) = digits
    assert x_train.shape == (1438, 8, 8, 1) and x_test.shape == (359, 8, 8, 1)
    assert x_train.dtype == np.float32 and y_train.dtype == np.int64
    assert 0.0 <= x_train.min() and x_train.max() <= 1.0 and x_train.max() == 1.0
    assert set(np.unique(y_test)) == set(range(10))
    counts = np.bincount(y_test)
    np.testing.assert_array_equal(counts, np.round(np.bincount(np.concatenate([y_train, y_test])) * 0.2))
    (x2, y2), (x3, y3) = nb.datasets.load_digits()
    assert np.array_equal(x2, x_train) and np.array_equal(y3, y_test)  # the split is fixed
    # train and test are disjoint
    train_rows = {r.tobytes() for r in x_train.reshape(len(x_train), -1)}
    overlap = sum(r.tobytes() in train_rows for r in x_test.reshape(len(x_test), -1))
    assert overlap < 5  # (the raw data holds a few duplicate images)
