"""The lstm and gru reference models (BENCHMARKS.md): x (32, 32, 64), y (32,) in 0..9,
LSTM/GRU 128 (last step), Dense 10, sparse CE from logits."""
import numpy as np

from .common import RefModel


class _Recurrent(RefModel):
    batch, steps, d_in, units, classes = 32, 32, 64, 128, 10
    gates = 4
    layer = "LSTM"
    torch_layer = "LSTM"

    def data(self, seed=0):
        rng = np.random.default_rng(seed)
        x = rng.standard_normal((self.batch, self.steps, self.d_in)).astype(np.float32)
        y = rng.integers(0, self.classes, self.batch).astype(np.int64)
        return x, y

    def flops_per_step(self):
        n = self.gates * self.units
        macs = self.batch * self.steps * (self.d_in + self.units) * n + self.batch * self.units * self.classes
        return 2 * macs * 3  # forward, input/state gradients, weight gradients

    def build_nb(self):
        import nbmodel as nb
        from nbmodel import layers

        model = nb.Sequential([layers.Input((self.steps, self.d_in)), getattr(layers, self.layer)(self.units),
                               layers.Dense(self.classes)], seed=0)
        model.compile(optimizer=nb.optimizers.Adam(1e-3),
                      loss=nb.losses.SparseCategoricalCrossentropy(from_logits=True))
        return model

    def build_torch(self):
        import torch

        torch.manual_seed(0)
        rnn_cls = getattr(torch.nn, self.torch_layer)
        d_in, units, classes = self.d_in, self.units, self.classes

        class LastStep(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.rnn = rnn_cls(d_in, units, batch_first=True)
                self.head = torch.nn.Linear(units, classes)

            def forward(self, x):
                out, _ = self.rnn(x)
                return self.head(out[:, -1])

        return LastStep(), torch.nn.CrossEntropyLoss()


class LSTMModel(_Recurrent):
    name = "lstm"


class GRUModel(_Recurrent):
    name = "gru"
    gates = 3
    layer = "GRU"
    torch_layer = "GRU"


MODELS = {"lstm": LSTMModel, "gru": GRUModel}
