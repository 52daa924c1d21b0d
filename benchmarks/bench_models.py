"""asv: every reference model (benchmarks/models_*.py), nbmodel and PyTorch side by side.

    asv run --quick            # or: python -m benchmarks.peer --vs torch
Timings are single-threaded (nb.set_num_threads(1), torch.set_num_threads(1))
so the two are compared at equal thread counts.
"""
from .common import discover_models, torch_train_step

_MODELS = sorted(discover_models())


class TrainStep:
    params = (_MODELS, ["nbmodel", "torch"])
    param_names = ["model", "framework"]
    timeout = 300

    def setup(self, model, framework):
        import nbmodel as nb

        nb.set_num_threads(1)
        ref = discover_models()[model]
        self.x, self.y = ref.data()
        if framework == "nbmodel":
            self.m = ref.build_nb()
            self.step = lambda: self.m.train_on_batch(self.x, self.y)
        else:
            try:
                import torch
            except ImportError:
                raise NotImplementedError("torch is not installed")  # asv skips the benchmark
            torch.set_num_threads(1)
            module, loss_fn = ref.build_torch()
            xt, yt = ref.torch_batch(self.x, self.y)
            self.step = torch_train_step(module, loss_fn, xt, yt, torch.optim.Adam(module.parameters(), 1e-3))
        for _ in range(3):
            self.step()

    def time_train_step(self, model, framework):
        self.step()


class Predict:
    params = (_MODELS,)
    param_names = ["model"]

    def setup(self, model):
        import nbmodel as nb

        nb.set_num_threads(1)
        ref = discover_models()[model]
        self.x, _ = ref.data()
        self.m = ref.build_nb()
        self.m.predict(self.x, batch_size=len(self.x))

    def time_predict(self, model):
        self.m.predict(self.x, batch_size=len(self.x))


class Import:
    def timeraw_import_nbmodel(self):
        return "import nbmodel"


def track_blas_ceiling_gflops():
    from .common import blas_ceiling_gflops

    return blas_ceiling_gflops()


track_blas_ceiling_gflops.unit = "GFLOP/s"
