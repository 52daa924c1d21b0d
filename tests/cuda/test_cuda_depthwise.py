"""The CUDA depthwise convolution kernels against their CPU twins (simulator or GPU), with
tiny shapes that still span several blocks and weight-gradient chunks.

2-D and 1-D (h = kh = 1) geometry with "valid", "same" and causal-style padding, strides,
dilations, depth multipliers 1 and 2 (the CPU's contiguous-run loops and its per-pixel
loops), fused activations (one that keeps the pre-activation), without a bias or an input
gradient, and weight-gradient chunks of a few pixels. Outputs and scratch start as NaN on
the device: a kernel that reads what it did not write shows. Tolerances as in
test_cuda_conv_transpose_groupnorm.py.
"""
import numpy as np
import pytest
from _twins import run_conv_twins

from nbmodel.backend import CpuDevice
from nbmodel.kernels import codes
from nbmodel.layers.conv import padding_amounts

CPU = CpuDevice()
DTYPES = [np.float32, np.float64]
TOL = {np.float32: {"rtol": 1e-5, "atol": 1e-5}, np.float64: {"rtol": 1e-11, "atol": 1e-12}}


@pytest.fixture(scope="module")
def conv(cuda_device):
    return cuda_device, cuda_device.kernels("conv"), CPU.kernels("conv")


class Geometry:
    """A depthwise convolution: input (n, h, w, c), depth multiplier, kernel, strides,
    dilations and padding per axis."""

    def __init__(self, n, h, w, c, m, kernel, strides, dilation, padding):
        self.x_shape, self.cm = (n, h, w, c), c * m
        self.kh, self.kw = kernel
        self.sh, self.sw = strides
        self.dh, self.dw = dilation
        self.pt, _, self.oh = padding_amounts(h, self.kh, self.sh, self.dh, padding[0])
        self.pl, _, self.ow = padding_amounts(w, self.kw, self.sw, self.dw, padding[1])
        self.rows = n * self.oh * self.ow

    def args(self):
        return (self.kh, self.kw, self.sh, self.sw, self.dh, self.dw, self.pt, self.pl, self.oh, self.ow)


GEOMETRIES = {
    "2d-same-m1": Geometry(2, 3, 4, 3, 1, (3, 3), (1, 1), (1, 1), ("same", "same")),
    "2d-valid-stride-m2": Geometry(2, 4, 5, 2, 2, (2, 3), (2, 2), (1, 1), ("valid", "valid")),
    "2d-same-dilated-stride": Geometry(1, 5, 5, 2, 1, (3, 2), (2, 1), (2, 2), ("same", "same")),
    "1d-causal-m2": Geometry(2, 1, 6, 2, 2, (1, 3), (1, 1), (1, 2), ("valid", "causal")),
}


def run_depthwise(conv, geo, code, dtype, use_bias=True, need_dx=True, seed=0):
    run_conv_twins(conv, "depthwise", geo, (geo.kh * geo.kw, geo.cm), geo.cm, code, dtype, TOL, use_bias, need_dx,
                   seed)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name, code", [("2d-same-m1", codes.RELU), ("2d-valid-stride-m2", codes.GELU),
                                        ("2d-same-dilated-stride", codes.LINEAR), ("1d-causal-m2", codes.TANH)])
def test_depthwise_matches_cpu(conv, name, code, dtype):
    run_depthwise(conv, GEOMETRIES[name], code, dtype)


def test_depthwise_without_bias_or_input_gradient(conv):
    run_depthwise(conv, GEOMETRIES["2d-valid-stride-m2"], codes.SIGMOID, np.float32, use_bias=False,
                  need_dx=False, seed=2)


def test_depthwise_weight_gradient_in_small_chunks(conv, monkeypatch):
    """Chunks of 5 output pixels (the last one short) give what one chunk gives."""
    _, kc, _ = conv
    monkeypatch.setattr(kc, "DW_PIXELS", 5)
    run_depthwise(conv, GEOMETRIES["2d-same-m1"], codes.ELU, np.float64, seed=4)
