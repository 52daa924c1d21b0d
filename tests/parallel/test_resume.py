"""Kill -9 mid-epoch, restart, and end bit-identical to an uninterrupted run: one
process and fit(workers=2), with Dropout, BatchNormalization, ReduceLROnPlateau
and EarlyStopping under BackupAndRestore (resume_script.py; the MPI case is in
test_mpi.py)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
from _models import assert_same_final

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))


def _run(out, mode, kill=False):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([HERE, REPO, os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, os.path.join(HERE, "resume_script.py"), str(out), mode] + (["--kill"] if kill else [])
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("mode", ["one", "workers"])
def test_killed_run_resumes_bit_identically(tmp_path, mode):
    done, resumed = tmp_path / "done", tmp_path / "resumed"
    r = _run(done, mode)
    assert r.returncode == 0, r.stderr
    r = _run(resumed, mode, kill=True)
    assert r.returncode == -signal.SIGKILL, r.stderr
    assert os.path.exists(resumed / "backup" / "latest.nbm") and not os.path.exists(resumed / "final.npz")
    r = _run(resumed, mode)
    assert r.returncode == 0, r.stderr
    assert_same_final(done, resumed)
    assert not os.path.exists(resumed / "backup" / "latest.nbm")  # deleted after a normal end
