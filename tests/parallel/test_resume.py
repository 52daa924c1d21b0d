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


def _run(out, mode, *flags):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([HERE, REPO, os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, os.path.join(HERE, "resume_script.py"), str(out), mode, *flags]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("mode", ["one", "workers"])
def test_killed_run_resumes_bit_identically(tmp_path, mode):
    done, resumed = tmp_path / "done", tmp_path / "resumed"
    r = _run(done, mode)
    assert r.returncode == 0, r.stderr
    r = _run(resumed, mode, "--kill")
    assert r.returncode == -signal.SIGKILL, r.stderr
    assert os.path.exists(resumed / "backup" / "latest.nbm") and not os.path.exists(resumed / "final.npz")
    r = _run(resumed, mode)
    assert r.returncode == 0, r.stderr
    assert_same_final(done, resumed)
    assert not os.path.exists(resumed / "backup" / "latest.nbm")  # deleted after a normal end


@pytest.mark.parametrize("mode", ["one", "workers"])
def test_killed_mid_epoch_with_step_backups_resumes_bit_identically(tmp_path, mode):
    # BackupAndRestore(save_freq=2): the kill lands in epoch 4 one step after a step
    # backup; the rerun resumes inside that epoch (same shuffled order, running loss and
    # metrics, dropout generators) and ends with the uninterrupted run's weights
    done, resumed = tmp_path / "done", tmp_path / "resumed"
    assert _run(done, mode, "--save-freq", "2").returncode == 0
    r = _run(resumed, mode, "--kill", "--save-freq", "2")
    assert r.returncode == -signal.SIGKILL, r.stderr
    r = _run(resumed, mode, "--save-freq", "2")
    assert r.returncode == 0, r.stderr
    assert_same_final(done, resumed)


@pytest.mark.parametrize("mode", ["one", "workers"])
def test_sigterm_finishes_the_step_writes_the_backup_and_exits_75(tmp_path, mode):
    # what a scheduler's time limit does; the rerun of the same command resumes at the next step
    done, resumed = tmp_path / "done", tmp_path / "resumed"
    assert _run(done, mode).returncode == 0
    r = _run(resumed, mode, "--term")
    assert r.returncode == 75, r.stderr
    assert "stopped by SIGTERM after epoch 4, step 3" in r.stderr
    assert os.path.exists(resumed / "backup" / "latest.nbm") and not os.path.exists(resumed / "final.npz")
    r = _run(resumed, mode)
    assert r.returncode == 0, r.stderr
    assert_same_final(done, resumed)
