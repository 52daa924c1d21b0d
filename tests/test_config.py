"""Thread policy, float type, import cost."""
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
