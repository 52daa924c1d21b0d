"""Conv family on CUDA: Conv1D/Conv2D forward and backward, channels_last
(see nbmodel/kernels/contract.py and the CPU twin nbmodel/kernels/cpu/conv.py,
whose layout this keeps: x (n, h, w, c), the kernel as a (kh*kw*c, filters)
matrix, a 1-D convolution as a 2-D one with h = kh = 1).

Each pass is the CPU twin's im2col + GEMM, with the products in ``gemm``
(cuBLAS on a GPU, the own tiled kernels otherwise) and the passes around
them as kernels:

- ``_im2col``: one thread per element of the patch matrix ``cols``
  (rows (n, oh, ow), columns (ki, kj, c)); neighbouring threads read
  neighbouring channels (coalesced), padding reads as zero.
- forward: out = cols @ kernel, then dense's fused ``bias_act`` (one thread
  per output element).
- backward: ``_act_grad``, one thread per element: dz = dy * act'(pre, y)
  through the CPU's ``act_grad`` (skipped for a linear activation: dz is dy).
  The bias gradient is two deterministic ``column_sums``: over the batch for
  each (position, filter), then over positions. Dense's fused
  act-grad + bias kernel would run one block per 32 filters down all
  n*oh*ow rows: too few threads for a convolution's tall dz.
  dkernel = cols.T @ dz, one GEMM over every output pixel.
- dx: dcols = dz @ kernel.T, then ``_col2im``, one thread per element of dx
  gathering its patch gradients from dcols (no atomics: deterministic, and in
  the CPU twin's order of additions).

In training the forward keeps the whole patch matrix in scratch("cols") for
the weight gradient, as the CPU twin does. Inference, and dx in backward,
run in chunks of whole images whose patch rows fit in CHUNK_BYTES, so the
patch buffers stay bounded for large batches.

Depthwise convolution (the kernel as (kh*kw, c*M), output channel ch*M + m
from input channel ch) runs direct loops, no GEMM, no atomics:

- ``_dw_forward``: one thread per output element, its taps in the CPU's
  order (ki, kj), then bias and activation (the dense ``act_scalar``);
- ``_dw_kernel_grad``: one thread per (chunk of DW_PIXELS output pixels,
  tap, output channel) summing its chunk in pixel order into a partial,
  then ``column_sums`` over the chunks (deterministic; neighbouring threads
  read neighbouring channels);
- ``_dw_input_grad``: one thread per element of dx gathering the (output
  pixel, tap) pairs that read it, taps in the CPU's order;
- dz and dbias as the convolution: ``_act_grad`` and two ``column_sums``.
"""
from __future__ import annotations

from collections.abc import Callable

from ..codes import LINEAR
from ..cpu.activations import act_grad, act_scalar
from .array import nhwc_index
from .dense import bias_act
from .gemm import FLOATS, column_sums, gemm
from .runtime import cuda, kernel, launch_1d, types

CHUNK_BYTES = 1 << 26  # patch rows per chunk outside training (64 MiB: big products, bounded memory)


def _one(t):
    return t[::1]


def _mat(t):
    return t[:, ::1]


def _img(t):
    return t[:, :, :, ::1]


def _flat(a):
    return a.reshape(a.size)


_I = types.int64
_GEOMETRY = (_I,) * 10  # kh, kw, sh, sw, dh, dw, pt, pl, oh, ow


@kernel(*[(_img(t), *_GEOMETRY, _mat(t)) for t in FLOATS])
def _im2col(x, kh, kw, sh, sw, dh, dw, pt, pl, oh, ow, cols):
    """cols[(b*oh + i)*ow + j, (ki*kw + kj)*c + ch] = x[b, i*sh + ki*dh - pt, j*sw + kj*dw - pl, ch],
    zero in the padding; one thread per element of cols."""
    e = cuda.grid(1)
    if e < cols.size:
        h = x.shape[1]
        w = x.shape[2]
        c = x.shape[3]
        kk = cols.shape[1]
        r = e // kk
        q = e - r * kk
        ch = q % c
        kj = (q // c) % kw
        ki = q // (c * kw)
        j = r % ow
        i = (r // ow) % oh
        b = r // (ow * oh)
        ih = i * sh + ki * dh - pt
        iw = j * sw + kj * dw - pl
        if ih >= 0 and ih < h and iw >= 0 and iw < w:
            cols[r, q] = x[b, ih, iw, ch]
        else:
            cols[r, q] = x.dtype.type(0)


@kernel(*[(_mat(t), *_GEOMETRY, _img(t)) for t in FLOATS])
def _col2im(dcols, kh, kw, sh, sw, dh, dw, pt, pl, oh, ow, dx):
    """dx[b, ih, iw, ch] = the sum of the dcols entries of every (output pixel, kernel tap)
    that read x[b, ih, iw, ch]; one thread per element of dx. Taps run from the last to
    the first, so the output pixels come in ascending order: the CPU's order of additions."""
    e = cuda.grid(1)
    if e < dx.size:
        b, ih, iw, ch = nhwc_index(e, dx)
        c = dx.shape[3]
        acc = dx.dtype.type(0)
        for ki in range(kh - 1, -1, -1):
            t = ih + pt - ki * dh  # = i * sh for the output row i that reads ih through tap ki
            if t < 0 or t % sh != 0 or t // sh >= oh:
                continue
            row = (b * oh + t // sh) * ow
            for kj in range(kw - 1, -1, -1):
                u = iw + pl - kj * dw
                if u < 0 or u % sw != 0 or u // sw >= ow:
                    continue
                acc += dcols[row + u // sw, (ki * kw + kj) * c + ch]
        dx[b, ih, iw, ch] = acc


@kernel(*[(_one(t), _one(t), _one(t), _I, _one(t)) for t in FLOATS])
def _act_grad(dy, pre, y, code, dz):
    """dz = dy * act'(pre, y) over flat arrays (ReLU as a select, as on the CPU)."""
    i = cuda.grid(1)
    if i < dz.size:
        dz[i] = act_grad(code, dy[i], pre[i], y[i], dz.dtype.type(1))


def _chunk_images(n: int, oh: int, ow: int, kk: int, itemsize: int) -> int:
    """Images per chunk: as many as keep one chunk's patch rows within CHUNK_BYTES (at least one)."""
    return max(1, min(n, CHUNK_BYTES // max(1, oh * ow * kk * itemsize)))


def _im2col_launch(x, geometry, cols):
    if cols.size:
        _im2col[launch_1d(cols.size)](x, *geometry, cols)


# ------------------------------------------------------------ launchers
def conv_forward(x, kernel, bias, code: int, keep_pre: bool, kh: int, kw: int, sh: int, sw: int, dh: int, dw: int,
                 pt: int, pl: int, oh: int, ow: int, for_backward: bool, scratch: Callable, pre, out) -> None:
    """out = act(conv(x, kernel) + bias) as (n*oh*ow, filters) rows (NHWC order).

    x (n, h, w, c); kernel (kh*kw*c, filters); bias (filters,), zeros for a
    layer without one; strides sh, sw, dilations dh, dw, padding before pt,
    pl; output size oh, ow. keep_pre: pre = conv + bias as well (pre may be
    ``out`` otherwise). for_backward: the whole patch matrix stays in
    scratch("cols", (n*oh*ow, kh*kw*c)) for conv_backward; otherwise patches
    go through a buffer of one chunk of images.
    """
    n = x.shape[0]
    kk = kernel.shape[0]
    per = oh * ow
    geometry = (kh, kw, sh, sw, dh, dw, pt, pl, oh, ow)
    chunk = max(1, n) if for_backward else _chunk_images(n, oh, ow, kk, x.dtype.itemsize)
    cols = scratch("cols", (min(n, chunk) * per, kk), x.dtype)
    for n0 in range(0, n, chunk):
        n1 = min(n, n0 + chunk)
        r0, r1 = n0 * per, n1 * per
        part = cols[:r1 - r0]
        _im2col_launch(x[n0:n1], geometry, part)
        gemm(part, kernel, out[r0:r1])
        bias_act(out[r0:r1], bias, code, keep_pre, pre[r0:r1])


def _dz_and_bias(pre, y, dy, code, n, scratch, dbias):
    """dz = dy * act'(pre, y) (dy itself for a linear activation) and, unless dbias is None,
    dbias = the column sums of dz (n images of rows): over the batch into one column per
    (position, filter), then over positions. A backward pass's first step, for every
    convolution here."""
    if code == LINEAR:
        dz = dy
    else:
        dz = scratch("dz", tuple(dy.shape), dy.dtype)
        if dz.size:
            _act_grad[launch_1d(dz.size)](_flat(dy), _flat(pre), _flat(y), int(code), _flat(dz))
    if dbias is not None:
        per_image = dz.size // n if n else 0
        part = scratch("bias_part", (per_image,), dy.dtype)
        column_sums(dz.reshape(n, per_image), part)
        column_sums(part.reshape(-1, dz.shape[1]), dbias)
    return dz


def conv_backward(x, kernel, pre, y, dy, code: int, kh: int, kw: int, sh: int, sw: int, dh: int, dw: int, pt: int,
                  pl: int, oh: int, ow: int, scratch: Callable, dkernel, dbias, dx) -> None:
    """Gradients of conv_forward (run with for_backward=True on the same x and
    scratch): dkernel (kh*kw*c, filters), dbias (filters,) unless None, dx
    (n, h, w, c) unless None, from dy (n*oh*ow, filters), already through the
    softmax backward for a softmax layer (code is then LINEAR). Work buffers
    come from scratch (keys "cols", "dz", "bias_part", "dcols")."""
    n = x.shape[0]
    kk, f = kernel.shape
    per = oh * ow
    dtype = x.dtype
    cols = scratch("cols", (n * per, kk), dtype)
    dz = _dz_and_bias(pre, y, dy, code, n, scratch, dbias)
    gemm(cols, dz, dkernel, trans_a=True)
    if dx is None:
        return
    geometry = (kh, kw, sh, sw, dh, dw, pt, pl, oh, ow)
    chunk = _chunk_images(n, oh, ow, kk, dtype.itemsize)
    dcols = scratch("dcols", (min(n, chunk) * per, kk), dtype)
    for n0 in range(0, n, chunk):
        n1 = min(n, n0 + chunk)
        r0, r1 = n0 * per, n1 * per
        part = dcols[:r1 - r0]
        gemm(dz[r0:r1], kernel, part, trans_b=True)
        dxc = dx[n0:n1]
        if dxc.size:
            _col2im[launch_1d(dxc.size)](part, *geometry, dxc)


# ------------------------------------------------------------ transposed convolution
# The CPU twin's decomposition: forward is a convolution's dx pass (dcols = x @ kernel.T,
# _col2im into the output) then bias + activation; backward is dz, the bias sums, a
# convolution forward of dz (_im2col, cols @ kernel: dx) and cols.T @ x (dkernel).
def conv_transpose_forward(x, kernel, bias, code: int, keep_pre: bool, kh: int, kw: int, sh: int, sw: int,
                           dh: int, dw: int, pt: int, pl: int, oh: int, ow: int, scratch: Callable, pre,
                           out) -> None:
    """out = act(conv_transpose(x, kernel) + bias) as (n*oh*ow, filters) rows; see the CPU twin.
    Patch gradients go through scratch("dcols"), chunks of whole images."""
    n, h, w, c = x.shape
    kk, f = kernel.shape[0], out.shape[1]
    per, per_out = h * w, oh * ow
    geometry = (kh, kw, sh, sw, dh, dw, pt, pl, h, w)
    chunk = _chunk_images(n, h, w, kk, x.dtype.itemsize)
    dcols = scratch("dcols", (min(n, chunk) * per, kk), x.dtype)
    x2 = x.reshape(n * per, c)
    out4 = out.reshape(n, oh, ow, f)
    for n0 in range(0, n, chunk):
        n1 = min(n, n0 + chunk)
        part = dcols[:(n1 - n0) * per]
        gemm(x2[n0 * per:n1 * per], kernel, part, trans_b=True)
        yc = out4[n0:n1]
        if yc.size:
            _col2im[launch_1d(yc.size)](part, *geometry, yc)
        r0, r1 = n0 * per_out, n1 * per_out
        bias_act(out[r0:r1], bias, code, keep_pre, pre[r0:r1])


def conv_transpose_backward(x, kernel, pre, y, dy, code: int, kh: int, kw: int, sh: int, sw: int, dh: int,
                            dw: int, pt: int, pl: int, oh: int, ow: int, scratch: Callable, dkernel, dbias,
                            dx) -> None:
    """Gradients of conv_transpose_forward: dkernel (kh*kw*filters, c), dbias unless None, dx
    (n, h, w, c) unless None, from dy (n*oh*ow, filters). Work buffers from scratch (keys
    "cols", "dz", "bias_part")."""
    n, h, w, c = x.shape
    kk, f = kernel.shape[0], dy.shape[1]
    dtype = x.dtype
    dz = _dz_and_bias(pre, y, dy, code, n, scratch, dbias)
    cols = scratch("cols", (n * h * w, kk), dtype)
    _im2col_launch(dz.reshape(n, oh, ow, f), (kh, kw, sh, sw, dh, dw, pt, pl, h, w), cols)
    gemm(cols, x.reshape(n * h * w, c), dkernel, trans_a=True)
    if dx is not None:
        gemm(cols, kernel, dx.reshape(n * h * w, c))


# ------------------------------------------------------------ depthwise convolution
DW_PIXELS = 64  # output pixels per partial sum of the weight gradient


@kernel(*[(_img(t), _mat(t), _one(t), _I, types.boolean, *_GEOMETRY, _mat(t), _mat(t)) for t in FLOATS])
def _dw_forward(x, k2, bias, code, keep_pre, kh, kw, sh, sw, dh, dw, pt, pl, oh, ow, pre, out):
    """out[r, o] = act(sum over taps of x[b, ih, iw, o // M] * k2[tap, o] + bias[o]), r = (b*oh + i)*ow + j;
    pre = the sum + bias as well when keep_pre (pre may be out). One thread per output element."""
    e = cuda.grid(1)
    if e < out.size:
        h = x.shape[1]
        w = x.shape[2]
        c = x.shape[3]
        cm = out.shape[1]
        r = e // cm
        o = e - r * cm
        ch = o // (cm // c)
        j = r % ow
        i = (r // ow) % oh
        b = r // (ow * oh)
        acc = out.dtype.type(0)
        for ki in range(kh):
            ih = i * sh + ki * dh - pt
            if ih >= 0 and ih < h:
                for kj in range(kw):
                    iw = j * sw + kj * dw - pl
                    if iw >= 0 and iw < w:
                        acc += x[b, ih, iw, ch] * k2[ki * kw + kj, o]
        v = acc + bias[o]
        if keep_pre:
            pre[r, o] = v
        out[r, o] = act_scalar(code, v, out.dtype.type(1))


@kernel(*[(_img(t), _mat(t), *_GEOMETRY, _I, _mat(t)) for t in FLOATS])
def _dw_kernel_grad(x, dz, kh, kw, sh, sw, dh, dw, pt, pl, oh, ow, pixels, part):
    """part[g, tap*cm + o] = sum over output pixels r of chunk g (``pixels`` each, in order) of
    x[b, ih, iw, o // M] * dz[r, o]; one thread per element of part."""
    e = cuda.grid(1)
    if e < part.size:
        h = x.shape[1]
        w = x.shape[2]
        c = x.shape[3]
        cm = dz.shape[1]
        kk = part.shape[1]
        g = e // kk
        q = e - g * kk
        tap = q // cm
        o = q - tap * cm
        ch = o // (cm // c)
        ki = tap // kw
        kj = tap - ki * kw
        r1 = min(dz.shape[0], (g + 1) * pixels)
        acc = part.dtype.type(0)
        for r in range(g * pixels, r1):
            j = r % ow
            i = (r // ow) % oh
            b = r // (ow * oh)
            ih = i * sh + ki * dh - pt
            iw = j * sw + kj * dw - pl
            if ih >= 0 and ih < h and iw >= 0 and iw < w:
                acc += x[b, ih, iw, ch] * dz[r, o]
        part[g, q] = acc


@kernel(*[(_mat(t), _mat(t), *_GEOMETRY, _img(t)) for t in FLOATS])
def _dw_input_grad(dz, k2, kh, kw, sh, sw, dh, dw, pt, pl, oh, ow, dx):
    """dx[b, ih, iw, ch] = the sum over the (output pixel, tap) pairs that read x[b, ih, iw, ch] of
    dz[r, ch*M + m] * k2[tap, ch*M + m]; taps in order (ki, kj), each tap's M terms summed first
    (the CPU's order). One thread per element of dx."""
    e = cuda.grid(1)
    if e < dx.size:
        m = dz.shape[1] // dx.shape[3]
        b, ih, iw, ch = nhwc_index(e, dx)
        zero = dx.dtype.type(0)
        acc = zero
        for ki in range(kh):
            t = ih + pt - ki * dh  # = i * sh for the output row i that reads ih through tap ki
            if t < 0 or t % sh != 0 or t // sh >= oh:
                continue
            row = (b * oh + t // sh) * ow
            for kj in range(kw):
                u = iw + pl - kj * dw
                if u < 0 or u % sw != 0 or u // sw >= ow:
                    continue
                r = row + u // sw
                tap = ki * kw + kj
                if m == 1:
                    acc += dz[r, ch] * k2[tap, ch]
                else:
                    s = zero
                    for mm in range(ch * m, ch * m + m):
                        s += dz[r, mm] * k2[tap, mm]
                    acc += s
        dx[b, ih, iw, ch] = acc


def depthwise_forward(x, kernel, bias, code: int, keep_pre: bool, kh: int, kw: int, sh: int, sw: int, dh: int,
                      dw: int, pt: int, pl: int, oh: int, ow: int, scratch: Callable, pre, out) -> None:
    """out = act(depthwise_conv(x, kernel) + bias) as (n*oh*ow, c*M) rows; see the CPU twin.
    Needs no scratch here."""
    if out.size:
        _dw_forward[launch_1d(out.size)](x, kernel, bias, int(code), bool(keep_pre), kh, kw, sh, sw, dh, dw, pt,
                                         pl, oh, ow, pre, out)


def depthwise_backward(x, kernel, pre, y, dy, code: int, kh: int, kw: int, sh: int, sw: int, dh: int, dw: int,
                       pt: int, pl: int, oh: int, ow: int, scratch: Callable, dkernel, dbias, dx) -> None:
    """Gradients of depthwise_forward: dkernel (kh*kw, c*M), dbias unless None, dx (n, h, w, c)
    unless None, from dy (n*oh*ow, c*M). Work buffers from scratch (keys "dz", "bias_part",
    "dk_part")."""
    n = x.shape[0]
    kk, cm = kernel.shape
    rows = dy.shape[0]
    dtype = x.dtype
    geometry = (kh, kw, sh, sw, dh, dw, pt, pl, oh, ow)
    dz = _dz_and_bias(pre, y, dy, code, n, scratch, dbias)
    chunks = -(-rows // DW_PIXELS)
    part = scratch("dk_part", (chunks, kk * cm), dtype)
    if part.size:
        _dw_kernel_grad[launch_1d(part.size)](x, dz, *geometry, DW_PIXELS, part)
    column_sums(part, dkernel.reshape(kk * cm))
    if dx is not None and dx.size:
        _dw_input_grad[launch_1d(dx.size)](dz, kernel, *geometry, dx)
