"""asv: the attention family's layers alone at the transformer reference shapes
(x (16, 64, 128), 4 heads x 32, ff 512), forward and forward + backward,
nbmodel and PyTorch side by side.

    python -m benchmarks.bench_attention_layers [--threads 1] [--repeat 50]

prints the peer table (PyTorch time / nbmodel time: > 1 means nbmodel is
faster), timed interleaved in one run. nbmodel layers run as a Model runs
them (per-layer NaN scan off: fit validates the data once); forward alone is
inference (training=False; PyTorch in eval mode under no_grad), forward +
backward is a training pass with the input gradient computed on both sides.
"""
from __future__ import annotations

import argparse
import sys

import numpy as np

B, T, D, H, KD, FF = 16, 64, 128, 4, 32, 512
LAYERS = ["mha", "layernorm", "encoder"]


def _nb_layer(name):
    from nbmodel import layers

    if name == "mha":
        return layers.MultiHeadAttention(H, KD, seed=0)
    if name == "layernorm":
        return layers.LayerNormalization(seed=0)
    return layers.TransformerEncoder(H, KD, FF, seed=0)


def _torch_layer(name):
    import torch

    torch.manual_seed(0)
    if name == "mha":
        return torch.nn.MultiheadAttention(D, H, dropout=0.0, batch_first=True)
    if name == "layernorm":
        return torch.nn.LayerNorm(D, eps=1e-3)
    return torch.nn.TransformerEncoderLayer(D, H, FF, dropout=0.0, batch_first=True)


def make_pair(name, framework):
    """(forward, forward_backward) callables of one layer in one framework."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((B, T, D)).astype(np.float32)
    dy = rng.standard_normal((B, T, D)).astype(np.float32)
    if framework == "nbmodel":
        from nbmodel.layers.base import finite_checks

        layer = _nb_layer(name)
        inp = (x, x) if name == "mha" else x
        layer.build(((B, T, D), (B, T, D)) if name == "mha" else (B, T, D))

        def fwd():
            with finite_checks(False):
                layer.forward(inp, training=False)

        def fwd_bwd():
            with finite_checks(False):
                layer.forward(inp, training=True)
                layer.backward(dy)
        return fwd, fwd_bwd
    import torch

    layer = _torch_layer(name)
    xt = torch.from_numpy(x).requires_grad_(True)
    dyt = torch.from_numpy(dy)

    def call(a):
        if name == "mha":
            return layer(a, a, a, need_weights=False)[0]
        return layer(a)

    def fwd():
        layer.eval()
        with torch.no_grad():
            call(xt)

    def fwd_bwd():
        layer.train()
        layer.zero_grad(set_to_none=True)
        xt.grad = None
        call(xt).backward(dyt)
    return fwd, fwd_bwd


class AttentionLayers:
    params = (LAYERS, ["nbmodel", "torch"])
    param_names = ["layer", "framework"]
    timeout = 300

    def setup(self, layer, framework):
        import nbmodel as nb

        nb.set_num_threads(1)
        if framework == "torch":
            try:
                import torch
            except ImportError:
                raise NotImplementedError("torch is not installed")  # asv skips the benchmark
            torch.set_num_threads(1)
        self.fwd, self.fwd_bwd = make_pair(layer, framework)
        for _ in range(3):
            self.fwd()
            self.fwd_bwd()

    def time_forward(self, layer, framework):
        self.fwd()

    def time_forward_backward(self, layer, framework):
        self.fwd_bwd()


def main(argv=None):
    parser = argparse.ArgumentParser(description="attention layers: nbmodel vs PyTorch in one run")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=50)
    args = parser.parse_args(argv)
    import torch

    import nbmodel as nb
    from nbmodel.bench import interleaved_medians

    nb.set_num_threads(args.threads)
    torch.set_num_threads(args.threads)
    print(f"threads={args.threads}  shapes x ({B}, {T}, {D}), {H} heads x {KD}, ff {FF}; median ms, "
          "ratio = torch / nbmodel (> 1: nbmodel faster)")
    print(f"{'layer':<12}{'pass':<18}{'nbmodel':>10}{'torch':>10}{'ratio':>8}")
    for name in LAYERS:
        nf, nfb = make_pair(name, "nbmodel")
        tf, tfb = make_pair(name, "torch")
        for label, a, b in (("forward", nf, tf), ("forward+backward", nfb, tfb)):
            t = interleaved_medians({"nb": a, "torch": b}, warmup=5, repeat=args.repeat)
            print(f"{name:<12}{label:<18}{t['nb'] * 1e3:>10.3f}{t['torch'] * 1e3:>10.3f}"
                  f"{t['torch'] / t['nb']:>8.2f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
