"""asv: the five reference models (nbmodel/bench/models.py): train step and predict
(time and peak memory), the step time ratio to PyTorch, `import nbmodel`, the
first training step with a cold and with a warm kernel cache, and the machine's
BLAS ceiling, all at one thread (``nbmodel bench --threads N`` for more).

    asv run --python=same --quick --bench bench_models
"""
import os
import subprocess
import sys
import tempfile

from nbmodel.bench import REFERENCE_MODELS, blas_ceiling_gflops, interleaved_medians, torch_train_step

MODELS = list(REFERENCE_MODELS)


def _import_torch():
    try:
        import torch
    except ImportError:
        raise NotImplementedError("torch is not installed")  # asv skips the benchmark
    torch.set_num_threads(1)
    return torch


def _step(model, framework):
    """One train step of a reference model as a closure, warmed up (compiled)."""
    import nbmodel as nb

    nb.set_num_threads(1)
    ref = REFERENCE_MODELS[model]
    x, y = ref.data()
    if framework == "nbmodel":
        m = ref.build_nb()
        step = (lambda: m.train_on_batch(x, y))
    else:
        torch = _import_torch()
        module, loss_fn = ref.build_torch()
        xt, yt = ref.torch_batch(x, y)
        step = torch_train_step(module, loss_fn, xt, yt, torch.optim.Adam(module.parameters(), 1e-3))
    for _ in range(3):
        step()
    return step


class TrainStep:
    params = (MODELS, ["nbmodel", "torch"])
    param_names = ["model", "framework"]
    timeout = 300

    def setup(self, model, framework):
        self.step = _step(model, framework)

    def time_train_step(self, model, framework):
        self.step()

    def peakmem_train_step(self, model, framework):
        self.step()


class TorchRatio:
    """nbmodel's step time over PyTorch's (below 1: nbmodel is faster), interleaved in one run."""

    params = (MODELS,)
    param_names = ["model"]
    timeout = 300
    unit = "nbmodel / torch"

    def setup(self, model):
        self.steps = {fw: _step(model, fw) for fw in ("nbmodel", "torch")}

    def track_step_time_ratio(self, model):
        t = interleaved_medians(self.steps, warmup=2, repeat=20)
        return t["nbmodel"] / t["torch"]


class Predict:
    params = (MODELS,)
    param_names = ["model"]

    def setup(self, model):
        import nbmodel as nb

        nb.set_num_threads(1)
        ref = REFERENCE_MODELS[model]
        self.x, _ = ref.data()
        self.m = ref.build_nb()
        self.m.predict(self.x, batch_size=len(self.x))

    def time_predict(self, model):
        self.m.predict(self.x, batch_size=len(self.x))

    def peakmem_predict(self, model):
        self.m.predict(self.x, batch_size=len(self.x))


class Import:
    def timeraw_import_nbmodel(self):
        return "import nbmodel"


_FIRST_STEP = """
import time, numpy as np
t0 = time.perf_counter()
import nbmodel as nb
from nbmodel.bench import REFERENCE_MODELS
ref = REFERENCE_MODELS[{model!r}]
x, y = ref.data()
ref.build_nb().train_on_batch(x, y)
print(time.perf_counter() - t0)
"""


class FirstStep:
    """Seconds from a fresh process to the end of its first train step (import,
    build, kernels compiled or loaded, one step). Cold: an empty kernel cache
    (every kernel the model needs compiled: the mlp only, the cnn takes about a
    minute); warm: the package's cache after one untimed run."""

    params = (["mlp, cold cache", "mlp, warm cache", "cnn, warm cache"],)
    param_names = ["case"]
    timeout = 600
    unit = "s"
    number = 1
    repeat = 1

    def setup(self, case):
        self.model = case.split(",")[0]
        self.tmp = tempfile.TemporaryDirectory()
        self.env = dict(os.environ)
        if "cold" in case:
            self.env["NUMBA_CACHE_DIR"] = self.tmp.name
        else:
            self._run()

    def teardown(self, case):
        self.tmp.cleanup()

    def _run(self):
        out = subprocess.run([sys.executable, "-c", _FIRST_STEP.format(model=self.model)], env=self.env,
                             capture_output=True, text=True, check=True).stdout
        return float(out.strip().splitlines()[-1])

    def track_first_step_seconds(self, case):
        return self._run()


def track_blas_ceiling_gflops():
    return blas_ceiling_gflops()


track_blas_ceiling_gflops.unit = "GFLOP/s"
