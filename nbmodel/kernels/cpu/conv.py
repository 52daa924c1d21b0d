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

At one thread the weight-gradient GEMM goes through NumPy: for this
transposed product numba's np.dot (SciPy's OpenBLAS) measured 1.4x slower
than NumPy's (conv2 of the cnn model: 9.3 ms vs 6.5 ms), while the two other
products run at the same speed either way. With more threads it stays in
numba (``_weight_grad``): two BLAS thread pools taking turns on two cores
spin against each other (cnn step 1.5 s instead of 50 ms, measured).

Patches are built and the GEMM runs in chunks of whole images whose patch rows
fit in the L2 cache, so the GEMM reads what im2col has just written, and
bias + activation run on each chunk's output while it is still hot. In
training the full patch matrix is kept for the weight gradient (one big GEMM);
in inference ``cols`` is just one chunk. Chunks are whole images, so the
scatter of col2im never races when images are split across threads.

Threads: each pass has a serial body over a range of rows and a parallel
wrapper that splits the range into one block per thread. The parallel one
runs only when there is enough work (PAR_MIN elements) and more than one
thread: a parallel region costs a fork/join that small layers cannot repay,
and on a busy machine a barrier waits for a descheduled thread. Bias +
activation and the activation gradient are the activations family's row
pieces (``bias_act_rows``, ``act_grad_rows``, ``act_grad_sum_rows``).
"""
import numpy as np

from ...config import get_num_threads
from ..codes import LINEAR
from ._jit import PAR_MIN, jit, pjit, prange
from .activations import act_grad_rows, act_grad_sum_rows, bias_act_rows

# bytes of patch rows per chunk: about half of a 1 MiB L2 cache
CHUNK_BYTES = 1 << 19


def _chunk_images(n, oh, ow, kk, itemsize, nthreads=1):
    """Images per chunk so that one chunk of patch rows is about CHUNK_BYTES.

    With several threads, the whole batch: each chunk costs a switch between
    numba's pool and BLAS's, and every switch wakes sleeping workers.
    """
    if nthreads > 1:
        return max(1, n)
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


@pjit
def _im2col_par(x, kh, kw, sh, sw, dh, dw, pt, pl, oh, ow, r0, r1, cols, row0, nblocks):
    for b in prange(nblocks):
        _im2col_rows(x, kh, kw, sh, sw, dh, dw, pt, pl, oh, ow, r0 + (r1 - r0) * b // nblocks,
                     r0 + (r1 - r0) * (b + 1) // nblocks, cols, row0)


@jit
def _im2col(x, kh, kw, sh, sw, dh, dw, pt, pl, oh, ow, n0, n1, cols, row0, nthreads):
    """Patch rows of images n0..n1 into cols[(n*oh*ow + p) - row0, :] (threads when worth it)."""
    nt = nthreads
    if nt > 1 and (n1 - n0) * oh * ow * cols.shape[1] >= PAR_MIN:
        _im2col_par(x, kh, kw, sh, sw, dh, dw, pt, pl, oh, ow, n0 * oh, n1 * oh, cols, row0, nt)
    else:
        _im2col_rows(x, kh, kw, sh, sw, dh, dw, pt, pl, oh, ow, n0 * oh, n1 * oh, cols, row0)


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


@pjit
def _col2im_par(dcols, kh, kw, sh, sw, dh, dw, pt, pl, oh, ow, n0, n1, row0, dx, nblocks):
    # blocks of whole images: no two threads add into the same image
    for b in prange(nblocks):
        _col2im_images(dcols, kh, kw, sh, sw, dh, dw, pt, pl, oh, ow, n0 + (n1 - n0) * b // nblocks,
                       n0 + (n1 - n0) * (b + 1) // nblocks, row0, dx)


@jit
def _col2im_add(dcols, kh, kw, sh, sw, dh, dw, pt, pl, oh, ow, n0, n1, row0, dx, nthreads):
    """dx[n] += the patch gradients of images n0..n1 (threads over images when worth it)."""
    nt = min(nthreads, n1 - n0)
    if nt > 1 and (n1 - n0) * oh * ow * dcols.shape[1] >= PAR_MIN:
        _col2im_par(dcols, kh, kw, sh, sw, dh, dw, pt, pl, oh, ow, n0, n1, row0, dx, nt)
    else:
        _col2im_images(dcols, kh, kw, sh, sw, dh, dw, pt, pl, oh, ow, n0, n1, row0, dx)


@pjit
def _bias_act_par(out, bias, code, keep_pre, r0, r1, pre, nblocks):
    for b in prange(nblocks):
        bias_act_rows(out, bias, code, keep_pre, r0 + (r1 - r0) * b // nblocks,
                      r0 + (r1 - r0) * (b + 1) // nblocks, pre)


@jit
def _bias_act(out, bias, code, keep_pre, r0, r1, pre, nthreads):
    """out[r] = act(out[r] + bias) in place for rows r0..r1 (threads when worth it)."""
    nt = nthreads
    if nt > 1 and (r1 - r0) * out.shape[1] >= PAR_MIN:
        _bias_act_par(out, bias, code, keep_pre, r0, r1, pre, nt)
    else:
        bias_act_rows(out, bias, code, keep_pre, r0, r1, pre)


@jit
def _conv_forward(x, k2, bias, code, keep_pre, kh, kw, sh, sw, dh, dw, pt, pl, oh, ow,
                  chunk, nthreads, cols, pre, out):
    """out = act(conv(x, k2) + bias) as (n*oh*ow, f) rows; pre keeps z when keep_pre.

    bias is zeros for a layer without one (adding it costs nothing next to the GEMM).

    cols is the full patch matrix (n*oh*ow, kh*kw*c) when the caller keeps it
    for backward, or a buffer of ``chunk`` images' rows otherwise.
    """
    n = x.shape[0]
    per = oh * ow
    full = cols.shape[0] == n * per
    for n0 in range(0, n, chunk):
        n1 = min(n, n0 + chunk)
        r0 = n0 * per
        r1 = n1 * per
        row0 = 0 if full else r0
        _im2col(x, kh, kw, sh, sw, dh, dw, pt, pl, oh, ow, n0, n1, cols, row0, nthreads)
        np.dot(cols[r0 - row0: r1 - row0], k2, out[r0:r1])
        _bias_act(out, bias, code, keep_pre, r0, r1, pre, nthreads)


@pjit
def _act_backward_par(pre, y, dy, code, dz, nblocks):
    rows = dy.shape[0]
    for b in prange(nblocks):
        act_grad_rows(pre, y, dy, code, rows * b // nblocks, rows * (b + 1) // nblocks, dz)


@jit
def _act_backward(pre, y, dy, code, dz, nthreads):
    """dz = dy * act'(pre, y) over (rows, f) (threads when worth it)."""
    nt = nthreads
    if nt > 1 and dy.size >= PAR_MIN:
        _act_backward_par(pre, y, dy, code, dz, nt)
    else:
        act_grad_rows(pre, y, dy, code, 0, dy.shape[0], dz)


@jit
def _column_sums(a, part, out):
    """out[f] = sum over rows of a[:, f], summed in blocks of 256 rows (partials in part)
    to limit float32 rounding."""
    out[:] = 0
    rows = a.shape[0]
    for b0 in range(0, rows, 256):
        part[:] = 0
        for r in range(b0, min(rows, b0 + 256)):
            for f in range(a.shape[1]):
                part[f] += a[r, f]
        out += part


@jit
def _act_backward_sums(pre, y, dy, code, dz, part, dbias):
    """dz = dy * act'(z) and dbias = column sums of dz in one pass (blocks of 256 rows)."""
    rows, m = dy.shape
    dbias[:] = 0
    for b0 in range(0, rows, 256):
        part[:] = 0
        act_grad_sum_rows(pre, y, dy, code, b0, min(rows, b0 + 256), dz, part)
        for f in range(m):
            dbias[f] += part[f]


@jit
def _conv_backward_dz(pre, y, dy, code, use_bias, nthreads, dz, dbias, work):
    """First step of the backward pass: dz = dy * act'(z) (skipped when the
    activation is linear: dz is then dy itself) and dbias = column sums of dz.

    dy, pre, y, dz: (n*oh*ow, f); work (f,) scratch. The weight gradient
    dk2 = cols.T @ dz comes next, then _conv_backward_dx.
    """
    if code == LINEAR:
        if use_bias:
            _column_sums(dy, work, dbias)
    elif use_bias and (nthreads == 1 or dy.size < PAR_MIN):
        _act_backward_sums(pre, y, dy, code, dz, work, dbias)
    else:
        _act_backward(pre, y, dy, code, dz, nthreads)
        if use_bias:
            _column_sums(dz, work, dbias)


@jit
def _weight_grad(cols, dz, dk2):
    """dk2 = cols.T @ dz, one GEMM over every output pixel."""
    np.dot(cols.T, dz, dk2)


@jit
def _conv_backward_dx(dz, k2, kh, kw, sh, sw, dh, dw, pt, pl, oh, ow, chunk, nthreads, dcols, dx):
    """dx of _conv_forward from dz (n*oh*ow, f): per chunk of images one GEMM
    dcols = dz @ k2.T (dcols holds ``chunk`` images' patch rows), then col2im."""
    dx[:] = 0
    n = dx.shape[0]
    per = oh * ow
    k2t = k2.T
    for n0 in range(0, n, chunk):
        n1 = min(n, n0 + chunk)
        r0 = n0 * per
        r1 = n1 * per
        np.dot(dz[r0:r1], k2t, dcols[: r1 - r0])
        _col2im_add(dcols, kh, kw, sh, sw, dh, dw, pt, pl, oh, ow, n0, n1, r0, dx, nthreads)


# ------------------------------------------------------------ launch functions
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
    the patches live in a buffer of one chunk of images.
    scratch(key, shape, dtype=None) returns an uninitialized C-contiguous
    array, the same one for the same key, shape and dtype.
    """
    n = x.shape[0]
    kk = kernel.shape[0]
    nt = get_num_threads()
    chunk = _chunk_images(n, oh, ow, kk, x.itemsize, nt)
    rows_kept = n if for_backward else min(n, chunk)
    cols = scratch("cols", (rows_kept * oh * ow, kk), x.dtype)
    _conv_forward(x, kernel, bias, code, keep_pre, kh, kw, sh, sw, dh, dw, pt, pl, oh, ow,
                  chunk, nt, cols, pre, out)


def conv_backward(x, kernel, pre, y, dy, code, kh, kw, sh, sw, dh, dw, pt, pl, oh, ow,
                  scratch, dkernel, dbias, dx):
    """Gradients of conv_forward (which ran with for_backward=True on the same
    x and scratch, and wrote pre and y).

    dy (n*oh*ow, filters) is the gradient of the output, already through the
    softmax backward for a softmax layer (code is then LINEAR). Writes
    dkernel (kh*kw*c, filters), dbias (filters,) (None: no bias) and dx
    (n, h, w, c) (None: no input gradient needed). Work buffers come from
    scratch (keys "cols", "dz", "dcols", "bias_work").
    """
    n = x.shape[0]
    kk, f = kernel.shape
    dtype = x.dtype
    nt = get_num_threads()
    chunk = _chunk_images(n, oh, ow, kk, x.itemsize, nt)
    cols = scratch("cols", (n * oh * ow, kk), dtype)
    dz = scratch("dz", dy.shape, dtype) if code != LINEAR else dy
    work = scratch("bias_work", (f,), dtype)
    use_bias = dbias is not None
    _conv_backward_dz(pre, y, dy, code, use_bias, nt, dz, dbias if use_bias else work, work)
    if nt == 1:  # NumPy's BLAS is faster on this product; one pool only when threaded (module doc)
        np.dot(cols.T, dz, out=dkernel)
    else:
        _weight_grad(cols, dz, dkernel)
    if dx is not None:
        dcols = scratch("dcols", (min(n, chunk) * oh * ow, kk), dtype)
        _conv_backward_dx(dz, kernel, kh, kw, sh, sw, dh, dw, pt, pl, oh, ow, chunk, nt, dcols, dx)
