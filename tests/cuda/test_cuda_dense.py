"""The CUDA dense and activations families and the gemm helper: each launcher
against its CPU twin (gemm against NumPy) on tiny ragged shapes that span
several blocks, float32 and float64, every activation code. Simulator or GPU;
shapes stay tiny (the simulator runs each thread in Python). The layers'
cases (tests/test_core.py) run on the cuda device through the ``device``
fixture."""
import importlib

import numpy as np
import pytest

from nbmodel.backend import CpuDevice
from nbmodel.kernels import codes

CPU = CpuDevice()  # the twins' reference device

ELEMENTWISE = [codes.LINEAR, codes.RELU, codes.SIGMOID, codes.TANH, codes.GELU, codes.LEAKY_RELU, codes.ELU,
               codes.SILU]
NAMES = {codes.LINEAR: "linear", codes.RELU: "relu", codes.SIGMOID: "sigmoid", codes.TANH: "tanh",
         codes.GELU: "gelu", codes.LEAKY_RELU: "leaky_relu", codes.ELU: "elu", codes.SILU: "silu"}
DTYPES = [np.float32, np.float64]
# CUDA's libdevice math and reduction order against the CPU's: a few ulp
TOL = {np.float32: {"rtol": 2e-5, "atol": 2e-6}, np.float64: {"rtol": 1e-12, "atol": 1e-13}}
SPECIAL = [0.0, -0.0, np.inf, -np.inf, np.nan, 30.0, -30.0, 100.0, -100.0]


@pytest.fixture(scope="module")
def dev(cuda_device):
    return cuda_device


@pytest.fixture(scope="module")
def gemm_mod(cuda_device):
    return importlib.import_module("nbmodel.kernels.cuda.gemm")


@pytest.fixture(scope="module")
def cpu():
    return CPU


def close(actual, expected, dtype, what=""):
    assert actual.dtype == np.dtype(dtype), f"{what}: dtype {actual.dtype}"
    np.testing.assert_allclose(actual, expected, equal_nan=True, err_msg=what, **TOL[dtype])


def operands(r, m, n, k, trans_a, trans_b, dtype):
    a = r.standard_normal((k, m) if trans_a else (m, k)).astype(dtype)
    b = r.standard_normal((n, k) if trans_b else (k, n)).astype(dtype)
    return a, b, (a.T if trans_a else a).astype(np.float64) @ (b.T if trans_b else b).astype(np.float64)


TRANSPOSES = [(False, False), (False, True), (True, False), (True, True)]


# ------------------------------------------------------------------ gemm
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("trans_a, trans_b", TRANSPOSES)
def test_gemm_matches_numpy(dev, gemm_mod, dtype, trans_a, trans_b):
    """The public gemm (cuBLAS on a GPU with CuPy, the 16x16 tile kernel otherwise): two tiles
    along m or n (ragged), two along k (ragged)."""
    r = np.random.default_rng(0)
    m, n = (20, 9) if trans_a == trans_b else (9, 20)
    a, b, expected = operands(r, m, n, 21, trans_a, trans_b, dtype)
    out = dev.full((m, n), np.nan, dtype)
    gemm_mod.gemm(dev.asarray(a), dev.asarray(b), out, trans_a=trans_a, trans_b=trans_b)
    close(dev.to_host(out), expected, dtype, f"gemm {trans_a} {trans_b}")


# (m, n, k) per kernel when op(b) is transposed; the other way round m and n swap
OWN_SHAPES = {"small": (7, 9, 21), "tile": (20, 9, 21), "big": (70, 20, 19)}


@pytest.mark.parametrize("trans_a, trans_b", TRANSPOSES)
@pytest.mark.parametrize("kind", ["small", "tile", "big"])
def test_own_gemm_kernels(dev, gemm_mod, kind, trans_a, trans_b):
    """Each own kernel, whatever gemm would pick: 4x4 tiles (an output of at most 128 elements)
    two or three tiles along m and n, the 16x16 tiles two along m or n, the register-blocked
    kernel two 64-wide tiles along m or n; all ragged, two or more steps along k (ragged)."""
    r = np.random.default_rng(1)
    dtype = np.float32 if trans_a == trans_b else np.float64
    m, n, k = OWN_SHAPES[kind]
    if not trans_b:
        m, n = n, m
    assert (m * n <= gemm_mod.SMALL_MAX) == (kind == "small")
    a, b, expected = operands(r, m, n, k, trans_a, trans_b, dtype)
    out = dev.full((m, n), np.nan, dtype)
    gemm_mod.own_gemm(dev.asarray(a), dev.asarray(b), out, trans_a, trans_b, big=kind == "big")
    close(dev.to_host(out), expected, dtype, f"own gemm {kind} {trans_a} {trans_b}")


def test_simulator_blocks_share_their_shared_arrays(dev, gemm_mod):
    """The simulator makes a block's shared array on first use without a lock; runtime.py adds
    one. Without it, threads switching every microsecond make two arrays for one block and the
    product comes out wrong in about one launch of ten."""
    runtime = importlib.import_module("nbmodel.kernels.cuda.runtime")
    if not runtime.simulator():
        pytest.skip("a simulator shim")
    import sys

    r = np.random.default_rng(2)
    a, b, expected = operands(r, 8, 8, 9, True, True, np.float64)
    previous = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        for _ in range(12):
            out = dev.full((8, 8), np.nan, np.float64)
            gemm_mod.own_gemm(dev.asarray(a), dev.asarray(b), out, True, True)
            close(dev.to_host(out), expected, np.float64, "small gemm under fast thread switching")
    finally:
        sys.setswitchinterval(previous)


def test_gemm_empty_and_bad_shapes(dev, gemm_mod):
    a, b = dev.zeros((3, 0), np.float32), dev.zeros((0, 2), np.float32)
    out = dev.full((3, 2), np.nan, np.float32)
    gemm_mod.gemm(a, b, out)  # k = 0: zeros
    np.testing.assert_array_equal(dev.to_host(out), np.zeros((3, 2), np.float32))
    gemm_mod.gemm(dev.zeros((0, 4), np.float32), dev.zeros((4, 2), np.float32), dev.zeros((0, 2), np.float32))
    with pytest.raises(ValueError, match="does not fit"):
        gemm_mod.gemm(dev.zeros((3, 4), np.float32), dev.zeros((5, 2), np.float32), out)
    with pytest.raises(ValueError, match="does not fit"):
        gemm_mod.gemm(dev.zeros((3, 4), np.float32), dev.zeros((4, 2), np.float32), out, trans_a=True)
    with pytest.raises(ValueError, match="dtypes"):
        gemm_mod.gemm(dev.zeros((3, 4), np.float32), dev.zeros((4, 2), np.float64), out)


def test_gemm_cupy_branch(dev, gemm_mod, monkeypatch):
    """The CuPy branch's transposes and output, with NumPy standing in for CuPy (same API) over the
    simulator's host memory; on a GPU the real CuPy branch runs in test_gemm_matches_numpy."""
    if not hasattr(dev.empty((1,), np.float32), "_ary"):
        pytest.skip("needs the simulator's arrays")

    class FakeCupy:
        matmul = staticmethod(np.matmul)

        @staticmethod
        def asarray(a):
            return a._ary  # the simulator array's memory, no copy

    monkeypatch.setattr(gemm_mod, "_CUPY", [FakeCupy])
    monkeypatch.setattr(gemm_mod, "_CUPY_WORKED", [])
    r = np.random.default_rng(2)
    for trans_a, trans_b in TRANSPOSES:
        a, b, expected = operands(r, 4, 3, 5, trans_a, trans_b, np.float64)
        out = dev.full((4, 3), np.nan, np.float64)
        gemm_mod.gemm(dev.asarray(a), dev.asarray(b), out, trans_a, trans_b)
        close(dev.to_host(out), expected, np.float64, f"cupy branch {trans_a} {trans_b}")


def test_gemm_falls_back_when_cupy_fails_first(dev, gemm_mod, monkeypatch):
    class BrokenCupy:
        @staticmethod
        def asarray(a):
            raise RuntimeError("libcublas.so.13: cannot open shared object file")

    monkeypatch.setattr(gemm_mod, "_CUPY", [BrokenCupy])
    monkeypatch.setattr(gemm_mod, "_CUPY_WORKED", [])
    a, b, expected = operands(np.random.default_rng(3), 4, 3, 5, False, False, np.float32)
    out = dev.full((4, 3), np.nan, np.float32)
    with pytest.warns(RuntimeWarning, match="CuPy failed.*libcublas"):
        gemm_mod.gemm(dev.asarray(a), dev.asarray(b), out)
    close(dev.to_host(out), expected, np.float32, "fallback")
    assert gemm_mod._cupy() is None  # the own kernels from now on


# ------------------------------------------------------------------ activations
@pytest.mark.parametrize("dtype", DTYPES)
def test_activations_match_cpu(dev, cpu, dtype):
    kc, kh = dev.kernels("activations"), cpu.kernels("activations")
    r = np.random.default_rng(3)
    x = np.concatenate([r.standard_normal(300 - len(SPECIAL)) * 3, SPECIAL]).astype(dtype)  # 2 blocks
    dy = r.standard_normal(300).astype(dtype)
    dx_dev, dy_dev = dev.asarray(x), dev.asarray(dy)
    for code in ELEMENTWISE:
        y = np.empty_like(x)
        kh.activation_forward(code, x, y)
        out = dev.full(x.shape, np.nan, dtype)
        kc.activation_forward(code, dx_dev, out)
        close(dev.to_host(out), y, dtype, f"{NAMES[code]} forward")
        g = np.empty_like(x)
        kh.activation_backward(code, x, y, dy, g)
        dg = dev.full(x.shape, np.nan, dtype)
        kc.activation_backward(code, dx_dev, dev.asarray(y), dy_dev, dg)
        close(dev.to_host(dg), g, dtype, f"{NAMES[code]} backward")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows, width", [(300, 5), (3, 150), (2, 1030)],
                         ids=["thread-per-row", "block-64", "block-256"])
def test_softmax_rows_match_cpu(dev, cpu, dtype, rows, width):
    kc, kh = dev.kernels("activations"), cpu.kernels("activations")
    r = np.random.default_rng(4)
    x = (r.standard_normal((rows, width)) * 4).astype(dtype)
    x[-1, width // 2] = np.nan      # a NaN row comes out NaN
    x[0, :width - 1] = -np.inf      # -inf entries give 0
    y = np.empty_like(x)
    kh.softmax_rows(x, y)
    out = dev.full(x.shape, np.nan, dtype)
    kc.softmax_rows(dev.asarray(x), out)
    close(dev.to_host(out), y, dtype, "softmax_rows")
    inplace = dev.asarray(x)
    kc.softmax_rows(inplace, inplace)  # out is x
    close(dev.to_host(inplace), y, dtype, "softmax_rows in place")

    y[-1] = r.random(width).astype(dtype)  # the backward of a finite output
    dy = r.standard_normal((rows, width)).astype(dtype)
    dx = np.empty_like(y)
    kh.softmax_rows_backward(y, dy, dx)
    ddx = dev.full(x.shape, np.nan, dtype)
    kc.softmax_rows_backward(dev.asarray(y), dev.asarray(dy), ddx)
    close(dev.to_host(ddx), dx, dtype, "softmax_rows_backward")
    ddy = dev.asarray(dy)
    kc.softmax_rows_backward(dev.asarray(y), ddy, ddy)  # dx is dy
    close(dev.to_host(ddy), dx, dtype, "softmax_rows_backward in place")


# ------------------------------------------------------------------ dense
def run_dense(dev, cpu, code, dtype, n, d_in, units, dy_special=False, need_dx=True, seed=5):
    """dense_forward and dense_backward on both devices; compares every output."""
    kc, kh = dev.kernels("dense"), cpu.kernels("dense")
    r = np.random.default_rng(seed)
    x = r.standard_normal((n, d_in)).astype(dtype)
    w = r.standard_normal((d_in, units)).astype(dtype)
    bias = r.standard_normal(units).astype(dtype)
    dy = r.standard_normal((n, units)).astype(dtype)
    keep = code in codes.NEEDS_PREACTIVATION
    y, pre = np.empty((n, units), dtype), np.empty((n, units), dtype)
    kh.dense_forward(x, w, bias, code, pre if keep else y, y)
    if dy_special:  # non-finite gradients arriving where the unit is off (ReLU: dz must be 0 there)
        off = y <= 0
        assert off.any() and (~off).any()
        dy[off & (np.arange(units) % 2 == 0)] = np.inf
        dy[off & (np.arange(units) % 2 == 1)] = np.nan
    dx_, dw_, db_ = dev.asarray(x), dev.asarray(w), dev.asarray(bias)
    dev_y = dev.full((n, units), np.nan, dtype)
    dev_pre = dev.full((n, units), np.nan, dtype) if keep else dev_y
    kc.dense_forward(dx_, dw_, db_, code, dev_pre, dev_y)
    close(dev.to_host(dev_y), y, dtype, f"{NAMES[code]} dense_forward out")
    if keep:
        close(dev.to_host(dev_pre), pre, dtype, f"{NAMES[code]} dense_forward pre")
    pre_h = pre if keep else y

    dz, dk, dbias = np.empty((n, units), dtype), np.empty((d_in, units), dtype), np.empty(units, dtype)
    dxh = np.empty((n, d_in) if need_dx else (0, 0), dtype)
    kh.dense_backward(x, w, pre_h, y, dy, code, need_dx, dz, dk, dbias, dxh)
    g = {name: dev.full(a.shape, np.nan, dtype) for name, a in
         (("dz", dz), ("dkernel", dk), ("dbias", dbias), ("dx", dxh))}
    kc.dense_backward(dx_, dw_, dev_pre if keep else dev_y, dev_y, dev.asarray(dy), code, need_dx,
                      g["dz"], g["dkernel"], g["dbias"], g["dx"])
    for name, expected in (("dz", dz), ("dkernel", dk), ("dbias", dbias), ("dx", dxh)):
        close(dev.to_host(g[name]), expected, dtype, f"{NAMES[code]} dense_backward {name}")
    return dev.to_host(g["dz"]), y


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("code", ELEMENTWISE, ids=lambda c: NAMES[c])
def test_dense_matches_cpu(dev, cpu, code, dtype):
    run_dense(dev, cpu, code, dtype, n=6, d_in=5, units=4)


@pytest.mark.parametrize("code, dtype", [(codes.RELU, np.float32), (codes.GELU, np.float64)],
                         ids=["relu-float32", "gelu-float64"])
def test_dense_fused_passes_span_blocks(dev, cpu, code, dtype):
    """703 outputs: 3 blocks of bias + activation; 37 units: 2 column blocks (ragged) of the
    activation-gradient + bias-sum pass, 19 rows over its 8 row groups (ragged); ReLU with
    non-finite dy where the unit is off."""
    dz, y = run_dense(dev, cpu, code, dtype, n=19, d_in=3, units=37, dy_special=code == codes.RELU)
    if code == codes.RELU:  # every gradient finite: the masked non-finite dy never reached dz
        assert (dz[y <= 0] == 0).all() and np.isfinite(dz).all()


def test_dense_backward_without_dx(dev, cpu):
    run_dense(dev, cpu, codes.TANH, np.float32, n=4, d_in=3, units=2, need_dx=False)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rate", [0.0, 0.25, 0.5])
def test_dropout_matches_cpu(dev, cpu, dtype, rate):
    kc, kh = dev.kernels("dense"), cpu.kernels("dense")
    r = np.random.default_rng(6)
    x = r.standard_normal(300).astype(dtype)  # 2 blocks
    u = r.random(300, dtype=dtype)
    u[:3] = dtype(rate)  # u == rate keeps
    out = np.empty_like(x)
    kh.dropout_forward(x, u, dtype(rate), out)
    dout = dev.full(x.shape, np.nan, dtype)
    kc.dropout_forward(dev.asarray(x), dev.asarray(u), dtype(rate), dout)
    np.testing.assert_array_equal(dev.to_host(dout), out)
    dy = r.standard_normal(300).astype(dtype)
    dx = np.empty_like(dy)
    kh.dropout_backward(dy, u, dtype(rate), dx)
    ddx = dev.full(x.shape, np.nan, dtype)
    kc.dropout_backward(dev.asarray(dy), dev.asarray(u), rate, ddx)  # a Python float rate works too
    np.testing.assert_array_equal(dev.to_host(ddx), dx)
