"""CPU kernel scheduling: what kernels/cpu decides on its own behind the
device-neutral launch functions (chunks of images, thread blocks, which BLAS).

Every schedule must give the serial result: parallel blocks equal the serial
bodies exactly, chunked convolutions equal whole-batch ones, and the launchers
give the same result at one and at two threads. Also: the private jitted
bodies stay in float32 for float32 inputs.
"""
import numpy as np
import pytest

import nbmodel as nb
from nbmodel.kernels.codes import ELU, GELU, LINEAR, RELU, SIGMOID
from nbmodel.kernels.cpu import activations as act
from nbmodel.kernels.cpu import conv as kconv
from nbmodel.kernels.cpu import norm as knorm
from nbmodel.kernels.cpu import pooling as kpool
from nbmodel.kernels.cpu._jit import PAR_MIN
from nbmodel.kernels.reference import conv as ref
from nbmodel.kernels.reference import norm as nref
from nbmodel.kernels.reference import pooling as pref
from nbmodel.testing import float64_ops


def rng(seed=0):
    return np.random.default_rng(seed)


class Scratch:
    """The scratch protocol of the kernel contract, recording what was asked for."""

    def __init__(self):
        self.arrays = {}

    def __call__(self, key, shape, dtype=None):
        shape = tuple(int(s) for s in shape)
        arr = self.arrays.get(key)
        if arr is None or arr.shape != shape or (dtype is not None and arr.dtype != dtype):
            arr = np.empty(shape, dtype or np.float64)
            self.arrays[key] = arr
        return arr


@pytest.fixture
def threads():
    """Set the thread count for one test and restore it afterwards."""
    before = nb.get_num_threads()
    yield nb.set_num_threads
    nb.set_num_threads(before)


# ------------------------------------------------------------------ conv
# (n, h, w, c, filters, kh, kw, sh, sw, dh, dw, pads (t, b, l, r))
GEO = (5, 7, 6, 3, 4, 3, 3, 2, 1, 1, 1, (1, 1, 1, 1))
# one input channel: the patch matrix is kept transposed (conv module doc)
GEO_ONE = (5, 7, 6, 1, 4, 3, 3, 2, 1, 1, 1, (1, 1, 1, 1))
GEO_ONE_STRIDED = (4, 6, 9, 1, 3, 2, 3, 1, 2, 1, 2, (0, 1, 2, 1))


def _geometry(geo):
    h, w = geo[1:3]
    kh, kw, sh, sw, dh, dw, pads = geo[5:]
    oh = (h + pads[0] + pads[1] - (kh - 1) * dh - 1) // sh + 1
    ow = (w + pads[2] + pads[3] - (kw - 1) * dw - 1) // sw + 1
    return oh, ow


def _conv_case(geo, dtype, seed=0):
    n, h, w, c, f, kh, kw = geo[:7]
    x = rng(seed).standard_normal((n, h, w, c)).astype(dtype)
    kernel = (rng(seed + 1).standard_normal((kh, kw, c, f)) * 0.3).astype(dtype)
    bias = rng(seed + 2).standard_normal(f).astype(dtype)
    return x, kernel, bias


def _run_conv(x, kernel, bias, code, geo, for_backward=True, dy=None, use_bias=True, need_dx=True):
    """conv_forward (+ conv_backward when dy is given) through the launchers."""
    n, c, f, kh, kw, sh, sw, dh, dw, pads = geo[0], *geo[3:]
    oh, ow = _geometry(geo)
    k2 = kernel.reshape(kh * kw * c, f)
    rows = n * oh * ow
    scratch = Scratch()
    keep_pre = code == GELU
    y = np.empty((rows, f), x.dtype)
    pre = np.empty_like(y) if keep_pre else y
    kconv.conv_forward(x, k2, bias if use_bias else np.zeros_like(bias), code, keep_pre, kh, kw, sh, sw,
                       dh, dw, pads[0], pads[2], oh, ow, for_backward, scratch, pre, y)
    out = {"y": y.copy(), "scratch": scratch}
    if dy is not None:
        dk = np.empty_like(k2)
        db = np.empty(f, x.dtype) if use_bias else None
        dx = np.empty_like(x) if need_dx else None
        kconv.conv_backward(x, k2, pre, y, dy, code, kh, kw, sh, sw, dh, dw, pads[0], pads[2], oh, ow,
                            scratch, dk, db, dx)
        out.update(dk=dk.reshape(kernel.shape), db=db, dx=dx)
    return out


@pytest.mark.parametrize("code", [RELU, GELU, LINEAR])
@pytest.mark.parametrize("nblocks", [2, 3])
@pytest.mark.parametrize("case", [GEO, GEO_ONE])
def test_conv_thread_blocks_match_serial_bodies(code, nblocks, case):
    # blocks of whole images (5 images: uneven blocks) must give the serial result: the
    # forward exactly, the gradients up to the order in which block partials are summed
    n, c, f, kh, kw, sh, sw, dh, dw, pads = case[0], *case[3:]
    oh, ow = _geometry(case)
    x, kernel, bias = _conv_case(case, np.float64)
    k2 = kernel.reshape(-1, f)
    kk, rows = k2.shape[0], n * oh * ow
    geo = (kh, kw, sh, sw, dh, dw, pads[0], pads[2], oh, ow)
    keep = code == GELU
    y_s, y_b = np.empty((rows, f)), np.empty((rows, f))
    p_s, p_b = (np.empty_like(y_s), np.empty_like(y_b)) if keep else (y_s, y_b)
    cols_s, cols_b = np.empty((rows, kk)), np.empty((rows, kk))
    kconv._forward_images(x, k2, bias, code, keep, *geo, 0, n, 2, True, 0, cols_s, p_s, y_s)
    kconv._forward_blocks(x, k2, bias, code, keep, *geo, 2, True, nblocks, cols_b, p_b, y_b)
    if c > 1:  # one channel: each chunk's transposed patches in its own place (conv module doc)
        np.testing.assert_array_equal(cols_s, cols_b)
    np.testing.assert_array_equal(y_s, y_b)
    # inference: one chunk of patch rows per block, in the block's own slot
    y_i = np.empty_like(y_s)
    cols_i = np.empty((nblocks * 2 * oh * ow, kk))
    kconv._forward_blocks(x, k2, bias, code, keep, *geo, 2, False, nblocks, cols_i,
                          np.empty_like(y_i) if keep else y_i, y_i)
    np.testing.assert_array_equal(y_s, y_i)
    dy = rng(9).standard_normal((rows, f))
    dz_s = np.empty_like(dy) if code != LINEAR else dy
    db_s, part = np.zeros(f), np.empty(f)
    kconv._dz_rows(p_s, y_s, dy, code, True, 0, rows, dz_s, part, db_s)
    patches = np.empty((rows, kk))
    kconv._im2col_rows(x, *geo, 0, n * oh, patches, 0)
    dk_s = patches.T @ dz_s
    dx_s = np.empty_like(x)
    kconv._dx_images(dz_s, k2, *geo, 0, n, 2, 0, np.empty((2 * oh * ow, kk)), dx_s)
    dz_b = np.empty_like(dy) if code != LINEAR else dy
    dbp, dkp = np.empty((nblocks, f)), np.empty((nblocks, kk, f))
    dx_b = np.full_like(x, np.nan)  # every image is written
    kconv._backward_blocks(x, p_b, y_b, dy, code, True, True, cols_b, k2, *geo, 2, nblocks, dz_b,
                           np.empty((nblocks, f)), dbp, dkp, np.empty((nblocks * 2 * oh * ow, kk)), dx_b)
    db_b, dk_b = np.empty(f), np.empty((kk, f))
    kconv._sum_blocks(dbp, db_b)
    kconv._sum_blocks(dkp, dk_b)
    np.testing.assert_array_equal(dz_s, dz_b)
    np.testing.assert_array_equal(dx_s, dx_b)
    np.testing.assert_allclose(db_b, db_s, rtol=1e-13)
    np.testing.assert_allclose(dk_b, dk_s, rtol=1e-12, atol=1e-13)


def test_act_grad_sums_by_blocks_match_one_pass():
    # conv sums the bias gradient in blocks of 256 rows, dense in one pass: same dz, close sums
    pre = rng(3).standard_normal((600, 5))
    y = pre.copy()
    act.bias_act_rows(y, np.zeros(5), SIGMOID, False, 0, 600, y)
    dy = rng(4).standard_normal(pre.shape)
    dz1, dz2 = np.empty_like(dy), np.empty_like(dy)
    db1, db2, part = np.zeros(5), np.empty(5), np.empty(5)
    kconv._dz_rows(pre, y, dy, SIGMOID, True, 0, 600, dz1, part, db1)
    act.act_grad_bias(dy, pre, y, SIGMOID, dz2, db2)
    np.testing.assert_array_equal(dz1, dz2)
    np.testing.assert_allclose(db1, db2, rtol=1e-13)
    np.testing.assert_allclose(db1, (dy * y * (1 - y)).sum(0), rtol=1e-12)


@pytest.mark.parametrize("code", [RELU, SIGMOID, ELU, LINEAR])
def test_act_grad_rows_touch_only_their_rows(code):
    # the gradient runs as one flat loop over rows r0..r1 and the sums in blocks of
    # 4096 // features rows: a range that starts and ends inside blocks
    n, m, r0, r1 = 2000, 5, 7, 1900
    pre = rng(5).standard_normal((n, m))
    y = pre.copy()
    act.bias_act_rows(y, np.zeros(m), code, False, 0, n, y)
    dy = rng(6).standard_normal((n, m))
    deriv = {RELU: (pre > 0) * 1.0, SIGMOID: y * (1 - y), ELU: np.where(pre > 0, 1.0, y + 1), LINEAR: 1.0}[code]
    want = dy * deriv
    dz, dz_sum = np.full_like(dy, 7.0), np.full_like(dy, 7.0)
    acc = np.ones(m)
    act.act_grad_rows(pre, y, dy, code, r0, r1, dz)
    act.act_grad_sum_rows(pre, y, dy, code, r0, r1, dz_sum, acc)
    for out in (dz, dz_sum):
        np.testing.assert_allclose(out[r0:r1], want[r0:r1], rtol=1e-12, atol=1e-15)
        assert (out[:r0] == 7.0).all() and (out[r1:] == 7.0).all()
    np.testing.assert_allclose(acc, 1 + want[r0:r1].sum(0), rtol=1e-12)


@pytest.mark.parametrize("code", [RELU, GELU, LINEAR])
@pytest.mark.parametrize("geo", [GEO, GEO_ONE, GEO_ONE_STRIDED])
def test_conv_launchers_match_reference_in_chunks(code, geo, monkeypatch, threads):
    # at one thread the batch runs in chunks of images that fit CHUNK_BYTES: make them tiny
    threads(1)
    n, c, f, kh, kw, sh, sw, dh, dw, pads = geo[0], *geo[3:]
    x, kernel, bias = _conv_case(geo, np.float64)
    oh, ow = _geometry(geo)
    dy = rng(5).standard_normal((n * oh * ow, f))
    whole = _run_conv(x, kernel, bias, code, geo, dy=dy)
    per_image = oh * ow * kh * kw * c * 8
    monkeypatch.setattr(kconv, "CHUNK_BYTES", 2 * per_image)  # chunks of 2 images: 2 + 2 + 1 (+ ...)
    chunked = _run_conv(x, kernel, bias, code, geo, dy=dy)
    name = {RELU: "relu", GELU: "gelu", LINEAR: None}[code]
    ry = ref.conv_forward(x, kernel, bias, (sh, sw), pads, (dh, dw), name).reshape(-1, f)
    z = ref.conv_forward(x, kernel, bias, (sh, sw), pads, (dh, dw)).reshape(-1, f)
    if code == RELU:
        dz = dy * (z > 0)
    elif code == GELU:
        from scipy.special import erf

        dz = dy * (0.5 * (1 + erf(z / np.sqrt(2))) + z * np.exp(-z * z / 2) / np.sqrt(2 * np.pi))
    else:
        dz = dy
    rdx, rdk, rdb = ref.conv_backward(x, kernel, dz.reshape(n, oh, ow, f), (sh, sw), pads, (dh, dw))
    for res in (whole, chunked):
        np.testing.assert_allclose(res["y"], ry, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(res["dx"], rdx, rtol=1e-11, atol=1e-11)
        np.testing.assert_allclose(res["dk"], rdk, rtol=1e-11, atol=1e-11)
        np.testing.assert_allclose(res["db"], rdb, rtol=1e-11, atol=1e-11)
    # the whole patch matrix is kept for backward; dcols holds one chunk of images
    assert whole["scratch"].arrays["cols"].shape == (n * oh * ow, kh * kw * c)
    if c == 1:  # one channel: backward rebuilds the patches, transposed, in their own buffer
        assert whole["scratch"].arrays["cols_t"].shape == (kh * kw, n * oh * ow)
        assert chunked["scratch"].arrays["cols"].shape == (2 * oh * ow, kh * kw)
    else:
        assert "cols_t" not in whole["scratch"].arrays
    assert chunked["scratch"].arrays["dcols"].shape == (2 * oh * ow, kh * kw * c)


@pytest.mark.parametrize("kh, kw, sh, sw, dh, dw, pt, pl", [
    (3, 3, 1, 1, 1, 1, 1, 1), (1, 5, 1, 3, 1, 1, 0, 3), (3, 2, 2, 2, 2, 2, 2, 1), (2, 5, 1, 2, 1, 2, 0, 5)])
@pytest.mark.parametrize("w", [1, 6, 11])
def test_transposed_patches_are_the_patch_matrix_transposed(kh, kw, sh, sw, dh, dw, pt, pl, w):
    # one channel: each tap's row of the transposed patches, padding (zeros) at both
    # ends, strides and dilations, for output rows 3..9 written from column slot 5
    n, h = 5, 4
    oh = (h + 2 * pt - (kh - 1) * dh - 1) // sh + 1
    ow = (w + 2 * pl - (kw - 1) * dw - 1) // sw + 1
    assert oh >= 2 and ow >= 1
    x = rng(7).standard_normal((n, h, w, 1))
    rows = np.full((n * oh * ow, kh * kw), np.nan)
    kconv._im2col_rows(x, kh, kw, sh, sw, dh, dw, pt, pl, oh, ow, 0, n * oh, rows, 0)
    cols_t = np.full((kh * kw, 6 * ow + 5), np.nan)
    kconv._im2col_t_rows(x, kh, kw, sh, sw, dh, dw, pt, pl, oh, ow, 3, 9, cols_t, 3 * ow - 5)
    np.testing.assert_array_equal(cols_t[:, 5:], rows[3 * ow:9 * ow].T)
    assert np.isnan(cols_t[:, :5]).all()


@pytest.mark.parametrize("geo", [GEO, GEO_ONE])
def test_conv_inference_keeps_only_one_chunk(geo, monkeypatch, threads):
    threads(1)
    c, kh, kw = geo[3], geo[5], geo[6]
    oh, ow = _geometry(geo)
    x, kernel, bias = _conv_case(geo, np.float32)
    monkeypatch.setattr(kconv, "CHUNK_BYTES", 2 * oh * ow * kh * kw * c * 4)
    train = _run_conv(x, kernel, bias, RELU, geo, for_backward=True)
    infer = _run_conv(x, kernel, bias, RELU, geo, for_backward=False)
    np.testing.assert_array_equal(train["y"], infer["y"])
    assert infer["scratch"].arrays["cols"].shape == (2 * oh * ow, kh * kw * c)
    assert infer["scratch"].arrays["cols"].dtype == np.float32


def test_conv_backward_without_bias_or_input_gradient():
    geo = GEO
    n, f = geo[0], geo[4]
    oh, ow = _geometry(geo)
    x, kernel, bias = _conv_case(geo, np.float64)
    dy = rng(6).standard_normal((n * oh * ow, f))
    full = _run_conv(x, kernel, bias, ELU, geo, dy=dy, use_bias=False)
    bare = _run_conv(x, kernel, bias, ELU, geo, dy=dy, use_bias=False, need_dx=False)
    assert bare["db"] is None and bare["dx"] is None
    np.testing.assert_array_equal(full["dk"], bare["dk"])
    assert "dcols" not in bare["scratch"].arrays


@pytest.mark.parametrize("code", [RELU, SIGMOID, LINEAR])
def test_conv_launchers_same_at_one_and_two_threads(code, threads):
    # large enough that two threads run the parallel passes (>= PAR_MIN elements) and
    # the weight gradient goes through numba's BLAS instead of NumPy's
    geo = (8, 16, 16, 8, 6, 3, 3, 1, 1, 1, 1, (1, 1, 1, 1))
    n, c, f, kh, kw = geo[0], *geo[3:7]
    oh, ow = _geometry(geo)
    assert n * oh * ow * kh * kw * c >= kconv.PAR_MIN
    x, kernel, bias = _conv_case(geo, np.float64)
    dy = rng(7).standard_normal((n * oh * ow, f))
    threads(1)
    one = _run_conv(x, kernel, bias, code, geo, dy=dy)
    threads(2)
    two = _run_conv(x, kernel, bias, code, geo, dy=dy)
    for key in ("y", "dx", "dk", "db"):
        np.testing.assert_allclose(one[key], two[key], rtol=1e-12, atol=1e-12)


def test_conv_private_bodies_stay_float32():
    x = rng().standard_normal((2, 5, 5, 2)).astype(np.float32)
    k2 = rng(1).standard_normal((18, 3)).astype(np.float32)
    b = np.zeros(3, np.float32)
    cols = np.empty((50, 18), np.float32)
    y = np.empty((50, 3), np.float32)
    geo = (3, 3, 1, 1, 1, 1, 1, 1, 5, 5)
    assert float64_ops(kconv._forward_images, x, k2, b, RELU, False, *geo, 0, 2, 1, True, 0, cols, y, y) == []
    pre = np.empty_like(y)
    assert float64_ops(kconv._forward_blocks, x, k2, b, GELU, True, *geo, 1, True, 2, cols, pre, y) == []
    dz, db, part = np.empty_like(y), np.zeros_like(b), np.empty_like(b)
    assert float64_ops(kconv._dz_rows, pre, y, y, GELU, True, 0, 50, dz, part, db) == []
    dcols, dx = np.empty((25, 18), np.float32), np.empty_like(x)
    assert float64_ops(kconv._dx_images, dz, k2, *geo, 0, 2, 1, 0, dcols, dx) == []
    parts, dkp = np.empty((2, 3), np.float32), np.empty((2, 18, 3), np.float32)
    assert float64_ops(kconv._backward_blocks, x, pre, y, y, GELU, True, True, cols, k2, *geo, 1, 2, dz, parts,
                       parts, dkp, cols, dx) == []
    # one channel: transposed patches
    x1 = x[..., :1].copy()
    k1 = k2[:9].copy()
    assert float64_ops(kconv._forward_images, x1, k1, b, RELU, False, *geo, 0, 2, 1, False, 0, cols, y, y) == []
    assert float64_ops(kconv._backward_blocks, x1, pre, y, y, GELU, True, True, cols, k1, *geo, 1, 2, dz, parts,
                       parts, np.empty((2, 9, 3), np.float32), np.empty((50, 9), np.float32), x1.copy()) == []


def test_shared_row_pieces_stay_float32():
    z = rng().standard_normal((6, 5)).astype(np.float32)
    b = np.zeros(5, np.float32)
    out, pre, dz, acc = z.copy(), np.empty_like(z), np.empty_like(z), np.zeros(5, np.float32)
    assert float64_ops(act.bias_act_rows, out, b, GELU, True, 0, 6, pre) == []
    assert float64_ops(act.act_grad_rows, pre, out, z, GELU, 0, 6, dz) == []
    assert float64_ops(act.act_grad_sum_rows, pre, out, z, GELU, 0, 6, dz, acc) == []


# --------------------------------------------------------------- feed-forward

@pytest.mark.parametrize("code", [1, 4])  # relu, gelu
def test_ffn_backward_row_blocks_match_serial(code, monkeypatch, threads):
    # 2 threads, thresholds lowered so that a small case runs in blocks of rows
    from scipy.special import erf

    from nbmodel.kernels.cpu import attention as K

    x = rng().standard_normal((37, 6))
    w1, w2 = rng(1).standard_normal((6, 9)), rng(2).standard_normal((9, 6))
    pre = x @ w1 + rng(3).standard_normal(9)
    hid = np.maximum(pre, 0) if code == 1 else pre * 0.5 * (1 + erf(pre / np.sqrt(2)))
    dout = rng(4).standard_normal((37, 6))
    outs = {}
    for name, par_min in (("serial", 1 << 40), ("blocks", 0)):
        monkeypatch.setattr(K, "FFN_PAR_MIN", par_min)
        monkeypatch.setattr(K, "FFN_MIN_BLOCK_ROWS", 4)
        threads(2)
        got = [np.full_like(a, np.nan) for a in (hid, w1, w1[0], w2, w2[0], x)]
        K.ffn_backward(x, w1, w2, pre, hid, dout, code, True, *got)
        outs[name] = got
    dz_ref = (dout @ w2.T) * ((pre > 0) if code == 1 else
                              0.5 * (1 + erf(pre / np.sqrt(2))) + pre * np.exp(-pre ** 2 / 2) / np.sqrt(2 * np.pi))
    want = [dz_ref, x.T @ dz_ref, dz_ref.sum(0), hid.T @ dout, dout.sum(0), dz_ref @ w1.T]
    for a, b, c in zip(outs["serial"], outs["blocks"], want):
        np.testing.assert_allclose(b, a, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(b, c, rtol=1e-10, atol=1e-10)

# --------------------------------------------------------------- pooling
def test_pool_threaded_passes_match_serial():
    # blocks of images across threads must give exactly the serial result
    x = rng().standard_normal((5, 7, 6, 3))
    y_s, y_p = np.zeros((5, 4, 3, 3)), np.zeros((5, 4, 3, 3))
    a_s, a_p = np.zeros(y_s.shape, np.int32), np.zeros(y_s.shape, np.int32)
    kpool._max_pool_forward(x, 3, 3, 2, 2, 1, 1, 0, 5, y_s, a_s)
    kpool._max_pool_forward_par(x, 3, 3, 2, 2, 1, 1, y_p, a_p, 2)
    np.testing.assert_array_equal(y_s, y_p)
    np.testing.assert_array_equal(a_s, a_p)
    dx_s, dx_p = np.ones_like(x), np.ones_like(x)
    kpool._max_pool_backward(y_s, a_s, 3, 3, 2, 2, 1, 1, 0, 5, dx_s)
    kpool._max_pool_backward_par(y_s, a_s, 3, 3, 2, 2, 1, 1, dx_p, 3)
    np.testing.assert_array_equal(dx_s, dx_p)
    # windows that tile the input (each input written once)
    t_s, t_p = np.zeros((5, 3, 3, 3)), np.zeros((5, 3, 3, 3))
    b_s, b_p = np.zeros(t_s.shape, np.int32), np.zeros(t_s.shape, np.int32)
    kpool._max_pool_forward(x, 2, 2, 2, 2, 0, 0, 0, 5, t_s, b_s)
    kpool._max_pool_forward_par(x, 2, 2, 2, 2, 0, 0, t_p, b_p, 2)
    np.testing.assert_array_equal(b_s, b_p)
    dx_s, dx_p = np.full_like(x, np.nan), np.full_like(x, np.nan)
    kpool._max_pool_backward(t_s, b_s, 2, 2, 2, 2, 0, 0, 0, 5, dx_s)
    kpool._max_pool_backward_par(t_s, b_s, 2, 2, 2, 2, 0, 0, dx_p, 3)
    np.testing.assert_array_equal(dx_s, dx_p)
    np.testing.assert_array_equal(dx_s, pref.max_pool_backward(x, t_s, (2, 2), (2, 2), (0, 0, 0, 0)))
    kpool._avg_pool_forward(x, 3, 3, 2, 2, 1, 1, 0, 5, y_s)
    kpool._avg_pool_forward_par(x, 3, 3, 2, 2, 1, 1, y_p, 2)
    np.testing.assert_array_equal(y_s, y_p)
    kpool._avg_pool_backward(y_s, 3, 3, 2, 2, 1, 1, 0, 5, dx_s)
    kpool._avg_pool_backward_par(y_s, 3, 3, 2, 2, 1, 1, dx_p, 3)
    np.testing.assert_array_equal(dx_s, dx_p)


def test_pool_launchers_same_at_one_and_two_threads(threads):
    # 16 * 32 * 32 * 16 elements >= PAR_MIN: two threads split the images
    x = rng(1).standard_normal((16, 32, 32, 16))
    assert x.size >= PAR_MIN
    pads = (1, 1, 1, 1)
    dy = rng(2).standard_normal((16, 16, 16, 16))
    results = []
    for t in (1, 2):
        threads(t)
        y_max, arg = np.empty((16, 16, 16, 16)), np.empty((16, 16, 16, 16), np.int32)
        y_avg = np.empty_like(y_max)
        dx_max, dx_avg = np.empty_like(x), np.empty_like(x)
        kpool.max_pool_forward(x, 3, 3, 2, 2, 1, 1, y_max, arg)
        kpool.max_pool_backward(dy, arg, 3, 3, 2, 2, 1, 1, dx_max)
        kpool.avg_pool_forward(x, 3, 3, 2, 2, 1, 1, y_avg)
        kpool.avg_pool_backward(dy, 3, 3, 2, 2, 1, 1, dx_avg)
        results.append((y_max, arg, dx_max, y_avg, dx_avg))
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(results[0][0], pref.max_pool_forward(x, (3, 3), (2, 2), pads), rtol=1e-15)
    np.testing.assert_allclose(results[0][3], pref.avg_pool_forward(x, (3, 3), (2, 2), pads), rtol=1e-13)
    np.testing.assert_allclose(results[0][4], pref.avg_pool_backward(x, dy, (3, 3), (2, 2), pads),
                               rtol=1e-12, atol=1e-13)


def test_pool_private_bodies_stay_float32():
    x = rng().standard_normal((2, 5, 5, 3)).astype(np.float32)
    y = np.empty((2, 3, 3, 3), np.float32)
    arg = np.empty(y.shape, np.int32)
    assert float64_ops(kpool._max_pool_forward, x, 2, 2, 2, 2, 0, 0, 0, 2, y, arg) == []
    assert float64_ops(kpool._avg_pool_forward, x, 2, 2, 2, 2, 0, 0, 0, 2, y) == []
    assert float64_ops(kpool._avg_pool_backward, y, 2, 2, 2, 2, 0, 0, 0, 2, x) == []


# ------------------------------------------------------------- layer norm
@pytest.mark.parametrize("scale,center", [(True, True), (True, False), (False, True)])
def test_layer_norm_blocks_match_serial_bodies(scale, center):
    n, d = 7, 5  # 3 uneven blocks
    x, a, dy, dyb = (rng(i).standard_normal((n, d)) for i in range(4))
    gamma, beta = rng(5).standard_normal(d), rng(6).standard_normal(d)
    out = {k: np.empty((n, d)) for k in ("y_s", "y_p", "s_s", "s_p", "dx_s", "dx_p")}
    mean_s, rstd_s, mean_p, rstd_p = (np.empty(n) for _ in range(4))
    knorm._ln_forward_rows(x, gamma, beta, 1e-3, scale, center, out["y_s"], mean_s, rstd_s, 0, n)
    knorm._ln_forward_par(x, gamma, beta, 1e-3, scale, center, out["y_p"], mean_p, rstd_p, 3)
    np.testing.assert_array_equal(out["y_s"], out["y_p"])
    np.testing.assert_array_equal(rstd_s, rstd_p)
    knorm._add_ln_forward_rows(x, a, gamma, beta, 1e-3, out["s_s"], out["y_s"], mean_s, rstd_s, 0, n)
    knorm._add_ln_forward_par(x, a, gamma, beta, 1e-3, out["s_p"], out["y_p"], mean_p, rstd_p, 3)
    np.testing.assert_array_equal(out["y_s"], out["y_p"])
    np.testing.assert_array_equal(out["s_s"], out["s_p"])
    for has_dyb in (False, True):
        # unused parameter gradients are empty arrays and must stay untouched
        grads_s = [np.empty(d if scale else 0), np.empty(d if center else 0)]
        grads_p = [np.empty(d if scale else 0), np.empty(d if center else 0)]
        knorm._ln_backward_rows(x, gamma, mean_s, rstd_s, dy, dyb, has_dyb, scale, center, out["dx_s"], *grads_s,
                                0, n)
        knorm._ln_backward_par(x, gamma, mean_s, rstd_s, dy, dyb, has_dyb, scale, center, out["dx_p"], *grads_p, 3)
        np.testing.assert_array_equal(out["dx_s"], out["dx_p"])
        for g_s, g_p in zip(grads_s, grads_p):  # block sums added in another order
            np.testing.assert_allclose(g_s, g_p, rtol=1e-13, atol=1e-14)


def test_layer_norm_launchers_same_at_one_and_two_threads(threads, monkeypatch):
    n, d = 64, 8
    monkeypatch.setattr(knorm, "LN_PAR_MIN", n * d)  # two threads split the rows
    calls = []
    for name in ("_ln_forward_par", "_add_ln_forward_par", "_ln_backward_par"):
        monkeypatch.setattr(knorm, name, lambda *a, _f=getattr(knorm, name): calls.append(1) or _f(*a))
    x, a, dy, dyb = (rng(i).standard_normal((n, d)) for i in range(4))
    gamma, beta = rng(5).standard_normal(d), rng(6).standard_normal(d)
    results = []
    for t in (1, 2):
        threads(t)
        y, s, ys, dx, dxs = (np.empty((n, d)) for _ in range(5))
        mean, rstd, mean2, rstd2 = (np.empty(n) for _ in range(4))
        dg, db, dg2, db2 = (np.empty(d) for _ in range(4))
        knorm.layer_norm_forward(x, gamma, beta, 1e-3, True, True, y, mean, rstd)
        knorm.add_layer_norm_forward(x, a, gamma, beta, 1e-3, s, ys, mean2, rstd2)
        knorm.layer_norm_backward(x, gamma, mean, rstd, dy, True, True, dx, dg, db)
        knorm.layer_norm_backward_sum(s, gamma, mean2, rstd2, dy, dyb, dxs, dg2, db2)
        results.append((y, s, ys, dx, dxs, dg, db, dg2, db2))
        assert len(calls) == (4 if t == 2 else 0)  # the blocks ran at two threads only
    for a_, b_ in zip(*results):
        np.testing.assert_allclose(a_, b_, rtol=1e-12, atol=1e-12)
    y, s, ys, dx, dxs, dg, db, dg2, db2 = results[1]
    np.testing.assert_allclose(y, nref.layer_norm_forward(x, gamma, beta, 1e-3), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(ys, nref.layer_norm_forward(x + a, gamma, beta, 1e-3), rtol=1e-12, atol=1e-12)
    for got, want in zip((dx, dg, db), nref.layer_norm_backward(x, gamma, dy, 1e-3)):
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10)
    for got, want in zip((dxs, dg2, db2), nref.layer_norm_backward(x + a, gamma, dy + dyb, 1e-3)):
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10)


# --------------------------------------------------------------- attention
@pytest.mark.parametrize("rate", [0.0, 0.3])
@pytest.mark.parametrize("keep", [True, False])
def test_attention_core_over_threads_matches_serial(rate, keep):
    # the (batch, head) blocks over threads, each with its own workspaces, give the serial
    # result exactly: every block is computed alone and writes its own rows and columns
    from nbmodel.kernels.cpu import attention as katt

    batch, heads, tq, tk, kd, vd = 3, 2, 5, 4, 3, 2
    r = rng(11)
    qh, kh = r.standard_normal((batch, heads, tq, kd)), r.standard_normal((batch, heads, tk, kd))
    vh = r.standard_normal((batch, heads, tk, vd))
    mask = r.random((batch, 1, tq, tk)) > 0.3
    u = r.random((batch, heads, tq, tk))
    probs_shape = (batch, heads, tq, tk) if keep else (1, 1, tq, tk)
    o_s, o_p = np.empty((batch * tq, heads * vd)), np.empty((batch * tq, heads * vd))
    p_s, p_p = np.zeros(probs_shape), np.zeros(probs_shape)
    katt._attend_forward(qh, kh, vh, mask, True, False, keep, rate, u, p_s, np.empty((tq, tk)),
                         np.empty((tq, vd)), o_s)
    katt._attend_forward_par(qh, kh, vh, mask, True, False, keep, rate, u, p_p, o_p)
    np.testing.assert_array_equal(o_s, o_p)
    if not keep:
        return
    np.testing.assert_array_equal(p_s, p_p)
    do2 = r.standard_normal(o_s.shape)
    ds = r.standard_normal((batch, heads, tq, tk))
    shapes = [(batch * t, heads * d) for t, d in ((tq, kd), (tk, kd), (tk, vd))]  # dQ, dK, dV
    g_s = [np.full(s, np.nan) for s in shapes]
    g_p = [np.full(s, np.nan) for s in shapes]
    ws = (np.empty((tq, vd)), np.empty((tq, tk)), np.empty((tq, tk)), np.empty((tk, vd)), np.empty((tq, kd)),
          np.empty((tk, kd)))
    katt._attend_backward(qh, kh, vh, p_s, rate, u, do2, ds, True, 0.5, *ws, g_s[0], 0, g_s[1], 0, g_s[2], 0)
    katt._attend_backward_par(qh, kh, vh, p_p, rate, u, do2, ds, True, 0.5, g_p[0], 0, g_p[1], 0, g_p[2], 0)
    for a, b in zip(g_s, g_p):
        assert not np.isnan(a).any()
        np.testing.assert_array_equal(a, b)
