"""The ``nbmodel`` command: train from a TOML config, info, and config errors."""
import csv
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import nbmodel as nb
from nbmodel.cli import main, write_history

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "examples", "digits_mlp.toml")


def _has_matplotlib():
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def check_outputs(out_dir, epochs):
    model = nb.load_model(os.path.join(out_dir, "model.nbm"))
    assert [w.shape for w in model.get_weights()][:2] == [(64, 256), (256,)]
    with open(os.path.join(out_dir, "history.csv"), newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0][:3] == ["epoch", "loss", "accuracy"] and "val_loss" in rows[0]
    assert [r[0] for r in rows[1:]] == [str(e + 1) for e in range(epochs)]
    if _has_matplotlib():
        with open(os.path.join(out_dir, "history.png"), "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    return model


def test_train_in_process(tmp_path, capsys, one_thread):
    out = tmp_path / "run"
    assert main(["train", CONFIG, "--epochs", "2", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "Epoch 1/2" in text and "Epoch 2/2" in text  # [fit] verbose defaults to one line per epoch
    line = next(line for line in text.splitlines() if line.startswith("test accuracy:"))
    acc = float(line.split(":")[1])
    assert acc > 0.8
    model = check_outputs(out, epochs=2)
    (_, _), (x_test, y_test) = nb.datasets.load_digits()
    assert np.mean(model.predict(x_test).argmax(1) == y_test) == pytest.approx(acc, abs=1e-4)


def test_train_as_a_module_in_a_subprocess(tmp_path):
    out = tmp_path / "run"
    env = dict(os.environ, NBMODEL_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "nbmodel", "train", CONFIG, "--epochs", "1", "--verbose", "0",
                           "--out", str(out)], capture_output=True, text=True, cwd=REPO, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "test accuracy:" in proc.stdout
    check_outputs(out, epochs=1)


def test_info(capsys):
    assert main(["info"]) == 0
    text = capsys.readouterr().out
    assert text.startswith(f"nbmodel {nb.__version__}")
    for word in ("python", "numpy", "numba", "nbmodel threads", "threading layer", "blas", "cuda available"):
        assert word in text


def write(tmp_path, text, name="bad.toml"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


GOOD_MODEL = """
[model]
seed = 0
[[model.layers]]
class = "Flatten"
[[model.layers]]
class = "Dense"
units = 10
activation = "softmax"
"""


@pytest.mark.parametrize("text, message", [
    ("[model]\n[[model.layers]]\nclass = 'Densse'\nunits = 3\n[compile]\nloss = 'mse'\n",
     "unknown layer class 'Densse'"),
    ("[model]\n[[model.layers]]\nclass = 'Dense'\nunitz = 3\n[compile]\nloss = 'mse'\n",
     r"entry 1 \(Dense\).*'units'"),
    ("[model]\n[[model.layers]]\nclass = 'Dense'\nunits = 3\nunitz = 3\n[compile]\nloss = 'mse'\n",
     r"entry 1 \(Dense\).*unexpected keyword arguments \['unitz'\]"),
    ("[model]\n[[model.layers]]\nclass = 'Dense'\nunits = 3\nactivation = 'relux'\n[compile]\nloss = 'mse'\n",
     "unknown activation 'relux'"),
    (GOOD_MODEL + "[compile]\nloss = 'sparse_crossentropy'\n", "Unknown loss 'sparse_crossentropy'"),
    (GOOD_MODEL + "[compile]\nloss = 'mse'\noptimizer = 'adamm'\n", "Unknown optimizer 'adamm'"),
    (GOOD_MODEL + "[compile]\nloss = 'mse'\noptimizer = { class = 'Adamm' }\n", "unknown optimizer class 'Adamm'"),
    (GOOD_MODEL + "[compile]\nloss = 'mse'\nmetricz = ['accuracy']\n", r"\[compile\] unknown keys \['metricz'\]"),
    (GOOD_MODEL + "[compile]\nloss = 'mse'\n[fit]\nepoch = 3\n", r"\[fit\] unknown keys \['epoch'\]"),
    (GOOD_MODEL, r"missing \[compile\] table"),
    (GOOD_MODEL + "[compile]\nloss = 'mse'\n[data]\ndataset = 'mnist'\n", "unknown dataset 'mnist'"),
    (GOOD_MODEL + "[compile]\nloss = 'mse'\n[trainer]\n", r"unknown tables \['trainer'\]"),
    ("[model\n", "invalid TOML"),
    # the whole config is checked before anything trains: keys and value types
    (GOOD_MODEL.replace("seed = 0", "sede = 5") + "[compile]\nloss = 'mse'\n",
     r"\[model\] unknown keys \['sede'\]"),
    (GOOD_MODEL + "[compile]\nloss = 'mse'\n[output]\ndir = 'x'\n", r"unknown tables \['output'\]"),
    (GOOD_MODEL + "[compile]\nloss = 'mse'\n[fit]\nshuffle = 'no'\n", r"\[fit\] shuffle must be bool, got 'no'"),
    (GOOD_MODEL + "[compile]\nloss = 'mse'\n[fit]\nepochs = 'ten'\n", r"\[fit\] epochs must be int, got 'ten'"),
    (GOOD_MODEL + "[compile]\nloss = 'mse'\n[fit]\nbatch_size = 2.5\n", r"\[fit\] batch_size must be int"),
    (GOOD_MODEL + "[compile]\nloss = 'mse'\n[fit]\nepochs = true\n", r"\[fit\] epochs must be int, got True"),
    (GOOD_MODEL + "[compile]\nloss = 'mse'\n[fit]\nvalidation_split = 1.5\n",
     r"\[fit\] validation_split must be in \[0, 1\)"),
    (GOOD_MODEL + "[compile]\nloss = 'mse'\n[fit]\nverbose = 5\n", r"\[fit\] verbose must be 0, 1 or 2"),
    (GOOD_MODEL + "[compile]\nloss = 'mse'\n[data]\ndataset = 3\n", r"\[data\] dataset must be str"),
    (GOOD_MODEL + "[compile]\nloss = 'mse'\n[data]\npaht = 'a.npz'\n", r"\[data\] unknown keys \['paht'\]"),
    (GOOD_MODEL + "[compile]\nloss = 'mse'\noptimizer = { class = 'get' }\n", "unknown optimizer class 'get'"),
    (GOOD_MODEL + "[compile]\nloss = 'mse'\noptimizer = { class = 'Optimizer' }\n",
     "unknown optimizer class 'Optimizer'"),
])
def test_bad_config_exit_code_2_and_message(tmp_path, capsys, text, message):
    import re

    code = main(["train", write(tmp_path, text), "--epochs", "1", "--verbose", "0"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("nbmodel train: error:")
    assert re.search(message, err), err


def test_unwritable_out_is_refused_before_training(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("a file where --out wants a directory")
    cfg = write(tmp_path, GOOD_MODEL + "[compile]\nloss = 'sparse_categorical_crossentropy'\n")
    assert main(["train", cfg, "--epochs", "1", "--verbose", "0", "--out", str(blocker / "run")]) == 2
    err = capsys.readouterr()
    assert "is not a writable directory" in err.err and "nothing was trained" in err.err
    assert "trained" not in err.out  # refused before fit


def test_test_data_that_does_not_fit_is_refused_before_training(tmp_path, capsys):
    (xtr, ytr), (xte, yte) = nb.datasets.load_digits()
    npz = tmp_path / "d.npz"
    np.savez(npz, x_train=xtr[:20], y_train=ytr[:20], x_test=xte[:5, :, :4], y_test=yte[:5])
    cfg = write(tmp_path, GOOD_MODEL + f"[compile]\nloss = 'sparse_categorical_crossentropy'\n"
                                       f"[data]\ndataset = 'npz'\npath = '{npz}'\n")
    assert main(["train", cfg, "--epochs", "1", "--verbose", "0"]) == 2
    out = capsys.readouterr()
    assert "[data] the test data does not fit the model" in out.err and "trained" not in out.out


def test_missing_config_file(tmp_path, capsys):
    assert main(["train", str(tmp_path / "nope.toml")]) == 2
    assert "config file not found" in capsys.readouterr().err


def test_bad_command_line(capsys):
    with pytest.raises(SystemExit) as e:
        main(["train"])
    assert e.value.code == 2
    with pytest.raises(SystemExit) as e:
        main(["fly"])
    assert e.value.code == 2


def test_npz_dataset(tmp_path, capsys):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((40, 3)).astype("float32")
    y = (x[:, 0] > 0).astype(np.int64)
    np.savez(tmp_path / "d.npz", x_train=x[:30], y_train=y[:30], x_test=x[30:], y_test=y[30:])
    cfg = f"""
[data]
dataset = "npz"
path = "{(tmp_path / 'd.npz').as_posix()}"
[model]
[[model.layers]]
class = "Dense"
units = 2
activation = "softmax"
[compile]
loss = "sparse_categorical_crossentropy"
metrics = ["accuracy"]
[fit]
epochs = 2
batch_size = 8
"""
    assert main(["train", write(tmp_path, cfg, "npz.toml"), "--verbose", "0", "--out", str(tmp_path / "o")]) == 0
    assert "test accuracy:" in capsys.readouterr().out
    assert nb.load_model(tmp_path / "o" / "model.nbm").get_weights()[0].shape == (3, 2)


def test_bench_one_thread_in_process(capsys):
    assert main(["bench", "--models", "mlp", "--repeat", "2"]) == 0
    out = capsys.readouterr().out
    assert "BLAS float32 ceiling" in out
    row = next(line for line in out.splitlines() if line.startswith("mlp"))
    ms, gflops, share = row.split()[1:4]
    assert float(ms) > 0 and float(gflops) > 0 and share.endswith("%")


def test_bench_threads_run_each_framework_in_its_own_processes(capsys):
    pytest.importorskip("torch")
    assert main(["bench", "--models", "mlp", "--threads", "2", "--rounds", "2", "--repeat", "2", "--vs", "torch",
                 "--json"]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    (row,) = res["rows"]
    assert res["threads"] == 2 and res["ceiling_gflops"] > 0
    assert row["model"] == "mlp" and row["nb_ms"] > 0 and row["torch_ms"] > 0
    assert row["nb_over_torch"] == pytest.approx(row["nb_ms"] / row["torch_ms"])


def test_bench_runs_pytorch_without_nbmodels_thread_settings(monkeypatch):
    """PyTorch's processes start without the OMP_WAIT_POLICY / OPENBLAS_THREAD_TIMEOUT that
    importing nbmodel sets (passive OpenMP waiting slows PyTorch's small parallel regions),
    and load torch before nbmodel, so that its OpenMP runtime reads a clean environment."""
    from nbmodel.bench import runner

    monkeypatch.setattr(runner.config, "ENV_SET_HERE", ("OMP_WAIT_POLICY",))
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")
    monkeypatch.setenv("OPENBLAS_THREAD_TIMEOUT", "4")  # (the user's own, here: kept)
    seen = {}

    def fake_run(cmd, capture_output, text, env=None):
        seen[cmd[cmd.index("--child") + 1]] = (cmd, env)
        return subprocess.CompletedProcess(cmd, 0, stdout='{"steps": {"mlp": 0.001}}\n', stderr="")

    monkeypatch.setattr(runner.subprocess, "run", fake_run)
    for fw in ("nbmodel", "torch"):
        runner._run_child(fw, ["mlp"], 2, 1)
    cmd, env = seen["torch"]
    assert "OMP_WAIT_POLICY" not in env and env["OPENBLAS_THREAD_TIMEOUT"] == "4"
    assert cmd[1] == "-c" and cmd[2].startswith("import torch")
    assert seen["nbmodel"][1] is None  # nbmodel's own processes keep its settings


@pytest.mark.parametrize("argv, match", [
    (["--models", "resnet"], "unknown reference models"),
    (["--threads", "0"], "must be >= 1"),
])
def test_bench_bad_arguments(argv, match, capsys):
    assert main(["bench"] + argv) == 2
    assert match in capsys.readouterr().err


def test_train_with_a_backup_resumes_after_sigterm(tmp_path):
    # [fit] backup_dir / backup_freq: SIGTERM mid-run ends with exit code 75 after the backup;
    # the same command again finishes training and removes the backup
    cfg = write(tmp_path, GOOD_MODEL + f"""[compile]
loss = 'sparse_categorical_crossentropy'
[fit]
epochs = 200
batch_size = 16
backup_dir = '{tmp_path / "bk"}'
backup_freq = 5
""")
    env = dict(os.environ, PYTHONPATH=REPO)
    cmd = [sys.executable, "-m", "nbmodel", "train", cfg, "--verbose", "0", "--out", str(tmp_path / "out")]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not os.path.exists(tmp_path / "bk" / "latest.nbm") and time.time() < deadline:
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 75, err
    assert "stopped by SIGTERM" in err and os.path.exists(tmp_path / "bk" / "latest.nbm")
    r = subprocess.run(cmd[:-2] + ["--epochs", "3", "--out", str(tmp_path / "out")], env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert not os.path.exists(tmp_path / "bk" / "latest.nbm")


def test_backup_freq_needs_backup_dir(tmp_path, capsys):
    cfg = write(tmp_path, GOOD_MODEL + "[compile]\nloss = 'mse'\n[fit]\nbackup_freq = 3\n")
    assert main(["train", cfg, "--epochs", "1", "--verbose", "0"]) == 2
    assert "backup_freq needs backup_dir" in capsys.readouterr().err


def test_write_history_with_no_epochs_writes_a_header_only(tmp_path):
    # a run resumed from a backup already past --epochs trains nothing; its history is empty
    class Empty:
        history: dict = {}
        epoch: list = []

    assert write_history(Empty(), str(tmp_path)) is None
    assert (tmp_path / "history.csv").read_text() == "epoch\n"
    assert not (tmp_path / "history.png").exists()
