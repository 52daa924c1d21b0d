"""CUDA tests. The simulator tests need a GPU or ``NUMBA_ENABLE_CUDASIM=1`` set
before numba is imported, so CI runs them in their own pytest process:

    NUMBA_ENABLE_CUDASIM=1 python -m pytest -q -p no:cacheprovider tests/cuda

In the main test run (no GPU, no simulator) they skip; the PTX + nvJitLink
check (test_ptx.py) needs neither and runs wherever numba-cuda is installed.
"""
import pytest


@pytest.fixture(scope="session")
def cuda_device():
    from nbmodel.backend import available_devices, get_device

    if "cuda" not in available_devices():
        pytest.skip("no GPU and the CUDA simulator is off (NUMBA_ENABLE_CUDASIM=1)")
    return get_device("cuda")
