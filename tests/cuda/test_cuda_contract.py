"""The cuda device's kernel package against the kernel contract: every
function of every family has a CUDA twin with the CPU's parameters (a missing
twin fails by name)."""
import inspect

import pytest

from nbmodel.kernels.contract import CONTRACT, parameters

ENTRIES = [(family, fn) for family in sorted(CONTRACT) for fn in CONTRACT[family]]


@pytest.mark.parametrize("family, function", ENTRIES, ids=[f"{f}.{g}" for f, g in ENTRIES])
def test_cuda_implements_the_contract(cuda_device, family, function):
    module = cuda_device.kernels(family)
    assert hasattr(module, function), f"cuda: kernels/{family} has no {function} (missing twin)"
    assert list(inspect.signature(getattr(module, function)).parameters) == parameters(family, function)
