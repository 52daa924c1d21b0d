"""asv: the families the other layer benchmarks leave out, alone at the
reference models' shapes (BENCHMARKS.md), one thread, float32: Dense (the mlp's
hidden layer), Embedding (ids into the transformer's width), LayerNormalization
and Dropout (the transformer's activations); the loss (sparse cross-entropy from
logits) and each optimizer's update over the mlp's parameters.

    asv run --python=same --quick --bench bench_core_layers
"""
import numpy as np

# name: (layer factory, input shape, integer ids)
CASES = {
    "dense 64->256 relu": (lambda L: L.Dense(256, activation="relu"), (128, 64), False),
    "dense 256->256 relu": (lambda L: L.Dense(256, activation="relu"), (128, 256), False),
    "embedding 1000x128": (lambda L: L.Embedding(1000, 128), (16, 64), True),
    "layernorm (16,64,128)": (lambda L: L.LayerNormalization(), (16, 64, 128), False),
    "dropout 0.1 (16,64,128)": (lambda L: L.Dropout(0.1, seed=0), (16, 64, 128), False),
}


class CoreLayers:
    """Forward (training), backward and inference of each case."""

    params = (list(CASES),)
    param_names = ["layer"]

    def setup(self, case):
        import nbmodel as nb
        from nbmodel import layers
        from nbmodel.layers.base import finite_checks

        nb.set_num_threads(1)
        self._checks = finite_checks(False)  # as inside Model.fit
        self._checks.__enter__()
        factory, shape, ids = CASES[case]
        rng = np.random.default_rng(0)
        self.x = rng.integers(0, 1000, shape) if ids else rng.standard_normal(shape).astype(np.float32)
        self.layer = factory(layers)
        self.layer.build(shape)
        y = self.layer.forward(self.x, training=True)
        self.dy = rng.standard_normal(y.shape).astype(np.float32)
        self.layer.backward(self.dy)

    def teardown(self, case):
        self._checks.__exit__(None, None, None)

    def time_forward(self, case):
        self.layer.forward(self.x, training=True)

    def time_backward(self, case):
        self.layer.backward(self.dy)

    def time_inference(self, case):
        self.layer.forward(self.x, training=False)


class Loss:
    """Sparse categorical cross-entropy from logits, value and gradient."""

    params = ([(128, 10), (8192, 1000)],)
    param_names = ["logits"]

    def setup(self, shape):
        import nbmodel as nb

        nb.set_num_threads(1)
        rng = np.random.default_rng(0)
        self.logits = rng.standard_normal(shape).astype(np.float32)
        self.labels = rng.integers(0, shape[1], shape[0])
        self.loss = nb.losses.SparseCategoricalCrossentropy(from_logits=True)
        self.loss.forward_backward(self.labels, self.logits)

    def time_forward_backward(self, shape):
        self.loss.forward_backward(self.labels, self.logits)


class OptimizerUpdate:
    """One update of every parameter of the mlp reference model (85,002 float32)."""

    params = (["sgd", "adam", "adamw", "rmsprop"],)
    param_names = ["optimizer"]

    def setup(self, name):
        import nbmodel as nb
        from nbmodel.bench import REFERENCE_MODELS

        nb.set_num_threads(1)
        model = REFERENCE_MODELS["mlp"].build_nb()
        n = sum(w.size for w in model.get_weights())
        rng = np.random.default_rng(0)
        self.params = rng.standard_normal(n).astype(np.float32)
        self.grads = rng.standard_normal(n).astype(np.float32)
        self.opt = nb.optimizers.get(name)
        self.opt.apply(self.params, self.grads)

    def time_update(self, name):
        self.opt.apply(self.params, self.grads)
