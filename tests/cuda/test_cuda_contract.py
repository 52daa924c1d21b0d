"""The cuda device's kernel package against the kernel contract: a missing
twin fails by name. The families of CUDA part 2 (convolution, pooling,
recurrent, attention) are expected to be missing until they land (strict
xfail: a twin that appears must be taken off this list)."""
import inspect

import pytest

from nbmodel.kernels.contract import CONTRACT, parameters

PART_2 = {"conv", "pooling", "recurrent", "attention"}
ENTRIES = [(family, fn) for family in sorted(CONTRACT) for fn in CONTRACT[family]]


@pytest.mark.parametrize("family, function", [
    pytest.param(f, g, marks=pytest.mark.xfail(f in PART_2, raises=NotImplementedError, strict=True,
                                               reason="CUDA part 2")) for f, g in ENTRIES],
    ids=[f"{f}.{g}" for f, g in ENTRIES])
def test_cuda_implements_the_contract(cuda_device, family, function):
    module = cuda_device.kernels(family)
    assert hasattr(module, function), f"cuda: kernels/{family} has no {function} (missing twin)"
    assert list(inspect.signature(getattr(module, function)).parameters) == parameters(family, function)
