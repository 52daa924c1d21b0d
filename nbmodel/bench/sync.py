"""The cost of BatchNormalization's statistics sum between two worker processes
through each barrier kind, for ``python -m benchmarks.bench_parallel --sync`` and
the asv suite. In the package (not in benchmarks/) because the spawned children
import the function by its module, which must be importable anywhere."""
from __future__ import annotations

import time

import numpy as np

SYNCS = ("multiprocessing.Barrier", "PipeBarrier", "FlagBarrier")


def _sync_child(kind, rank, barrier, slots_name, calls, size, out):
    from multiprocessing import shared_memory

    from nbmodel.parallel.common import SharedSlotsReduce
    from nbmodel.parallel.process import FlagBarrier, PipeBarrier

    shm = shared_memory.SharedMemory(name=slots_name)
    try:
        slots = np.ndarray((2, 2, size), np.float64, buffer=shm.buf)
        counts = np.ndarray((2,), np.int64, buffer=shm.buf, offset=slots.nbytes)
        if kind == "PipeBarrier":
            barrier = PipeBarrier(rank, *barrier)
        elif kind == "FlagBarrier":
            barrier = FlagBarrier(rank, counts)
        reduce = SharedSlotsReduce(slots, rank, barrier)
        buf = np.full(size, float(rank + 1))
        for _ in range(20):  # warm-up
            reduce(buf)
        t = time.perf_counter()
        for _ in range(calls):
            buf[:] = rank + 1
            reduce(buf)
        out.put((time.perf_counter() - t) / calls)
        del slots, counts, reduce, barrier
    finally:
        shm.close()


def stat_sync_us(kind: str = "PipeBarrier", calls: int = 2000, size: int = 129) -> float:
    """Microseconds per BatchNormalization statistics sum between two worker
    processes (common.SharedSlotsReduce over ``size`` floats) through one of
    the barriers: FlagBarrier (what the process backend uses on x86-64),
    PipeBarrier (elsewhere) or multiprocessing.Barrier (before both)."""
    import multiprocessing as mp
    from multiprocessing import shared_memory

    from nbmodel.parallel.process import PipeBarrier

    ctx = mp.get_context("spawn")
    shm = shared_memory.SharedMemory(create=True, size=2 * 2 * size * 8 + 2 * 8)
    try:
        np.ndarray((2,), np.int64, buffer=shm.buf, offset=2 * 2 * size * 8)[:] = 0
        barriers = {"PipeBarrier": lambda: PipeBarrier.create(ctx, 2), "FlagBarrier": lambda: [None, None],
                    "multiprocessing.Barrier": lambda: [ctx.Barrier(2)] * 2}[kind]()
        out = ctx.Queue()
        procs = [ctx.Process(target=_sync_child, args=(kind, r, barriers[r], shm.name, calls, size, out))
                 for r in range(2)]
        for p in procs:
            p.start()
        per_call = max(out.get(timeout=300) for _ in procs)
        for p in procs:
            p.join()
    finally:
        shm.close()
        shm.unlink()
    return per_call * 1e6
