"""The mlp reference model (BENCHMARKS.md): x (128, 64), Dense 256 relu x2, Dense 10, sparse CE from logits."""
import numpy as np

from .common import RefModel


class MLP(RefModel):
    name = "mlp"
    batch, d_in, hidden, classes = 128, 64, 256, 10

    def data(self, seed=0):
        rng = np.random.default_rng(seed)
        x = rng.standard_normal((self.batch, self.d_in)).astype(np.float32)
        y = rng.integers(0, self.classes, self.batch).astype(np.int64)
        return x, y

    def flops_per_step(self):
        macs = self.batch * (self.d_in * self.hidden + self.hidden * self.hidden + self.hidden * self.classes)
        return 2 * macs * 3  # forward, input gradient, weight gradient

    def build_nb(self):
        import nbmodel as nb
        from nbmodel import layers

        model = nb.Sequential([layers.Input((self.d_in,)), layers.Dense(self.hidden, activation="relu"),
                               layers.Dense(self.hidden, activation="relu"), layers.Dense(self.classes)], seed=0)
        model.compile(optimizer=nb.optimizers.Adam(1e-3),
                      loss=nb.losses.SparseCategoricalCrossentropy(from_logits=True))
        return model

    def build_torch(self):
        import torch

        torch.manual_seed(0)
        module = torch.nn.Sequential(torch.nn.Linear(self.d_in, self.hidden), torch.nn.ReLU(),
                                     torch.nn.Linear(self.hidden, self.hidden), torch.nn.ReLU(),
                                     torch.nn.Linear(self.hidden, self.classes))
        return module, torch.nn.CrossEntropyLoss()


MODELS = {"mlp": MLP}
