"""The cnn reference model (BENCHMARKS.md): x (64, 28, 28, 1), y (64,) in 0..9,
Conv2D 32 3x3 same relu, MaxPool 2, Conv2D 64 3x3 same relu, MaxPool 2,
Flatten, Dense 10, sparse CE from logits. PyTorch runs the same model in NCHW."""
import numpy as np

from .common import RefModel


class CNN(RefModel):
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


MODELS = {"cnn": CNN}
