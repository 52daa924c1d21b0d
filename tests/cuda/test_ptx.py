"""Every CUDA kernel, in each signature it is launched with, compiled to PTX for
a real GPU (sm_90) and linked to machine code with nvJitLink: it compiles, a
float32 kernel has no float64 instruction, nothing spills, shared memory fits.
What the simulator cannot see; needs numba-cuda but no GPU."""
import importlib
import pkgutil
import re

import pytest

runtime = pytest.importorskip("nbmodel.kernels.cuda.runtime")
if runtime.simulator():
    pytest.skip("compile_ptx is not available under the simulator", allow_module_level=True)

import nbmodel.kernels.cuda as cuda_pkg  # noqa: E402

for _info in pkgutil.iter_modules(cuda_pkg.__path__):
    importlib.import_module(f"nbmodel.kernels.cuda.{_info.name}")

CASES = [(spec, sig) for spec in runtime.KERNELS for sig in spec.signatures]
SHARED_LIMIT = 48 * 1024  # static shared memory per block


def _float32_only(sig):
    return "float64" not in " ".join(str(t) for t in sig)


def test_every_kernel_declares_signatures():
    assert runtime.KERNELS, "no CUDA kernels registered"
    assert all(spec.signatures for spec in runtime.KERNELS), [s.name for s in runtime.KERNELS if not s.signatures]


@pytest.mark.parametrize("spec, sig", CASES, ids=[f"{s.name.split('.')[-2]}.{s.name.split('.')[-1]}"
                                                  f"[{','.join(str(t) for t in g)}]" for s, g in CASES])
def test_compiles_links_and_stays_in_precision(spec, sig):
    ptx = runtime.compile_ptx(spec, sig)
    if _float32_only(sig):
        assert runtime.float64_instructions(ptx) == [], f"{spec.name}{sig}: float64 in a float32 kernel"
    log = runtime.link(ptx)
    spills = [int(n) for n in re.findall(r"(\d+) bytes spill stores", log)]
    assert spills and max(spills) == 0, f"{spec.name}{sig}: register spills\n{log}"
    smem = [int(n) for n in re.findall(r"(\d+) bytes smem", log)]
    assert smem and max(smem) <= SHARED_LIMIT, f"{spec.name}{sig}: shared memory {smem}"
