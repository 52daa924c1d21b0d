"""Run by test_process.py: REPLICAS spawned workers sum vectors through
common.SharedSlotsReduce with one barrier kind (argv[1]: flag or pipe), many
calls in a row with random pauses so that workers reach barriers at different
times; every worker checks every sum. Prints OK or the first wrong sum."""
import multiprocessing as mp
import sys
import time
from multiprocessing import shared_memory

import numpy as np

REPLICAS, CALLS, SIZE = 3, 300, 5


def worker(kind, rank, pipes, name, out):
    from nbmodel.parallel.common import SharedSlotsReduce
    from nbmodel.parallel.process import FlagBarrier, PipeBarrier

    shm = shared_memory.SharedMemory(name=name)
    slots = np.ndarray((2, REPLICAS, SIZE), np.float64, buffer=shm.buf)
    counts = np.ndarray((REPLICAS,), np.int64, buffer=shm.buf, offset=slots.nbytes)
    barrier = FlagBarrier(rank, counts) if kind == "flag" else PipeBarrier(rank, *pipes)
    reduce = SharedSlotsReduce(slots, rank, barrier)
    rng = np.random.default_rng(rank)
    error = None
    for call in range(CALLS):
        if rng.random() < 0.1:
            time.sleep(rng.random() * 1e-3)
        buf = np.full(SIZE, float(1000 * call + rank))
        reduce(buf)
        want = 1000.0 * call * REPLICAS + sum(range(REPLICAS))
        if error is None and not np.all(buf == want):
            error = f"rank {rank} call {call}: got {buf[0]}, want {want}"
    out.put(error or "OK")
    del slots, counts, reduce, barrier
    shm.close()


def main(kind):
    from nbmodel.parallel.process import PipeBarrier

    ctx = mp.get_context("spawn")
    shm = shared_memory.SharedMemory(create=True, size=2 * REPLICAS * SIZE * 8 + REPLICAS * 8)
    try:
        np.ndarray((REPLICAS,), np.int64, buffer=shm.buf, offset=2 * REPLICAS * SIZE * 8)[:] = 0
        pipes = PipeBarrier.create(ctx, REPLICAS) if kind == "pipe" else [None] * REPLICAS
        out = ctx.Queue()
        procs = [ctx.Process(target=worker, args=(kind, r, pipes[r], shm.name, out)) for r in range(REPLICAS)]
        for p in procs:
            p.start()
        results = [out.get(timeout=120) for _ in procs]
        for p in procs:
            p.join()
    finally:
        shm.close()
        shm.unlink()
    bad = [r for r in results if r != "OK"]
    print(bad[0] if bad else "OK")


if __name__ == "__main__":
    main(sys.argv[1])
