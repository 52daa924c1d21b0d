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

A one-channel input (a grayscale image, a single signal) builds its patches
transposed, (kh*kw, pixels): one row per kernel tap, so each output row's run
of a tap is one read along an input row, a loop that vectorizes, where
row-major patch rows would be kh copies of kw floats per pixel. Each chunk's
(or block's) transposed patches are contiguous in ``cols``'s memory and feed
the GEMMs as they are (forward ``patches.T @ k2``, weight grad ``patches @
dz``). They are never kept: backward rebuilds them (0.1 ms for the cnn's first
layer) rather than forward writing them all out. The cnn's first layer (64 x
28 x 28 x 1, 32 filters, layer forward / backward, medians of 5 x 40 calls):
1 thread 1.01 / 1.39 -> 0.64 / 1.45 ms, 2 threads 0.94 / 1.35 -> 0.66 / 1.46.

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
BLAS's own threads. Every product is ``_blas.gemm``: on one BLAS thread (the
blocks, a one-thread policy) it runs the transposed weight-gradient product on
NumPy's OpenBLAS, 1.4x faster than numba's np.dot on it (module doc there).
"""
import numpy as np

from ...config import get_num_threads, kernel_blas_serial
from ..codes import LINEAR
from ._blas import gemm
from ._jit import PAR_MIN, inline, jit, pjit, prange
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


@inline
def _patches_transposed(c):
    """Whether the patch matrix of an input with c channels is kept transposed (module doc)."""
    return c == 1


@inline
def _transposed_block(cols, kk, p0, p1):
    """The contiguous (kk, p1 - p0) view of cols's memory from element p0 * kk: where
    the transposed patches of pixels p0..p1 (of a chunk or a block) live."""
    return cols.reshape(-1)[p0 * kk:p1 * kk].reshape(kk, p1 - p0)


@jit
def _im2col_t_rows(x, kh, kw, sh, sw, dh, dw, pt, pl, oh, ow, r0, r1, cols_t, col0):
    """The transposed patch matrix of a one-channel x: cols_t[ki*kw + kj, p - col0] for
    the pixels p = (n*oh + i)*ow + j of output rows r0..r1 (r = n*oh + i); padding is
    zeros. Per tap and output row, the pixels whose input column j*sw + kj*dw - pl lies
    inside the image are one strided read of an input row (contiguous for sw = 1)."""
    _, h, w, _ = x.shape
    xf = x.reshape(-1)
    zero = x.dtype.type(0)
    for ki in range(kh):
        for kj in range(kw):
            dst = cols_t[ki * kw + kj]
            off = kj * dw - pl
            # output columns j0..j1 read inside the image: j*sw + off in [0, w)
            j0 = min(ow, max(0, (sw - 1 - off) // sw))
            j1 = max(j0, min(ow, (w - off + sw - 1) // sw))
            for r in range(r0, r1):
                n = r // oh
                i = r - n * oh
                d = r * ow - col0
                ih = i * sh + ki * dh - pt
                if ih < 0 or ih >= h:
                    for j in range(ow):
                        dst[np.uint64(d + j)] = zero
                    continue
                for j in range(j0):
                    dst[np.uint64(d + j)] = zero
                s = (n * h + ih) * w + off
                if sw == 1:
                    for j in range(j0, j1):
                        dst[np.uint64(d + j)] = xf[np.uint64(s + j)]
                else:
                    for j in range(j0, j1):
                        dst[np.uint64(d + j)] = xf[np.uint64(s + j * sw)]
                for j in range(j1, ow):
                    dst[np.uint64(d + j)] = zero


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
    thread block has its own slot). A one-channel x (never ``full``) puts each
    chunk's transposed patches in its slot's memory (module doc). pre keeps z
    when keep_pre.
    """
    per = oh * ow
    kk = k2.shape[0]
    transposed = _patches_transposed(x.shape[3])
    for c0 in range(n0, n1, chunk):
        c1 = min(n1, c0 + chunk)
        r0 = c0 * per
        r1 = c1 * per
        row0 = 0 if full else r0 - slot0
        if transposed:
            patches = _transposed_block(cols, kk, r0 - row0, r1 - row0)
            _im2col_t_rows(x, kh, kw, sh, sw, dh, dw, pt, pl, oh, ow, c0 * oh, c1 * oh, patches, r0)
            gemm(patches.T, k2, out[r0:r1])
        else:
            _im2col_rows(x, kh, kw, sh, sw, dh, dw, pt, pl, oh, ow, c0 * oh, c1 * oh, cols, row0)
            gemm(cols[r0 - row0: r1 - row0], k2, out[r0:r1])
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
        gemm(dz[r0:r1], k2t, dcols[slot0: slot0 + r1 - r0])
        _col2im_images(dcols, kh, kw, sh, sw, dh, dw, pt, pl, oh, ow, c0, c1, r0 - slot0, dx)


@pjit
def _backward_blocks(x, pre, y, dy, code, use_bias, need_dx, cols, k2, kh, kw, sh, sw, dh, dw, pt, pl, oh, ow,
                     chunk, nblocks, dz, part, dbias_parts, dk_parts, dcols, dx):
    """The whole backward pass over ``nblocks`` blocks of whole images, one per thread:
    dz and the bias-gradient partial of its pixels, the weight-gradient partial
    cols.T @ dz over its pixels (a one-channel x: its transposed patches, built
    here), and dx of its images. The caller sums the partials in block order."""
    n = x.shape[0]
    kk = k2.shape[0]
    per = oh * ow
    for b in prange(nblocks):
        n0 = n * b // nblocks
        n1 = n * (b + 1) // nblocks
        r0 = n0 * per
        r1 = n1 * per
        dbias_parts[b] = 0
        _dz_rows(pre, y, dy, code, use_bias, r0, r1, dz, part[b], dbias_parts[b])
        if _patches_transposed(x.shape[3]):
            patches = _transposed_block(cols, kk, r0, r1)
            _im2col_t_rows(x, kh, kw, sh, sw, dh, dw, pt, pl, oh, ow, n0 * oh, n1 * oh, patches, r0)
            gemm(patches, dz[r0:r1], dk_parts[b])
        else:
            gemm(cols[r0:r1].T, dz[r0:r1], dk_parts[b])
        if need_dx:
            _dx_images(dz, k2, kh, kw, sh, sw, dh, dw, pt, pl, oh, ow, n0, n1, chunk, b * chunk * per, dcols, dx)


@jit
def _sum_blocks(parts, out):
    """out = parts[0] + parts[1] + ..., in block order (a fixed order: same bits every run)."""
    out[:] = parts[0]
    for b in range(1, parts.shape[0]):
        out += parts[b]


@jit
def _weight_grad(cols_t, dz, dk2):
    """dk2 = cols_t @ dz (cols_t: the patch matrix as (kh*kw*c, pixels), a transposed
    view or the transposed layout), one GEMM over every output pixel."""
    gemm(cols_t, dz, dk2)


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
    (and always for one input channel, module doc) the patches live in a
    buffer of one chunk of images per thread.
    scratch(key, shape, dtype=None) returns an uninitialized C-contiguous
    array, the same one for the same key, shape and dtype.
    """
    n = x.shape[0]
    kk = kernel.shape[0]
    chunk = _chunk_images(n, oh, ow, kk, x.itemsize)
    blocks = _thread_blocks(n, oh, ow, kk)
    full = for_backward and not _patches_transposed(x.shape[3])
    rows_kept = n if full else min(n, chunk) * max(blocks, 1)
    cols = scratch("cols", (rows_kept * oh * ow, kk), x.dtype)
    if blocks:
        with kernel_blas_serial():
            _forward_blocks(x, kernel, bias, code, keep_pre, kh, kw, sh, sw, dh, dw, pt, pl, oh, ow,
                            chunk, full, blocks, cols, pre, out)
    else:
        _forward_images(x, kernel, bias, code, keep_pre, kh, kw, sh, sw, dh, dw, pt, pl, oh, ow,
                        0, n, chunk, full, 0, cols, pre, out)


def conv_backward(x, kernel, pre, y, dy, code, kh, kw, sh, sw, dh, dw, pt, pl, oh, ow,
                  scratch, dkernel, dbias, dx):
    """Gradients of conv_forward (which ran with for_backward=True on the same
    x and scratch, and wrote pre and y).

    dy (n*oh*ow, filters) is the gradient of the output, already through the
    softmax backward for a softmax layer (code is then LINEAR). Writes
    dkernel (kh*kw*c, filters), dbias (filters,) (None: no bias) and dx
    (n, h, w, c) (None: no input gradient needed). Work buffers come from
    scratch (keys "cols" or, for one input channel, "cols_t", "dz", "dcols",
    "bias_work" and, with threads, "dk_parts", "dbias_parts").
    """
    n = x.shape[0]
    kk, f = kernel.shape
    dtype = x.dtype
    chunk = _chunk_images(n, oh, ow, kk, x.itemsize)
    blocks = _thread_blocks(n, oh, ow, kk)
    transposed = _patches_transposed(x.shape[3])
    # one channel: its transposed patches are rebuilt here, in their own buffer (module doc)
    cols = scratch("cols_t", (kk, n * oh * ow), dtype) if transposed else scratch("cols", (n * oh * ow, kk), dtype)
    dz = scratch("dz", dy.shape, dtype) if code != LINEAR else dy
    use_bias = dbias is not None
    need_dx = dx is not None
    dcols = scratch("dcols", (min(n, chunk) * max(blocks, 1) * oh * ow, kk), dtype) if need_dx else dz
    if blocks:
        part = scratch("bias_work", (blocks, f), dtype)
        dbias_parts = scratch("dbias_parts", (blocks, f), dtype)
        dk_parts = scratch("dk_parts", (blocks, kk, f), dtype)
        with kernel_blas_serial():
            _backward_blocks(x, pre, y, dy, code, use_bias, need_dx, cols, kernel, kh, kw, sh, sw, dh, dw, pt, pl,
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
    if transposed:
        _im2col_t_rows(x, kh, kw, sh, sw, dh, dw, pt, pl, oh, ow, 0, n * oh, cols, 0)
    _weight_grad(cols if transposed else cols.T, dz, dkernel)
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
    gemm(cols[r0:r1].T, x2[r0:r1], dk)
    if need_dx:
        gemm(cols[r0:r1], k2, dx.reshape(n * h * w, c)[r0:r1])


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


# ------------------------------------------------------------ depthwise convolution
# DepthwiseConv1D/2D (and the first step of SeparableConv1D/2D): input channel ch is
# convolved with its own depth_multiplier (M) kernels, output channel o = ch*M + m. The
# Keras kernel (kh, kw, c, M) is viewed as k2 (kh*kw, c*M): row ``tap`` = ki*kw + kj holds
# one weight per output channel. No im2col: a depthwise convolution does kh*kw
# multiply-adds per output element, so it is bound by memory, and direct loops read each
# x row while it is in cache.
#
# Two loop shapes. With M = 1 and a horizontal stride of 1 (the common case) a kernel tap
# (ki, kj) meets a whole run of outputs j0..j1 of one output row, and their inputs are one
# contiguous run of x: the tap is a single loop of (j1 - j0) * c multiply-adds over three
# contiguous arrays (out, x, and ``kt``, the kernel rows tiled along the row:
# kt[tap, e] = k2[tap, e % c]), long enough to vectorize well (a loop over c = 32
# channels per output pixel ran 4x slower: vector loops that short are mostly
# set-up). dx and the weight gradient take the same shape. Otherwise (M > 1, strides
# along w) the innermost loop runs over the channels of one pixel, each x value
# broadcast over its M outputs.
#
# Threads take blocks of output rows (n*oh of them) in forward and for the weight
# gradient, blocks of input rows (n*h) for dx: dx is a gather, every element written by
# one thread in the order (ki, kj, m) of the taps (no races, no atomics; the CUDA twin
# adds in the same order). Weight-gradient partials per block are summed in block order.
DW_FOLD = 16  # output rows whose weight-gradient terms are summed before they are added to the total


@inline
def _dw_mac(m, cm, af, a0, xf, x0, kf, k0):
    """af[a0 + o] += xf[x0 + o // m] * kf[k0 + o] for o in 0..cm (flat arrays)."""
    if m == 1:
        for o in range(cm):
            af[np.uint64(a0 + o)] += xf[np.uint64(x0 + o)] * kf[np.uint64(k0 + o)]
    else:
        for ch in range(cm // m):
            v = xf[np.uint64(x0 + ch)]
            q = a0 + ch * m
            s = k0 + ch * m
            for mm in range(m):
                af[np.uint64(q + mm)] += v * kf[np.uint64(s + mm)]


@inline
def _dw_mac_sum(m, c, df, d0, af, a0, bf, b0):
    """df[d0 + ch] += sum over mm of af[a0 + ch*m + mm] * bf[b0 + ch*m + mm], ch in 0..c."""
    if m == 1:
        for ch in range(c):
            df[np.uint64(d0 + ch)] += af[np.uint64(a0 + ch)] * bf[np.uint64(b0 + ch)]
    else:
        zero = df.dtype.type(0)
        for ch in range(c):
            s = zero
            q = ch * m
            for mm in range(m):
                s += af[np.uint64(a0 + q + mm)] * bf[np.uint64(b0 + q + mm)]
            df[np.uint64(d0 + ch)] += s


@inline
def _triad(af, a0, bf, b0, cf, c0, n):
    """af[a0 + e] += bf[b0 + e] * cf[c0 + e] for e in 0..n (flat arrays)."""
    for e in range(n):
        af[np.uint64(a0 + e)] += bf[np.uint64(b0 + e)] * cf[np.uint64(c0 + e)]


@inline
def _triad3(af, a0, bf, b0, b1, b2, cf, c0, c1, c2, n):
    """af[a0 + e] += bf[b0 + e] * cf[c0 + e] + bf[b1 + e] * cf[c1 + e] + bf[b2 + e] * cf[c2 + e],
    e in 0..n: three taps of a kernel row in one pass over the output (added in that order)."""
    for e in range(n):
        a = af[np.uint64(a0 + e)] + bf[np.uint64(b0 + e)] * cf[np.uint64(c0 + e)]
        a += bf[np.uint64(b1 + e)] * cf[np.uint64(c1 + e)]
        af[np.uint64(a0 + e)] = a + bf[np.uint64(b2 + e)] * cf[np.uint64(c2 + e)]


@inline
def _run(n_in, n_out, before, tap_offset):
    """The outputs j0..j1 of one row that a kernel tap at offset tap_offset reads inside an
    input of n_in (stride 1): input j + tap_offset - before."""
    j0 = max(0, before - tap_offset)
    j1 = min(n_out, n_in + before - tap_offset)
    return j0, j1


@jit
def _dw_tile_kernel(k2, kt):
    """kt[tap, e] = k2[tap, e % c] (the kernel rows tiled along an image row, M = 1)."""
    c = k2.shape[1]
    for t in range(kt.shape[0]):
        for e in range(kt.shape[1]):
            kt[t, e] = k2[t, e % c]


@jit
def _dw_forward_rows(x, k2, kt, bias, code, keep_pre, kh, kw, sh, sw, dh, dw, pt, pl, oh, ow, q0, q1, pre, out):
    """Output rows q0..q1 (q = b*oh + i): out = act(depthwise(x, k2) + bias), each row's
    bias + activation right after its taps, while it is in cache. kt: the tiled kernel
    (used when M = 1 and sw = 1)."""
    _, h, w, c = x.shape
    cm = k2.shape[1]
    m = cm // c
    run = m == 1 and sw == 1
    xf = x.reshape(-1)
    kf = k2.reshape(-1)
    tf = kt.reshape(-1)
    lt = kt.shape[1]
    of = out.reshape(-1)
    zero = out.dtype.type(0)
    for q in range(q0, q1):
        b = q // oh
        i = q - b * oh
        r0 = q * ow
        for e in range(r0 * cm, (r0 + ow) * cm):
            of[np.uint64(e)] = zero
        for ki in range(kh):
            ih = i * sh + ki * dh - pt
            if ih < 0 or ih >= h:
                continue
            s0 = (b * h + ih) * w
            if run:
                t0 = ki * kw * lt
                ja = jb = 0
                if kw == 3:
                    # outputs ja..jb see all three taps: one pass; the edges tap by tap
                    ja = max(_run(w, ow, pl, 0)[0], _run(w, ow, pl, 2 * dw)[0])
                    jb = min(_run(w, ow, pl, 0)[1], _run(w, ow, pl, 2 * dw)[1])
                    if ja < jb:
                        b0 = (s0 + ja - pl) * c
                        _triad3(of, (r0 + ja) * c, xf, b0, b0 + dw * c, b0 + 2 * dw * c, tf, t0, t0 + lt, t0 + 2 * lt,
                                (jb - ja) * c)
                    else:
                        ja = jb = 0
                for kj in range(kw):
                    j0, j1 = _run(w, ow, pl, kj * dw)
                    # [j0, j1) minus the fused [ja, jb): the part before and the part after
                    for u0, u1 in ((j0, min(j1, ja)), (max(j0, jb), j1)):
                        if u0 < u1:
                            _triad(of, (r0 + u0) * c, xf, (s0 + u0 + kj * dw - pl) * c, tf, t0 + kj * lt,
                                   (u1 - u0) * c)
                continue
            for j in range(ow):
                a0 = (r0 + j) * cm
                iw0 = j * sw - pl
                for kj in range(kw):
                    iw = iw0 + kj * dw
                    if iw >= 0 and iw < w:
                        _dw_mac(m, cm, of, a0, xf, (s0 + iw) * c, kf, (ki * kw + kj) * cm)
        bias_act_rows(out, bias, code, keep_pre, r0, r0 + ow, pre)


@pjit
def _dw_forward_blocks(x, k2, kt, bias, code, keep_pre, kh, kw, sh, sw, dh, dw, pt, pl, oh, ow, nblocks, pre,
                       out):
    """_dw_forward_rows over ``nblocks`` blocks of output rows, one per thread."""
    rows = x.shape[0] * oh
    for b in prange(nblocks):
        _dw_forward_rows(x, k2, kt, bias, code, keep_pre, kh, kw, sh, sw, dh, dw, pt, pl, oh, ow,
                         rows * b // nblocks, rows * (b + 1) // nblocks, pre, out)


@jit
def _dw_kernel_grad_rows(x, dz, kh, kw, sh, sw, dh, dw, pt, pl, oh, ow, q0, q1, acc, dk):
    """dk (kh*kw, c*M) += the weight gradient over output rows q0..q1. The terms of DW_FOLD
    rows meet in ``acc`` (kh*kw rows of ow*c*M: per output pixel when M = 1 and sw = 1,
    then per channel) before they are added to dk: float32 sums over a whole batch stay
    accurate."""
    _, h, w, c = x.shape
    cm = dz.shape[1]
    m = cm // c
    run = m == 1 and sw == 1
    kk = kh * kw
    la = acc.shape[1]
    xf = x.reshape(-1)
    zf = dz.reshape(-1)
    af = acc.reshape(-1)
    zero = dk.dtype.type(0)
    acc[:] = zero
    for q in range(q0, q1):
        b = q // oh
        i = q - b * oh
        r0 = q * ow
        for ki in range(kh):
            ih = i * sh + ki * dh - pt
            if ih < 0 or ih >= h:
                continue
            s0 = (b * h + ih) * w
            if run:
                for kj in range(kw):
                    j0, j1 = _run(w, ow, pl, kj * dw)
                    if j0 < j1:
                        _triad(af, (ki * kw + kj) * la + j0 * c, xf, (s0 + j0 + kj * dw - pl) * c, zf,
                               (r0 + j0) * c, (j1 - j0) * c)
                continue
            for j in range(ow):
                iw0 = j * sw - pl
                for kj in range(kw):
                    iw = iw0 + kj * dw
                    if iw >= 0 and iw < w:
                        _dw_mac(m, cm, af, (ki * kw + kj) * la, xf, (s0 + iw) * c, zf, (r0 + j) * cm)
        if (q - q0 + 1) % DW_FOLD == 0 or q == q1 - 1:
            for t in range(kk):
                if run:
                    for j in range(ow):
                        for ch in range(c):
                            dk[t, ch] += acc[t, j * c + ch]
                else:
                    for o in range(cm):
                        dk[t, o] += acc[t, o]
            acc[:] = zero


@jit
def _dw_input_grad_rows(dz, k2, kt, kh, kw, sh, sw, dh, dw, pt, pl, oh, ow, p0, p1, dx):
    """dx of input rows p0..p1 (p = b*h + ih), gathered: every (output pixel, tap) that read
    x[b, ih, iw, ch], taps in order (ki, kj), output channels ch*M .. ch*M + M - 1."""
    _, h, w, c = dx.shape
    cm = dz.shape[1]
    m = cm // c
    run = m == 1 and sw == 1
    zf = dz.reshape(-1)
    kf = k2.reshape(-1)
    tf = kt.reshape(-1)
    lt = kt.shape[1]
    xf = dx.reshape(-1)
    zero = dx.dtype.type(0)
    for p in range(p0, p1):
        b = p // h
        ih = p - b * h
        d0 = p * w * c
        for e in range(d0, d0 + w * c):
            xf[np.uint64(e)] = zero
        for ki in range(kh):
            t = ih + pt - ki * dh  # = i * sh for the output row i that reads ih through tap ki
            if t < 0 or t % sh != 0 or t // sh >= oh:
                continue
            row = (b * oh + t // sh) * ow
            if run:
                # input iw is read through tap kj by output j = iw + pl - kj*dw
                t0 = ki * kw * lt
                ia = ib = 0
                if kw == 3:
                    ia = max(_run(ow, w, 0, pl)[0], _run(ow, w, 2 * dw, pl)[0])
                    ib = min(_run(ow, w, 0, pl)[1], _run(ow, w, 2 * dw, pl)[1])
                    if ia < ib:
                        z0 = (row + ia + pl) * c
                        _triad3(xf, d0 + ia * c, zf, z0, z0 - dw * c, z0 - 2 * dw * c, tf, t0, t0 + lt, t0 + 2 * lt,
                                (ib - ia) * c)
                    else:
                        ia = ib = 0
                for kj in range(kw):
                    i0, i1 = _run(ow, w, kj * dw, pl)
                    for u0, u1 in ((i0, min(i1, ia)), (max(i0, ib), i1)):  # outside the fused [ia, ib)
                        if u0 < u1:
                            _triad(xf, d0 + u0 * c, zf, (row + u0 + pl - kj * dw) * c, tf, t0 + kj * lt,
                                   (u1 - u0) * c)
                continue
            for iw in range(w):
                for kj in range(kw):
                    u = iw + pl - kj * dw
                    if u < 0 or u % sw != 0 or u // sw >= ow:
                        continue
                    _dw_mac_sum(m, c, xf, d0 + iw * c, zf, (row + u // sw) * cm, kf, (ki * kw + kj) * cm)


@jit
def _dw_backward_rows(x, pre, y, dy, code, use_bias, kh, kw, sh, sw, dh, dw, pt, pl, oh, ow, q0, q1,
                      dz, part, dbias, acc, dk):
    """Output rows q0..q1: dz = dy * act' and dbias += its column sums over their pixels,
    then dk += their weight gradient."""
    _dz_rows(pre, y, dy, code, use_bias, q0 * ow, q1 * ow, dz, part, dbias)
    _dw_kernel_grad_rows(x, dz, kh, kw, sh, sw, dh, dw, pt, pl, oh, ow, q0, q1, acc, dk)


@pjit
def _dw_backward_blocks(x, pre, y, dy, code, use_bias, kh, kw, sh, sw, dh, dw, pt, pl, oh, ow, nblocks,
                        dz, part, dbias_parts, acc, dk_parts):
    """_dw_backward_rows over ``nblocks`` blocks of output rows, one per thread, each with its
    own bias- and weight-gradient partials (summed by the caller in block order)."""
    rows = x.shape[0] * oh
    for b in prange(nblocks):
        dbias_parts[b] = 0
        dk_parts[b] = 0
        _dw_backward_rows(x, pre, y, dy, code, use_bias, kh, kw, sh, sw, dh, dw, pt, pl, oh, ow,
                          rows * b // nblocks, rows * (b + 1) // nblocks, dz, part[b], dbias_parts[b], acc[b],
                          dk_parts[b])


@pjit
def _dw_input_grad_blocks(dz, k2, kt, kh, kw, sh, sw, dh, dw, pt, pl, oh, ow, nblocks, dx):
    """_dw_input_grad_rows over ``nblocks`` blocks of input rows, one per thread."""
    rows = dx.shape[0] * dx.shape[1]
    for b in prange(nblocks):
        _dw_input_grad_rows(dz, k2, kt, kh, kw, sh, sw, dh, dw, pt, pl, oh, ow,
                            rows * b // nblocks, rows * (b + 1) // nblocks, dx)


def _dw_blocks(rows, work):
    """Blocks of rows, one per thread, when the pass has PAR_MIN multiply-adds and a row per
    thread; 0 runs the serial body."""
    nt = min(get_num_threads(), rows)
    return nt if nt > 1 and work >= PAR_MIN else 0


def _dw_tiled(kernel, c, w, ow, sw, scratch):
    """The tiled kernel rows (kh*kw, max(w, ow) * c) of the M = 1, stride-1 loops (a
    (kh*kw, 0) stand-in otherwise)."""
    run = kernel.shape[1] == c and sw == 1
    kt = scratch("dw_tiled", (kernel.shape[0], max(w, ow) * c if run else 0), kernel.dtype)
    if run:
        _dw_tile_kernel(kernel, kt)
    return kt


def depthwise_forward(x, kernel, bias, code, keep_pre, kh, kw, sh, sw, dh, dw, pt, pl, oh, ow, scratch, pre,
                      out):
    """out = act(depthwise_conv(x, kernel) + bias) as (n*oh*ow, c*M) rows (NHWC order).

    x (n, h, w, c) C-contiguous; kernel (kh*kw, c*M), the Keras depthwise kernel
    (kh, kw, c, M) viewed as 2-D (output channel ch*M + mm comes from input channel
    ch); bias (c*M,), zeros for a layer without one; code an activation code (not
    SOFTMAX); geometry as conv_forward. keep_pre: pre = conv + bias as well (pre may
    be ``out`` otherwise). scratch holds the tiled kernel (key "dw_tiled").
    """
    n, _, w, c = x.shape
    cm = kernel.shape[1]
    kt = _dw_tiled(kernel, c, w, ow, sw, scratch)
    blocks = _dw_blocks(n * oh, n * oh * ow * cm * kh * kw)
    if blocks:
        _dw_forward_blocks(x, kernel, kt, bias, code, keep_pre, kh, kw, sh, sw, dh, dw, pt, pl, oh, ow, blocks,
                           pre, out)
    else:
        _dw_forward_rows(x, kernel, kt, bias, code, keep_pre, kh, kw, sh, sw, dh, dw, pt, pl, oh, ow, 0, n * oh,
                         pre, out)


def depthwise_backward(x, kernel, pre, y, dy, code, kh, kw, sh, sw, dh, dw, pt, pl, oh, ow, scratch, dkernel,
                       dbias, dx):
    """Gradients of depthwise_forward (on the same x, which wrote pre and y).

    dy (n*oh*ow, c*M), already through the softmax backward for a softmax layer
    (code is then LINEAR). Writes dkernel (kh*kw, c*M), dbias (c*M,) (None: no bias)
    and dx (n, h, w, c) (None: not needed). Work buffers come from scratch (keys
    "dz", "bias_work", "dk_rows", "dw_tiled" and, with threads, "dk_parts",
    "dbias_parts").
    """
    n, h, w, c = x.shape
    kk, cm = kernel.shape
    dtype = x.dtype
    dz = scratch("dz", dy.shape, dtype) if code != LINEAR else dy
    use_bias = dbias is not None
    work = n * oh * ow * cm * kh * kw
    blocks = _dw_blocks(n * oh, work)
    la = ow * cm if (cm == c and sw == 1) else cm  # the accumulator rows of _dw_kernel_grad_rows
    if blocks:
        part = scratch("bias_work", (blocks, cm), dtype)
        dbias_parts = scratch("dbias_parts", (blocks, cm), dtype)
        acc = scratch("dk_rows", (blocks, kk, la), dtype)
        dk_parts = scratch("dk_parts", (blocks, kk, cm), dtype)
        _dw_backward_blocks(x, pre, y, dy, code, use_bias, kh, kw, sh, sw, dh, dw, pt, pl, oh, ow, blocks,
                            dz, part, dbias_parts, acc, dk_parts)
        _sum_blocks(dk_parts, dkernel)
        if use_bias:
            _sum_blocks(dbias_parts, dbias)
    else:
        part = scratch("bias_work", (cm,), dtype)
        acc = scratch("dk_rows", (kk, la), dtype)
        if use_bias:
            dbias[:] = 0
        dkernel[:] = 0
        _dw_backward_rows(x, pre, y, dy, code, use_bias, kh, kw, sh, sw, dh, dw, pt, pl, oh, ow, 0, n * oh,
                          dz, part, dbias if use_bias else part, acc, dkernel)
    if dx is None:
        return
    kt = _dw_tiled(kernel, c, w, ow, sw, scratch)
    blocks = _dw_blocks(n * h, work)
    if blocks:
        _dw_input_grad_blocks(dz, kernel, kt, kh, kw, sh, sw, dh, dw, pt, pl, oh, ow, blocks, dx)
    else:
        _dw_input_grad_rows(dz, kernel, kt, kh, kw, sh, sw, dh, dw, pt, pl, oh, ow, 0, n * h, dx)
