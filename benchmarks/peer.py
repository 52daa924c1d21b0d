"""Reference models, nbmodel against PyTorch in the same run.

    python -m benchmarks.peer --threads 1 --vs torch [--models mlp,cnn] [--device cuda]

For each reference model: median train step (forward + backward + Adam) and
predict, timed interleaved with PyTorch at the same thread count, the ratio
(torch time / nbmodel time: > 1 means nbmodel is faster), achieved GFLOP/s
and the machine's BLAS ceiling measured in the same run.
"""
from __future__ import annotations

import argparse
import sys
import time


def _set_threads(n, with_torch):
    import nbmodel as nb

    nb.set_num_threads(n)
    if with_torch:
        import torch

        torch.set_num_threads(n)


def run(models, threads, vs_torch, repeat, torch_only=False, device="cpu"):

    from .common import blas_ceiling_gflops, discover_models, interleaved_medians, torch_train_step

    if torch_only:
        import torch

        torch.set_num_threads(threads)
    else:
        _set_threads(threads, vs_torch)
    available = discover_models()
    names = list(available) if not models else models
    unknown = [m for m in names if m not in available]
    if unknown:
        raise SystemExit(f"unknown models {unknown}; available: {sorted(available)}")
    on_gpu = device != "cpu"
    if on_gpu:  # every model built below lives on the device; PyTorch runs on the same GPU
        import nbmodel as nb

        nb.config.set_default_device(device)
        print(f"device={nb.backend.get_device(device).describe()}")
    else:
        ceiling = blas_ceiling_gflops()
        print(f"threads={threads}  BLAS float32 ceiling: {ceiling:.1f} GFLOP/s")
    header = f"{'model':<12}{'nb step ms':>12}{'GFLOP/s':>9}"
    if vs_torch:
        header += f"{'torch ms':>10}{'ratio':>8}{'nb pred ms':>12}{'torch pred':>11}{'ratio':>8}"
    print(header)
    rows = []
    for name in names:
        ref = available[name]
        x, y = ref.data()
        fns, pred = {}, {}
        if not torch_only:
            model = ref.build_nb()
            fns["nb"] = lambda: model.train_on_batch(x, y)
            pred["nb"] = lambda: model.predict(x, batch_size=len(x))
        if vs_torch:
            import torch

            module, loss_fn = ref.build_torch()
            xt, yt = ref.torch_batch(x, y)
            sync = (lambda: None)
            if on_gpu:
                module, xt, yt, sync = module.cuda(), xt.cuda(), yt.cuda(), torch.cuda.synchronize
            opt = torch.optim.Adam(module.parameters(), lr=1e-3)
            step = torch_train_step(module, loss_fn, xt, yt, opt)

            def torch_step():
                step()
                sync()  # nbmodel's train_on_batch returns the loss to the host, which waits too

            def torch_pred():
                with torch.no_grad():
                    module(xt)
                sync()
            fns["torch"], pred["torch"] = torch_step, torch_pred
        t = interleaved_medians(fns, warmup=5, repeat=repeat)
        p = interleaved_medians(pred, warmup=3, repeat=repeat)
        if torch_only:
            print(f"{name:<12}{'':>12}{'':>9}{t['torch'] * 1e3:>10.3f}{'':>8}{'':>12}{p['torch'] * 1e3:>11.3f}",
                  flush=True)
            continue
        gflops = ref.flops_per_step() / t["nb"] / 1e9
        line = f"{name:<12}{t['nb'] * 1e3:>12.3f}{gflops:>9.1f}"
        row = {"model": name, "nb_ms": t["nb"] * 1e3, "gflops": gflops}
        if vs_torch:
            line += (f"{t['torch'] * 1e3:>10.3f}{t['torch'] / t['nb']:>8.2f}"
                     f"{p['nb'] * 1e3:>12.3f}{p['torch'] * 1e3:>11.3f}{p['torch'] / p['nb']:>8.2f}")
            row.update(torch_ms=t["torch"] * 1e3, ratio=t["torch"] / t["nb"])
        print(line, flush=True)
        rows.append(row)
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--vs", choices=["torch"], default=None)
    parser.add_argument("--models", default=None, help="comma-separated names (default: all)")
    parser.add_argument("--repeat", type=int, default=50)
    parser.add_argument("--device", default="cpu", help="nbmodel device; PyTorch runs on the GPU when not cpu")
    parser.add_argument("--torch-only", action="store_true",
                        help="time PyTorch alone: at several threads two frameworks' thread pools in one "
                             "process disturb each other, so compare two separate runs")
    args = parser.parse_args(argv)
    models = args.models.split(",") if args.models else None
    t0 = time.perf_counter()
    run(models, args.threads, args.vs == "torch" or args.torch_only, args.repeat, args.torch_only, args.device)
    print(f"({time.perf_counter() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
