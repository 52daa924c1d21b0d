"""fit on a float64 memmap larger than what any process of the fit may allocate (RLIMIT_DATA).

    python memlimit_script.py DIR process        (fit(workers=2); test_streaming_parallel.py)
    mpiexec -n 2 python -m mpi4py memlimit_script.py DIR mpi

A read-only file-backed memmap is not counted by RLIMIT_DATA (Linux >= 4.7 counts private
writable mappings and the heap), a copy of the data is. The script writes an N x D float64
file, measures the data usage (VmData) of every process during a warm-up fit on a few
batches of it (numba/LLVM and the thread pools make most of it), then limits each process
to its measured usage plus MARGIN, less than a float32 copy of the file, and checks:

- that a float32 copy of the data cannot be allocated under that limit in this process,
  and (workers: limited as they start, from this file run as their __mp_main__) that while
  they step their limit leaves less room than such a copy;
- that fit on the memmap then trains (every replica reads only its shard rows per step); rank 0
  saves its weights, which the test compares with the same data trained in memory (workers=2,
  no limit): the same bits with workers, equal to rounding under MPI;
- that fit on the same data as a plain array (not a memmap: cast and copied whole, as in
  memory) fails cleanly with MemoryError;
- (process) that workers whose limit is too small for them end fit with ParallelError.

It prints one line per check and "OK" at the end.
"""
import os
import resource
import sys

LIMIT_ENV = "NBM_TEST_WORKER_DATA_LIMIT"
if os.environ.get(LIMIT_ENV):  # a spawned worker runs this file as __mp_main__ first: limit it before it grows
    _lim = int(os.environ[LIMIT_ENV])
    resource.setrlimit(resource.RLIMIT_DATA, (_lim, resource.getrlimit(resource.RLIMIT_DATA)[1]))

import time  # noqa: E402

import numpy as np  # noqa: E402

import nbmodel as nb  # noqa: E402
from nbmodel import layers as L  # noqa: E402

N, D = 1_000_000, 40            # 320 MB as float64, 160 MB as float32
BATCH = 20_000
MARGIN = 64 << 20               # the limit: measured usage + 64 MB (< the 160 MB float32 copy)
MB = 1 << 20


def data_limit(pid):
    """The soft RLIMIT_DATA of a process (bytes; None: unlimited or unknown)."""
    try:
        with open(f"/proc/{pid}/limits") as f:
            for line in f:
                if line.startswith("Max data size"):
                    soft = line.split()[3]
                    return None if soft == "unlimited" else int(soft)
    except OSError:
        pass
    return None


def vm_data(pid="self"):
    """VmData (bytes) of a process: what RLIMIT_DATA is checked against."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmData:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class Peaks(nb.callbacks.Callback):
    """The largest VmData of this process, and the smallest and largest of the workers, seen
    at batch ends."""

    def __init__(self):
        super().__init__()
        self.me, self.workers, self.workers_min = vm_data(), 0, None
        self.worker_limits = set()

    def on_train_batch_end(self, batch, logs=None):
        import multiprocessing as mp

        self.me = max(self.me, vm_data())
        for p in mp.active_children():
            if p.name.startswith("nbmodel-worker"):
                v = vm_data(p.pid)
                self.worker_limits.add(data_limit(p.pid))
                self.workers = max(self.workers, v)
                self.workers_min = v if self.workers_min is None else min(self.workers_min, v)


def build():
    m = nb.Sequential([L.Input((D,)), L.Dense(8, activation="tanh"), L.Dense(1)], seed=0)
    m.compile(optimizer=nb.optimizers.SGD(0.1), loss="mse")
    return m


def make_data(path, rank=0):
    if rank == 0:
        mm = np.lib.format.open_memmap(path, mode="w+", dtype=np.float64, shape=(N, D))
        rng = np.random.default_rng(0)
        for s in range(0, N, 50_000):
            mm[s:s + 50_000] = rng.standard_normal((min(50_000, N - s), D))
        mm.flush()
        del mm
    return path


def set_limit(nbytes):
    resource.setrlimit(resource.RLIMIT_DATA, (int(nbytes), resource.getrlimit(resource.RLIMIT_DATA)[1]))


def copy_fails(what):
    try:
        np.empty((N, D), np.float32)
    except MemoryError:
        print(f"{what}: a float32 copy of the data cannot be allocated", flush=True)
        return
    raise SystemExit(f"{what}: a float32 copy of the data could be allocated under the limit")


def targets(x):
    """The regression targets of the data (in memory, 4 MB), of variance 0.25."""
    w = np.linspace(-1, 1, D)
    w *= 0.5 / np.linalg.norm(w)
    y = np.empty(N, np.float32)
    for s in range(0, N, 100_000):
        y[s:s + 100_000] = x[s:s + 100_000] @ w
    return y


def main(out, mode):
    t0 = time.time()
    comm = None
    if mode == "mpi":
        from mpi4py import MPI

        comm = MPI.COMM_WORLD
    rank = comm.Get_rank() if comm else 0
    path = make_data(os.path.join(out, "x.npy"), rank)
    if comm:
        comm.Barrier()
    x = np.load(path, mmap_mode="r")
    y = targets(x)
    kw = dict(workers=2) if mode == "process" else dict(distributed="mpi")
    print(f"rank {rank}: data ready after {time.time() - t0:.1f} s", flush=True)

    # warm-up on 4 batches (views of the same file): the usage of a fit, compiled kernels included.
    # Workers: twice, and the second one's usage, as the limited fit's workers will be (the first
    # ones may have compiled the kernels, which the next ones load from numba's cache)
    for _ in range(2 if mode == "process" else 1):
        peaks = Peaks()
        build().fit(x[:4 * BATCH], y[:4 * BATCH], batch_size=BATCH, epochs=1, verbose=0, callbacks=[peaks], **kw)
    me = max(peaks.me, vm_data())
    limit = me + MARGIN
    workers = f" (workers {peaks.workers / MB:.0f} MB)" if mode == "process" else ""
    print(f"rank {rank}: warm-up data usage {me / MB:.0f} MB{workers} after {time.time() - t0:.1f} s; limit "
          f"{limit / MB:.0f} MB", flush=True)
    set_limit(limit)
    copy_fails(f"rank {rank}")
    worker_limit = peaks.workers + MARGIN
    if mode == "process":
        os.environ[LIMIT_ENV] = str(worker_limit)

    peaks = Peaks()
    model = build()
    h = model.fit(x, y, batch_size=BATCH, epochs=1, verbose=0, callbacks=[peaks], **kw)
    loss = h.history["loss"][-1]
    assert np.isfinite(loss) and loss < 0.2, loss  # (the targets' variance is 0.25)
    if rank == 0:  # the test trains the same data in memory, without limits, and compares
        np.savez(os.path.join(out, f"weights_{mode}.npz"), *model.get_weights())
    print(f"rank {rank}: memmap fit trained (loss {loss:.4f}); data usage peaked at {peaks.me / MB:.0f} MB "
          f"after {time.time() - t0:.1f} s", flush=True)
    if mode == "process":
        # a worker's usage while it stepped: its limit left less room than a float32 copy of the data
        room = worker_limit - peaks.workers_min
        print(f"workers limited to {worker_limit / MB:.0f} MB, used {peaks.workers_min / MB:.0f}.."
              f"{peaks.workers / MB:.0f} MB while stepping: at most {room / MB:.0f} MB left, a float32 copy "
              f"needs {N * D * 4 / MB:.0f} MB", flush=True)
        assert room < N * D * 4, room
        assert peaks.worker_limits == {worker_limit}, (peaks.worker_limits, worker_limit)

    try:  # the same data as a plain array view (not a memmap): cast to float32 and copied whole
        build().fit(np.asarray(x), y, batch_size=BATCH, epochs=1, verbose=0, **kw)
    except MemoryError:
        print(f"rank {rank}: the same data as an array: MemoryError (copied whole)", flush=True)
    else:
        raise SystemExit("fit on the array view did not need a copy")

    if mode == "process":
        from nbmodel.parallel import ParallelError

        os.environ[LIMIT_ENV] = str(64 * MB)  # too little for a worker to import numba
        t = time.time()
        try:
            build().fit(x[:4 * BATCH], y[:4 * BATCH], batch_size=BATCH, epochs=1, verbose=0, **kw)
        except ParallelError as e:
            print(f"workers over their limit: ParallelError after {time.time() - t:.1f} s: "
                  f"{str(e).splitlines()[0]}", flush=True)
        else:
            raise SystemExit("workers limited to 64 MB trained")
    print(f"rank {rank}: OK after {time.time() - t0:.1f} s", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
