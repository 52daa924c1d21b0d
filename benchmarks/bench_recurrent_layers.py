"""Recurrent layers alone at the reference shapes (x (32, 32, 64), 128 units):
forward and backward of LSTM, GRU and SimpleRNN, single-threaded.

    asv run --bench RecurrentLayer
    python -m benchmarks.bench_recurrent_layers [--threads 1] [--repeat 40]   # vs PyTorch, same run

Backward includes the input gradient on both sides. The PyTorch backward is
timed alone by replaying the retained graph (``retain_graph=True``).
"""
from __future__ import annotations

import argparse
import sys

import numpy as np

BATCH, STEPS, D_IN, UNITS = 32, 32, 64, 128
LAYERS = ["LSTM", "GRU", "SimpleRNN"]
TORCH_NAMES = {"LSTM": "LSTM", "GRU": "GRU", "SimpleRNN": "RNN"}


def _x():
    return np.random.default_rng(0).standard_normal((BATCH, STEPS, D_IN)).astype(np.float32)


def make_nb(kind, return_sequences):
    """(forward, backward) closures of an nbmodel layer on the reference batch."""
    from nbmodel import layers

    layer = getattr(layers, kind)(UNITS, return_sequences=return_sequences, seed=0)
    x = _x()
    layer.build(x.shape)
    y = layer.forward(x, training=True)
    dy = np.ones_like(y)
    layer.backward(dy)
    return (lambda: layer.forward(x, training=True)), (lambda: layer.backward(dy))


def make_torch(kind, return_sequences):
    import torch

    torch.manual_seed(0)
    m = getattr(torch.nn, TORCH_NAMES[kind])(D_IN, UNITS, batch_first=True)
    x = torch.from_numpy(_x()).requires_grad_(True)
    out, _ = m(x)
    out = out if return_sequences else out[:, -1]
    dy = torch.ones_like(out)

    def forward():
        with torch.no_grad():
            m(x)

    def backward():
        out.backward(dy, retain_graph=True)
    backward()
    return forward, backward


class RecurrentLayer:
    """asv: nbmodel layer forward and backward (1 thread)."""

    params = (LAYERS, [False, True])
    param_names = ["layer", "return_sequences"]

    def setup(self, kind, return_sequences):
        import nbmodel as nb

        nb.set_num_threads(1)
        self.fwd, self.bwd = make_nb(kind, return_sequences)

    def time_forward(self, kind, return_sequences):
        self.fwd()

    def time_backward(self, kind, return_sequences):
        self.bwd()


class TorchRecurrentLayer:
    """asv: the PyTorch peer of RecurrentLayer (skipped without torch)."""

    params = (LAYERS, [False, True])
    param_names = ["layer", "return_sequences"]

    def setup(self, kind, return_sequences):
        try:
            import torch
        except ImportError:
            raise NotImplementedError("torch is not installed")
        torch.set_num_threads(1)
        self.fwd, self.bwd = make_torch(kind, return_sequences)

    def time_forward(self, kind, return_sequences):
        self.fwd()

    def time_backward(self, kind, return_sequences):
        self.bwd()


def main(argv=None):
    parser = argparse.ArgumentParser(description="recurrent layers, nbmodel vs PyTorch")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=40)
    args = parser.parse_args(argv)
    import torch

    import nbmodel as nb
    from nbmodel.bench import interleaved_medians

    nb.set_num_threads(args.threads)
    torch.set_num_threads(args.threads)
    print(f"threads={args.threads}  x ({BATCH}, {STEPS}, {D_IN}), {UNITS} units, float32; "
          "ratio = torch / nbmodel (> 1: nbmodel faster)")
    print(f"{'layer':<10}{'seq':>5}{'nb fwd ms':>11}{'torch fwd':>11}{'ratio':>7}"
          f"{'nb bwd ms':>11}{'torch bwd':>11}{'ratio':>7}")
    for kind in LAYERS:
        for seq in (False, True):
            nf, nbk = make_nb(kind, seq)
            tf, tb = make_torch(kind, seq)
            t = interleaved_medians({"nf": nf, "tf": tf, "nb": nbk, "tb": tb}, warmup=3, repeat=args.repeat)
            print(f"{kind:<10}{str(seq):>5}{t['nf'] * 1e3:>11.3f}{t['tf'] * 1e3:>11.3f}{t['tf'] / t['nf']:>7.2f}"
                  f"{t['nb'] * 1e3:>11.3f}{t['tb'] * 1e3:>11.3f}{t['tb'] / t['nb']:>7.2f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
