"""Losses family on CUDA: loss values and gradients, metric matches (see
nbmodel/kernels/contract.py and the CPU twins in nbmodel/kernels/cpu/losses.py).

One thread per row of the 2-D view of y_pred, looping over the row's columns
in the order the CPU does: rows are independent, so there is no reduction
across threads and a row's value does not depend on the launch geometry. This
suits the classification heads nbmodel trains (tens to hundreds of classes);
a vocabulary of tens of thousands would want a block per row instead.

Shared with the CPU kernels (``@inline`` helpers that numba inlines into a
CUDA kernel): ``row_max`` of _math.py, ``row_weight``, ``dense_element`` (the
value and gradient of each dense loss code), ``argmax_row`` and ``in_top_k``
of cpu/losses.py. Not shared: ``fast_exp`` (and so ``exp_sum``/``exp_store``
and the CPU cross-entropy row helpers that call them). It is an
``@overload`` whose implementation numba-cuda compiles as a device function
through ``compile_device``, which asks the *current device* for its compute
capability, so the PTX check cannot compile it without a GPU
(CudaSupportError: CUDA driver library cannot be found); and it would buy
nothing here: it exists so that LLVM can vectorize exp on the CPU, while a
GPU's ``math.exp`` is the hardware ex2 path. The CUDA kernels use ``math.exp``.

Integer results "returned to the host" (sparse_ce's counts) come back through
a small device array copied to the host.
"""
from __future__ import annotations

import math

import numpy as np

from ..codes import BCE_LOGITS
from ..cpu._math import row_max
from ..cpu.losses import argmax_row, dense_element, in_top_k, row_weight
from .runtime import cuda, kernel, result_buffer, shared_helper, types

_F = (types.float32, types.float64)
_LABELS = (types.int64, types.int32, types.float32, types.float64)
_ROW_THREADS = 128  # rows per block: one thread per row


_row_max = shared_helper(row_max)
_weight_of = shared_helper(row_weight)
_dense_element = shared_helper(dense_element)
_argmax = shared_helper(argmax_row)
_top_k = shared_helper(in_top_k)


def _one(t):
    return t[::1]


def _two(t):
    return t[:, ::1]


def _rows(n):
    if n >= _ROW_THREADS:
        return -(-n // _ROW_THREADS), _ROW_THREADS
    return 1, max(32, -(-n // 32) * 32)  # whole warps only


# ------------------------------------------------------------------ dense losses
@kernel(*[(types.int64, _two(t), _two(t), t, t, t, _one(t), types.int64, types.boolean, types.boolean, _one(t),
           _two(t)) for t in _F])
def _dense_loss(code, y_true, y_pred, a, b, eps, w, w_per, use_w, need_grad, row_loss, dy):
    i = cuda.grid(1)
    n = y_pred.shape[0]
    if i < n:
        d = y_pred.shape[1]
        one = y_pred.dtype.type(1)
        zero = one - one
        gs = _weight_of(w, w_per, use_w, i, one) * (one / y_pred.dtype.type(d))
        s = zero
        for j in range(d):
            p = y_pred[i, j]
            ez = math.exp(-abs(p)) if code == BCE_LOGITS else zero
            l, g = _dense_element(code, y_true[i, j], p, a, b, eps, ez, one)
            s += l
            if need_grad:
                dy[i, j] = g * gs
        row_loss[i] = s * gs


def dense_loss(code, y_true, y_pred, a, b, eps, w, w_per, use_w, need_grad, row_loss, dy):
    n = y_pred.shape[0]
    if n:
        t = np.dtype(y_pred.dtype).type
        _dense_loss[_rows(n)](int(code), y_true, y_pred, t(a), t(b), t(eps), w, int(w_per), bool(use_w),
                              bool(need_grad), row_loss, dy)


# ------------------------------------------------------------ categorical CE
@kernel(*[(_two(t), _two(t), types.boolean, t, t, t, _one(t), types.int64, types.boolean, types.boolean,
           _one(t), _two(t)) for t in _F])
def _categorical_ce(y_true, y_pred, from_logits, a, b, eps, w, w_per, use_w, need_grad, row_loss, dy):
    i = cuda.grid(1)
    if i < y_pred.shape[0]:
        c_n = y_pred.shape[1]
        one = y_pred.dtype.type(1)
        zero = one - one
        wi = _weight_of(w, w_per, use_w, i, one)
        loss = zero
        if from_logits:
            m = _row_max(y_pred[i])
            s = zero
            for j in range(c_n):
                e = math.exp(y_pred[i, j] - m)
                if need_grad:
                    dy[i, j] = e
                s += e
            lse = m + math.log(s)
            tsum = zero
            for j in range(c_n):
                tt = y_true[i, j] * a + b
                tsum += tt
                loss += tt * (lse - y_pred[i, j])
            if need_grad:  # softmax * sum(t) - t
                k = tsum / s
                for j in range(c_n):
                    dy[i, j] = (dy[i, j] * k - (y_true[i, j] * a + b)) * wi
        else:  # q = p / sum(p) clipped to [eps, 1 - eps]; loss = -sum t log q
            s = zero
            for j in range(c_n):
                s += y_pred[i, j]
            inv_s = one / s
            gq = zero
            for j in range(c_n):
                tt = y_true[i, j] * a + b
                q = y_pred[i, j] * inv_s
                c = q
                inside = True
                if c < eps:
                    c = eps
                    inside = False
                elif c > one - eps:
                    c = one - eps
                    inside = False
                loss -= tt * math.log(c)
                if inside:
                    gq -= tt
                if need_grad:
                    dy[i, j] = -tt / q if inside else zero
            if need_grad:
                for j in range(c_n):
                    dy[i, j] = (dy[i, j] - gq) * inv_s * wi
        row_loss[i] = loss * wi


def categorical_ce(y_true, y_pred, from_logits, a, b, eps, w, w_per, use_w, need_grad, row_loss, dy):
    n = y_pred.shape[0]
    if n:
        t = np.dtype(y_pred.dtype).type
        _categorical_ce[_rows(n)](y_true, y_pred, bool(from_logits), t(a), t(b), t(eps), w, int(w_per),
                                  bool(use_w), bool(need_grad), row_loss, dy)


# ----------------------------------------------------------------- sparse CE
def _label_scalar(lt):
    """The type the kernels compare labels with: the label's own float type (a
    float32 label never meets a float64 constant), int64 for integer labels."""
    return lt if lt in (types.float32, types.float64) else types.int64


@kernel(*[(_one(lt), _two(t), types.boolean, _label_scalar(lt), _label_scalar(lt), types.boolean, t, _one(t),
           types.int64, types.boolean, types.boolean, _one(t), _two(t), _one(types.int64))
          for lt in _LABELS for t in _F])
def _sparse_ce(labels, y_pred, from_logits, ignore, n_cls, use_ignore, eps, w, w_per, use_w, need_grad,
               row_loss, dy, counts):
    """counts[0] += ignored rows, counts[1] += bad rows (block totals, one atomic add each)."""
    tally = cuda.shared.array(2, types.int32)
    tid = cuda.threadIdx.x
    if tid < 2:
        tally[tid] = 0
    cuda.syncthreads()
    i = cuda.grid(1)
    if i < y_pred.shape[0]:
        c_n = y_pred.shape[1]
        one = y_pred.dtype.type(1)
        zero = one - one
        lab = labels[i]
        lzero = n_cls - n_cls
        status = 0
        k = 0
        if use_ignore and lab == ignore:
            status = 1
        elif not (lab >= lzero and lab < n_cls):  # also catches NaN
            status = 2
        else:
            k = int(lab)
            if labels.dtype.type(k) != lab:  # a float label that is not a whole number
                status = 2
        if status == 1:
            row_loss[i] = zero
            if need_grad:
                for j in range(c_n):
                    dy[i, j] = zero
            cuda.atomic.add(tally, 0, 1)
        elif status == 2:
            cuda.atomic.add(tally, 1, 1)
        else:
            wi = _weight_of(w, w_per, use_w, i, one)
            if from_logits:
                m = _row_max(y_pred[i])
                s = zero
                for j in range(c_n):
                    e = math.exp(y_pred[i, j] - m)
                    if need_grad:
                        dy[i, j] = e
                    s += e
                if need_grad:  # softmax - onehot
                    k_s = wi / s
                    for j in range(c_n):
                        dy[i, j] *= k_s
                    dy[i, k] -= wi
                row_loss[i] = (m + math.log(s) - y_pred[i, k]) * wi
            else:
                s = zero
                for j in range(c_n):
                    s += y_pred[i, j]
                inv_s = one / s
                q = y_pred[i, k] * inv_s
                c = q
                inside = True
                if c < eps:
                    c = eps
                    inside = False
                elif c > one - eps:
                    c = one - eps
                    inside = False
                row_loss[i] = -math.log(c) * wi
                if need_grad:
                    if inside:  # d(-log(p_k / s)) / dp_j = 1 / s - [j == k] / p_k
                        g = inv_s * wi
                        for j in range(c_n):
                            dy[i, j] = g
                        dy[i, k] -= wi / y_pred[i, k]
                    else:
                        for j in range(c_n):
                            dy[i, j] = zero
    cuda.syncthreads()
    if tid < 2 and tally[tid] != 0:
        cuda.atomic.add(counts, tid, types.int64(tally[tid]))


def sparse_ce(labels, y_pred, from_logits, ignore, use_ignore, eps, w, w_per, use_w, need_grad, row_loss, dy):
    """Returns (rows used, bad labels) to the host, like the CPU kernel."""
    n = y_pred.shape[0]
    if not n:
        return 0, 0
    lt = np.dtype(labels.dtype)
    # float labels meet ignore and C in their own type (the CPU compares in float64: the same for |ignore| < 2**24)
    cast = lt.type if lt.kind == "f" else np.int64
    use_ignore = bool(use_ignore)
    if lt.kind != "f" and use_ignore and not np.iinfo(lt).min <= int(ignore) <= np.iinfo(lt).max:
        use_ignore = False  # no label of this type can equal it
    counts = result_buffer(np.zeros(2, np.int64))
    t = np.dtype(y_pred.dtype).type
    _sparse_ce[_rows(n)](labels, y_pred, bool(from_logits), cast(ignore if use_ignore else 0), cast(y_pred.shape[1]),
                         use_ignore, t(eps), w, int(w_per), bool(use_w), bool(need_grad), row_loss, dy, counts)
    ignored, bad = (int(v) for v in counts.copy_to_host())
    return n - ignored - bad, bad


# ------------------------------------------------------------------ metrics
@kernel(*[(_one(lt), _two(t), _label_scalar(lt), types.int64, _one(types.float64))
          for lt in _LABELS for t in _F])
def _sparse_matches(labels, y_pred, n_cls, k, out):
    i = cuda.grid(1)
    if i < y_pred.shape[0]:
        lab = labels[i]
        hit = 0.0
        if lab >= n_cls - n_cls and lab < n_cls:
            t = int(lab)
            if labels.dtype.type(t) == lab:
                if k == 0:
                    hit = 1.0 if _argmax(y_pred, i) == t else 0.0
                else:
                    hit = 1.0 if _top_k(y_pred, i, k, t) else 0.0
        out[i] = hit


def sparse_matches(labels, y_pred, k, out):
    n = y_pred.shape[0]
    if n:
        lt = np.dtype(labels.dtype)
        cast = lt.type if lt.kind == "f" else np.int64
        _sparse_matches[_rows(n)](labels, y_pred, cast(y_pred.shape[1]), int(k), out)


@kernel(*[(_two(t), _two(t), types.int64, _one(types.float64)) for t in _F])
def _categorical_matches(y_true, y_pred, k, out):
    i = cuda.grid(1)
    if i < y_pred.shape[0]:
        t = _argmax(y_true, i)
        if k == 0:
            out[i] = 1.0 if _argmax(y_pred, i) == t else 0.0
        else:
            out[i] = 1.0 if _top_k(y_pred, i, k, t) else 0.0


def categorical_matches(y_true, y_pred, k, out):
    n = y_pred.shape[0]
    if n:
        _categorical_matches[_rows(n)](y_true, y_pred, int(k), out)
