"""Data-parallel training over processes on one machine.

``fit(workers=N)`` runs N replicas: replica 0 is the parent itself, which also
keeps the model, the optimizer, the callbacks and the logs; N - 1 spawned
workers (replicas 1..N-1) only compute gradients. Every replica gets
``cores // N`` threads (the parent's own count is restored after fit). Shared
memory (created by the parent, see below for its unlinking) holds, once per
fit, the training arrays; for the whole fit, the parameters (written by the
parent after each optimizer step), the indices of the current global batch,
and one gradient buffer plus one float64 extras vector per worker. Per step
the parent writes the batch's indices and the parameters, sends each worker a
9-byte wake-up (b"S" + the batch size) through its pipe, computes shard 0
itself, waits for every 1-byte reply while watching the process sentinels,
adds the workers' gradient buffers in replica order to its own (a fixed
order, so the result is the same run after run) and applies the optimizer
once. Other messages (state, errors) are pickled. Where every replica has a
core of its own, a replica waiting for a peer polls for up to a millisecond
before it sleeps: a wake-up from a blocking read costs tens of microseconds,
a tenth of a small model's step.

The parent's layer generators draw the whole global batch's noise (as every
replica's do, common.GlobalBatchRNG), and its BatchNormalization layers take
part in the statistics sums as replica 0, so the model's generators and moving
statistics are always those of an uninterrupted run: nothing is pulled back
from the workers, for a backup or at the end.

Data: an input that is a NumPy memmap (of a file mapped shared) is not copied:
each worker maps the same file bytes read-only (``data.file_spec``) and reads,
casts and checks only its shard's rows per step. A PyDataset or generator is
read here, batch by batch, as one process reads it; the workers start with the
first global batch, which sizes shared batch buffers, and each step the parent
copies the global batch into them and wakes the workers with b"B" + the batch
size + a sample-weight flag; each takes its rows. A larger batch later gets
new buffers (a pickled "buffers" message), once per new size.

The segments are unlinked as soon as every worker has attached them: the
memory lives while a process maps it and goes with the last one, so even a
SIGKILL of the whole process group (a time limit, scancel, the OOM killer)
leaves nothing in /dev/shm. Segments of a parent killed during the start-up
(before the unlink) are removed by the next ``fit(workers=N)`` on the machine.

Each step has a deadline (``config.step_timeout()``): a worker that is
stopped (SIGSTOP), stuck or silent past it ends ``fit`` with a
``ParallelError`` naming it, whether the parent waits for its reply or for
its part of a BatchNormalization sum; the workers are then killed.

Workers are spawned (never forked: numba's thread pool may already run in the
parent), each with ``cores // N`` threads for numba and BLAS, rebuild the model
from ``model.get_config()`` + weights with a ``TrainingCore`` of the parent's losses and
metrics (no optimizer: workers only compute gradients), and ignore SIGINT: Ctrl-C reaches the
parent, which stops them. A worker that raises sends its traceback and exits;
one that dies is seen through its sentinel; either way fit raises
``ParallelError`` in the parent within about a second, after terminating the
other workers and unlinking every segment.
"""
from __future__ import annotations

import itertools
import multiprocessing as mp
import os
import pickle
import platform
import secrets
import selectors
import signal
import struct
import sys
import time
import traceback
from multiprocessing import shared_memory

import numpy as np

from .. import config, io
from ..data import Batch, check_input, file_spec, open_file_spec
from ..training_core import TrainingCore
from .common import (
    ParallelError,
    ReplicatedTrainer,
    ShardRunner,
    SharedSlotsReduce,
    StatSync,
    array_shard,
    ensure_metrics,
    extras_size,
    fit_replicated,
    get_state_arrays,
    layer_classes,
    set_state_arrays,
    shard_bounds,
    stat_sync_size,
    state_positions,
    uninstall_rngs,
    uninstall_stat_sync,
)

SHM_PREFIX = "nbm"
_counter = itertools.count()

# seconds between liveness checks while waiting for workers (a dead worker is
# normally seen at once through its sentinel; this bounds the worst case)
_POLL_S = 1.0
_START_TIMEOUT_S = 600.0
# the per-step messages, kept out of pickle (a pickled message starts with b"\x80")
_STEP = b"S"   # + int64 batch size: run your shard of the batch in the shared index array
_ROWS = b"B"   # + int64 batch size + 1 byte (sample weights?): your shard of the shared batch buffers
_DONE = b"K"   # the shard's gradient and extras are written


def segment_prefix(pid=None):
    """Name prefix of this process's shared-memory segments (tests look for leftovers)."""
    return f"{SHM_PREFIX}_{os.getpid() if pid is None else pid}_"


def remove_stale_segments(directory="/dev/shm") -> list[str]:
    """Unlink the segments of parents that died before unlinking them (killed
    during a fit's start-up); returns their names. Segments of live processes
    are left alone."""
    try:
        names = os.listdir(directory)
    except OSError:  # no /dev/shm (not Linux): nothing to clean
        return []
    removed = []
    for name in names:
        parts = name.split("_")
        if len(parts) < 3 or parts[0] != SHM_PREFIX or not parts[1].isdigit() or io.pid_alive(int(parts[1])):
            continue
        try:
            os.unlink(os.path.join(directory, name))
            removed.append(name)
        except OSError:  # gone already, or not ours to remove
            pass
    return removed


class _Segment:
    """A shared-memory block holding one array; the creator unlinks it."""

    def __init__(self, shape, dtype, name=None, create=False):
        self.shape, self.dtype = tuple(shape), np.dtype(dtype)
        nbytes = max(int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize, 1)
        if create:
            name = f"{segment_prefix()}{next(_counter)}_{secrets.token_hex(4)}"
            self.shm = shared_memory.SharedMemory(name=name, create=True, size=nbytes)
        else:
            self.shm = shared_memory.SharedMemory(name=name)
        self.name = self.shm.name
        self.array = np.ndarray(self.shape, self.dtype, buffer=self.shm.buf)
        self.owner = create

    def spec(self):
        return (self.name, self.shape, self.dtype.str)

    def unlink(self):
        """Remove the name (the creator, once every process has attached): the memory
        stays mapped here and in the workers and goes with the last of them."""
        if self.owner:
            self.owner = False
            try:
                self.shm.unlink()
            except FileNotFoundError:
                pass

    def close(self):
        self.array = None
        try:
            self.shm.close()
        except BufferError:  # a view is still alive somewhere: the mapping goes with the process
            pass
        self.unlink()


def _attach(spec):
    name, shape, dtype = spec
    return _Segment(shape, dtype, name=name)


# ------------------------------------------------------------------ worker
# x86-64 keeps stores in program order for other cores to see (total store order), so a
# counter bumped after a row is written tells the other workers the row is there
_STORES_IN_ORDER = platform.machine().lower() in ("x86_64", "amd64")


class FlagBarrier:
    """A barrier between the replica processes on x86-64 for BatchNormalization's
    mid-step sums (common.SharedSlotsReduce): each bumps its own counter in shared
    memory and polls until every counter has reached its own.

    Correct because x86's total store order makes a replica's earlier writes (its
    row of the sum) visible before its counter; weakly ordered CPUs (ARM, POWER)
    use PipeBarrier, whose system calls order memory. A few microseconds where
    ``multiprocessing.Barrier`` takes tens (docs/performance.md, Data parallel).
    After POLL_S of polling it sleeps between looks (up to 0.5 ms), so a
    descheduled or stopped peer does not hold a core, and calls ``watch()``
    between naps: the parent's raises when a worker died or the step deadline
    passed; a worker's (the default) exits when the parent is gone.
    """

    POLL_S = 1e-3

    def __init__(self, rank: int, counts: np.ndarray, watch=None):
        self.rank, self.counts, self.gen = rank, counts, 0
        self.watch = watch or _orphan_check()

    def wait(self) -> None:
        self.gen += 1
        self.counts[self.rank] = self.gen
        poll_until = time.perf_counter() + self.POLL_S
        nap = 5e-5
        while self.counts.min() < self.gen:
            if time.perf_counter() > poll_until:
                time.sleep(nap)
                nap = min(2 * nap, 5e-4)
                self.watch()


def _orphan_check():
    """A worker's watch while it waits for its peers: exit once the parent is gone (killed)."""
    parent = os.getppid()

    def watch():
        if os.getppid() != parent:
            raise SystemExit("nbmodel worker: the parent process is gone")
    return watch


class PipeBarrier:
    """A barrier between worker processes over pipes, for BatchNormalization's
    mid-step sums (common.SharedSlotsReduce): each worker sends its rank to
    every other worker's inbox and returns once it has heard from all of them.

    A sender's messages arrive in order, so one that is already at the next
    barrier is counted for that one (``early``), never for this one. Pipe
    reads and writes are system calls, so what a worker wrote to shared memory
    before ``wait`` is visible to the others after theirs, on any CPU: the
    portable choice where FlagBarrier's reasoning does not hold (about 2x
    faster than ``multiprocessing.Barrier``).
    """

    SPIN_S = 2e-4  # polling before a blocking read; the steps around a sum are milliseconds
    NAP_S = 0.05   # a blocking read's slice, between calls of ``watch`` (see FlagBarrier)

    def __init__(self, rank: int, inbox, outboxes, watch=None):
        self.rank, self.inbox, self.outboxes = rank, inbox, outboxes
        self.watch = watch or _orphan_check()
        self.early = [0] * (len(outboxes) + 1)
        self._msg = struct.pack("<I", rank)

    @staticmethod
    def create(ctx, replicas: int):
        """One (inbox, outboxes) pair per rank: pass pairs[r] to worker r."""
        pipes = [ctx.Pipe(duplex=False) for _ in range(replicas)]  # (reader, writer) of each rank's inbox
        return [(pipes[r][0], [w for q, (_, w) in enumerate(pipes) if q != r]) for r in range(replicas)]

    def wait(self) -> None:
        for out in self.outboxes:
            out.send_bytes(self._msg)
        missing = len(self.outboxes)
        for r, n in enumerate(self.early):
            if n and r != self.rank:
                self.early[r] -= 1
                missing -= 1
        heard = set()
        spin_until = time.perf_counter() + self.SPIN_S
        while missing:
            # poll first for a short while: a blocking read that sleeps costs a wake-up
            # (tens of us) where the others arrive within microseconds
            if not self.inbox.poll(0):
                if time.perf_counter() < spin_until:
                    continue
                if not self.inbox.poll(self.NAP_S):
                    self.watch()
                    continue
            (r,) = struct.unpack("<I", self.inbox.recv_bytes())
            if r in heard:
                self.early[r] += 1  # already at the next barrier
            else:
                heard.add(r)
                missing -= 1


def _open_data(entry, segments):
    """The array of one training-data entry: ("shm", segment spec) or ("file", memmap spec)."""
    if entry is None:
        return None
    kind, spec = entry
    if kind == "file":  # mapped read-only here; rows are read (and inputs cast, checked) per shard
        return open_file_spec(spec)
    seg = _attach(spec)
    segments.append(seg)
    return seg.array


def _recv_spinning(conn, spin_s):
    """``conn.recv_bytes()``, polling for up to ``spin_s`` first: a read that sleeps costs a
    wake-up (tens of microseconds, a tenth of a small model's step) where the parent's next
    step comes within a fraction of a millisecond. Only where every replica has a core."""
    until = time.perf_counter() + spin_s
    while not conn.poll(0) and time.perf_counter() < until:
        pass
    return conn.recv_bytes()


def _worker_main(rank, conn, spec):
    # the parent handles Ctrl-C, and SIGTERM / SIGUSR1 (a scheduler's signals to the whole
    # job: the parent finishes the step and writes the backup), then stops us
    for name in ("SIGINT", "SIGTERM", "SIGUSR1"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), signal.SIG_IGN)
    segments = []
    code = 0
    try:
        config.set_floatx(spec["floatx"])
        config.set_num_threads(spec["threads"])
        for key in ("params", "grads", "extras", "batch", "stat_slots", "stat_flags"):
            if spec[key] is not None:
                spec[key] = _attach(spec[key])
                segments.append(spec[key])
        data = {k: [_open_data(e, segments) for e in v] if isinstance(v, list) else _open_data(v, segments)
                for k, v in spec["data"].items()}
        model = io.model_from_config(spec["config"], spec["classes"])
        model.set_weights(spec["weights"])
        core = TrainingCore(model, spec["losses"], spec["loss_weights"], spec["metric_specs"])
        core.bind_flat(spec["params"].array, spec["grads"].array)
        core.set_random_state(spec["random_state"], shuffle=False)
        xs, ys, sw = data["xs"], data["ys"], data["sw"]
        ensure_metrics(core, ys)  # (a stream's: the global batch buffers, shaped like its first batch)
        sync = None
        if spec["stat_slots"] is not None:
            barrier = (FlagBarrier(rank, spec["stat_flags"].array) if spec["stat_flags"] is not None
                       else PipeBarrier(rank, *spec["stat_pipes"]))
            sync = StatSync(SharedSlotsReduce(spec["stat_slots"].array, rank, barrier))
        runner = ShardRunner(core, spec["plan"], spec["extras"].array, sync)
        positions = state_positions(core)
        batch, replicas = spec["batch"].array if spec["batch"] is not None else None, spec["replicas"]
        conn.send(("ready",))
        while True:
            raw = _recv_spinning(conn, spec["spin"])
            if raw[:1] == _STEP:
                (total,) = struct.unpack("<q", raw[1:])
                lo, hi = shard_bounds(total, replicas)[rank]
                runner.run(array_shard(model, xs, ys, sw, batch[lo:hi]), lo, hi, total)
                conn.send_bytes(_DONE)
                continue
            if raw[:1] == _ROWS:
                total, weighted = struct.unpack("<q?", raw[1:])
                lo, hi = shard_bounds(total, replicas)[rank]
                runner.run(lambda: Batch(xs, ys, sw if weighted else None).rows(lo, hi), lo, hi, total)
                conn.send_bytes(_DONE)
                continue
            msg = pickle.loads(raw)
            kind = msg[0]
            if kind == "get_state":
                conn.send(("state", get_state_arrays(model, positions)))
            elif kind == "set_state":
                set_state_arrays(model, positions, msg[1])
                conn.send(("ok",))
            elif kind == "rng":
                conn.send(("rng", core.get_random_state(shuffle=False)))
            elif kind == "buffers":  # a stream's larger global batch: new shared buffers
                old = [seg for seg in segments if any(seg.array is a for a in [*xs, *ys, sw])]
                new = []
                data = {k: [_open_data(e, new) for e in v] if isinstance(v, list) else _open_data(v, new)
                        for k, v in msg[1].items()}
                xs, ys, sw = data["xs"], data["ys"], data["sw"]
                for seg in old:
                    segments.remove(seg)
                    seg.close()
                segments.extend(new)
                conn.send(("ok",))
            elif kind == "stop":
                break
            else:
                raise RuntimeError(f"unknown message {kind!r}")
    except (EOFError, BrokenPipeError):  # the parent is gone: nothing left to do
        pass
    except BaseException:  # noqa: BLE001 - every failure goes to the parent
        try:
            conn.send(("error", traceback.format_exc()))
        except Exception:  # noqa: BLE001
            pass
        code = 1
    finally:
        data = xs = ys = sw = runner = None  # (memmaps: unmapped with their last reference)
        for s in segments:
            s.close()
    # skip interpreter teardown (over a second with numba's pools loaded): nothing is left to flush
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


# ------------------------------------------------------------------ parent
class ProcessBackend(ReplicatedTrainer):
    """The parent side of ``fit(workers=N)``; see the module docstring."""

    is_root = True

    def __init__(self, model, workers, xs, ys, sw, stream=False):
        self.model, self.replicas = model, int(workers)
        self.xs, self.ys, self.sw = xs, ys, sw
        self.stream = stream  # global batches from a PyDataset or generator (xs, ys, sw None)
        self.buffers = None   # a stream's global batch buffers in shared memory: {"xs", "ys", "sw"}
        # the spawned workers are replicas 1..N-1: procs[i], conns[i] are replica i + 1's
        self.procs, self.conns, self.segments = [], [], []
        self._watch = None  # a selector over the workers' pipes and sentinels, built once (see _gather)
        self.runner = None  # replica 0's shard step, here (made at the first step)
        self.sync = None    # its BatchNormalization statistics sums with the workers
        self._threads = None  # the parent's thread count before fit (restored by close)
        self._deadline = None  # the current step's deadline (time.monotonic())
        self.spin = 0.0  # seconds a replica polls for its peers before sleeping (see _recv_spinning)

    # the parent runs every callback; there is no other replica to agree with
    def keep_callback(self, cb):
        return True

    def agree(self, obj):
        return obj

    def _segment(self, arr=None, shape=None, dtype=None):
        seg = _Segment(arr.shape if arr is not None else shape, arr.dtype if arr is not None else dtype,
                       create=True)
        self.segments.append(seg)
        if arr is not None:
            seg.array[...] = arr
        return seg

    def _data(self, a):
        """How a worker gets a training array: the file behind a NumPy memmap (mapped again,
        read-only, by each worker), else a copy in shared memory."""
        if a is None:
            return None
        spec = file_spec(a)
        return ("file", spec) if spec is not None else ("shm", self._segment(a).spec())

    def start(self):
        threads = max(1, config.available_cores() // self.replicas)
        # polling only pays where every replica has a core of its own
        self.spin = 1e-3 if self.replicas <= config.available_cores() else 0.0
        self._threads = config.get_num_threads()
        config.set_num_threads(threads)  # replica 0 runs here, beside the workers
        if not self.stream and self.replicas > 1:
            self._spawn()
        # a stream: the workers start with the first global batch, whose shapes and dtypes size
        # the shared batch buffers (and whose targets built the metrics)

    def _spawn(self, first=None):
        """Create the shared memory and start workers 1..N-1 (``first``: a stream's first Batch)."""
        model = self.model
        core = model.training_core
        remove_stale_segments()
        try:
            if first is None:
                xs = list(self.xs)
                for i, (t, a) in enumerate(zip(model.inputs, xs)):
                    if isinstance(a, np.memmap) and file_spec(a) is None:
                        # a copy-on-write or strided memmap: cast, checked and copied whole, as arrays are
                        xs[i] = check_input("fit", t.input_layer.name, t, a)
                data = {"xs": [self._data(a) for a in xs], "ys": [self._data(a) for a in self.ys],
                        "sw": self._data(self.sw)}
                self.batch = self._segment(shape=(self.xs[0].shape[0],), dtype=np.int64)
            else:
                data = self._buffers(first)
                self.batch = None
            self.params = self._segment(core.params)
            n_extra = extras_size(core)
            workers = range(1, self.replicas)
            self.grads = [self._segment(shape=core.params.shape, dtype=core.params.dtype) for _ in workers]
            self.extras = [self._segment(shape=(n_extra,), dtype=np.float64) for _ in workers]
            sync_size = stat_sync_size(model)
            ctx = mp.get_context("spawn")
            # BatchNormalization's statistics: summed between the workers, mid-step (common.StatSync)
            slots = self._segment(shape=(2, self.replicas, sync_size), dtype=np.float64) if sync_size else None
            flags = self._segment(np.zeros(self.replicas, np.int64)) if sync_size and _STORES_IN_ORDER else None
            stat_pipes = PipeBarrier.create(ctx, self.replicas) if sync_size and flags is None else None
            stat = dict(stat_slots=slots.spec() if slots else None, stat_flags=flags.spec() if flags else None)
            if sync_size:  # replica 0's side of the sums
                barrier = (FlagBarrier(0, flags.array, self._watch_workers) if flags is not None
                           else PipeBarrier(0, *stat_pipes[0], watch=self._watch_workers))
                self.sync = StatSync(SharedSlotsReduce(slots.array, 0, barrier))
            threads = config.get_num_threads()  # (set by start: cores // N)
            base = {"config": model.get_config(), "classes": layer_classes(model),
                    "weights": model.get_weights(), "floatx": core.params.dtype.name,
                    "losses": core.losses, "loss_weights": core.loss_weights, "metric_specs": core.metric_specs,
                    "random_state": core.get_random_state(shuffle=False), "plan": self.plan,
                    "threads": threads, "spin": self.spin, "params": self.params.spec(),
                    "batch": self.batch.spec() if self.batch is not None else None,
                    "replicas": self.replicas, "data": data, **stat}
            env_keys = ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                        "NBMODEL_NUM_THREADS")
            saved = {k: os.environ.get(k) for k in env_keys}
            try:  # a spawned child reads these before numpy/numba start their pools
                for k in env_keys:
                    os.environ[k] = str(threads)
                for r in workers:
                    spec = dict(base, grads=self.grads[r - 1].spec(), extras=self.extras[r - 1].spec(),
                                stat_pipes=stat_pipes[r] if stat_pipes else None)
                    parent_conn, child_conn = ctx.Pipe(duplex=True)
                    p = ctx.Process(target=_worker_main, args=(r, child_conn, spec),
                                    name=f"nbmodel-worker-{r}", daemon=True)
                    p.start()
                    child_conn.close()
                    self.procs.append(p)
                    self.conns.append(parent_conn)
            finally:
                for k, v in saved.items():
                    if v is None:
                        os.environ.pop(k, None)
                    else:
                        os.environ[k] = v
            self._gather("ready", timeout=_START_TIMEOUT_S, what="start")
            for seg in self.segments:  # every worker has attached: nothing can leak from here on
                seg.unlink()
            for inbox, outboxes in (stat_pipes or [])[1:]:  # the workers hold their own ends
                for end in (inbox, *outboxes):
                    end.close()
            self.positions = state_positions(core)
        except BaseException:
            self.close(error=True)
            raise

    # ------------------------------------------------------------ messaging
    def _gather(self, expect, timeout=None, what="step"):
        """Each worker's reply, in worker order; ParallelError as soon as one fails or
        dies, or when ``timeout`` seconds (default: the step deadline) pass first."""
        timeout = config.step_timeout() if timeout is None else timeout
        replies = [None] * len(self.procs)
        pending = set(range(len(self.procs)))
        deadline = time.monotonic() + timeout
        spin_until = time.perf_counter() + self.spin
        if self._watch is None:  # registered once: a selector per step cost more than the mlp's step
            self._watch = selectors.DefaultSelector()
            for i, (c, p) in enumerate(zip(self.conns, self.procs)):
                self._watch.register(c, selectors.EVENT_READ, ("conn", i))
                self._watch.register(p.sentinel, selectors.EVENT_READ, ("proc", i))
        while pending:
            # polled (timeout 0) at first where every replica has a core: see _recv_spinning
            wait = 0 if time.perf_counter() < spin_until else _POLL_S
            for key, _ in self._watch.select(timeout=wait):
                kind, i = key.data
                if i not in pending:
                    continue
                if kind == "proc" and not self.conns[i].poll():
                    self._died(i)
                if kind == "conn" or self.conns[i].poll():
                    replies[i] = self._receive(i, expect)
                    pending.discard(i)
            if pending and time.monotonic() > deadline:
                self._late(pending, timeout, what)
        return replies

    def _receive(self, i, expect):
        """Worker i + 1's next message, which must be ``expect`` (an error it sent is raised)."""
        try:
            raw = self.conns[i].recv_bytes()
        except (EOFError, ConnectionError):
            self._died(i)
        msg = ("done",) if raw == _DONE else pickle.loads(raw)
        if msg[0] == "error":
            raise ParallelError(f"data-parallel worker {i + 1} (pid {self.procs[i].pid}) raised an "
                                f"exception:\n{msg[1]}")
        if msg[0] != expect:
            raise ParallelError(f"data-parallel worker {i + 1}: expected {expect!r}, got {msg[0]!r}")
        return msg

    def _late(self, pending, timeout, what):
        late = ", ".join(f"worker {i + 1} (pid {self.procs[i].pid}, {_process_state(self.procs[i].pid)})"
                         for i in sorted(pending))
        raise ParallelError(f"data-parallel {late}: no answer within {timeout:g} s ({what}); fit stopped "
                            "and the workers were killed (deadline: nbmodel.config.set_step_timeout or "
                            "NBMODEL_STEP_TIMEOUT)")

    def _watch_workers(self):
        """Replica 0's watch while it waits for the workers in a BatchNormalization sum: a
        worker that died (after sending its traceback, or killed) or the step deadline
        ends fit. (Mid-sum no worker has anything else to say.)"""
        for i, p in enumerate(self.procs):
            if not p.is_alive():
                if self.conns[i].poll():
                    self._receive(i, "done")  # raises the error it sent
                self._died(i)
        if time.monotonic() > self._deadline:
            self._late(range(len(self.procs)), config.step_timeout(), "BatchNormalization's statistics sum")

    def _died(self, i):
        p = self.procs[i]
        p.join(0.5)
        code = p.exitcode
        how = (f"was killed by signal {-code}" if code is not None and code < 0
               else f"exited with code {code}")
        raise ParallelError(f"data-parallel worker {i + 1} (pid {p.pid}) {how} during fit; the other workers "
                            "were stopped")

    def _send_all(self, msg):
        for i, conn in enumerate(self.conns):
            try:
                if isinstance(msg, bytes):
                    conn.send_bytes(msg)
                else:
                    conn.send(msg)
            except (BrokenPipeError, ConnectionError, EOFError):
                self._died(i)

    # ------------------------------------------------------------- the step
    def _runner(self):
        """Replica 0's shard step (made at the first step: a stream's metrics come from its first batch)."""
        core = self.model.training_core
        return ShardRunner(core, self.plan, np.zeros(extras_size(core)), self.sync)

    def step(self, idx):
        core = self.model.training_core
        total = len(idx)
        self._deadline = time.monotonic() + config.step_timeout()
        lo, hi = shard_bounds(total, self.replicas)[0]
        if isinstance(idx, Batch):  # a streamed global batch: into the shared buffers, shards are rows
            if self.replicas > 1 and not self.procs:
                self._spawn(first=idx)
            if self.procs:
                self._write_batch(idx)
            msg = _ROWS + struct.pack("<q?", total, idx.sw is not None)
            shard = lambda: idx.rows(lo, hi)  # noqa: E731
        else:
            if self.procs:
                self.batch.array[:total] = idx
            msg = _STEP + struct.pack("<q", total)
            shard = array_shard(self.model, self.xs, self.ys, self.sw, idx[lo:hi])
        if self.runner is None:
            self.runner = self._runner()
        if self.procs:
            np.copyto(self.params.array, core.params)
            self._send_all(msg)
        self.runner.run(shard, lo, hi, total)  # replica 0, while the workers run theirs
        extras = self.runner.extras.copy()
        if self.procs:
            self._gather("done")
            g = core.grads
            for grads, more in zip(self.grads, self.extras):  # fixed order: the same sum run after run
                np.add(g, grads.array, out=g)
                extras += more.array
        return extras

    def _buffers(self, batch):
        """Shared global batch buffers shaped like ``batch`` (and sample weights); returns the
        workers' data specs. Replaces (and closes) the previous ones."""
        n = len(batch)
        old = [seg for seg in self.segments if seg.array is not None and any(
            seg.array is b for b in self._buffer_arrays())]
        segs = {"xs": [self._segment(shape=a.shape, dtype=a.dtype) for a in batch.xs],
                "ys": [self._segment(shape=a.shape, dtype=a.dtype) for a in batch.ys],
                "sw": self._segment(shape=(n,), dtype=np.float64)}
        self.buffers = {k: [b.array for b in v] if isinstance(v, list) else v.array for k, v in segs.items()}
        for seg in old:
            self.segments.remove(seg)
            seg.close()
        return {k: [("shm", b.spec()) for b in v] if isinstance(v, list) else ("shm", v.spec())
                for k, v in segs.items()}

    def _buffer_arrays(self):
        if self.buffers is None:
            return []
        return [*self.buffers["xs"], *self.buffers["ys"], self.buffers["sw"]]

    def _write_batch(self, batch):
        """Copy a streamed global batch into the shared buffers. The first batch sized them; a
        larger one (e.g. a PyDataset's full batch after its short last one, in a shuffled
        order) replaces them, and the workers attach the new ones (once per new size)."""
        bufs, n = self.buffers, len(batch)
        where = f"fit (batch {batch.index})"
        for kind, arrays, targets in (("input", batch.xs, bufs["xs"]), ("target", batch.ys, bufs["ys"])):
            for k, (a, b) in enumerate(zip(arrays, targets)):
                if a.shape[1:] != b.shape[1:] or a.dtype != b.dtype:
                    raise ValueError(f"{where}: {kind} {k} has samples of shape {a.shape[1:]} and dtype {a.dtype}, "
                                     f"the first batch's had {b.shape[1:]} and {b.dtype}; with workers=N every "
                                     "batch of a stream must have the sample shapes and dtypes of the first")
        if n > bufs["xs"][0].shape[0]:
            specs = self._buffers(batch)
            self._send_all(("buffers", specs))
            self._gather("ok")
            for seg in self.segments:  # every worker has attached the new buffers
                seg.unlink()
            bufs = self.buffers
        for arrays, targets in ((batch.xs, bufs["xs"]), (batch.ys, bufs["ys"])):
            for a, b in zip(arrays, targets):
                b[:n] = a
        if batch.sw is not None:
            bufs["sw"][:n] = batch.sw

    def epoch_begin(self):
        if self.procs and self.positions:  # callbacks may have changed the weights: replicas start alike
            self._send_all(("set_state", get_state_arrays(self.model, self.positions)))
            self._gather("ok")

    def sync_state(self):
        """Nothing to do: replica 0's moving statistics (every replica with a non-empty shard
        agrees) are the model's own, as are its generators."""

    def finish(self, completed):
        self.close(error=not completed)

    def close(self, error=False):
        """Stop every worker, unlink every segment and give the model back its own generators,
        statistics and thread count (idempotent)."""
        for p, c in zip(self.procs, self.conns):
            if error and p.is_alive():  # mid-step, stopped or stuck: workers hold nothing worth a clean exit
                p.kill()
            elif p.is_alive():
                try:
                    c.send(("stop",))
                except (BrokenPipeError, ConnectionError, EOFError, OSError):
                    pass
        for p in self.procs:
            p.join(2.0)
            if p.is_alive():
                p.terminate()
                p.join(2.0)
            if p.is_alive():
                p.kill()
                p.join(2.0)
        if self._watch is not None:
            self._watch.close()
            self._watch = None
        for c in self.conns:
            c.close()
        self.sync = self.runner = None
        for s in self.segments:
            s.close()
        self.procs, self.conns, self.segments = [], [], []
        if self.model.training_core is not None:  # (None: an unbuilt model, refused before any step)
            uninstall_rngs(self.model.training_core)
            uninstall_stat_sync(self.model)
        if self._threads is not None:
            config.set_num_threads(self._threads)
            self._threads = None


def _process_state(pid: int) -> str:
    """'stopped', 'running', 'sleeping', ... from /proc (Linux), else 'alive'."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            code = f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "alive"
    return {"T": "stopped", "t": "stopped", "R": "running", "S": "sleeping", "D": "in uninterruptible I/O",
            "Z": "exited"}.get(code, f"state {code}")


def fit_process(model, workers, xs, ys, sw, val, batches=None, **kw):
    backend = ProcessBackend(model, workers, xs, ys, sw, stream=batches is not None)
    try:
        return fit_replicated(model, backend, xs, ys, val, batches=batches, **kw)
    finally:
        backend.close(error=True)  # a no-op after a normal finish
