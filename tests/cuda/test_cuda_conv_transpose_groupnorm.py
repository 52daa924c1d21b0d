"""The CUDA transposed convolution and group norm kernels against their CPU twins
(simulator or GPU), with tiny shapes that still span several blocks.

Transposed convolution: 2-D and 1-D (h = kh = 1) with "valid" and "same"
geometry, strides, output padding (outputs no input reaches), dilation, fused
activations (one that keeps the pre-activation), without a bias or an input
gradient, and in chunks of images. Group norm: several groups, 32-thread group
blocks striding over 37+ values, column sums over 2-row blocks (several
blocks add into a column), with and without gamma/beta. Outputs and scratch
start as NaN on the device: a kernel that reads what it did not write shows.
Tolerances as in test_cuda_conv_pooling.py / test_cuda_norm_embedding.py.
"""
import numpy as np
import pytest
from _twins import assert_twins_close, run_conv_twins

from nbmodel.backend import CpuDevice
from nbmodel.kernels import codes
from nbmodel.layers.conv import transpose_padding

CPU = CpuDevice()
DTYPES = [np.float32, np.float64]
TOL = {np.float32: {"rtol": 1e-5, "atol": 1e-5}, np.float64: {"rtol": 1e-11, "atol": 1e-12}}


def close(got, want, what):
    assert_twins_close(got, want, what, TOL)


@pytest.fixture(scope="module")
def conv(cuda_device):
    return cuda_device, cuda_device.kernels("conv"), CPU.kernels("conv")


@pytest.fixture(scope="module")
def norm(cuda_device):
    return cuda_device, cuda_device.kernels("norm"), CPU.kernels("norm")


class Geometry:
    """A transposed convolution: input (n, h, w, c), filters, kernel, strides, dilations,
    padding and output padding per axis."""

    def __init__(self, n, h, w, c, f, kernel, strides, dilation, padding, output_padding=(None, None)):
        self.x_shape, self.f = (n, h, w, c), f
        self.kh, self.kw = kernel
        self.sh, self.sw = strides
        self.dh, self.dw = dilation
        self.pt, self.oh = transpose_padding(h, self.kh, self.sh, self.dh, padding[0], output_padding[0])
        self.pl, self.ow = transpose_padding(w, self.kw, self.sw, self.dw, padding[1], output_padding[1])
        self.kk = self.kh * self.kw * f
        self.rows = n * self.oh * self.ow

    def args(self):
        return (self.kh, self.kw, self.sh, self.sw, self.dh, self.dw, self.pt, self.pl, self.oh, self.ow)


GEOMETRIES = {
    "2d-valid-stride": Geometry(2, 2, 3, 2, 3, (3, 2), (2, 2), (1, 1), ("valid", "valid")),
    "2d-same-output-padding": Geometry(2, 3, 2, 2, 2, (3, 3), (2, 2), (1, 1), ("same", "same"), (1, 0)),
    "2d-same-dilated": Geometry(2, 3, 3, 1, 2, (2, 3), (1, 1), (2, 1), ("same", "same")),
    "1d-valid-output-padding": Geometry(2, 1, 4, 2, 3, (1, 3), (1, 2), (1, 1), ("valid", "valid"), (None, 1)),
}


def run_transpose(conv, geo, code, dtype, use_bias=True, need_dx=True, seed=0):
    run_conv_twins(conv, "conv_transpose", geo, (geo.kk, geo.x_shape[3]), geo.f, code, dtype, TOL, use_bias,
                   need_dx, seed)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name, code", [("2d-valid-stride", codes.RELU), ("2d-same-output-padding", codes.GELU),
                                        ("2d-same-dilated", codes.LINEAR), ("1d-valid-output-padding", codes.TANH)])
def test_conv_transpose_matches_cpu(conv, name, code, dtype):
    run_transpose(conv, GEOMETRIES[name], code, dtype)


def test_conv_transpose_without_bias_or_input_gradient(conv):
    run_transpose(conv, GEOMETRIES["2d-valid-stride"], codes.SIGMOID, np.float32, use_bias=False, need_dx=False,
                  seed=2)


def test_conv_transpose_in_chunks_of_images(conv, monkeypatch):
    """Chunks of two images (5 images: the last chunk holds one) give what one chunk gives."""
    dev, kc, _ = conv
    geo = Geometry(5, 2, 2, 1, 2, (2, 2), (2, 2), (1, 1), ("valid", "valid"))
    monkeypatch.setattr(kc, "CHUNK_BYTES", 2 * 2 * 2 * geo.kk * 8)
    run_transpose(conv, geo, codes.ELU, np.float64, seed=4)


# ------------------------------------------------------------------ group norm
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("use_scale, use_center", [(True, True), (False, True), (True, False)])
@pytest.mark.parametrize("small", [True, False], ids=["small-blocks", "default-blocks"])
def test_group_norm_matches_cpu(norm, monkeypatch, small, use_scale, use_center, dtype):
    dev, kc, kh = norm
    if small:
        monkeypatch.setattr(kc, "_ROW_MAX", 32)
        monkeypatch.setattr(kc, "_BN_ROWS", 2)
    n, m, c, groups = 3, 37, 4, 2  # 74 values per group
    r = np.random.default_rng(1)
    x = (r.standard_normal((n, m, c)) * 2 + 1).astype(dtype)
    dy = r.standard_normal((n, m, c)).astype(dtype)
    gamma = r.uniform(0.5, 1.5, c).astype(dtype) if use_scale else np.zeros(0, dtype)
    beta = r.standard_normal(c).astype(dtype) if use_center else np.zeros(0, dtype)
    eps = np.dtype(dtype).type(1e-3)
    out, mean, rstd = np.empty(x.shape, dtype), np.empty((n, groups), dtype), np.empty((n, groups), dtype)
    kh.group_norm_forward(x, gamma, beta, eps, groups, use_scale, use_center, out, mean, rstd)
    x_d = dev.asarray(x)
    out_d = dev.full(x.shape, np.nan, dtype)
    mean_d, rstd_d = dev.full((n, groups), np.nan, dtype), dev.full((n, groups), np.nan, dtype)
    kc.group_norm_forward(x_d, dev.asarray(gamma), dev.asarray(beta), eps, groups, use_scale, use_center, out_d,
                          mean_d, rstd_d)
    close(dev.to_host(out_d), out, "out")
    close(dev.to_host(mean_d), mean, "mean")
    close(dev.to_host(rstd_d), rstd, "rstd")

    dx, dgamma, dbeta = np.empty(x.shape, dtype), np.empty_like(gamma), np.empty_like(beta)
    kh.group_norm_backward(x, gamma, mean, rstd, dy, groups, use_scale, use_center, dx, dgamma, dbeta)
    dx_d = dev.full(x.shape, np.nan, dtype)
    dgamma_d, dbeta_d = dev.full(gamma.shape, 7, dtype), dev.full(beta.shape, 7, dtype)
    kc.group_norm_backward(x_d, dev.asarray(gamma), mean_d, rstd_d, dev.asarray(dy), groups, use_scale, use_center,
                           dx_d, dgamma_d, dbeta_d)
    close(dev.to_host(dx_d), dx, "dx")
    close(dev.to_host(dgamma_d), dgamma, "dgamma")
    close(dev.to_host(dbeta_d), dbeta, "dbeta")
