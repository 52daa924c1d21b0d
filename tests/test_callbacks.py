"""Callbacks, each against its documented Keras 3 behaviour.

Monitored values are scripted: a callback listed first writes ``logs["score"]``
(the logs dict is shared by every callback of an epoch), so each rule is
checked on a known sequence instead of on whatever training happens to give.
"""
import csv
import math
import os

import numpy as np
import pytest

import nbmodel as nb
from nbmodel import callbacks as cb
from nbmodel import layers


def blobs(n=32, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    x = rng.standard_normal((3, 4))[y] * 3 + rng.standard_normal((n, 4))
    return x.astype("float32"), y


def model_(lr=0.05, seed=0, dropout=0.0, optimizer=None):
    stack = [layers.Input((4,)), layers.Dense(6, activation="relu")]
    if dropout:
        stack.append(layers.Dropout(dropout))
    stack.append(layers.Dense(3, activation="softmax"))
    m = nb.Sequential(stack, seed=seed)
    m.compile(optimizer or nb.optimizers.SGD(lr), "sparse_categorical_crossentropy", metrics=["accuracy"])
    return m


class Script(cb.Callback):
    """Writes values[epoch] into logs[key] (put it first in the callback list)."""

    def __init__(self, values, key="score"):
        super().__init__()
        self.values, self.key = values, key

    def on_epoch_end(self, epoch, logs=None):
        logs[self.key] = self.values[epoch]


class WeightsPerEpoch(cb.Callback):
    def on_train_begin(self, logs=None):
        self.weights = {}

    def on_epoch_end(self, epoch, logs=None):
        self.weights[epoch] = self.model.get_weights()


def fit(model, callbacks, epochs, **kw):
    x, y = blobs()
    kw.setdefault("batch_size", 8)
    return model.fit(x, y, epochs=epochs, verbose=0, callbacks=callbacks, **kw)


def same(wa, wb):
    return len(wa) == len(wb) and all(np.array_equal(u, v) for u, v in zip(wa, wb))


# ----------------------------------------------------------------- History
def test_history_records_every_epoch():
    m = model_()
    h = fit(m, [], epochs=3, validation_split=0.25)
    assert h is m.history and isinstance(h, cb.History)
    assert h.epoch == [0, 1, 2]
    assert set(h.history) == {"loss", "accuracy", "val_loss", "val_accuracy"}
    assert all(len(v) == 3 for v in h.history.values())
    assert all(isinstance(v, float) for v in h.history["loss"])


def test_callback_hook_order():
    calls = []
    lam = cb.LambdaCallback(
        on_train_begin=lambda logs: calls.append("train_begin"),
        on_epoch_begin=lambda e, logs: calls.append(f"epoch_begin {e}"),
        on_train_batch_begin=lambda b, logs: calls.append(f"batch_begin {b}"),
        on_train_batch_end=lambda b, logs: calls.append(f"batch_end {b} {sorted(logs)}"),
        on_epoch_end=lambda e, logs: calls.append(f"epoch_end {e} {sorted(logs)}"),
        on_train_end=lambda logs: calls.append("train_end"))
    x, y = blobs(n=16)
    model_().fit(x, y, batch_size=8, epochs=2, verbose=0, callbacks=[lam], validation_split=0.5)
    batch_keys = "['accuracy', 'loss', 'samples_per_s']"
    epoch_keys = "['accuracy', 'loss', 'val_accuracy', 'val_loss']"
    assert calls == ["train_begin",
                     "epoch_begin 0", "batch_begin 0", f"batch_end 0 {batch_keys}", f"epoch_end 0 {epoch_keys}",
                     "epoch_begin 1", "batch_begin 0", f"batch_end 0 {batch_keys}", f"epoch_end 1 {epoch_keys}",
                     "train_end"]


def test_callbacks_must_be_callbacks():
    with pytest.raises(TypeError, match="Callback"):
        fit(model_(), [lambda: None], epochs=1)


# ----------------------------------------------------------- ProgbarLogger
def test_progbar_verbose_1_draws_a_bar_per_epoch(capsys):
    x, y = blobs()
    model_().fit(x, y, epochs=2, batch_size=8, verbose=1)
    out = capsys.readouterr()
    text = out.err + out.out
    assert "Epoch 1/2" in text and "Epoch 2/2" in text
    assert "4/4" in text  # tqdm's step counter reached the end of the epoch
    assert "loss=" in text and "accuracy=" in text and "samples/s=" in text


def test_progbar_verbose_2_one_line_per_epoch(capsys):
    x, y = blobs()
    model_().fit(x, y, epochs=3, batch_size=8, verbose=2, validation_split=0.25,
                 callbacks=[cb.LearningRateScheduler(lambda e, lr: lr)])
    out = capsys.readouterr()
    lines = [line for line in out.out.splitlines() if line.strip()]
    assert len(lines) == 3 and out.err == ""
    for i, line in enumerate(lines):
        assert line.startswith(f"Epoch {i + 1}/3")
        for key in ("loss:", "accuracy:", "val_loss:", "val_accuracy:", "learning_rate:"):
            assert key in line


def test_verbose_0_prints_nothing(capsys):
    fit(model_(), [], epochs=2)
    out = capsys.readouterr()
    assert out.out == "" and out.err == ""


# ----------------------------------------------------------- EarlyStopping
def epochs_run(values, epochs=None, **kw):
    es = cb.EarlyStopping(monitor="score", **kw)
    h = fit(model_(), [Script(values), es], epochs=epochs or len(values))
    return len(h.epoch), es


def test_early_stopping_patience():
    n, es = epochs_run([1.0, 0.9, 0.95, 0.96, 0.97, 0.98, 0.99], mode="min", patience=2)
    assert n == 4 and es.stopped_epoch == 3 and es.best == 0.9 and es.best_epoch == 1
    n, _ = epochs_run([1.0, 0.9, 0.95, 0.96, 0.97, 0.98, 0.99], mode="min", patience=0)
    assert n == 3


def test_early_stopping_min_delta():
    values = [1.0, 0.95, 0.93, 0.92, 0.91]
    assert epochs_run(values, mode="min", patience=1)[0] == 5  # every epoch improves
    assert epochs_run(values, mode="min", patience=1, min_delta=0.1)[0] == 2  # none by 0.1


def test_early_stopping_mode():
    values = [0.1, 0.2, 0.15, 0.1, 0.05, 0.0]
    assert epochs_run(values, mode="max", patience=1)[0] == 3
    assert epochs_run(values, mode="min", patience=1)[0] == 2
    # auto: names with "acc" are maximized, the rest minimized
    assert cb.EarlyStopping(monitor="val_accuracy").mode == "max"
    assert cb.EarlyStopping(monitor="val_loss").mode == "min"
    with pytest.raises(ValueError, match="mode"):
        cb.EarlyStopping(mode="up")


def test_early_stopping_baseline():
    values = [1.0] * 6
    assert epochs_run(values, mode="min", patience=2)[0] == 3
    # not beating the baseline never resets the wait
    assert epochs_run(values, mode="min", patience=2, baseline=0.5)[0] == 2
    # beating it does
    assert epochs_run([0.4] + [0.4] * 5, mode="min", patience=2, baseline=0.5)[0] == 3


def test_early_stopping_start_from_epoch():
    values = [1.0] * 6
    assert epochs_run(values, mode="min", patience=1)[0] == 2
    assert epochs_run(values, mode="min", patience=1, start_from_epoch=2)[0] == 4


def test_early_stopping_restore_best_weights():
    rec = WeightsPerEpoch()
    es = cb.EarlyStopping(monitor="score", patience=2, restore_best_weights=True)
    m = model_()
    h = fit(m, [Script([1.0, 0.5, 0.8, 0.9, 1.0]), es, rec], epochs=5)
    assert h.epoch == [0, 1, 2, 3]
    assert same(m.get_weights(), rec.weights[1])
    assert not same(rec.weights[1], rec.weights[3])


def test_early_stopping_restores_best_weights_also_without_stopping():
    rec = WeightsPerEpoch()
    es = cb.EarlyStopping(monitor="score", patience=5, restore_best_weights=True)
    m = model_()
    fit(m, [Script([1.0, 0.5, 0.8]), es, rec], epochs=3)
    assert es.stopped_epoch == 0
    assert same(m.get_weights(), rec.weights[1])


def test_early_stopping_without_restore_keeps_last_weights():
    rec = WeightsPerEpoch()
    m = model_()
    fit(m, [Script([1.0, 0.5, 0.8, 0.9]), cb.EarlyStopping(monitor="score", patience=2), rec], epochs=4)
    assert same(m.get_weights(), rec.weights[3])


def test_early_stopping_missing_monitor_warns():
    with pytest.warns(UserWarning, match="'nope' is not in the logs"):
        h = fit(model_(), [cb.EarlyStopping(monitor="nope")], epochs=2)
    assert len(h.epoch) == 2


# --------------------------------------------------------- ModelCheckpoint
def test_model_checkpoint_filepath_template(tmp_path):
    path = str(tmp_path / "ckpt-{epoch:02d}-{val_loss:.3f}.nbm")
    m = model_()
    h = fit(m, [cb.ModelCheckpoint(path)], epochs=3, validation_split=0.25)
    expected = [f"ckpt-{e + 1:02d}-{v:.3f}.nbm" for e, v in enumerate(h.history["val_loss"])]
    assert sorted(os.listdir(tmp_path)) == expected
    last = nb.load_model(tmp_path / expected[-1])
    assert same(last.get_weights(), m.get_weights())
    assert last.optimizer is not None  # a full model, not only weights


def test_model_checkpoint_save_best_only(tmp_path):
    rec = WeightsPerEpoch()
    path = tmp_path / "best.nbm"
    ckpt = cb.ModelCheckpoint(path, monitor="score", mode="min", save_best_only=True)
    m = model_()
    fit(m, [Script([1.0, 0.5, 0.7, 0.4, 0.6]), ckpt, rec], epochs=5)
    assert same(nb.load_model(path).get_weights(), rec.weights[3])
    assert ckpt.best == 0.4
    # one file per improving epoch with a template
    ckpt = cb.ModelCheckpoint(tmp_path / "e{epoch}.nbm", monitor="score", mode="min", save_best_only=True)
    fit(model_(), [Script([1.0, 0.5, 0.7, 0.4, 0.6]), ckpt], epochs=5)
    assert sorted(f for f in os.listdir(tmp_path) if f.startswith("e")) == ["e1.nbm", "e2.nbm", "e4.nbm"]


def test_model_checkpoint_save_weights_only(tmp_path):
    path = tmp_path / "w-{epoch}.nbm"
    m = model_()
    fit(m, [cb.ModelCheckpoint(path, save_weights_only=True)], epochs=2)
    with pytest.raises(ValueError, match="holds only weights"):
        nb.load_model(tmp_path / "w-2.nbm")
    other = model_(seed=5)
    other.load_weights(tmp_path / "w-2.nbm")
    assert same(other.get_weights(), m.get_weights())


def test_model_checkpoint_unknown_template_key(tmp_path):
    with pytest.raises(KeyError, match="val_loss"):
        fit(model_(), [cb.ModelCheckpoint(tmp_path / "{val_loss}.nbm")], epochs=1)


# ---------------------------------------------------- LearningRateScheduler
def test_learning_rate_scheduler():
    seen = []
    sched = cb.LearningRateScheduler(lambda epoch, lr: 0.1 if epoch == 0 else (0.0 if epoch == 1 else lr * 0.5))
    rec = WeightsPerEpoch()
    spy = cb.LambdaCallback(on_epoch_begin=lambda e, logs: seen.append(m.optimizer.learning_rate))
    m = model_()
    h = fit(m, [sched, spy, rec], epochs=4)
    assert seen == pytest.approx([0.1, 0.0, 0.0, 0.0])
    assert h.history["learning_rate"] == pytest.approx([0.1, 0.0, 0.0, 0.0])
    assert same(rec.weights[0], rec.weights[1])  # lr 0: no change


def test_learning_rate_scheduler_one_argument_schedule():
    m = model_()
    h = fit(m, [cb.LearningRateScheduler(lambda epoch: 0.1 / (epoch + 1))], epochs=3)
    assert h.history["learning_rate"] == pytest.approx([0.1, 0.05, 0.1 / 3])


# -------------------------------------------------------- ReduceLROnPlateau
def test_reduce_lr_on_plateau_factor_patience_cooldown_min_lr():
    seen = []
    m = model_(lr=0.1)
    spy = cb.LambdaCallback(on_epoch_begin=lambda e, logs: seen.append(m.optimizer.learning_rate))
    rl = cb.ReduceLROnPlateau(monitor="score", factor=0.5, patience=1, cooldown=2, min_lr=0.02)
    h = fit(m, [Script([1.0] * 8), rl, spy], epochs=8)
    assert seen == pytest.approx([0.1, 0.1, 0.05, 0.05, 0.025, 0.025, 0.02, 0.02])
    assert h.history["learning_rate"] == pytest.approx(seen)


def test_reduce_lr_on_plateau_improvement_resets_wait():
    seen = []
    m = model_(lr=0.1)
    spy = cb.LambdaCallback(on_epoch_begin=lambda e, logs: seen.append(m.optimizer.learning_rate))
    rl = cb.ReduceLROnPlateau(monitor="score", factor=0.1, patience=2, min_delta=0.01)
    fit(m, [Script([1.0, 0.9, 0.895, 0.8, 0.799, 0.798]), rl, spy], epochs=6)
    # 0.895 is within min_delta of 0.9 (wait 1), 0.8 improves, then two stalls reduce
    assert seen == pytest.approx([0.1] * 6)
    assert m.optimizer.learning_rate == pytest.approx(0.01)
    with pytest.raises(ValueError, match="factor"):
        cb.ReduceLROnPlateau(factor=1.5)


# ---------------------------------------------------------- TerminateOnNaN
def diverging():
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((64, 4)) * 1e3).astype("float32")
    y = rng.standard_normal((64, 1)).astype("float32")
    m = nb.Sequential([layers.Input((4,)), layers.Dense(1)], seed=0)
    m.compile(nb.optimizers.SGD(10.0), "mse")
    return m, x, y


def test_terminate_on_nan_stops_a_diverging_run(capsys):
    m, x, y = diverging()
    h = m.fit(x, y, epochs=20, batch_size=4, verbose=0, callbacks=[cb.TerminateOnNaN()])
    assert len(h.epoch) < 20
    assert "TerminateOnNaN" in capsys.readouterr().out
    m2, x, y = diverging()
    with pytest.raises(FloatingPointError, match=r"epoch \d+, step \d+"):
        m2.fit(x, y, epochs=20, batch_size=4, verbose=0)


# --------------------------------------------------------------- CSVLogger
def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.reader(f))


def test_csv_logger_and_append(tmp_path):
    path = tmp_path / "log.csv"
    m = model_()
    h = fit(m, [cb.CSVLogger(path)], epochs=2, validation_split=0.25)
    rows = read_csv(path)
    assert rows[0] == ["epoch", "accuracy", "loss", "val_accuracy", "val_loss"]
    assert [r[0] for r in rows[1:]] == ["0", "1"]
    assert [float(r[2]) for r in rows[1:]] == h.history["loss"]
    # append: the header is not repeated
    fit(m, [cb.CSVLogger(path, append=True)], epochs=4, initial_epoch=2, validation_split=0.25)
    rows = read_csv(path)
    assert len(rows) == 5 and rows[0][0] == "epoch" and [r[0] for r in rows[1:]] == ["0", "1", "2", "3"]
    # without append the file starts over
    fit(m, [cb.CSVLogger(path, separator=";")], epochs=1)
    with open(path) as f:
        assert f.read().splitlines()[0] == "epoch;accuracy;loss"


def test_csv_logger_full_disk_leaves_no_cut_off_row(tmp_path, monkeypatch):
    """A row that cannot be written whole (ENOSPC part way, as on a full disk) is taken
    back off: fit stops with an OSError naming the file and epoch, and the file holds the
    complete rows of the epochs before."""
    import errno
    import functools
    import os

    path = tmp_path / "log.csv"
    calls = {"n": 0}

    def full_disk_on_second_write(fd, data):
        calls["n"] += 1
        if calls["n"] == 2:  # header and epoch 0 went through; epoch 1: half a row, then ENOSPC
            os.write(fd, data[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")
        return os.write(fd, data)

    monkeypatch.setattr(cb, "_append_whole", functools.partial(cb._append_whole, write=full_disk_on_second_write))
    m = model_()
    with pytest.raises(OSError, match=r"could not write epoch 1 to .*log\.csv.*No space left") as info:
        fit(m, [cb.CSVLogger(path)], epochs=3)
    assert info.value.errno == errno.ENOSPC
    rows = read_csv(path)
    assert [r[0] for r in rows] == ["epoch", "0"]
    with open(path, "rb") as f:
        assert f.read().endswith(b"\n")


# ---------------------------------------------------------- LambdaCallback
def test_lambda_callback():
    events = []
    lam = cb.LambdaCallback(on_epoch_end=lambda epoch, logs: events.append((epoch, round(logs["loss"], 6))),
                            on_train_end=lambda logs: events.append("end"))
    h = fit(model_(), [lam], epochs=2)
    assert events == [(0, round(h.history["loss"][0], 6)), (1, round(h.history["loss"][1], 6)), "end"]


def test_a_callback_can_stop_training():
    def stop(epoch, logs):
        if epoch == 1:
            m.stop_training = True

    m = model_()
    h = fit(m, [cb.LambdaCallback(on_epoch_end=stop)], epochs=5)
    assert h.epoch == [0, 1]


# -------------------------------------------------------- BackupAndRestore
class Crash(cb.Callback):
    """Raises at the start of ``epoch`` or, with ``step``, before that step of ``epoch``."""

    def __init__(self, epoch, step=None):
        super().__init__()
        self.epoch, self.step = epoch, step

    def on_epoch_begin(self, epoch, logs=None):
        self.current = epoch
        if self.step is None and epoch == self.epoch:
            raise RuntimeError(f"crash at epoch {epoch}")

    def on_train_batch_begin(self, batch, logs=None):
        if self.step is not None and self.current == self.epoch and batch == self.step:
            raise RuntimeError(f"crash at epoch {self.current}, step {batch}")


@pytest.mark.parametrize("step", [None, 2])
def test_backup_and_restore_resumes_after_a_crash(tmp_path, step):
    x, y = blobs()

    def run(callbacks, epochs=5):
        m = model_(seed=3, dropout=0.3, optimizer=nb.optimizers.Adam(0.01))  # shuffle, dropout and Adam state
        return m, m.fit(x, y, epochs=epochs, batch_size=8, verbose=0, callbacks=callbacks)

    reference, _ = run([])

    backup = tmp_path / "backup"
    crash = Crash(epoch=3, step=step)
    with pytest.raises(RuntimeError, match="crash"):
        run([cb.BackupAndRestore(backup), crash])
    assert os.listdir(backup) == ["latest.nbm"]

    # a fresh process: a new model, a new fit call
    resumed_epochs = []
    spy = cb.LambdaCallback(on_epoch_begin=lambda e, logs: resumed_epochs.append(e))
    resumed, h = run([cb.BackupAndRestore(backup), spy])
    assert resumed_epochs == [3, 4] and h.epoch == [3, 4]
    assert same(resumed.get_weights(), reference.get_weights())
    assert not os.path.exists(backup / "latest.nbm")  # deleted after a normal end


def test_backup_and_restore_keep_checkpoint(tmp_path):
    fit(model_(), [cb.BackupAndRestore(tmp_path, delete_checkpoint=False)], epochs=2)
    assert os.path.exists(tmp_path / "latest.nbm")
    # a finished run's backup makes the next fit start after its last epoch
    h = fit(model_(), [cb.BackupAndRestore(tmp_path, delete_checkpoint=False)], epochs=3)
    assert h.epoch == [2]


def test_initial_epoch():
    seen = []
    h = fit(model_(), [cb.LambdaCallback(on_epoch_begin=lambda e, logs: seen.append(e))], epochs=4,
            initial_epoch=2)
    assert seen == [2, 3] and h.epoch == [2, 3]
    assert all(math.isfinite(v) for v in h.history["loss"])


def test_csv_logger_file_is_complete_when_fit_raises(tmp_path):
    class Crash(cb.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            if epoch == 2:
                raise RuntimeError("crash")

    path = tmp_path / "log.csv"
    with pytest.raises(RuntimeError, match="crash"):
        fit(model_(), [cb.CSVLogger(path), Crash()], epochs=4)
    rows = list(csv.reader(open(path)))
    assert rows[0][0] == "epoch" and [r[0] for r in rows[1:]] == ["0", "1"]


def test_model_checkpoint_every_n_batches(tmp_path):
    # save_freq=3 counts batches across epochs (Keras): 4 batches per epoch, 2 epochs -> saves
    # after batches 3, 6 -> epoch 1 batch 3, epoch 2 batch 2
    x = np.random.default_rng(0).standard_normal((16, 3))
    y = x[:, :1] * 2.0
    model = nb.Sequential([nb.layers.Input((3,)), nb.layers.Dense(1)], seed=0)
    model.compile(optimizer="sgd", loss="mse")
    ckpt = nb.callbacks.ModelCheckpoint(str(tmp_path / "ckpt-{epoch}-{batch}.nbm"), save_freq=3)
    model.fit(x, y, batch_size=4, epochs=2, verbose=0, shuffle=False, callbacks=[ckpt])
    assert sorted(os.listdir(tmp_path)) == ["ckpt-1-3.nbm", "ckpt-2-2.nbm"]


@pytest.mark.parametrize("freq", [0, -2, 2.5, "batch", True])
def test_save_freq_must_be_epoch_or_a_positive_count(tmp_path, freq):
    for cls, args in ((nb.callbacks.ModelCheckpoint, (str(tmp_path / "m.nbm"),)),
                      (nb.callbacks.BackupAndRestore, (str(tmp_path / "bk"),))):
        with pytest.raises(ValueError, match=f"{cls.__name__}: save_freq must be 'epoch' or an integer"):
            cls(*args, save_freq=freq)
