"""Before/after in one run: the reference train steps of another revision and of
this checkout, timed in alternating processes (A B A B ...).

    python -m benchmarks.compare REV [--rounds 6] [--threads 1] [--models mlp,cnn]

REV is checked out into a temporary git worktree with its own numba cache
(the first round compiles it, so it is a warm-up and is left out of the
medians). Each round runs ``python -m benchmarks.peer`` once in each tree;
the table gives the median step time of each model over the remaining rounds
and the ratio after / before (below 1: this checkout is faster). Alternating
processes keep a busy spell of a shared machine from landing on one side only.
"""
from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile

_ROW = re.compile(r"^(\w+)\s+([\d.]+)")


def _steps(tree: str, env: dict, threads: int, models: str | None) -> dict[str, float]:
    cmd = [sys.executable, "-m", "benchmarks.peer", "--threads", str(threads)]
    if models:
        cmd += ["--models", models]
    out = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True, check=True).stdout
    rows = {}
    for line in out.splitlines():
        m = _ROW.match(line)
        if m and m.group(1) not in ("threads", "model"):
            rows[m.group(1)] = float(m.group(2))
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("rev", help="the revision to compare against (e.g. HEAD~3, a commit, a branch)")
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--models", default=None)
    args = p.parse_args(argv)
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with tempfile.TemporaryDirectory() as tmp:
        before = os.path.join(tmp, "tree")
        subprocess.run(["git", "-C", here, "worktree", "add", "--detach", before, args.rev], check=True,
                       capture_output=True)
        try:
            env_before = dict(os.environ, PYTHONPATH=before, NUMBA_CACHE_DIR=os.path.join(tmp, "cache"))
            env_after = dict(os.environ, PYTHONPATH=here)
            times: dict[tuple[str, str], list[float]] = {}
            for r in range(args.rounds + 1):
                for side, tree, env in (("before", before, env_before), ("after", here, env_after)):
                    for model, ms in _steps(tree, env, args.threads, args.models).items():
                        if r:  # round 0 compiles both trees: a warm-up
                            times.setdefault((side, model), []).append(ms)
                print(f"round {r} done", file=sys.stderr)
        finally:
            subprocess.run(["git", "-C", here, "worktree", "remove", "--force", before], capture_output=True)
    print(f"{args.rev} (before) against this checkout (after), {args.threads} thread(s), "
          f"medians of {args.rounds} alternating rounds")
    print(f"{'model':<12}{'before ms':>11}{'after ms':>10}{'after/before':>14}")
    for model in dict.fromkeys(m for _, m in times):
        b, a = statistics.median(times[("before", model)]), statistics.median(times[("after", model)])
        print(f"{model:<12}{b:>11.3f}{a:>10.3f}{a / b:>14.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
