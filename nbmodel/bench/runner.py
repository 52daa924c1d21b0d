"""``nbmodel bench``: the reference models' train step, nbmodel against PyTorch.

At one thread both frameworks run in this process, their steps interleaved so
that machine noise hits both alike. At more than one thread two frameworks'
thread pools in one process disturb each other, so each framework runs in
processes of its own (``python -m nbmodel.bench.runner --child ...``),
alternating A B B A ... over several rounds; the table gives medians over the
rounds. The BLAS ceiling (a large float32 matrix product through NumPy's BLAS at
the same thread count) is measured in the same run, in nbmodel's process.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

from .. import config
from .models import REFERENCE_MODELS
from .timing import blas_ceiling_gflops, interleaved_medians, torch_train_step

FRAMEWORKS = ("nbmodel", "torch")


def _step_fns(framework: str, names: list[str], device: str = "cpu") -> dict[str, object]:
    """A closure per model that runs one train step of ``framework``."""
    fns = {}
    for name in names:
        ref = REFERENCE_MODELS[name]
        x, y = ref.data()
        if framework == "nbmodel":
            model = ref.build_nb()
            fns[name] = (lambda m, a, b: lambda: m.train_on_batch(a, b))(model, x, y)
            continue
        import torch

        module, loss_fn = ref.build_torch()
        xt, yt = ref.torch_batch(x, y)
        sync = None
        if device != "cpu":  # nbmodel's step returns its loss to the host, which waits for the GPU too
            module, xt, yt, sync = module.cuda(), xt.cuda(), yt.cuda(), torch.cuda.synchronize
        step = torch_train_step(module, loss_fn, xt, yt, torch.optim.Adam(module.parameters(), lr=1e-3))
        fns[name] = step if sync is None else (lambda s: lambda: (s(), sync()))(step)
    return fns


def _set_threads(framework: str, threads: int) -> None:
    if framework == "nbmodel":
        import nbmodel as nb

        nb.set_num_threads(threads)
    else:
        import torch

        torch.set_num_threads(threads)


def time_in_process(names: list[str], threads: int, frameworks: tuple[str, ...], repeat: int,
                    device: str = "cpu") -> dict[str, dict[str, float]]:
    """Median step seconds per framework and model, all frameworks in this process, interleaved."""
    for fw in frameworks:
        _set_threads(fw, threads)
    if device != "cpu":
        import nbmodel as nb

        nb.config.set_default_device(device)
    out: dict[str, dict[str, float]] = {fw: {} for fw in frameworks}
    for name in names:
        fns = {fw: _step_fns(fw, [name], device)[name] for fw in frameworks}
        for fw, t in interleaved_medians(fns, warmup=5, repeat=repeat).items():
            out[fw][name] = t
    return out


def _child(framework: str, names: list[str], threads: int, repeat: int) -> dict:
    """What one child process measures: its framework's steps (and nbmodel's the ceiling)."""
    _set_threads(framework, threads)
    result = {"steps": time_in_process(names, threads, (framework,), repeat)[framework]}
    if framework == "nbmodel":  # nb.set_num_threads also set NumPy's BLAS pool to `threads`
        result["ceiling"] = blas_ceiling_gflops()
    return result


def _run_child(framework: str, names: list[str], threads: int, repeat: int) -> dict:
    args = ["--child", framework, "--threads", str(threads), "--models", ",".join(names), "--repeat", str(repeat)]
    env = None
    if framework == "torch":
        # PyTorch as its users run it: without the OpenMP / OpenBLAS settings that importing
        # nbmodel makes (passive OpenMP waiting costs PyTorch's many small parallel regions a
        # wake-up each), loaded before nbmodel so that its OpenMP runtime reads a clean environment
        env = {k: v for k, v in os.environ.items() if k not in config.ENV_SET_HERE}
        cmd = [sys.executable, "-c", "import torch, runpy; runpy.run_module('nbmodel.bench.runner', "
               "run_name='__main__', alter_sys=True)", *args]
    else:
        cmd = [sys.executable, "-m", "nbmodel.bench.runner", *args]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode:
        raise RuntimeError(f"nbmodel bench: the {framework} process failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def time_in_processes(names: list[str], threads: int, frameworks: tuple[str, ...], repeat: int,
                      rounds: int) -> tuple[dict[str, dict[str, float]], float]:
    """Median step seconds per framework and model, each framework in processes of its own,
    alternating over ``rounds``; and the median BLAS ceiling of nbmodel's processes."""
    steps: dict[str, dict[str, list[float]]] = {fw: {n: [] for n in names} for fw in frameworks}
    ceilings = []
    for r in range(rounds):
        order = frameworks if r % 2 == 0 else frameworks[::-1]  # A B, B A: neither always goes first
        for fw in order:
            res = _run_child(fw, names, threads, repeat)
            for n, t in res["steps"].items():
                steps[fw][n].append(t)
            if "ceiling" in res:
                ceilings.append(res["ceiling"])
        print(f"round {r + 1}/{rounds} done", file=sys.stderr, flush=True)
    medians = {fw: {n: statistics.median(v) for n, v in per.items()} for fw, per in steps.items()}
    return medians, statistics.median(ceilings)


def run(models: list[str] | None = None, threads: int = 1, vs_torch: bool = False, repeat: int = 30,
        rounds: int = 3, device: str = "cpu") -> tuple[list[dict], float | None]:
    """Time the reference models: one row per model (ms per step, GFLOP/s, share of the
    ceiling, and with ``vs_torch`` PyTorch's ms and nbmodel / PyTorch), and the BLAS
    ceiling in GFLOP/s measured in the same run (None on a GPU)."""
    names = list(REFERENCE_MODELS) if not models else list(models)
    unknown = [m for m in names if m not in REFERENCE_MODELS]
    if unknown:
        raise ValueError(f"unknown reference models {unknown}; available: {sorted(REFERENCE_MODELS)}")
    if threads < 1 or repeat < 1 or rounds < 1:
        raise ValueError(f"threads, repeat and rounds must be >= 1, got {threads}, {repeat}, {rounds}")
    frameworks = FRAMEWORKS if vs_torch else FRAMEWORKS[:1]
    ceiling = None
    if device != "cpu" or threads == 1:
        times = time_in_process(names, threads, frameworks, repeat, device)
        if device == "cpu":
            ceiling = blas_ceiling_gflops()
    else:
        times, ceiling = time_in_processes(names, threads, frameworks, repeat, rounds)
    rows = []
    for n in names:
        t = times["nbmodel"][n]
        gflops = REFERENCE_MODELS[n].flops_per_step() / t / 1e9
        row = {"model": n, "nb_ms": t * 1e3, "gflops": gflops,
               "ceiling_share": gflops / ceiling if ceiling else None}
        if vs_torch:
            row["torch_ms"] = times["torch"][n] * 1e3
            row["nb_over_torch"] = t / times["torch"][n]
        rows.append(row)
    return rows, ceiling


def format_table(rows: list[dict], threads: int, ceiling: float | None, how: str) -> str:
    """The bench table as text: one line per model."""
    lines = [f"threads={threads}  {how}"]
    if ceiling:
        lines.append(f"BLAS float32 ceiling (same run): {ceiling:.1f} GFLOP/s")
    torch_cols = "torch_ms" in rows[0]
    head = f"{'model':<12}{'nb ms':>10}{'GFLOP/s':>9}{'ceiling':>9}"
    if torch_cols:
        head += f"{'torch ms':>10}{'nb/torch':>10}"
    lines.append(head)
    for r in rows:
        share = f"{r['ceiling_share']:.0%}" if r["ceiling_share"] is not None else "-"
        line = f"{r['model']:<12}{r['nb_ms']:>10.3f}{r['gflops']:>9.1f}{share:>9}"
        if torch_cols:
            line += f"{r['torch_ms']:>10.3f}{r['nb_over_torch']:>10.2f}"
        lines.append(line)
    if torch_cols:
        lines.append("nb/torch: nbmodel's step time over PyTorch's (below 1: nbmodel is faster)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="nbmodel bench", description=__doc__.splitlines()[0])
    p.add_argument("--vs", choices=["torch"], default=None, help="time PyTorch's same models in the same run")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--models", default=None, help=f"comma-separated, from {','.join(REFERENCE_MODELS)}")
    p.add_argument("--repeat", type=int, default=30, help="timed steps per model and process")
    p.add_argument("--rounds", type=int, default=3, help="alternating process rounds when threads > 1")
    p.add_argument("--device", default="cpu", help="nbmodel device; PyTorch runs on the GPU when not cpu")
    p.add_argument("--json", action="store_true", help="print the rows as JSON instead of the table")
    p.add_argument("--child", choices=FRAMEWORKS, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    names = [m for m in (args.models or "").split(",") if m]
    if args.child:
        print(json.dumps(_child(args.child, names, args.threads, args.repeat)))
        return 0
    try:
        rows, ceiling = run(names, args.threads, args.vs == "torch", args.repeat, args.rounds, args.device)
    except (ValueError, RuntimeError) as e:
        print(f"nbmodel bench: error: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({"threads": args.threads, "ceiling_gflops": ceiling, "rows": rows}))
        return 0
    if args.device != "cpu" or args.threads == 1:
        how = f"device={args.device}; medians of {args.repeat} steps, frameworks interleaved in one process"
    else:
        how = (f"medians of {args.rounds} rounds x {args.repeat} steps, each framework in its own processes, "
               "alternating")
    print(format_table(rows, args.threads, ceiling, how))
    print(f"load average after the run: {os.getloadavg()[0]:.2f} (on {os.cpu_count()} cores)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
