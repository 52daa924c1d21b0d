"""Convolutions (Conv1D/Conv2D), forward and backward, channels_last.

One layout serves both: x (n, h, w, c) and a kernel matrix k2 (kh*kw*c, f)
(the Keras kernel (kh, kw, c, f) reshaped, a view). A 1-D convolution is the
2-D one with h = kh = 1.

The bulk of each pass is one BLAS GEMM on the patch matrix ("im2col"):
``cols`` has one row per output pixel (n, oh, ow) and one column per
(ki, kj, c), the order of k2's rows, so

    forward        out   = act(cols @ k2 + bias)      (n*oh*ow, f) is already NHWC
    weight grad    dk2   = cols.T @ dz                 one GEMM over every pixel
    input grad     dcols = dz @ k2.T, scattered back into dx ("col2im")

The two launch functions, ``conv_forward`` and ``conv_backward``, take
arrays, geometry and a ``scratch(key, shape, dtype=None)`` callable (the
layer's workspace: the same array for the same key, shape and dtype) and
decide everything about scheduling here: chunk sizes, thread counts (read
from nbmodel.config), and which BLAS runs each product. Everything else in
this module is a private helper.

Patches are built and the GEMM runs in chunks of whole images whose patch rows
fit in the L2 cache, so the GEMM reads what im2col has just written, and
bias + activation run on each chunk's output while it is still hot. In
training the full patch matrix is kept for the weight gradient; in inference
``cols`` is just one chunk (per thread).

Threads: a big enough pass (PAR_MIN patch elements, an image per thread)
splits the batch into one block of whole images per thread, and each block
runs the whole pass on its own: its chunks' im2col, GEMMs, bias + activation;
in backward dz and the bias-gradient partial of its pixels, the
weight-gradient partial cols.T @ dz over its pixels, and dx of its images
(blocks of whole images: col2im never races). BLAS runs single-threaded
inside (``config.kernel_blas_serial``), so every thread owns whole products
and one pool runs at a time; the partials are summed in block order. This is
the structure that scales with cores: nothing is serial but the partial sums
(kh*kw*c x filters per block). Small passes run the serial bodies, with
BLAS's own threads. At one thread the weight-gradient GEMM goes through NumPy:
for this transposed product numba's np.dot (SciPy's OpenBLAS) measured 1.4x
slower than NumPy's (conv2 of the cnn model: 9.3 ms vs 6.5 ms).
"""
import numpy as np

from ...config import get_num_threads, kernel_blas_serial
from ..codes import LINEAR
from ._jit import PAR_MIN, jit, pjit, prange
from .activations import act_grad_rows, act_grad_sum_rows, bias_act_rows

# bytes of patch rows per chunk: about half of a 1 MiB L2 cache
CHUNK_BYTES = 1 << 19


def _chunk_images(n, oh, ow, kk, itemsize):
    """Images per chunk so that one chunk of patch rows is about CHUNK_BYTES
    (per thread: each thread block runs its own chunks)."""
    per_image = max(1, oh * ow * kk * itemsize)
    return max(1, min(n, CHUNK_BYTES // per_image))


@jit
def _im2col_rows(x, kh, kw, sh, sw, dh, dw, pt, pl, oh, ow, r0, r1, cols, row0):
    """Patch rows of output rows r0..r1 (r = n*oh + i) into cols[(n*oh*ow + p) - row0, :].

    Column order (ki, kj, c); positions in the padding are zeros. Flat
    unsigned indices: numba skips its negative-index check on them, which is
    what lets the copies vectorize (about 5x faster than 4-D indexing).
    """
    _, h, w, c = x.shape
    xf = x.reshape(-1)
    cf = cols.reshape(-1)
    zero = x.dtype.type(0)
    kk = kh * kw * c
    kwc = kw * c
    for r in range(r0, r1):
        n = r // oh
        i = r - n * oh
        for j in range(ow):
            d = (n * oh * ow + i * ow + j - row0) * kk
            iw0 = j * sw - pl
            inside_w = dw == 1 and iw0 >= 0 and iw0 + kw <= w
            for ki in range(kh):
                ih = i * sh + ki * dh - pt
                if ih < 0 or ih >= h:
                    for q in range(kwc):
                        cf[np.uint64(d + q)] = zero
                    d += kwc
                    continue
                s0 = (n * h + ih) * w
                if inside_w:
                    # the kernel row is one contiguous run of x
                    s = (s0 + iw0) * c
                    for q in range(kwc):
                        cf[np.uint64(d + q)] = xf[np.uint64(s + q)]
                    d += kwc
                    continue
                for kj in range(kw):
                    iw = iw0 + kj * dw
                    if iw >= 0 and iw < w:
                        s = (s0 + iw) * c
                        for ch in range(c):
                            cf[np.uint64(d + ch)] = xf[np.uint64(s + ch)]
                    else:
                        for ch in range(c):
                            cf[np.uint64(d + ch)] = zero
                    d += c


@jit
def _col2im_images(dcols, kh, kw, sh, sw, dh, dw, pt, pl, oh, ow, n0, n1, row0, dx):
    """dx[n] += the patch gradients of images n0..n1 (rows (n*oh*ow + p) - row0).

    dx must hold zeros (or a running sum) for those images.
    """
    _, h, w, c = dx.shape
    dxf = dx.reshape(-1)
    cf = dcols.reshape(-1)
    kk = kh * kw * c
    kwc = kw * c
    for n in range(n0, n1):
        for i in range(oh):
            for j in range(ow):
                s = (n * oh * ow + i * ow + j - row0) * kk
                iw0 = j * sw - pl
                inside_w = dw == 1 and iw0 >= 0 and iw0 + kw <= w
                for ki in range(kh):
                    ih = i * sh + ki * dh - pt
                    if ih < 0 or ih >= h:
                        s += kwc
                        continue
                    d0 = (n * h + ih) * w
                    if inside_w:
                        d = (d0 + iw0) * c
                        for q in range(kwc):
                            dxf[np.uint64(d + q)] += cf[np.uint64(s + q)]
                        s += kwc
                        continue
                    for kj in range(kw):
                        iw = iw0 + kj * dw
                        if iw >= 0 and iw < w:
                            d = (d0 + iw) * c
                            for ch in range(c):
                                dxf[np.uint64(d + ch)] += cf[np.uint64(s + ch)]
                        s += c


@jit
def _forward_images(x, k2, bias, code, keep_pre, kh, kw, sh, sw, dh, dw, pt, pl, oh, ow,
                    n0, n1, chunk, full, slot0, cols, pre, out):
    """out rows of images n0..n1 = act(conv(x, k2) + bias), ``chunk`` images at a time:
    their patch rows, one GEMM, bias + activation while the output is still hot.

    cols holds every pixel's patch row when ``full`` (kept for the weight
    gradient), otherwise one chunk's rows starting at row ``slot0`` (each
    thread block has its own slot). pre keeps z when keep_pre.
    """
    per = oh * ow
    for c0 in range(n0, n1, chunk):
        c1 = min(n1, c0 + chunk)
        r0 = c0 * per
        r1 = c1 * per
        row0 = 0 if full else r0 - slot0
        _im2col_rows(x, kh, kw, sh, sw, dh, dw, pt, pl, oh, ow, c0 * oh, c1 * oh, cols, row0)
        np.dot(cols[r0 - row0: r1 - row0], k2, out[r0:r1])
        bias_act_rows(out, bias, code, keep_pre, r0, r1, pre)


@pjit
def _forward_blocks(x, k2, bias, code, keep_pre, kh, kw, sh, sw, dh, dw, pt, pl, oh, ow,
                    chunk, full, nblocks, cols, pre, out):
    """_forward_images over ``nblocks`` blocks of whole images, one per thread; each
    block's GEMMs are its own (BLAS runs single-threaded inside, see the launcher)."""
    n = x.shape[0]
    for b in prange(nblocks):
        _forward_images(x, k2, bias, code, keep_pre, kh, kw, sh, sw, dh, dw, pt, pl, oh, ow,
                        n * b // nblocks, n * (b + 1) // nblocks, chunk, full, b * chunk * oh * ow, cols, pre, out)


@jit
def _dz_rows(pre, y, dy, code, use_bias, r0, r1, dz, part, dbias):
    """dz = dy * act'(z) over rows r0..r1 (nothing to do for a linear activation: dz is
    dy) and, with use_bias, dbias[f] += the column sums of dz, summed in blocks of 256
    rows (partials in ``part``) to limit float32 rounding."""
    f = dy.shape[1]
    for b0 in range(r0, r1, 256):
        b1 = min(r1, b0 + 256)
        if not use_bias:
            if code != LINEAR:
                act_grad_rows(pre, y, dy, code, b0, b1, dz)
            continue
        part[:] = 0
        if code == LINEAR:
            for r in range(b0, b1):
                for j in range(f):
                    part[j] += dy[r, j]
        else:
            act_grad_sum_rows(pre, y, dy, code, b0, b1, dz, part)
        for j in range(f):
            dbias[j] += part[j]


@jit
def _dx_images(dz, k2, kh, kw, sh, sw, dh, dw, pt, pl, oh, ow, n0, n1, chunk, slot0, dcols, dx):
    """dx of images n0..n1 from dz, ``chunk`` images at a time: their patch gradients
    dcols = dz @ k2.T (in dcols from row slot0), scattered back (col2im)."""
    per = oh * ow
    dx[n0:n1] = 0
    k2t = k2.T
    for c0 in range(n0, n1, chunk):
        c1 = min(n1, c0 + chunk)
        r0 = c0 * per
        r1 = c1 * per
        np.dot(dz[r0:r1], k2t, dcols[slot0: slot0 + r1 - r0])
        _col2im_images(dcols, kh, kw, sh, sw, dh, dw, pt, pl, oh, ow, c0, c1, r0 - slot0, dx)


@pjit
def _backward_blocks(pre, y, dy, code, use_bias, need_dx, cols, k2, kh, kw, sh, sw, dh, dw, pt, pl, oh, ow,
                     chunk, nblocks, dz, part, dbias_parts, dk_parts, dcols, dx):
    """The whole backward pass over ``nblocks`` blocks of whole images, one per thread:
    dz and the bias-gradient partial of its pixels, the weight-gradient partial
    cols.T @ dz over its pixels, and dx of its images. The caller sums the
    partials in block order."""
    n = dx.shape[0]
    per = oh * ow
    for b in prange(nblocks):
        n0 = n * b // nblocks
        n1 = n * (b + 1) // nblocks
        r0 = n0 * per
        r1 = n1 * per
        dbias_parts[b] = 0
        _dz_rows(pre, y, dy, code, use_bias, r0, r1, dz, part[b], dbias_parts[b])
        np.dot(cols[r0:r1].T, dz[r0:r1], dk_parts[b])
        if need_dx:
            _dx_images(dz, k2, kh, kw, sh, sw, dh, dw, pt, pl, oh, ow, n0, n1, chunk, b * chunk * per, dcols, dx)


@jit
def _sum_blocks(parts, out):
    """out = parts[0] + parts[1] + ..., in block order (a fixed order: same bits every run)."""
    out[:] = parts[0]
    for b in range(1, parts.shape[0]):
        out += parts[b]


@jit
def _weight_grad(cols, dz, dk2):
    """dk2 = cols.T @ dz, one GEMM over every output pixel (through numba's BLAS)."""
    np.dot(cols.T, dz, dk2)


# ------------------------------------------------------------ launch functions
def _thread_blocks(n, oh, ow, kk):
    """Blocks of whole images, one per thread, when the pass is big enough to repay a
    parallel region (PAR_MIN patch elements) and the batch has an image per thread;
    0 runs the serial body (with BLAS's own threads)."""
    nt = min(get_num_threads(), n)
    return nt if nt > 1 and n * oh * ow * kk >= PAR_MIN else 0


def conv_forward(x, kernel, bias, code, keep_pre, kh, kw, sh, sw, dh, dw, pt, pl, oh, ow,
                 for_backward, scratch, pre, out):
    """out = act(conv(x, kernel) + bias) as (n*oh*ow, filters) rows (NHWC order).

    x (n, h, w, c) C-contiguous; kernel (kh*kw*c, filters), the Keras kernel
    viewed as 2-D; bias (filters,), zeros for a layer without one; code an
    activation code (not SOFTMAX: the caller applies softmax to ``out``);
    strides sh, sw, dilations dh, dw, padding before pt (top), pl (left);
    output size oh, ow. keep_pre: pre = conv + bias as well (pre may be
    ``out`` otherwise). for_backward: conv_backward will follow, so the whole
    patch matrix is kept in scratch("cols", (n*oh*ow, kh*kw*c)); otherwise
    the patches live in a buffer of one chunk of images per thread.
    scratch(key, shape, dtype=None) returns an uninitialized C-contiguous
    array, the same one for the same key, shape and dtype.
    """
    n = x.shape[0]
    kk = kernel.shape[0]
    chunk = _chunk_images(n, oh, ow, kk, x.itemsize)
    blocks = _thread_blocks(n, oh, ow, kk)
    rows_kept = n if for_backward else min(n, chunk) * max(blocks, 1)
    cols = scratch("cols", (rows_kept * oh * ow, kk), x.dtype)
    if blocks:
        with kernel_blas_serial():
            _forward_blocks(x, kernel, bias, code, keep_pre, kh, kw, sh, sw, dh, dw, pt, pl, oh, ow,
                            chunk, for_backward, blocks, cols, pre, out)
    else:
        _forward_images(x, kernel, bias, code, keep_pre, kh, kw, sh, sw, dh, dw, pt, pl, oh, ow,
                        0, n, chunk, for_backward, 0, cols, pre, out)


def conv_backward(x, kernel, pre, y, dy, code, kh, kw, sh, sw, dh, dw, pt, pl, oh, ow,
                  scratch, dkernel, dbias, dx):
    """Gradients of conv_forward (which ran with for_backward=True on the same
    x and scratch, and wrote pre and y).

    dy (n*oh*ow, filters) is the gradient of the output, already through the
    softmax backward for a softmax layer (code is then LINEAR). Writes
    dkernel (kh*kw*c, filters), dbias (filters,) (None: no bias) and dx
    (n, h, w, c) (None: no input gradient needed). Work buffers come from
    scratch (keys "cols", "dz", "dcols", "bias_work" and, with threads,
    "dk_parts", "dbias_parts").
    """
    n = x.shape[0]
    kk, f = kernel.shape
    dtype = x.dtype
    chunk = _chunk_images(n, oh, ow, kk, x.itemsize)
    blocks = _thread_blocks(n, oh, ow, kk)
    cols = scratch("cols", (n * oh * ow, kk), dtype)
    dz = scratch("dz", dy.shape, dtype) if code != LINEAR else dy
    use_bias = dbias is not None
    need_dx = dx is not None
    dcols = scratch("dcols", (min(n, chunk) * max(blocks, 1) * oh * ow, kk), dtype) if need_dx else dz
    if blocks:
        part = scratch("bias_work", (blocks, f), dtype)
        dbias_parts = scratch("dbias_parts", (blocks, f), dtype)
        dk_parts = scratch("dk_parts", (blocks, kk, f), dtype)
        with kernel_blas_serial():
            _backward_blocks(pre, y, dy, code, use_bias, need_dx, cols, kernel, kh, kw, sh, sw, dh, dw, pt, pl,
                             oh, ow, chunk, blocks, dz, part, dbias_parts, dk_parts, dcols,
                             dx if need_dx else x)
        _sum_blocks(dk_parts, dkernel)
        if use_bias:
            _sum_blocks(dbias_parts, dbias)
        return
    part = scratch("bias_work", (f,), dtype)
    if use_bias:
        dbias[:] = 0
    _dz_rows(pre, y, dy, code, use_bias, 0, n * oh * ow, dz, part, dbias if use_bias else part)
    if get_num_threads() == 1:  # NumPy's BLAS is faster on this product (module doc)
        np.dot(cols.T, dz, out=dkernel)
    else:
        _weight_grad(cols, dz, dkernel)
    if need_dx:
        _dx_images(dz, kernel, kh, kw, sh, sw, dh, dw, pt, pl, oh, ow, 0, n, chunk, 0, dcols, dx)



# ------------------------------------------------------------ transposed convolution
# A transposed convolution of x (n, h, w, c) into y (n, oh, ow, f) by the Keras kernel
# (kh, kw, f, c), viewed as k2 (kh*kw*f, c), is the input gradient of the convolution of
# y by k2 with the same strides, dilations and padding before (pt, pl) and output (h, w):
# output pixel o = i * stride + tap * dilation - padding. So its forward is the pass that
# forms a convolution's dx (x @ k2.T per chunk, scattered by col2im: _dx_images), and its
# backward is a convolution forward of dz (im2col, @ k2: dx) plus that convolution's
# weight gradient (cols.T @ x): the same bodies, no second convolution.
@jit
def _transpose_forward_images(x, k2, bias, code, keep_pre, kh, kw, sh, sw, dh, dw, pt, pl, oh, ow,
                              n0, n1, chunk, slot0, dcols, pre, out):
    """out rows of images n0..n1 = act(conv_transpose(x, k2) + bias), ``chunk`` images at
    a time (their patch gradients in dcols from row slot0), bias + activation while hot."""
    n, h, w, c = x.shape
    f = out.shape[1]
    x2 = x.reshape(n * h * w, c)
    out4 = out.reshape(n, oh, ow, f)
    per = oh * ow
    for c0 in range(n0, n1, chunk):
        c1 = min(n1, c0 + chunk)
        _dx_images(x2, k2, kh, kw, sh, sw, dh, dw, pt, pl, h, w, c0, c1, chunk, slot0, dcols, out4)
        bias_act_rows(out, bias, code, keep_pre, c0 * per, c1 * per, pre)


@pjit
def _transpose_forward_blocks(x, k2, bias, code, keep_pre, kh, kw, sh, sw, dh, dw, pt, pl, oh, ow,
                              chunk, nblocks, dcols, pre, out):
    """_transpose_forward_images over ``nblocks`` blocks of whole images, one per thread."""
    n, h, w, _ = x.shape
    for b in prange(nblocks):
        _transpose_forward_images(x, k2, bias, code, keep_pre, kh, kw, sh, sw, dh, dw, pt, pl, oh, ow,
                                  n * b // nblocks, n * (b + 1) // nblocks, chunk, b * chunk * h * w, dcols,
                                  pre, out)


@jit
def _transpose_backward_images(x, k2, pre, y, dy, code, use_bias, need_dx, kh, kw, sh, sw, dh, dw, pt, pl,
                               oh, ow, n0, n1, dz, part, dbias, cols, dk, dx):
    """Images n0..n1: dz = dy * act' and dbias += its column sums over their output rows;
    cols = im2col of dz (one row per input pixel); dk = cols.T @ x; dx = cols @ k2."""
    n, h, w, c = x.shape
    f = dy.shape[1]
    _dz_rows(pre, y, dy, code, use_bias, n0 * oh * ow, n1 * oh * ow, dz, part, dbias)
    dz4 = dz.reshape(n, oh, ow, f)  # dz is dy for a linear activation
    r0 = n0 * h * w
    r1 = n1 * h * w
    _im2col_rows(dz4, kh, kw, sh, sw, dh, dw, pt, pl, h, w, n0 * h, n1 * h, cols, 0)
    x2 = x.reshape(n * h * w, c)
    np.dot(cols[r0:r1].T, x2[r0:r1], dk)
    if need_dx:
        np.dot(cols[r0:r1], k2, dx.reshape(n * h * w, c)[r0:r1])


@pjit
def _transpose_backward_blocks(x, k2, pre, y, dy, code, use_bias, need_dx, kh, kw, sh, sw, dh, dw, pt, pl,
                               oh, ow, nblocks, dz, part, dbias_parts, cols, dk_parts, dx):
    """_transpose_backward_images over ``nblocks`` blocks of whole images, one per thread,
    each with its own bias- and weight-gradient partials (summed by the caller in order)."""
    n = x.shape[0]
    for b in prange(nblocks):
        dbias_parts[b] = 0
        _transpose_backward_images(x, k2, pre, y, dy, code, use_bias, need_dx, kh, kw, sh, sw, dh, dw, pt, pl,
                                   oh, ow, n * b // nblocks, n * (b + 1) // nblocks, dz, part[b], dbias_parts[b],
                                   cols, dk_parts[b], dx)


def conv_transpose_forward(x, kernel, bias, code, keep_pre, kh, kw, sh, sw, dh, dw, pt, pl, oh, ow,
                           scratch, pre, out):
    """out = act(conv_transpose(x, kernel) + bias) as (n*oh*ow, filters) rows (NHWC order).

    x (n, h, w, c) C-contiguous; kernel (kh*kw*filters, c), the Keras kernel
    (kh, kw, filters, c) viewed as 2-D; the geometry is the one of the
    convolution whose input gradient this is (strides, dilations, padding
    before pt, pl of the output (oh, ow), which that convolution maps to
    (h, w)). keep_pre, pre and code as in conv_forward. Patch gradients go
    through scratch("dcols"), one chunk of images per thread.
    """
    n, h, w, _ = x.shape
    kk = kernel.shape[0]
    chunk = _chunk_images(n, h, w, kk, x.itemsize)
    blocks = _thread_blocks(n, h, w, kk)
    dcols = scratch("dcols", (min(n, chunk) * max(blocks, 1) * h * w, kk), x.dtype)
    if blocks:
        with kernel_blas_serial():
            _transpose_forward_blocks(x, kernel, bias, code, keep_pre, kh, kw, sh, sw, dh, dw, pt, pl, oh, ow,
                                      chunk, blocks, dcols, pre, out)
    else:
        _transpose_forward_images(x, kernel, bias, code, keep_pre, kh, kw, sh, sw, dh, dw, pt, pl, oh, ow,
                                  0, n, chunk, 0, dcols, pre, out)


def conv_transpose_backward(x, kernel, pre, y, dy, code, kh, kw, sh, sw, dh, dw, pt, pl, oh, ow,
                            scratch, dkernel, dbias, dx):
    """Gradients of conv_transpose_forward (on the same x, writing pre and y).

    dy (n*oh*ow, filters), already through the softmax backward for a softmax
    layer (code is then LINEAR). Writes dkernel (kh*kw*filters, c), dbias
    (filters,) (None: no bias) and dx (n, h, w, c) (None: not needed). Work
    buffers come from scratch (keys "cols", "dz", "bias_work" and, with
    threads, "dk_parts", "dbias_parts").
    """
    n, h, w, c = x.shape
    kk = kernel.shape[0]
    f = dy.shape[1]
    dtype = x.dtype
    blocks = _thread_blocks(n, h, w, kk)
    cols = scratch("cols", (n * h * w, kk), dtype)
    dz = scratch("dz", dy.shape, dtype) if code != LINEAR else dy
    use_bias = dbias is not None
    need_dx = dx is not None
    dx_ = dx if need_dx else x
    if blocks:
        part = scratch("bias_work", (blocks, f), dtype)
        dbias_parts = scratch("dbias_parts", (blocks, f), dtype)
        dk_parts = scratch("dk_parts", (blocks, kk, c), dtype)
        with kernel_blas_serial():
            _transpose_backward_blocks(x, kernel, pre, y, dy, code, use_bias, need_dx, kh, kw, sh, sw, dh, dw,
                                       pt, pl, oh, ow, blocks, dz, part, dbias_parts, cols, dk_parts, dx_)
        _sum_blocks(dk_parts, dkernel)
        if use_bias:
            _sum_blocks(dbias_parts, dbias)
        return
    part = scratch("bias_work", (f,), dtype)
    if use_bias:
        dbias[:] = 0
    _transpose_backward_images(x, kernel, pre, y, dy, code, use_bias, need_dx, kh, kw, sh, sw, dh, dw, pt, pl,
                               oh, ow, 0, n, dz, part, dbias if use_bias else part, cols, dkernel, dx_)
