"""The CUDA reshaping family and the merge layers' array kernels against their CPU twins
(simulator or GPU), on tiny ragged shapes whose launches span two blocks (256 threads each).

Outputs start as NaN on the device, so a kernel that skips an element shows. Copies,
repeats, pads, crops, permutations, maxima and routed gradients are compared exactly;
sums of repeats exactly too (both devices add the copies in the same order); products and
normalizations to float rounding (another summation order than BLAS). The layers' own
cases (tests/test_reshaping.py, tests/test_core.py) run on the cuda device through the
``device`` fixture when that file runs under the simulator.
"""
import numpy as np
import pytest

from nbmodel.backend import CpuDevice

CPU = CpuDevice()  # the twins' reference device
DTYPES = [np.float32, np.float64]
TOL = {np.float32: {"rtol": 1e-5, "atol": 1e-6}, np.float64: {"rtol": 1e-12, "atol": 1e-13}}


@pytest.fixture(scope="module")
def reshaping(cuda_device):
    return cuda_device, cuda_device.kernels("reshaping"), CPU.kernels("reshaping")


@pytest.fixture(scope="module")
def array(cuda_device):
    return cuda_device, cuda_device.kernels("array"), CPU.kernels("array")


def run_both(dev, kc, kh, name, inputs, out_shape, dtype, *scalars, out_dtype=None):
    """Call ``name`` on both devices: inputs first, then the scalars, the output last."""
    out_dtype = out_dtype or dtype
    out = np.full(out_shape, np.nan, out_dtype)
    dout = dev.asarray(out.copy())
    getattr(kh, name)(*inputs, *scalars, out)
    getattr(kc, name)(*[dev.asarray(a) for a in inputs], *scalars, dout)
    return dev.to_host(dout), out


@pytest.mark.parametrize("dtype", DTYPES)
def test_repeat_and_sum_rows_match_cpu(reshaping, dtype):
    dev, kc, kh = reshaping
    r = np.random.default_rng(0)
    src = r.standard_normal((5, 19)).astype(dtype)
    got, want = run_both(dev, kc, kh, "repeat_rows", [src], (5, 3, 19), dtype)  # 285 elements: 2 blocks
    np.testing.assert_array_equal(got, want)
    big = r.standard_normal((7, 5, 41)).astype(dtype) * 10.0 ** r.integers(-5, 5, (7, 5, 41))
    got, want = run_both(dev, kc, kh, "sum_rows", [big.astype(dtype)], (7, 41), dtype)
    np.testing.assert_array_equal(got, want)  # the same order of additions


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m, s", [(4, 2), (3, 3), (1, 4)])
def test_resize_linear_matches_cpu(reshaping, dtype, m, s):
    dev, kc, kh = reshaping
    r = np.random.default_rng(5)
    src = r.standard_normal((3, m, 29)).astype(dtype)
    got, want = run_both(dev, kc, kh, "resize_linear", [src], (3, m * s, 29), dtype)
    np.testing.assert_allclose(got, want, **TOL[dtype])
    dy = r.standard_normal((3, m * s, 29)).astype(dtype)
    got, want = run_both(dev, kc, kh, "resize_linear_backward", [dy], src.shape, dtype)
    np.testing.assert_allclose(got, want, **TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
def test_pad_crop_permute_match_cpu(reshaping, dtype):
    dev, kc, kh = reshaping
    r = np.random.default_rng(1)
    x = r.standard_normal((2, 3, 5, 7)).astype(dtype)
    got, want = run_both(dev, kc, kh, "pad_2d", [x], (2, 6, 8, 7), dtype, 2, 1)
    np.testing.assert_array_equal(got, want)
    got, want = run_both(dev, kc, kh, "crop_2d", [x], (2, 2, 3, 7), dtype, 1, 2)
    np.testing.assert_array_equal(got, want)
    y = r.standard_normal((2, 3, 1, 5, 9)).astype(dtype)
    for axes in [(0, 4, 2, 1, 3), (0, 2, 1)]:
        src = y if len(axes) == 5 else x.reshape(2, 15, 7)
        got, want = run_both(dev, kc, kh, "permute", [src], np.transpose(src, axes).shape, dtype, axes)
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("dtype", DTYPES)
def test_merge_kernels_match_cpu(array, dtype):
    dev, kc, kh = array
    r = np.random.default_rng(2)
    a, b = r.standard_normal((3, 101)).astype(dtype), r.standard_normal((3, 101)).astype(dtype)
    b[0, :10] = a[0, :10]  # ties keep the earlier input
    got, want = run_both(dev, kc, kh, "subtract", [a, b], a.shape, dtype)
    np.testing.assert_array_equal(got, want)
    for largest in (True, False):
        out, arg = a.copy(), np.zeros(a.shape, np.int32)
        dout, darg = dev.asarray(a), dev.asarray(arg, np.int32)
        kh.extremum_into(out, arg, b, 1, largest)
        kc.extremum_into(dout, darg, dev.asarray(b), 1, largest)
        np.testing.assert_array_equal(dev.to_host(dout), out)
        np.testing.assert_array_equal(dev.to_host(darg), arg)
        assert (arg[0, :10] == 0).all()
        dx, ddx = np.full(a.shape, np.nan, dtype), dev.asarray(np.full(a.shape, np.nan, dtype))
        kh.take_where(b, arg, 1, dx)
        kc.take_where(dev.asarray(b), darg, 1, ddx)
        np.testing.assert_array_equal(dev.to_host(ddx), dx)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("ta, tb", [(False, False), (True, False), (False, True), (True, True)])
def test_batch_matmul_matches_cpu(array, dtype, ta, tb):
    dev, kc, kh = array
    r = np.random.default_rng(3)
    p, i, k, j = 3, 7, 5, 13   # 273 outputs: 2 blocks
    a = r.standard_normal((p, k, i) if ta else (p, i, k)).astype(dtype)
    b = r.standard_normal((p, j, k) if tb else (p, k, j)).astype(dtype)
    got, want = run_both(dev, kc, kh, "batch_matmul", [a, b], (p, i, j), dtype, ta, tb)
    np.testing.assert_allclose(got, want, **TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
def test_l2_normalize_matches_cpu(array, dtype):
    dev, kc, kh = array
    r = np.random.default_rng(4)
    x = r.standard_normal((3, 4, 97)).astype(dtype)  # 291 columns: 2 blocks
    x[0, :, :3] = 0.0  # capped inverse norms
    out, inv = np.full_like(x, np.nan), np.full((3, 97), np.nan, dtype)
    dout, dinv = dev.asarray(out), dev.asarray(inv)
    kh.l2_normalize(x, 1e-7, out, inv)
    kc.l2_normalize(dev.asarray(x), 1e-7, dout, dinv)
    np.testing.assert_allclose(dev.to_host(dout), out, **TOL[dtype])
    np.testing.assert_allclose(dev.to_host(dinv), inv, **TOL[dtype])
    dy = r.standard_normal(x.shape).astype(dtype)
    dx, ddx = np.full_like(x, np.nan), dev.asarray(np.full_like(x, np.nan))
    kh.l2_normalize_backward(out, inv, dy, 1e-7, dx)
    kc.l2_normalize_backward(dout, dinv, dev.asarray(dy), 1e-7, ddx)
    np.testing.assert_allclose(dev.to_host(ddx), dx, **TOL[dtype])
