"""Streamed data with data parallelism: a PyDataset, a generator or NumPy memmaps with
fit(workers=2) and under ``mpiexec -n 2`` train like the same samples in memory.

Reference fits and what they pin (_streams.py has the runs):
- the same samples as arrays with the same replicas: the same global batches, split into
  the same shards, whose gradients are summed in the same order, so the same bits
  (``assert_array_equal`` on the weights, ``==`` on the history);
- the same samples as arrays in one process (workers=1): the gradient of a global batch is
  then one sum instead of two shard sums added, so equal to float rounding
  (``assert_same_training``, rtol 1e-10, as tests/parallel/test_process.py);
- a shuffled PyDataset: the same PyDataset in one process (same batch order, to rounding).

The memory-limit tests run memlimit_script.py (see its docstring for the numbers).
"""
from __future__ import annotations

import multiprocessing as mp
import os
import subprocess
import sys

import numpy as np
import pytest
from _models import assert_same_training, available, case
from _streams import RUNS, fit

import nbmodel as nb
from nbmodel.parallel import ParallelError
from nbmodel.parallel.process import segment_prefix

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))


def _workers_alive():
    return [p for p in mp.active_children() if p.name.startswith("nbmodel-worker")]


def _segments_left():
    try:
        return [f for f in os.listdir("/dev/shm") if f.startswith(segment_prefix())]
    except FileNotFoundError:
        return []


@pytest.fixture(autouse=True)
def _nothing_left_behind():
    yield
    assert _workers_alive() == []
    assert _segments_left() == []


def assert_bit_identical(ref, ref_hist, model, hist):
    assert hist.history == ref_hist.history
    for i, (a, b) in enumerate(zip(ref.get_weights(), model.get_weights())):
        np.testing.assert_array_equal(b, a, err_msg=f"weight {i}")


RUN_PARAMS = ["pydataset", "generator", "memmap", pytest.param("batchnorm", marks=pytest.mark.skipif(
    not available("batchnorm"), reason="batchnorm: layer module absent"))]


# ------------------------------------------------------------------ workers
@pytest.mark.parametrize("name", RUN_PARAMS)
def test_stream_with_workers_trains_like_the_arrays(name, tmp_path, float64):
    build, stream, arrays = RUNS[name](tmp_path)
    model, hist = fit(build, stream, workers=2)
    assert_bit_identical(*fit(build, arrays, workers=2), model, hist)
    assert_same_training(*fit(build, arrays), model, hist)
    if name == "pydataset":
        assert stream["x"].read == [0, 1, 2] * 2 and stream["x"].epochs_ended == 2
        assert "val_loss" in hist.history


def test_shuffled_pydataset_with_workers_reads_the_one_process_order(tmp_path, float64):
    build, stream, _ = RUNS["shuffled"](tmp_path)
    model, hist = fit(build, stream, workers=2)
    _, alone, _ = RUNS["shuffled"](tmp_path)
    ref, ref_hist = fit(build, alone)
    assert stream["x"].read == alone["x"].read and stream["x"].epochs_ended == 3
    assert stream["x"].read[:5] != [0, 1, 2, 3, 4]  # shuffled
    assert_same_training(ref, ref_hist, model, hist)


def test_growing_stream_batches_replace_the_shared_buffers(float64):
    """The first batch sizes the shared batch buffers; a larger one later (a shuffled
    PyDataset whose short last batch came first, here a generator) gets new ones."""
    build, x, y, _ = case("dense")

    def growing():
        return iter([(x[:4], y[:4]), (x[4:10], y[4:10]), (x[10:13], y[10:13]), (x[13:21], y[13:21])])

    model, hist = fit(build, dict(x=growing()), workers=2)
    assert_same_training(*fit(build, dict(x=growing())), model, hist)


def test_bad_stream_batches_give_clear_errors(float64):
    build, x, y, _ = case("dense")
    with pytest.raises(ValueError, match=r"fit \(batch 2\): target 0 has samples of shape \(\) and dtype int32, "
                                         r"the first batch's had \(\) and int64"):
        build().fit(iter([(x[:4], y[:4]), (x[4:8], y[4:8]), (x[8:12], y[8:12].astype(np.int32))]), workers=2,
                    verbose=0)
    with pytest.raises(ValueError, match=r"fit \(batch 0\): a global batch of 1 samples cannot be split over 3"):
        build().fit(iter([(x[:1], y[:1])]), workers=3, verbose=0)
    with pytest.raises(ValueError, match=r"fit \(batch 1\): an empty batch"):
        build().fit(iter([(x[:4], y[:4]), (x[:0], y[:0])]), workers=2, verbose=0)
    unbuilt = nb.Sequential([nb.layers.Dense(3)], seed=0)
    unbuilt.compile(optimizer="sgd", loss="mse")
    with pytest.raises(ValueError, match="needs a built model"):
        unbuilt.fit(iter([(x[:4], y[:4])]), workers=2, verbose=0)


def test_a_non_finite_memmap_row_is_named_by_the_worker(tmp_path, float64):
    build, x, y, _ = case("dense")
    mm = np.lib.format.open_memmap(tmp_path / "x.npy", mode="w+", dtype=np.float64, shape=x.shape)
    mm[:] = x
    mm[13, 2] = np.nan
    mm.flush()
    with pytest.raises(ParallelError, match=r"fit \(samples 12\.\.15\): input .* NaN or infinity"):
        build().fit(np.load(tmp_path / "x.npy", mmap_mode="r"), y, batch_size=8, shuffle=False, workers=2,
                    verbose=0)


# ---------------------------------------------------------------------- MPI
@pytest.fixture(scope="module")
def mpi_stream_results(tmp_path_factory):
    from test_mpi import _mpiexec  # (skips when mpi4py or mpiexec is missing)

    out = tmp_path_factory.mktemp("mpi_streams")
    r, _ = _mpiexec(["-m", "mpi4py", os.path.join(HERE, "mpi_stream_train.py"), str(out)], timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return out, r.stdout


def _load(path, prefix, build):
    import json

    with np.load(path) as z:
        hist = nb.callbacks.History()
        hist.history = json.loads(bytes(z[prefix + "history"]).decode())
        n = sum(1 for k in z.files if k.startswith(prefix + "w"))
        weights = [z[f"{prefix}w{i}"] for i in range(n)]
        extra = {k: z[k] for k in ("read", "epochs_ended") if k in z.files}
    model = build()
    model.set_weights(weights)
    return model, hist, extra


@pytest.mark.parametrize("name", ["pydataset", "generator", "memmap"])
def test_stream_under_mpi_trains_like_the_arrays(name, mpi_stream_results, tmp_path, float64):
    out, _ = mpi_stream_results
    build, _, arrays = RUNS[name](tmp_path)
    model, hist, extra = _load(out / f"{name}.npz", "s_", build)
    ref_mpi, ref_mpi_hist, _ = _load(out / f"{name}.npz", "a_", build)
    assert_bit_identical(ref_mpi, ref_mpi_hist, model, hist)
    assert_same_training(*fit(build, arrays), model, hist)
    if name == "pydataset":  # every rank read its own PyDataset
        assert list(extra["read"]) == [0, 1, 2] * 2 and int(extra["epochs_ended"]) == 2
    sums = [np.load(out / f"{name}.rank{r}.npy") for r in range(2)]
    np.testing.assert_array_equal(sums[1], sums[0])


def test_shuffled_pydataset_under_mpi_reads_the_one_process_order(mpi_stream_results, tmp_path, float64):
    out, _ = mpi_stream_results
    build, alone, _ = RUNS["shuffled"](tmp_path)
    model, hist, extra = _load(out / "shuffled.npz", "s_", build)
    ref, ref_hist = fit(build, alone)
    assert list(extra["read"]) == alone["x"].read
    assert_same_training(ref, ref_hist, model, hist)
    sums = [np.load(out / f"shuffled.rank{r}.npy") for r in range(2)]
    np.testing.assert_array_equal(sums[1], sums[0])


def test_ranks_that_read_other_batches_stop_naming_the_rank(mpi_stream_results):
    _, stdout = mpi_stream_results
    lines = [line for line in stdout.splitlines() if line.startswith(("DISAGREE", "AGREED"))]
    assert len(lines) == 4, stdout
    for rank in (0, 1):
        assert (f"DISAGREE sizes rank {rank}: fit(distributed='mpi'): the ranks read different global batches at "
                "epoch 1, step 1 (rank 0: 8 samples, rank 1: 6 samples; rank(s) [1] differ from rank 0)") in stdout
        assert (f"DISAGREE ended rank {rank}: fit(distributed='mpi'): the ranks read different global batches at "
                "epoch 1, step 3 (rank 0: 8 samples, rank 1: its stream ended; rank(s) [1] differ") in stdout


# ------------------------------------------------------- the memory limit
def _limits_apply():
    try:
        import resource

        release = tuple(int(v) for v in os.uname().release.split(".")[:2])
    except (ImportError, ValueError):
        return False
    # RLIMIT_DATA counts mmap'ed private memory since Linux 4.7, and not file-backed shared maps
    return sys.platform.startswith("linux") and release >= (4, 7) and hasattr(resource, "RLIMIT_DATA")


needs_limits = pytest.mark.skipif(not _limits_apply(), reason="RLIMIT_DATA semantics of Linux >= 4.7 needed")


@needs_limits
def test_memmap_larger_than_a_process_may_allocate_with_workers(tmp_path):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([HERE, REPO, os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.Popen([sys.executable, os.path.join(HERE, "memlimit_script.py"), str(tmp_path), "process"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=120)
    finally:  # a hang must not leave the workers behind
        try:
            os.killpg(proc.pid, 9)
        except ProcessLookupError:
            pass
    assert proc.returncode == 0 and "rank 0: OK" in out, out + err
    assert "a float32 copy of the data cannot be allocated" in out
    assert "the same data as an array: MemoryError" in out
    assert "workers over their limit: ParallelError" in out
    _same_weights_as_in_memory(tmp_path, "process")


def _same_weights_as_in_memory(tmp_path, mode):
    """The memory-limited memmap fit's weights against the same data read whole into memory
    and trained by workers=2 here, without limits."""
    import memlimit_script as ms

    x = np.load(os.path.join(tmp_path, "x.npy"))  # 320 MB, read whole
    model = ms.build()
    model.fit(x, ms.targets(x), batch_size=ms.BATCH, epochs=1, verbose=0, workers=2)
    with np.load(os.path.join(tmp_path, f"weights_{mode}.npz")) as got:
        for i, want in enumerate(model.get_weights()):
            if mode == "process":  # the same shard sums in the same order: the same bits
                np.testing.assert_array_equal(got[f"arr_{i}"], want)
            else:  # MPI's reduction of two shards against the parent's: equal to rounding
                np.testing.assert_allclose(got[f"arr_{i}"], want, rtol=1e-6, atol=1e-7)


@needs_limits
def test_memmap_larger_than_a_process_may_allocate_under_mpi(tmp_path):
    pytest.importorskip("mpi4py")
    from test_mpi import _mpiexec

    r, took = _mpiexec(["-m", "mpi4py", os.path.join(HERE, "memlimit_script.py"), str(tmp_path), "mpi"],
                       timeout=120)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    for rank in (0, 1):
        assert f"rank {rank}: a float32 copy of the data cannot be allocated" in r.stdout
        assert f"rank {rank}: the same data as an array: MemoryError" in r.stdout
        assert f"rank {rank}: OK" in r.stdout
    _same_weights_as_in_memory(tmp_path, "mpi")
