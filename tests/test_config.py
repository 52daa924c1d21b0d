"""Thread policy, float type, import cost."""
import os
import subprocess
import sys

import numpy as np
import pytest

import nbmodel as nb


def test_set_num_threads_sets_numba_and_every_blas_pool():
    import numba
    from threadpoolctl import threadpool_info

    before = nb.get_num_threads()
    try:
        nb.set_num_threads(1)
        assert nb.get_num_threads() == 1
        assert numba.get_num_threads() == 1
        blas = [p for p in threadpool_info() if p["user_api"] == "blas"]
        assert blas and all(p["num_threads"] == 1 for p in blas)
    finally:
        nb.set_num_threads(before)



def test_kernel_blas_serial_puts_every_blas_pool_on_one_thread_and_back():
    """Both BLAS libraries the kernels call (SciPy's through np.dot, NumPy's through
    kernels.cpu._blas.gemm) run on one thread inside, the policy's count after."""
    from threadpoolctl import threadpool_info

    from nbmodel.config import kernel_blas_serial

    def counts():
        return [p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"]

    before = nb.get_num_threads()
    try:
        nb.set_num_threads(2)
        with kernel_blas_serial():
            inside = counts()
        assert inside and all(c == 1 for c in inside)
        assert all(c == 2 for c in counts())
    finally:
        nb.set_num_threads(before)

def test_set_num_threads_rejects_zero():
    with pytest.raises(ValueError, match="set_num_threads"):
        nb.set_num_threads(0)


def test_floatx_controls_new_layers():
    try:
        nb.config.set_floatx("float64")
        layer = nb.layers.Dense(2)
        layer.build((None, 3))
        assert layer.params["kernel"].dtype == np.float64
    finally:
        nb.config.set_floatx("float32")
    with pytest.raises(ValueError, match="float32"):
        nb.config.set_floatx("float16")


def test_import_compiles_nothing_and_skips_numba():
    code = "import sys, nbmodel; assert 'numba' not in sys.modules, 'numba imported'; print('ok')"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr


_SPIN_AFTER_PRODUCT = """
import sys, time
import numpy as np
import scipy.linalg.blas
from threadpoolctl import threadpool_limits
threadpool_limits(2, user_api="blas")
a = np.random.default_rng(0).random((1024, 1024), dtype=np.float32)
product = {"numpy": lambda: a @ a, "scipy": lambda: scipy.linalg.blas.sgemm(1.0, a, a)}[sys.argv[1]]

def cpu_ms_while_asleep():
    product()  # a threaded product of that library's OpenBLAS, then its workers are idle
    c0 = time.process_time()
    time.sleep(0.3)
    return (time.process_time() - c0) * 1e3

before = cpu_ms_while_asleep()
import nbmodel
print(before, cpu_ms_while_asleep(), nbmodel.config.NUMPY_BLAS_SPINS)
"""


@pytest.mark.skipif(nb.config.available_cores() < 2, reason="needs two cores for a threaded product")
@pytest.mark.skipif(nb.config.numpy_blas_library() is None, reason="NumPy has no bundled OpenBLAS here")
@pytest.mark.parametrize("library", ["numpy", "scipy"])
def test_openblas_loaded_before_nbmodel_gets_its_pool_quieted(library):
    """NumPy and SciPy loaded their OpenBLAS before nbmodel set the short idle spin
    (SciPy's is the one the kernels' threaded products use): importing nbmodel
    restarts those pools, so their idle workers stop burning a core (about 100 ms of
    CPU after every threaded product with OpenBLAS's default spin)."""
    env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_THREAD_TIMEOUT", "OMP_WAIT_POLICY")}
    out = subprocess.run([sys.executable, "-c", _SPIN_AFTER_PRODUCT, library], capture_output=True, text=True,
                         timeout=120, env=env)
    assert out.returncode == 0, out.stderr
    before, after, spins = out.stdout.split()
    assert spins == "False"
    assert float(after) < 20, f"{library}'s idle BLAS workers still spin: {after} ms of CPU during a 0.3 s sleep"
    assert float(before) > 2 * float(after)  # the test sees the spin it removes
