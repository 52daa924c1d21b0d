"""The CUDA conv and pooling families against their CPU twins (simulator or GPU).

Every launcher on both devices with the same inputs: convolutions in 2-D and
1-D (h = kh = 1) with "valid", "same" and "causal" padding, strides and
dilations, fused activations (one that keeps the pre-activation), without a
bias or an input gradient, and in several chunks of images; windowed pools
whose windows overlap or run into the padding, with ties (integer inputs)
and NaNs for the max's first-position rule; global pools over several lanes
and two channel tiles. Shapes stay tiny (the simulator runs about 1 ms per
thread) but each launch spans two or more blocks or ends ragged somewhere.
Scratch arrays start as NaN on the device: a kernel that reads what it did
not write shows. The layers' cases (tests/test_conv.py, tests/test_pooling.py)
run on the cuda device through the ``device`` fixture.

Tolerances: float32 rtol/atol 1e-5 (GEMMs and sums in another order than the
CPU's BLAS), float64 1e-12. Maxima, their positions and routed gradients are
compared exactly.
"""
import numpy as np
import pytest
from _twins import Scratch, assert_twins_close, run_conv_twins

from nbmodel.backend import CpuDevice
from nbmodel.kernels import codes
from nbmodel.layers.conv import padding_amounts

CPU = CpuDevice()  # the twins' reference device
DTYPES = [np.float32, np.float64]
TOL = {np.float32: {"rtol": 1e-5, "atol": 1e-5}, np.float64: {"rtol": 1e-12, "atol": 1e-12}}


def close(got, want, what):
    assert_twins_close(got, want, what, TOL, equal_nan=True)


@pytest.fixture(scope="module")
def conv(cuda_device):
    return cuda_device, cuda_device.kernels("conv"), CPU.kernels("conv")


@pytest.fixture(scope="module")
def pool(cuda_device):
    return cuda_device, cuda_device.kernels("pooling"), CPU.kernels("pooling")


# ------------------------------------------------------------------ convolution
class Geometry:
    """A convolution: input (n, h, w, c), filters, kernel, strides, dilations, padding per axis."""

    def __init__(self, n, h, w, c, f, kernel, strides, dilation, padding):
        self.x_shape, self.f = (n, h, w, c), f
        self.kh, self.kw = kernel
        self.sh, self.sw = strides
        self.dh, self.dw = dilation
        self.pt, _, self.oh = padding_amounts(h, self.kh, self.sh, self.dh, padding[0])
        self.pl, _, self.ow = padding_amounts(w, self.kw, self.sw, self.dw, padding[1])
        self.kk = self.kh * self.kw * c
        self.rows = n * self.oh * self.ow

    def args(self):
        return (self.kh, self.kw, self.sh, self.sw, self.dh, self.dw, self.pt, self.pl, self.oh, self.ow)


GEOMETRIES = {
    # im2col threads (rows * kk): 192, 324, 288, 162, 96
    "2d-valid": Geometry(2, 4, 5, 2, 3, (3, 2), (1, 1), (1, 1), ("valid", "valid")),
    "2d-same-stride-dilation": Geometry(2, 5, 6, 2, 3, (3, 3), (2, 2), (2, 1), ("same", "same")),
    "2d-same": Geometry(2, 4, 4, 2, 2, (3, 3), (1, 1), (1, 1), ("same", "same")),
    "1d-causal-dilated": Geometry(2, 1, 9, 3, 2, (1, 3), (1, 1), (1, 2), ("valid", "causal")),
    "1d-same-stride": Geometry(3, 1, 8, 2, 3, (1, 4), (1, 2), (1, 1), ("valid", "same")),
}


def run_conv(conv, geo, code, dtype, use_bias=True, need_dx=True, dy_special=False, seed=0):
    """conv_forward(for_backward=True) and conv_backward on both devices; compares every output."""

    def non_finite_where_relu_is_off(y, dy):  # dz must be 0 there
        off = y <= 0
        assert off.any() and (~off).any()
        dy[off & (np.arange(geo.f) % 2 == 0)] = np.inf
        dy[off & (np.arange(geo.f) % 2 == 1)] = np.nan

    run_conv_twins(conv, "conv", geo, (geo.kk, geo.f), geo.f, code, dtype, TOL, use_bias, need_dx, seed,
                   forward_extra=(True,), edit_dy=non_finite_where_relu_is_off if dy_special else None)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name, code", [("2d-valid", codes.RELU), ("2d-same-stride-dilation", codes.GELU),
                                        ("2d-same", codes.TANH), ("1d-causal-dilated", codes.LINEAR),
                                        ("1d-same-stride", codes.SILU)])
def test_conv_matches_cpu(conv, name, code, dtype):
    run_conv(conv, GEOMETRIES[name], code, dtype)


def test_conv_relu_masks_non_finite_gradients(conv):
    run_conv(conv, GEOMETRIES["2d-valid"], codes.RELU, np.float64, dy_special=True, seed=1)


@pytest.mark.parametrize("code", [codes.LINEAR, codes.SIGMOID])
def test_conv_without_bias_or_input_gradient(conv, code):
    run_conv(conv, GEOMETRIES["2d-same"], code, np.float32, use_bias=False, need_dx=False, seed=2)


@pytest.mark.parametrize("dtype", DTYPES)
def test_conv_in_chunks_of_images(conv, monkeypatch, dtype):
    """Inference and dx in chunks of two images (5 images: the last chunk holds one) give what
    one chunk gives; training keeps the whole patch matrix for the weight gradient."""
    dev, kc, kh = conv
    geo = Geometry(5, 3, 3, 1, 2, (2, 2), (1, 1), (1, 1), ("valid", "valid"))
    monkeypatch.setattr(kc, "CHUNK_BYTES", 2 * geo.oh * geo.ow * geo.kk * np.dtype(dtype).itemsize)
    r = np.random.default_rng(3)
    x = r.standard_normal(geo.x_shape).astype(dtype)
    k2, bias = r.standard_normal((geo.kk, geo.f)).astype(dtype), r.standard_normal(geo.f).astype(dtype)
    y = np.empty((geo.rows, geo.f), dtype)
    kh.conv_forward(x, k2, bias, codes.ELU, False, *geo.args(), False, Scratch(np.empty), y, y)
    x_d, k2_d, b_d = dev.asarray(x), dev.asarray(k2), dev.asarray(bias)
    scratch = Scratch(lambda s, dt: dev.full(s, np.nan, dt))
    y_d = dev.full(y.shape, np.nan, dtype)
    kc.conv_forward(x_d, k2_d, b_d, codes.ELU, False, *geo.args(), False, scratch, y_d, y_d)
    close(dev.to_host(y_d), y, "chunked inference")
    assert {s for (key, s, _) in scratch.arrays if key == "cols"} == {(2 * geo.oh * geo.ow, geo.kk)}
    run_conv(conv, geo, codes.LEAKY_RELU, dtype, seed=4)


# ------------------------------------------------------------------ windowed pools
# (x shape, pool, strides, padding): out elements 36, 48, 16 x 2 + ..., dx elements up to 336
POOLS = {
    "2d-valid-ragged": ((2, 5, 7, 3), (2, 2), (2, 2), "valid"),
    "2d-same-overlapping": ((2, 7, 6, 4), (3, 3), (2, 2), "same"),
    "2d-stride-one": ((1, 5, 4, 3), (3, 2), (1, 2), "valid"),
    "2d-same-uneven": ((2, 6, 5, 2), (2, 3), (3, 1), "same"),
    "1d-same": ((2, 1, 9, 3), (1, 3), (1, 2), "same"),
}


def _pool_geometry(x_shape, ps, st, padding):
    pt, _, oh = padding_amounts(x_shape[1], ps[0], st[0], 1, "valid" if x_shape[1] == 1 else padding)
    pl, _, ow = padding_amounts(x_shape[2], ps[1], st[1], 1, padding)
    return (ps[0], ps[1], st[0], st[1], pt, pl), (x_shape[0], oh, ow, x_shape[3])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", sorted(POOLS))
def test_max_pool_matches_cpu(pool, name, dtype):
    dev, kc, kh = pool
    x_shape, ps, st, padding = POOLS[name]
    window, out_shape = _pool_geometry(x_shape, ps, st, padding)
    r = np.random.default_rng(5)
    x = r.integers(-2, 3, x_shape).astype(dtype)  # ties: the first maximum wins
    x.reshape(-1)[[0, 7]] = np.nan  # a NaN first in a window stays; elsewhere it never wins
    out, arg = np.empty(out_shape, dtype), np.empty(out_shape, np.int32)
    kh.max_pool_forward(x, *window, out, arg)
    out_d, arg_d = dev.full(out_shape, np.nan, dtype), dev.full(out_shape, -1, np.int32)
    kc.max_pool_forward(dev.asarray(x), *window, out_d, arg_d)
    np.testing.assert_array_equal(dev.to_host(out_d), out)
    np.testing.assert_array_equal(dev.to_host(arg_d), arg)

    dy = r.standard_normal(out_shape).astype(dtype)
    dx, dx_d = np.empty(x_shape, dtype), dev.full(x_shape, np.nan, dtype)
    kh.max_pool_backward(dy, arg, *window, dx)
    kc.max_pool_backward(dev.asarray(dy), arg_d, *window, dx_d)
    np.testing.assert_array_equal(dev.to_host(dx_d), dx)  # the same additions in the same order


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", sorted(POOLS))
def test_avg_pool_matches_cpu(pool, name, dtype):
    dev, kc, kh = pool
    x_shape, ps, st, padding = POOLS[name]
    window, out_shape = _pool_geometry(x_shape, ps, st, padding)
    r = np.random.default_rng(6)
    x = r.standard_normal(x_shape).astype(dtype)
    out, out_d = np.empty(out_shape, dtype), dev.full(out_shape, np.nan, dtype)
    kh.avg_pool_forward(x, *window, out)
    kc.avg_pool_forward(dev.asarray(x), *window, out_d)
    close(dev.to_host(out_d), out, "avg_pool_forward")

    dy = r.standard_normal(out_shape).astype(dtype)
    dx, dx_d = np.empty(x_shape, dtype), dev.full(x_shape, np.nan, dtype)
    kh.avg_pool_backward(dy, *window, dx)
    kc.avg_pool_backward(dev.asarray(dy), *window, dx_d)
    close(dev.to_host(dx_d), dx, "avg_pool_backward")


# ------------------------------------------------------------------ global pools
@pytest.fixture(params=["lanes", "channel-tiles"])
def global_shape(request, pool, monkeypatch):
    """(3, 20, 5) over eight lanes of three steps (the last lanes ragged), or (2, 3, 33) in
    one lane and two 32-channel tiles (the second holds one channel)."""
    _, kc, _ = pool
    if request.param == "lanes":
        monkeypatch.setattr(kc, "_LANE_STEPS", 3)
        return 3, 20, 5
    return 2, 3, 33


@pytest.mark.parametrize("dtype", DTYPES)
def test_global_avg_matches_cpu(pool, global_shape, dtype):
    dev, kc, kh = pool
    n, steps, c = global_shape
    r = np.random.default_rng(7)
    x = r.standard_normal(global_shape).astype(dtype)
    out, out_d = np.empty((n, c), dtype), dev.full((n, c), np.nan, dtype)
    kh.global_avg_forward(x, np.empty(c, dtype), out)
    kc.global_avg_forward(dev.asarray(x), dev.full(c, np.nan, dtype), out_d)
    close(dev.to_host(out_d), out, "global_avg_forward")

    dy = r.standard_normal((n, c)).astype(dtype)
    dx, dx_d = np.empty(global_shape, dtype), dev.full(global_shape, np.nan, dtype)
    kh.global_avg_backward(dy, dx)
    kc.global_avg_backward(dev.asarray(dy), dx_d)
    close(dev.to_host(dx_d), dx, "global_avg_backward")


@pytest.mark.parametrize("dtype", DTYPES)
def test_global_max_matches_cpu(pool, global_shape, dtype):
    """Ties keep the first position in any lane; a NaN at step 0 stays (the CPU's scan starts
    there), later NaNs never win, a column of NaNs or of -inf gives position 0."""
    dev, kc, kh = pool
    n, steps, c = global_shape
    r = np.random.default_rng(8)
    x = r.integers(-3, 4, global_shape).astype(dtype)
    x[0, 0, 0] = np.nan
    x[0, 1:, 1] = np.nan
    x[1, :, 2] = np.nan
    x[1, :, 3] = -np.inf
    x[-1, steps - 1, -1] = 9  # the maximum in the last lane
    out, arg = np.empty((n, c), dtype), np.empty((n, c), np.int32)
    kh.global_max_forward(x, out, arg)
    out_d, arg_d = dev.full((n, c), 0, dtype), dev.full((n, c), -1, np.int32)
    kc.global_max_forward(dev.asarray(x), out_d, arg_d)
    np.testing.assert_array_equal(dev.to_host(out_d), out)
    np.testing.assert_array_equal(dev.to_host(arg_d), arg)

    dy = r.standard_normal((n, c)).astype(dtype)
    dx, dx_d = np.empty(global_shape, dtype), dev.full(global_shape, np.nan, dtype)
    kh.global_max_backward(dy, arg, dx)
    kc.global_max_backward(dev.asarray(dy), arg_d, dx_d)
    np.testing.assert_array_equal(dev.to_host(dx_d), dx)
