"""fit(workers=N): the same training as one process, and clean failure.

Each fit here spawns workers (a few seconds each), so the models are tiny.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from _models import FAMILIES, RaiseInTraining, assert_same_training, available, case

import nbmodel as nb
from nbmodel import layers as L
from nbmodel.callbacks import Callback, ModelCheckpoint
from nbmodel.parallel import ParallelError
from nbmodel.parallel.process import segment_prefix

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))

FAMILY_PARAMS = [pytest.param(f, marks=pytest.mark.skipif(not available(f), reason=f"{f}: layer module absent"))
                 for f in FAMILIES]


def _workers_alive():
    return [p for p in mp.active_children() if p.name.startswith("nbmodel-worker")]


def _segments_left():
    try:
        return [f for f in os.listdir("/dev/shm") if f.startswith(segment_prefix())]
    except FileNotFoundError:  # no /dev/shm on this system
        return []


@pytest.fixture(autouse=True)
def _nothing_left_behind():
    yield
    assert _workers_alive() == []
    assert _segments_left() == []


@pytest.mark.parametrize("workers", [2, 3])
@pytest.mark.parametrize("family", FAMILY_PARAMS)
def test_same_training_as_one_process(family, workers, float64):
    build, x, y, fit = case(family)
    ref = build()
    ref_hist = ref.fit(x, y, verbose=0, **fit)
    model = build()
    hist = model.fit(x, y, verbose=0, workers=workers, **fit)
    assert_same_training(ref, ref_hist, model, hist)
    # the generators advanced alike too: one more epoch in one process still matches
    more = dict(fit, epochs=1)
    assert_same_training(ref, ref.fit(x, y, verbose=0, **more), model, model.fit(x, y, verbose=0, **more))


def test_killed_worker_raises_and_cleans_up(float64):
    build, x, y, fit = case("dense")
    killed = {}

    class Kill(Callback):
        def on_train_batch_end(self, batch, logs=None):
            if batch == 1 and not killed:
                victim = _workers_alive()[0]
                killed["t"] = time.monotonic()
                os.kill(victim.pid, signal.SIGKILL)

    model = build()
    with pytest.raises(ParallelError, match="killed by signal 9"):
        model.fit(x, y, verbose=0, workers=2, epochs=20, batch_size=8, callbacks=[Kill()])
    assert time.monotonic() - killed["t"] < 30
    assert _workers_alive() == [] and _segments_left() == []


def test_worker_killed_mid_step_while_others_wait_in_batch_norm_sync(float64):
    """Shards of 3/3/2: the worker with 2 samples dies after BatchNormalization's forward,
    while the two others wait for it in the backward's statistics sum."""
    from _models import DieOnShardOf

    x = np.random.default_rng(0).standard_normal((16, 3))
    y = np.zeros(16, np.int64)
    model = nb.Sequential([L.Input((3,)), L.Dense(4), L.BatchNormalization(), DieOnShardOf(2), L.Dense(2)],
                          seed=0)
    model.compile(optimizer="sgd", loss=nb.losses.SparseCategoricalCrossentropy(from_logits=True))
    t0 = time.monotonic()
    with pytest.raises(ParallelError, match="killed by signal 9"):
        model.fit(x, y, verbose=0, workers=3, epochs=1, batch_size=8)
    assert time.monotonic() - t0 < 60  # spawning included
    assert _workers_alive() == [] and _segments_left() == []


def test_worker_exception_reaches_the_parent(float64):
    x = np.random.default_rng(0).standard_normal((12, 3))
    y = np.zeros(12, np.int64)
    model = nb.Sequential([L.Input((3,)), L.Dense(2), RaiseInTraining()], seed=0)
    model.compile(optimizer="sgd", loss=nb.losses.SparseCategoricalCrossentropy(from_logits=True))
    t0 = time.monotonic()
    with pytest.raises(ParallelError, match="deliberate failure in a worker"):
        model.fit(x, y, verbose=0, workers=2, epochs=3, batch_size=4)
    assert time.monotonic() - t0 < 60  # spawning included


def test_ctrl_c_stops_cleanly():
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([HERE, REPO, os.environ.get("PYTHONPATH", "")]))
    r = subprocess.run([sys.executable, os.path.join(HERE, "interrupt_script.py")], env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "INTERRUPTED workers=0 segments=0" in r.stdout, r.stdout + r.stderr


def test_checkpoints_move_between_parallel_and_single(tmp_path, float64):
    build, x, y, _ = case("dense")
    fit = dict(batch_size=8, shuffle=False, verbose=0)
    ref = build()
    ref.fit(x, y, epochs=3, **fit)

    # two epochs with workers (saved by ModelCheckpoint), the third in one process
    ckpt = str(tmp_path / "par.nbm")
    build().fit(x, y, epochs=2, workers=2, callbacks=[ModelCheckpoint(ckpt, monitor="loss")], **fit)
    resumed = nb.load_model(ckpt)
    resumed.fit(x, y, epochs=3, initial_epoch=2, **fit)
    for a, b in zip(ref.get_weights(), resumed.get_weights()):
        np.testing.assert_allclose(b, a, rtol=1e-10, atol=1e-12)

    # one epoch in one process, the rest with workers
    single = build()
    single.fit(x, y, epochs=1, **fit)
    single.save(str(tmp_path / "one.nbm"))
    resumed = nb.load_model(str(tmp_path / "one.nbm"))
    resumed.fit(x, y, epochs=3, initial_epoch=1, workers=2, **fit)
    for a, b in zip(ref.get_weights(), resumed.get_weights()):
        np.testing.assert_allclose(b, a, rtol=1e-10, atol=1e-12)


def test_batch_normalization_uses_global_batch_statistics(float64):
    """One step: the moving statistics are those of the whole batch, not of either shard."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((16, 3)) * 3 + 1
    y = rng.integers(0, 2, 16)
    model = nb.Sequential([L.Input((3,)), L.Dense(4), L.BatchNormalization(momentum=0.5), L.Dense(2)], seed=0)
    model.compile(optimizer="adam", loss=nb.losses.SparseCategoricalCrossentropy(from_logits=True))
    h = model.layers[0].forward(x)  # the BN input of the one step, before the update
    model.fit(x, y, verbose=0, workers=2, epochs=1, batch_size=16, shuffle=False)
    bn = model.layers[1]
    np.testing.assert_allclose(bn.state["moving_mean"], 0.5 * h.mean(axis=0), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(bn.state["moving_variance"], 0.5 + 0.5 * h.var(axis=0), rtol=1e-12)
    assert bn.stat_sync is None  # nothing of the workers' synchronization stays on the model


def test_cli_train_with_workers(tmp_path, capsys):
    from nbmodel import cli

    rc = cli.main(["train", os.path.join(REPO, "examples", "digits_mlp.toml"), "--workers", "2",
                   "--epochs", "1", "--verbose", "0", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "test accuracy" in out
    assert os.path.exists(tmp_path / "model.nbm")


@pytest.mark.parametrize("kwargs, match", [
    (dict(workers=0), "workers must be an integer"),
    (dict(workers=2.5), "workers must be an integer"),
    (dict(workers=2, distributed="mpi"), "not both"),
    (dict(distributed="nccl"), "distributed must be"),
    (dict(workers=3, batch_size=2), "cannot be split over 3 replicas"),
])
def test_bad_arguments(kwargs, match):
    model = nb.Sequential([L.Input((3,)), L.Dense(2)], seed=0)
    model.compile(optimizer="sgd", loss="mse")
    with pytest.raises(ValueError, match=match):
        model.fit(np.zeros((6, 3)), np.zeros((6, 2)), verbose=0, **kwargs)


def test_several_outputs_with_label_dependent_count_are_refused():
    inp = L.Input((3,))
    model = nb.Model(inputs=inp, outputs=[L.Dense(3)(inp), L.Dense(3)(inp)], seed=0)
    loss = nb.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=0)
    model.compile(optimizer="sgd", loss=[loss, "sparse_categorical_crossentropy"])
    y = np.ones(6, np.int64)
    with pytest.raises(NotImplementedError, match="several outputs"):
        model.fit(np.zeros((6, 3)), [y, y], verbose=0, workers=2, batch_size=4)


@pytest.fixture
def short_deadline():
    before = nb.config.step_timeout()
    nb.config.set_step_timeout(4)
    yield 4
    nb.config.set_step_timeout(before)


class StopWorker1(Callback):
    """SIGSTOP of worker 1 after the second batch (once); keeps its pid and the time."""

    pid = t = None

    def on_train_batch_end(self, batch, logs=None):
        if batch == 1 and self.pid is None:
            victim = next(p for p in _workers_alive() if p.name == "nbmodel-worker-1")
            self.pid, self.t = victim.pid, time.monotonic()
            os.kill(victim.pid, signal.SIGSTOP)


def test_stopped_worker_ends_fit_within_the_deadline(short_deadline, float64):
    """SIGSTOP of a worker (its process is alive, it never answers): fit ends with an
    error naming it once the step deadline passes, and the workers are killed."""
    build, x, y, fit = case("dense")
    stop = StopWorker1()

    model = build()
    with pytest.raises(ParallelError, match=r"worker 1 \(pid \d+, stopped\): no answer within 4 s") as err:
        model.fit(x, y, verbose=0, workers=2, epochs=20, batch_size=8, callbacks=[stop])
    assert str(stop.pid) in str(err.value)
    assert time.monotonic() - stop.t < short_deadline + 15


def test_worker_stopped_while_the_parent_waits_in_a_batch_norm_sum(short_deadline, float64):
    """The parent is replica 0: with a worker stopped it waits in BatchNormalization's
    statistics sum, not for a reply, and the step deadline still ends fit naming the worker."""
    x = np.random.default_rng(0).standard_normal((32, 3))
    y = np.zeros(32, np.int64)
    stop = StopWorker1()

    model = nb.Sequential([L.Input((3,)), L.Dense(4), L.BatchNormalization(), L.Dense(2)], seed=0)
    model.compile(optimizer="sgd", loss=nb.losses.SparseCategoricalCrossentropy(from_logits=True))
    with pytest.raises(ParallelError, match=r"worker 1 \(pid \d+, stopped\): no answer within 4 s "
                                            r"\(BatchNormalization's statistics sum\)"):
        model.fit(x, y, verbose=0, workers=2, epochs=20, batch_size=8, callbacks=[stop])
    assert time.monotonic() - stop.t < short_deadline + 15


def test_the_parent_gets_back_its_threads_generators_and_layers(float64):
    """The parent ran replica 0 with cores // N threads, wrapped generators and a statistics
    sum installed in its BatchNormalization: all of it is undone when fit returns."""
    from nbmodel.parallel.common import GlobalBatchRNG

    x = np.random.default_rng(0).standard_normal((16, 3))
    y = np.zeros(16, np.int64)
    model = nb.Sequential([L.Input((3,)), L.Dense(4), L.BatchNormalization(), L.Dropout(0.5), L.Dense(2)],
                          seed=0)
    model.compile(optimizer="sgd", loss=nb.losses.SparseCategoricalCrossentropy(from_logits=True))
    before = nb.config.get_num_threads()
    model.fit(x, y, verbose=0, workers=2, epochs=2, batch_size=8)
    assert nb.config.get_num_threads() == before
    assert not any(isinstance(layer.rng, GlobalBatchRNG) for layer in model.training_core.random_layers())
    assert "stat_sync" not in vars(model.layers[1])


def test_deadline_setting_is_checked():
    with pytest.raises(ValueError, match="positive number of seconds"):
        nb.config.set_step_timeout(0)
    with pytest.raises(ValueError, match="positive number of seconds"):
        nb.config.set_step_timeout("soon")


def test_process_group_sigkill_leaves_no_shared_memory():
    """What a time limit, scancel or the OOM killer do: SIGKILL to the parent and its
    workers at once, mid-epoch. The segments were unlinked once the workers attached."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([HERE, REPO, os.environ.get("PYTHONPATH", "")]))
    job = subprocess.Popen([sys.executable, os.path.join(HERE, "group_kill_script.py")], env=env,
                           stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        line = job.stdout.readline()
        assert line.startswith("TRAINING"), line
    finally:
        os.killpg(job.pid, signal.SIGKILL)
        job.wait(30)
        job.stdout.close()
    assert [f for f in os.listdir("/dev/shm") if f.startswith(segment_prefix(job.pid))] == []


def test_segments_of_parents_killed_during_start_up_are_removed_by_the_next_fit():
    from nbmodel.parallel.process import remove_stale_segments

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    stale = f"/dev/shm/{segment_prefix(dead)}0_feed"
    live = f"/dev/shm/{segment_prefix()}0_beef"
    for f in (stale, live):
        with open(f, "wb") as fh:
            fh.write(b"x")
    try:
        assert os.path.basename(stale) in remove_stale_segments()
        assert not os.path.exists(stale) and os.path.exists(live)
    finally:
        for f in (stale, live):
            if os.path.exists(f):
                os.remove(f)


def test_state_vector_metrics_match_one_process(float64):
    # AUC, Precision, Recall, F1Score and R2Score exchange their whole state (not a
    # [total, count] pair) between workers: the logged values equal one process's
    rng = np.random.default_rng(0)
    x = rng.standard_normal((24, 4))
    y = (x[:, :1] + 0.3 * rng.standard_normal((24, 1)) > 0).astype(np.float64)

    def build():
        model = nb.Sequential([L.Input((4,)), L.Dense(1, activation="sigmoid")], seed=1)
        model.compile(optimizer="sgd", loss="binary_crossentropy",
                      metrics=["auc", "precision", "recall", nb.metrics.F1Score(threshold=0.5),
                               nb.metrics.R2Score(), nb.metrics.AUC(curve="PR", num_thresholds=7)])
        return model

    fit = dict(epochs=2, batch_size=8, shuffle=False, validation_data=(x[:8], y[:8]), verbose=0)
    ref = build()
    ref_hist = ref.fit(x, y, **fit)
    model = build()
    hist = model.fit(x, y, workers=2, **fit)
    assert_same_training(ref, ref_hist, model, hist)


@pytest.mark.parametrize("kind", ["flag", "pipe"])
def test_statistics_barriers_give_every_worker_every_sum(kind):
    # BatchNormalization's mid-step sums: FlagBarrier (x86-64) and PipeBarrier (elsewhere)
    # over 3 workers that reach the barriers at different times; each checks every sum
    proc = subprocess.Popen([sys.executable, os.path.join(HERE, "barrier_script.py"), kind], cwd=REPO,
                            env=dict(os.environ, PYTHONPATH=REPO), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=180)
    finally:  # a barrier that never opens must not leave its workers polling
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert out.strip() == "OK", out + err


def test_pipe_barrier_keeps_a_fast_peers_next_arrival_for_the_next_barrier():
    # rank 0 of 3: peer 1 arrives at barrier 1 and already at barrier 2 before peer 2
    # arrives at barrier 1; the first wait must not end on peer 1's second message
    import struct

    from nbmodel.parallel.process import PipeBarrier

    class Inbox:
        def __init__(self, senders):
            self.msgs = [struct.pack("<I", r) for r in senders]

        def poll(self, timeout=0):
            return bool(self.msgs)

        def recv_bytes(self):
            return self.msgs.pop(0)

    class Outbox:
        def __init__(self):
            self.sent = 0

        def send_bytes(self, msg):
            self.sent += 1

    inbox, outboxes = Inbox([1, 1, 2, 2]), [Outbox(), Outbox()]
    barrier = PipeBarrier(0, inbox, outboxes)
    barrier.wait()
    assert len(inbox.msgs) == 1  # peer 2's first message was needed; its second is next time's
    barrier.wait()
    assert inbox.msgs == [] and [o.sent for o in outboxes] == [2, 2]
