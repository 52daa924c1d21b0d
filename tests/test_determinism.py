"""The same seeded training gives the same bits whatever numba's kernel cache
holds: a process that compiles every kernel (cold cache) and one that loads
them (warm cache) end with identical weights. Each run is a fresh interpreter
with its own NUMBA_CACHE_DIR; the cold one compiles for about a minute."""
import os
import subprocess
import sys

import numpy as np

SCRIPT = """
import sys
import numpy as np
import nbmodel as nb
from nbmodel import layers as L
x = np.random.default_rng(0).standard_normal((128, 12)).astype(np.float32)
y = (x[:, 0] + x[:, 3] > 0).astype(np.int64)
m = nb.Sequential([L.Input((12,)), L.Dense(32, activation="relu"), L.BatchNormalization(), L.LayerNormalization(),
                   L.Dropout(0.2), L.Dense(32, activation="gelu"), L.BatchNormalization(), L.Dense(2)], seed=0)
m.compile(optimizer="adam", loss=nb.losses.SparseCategoricalCrossentropy(from_logits=True))
m.fit(x, y, batch_size=32, epochs=6, verbose=0)
np.savez(sys.argv[1], *m.get_weights())
"""


def test_cold_and_warm_kernel_cache_train_bit_identically(tmp_path):
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "cache"))
    runs = []
    for name in ("cold", "warm"):
        out = tmp_path / f"{name}.npz"
        r = subprocess.run([sys.executable, "-c", SCRIPT, str(out)], env=env, capture_output=True, text=True,
                           timeout=600)
        assert r.returncode == 0, r.stderr
        runs.append(np.load(out))
    cold, warm = runs
    assert cold.files == warm.files
    for k in cold.files:
        np.testing.assert_array_equal(warm[k], cold[k], err_msg=k)
