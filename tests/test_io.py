"""save / load_model / save_weights / load_weights, optimizer state, and atomic writes."""
import os

import numpy as np
import pytest

import nbmodel as nb
from nbmodel import io, layers


def blobs(n=48, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    x = rng.standard_normal((3, 4))[y] * 3 + rng.standard_normal((n, 4))
    return x.astype("float32"), y


def sequential(seed=0):
    model = nb.Sequential([layers.Input((4,)), layers.Dense(8, activation="relu"), layers.Dropout(0.2),
                           layers.Dense(3, activation="softmax")], seed=seed)
    model.compile(nb.optimizers.Adam(0.01), "sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def functional(seed=0):
    a = layers.Input((4,), name="a")
    b = layers.Input((2,), name="b")
    h = layers.Concatenate()([layers.Dense(5, activation="tanh")(a), b])
    out1 = layers.Dense(3, activation="softmax", name="cls")(h)
    out2 = layers.Dense(1, name="reg")(layers.Add()([h, h]))
    model = nb.Model([a, b], [out1, out2], seed=seed)
    model.compile(nb.optimizers.RMSprop(0.01, momentum=0.5), loss=["sparse_categorical_crossentropy", "mse"],
                  loss_weights=[1.0, 0.3], metrics=[["accuracy"], ["mae"]])
    return model


def reseed(model):
    """Give every layer and sublayer the same fresh RNG in both models (dropout masks)."""
    gens = iter(range(10**6))

    def visit(layer):
        layer.rng = np.random.default_rng(next(gens))
        for sub in layer.sublayers():
            visit(sub)

    for layer in model.layers:
        visit(layer)


def assert_same_weights(a, b):
    wa, wb = a.get_weights(), b.get_weights()
    assert len(wa) == len(wb)
    for u, v in zip(wa, wb):
        np.testing.assert_array_equal(u, v)


@pytest.mark.parametrize("kind", ["sequential", "functional"])
def test_save_load_same_predictions_and_same_continued_training(tmp_path, kind):
    x, y = blobs()
    if kind == "sequential":
        model, xs, ys = sequential(), x, y
    else:
        model = functional()
        xs, ys = [x, x[:, :2] * 0.5], [y, x[:, :1] - x[:, 1:2]]
    model.fit(xs, ys, epochs=2, batch_size=8, verbose=0)
    path = tmp_path / "m.nbm"
    model.save(path)
    loaded = nb.load_model(path)
    assert type(loaded) is type(model)
    assert [layer.name for layer in loaded.layers] == [layer.name for layer in model.layers]
    assert_same_weights(model, loaded)
    p1, p2 = model.predict(xs), loaded.predict(xs)
    for u, v in zip(p1 if isinstance(p1, list) else [p1], p2 if isinstance(p2, list) else [p2]):
        np.testing.assert_array_equal(u, v)
    assert loaded.optimizer.iterations == model.optimizer.iterations
    assert loaded.evaluate(xs, ys, return_dict=True) == model.evaluate(xs, ys, return_dict=True)
    # optimizer slots restored: one more epoch gives the same weights on both
    # (the Dropout masks come from each layer's RNG; reseed both alike)
    for m in (model, loaded):
        reseed(m)
    model.fit(xs, ys, epochs=1, batch_size=8, shuffle=False, verbose=0)
    loaded.fit(xs, ys, epochs=1, batch_size=8, shuffle=False, verbose=0)
    assert_same_weights(model, loaded)


def test_fresh_optimizer_state_would_differ(tmp_path):
    """Control for the test above: without the saved optimizer state training diverges."""
    x, y = blobs()
    model = sequential()
    model.fit(x, y, epochs=2, batch_size=8, verbose=0)
    model.save(tmp_path / "m.nbm")
    fresh = nb.load_model(tmp_path / "m.nbm", compile=False)
    fresh.compile(nb.optimizers.Adam(0.01), "sparse_categorical_crossentropy")
    for m in (model, fresh):
        reseed(m)
        m.fit(x, y, epochs=1, batch_size=8, shuffle=False, verbose=0)
    assert not np.array_equal(model.get_weights()[0], fresh.get_weights()[0])


def test_load_uncompiled_model_predicts(tmp_path):
    model = nb.Sequential([layers.Input((4,)), layers.Dense(2)], seed=0)  # never compiled
    model.save(tmp_path / "m.nbm")
    loaded = nb.load_model(tmp_path / "m.nbm")
    x, _ = blobs(n=5)
    np.testing.assert_array_equal(loaded.predict(x), model.predict(x))
    with pytest.raises(ValueError, match="compile"):
        loaded.evaluate(x, np.zeros((5, 2)))


def test_save_weights_load_weights(tmp_path):
    x, y = blobs()
    a = sequential(seed=1)
    a.fit(x, y, epochs=1, verbose=0)
    a.save_weights(tmp_path / "w.nbm")
    b = sequential(seed=2)
    assert not np.array_equal(a.get_weights()[0], b.get_weights()[0])
    b.load_weights(tmp_path / "w.nbm")
    assert_same_weights(a, b)
    np.testing.assert_array_equal(a.predict(x), b.predict(x))
    # a weights file is not a model
    with pytest.raises(ValueError, match="holds only weights"):
        nb.load_model(tmp_path / "w.nbm")
    # weights of another architecture are refused
    other = nb.Sequential([layers.Input((4,)), layers.Dense(5), layers.Dense(3)])
    with pytest.raises(ValueError, match="shape"):
        other.load_weights(tmp_path / "w.nbm")


def test_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError):
        nb.load_model(tmp_path / "missing.nbm")
    np.savez(tmp_path / "other.npz", a=np.zeros(3))
    with pytest.raises(ValueError, match="not an nbmodel file"):
        nb.load_model(tmp_path / "other.npz")


def test_crash_in_the_middle_of_save_keeps_the_previous_file(tmp_path, monkeypatch):
    x, y = blobs()
    model = sequential()
    path = tmp_path / "m.nbm"
    model.save(path)
    old_weights = model.get_weights()
    old_bytes = path.read_bytes()
    model.fit(x, y, epochs=1, verbose=0)  # new weights

    def crashing_savez(f, *args, **kwargs):
        f.write(b"PK\x03\x04 half an archive")  # some bytes reach the file, then the writer dies
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", crashing_savez)
    with pytest.raises(OSError, match="disk full"):
        model.save(path)
    with pytest.raises(OSError, match="disk full"):
        model.save_weights(path)
    monkeypatch.undo()

    assert path.read_bytes() == old_bytes
    loaded = nb.load_model(path)
    for u, v in zip(loaded.get_weights(), old_weights):
        np.testing.assert_array_equal(u, v)
    assert sorted(os.listdir(tmp_path)) == ["m.nbm"]  # no temp file left behind


def test_custom_layer_needs_custom_objects(tmp_path):
    class Doubler(layers.Layer):
        def forward(self, x, training=False):
            return np.multiply(x, 2, dtype=self.dtype)

        def backward(self, dy):
            return 2 * dy

    model = nb.Sequential([layers.Input((3,)), Doubler(name="dbl"), layers.Dense(2)], seed=0)
    model.save(tmp_path / "m.nbm")
    with pytest.raises(ValueError, match="unknown layer class 'Doubler'"):
        nb.load_model(tmp_path / "m.nbm")
    loaded = nb.load_model(tmp_path / "m.nbm", custom_objects={"Doubler": Doubler})
    x = np.ones((2, 3), "float32")
    np.testing.assert_array_equal(loaded.predict(x), model.predict(x))


def test_get_config_round_trip():
    model = functional()
    cfg = model.get_config()
    assert cfg["class"] == "Model" and [i["name"] for i in cfg["inputs"]] == ["a", "b"]
    rebuilt = io.model_from_config(cfg)
    assert [layer.name for layer in rebuilt.layers] == [layer.name for layer in model.layers]
    assert [w.shape for w in rebuilt.get_weights()] == [w.shape for w in model.get_weights()]


FAMILIES = {
    "conv": (lambda: [layers.Input((6, 6, 2)), layers.Conv2D(3, 3, padding="same", activation="relu"),
                      layers.BatchNormalization(), layers.MaxPooling2D(2), layers.GlobalAveragePooling2D(),
                      layers.Dense(3, activation="softmax")], (4, 6, 6, 2)),
    "recurrent": (lambda: [layers.Input((5, 3)), layers.Bidirectional(layers.LSTM(4, return_sequences=True)),
                           layers.GRU(3), layers.Dense(3, activation="softmax")], (4, 5, 3)),
    "attention": (lambda: [layers.Input((5,), dtype="int64"), layers.PositionalEmbedding(5, 10, 6),
                           layers.TransformerEncoder(2, 3, 8, dropout=0.1), layers.Flatten(),
                           layers.Dense(3, activation="softmax")], None),
}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_save_load_layer_families(tmp_path, family):
    make, shape = FAMILIES[family]
    rng = np.random.default_rng(0)
    x = rng.integers(0, 10, (4, 5)) if shape is None else rng.standard_normal(shape).astype("float32")
    y = rng.integers(0, 3, 4)
    model = nb.Sequential(make(), seed=0)
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(x, y, epochs=1, batch_size=2, verbose=0)
    model.save(tmp_path / "m.nbm")
    loaded = nb.load_model(tmp_path / "m.nbm")
    np.testing.assert_array_equal(loaded.predict(x), model.predict(x))  # includes moving statistics
    for m in (model, loaded):
        reseed(m)
        m.fit(x, y, epochs=1, batch_size=2, shuffle=False, verbose=0)
    assert_same_weights(model, loaded)


_SAVER = """
import sys
import nbmodel as nb
from nbmodel import layers as L
model = nb.Sequential([L.Input((400,)), L.Dense(1000)], seed=int(sys.argv[2]))
print("READY", flush=True)
while True:
    model.save(sys.argv[1])
"""


def test_saves_killed_mid_write_leave_a_loadable_file_and_no_temporary(tmp_path):
    """20 savers killed with SIGKILL at random moments of back-to-back saves: after each
    kill the file loads and holds the previous or the new weights; the temporary files the
    kills leave are removed by the next save."""
    import signal
    import subprocess
    import sys
    import time

    path = str(tmp_path / "model.nbm")

    def weights(seed):
        return nb.Sequential([layers.Input((400,)), layers.Dense(1000)], seed=seed).get_weights()

    nb.Sequential([layers.Input((400,)), layers.Dense(1000)], seed=0).save(path)
    rng = np.random.default_rng(0)
    left_behind, previous = 0, weights(0)
    for seed in range(1, 21):
        saver = subprocess.Popen([sys.executable, "-c", _SAVER, path, str(seed)], stdout=subprocess.PIPE, text=True)
        assert saver.stdout.readline().strip() == "READY"
        time.sleep(float(rng.uniform(0.02, 0.2)))
        saver.send_signal(signal.SIGKILL)
        saver.wait(30)
        saver.stdout.close()
        left_behind += any(name.endswith(".tmp") for name in os.listdir(tmp_path))
        loaded = nb.load_model(path).get_weights()
        new = weights(seed)
        assert any(all(np.array_equal(a, b) for a, b in zip(loaded, w)) for w in (previous, new)), seed
        previous = loaded
    assert left_behind > 0, "no kill landed mid-save: the test did not exercise the temporary files"
    nb.load_model(path).save(path)
    assert sorted(os.listdir(tmp_path)) == ["model.nbm"]


def test_stale_temporaries_of_live_writers_and_other_hosts_are_kept(tmp_path):
    import socket

    path = str(tmp_path / "m.nbm")
    dead, host = _dead_pid(), socket.gethostname().replace(".", "-")
    ours = tmp_path / f".m.nbm.{host}.{dead}.abc.tmp"
    live = tmp_path / f".m.nbm.{host}.{os.getpid()}.abc.tmp"
    other_host = tmp_path / f".m.nbm.another-node.{dead}.abc.tmp"
    for f in (ours, live, other_host):
        f.write_bytes(b"partial")
    assert io.remove_stale_temporaries(path) == [ours.name]
    assert live.exists() and other_host.exists() and not ours.exists()


def _dead_pid():
    import subprocess
    import sys

    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid
