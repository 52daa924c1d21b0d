"""Train steps of a script that imports NumPy (and, with --scipy, scipy.linalg, as
many libraries do) before nbmodel and runs a NumPy product in its input pipeline
before every step, as user scripts do.

    python benchmarks/numpy_first.py [--models cnn,transformer] [--threads 2] [--scipy]

Prints the median step time of each reference model (the pipeline's product not
included). With several threads it shows whether the BLAS pools loaded before
nbmodel (NumPy's, woken by the pipeline's product; SciPy's, which the kernels'
threaded products use) still spin when idle (see
``config._quiet_openblas_loaded_before`` and docs/performance.md, ninth
session). Run it as a script: NumPy must be imported before nbmodel.
"""
import argparse
import statistics
import time

import numpy as np


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="mlp,cnn,transformer")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--scipy", action="store_true", help="import scipy.linalg before nbmodel")
    args = p.parse_args(argv)
    if args.scipy:
        import scipy.linalg  # noqa: F401 - loads SciPy's OpenBLAS before nbmodel
    rng = np.random.default_rng(0)
    feats = rng.standard_normal((2048, 256)).astype(np.float32)
    proj = rng.standard_normal((256, 64)).astype(np.float32)

    import nbmodel as nb
    from nbmodel.bench import REFERENCE_MODELS

    nb.set_num_threads(args.threads)
    for name in args.models.split(","):
        ref = REFERENCE_MODELS[name]
        x, y = ref.data()
        model = ref.build_nb()
        times = []
        for i in range(args.steps + 5):
            feats @ proj  # the pipeline's product: threaded NumPy BLAS
            t0 = time.perf_counter()
            model.train_on_batch(x, y)
            if i >= 5:  # the first steps load kernels
                times.append(time.perf_counter() - t0)
        print(f"{name:12s} {statistics.median(times) * 1e3:8.3f} ms per step ({args.threads} threads)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
