"""The CUDA array family against its CPU twin on tiny ragged shapes that still
span several blocks (256 threads each): simulator or GPU."""
import numpy as np
import pytest

from nbmodel.backend import CpuDevice

CPU = CpuDevice()  # the twins' reference device



@pytest.fixture(scope="module")
def kernels(cuda_device):
    return cuda_device, cuda_device.kernels("array"), CPU.kernels("array")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_elementwise_match_cpu(kernels, dtype):
    dev, kc, kh = kernels
    r = np.random.default_rng(0)
    a, b = r.standard_normal((3, 101)).astype(dtype), r.standard_normal((3, 101)).astype(dtype)  # 303: 2 blocks
    da, db = dev.asarray(a), dev.asarray(b)
    for name in ("add", "multiply"):
        out, dout = np.empty_like(a), dev.empty(a.shape, dtype)
        getattr(kh, name)(a, b, out)
        getattr(kc, name)(da, db, dout)
        np.testing.assert_array_equal(dev.to_host(dout), out, err_msg=name)
    acc, dacc = a.copy(), dev.asarray(a)
    kh.add_into(acc, b)
    kc.add_into(dacc, db)
    kh.scale(acc, 0.5)
    kc.scale(dacc, 0.5)
    np.testing.assert_array_equal(dev.to_host(dacc), acc)
    full = dev.full((5, 61), 2.5, dtype)
    np.testing.assert_array_equal(dev.to_host(full), np.full((5, 61), 2.5, dtype))
    assert dev.to_host(dev.asarray(da, np.float64)).dtype == np.float64  # copy converts
    total = kc.total(da)
    assert abs(total - kh.total(a)) <= 1e-6 * np.abs(a).sum()


def test_layout_copies_match_cpu(kernels):
    dev, kc, kh = kernels
    r = np.random.default_rng(1)
    src = r.standard_normal((3, 4, 23))
    out, dout = np.zeros((3, 7, 23)), dev.zeros((3, 7, 23), np.float64)
    kh.copy_block(src, out, 2)
    kc.copy_block(dev.asarray(src), dout, 2)
    np.testing.assert_array_equal(dev.to_host(dout), out)
    part, dpart = np.empty((3, 3, 23)), dev.empty((3, 3, 23), np.float64)
    kh.take_block(out, 3, part)
    kc.take_block(dout, 3, dpart)
    np.testing.assert_array_equal(dev.to_host(dpart), part)
    last, dlast = np.empty((3, 23, 4)), dev.empty((3, 23, 4), np.float64)
    kh.move_axis_last(src, last)
    kc.move_axis_last(dev.asarray(src), dlast)
    np.testing.assert_array_equal(dev.to_host(dlast), last)
    dback = dev.empty((3, 4, 23), np.float64)
    kc.move_axis_back(dlast, dback)  # the inverse: back to src
    np.testing.assert_array_equal(dev.to_host(dback), src)
    rev, drev = np.empty_like(src), dev.empty(src.shape, np.float64)
    kh.reverse_steps(src, rev)
    kc.reverse_steps(dev.asarray(src), drev)
    np.testing.assert_array_equal(dev.to_host(drev), rev)


def test_device_memory_round_trip(cuda_device):
    dev = cuda_device
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    d = dev.asarray(x)
    assert dev.is_array(d) and not dev.is_array(x)
    np.testing.assert_array_equal(dev.to_host(d), x)
    dev.assign(d, np.ones((3, 4)))
    np.testing.assert_array_equal(dev.to_host(d), np.ones((3, 4), np.float32))
    dev.assign(d[1], 7.0)
    assert dev.to_host(d)[1].tolist() == [7.0] * 4
    rng_a, rng_b = np.random.default_rng(3), np.random.default_rng(3)
    u = dev.empty((2, 5), np.float32)
    dev.fill_uniform(rng_a, u)
    np.testing.assert_array_equal(dev.to_host(u), rng_b.random((2, 5), dtype=np.float32))
    assert dev.all_finite(d)
