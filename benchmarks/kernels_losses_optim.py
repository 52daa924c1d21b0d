"""Loss and optimizer kernels against PyTorch, same process, interleaved.

Run: python -m benchmarks.kernels_losses_optim [threads]   (default 1)
Prints nbmodel and PyTorch times (best of 5 interleaved medians) and torch/nbmodel.
Not an asv benchmark (no time_* names): it needs PyTorch.
"""
import sys
import time

import numpy as np


def main(threads=1):
    import torch
    import torch.nn.functional as F

    import nbmodel as nb
    from nbmodel import losses, optimizers

    nb.set_num_threads(threads)
    torch.set_num_threads(threads)
    r = np.random.default_rng(0)

    def bench(fn, reps):
        fn()
        ts = []
        for _ in range(reps):
            t = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t)
        return float(np.median(ts))

    def pair(name, f_nb, f_t, reps=50):
        a, b = [], []
        for _ in range(5):  # interleave
            a.append(bench(f_nb, reps))
            b.append(bench(f_t, reps))
        a, b = min(a), min(b)
        print(f"{name:45s} nbmodel {a*1e6:9.1f} us  torch {b*1e6:9.1f} us  torch/nb {b/a:5.2f}")

    for n, c in ((256, 10), (8192, 1000)):
        x = r.standard_normal((n, c)).astype(np.float32)
        y = r.integers(0, c, n)
        L = losses.SparseCategoricalCrossentropy(from_logits=True)
        xt = torch.tensor(x, requires_grad=True)
        yt = torch.tensor(y)
        def tf():
            loss = F.cross_entropy(xt, yt, reduction="sum")
            torch.autograd.grad(loss, xt)
        pair(f"sparse CE logits fwd+bwd ({n},{c})", lambda: L.forward_backward(y, x), tf, 20 if n > 1000 else 200)
        oh = np.eye(c, dtype=np.float32)[y]
        L2 = losses.CategoricalCrossentropy(from_logits=True)
        oht = torch.tensor(oh)
        def tf2():
            loss = F.cross_entropy(xt, oht, reduction="sum")
            torch.autograd.grad(loss, xt)
        pair(f"categorical CE logits fwd+bwd ({n},{c})", lambda: L2.forward_backward(oh, x), tf2,
             20 if n > 1000 else 200)
    x = r.standard_normal((256, 64)).astype(np.float32)
    y = r.standard_normal((256, 64)).astype(np.float32)
    xt = torch.tensor(x, requires_grad=True)
    ytt = torch.tensor(y)
    def tf3():
        loss = F.mse_loss(xt, ytt, reduction="sum")
        torch.autograd.grad(loss, xt)
    pair("mse fwd+bwd (256,64)", lambda: losses.MeanSquaredError().forward_backward(y, x), tf3, 200)

    for n in (100_000, 2_000_000):
        p = r.standard_normal(n).astype(np.float32)
        g = r.standard_normal(n).astype(np.float32)
        for name, ours, theirs in (
                ("Adam", optimizers.Adam(1e-3), lambda ps: torch.optim.Adam(ps, lr=1e-3, foreach=False)),
                ("Adam fused(torch)", optimizers.Adam(1e-3), lambda ps: torch.optim.Adam(ps, lr=1e-3, fused=True)),
                ("AdamW clipnorm", optimizers.AdamW(1e-3, clipnorm=1.0), None),
                ("SGD momentum", optimizers.SGD(0.01, momentum=0.9),
                 lambda ps: torch.optim.SGD(ps, lr=0.01, momentum=0.9))):
            ours.build(p, [(0, n // 2), (n // 2, n - n // 2)])
            tp = torch.nn.Parameter(torch.tensor(p))
            tp.grad = torch.tensor(g)
            if theirs is None:
                # torch: clip_grad_norm_ + AdamW step
                topt = torch.optim.AdamW([tp], lr=1e-3, foreach=False)
                def tstep():
                    torch.nn.utils.clip_grad_norm_([tp], 1.0)
                    topt.step()
            else:
                topt = theirs([tp])
                tstep = topt.step
            pair(f"{name} step, {n} float32 params", lambda: ours.apply(p, g, 1.0), tstep, 20)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 1)
