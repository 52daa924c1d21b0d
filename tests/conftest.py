"""Shared fixtures: a float64 switch that always switches back, and the digits data."""
import os
import sys

import pytest

import nbmodel as nb

if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
    # The CUDA simulator runs each thread of a block as a Python thread and polls them
    # from the launching one; at the default 5 ms switch interval most of its time is
    # spent waiting for the interpreter lock (a tenth of it at 0.1 ms).
    sys.setswitchinterval(1e-4)


@pytest.fixture
def float64():
    """Build layers in float64 for this test (for finite differences); restores floatx afterwards."""
    previous = nb.config.floatx()
    nb.config.set_floatx("float64")
    try:
        yield
    finally:
        nb.config.set_floatx(previous)


@pytest.fixture(autouse=True)
def _floatx_unchanged():
    """A test that changes floatx without restoring it would silently change every later test."""
    previous = nb.config.floatx()
    yield
    leaked = nb.config.floatx()
    if leaked != previous:
        nb.config.set_floatx(previous)
        pytest.fail(f"the test left floatx set to {leaked!r}; use the `float64` fixture")


@pytest.fixture
def one_thread():
    """Run a heavier test on one thread: on shared, busy cores a thread pool that
    waits for a descheduled peer is many times slower. Restores the count after."""
    previous = nb.get_num_threads()
    nb.set_num_threads(1)
    yield
    nb.set_num_threads(previous)


@pytest.fixture(scope="session")
def digits():
    """``(x_train, y_train), (x_test, y_test)`` of the bundled digits (read once)."""
    return nb.datasets.load_digits()


def _devices_under_test():
    """cpu, and every other registered device that can run here (cuda under the
    simulator or on a GPU, once its package registers it)."""
    from nbmodel.backend import available_devices

    return [name for name in available_devices() if not name.startswith("test-")]


@pytest.fixture(params=_devices_under_test())
def device(request):
    """The name of a device to run a layer case on (see nbmodel.testing.LayerCase)."""
    return request.param
