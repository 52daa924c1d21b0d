"""The five reference workloads of BENCHMARKS.md, built the same way in nbmodel
and in PyTorch: one training batch of float32 data with int64 labels, the model
compiled with Adam(1e-3) and sparse cross-entropy from logits, seed 0.

``REFERENCE_MODELS`` maps each name to an instance; ``nbmodel bench``, the asv
suite in benchmarks/ and the device tests all take the models from here.
"""
from __future__ import annotations

import numpy as np


class RefModel:
    """One reference workload, built the same way in nbmodel and in PyTorch."""

    name = "?"

    def data(self, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """(x, y) NumPy arrays of one training batch, float32 x, int64 labels."""
        raise NotImplementedError

    def flops_per_step(self) -> float:
        """FLOPs of one training step (forward + backward; count 2 per multiply-add)."""
        raise NotImplementedError

    def build_nb(self):
        """An nbmodel model, compiled with Adam(1e-3) and its loss, seed 0."""
        raise NotImplementedError

    def build_torch(self):
        """(module, loss_fn) in PyTorch, the same architecture."""
        raise NotImplementedError

    def torch_batch(self, x, y):
        """x, y as torch tensors in the module's layout (e.g. NCHW images)."""
        import torch

        return torch.from_numpy(x), torch.from_numpy(y)


class MLP(RefModel):
    """x (128, 64); Dense 256 relu, Dense 256 relu, Dense 10."""

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


class CNN(RefModel):
    """x (64, 28, 28, 1); Conv2D 32 3x3 same relu, MaxPool 2, Conv2D 64 3x3 same relu, MaxPool 2,
    Flatten, Dense 10. PyTorch runs the same model in NCHW."""

    name = "cnn"
    batch, size, classes = 64, 28, 10
    c1, c2 = 32, 64

    def data(self, seed=0):
        rng = np.random.default_rng(seed)
        x = rng.random((self.batch, self.size, self.size, 1), dtype=np.float32)
        y = rng.integers(0, self.classes, self.batch).astype(np.int64)
        return x, y

    def flops_per_step(self):
        s1, s2 = self.size, self.size // 2
        conv1 = self.batch * s1 * s1 * 9 * 1 * self.c1
        conv2 = self.batch * s2 * s2 * 9 * self.c1 * self.c2
        dense = self.batch * (s2 // 2) ** 2 * self.c2 * self.classes
        # forward + weight gradient everywhere, input gradient for all but the
        # first layer (neither framework computes the gradient of the images)
        return 2 * (2 * conv1 + 3 * conv2 + 3 * dense)

    def build_nb(self):
        import nbmodel as nb
        from nbmodel import layers

        model = nb.Sequential([
            layers.Input((self.size, self.size, 1)),
            layers.Conv2D(self.c1, 3, padding="same", activation="relu"),
            layers.MaxPooling2D(2),
            layers.Conv2D(self.c2, 3, padding="same", activation="relu"),
            layers.MaxPooling2D(2),
            layers.Flatten(),
            layers.Dense(self.classes),
        ], seed=0)
        model.compile(optimizer=nb.optimizers.Adam(1e-3),
                      loss=nb.losses.SparseCategoricalCrossentropy(from_logits=True))
        return model

    def build_torch(self):
        import torch

        torch.manual_seed(0)
        flat = (self.size // 4) ** 2 * self.c2
        module = torch.nn.Sequential(
            torch.nn.Conv2d(1, self.c1, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
            torch.nn.Conv2d(self.c1, self.c2, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
            torch.nn.Flatten(), torch.nn.Linear(flat, self.classes))
        return module, torch.nn.CrossEntropyLoss()

    def torch_batch(self, x, y):
        import torch

        return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))), torch.from_numpy(y)


class _Recurrent(RefModel):
    """x (32, 32, 64); LSTM or GRU 128 (last step), Dense 10."""

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


class Transformer(RefModel):
    """x (16, 64, 128); TransformerEncoder (4 heads x 32, ff 512, post-norm, ReLU, no dropout),
    mean over time, Dense 10."""

    name = "transformer"
    batch, seq, d, heads, key_dim, ff, classes = 16, 64, 128, 4, 32, 512, 10

    def data(self, seed=0):
        rng = np.random.default_rng(seed)
        x = rng.standard_normal((self.batch, self.seq, self.d)).astype(np.float32)
        y = rng.integers(0, self.classes, self.batch).astype(np.int64)
        return x, y

    def flops_per_step(self):
        n, d, t = self.batch * self.seq, self.d, self.seq
        macs = n * (4 * d * d + 2 * t * d + 2 * d * self.ff) + self.batch * d * self.classes
        return 2 * macs * 3  # forward, input gradient, weight gradient

    def build_nb(self):
        import nbmodel as nb
        from nbmodel import layers

        model = nb.Sequential([layers.Input((self.seq, self.d)),
                               layers.TransformerEncoder(self.heads, self.key_dim, self.ff),
                               layers.GlobalAveragePooling1D(), layers.Dense(self.classes)], seed=0)
        model.compile(optimizer=nb.optimizers.Adam(1e-3),
                      loss=nb.losses.SparseCategoricalCrossentropy(from_logits=True))
        return model

    def build_torch(self):
        import torch

        torch.manual_seed(0)

        class Net(torch.nn.Module):
            def __init__(self, ref):
                super().__init__()
                self.enc = torch.nn.TransformerEncoderLayer(ref.d, ref.heads, ref.ff, dropout=0.0,
                                                            batch_first=True)
                self.head = torch.nn.Linear(ref.d, ref.classes)

            def forward(self, x):
                return self.head(self.enc(x).mean(dim=1))

        return Net(self), torch.nn.CrossEntropyLoss()


REFERENCE_MODELS: dict[str, RefModel] = {m.name: m for m in (MLP(), CNN(), LSTMModel(), GRUModel(), Transformer())}
