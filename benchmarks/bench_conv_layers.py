"""Convolution-family layers alone, forward and backward, at the cnn reference
model's shapes (BENCHMARKS.md), float32.

asv runs the classes below (setup + time_*). Run the module to compare with the
same PyTorch ops (NCHW) in the same process, calls interleaved:

    python -m benchmarks.bench_conv_layers --threads 1

The table gives the median times and torch / nbmodel ratios (> 1: nbmodel faster).
Layers run with the per-call NaN/inf input scan off, as inside Model.fit.
"""
from __future__ import annotations

import argparse
import sys

import numpy as np

# name: (layer factory, input shape NHWC, gradient of the input needed)
CASES = {
    "conv1 32 3x3 same relu": (lambda L: L.Conv2D(32, 3, padding="same", activation="relu"), (64, 28, 28, 1),
                               False),
    "maxpool1 2x2": (lambda L: L.MaxPooling2D(2), (64, 28, 28, 32), True),
    "conv2 64 3x3 same relu": (lambda L: L.Conv2D(64, 3, padding="same", activation="relu"), (64, 14, 14, 32),
                               True),
    "maxpool2 2x2": (lambda L: L.MaxPooling2D(2), (64, 14, 14, 64), True),
    "batchnorm (64,28,28,32)": (lambda L: L.BatchNormalization(), (64, 28, 28, 32), True),
    "avgpool 2x2": (lambda L: L.AveragePooling2D(2), (64, 28, 28, 32), True),
    "global avg pool": (lambda L: L.GlobalAveragePooling2D(), (64, 7, 7, 64), True),
}


def make_nb(name, seed=0):
    from nbmodel import layers as L

    factory, shape, need_dx = CASES[name]
    layer = factory(L)
    layer.build(shape)
    layer.input_grad_needed = need_dx
    x = np.random.default_rng(seed).random(shape, dtype=np.float32)
    y = layer.forward(x, training=True)
    dy = np.random.default_rng(seed + 1).standard_normal(y.shape).astype(np.float32)
    return layer, x, dy


def make_torch(name, layer, x):
    """The same op in PyTorch on NCHW tensors, with the nbmodel layer's weights."""
    import torch

    F = torch.nn.functional
    xt = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))).requires_grad_(CASES[name][2])
    if name.startswith("conv"):
        w = torch.from_numpy(np.ascontiguousarray(layer.params["kernel"].transpose(3, 2, 0, 1))).requires_grad_()
        b = torch.from_numpy(layer.params["bias"].copy()).requires_grad_()
        return xt, lambda: torch.relu(F.conv2d(xt, w, b, padding=1))
    if name.startswith("maxpool"):
        return xt, lambda: F.max_pool2d(xt, 2)
    if name.startswith("avgpool"):
        return xt, lambda: F.avg_pool2d(xt, 2)
    if name.startswith("global"):
        return xt, lambda: xt.mean(dim=(2, 3))
    bn = torch.nn.BatchNorm2d(x.shape[-1], eps=1e-3, momentum=0.01)
    return xt, lambda: bn(xt)


class ConvLayers:
    """asv: each case's forward (training), backward and inference, one thread."""

    params = (list(CASES),)
    param_names = ["layer"]

    def setup(self, case):
        import nbmodel as nb
        from nbmodel.layers.base import finite_checks

        nb.set_num_threads(1)
        self._checks = finite_checks(False)  # as inside Model.fit
        self._checks.__enter__()
        self.layer, self.x, self.dy = make_nb(case)
        self.layer.backward(self.dy)  # compiled before timing

    def teardown(self, case):
        self._checks.__exit__(None, None, None)

    def time_forward(self, case):
        self.layer.forward(self.x, training=True)

    def time_backward(self, case):
        self.layer.backward(self.dy)

    def time_inference(self, case):
        self.layer.forward(self.x, training=False)


def compare(threads=1, repeat=30, names=None):
    import torch

    import nbmodel as nb
    from nbmodel.bench import interleaved_medians
    from nbmodel.layers.base import finite_checks

    with finite_checks(False):  # as inside Model.fit
        return _compare(nb, torch, interleaved_medians, threads, repeat, names)


def _compare(nb, torch, interleaved_medians, threads, repeat, names):
    nb.set_num_threads(threads)
    torch.set_num_threads(threads)
    print(f"threads={threads}; medians of {repeat} interleaved calls, float32; ratio = torch / nbmodel")
    print(f"{'layer':<26}{'nb fwd ms':>10}{'torch':>9}{'ratio':>7}{'nb f+b ms':>11}{'torch':>9}{'ratio':>7}")
    rows = []
    for name in names or CASES:
        layer, x, dy = make_nb(name)
        xt, op = make_torch(name, layer, x)
        with torch.no_grad():
            dyt = torch.from_numpy(np.ascontiguousarray(np.moveaxis(dy, -1, 1))) if dy.ndim == 4 else \
                torch.from_numpy(dy)

        def torch_fwd():
            with torch.no_grad():
                op()

        def torch_train():
            op().backward(dyt)

        def nb_train():
            layer.forward(x, training=True)
            layer.backward(dy)

        t = interleaved_medians({"nb_f": lambda: layer.forward(x, training=True), "t_f": torch_fwd,
                                 "nb_fb": nb_train, "t_fb": torch_train}, warmup=3, repeat=repeat)
        print(f"{name:<26}{t['nb_f'] * 1e3:>10.3f}{t['t_f'] * 1e3:>9.3f}{t['t_f'] / t['nb_f']:>7.2f}"
              f"{t['nb_fb'] * 1e3:>11.3f}{t['t_fb'] * 1e3:>9.3f}{t['t_fb'] / t['nb_fb']:>7.2f}", flush=True)
        rows.append((name, t))
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description="conv-family layers vs PyTorch, same run")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--layers", default=None, help="comma-separated substrings of layer names")
    args = parser.parse_args(argv)
    names = None
    if args.layers:
        keys = args.layers.split(",")
        names = [n for n in CASES if any(k in n for k in keys)]
    compare(args.threads, args.repeat, names)
    return 0


if __name__ == "__main__":
    sys.exit(main())
