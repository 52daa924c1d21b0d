"""Streamed input in one process: a PyDataset or a generator of batches trains, evaluates and
predicts like the same batches in memory; bad batches are named; a memmap is read per batch."""
import numpy as np
import pytest

import nbmodel as nb
from nbmodel import callbacks as cb
from nbmodel import layers


def data(n=20, d=4, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, d)).astype("float32"), rng.integers(0, classes, n)


def model_(seed=0, d=4, metrics=("accuracy",)):
    m = nb.Sequential([layers.Input((d,)), layers.Dense(5, activation="relu"),
                       layers.Dense(3, activation="softmax")], seed=seed)
    m.compile(optimizer=nb.optimizers.SGD(0.1, momentum=0.5), loss="sparse_categorical_crossentropy",
              metrics=list(metrics))
    return m


class Batches(nb.PyDataset):
    """Consecutive batches of arrays; records the order its batches were read in."""

    def __init__(self, x, y, batch_size, sw=None, x_only=False):
        super().__init__()
        self.x, self.y, self.sw, self.bs, self.x_only = x, y, sw, batch_size, x_only
        self.read, self.epochs_ended = [], 0

    def __len__(self):
        return -(-len(self.x) // self.bs)

    def __getitem__(self, i):
        self.read.append(i)
        sl = slice(i * self.bs, (i + 1) * self.bs)
        if self.x_only:
            return self.x[sl]
        return (self.x[sl], self.y[sl]) if self.sw is None else (self.x[sl], self.y[sl], self.sw[sl])

    def on_epoch_end(self):
        self.epochs_ended += 1


def gen(x, y, bs, repeat=1):
    for _ in range(repeat):
        for s in range(0, len(x), bs):
            yield x[s:s + bs], y[s:s + bs]


def same_weights(a, b):
    return all(np.array_equal(u, v) for u, v in zip(a.get_weights(), b.get_weights()))


def test_pydataset_trains_to_the_weights_of_the_arrays():
    x, y = data()
    sw = np.linspace(0.5, 1.5, len(x))
    ref, m = model_(), model_()
    h_ref = ref.fit(x, y, batch_size=6, epochs=3, shuffle=False, sample_weight=sw, verbose=0)
    ds = Batches(x, y, 6, sw)
    h = m.fit(ds, epochs=3, shuffle=False, verbose=0)
    assert same_weights(m, ref)
    assert h.history == h_ref.history
    assert ds.epochs_ended == 3 and ds.read == [0, 1, 2, 3] * 3


def test_generator_trains_to_the_weights_of_the_arrays():
    x, y = data()
    ref, m = model_(), model_()
    h_ref = ref.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0)
    h = m.fit(gen(x, y, 8, repeat=2), steps_per_epoch=3, epochs=2, verbose=0)
    assert same_weights(m, ref) and h.history == h_ref.history


def test_generator_without_steps_is_consumed_once():
    x, y = data()
    ref, m = model_(), model_()
    ref.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    with pytest.warns(UserWarning, match="ran out of data after 1 epoch"):
        h = m.fit(gen(x, y, 8), epochs=3, verbose=0)
    assert h.epoch == [0] and same_weights(m, ref)


def test_shuffled_pydataset_is_reproducible_and_matches_arrays_in_its_order():
    x, y = data()
    ds1, ds2 = Batches(x, y, 6), Batches(x, y, 6)
    m1, m2 = model_(seed=1), model_(seed=1)
    m1.fit(ds1, epochs=3, verbose=0)
    m2.fit(ds2, epochs=3, verbose=0)
    assert ds1.read == ds2.read and same_weights(m1, m2)
    assert ds1.read[:4] != [0, 1, 2, 3] or ds1.read[4:8] != [0, 1, 2, 3]  # the order was shuffled
    order = [j for i in ds1.read for j in range(i * 6, min(i * 6 + 6, len(x)))]

    class Ordered(nb.PyDataset):  # the same batches, read in ds1's order without shuffling
        def __len__(self):
            return len(ds1.read)

        def __getitem__(self, k):
            i = ds1.read[k]
            return x[i * 6:(i + 1) * 6], y[i * 6:(i + 1) * 6]

    m3 = model_(seed=1)
    m3.fit(Ordered(), epochs=1, shuffle=False, verbose=0)
    assert same_weights(m1, m3)
    m4 = model_(seed=1)  # and in memory: the samples in that order, unshuffled, same batches
    sizes = [min(6, len(x) - i * 6) for i in ds1.read]
    for s, e in zip(np.cumsum([0] + sizes[:-1]), np.cumsum(sizes)):
        m4.train_on_batch(x[order][s:e], y[order][s:e])
    assert same_weights(m1, m4)


def test_evaluate_and_predict_equal_the_arrays():
    x, y = data(n=13)
    m = model_(metrics=("accuracy", "sparse_top_k_categorical_accuracy"))
    expect = m.evaluate(x, y, batch_size=5, return_dict=True)
    assert m.evaluate(Batches(x, y, 5), return_dict=True) == expect
    assert m.evaluate(gen(x, y, 5), return_dict=True) == expect
    first = m.evaluate(x[:10], y[:10], batch_size=5, return_dict=True)
    assert m.evaluate(gen(x, y, 5), steps=2, return_dict=True) == first
    p = m.predict(x, batch_size=5)
    np.testing.assert_array_equal(m.predict(Batches(x, y, 5)), p)
    np.testing.assert_array_equal(m.predict(Batches(x, y, 5, x_only=True)), p)
    np.testing.assert_array_equal(m.predict(b[:1] for b in gen(x, y, 5)), p)
    np.testing.assert_array_equal(m.predict(gen(x, y, 5), steps=1), p[:5])


def test_validation_data_as_pydataset_or_arrays_and_callback_logs():
    x, y = data()
    xv, yv = data(n=7, seed=1)
    seen = []
    spy = cb.LambdaCallback(on_train_batch_end=lambda b, logs: seen.append(sorted(logs)))
    ref, m, m2 = model_(), model_(), model_()
    h_ref = ref.fit(x, y, batch_size=6, epochs=2, shuffle=False, validation_data=(xv, yv), verbose=0,
                    validation_batch_size=4)
    h = m.fit(Batches(x, y, 6), epochs=2, shuffle=False, validation_data=Batches(xv, yv, 4), verbose=0,
              callbacks=[spy])
    h2 = m2.fit(Batches(x, y, 6), epochs=2, shuffle=False, validation_data=(xv, yv), verbose=0,
                validation_batch_size=4)
    assert h.history.keys() == h_ref.history.keys() == h2.history.keys()
    assert h2.history == h_ref.history
    assert h.history == h_ref.history
    assert len(seen) == 8 and seen[0] == ["accuracy", "loss", "samples_per_s"]


def test_multi_input_model_through_dicts_and_lists():
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((12, 3)).astype("float32"), rng.standard_normal((12, 2)).astype("float32")
    y = rng.standard_normal((12, 1)).astype("float32")

    def build():
        ia, ib = layers.Input((3,), name="a"), layers.Input((2,), name="b")
        out = layers.Dense(1, name="out")(layers.Concatenate()([ia, ib]))
        m = nb.Model([ia, ib], out, seed=0)
        m.compile(optimizer="sgd", loss="mse")
        return m

    class Pairs(nb.utils.PyDataset):
        def __init__(self, as_dict):
            super().__init__()
            self.as_dict = as_dict

        def __len__(self):
            return 3

        def __getitem__(self, i):
            sl = slice(4 * i, 4 * i + 4)
            xs = {"a": a[sl], "b": b[sl]} if self.as_dict else [a[sl], b[sl]]
            return xs, {"out": y[sl]} if self.as_dict else y[sl]

    ref = build()
    ref.fit([a, b], y, batch_size=4, epochs=2, shuffle=False, verbose=0)
    for as_dict in (True, False):
        m = build()
        m.fit(Pairs(as_dict), epochs=2, shuffle=False, verbose=0)
        assert same_weights(m, ref)
        assert m.evaluate(Pairs(as_dict)) == ref.evaluate([a, b], y, batch_size=4)


def test_a_bad_batch_in_the_middle_is_named():
    x, y = data()
    bad = x.copy()
    bad[13, 1] = np.nan  # in batch 2 of 6
    m = model_()
    with pytest.raises(ValueError, match=r"fit \(batch 2\): input .* NaN"):
        m.fit(Batches(bad, y, 6), epochs=1, shuffle=False, verbose=0)
    with pytest.raises(ValueError, match=r"evaluate \(batch 1\).*expects shape"):
        m.evaluate(iter([(x[:4], y[:4]), (x[:4, :3], y[:4])]))
    with pytest.raises(ValueError, match=r"fit \(batch 0\).*no targets"):
        m.fit(iter([x[:4]]), verbose=0)
    with pytest.raises(ValueError, match=r"batch 1.*sample_weight must not be negative"):
        m.fit(Batches(x, y, 6, sw=np.r_[np.ones(6), -np.ones(14)]), shuffle=False, verbose=0)


def test_float64_batches_are_cast_per_batch():
    x, y = data()
    ref, m = model_(), model_()
    ref.fit(x, y, batch_size=6, epochs=1, shuffle=False, verbose=0)
    m.fit(Batches(x.astype(np.float64), y, 6), epochs=1, shuffle=False, verbose=0)
    assert same_weights(m, ref)


def test_clear_errors_for_unsupported_arguments():
    x, y = data()
    m = model_()
    with pytest.raises(ValueError, match="batch_size must be None"):
        m.fit(Batches(x, y, 6), batch_size=6, verbose=0)
    with pytest.raises(ValueError, match="batch_size must be None"):
        m.predict(Batches(x, y, 6), batch_size=6)
    with pytest.raises(ValueError, match="batch_size must be None"):  # (streams with workers: tests/parallel)
        m.fit(gen(x, y, 6), batch_size=6, workers=2, verbose=0)
    with pytest.raises(ValueError, match="pass x only"):
        m.fit(Batches(x, y, 6), y, verbose=0)
    with pytest.raises(ValueError, match="workers > 1 and use_multiprocessing"):
        Batches.__bases__[0](workers=2)


@pytest.mark.parametrize("step", [None, 1])
def test_backup_and_restore_resumes_a_pydataset(tmp_path, step):
    x, y = data()

    class Crash(cb.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch
            if step is None and epoch == 2:
                raise RuntimeError("crash")

        def on_train_batch_begin(self, batch, logs=None):
            if step is not None and self.epoch == 2 and batch == step:
                raise RuntimeError("crash")

    def run(callbacks):
        m = model_(seed=2)
        return m, m.fit(Batches(x, y, 6), epochs=4, verbose=0, callbacks=callbacks)

    ref, h_ref = run([])
    save_freq = 1 if step is not None else "epoch"
    with pytest.raises(RuntimeError, match="crash"):
        run([cb.BackupAndRestore(tmp_path, save_freq=save_freq), Crash()])
    m, h = run([cb.BackupAndRestore(tmp_path, save_freq=save_freq)])
    assert h.epoch == [2, 3] and same_weights(m, ref)
    assert h.history["loss"] == h_ref.history["loss"][2:]


def test_memmap_is_read_per_batch_not_copied_whole(tmp_path, monkeypatch):
    x, y = data(n=40)
    mm = np.lib.format.open_memmap(tmp_path / "x.npy", mode="w+", dtype=np.float64, shape=x.shape)
    mm[:] = x
    mm.flush()
    rows = []
    real = np.ascontiguousarray

    def spy(a, *args, **kwargs):
        if isinstance(a, np.ndarray) and a.ndim == 2:  # inputs (targets are 1-D here)
            rows.append(a.shape[0])
        return real(a, *args, **kwargs)

    ref, m = model_(), model_()
    ref.fit(x, y, batch_size=8, epochs=2, validation_data=(x[:8], y[:8]), verbose=0)
    monkeypatch.setattr(np, "ascontiguousarray", spy)
    m.fit(mm, y, batch_size=8, epochs=2, validation_data=(mm[:8], y[:8]), verbose=0)
    assert same_weights(m, ref)
    assert max(rows) < len(x), f"an input array of {max(rows)} rows was copied whole"
    assert m.evaluate(mm, y, batch_size=8) == ref.evaluate(x, y, batch_size=8)
    np.testing.assert_array_equal(m.predict(mm, batch_size=8), ref.predict(x, batch_size=8))
    mm[21, 0] = np.inf
    with pytest.raises(ValueError, match=r"samples 16\.\.23\).*NaN or infinity"):
        m.predict(mm, batch_size=8)


def test_class_weight_and_a_sequential_built_from_the_first_batch():
    x, y = data()
    cw = {0: 1.0, 1: 2.0, 2: 0.5}

    def unbuilt():
        m = nb.Sequential([layers.Dense(5, activation="relu"), layers.Dense(3, activation="softmax")], seed=0)
        m.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
        return m

    ref, m = unbuilt(), unbuilt()
    ref.fit(x, y, batch_size=6, shuffle=False, class_weight=cw, verbose=0)
    m.fit(Batches(x, y, 6), shuffle=False, class_weight=cw, verbose=0)
    assert same_weights(m, ref)
