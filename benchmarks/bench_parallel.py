"""Data-parallel throughput (training samples/s) of the reference models.

    python -m benchmarks.bench_parallel [--models cnn,mlp] [--batch 256] [--steps 8] [--repeats 3]

Each configuration trains the same model (nbmodel/bench/models.py) on
synthetic data at one GLOBAL batch size:

    1 process, 1 thread      fit(workers=1) after nb.set_num_threads(1)
    1 process, all cores     fit(workers=1): the default
    1 replica                fit_parallel(workers=1): the replicated step in this process, no
                             workers (its overhead alone)
    2 workers                fit(workers=2): this process (replica 0) and one spawned worker,
                             cores // 2 threads each
    ceiling                  two independent 1-thread processes, each training on half of
                             every batch at the same time, no communication: the best two
                             workers can do on this machine at this moment (a shared machine
                             whose cores are taken by others, or a VM with steal time, gives
                             much less than 2x the 1-thread rate)

Throughput is measured over the second epoch only (the first pays for spawning
workers and loading kernels), from the first to the last step's end as the
parent sees it. Configurations are interleaved and repeated; the median is
reported, with the ratios to "1 process, all cores" and to "1 process, 1
thread" (the resources of one of the two workers) measured in the same run,
and the share of the ceiling reached by 2 workers: the median over the rounds
of each round's ratio (a round's configurations run minutes apart at most, so
its ratio is less disturbed by a shared machine's slow spells than a ratio of
medians).
asv runs ``ParallelThroughput.track_samples_per_s``.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np

from nbmodel.bench.sync import SYNCS, stat_sync_us  # spawned children import it from the package

CONFIGS = ("1 process, 1 thread", "1 process, all cores", "1 replica", "2 workers",
           "ceiling: 2 independent processes")


class _StepClock:
    """Callback: wall time of the steps of the last epoch, as the parent sees them."""

    def __new__(cls):
        from nbmodel.callbacks import Callback

        class Clock(Callback):
            def on_epoch_begin(self, epoch, logs=None):
                self.t0 = time.perf_counter()
                self.ends = []

            def on_train_batch_end(self, batch, logs=None):
                self.ends.append(time.perf_counter())

        return Clock()


def _data(ref, n, seed=0):
    """n samples shaped like the reference model's batch."""
    x1, _ = ref.data(seed)
    rng = np.random.default_rng(seed)
    x = rng.random((n,) + x1.shape[1:], dtype=np.float32)
    y = rng.integers(0, 10, n).astype(np.int64)
    return x, y


def _half_batch_rate(model_name, batch, steps, start, out):
    """Child of the ceiling configuration: 1-thread train steps on batch // 2 samples."""
    import nbmodel as nb
    from nbmodel.bench import REFERENCE_MODELS

    nb.set_num_threads(1)
    ref = REFERENCE_MODELS[model_name]
    x, y = _data(ref, batch // 2)
    model = ref.build_nb()
    for _ in range(2):
        model.train_on_batch(x, y)
    start.wait()
    t = time.perf_counter()
    for _ in range(steps):
        model.train_on_batch(x, y)
    out.put(len(x) * steps / (time.perf_counter() - t))


def _ceiling(model_name, batch, steps):
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    start, out = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_half_batch_rate, args=(model_name, batch, steps, start, out)) for _ in range(2)]
    for p in procs:
        p.start()
    rates = [out.get(timeout=600) for _ in procs]
    for p in procs:
        p.join()
    return sum(rates)


def measure(model_name, config, batch=256, steps=8):
    """Samples/s of one configuration (a fresh model each time)."""
    if config.startswith("ceiling"):
        return _ceiling(model_name, batch, steps)
    import nbmodel as nb
    from nbmodel.bench import REFERENCE_MODELS
    from nbmodel.parallel.process import fit_process  # noqa: F401 - import cost outside the timing

    ref = REFERENCE_MODELS[model_name]
    x, y = _data(ref, batch * steps)
    cores = nb.config.available_cores()
    nb.set_num_threads(1 if config == "1 process, 1 thread" else cores)
    model = ref.build_nb()
    clock = _StepClock()
    kw = dict(batch_size=batch, epochs=2, verbose=0, shuffle=True, callbacks=[clock])
    if config == "1 replica":
        from nbmodel.parallel import fit_parallel

        fit_parallel(model, x, y, workers=1, **kw)
    else:
        model.fit(x, y, workers=2 if config == "2 workers" else 1, **kw)
    # first step of the epoch to the last: (steps - 1) batches; the first one's start is not seen
    # by the parent for the process backend, so time from its end
    ends = clock.ends
    return batch * (len(ends) - 1) / (ends[-1] - ends[0])


def run(models, batch, steps, repeats):
    results = {m: {c: [] for c in CONFIGS} for m in models}
    for rep in range(repeats):
        for m in models:
            for c in CONFIGS:
                results[m][c].append(measure(m, c, batch, steps))
                print(f"[{rep + 1}/{repeats}] {m}, {c}: {results[m][c][-1]:.0f} samples/s", file=sys.stderr,
                      flush=True)
    return results


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="cnn,mlp")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--sync", action="store_true", help="also time the BatchNormalization statistics sum")
    args = p.parse_args(argv)
    import nbmodel as nb

    if args.sync:
        for kind in SYNCS * 2:  # twice, alternating
            print(f"statistics sum between 2 workers, {kind}: {stat_sync_us(kind):.1f} us per call")

    models = [m for m in args.models.split(",") if m]
    results = run(models, args.batch, args.steps, args.repeats)
    med = {m: {c: statistics.median(v) for c, v in r.items()} for m, r in results.items()}
    print(f"global batch {args.batch}, {args.steps} steps per epoch, median of {args.repeats}, "
          f"{nb.config.available_cores()} cores")
    print("| model | configuration | samples/s | vs 1 process, all cores | vs 1 process, 1 thread |")
    print("|---|---|---:|---:|---:|")
    for m in models:
        base, one = med[m]["1 process, all cores"], med[m]["1 process, 1 thread"]
        for c in CONFIGS:
            print(f"| {m} | {c} | {med[m][c]:.0f} | {med[m][c] / base:.2f}x | {med[m][c] / one:.2f}x |")
    for m in models:
        rounds = [w / c for w, c in zip(results[m]["2 workers"], results[m][CONFIGS[-1]])]
        print(f"{m}: 2 workers reach {statistics.median(rounds):.0%} of the ceiling (median of the rounds: "
              f"{', '.join(f'{r:.0%}' for r in rounds)}; ratio of the medians "
              f"{med[m]['2 workers'] / med[m][CONFIGS[-1]]:.0%})")
    return 0


class StatSync:
    """asv: one BatchNormalization statistics sum between two worker processes."""

    params = (list(SYNCS),)
    param_names = ["barrier"]
    timeout = 300
    unit = "us"

    def track_stat_sync_us(self, kind):
        return stat_sync_us(kind)


class ParallelThroughput:
    """asv: samples/s of each reference model with 1 and 2 workers."""

    params = (["cnn", "mlp"], ["1 process, all cores", "2 workers"])
    param_names = ["model", "config"]
    timeout = 600
    unit = "samples/s"

    def setup(self, model, config):
        from nbmodel.bench import REFERENCE_MODELS

        if model not in REFERENCE_MODELS:
            raise NotImplementedError(f"no reference model {model!r}")

    def track_samples_per_s(self, model, config):
        return measure(model, config)


if __name__ == "__main__":
    raise SystemExit(main())
