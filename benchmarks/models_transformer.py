"""The transformer reference model (BENCHMARKS.md): x (16, 64, 128), one
TransformerEncoder (4 heads x 32, ff 512, post-norm, ReLU, no dropout), mean
over time, Dense 10; sparse CE from logits."""
import numpy as np

from .common import RefModel


class Transformer(RefModel):
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


MODELS = {"transformer": Transformer}
