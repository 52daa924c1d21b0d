"""Optimizer family on CUDA: one fused update per element of the flat
parameter buffer, and the float64 per-segment sums of squares that the clip
norms need (see nbmodel/kernels/contract.py and nbmodel/kernels/cpu/optim.py).

The step kernels run one thread per element; each finds its segment of
``bounds`` by the CPU's binary search (``segment_of``), forms the clipped,
scaled gradient with the CPU's ``clipped_grad`` and updates the element with
the CPU's ``<rule>_update`` (sgd, adam, rmsprop, nadam, adagrad, adadelta,
adamax, lion): ``@inline``
helpers that numba inlines into the CUDA kernel. Every element is updated independently,
as on the CPU, so the update matches it up to the GPU's float rounding
(fused multiply-adds, fast division and square root).

``segment_sumsq``: each block takes a contiguous run of ``_SUM_ITEMS``
elements per thread, and for every segment that meets its run sums the
squares in float64 (one shared-memory tree) and adds the block's total to
``out[s]`` with one atomic add. Several blocks add into a long segment, so
the order of those additions (and so the last bits of the float64 sum) may
vary from run to run.
"""
from __future__ import annotations

import math

import numpy as np

from ..cpu import optim as _cpu
from .runtime import THREADS, cuda, kernel, launch_1d, result_buffer, shared_helper, types

_F = (types.float32, types.float64)
_I = types.int64[::1]
_B = types.boolean


_seg = shared_helper(_cpu.segment_of)
_clipped = shared_helper(_cpu.clipped_grad)
_sgd_update = shared_helper(_cpu.sgd_update)
_adam_update = shared_helper(_cpu.adam_update)
_rmsprop_update = shared_helper(_cpu.rmsprop_update)
_nadam_update = shared_helper(_cpu.nadam_update)
_adagrad_update = shared_helper(_cpu.adagrad_update)
_adadelta_update = shared_helper(_cpu.adadelta_update)
_adamax_update = shared_helper(_cpu.adamax_update)
_lion_update = shared_helper(_cpu.lion_update)


def _one(t):
    return t[::1]


@kernel(*[(_one(t), _one(t), _I, _one(t), _B, t, _B, t, t, t, _B, _one(t)) for t in _F])
def _sgd(p, g, bounds, scales, use_cv, cv, use_wd, wd_lr, lr, momentum, nesterov, m):
    i = cuda.grid(1)
    if i < p.size:
        _sgd_update(p, m, i, _clipped(g, i, scales[_seg(bounds, i)], use_cv, cv), use_wd, wd_lr, lr, momentum,
                    nesterov)


def sgd_step(p, g, bounds, scales, use_cv, cv, use_wd, wd_lr, lr, momentum, nesterov, m):
    if p.size:
        t = p.dtype.type
        _sgd[launch_1d(p.size)](p, g, bounds, scales, bool(use_cv), t(cv), bool(use_wd), t(wd_lr), t(lr),
                                t(momentum), bool(nesterov), m)


@kernel(*[(_one(t), _one(t), _I, _one(t), _B, t, _B, t, t, t, t, t, _B, _one(t), _one(t), _one(t)) for t in _F])
def _adam(p, g, bounds, scales, use_cv, cv, use_wd, wd_lr, alpha, one_m_b1, one_m_b2, eps, amsgrad, m, v, vhat):
    i = cuda.grid(1)
    if i < p.size:
        _adam_update(p, m, v, vhat, i, _clipped(g, i, scales[_seg(bounds, i)], use_cv, cv), use_wd, wd_lr, alpha,
                     one_m_b1, one_m_b2, eps, amsgrad)


def adam_step(p, g, bounds, scales, use_cv, cv, use_wd, wd_lr, alpha, one_m_b1, one_m_b2, eps, amsgrad, m, v,
              vhat):
    if p.size:
        t = p.dtype.type
        _adam[launch_1d(p.size)](p, g, bounds, scales, bool(use_cv), t(cv), bool(use_wd), t(wd_lr), t(alpha),
                                 t(one_m_b1), t(one_m_b2), t(eps), bool(amsgrad), m, v, vhat)


@kernel(*[(_one(t), _one(t), _I, _one(t), _B, t, _B, t, t, t, t, t, t, _B, _one(t), _one(t), _one(t))
          for t in _F])
def _rmsprop(p, g, bounds, scales, use_cv, cv, use_wd, wd_lr, lr, rho, one_m_rho, momentum, eps, centered,
             vel, mom, avg):
    i = cuda.grid(1)
    if i < p.size:
        _rmsprop_update(p, vel, mom, avg, i, _clipped(g, i, scales[_seg(bounds, i)], use_cv, cv), use_wd, wd_lr,
                        lr, rho, one_m_rho, momentum, eps, centered)


def rmsprop_step(p, g, bounds, scales, use_cv, cv, use_wd, wd_lr, lr, rho, one_m_rho, momentum, eps, centered,
                 vel, mom, avg):
    if p.size:
        t = p.dtype.type
        _rmsprop[launch_1d(p.size)](p, g, bounds, scales, bool(use_cv), t(cv), bool(use_wd), t(wd_lr), t(lr),
                                    t(rho), t(one_m_rho), t(momentum), t(eps), bool(centered), vel, mom, avg)


def _sig(n_scalars, n_slots):
    """Signatures (float32, float64) of a step kernel: p, g, bounds, scales, use_cv, cv, use_wd, wd_lr,
    then ``n_scalars`` hyperparameters and ``n_slots`` slot arrays."""
    return [(_one(t), _one(t), _I, _one(t), _B, t, _B, t) + (t,) * n_scalars + (_one(t),) * n_slots for t in _F]


@kernel(*_sig(7, 2))
def _nadam(p, g, bounds, scales, use_cv, cv, use_wd, wd_lr, lr, one_m_b1, one_m_b2, m_coef, g_coef, v_coef, eps, m,
           v):
    i = cuda.grid(1)
    if i < p.size:
        _nadam_update(p, m, v, i, _clipped(g, i, scales[_seg(bounds, i)], use_cv, cv), use_wd, wd_lr, lr, one_m_b1,
                      one_m_b2, m_coef, g_coef, v_coef, eps)


def nadam_step(p, g, bounds, scales, use_cv, cv, use_wd, wd_lr, lr, one_m_b1, one_m_b2, m_coef, g_coef, v_coef, eps,
               m, v):
    if p.size:
        t = p.dtype.type
        _nadam[launch_1d(p.size)](p, g, bounds, scales, bool(use_cv), t(cv), bool(use_wd), t(wd_lr), t(lr),
                                  t(one_m_b1), t(one_m_b2), t(m_coef), t(g_coef), t(v_coef), t(eps), m, v)


@kernel(*_sig(2, 1))
def _adagrad(p, g, bounds, scales, use_cv, cv, use_wd, wd_lr, lr, eps, acc):
    i = cuda.grid(1)
    if i < p.size:
        _adagrad_update(p, acc, i, _clipped(g, i, scales[_seg(bounds, i)], use_cv, cv), use_wd, wd_lr, lr, eps)


def adagrad_step(p, g, bounds, scales, use_cv, cv, use_wd, wd_lr, lr, eps, acc):
    if p.size:
        t = p.dtype.type
        _adagrad[launch_1d(p.size)](p, g, bounds, scales, bool(use_cv), t(cv), bool(use_wd), t(wd_lr), t(lr), t(eps),
                                    acc)


@kernel(*_sig(4, 2))
def _adadelta(p, g, bounds, scales, use_cv, cv, use_wd, wd_lr, lr, rho, one_m_rho, eps, acc_g, acc_d):
    i = cuda.grid(1)
    if i < p.size:
        _adadelta_update(p, acc_g, acc_d, i, _clipped(g, i, scales[_seg(bounds, i)], use_cv, cv), use_wd, wd_lr, lr,
                         rho, one_m_rho, eps)


def adadelta_step(p, g, bounds, scales, use_cv, cv, use_wd, wd_lr, lr, rho, one_m_rho, eps, acc_g, acc_d):
    if p.size:
        t = p.dtype.type
        _adadelta[launch_1d(p.size)](p, g, bounds, scales, bool(use_cv), t(cv), bool(use_wd), t(wd_lr), t(lr),
                                     t(rho), t(one_m_rho), t(eps), acc_g, acc_d)


@kernel(*_sig(4, 2))
def _adamax(p, g, bounds, scales, use_cv, cv, use_wd, wd_lr, alpha, one_m_b1, beta_2, eps, m, u):
    i = cuda.grid(1)
    if i < p.size:
        _adamax_update(p, m, u, i, _clipped(g, i, scales[_seg(bounds, i)], use_cv, cv), use_wd, wd_lr, alpha,
                       one_m_b1, beta_2, eps)


def adamax_step(p, g, bounds, scales, use_cv, cv, use_wd, wd_lr, alpha, one_m_b1, beta_2, eps, m, u):
    if p.size:
        t = p.dtype.type
        _adamax[launch_1d(p.size)](p, g, bounds, scales, bool(use_cv), t(cv), bool(use_wd), t(wd_lr), t(alpha),
                                   t(one_m_b1), t(beta_2), t(eps), m, u)


@kernel(*_sig(5, 1))
def _lion(p, g, bounds, scales, use_cv, cv, use_wd, wd_lr, lr, beta_1, one_m_b1, beta_2, one_m_b2, m):
    i = cuda.grid(1)
    if i < p.size:
        _lion_update(p, m, i, _clipped(g, i, scales[_seg(bounds, i)], use_cv, cv), use_wd, wd_lr, lr, beta_1,
                     one_m_b1, beta_2, one_m_b2)


def lion_step(p, g, bounds, scales, use_cv, cv, use_wd, wd_lr, lr, beta_1, one_m_b1, beta_2, one_m_b2, m):
    if p.size:
        t = p.dtype.type
        _lion[launch_1d(p.size)](p, g, bounds, scales, bool(use_cv), t(cv), bool(use_wd), t(wd_lr), t(lr), t(beta_1),
                                 t(one_m_b1), t(beta_2), t(one_m_b2), m)


# --------------------------------------------------------------- segment_sumsq
_SUM_THREADS = THREADS  # threads per block (a power of two, at most THREADS)
_SUM_ITEMS = 8  # elements per thread: a block covers _SUM_THREADS * _SUM_ITEMS consecutive elements


@kernel((types.float64[::1],))
def _zero64(out):
    i = cuda.grid(1)
    if i < out.size:
        out[i] = 0.0


@kernel(*[(_one(t), _I, types.int64, types.float64[::1]) for t in _F])
def _segment_sumsq(g, bounds, span, out):
    """out[s] += sum of g**2 over segment s within this block's span of elements."""
    part = cuda.shared.array(THREADS, types.float64)
    tid = cuda.threadIdx.x
    nt = cuda.blockDim.x
    start = cuda.blockIdx.x * span
    stop = min(g.size, start + span)
    s = _seg(bounds, start)
    last = _seg(bounds, stop - 1)
    while s <= last:  # the same bounds for every thread of the block: the barriers below match
        lo = max(start, bounds[s])
        hi = min(stop, bounds[s + 1])
        acc = 0.0
        j = lo + tid
        while j < hi:
            x = types.float64(g[j])
            acc += x * x
            j += nt
        part[tid] = acc
        cuda.syncthreads()
        h = nt // 2
        while h > 0:
            if tid < h:
                part[tid] += part[tid + h]
            cuda.syncthreads()
            h //= 2
        if tid == 0 and hi > lo:
            cuda.atomic.add(out, s, part[0])
        cuda.syncthreads()  # part is reused for the next segment
        s += 1


def segment_sumsq(g, bounds, out):
    """out[i] = sum of g**2 over segment i, in float64."""
    _zero64[launch_1d(out.size)](out)
    if g.size:
        span = _SUM_THREADS * _SUM_ITEMS
        _segment_sumsq[-(-g.size // span), _SUM_THREADS](g, bounds, span, out)


# ------------------------------------------- regularizers and constraints
_l1l2_term = shared_helper(_cpu.l1l2_grad_term)


@kernel(*[(_one(t), types.float64[::1]) for t in _F])
def _l1l2_sums(w, out):
    """out[0] += sum|w|, out[1] += sum w**2 in float64: a shared-memory tree per block."""
    part1 = cuda.shared.array(THREADS, types.float64)
    part2 = cuda.shared.array(THREADS, types.float64)
    tid = cuda.threadIdx.x
    a1 = types.float64(0)
    a2 = types.float64(0)
    i = cuda.grid(1)
    stride = cuda.gridsize(1)
    while i < w.size:
        x = types.float64(w[i])
        a1 += abs(x)
        a2 += x * x
        i += stride
    part1[tid] = a1
    part2[tid] = a2
    cuda.syncthreads()
    s = cuda.blockDim.x // 2
    while s > 0:
        if tid < s:
            part1[tid] += part1[tid + s]
            part2[tid] += part2[tid + s]
        cuda.syncthreads()
        s //= 2
    if tid == 0:
        cuda.atomic.add(out, 0, part1[0])
        cuda.atomic.add(out, 1, part2[0])


def l1l2_penalty(w, l1, l2) -> float:
    if w.size == 0:
        return 0.0
    out = result_buffer(np.zeros(2, np.float64))
    threads = 32
    while threads < min(w.size, THREADS):
        threads *= 2
    _l1l2_sums[min(-(-w.size // threads), 1024), threads](w.reshape(w.size), out)
    a1, a2 = out.copy_to_host()
    return float(l1) * float(a1) + float(l2) * float(a2)


@kernel(*[(_one(t), t, t, _one(t)) for t in _F])
def _add_l1l2_grad(w, l1, l2x2, g):
    i = cuda.grid(1)
    if i < w.size:
        g[i] += _l1l2_term(w[i], l1, l2x2)


def add_l1l2_grad(w, l1, l2, g):
    if w.size:
        t = w.dtype.type
        _add_l1l2_grad[launch_1d(w.size)](w.reshape(w.size), t(l1), t(2.0 * l2), g.reshape(g.size))


@kernel(*[(t[:, :, ::1], types.float64, types.float64, types.float64, types.float64) for t in _F])
def _clip_norms(w, lo, hi, rate, eps):
    """One thread per (a, c) column of w (p, m, q)."""
    i = cuda.grid(1)
    if i < w.shape[0] * w.shape[2]:
        a = i // w.shape[2]
        c = i % w.shape[2]
        s = types.float64(0)
        for b in range(w.shape[1]):
            x = types.float64(w[a, b, c])
            s += x * x
        n = math.sqrt(s)
        d = min(max(n, lo), hi)
        f = (rate * d + (1.0 - rate) * n) / (eps + n)
        for b in range(w.shape[1]):
            w[a, b, c] = w[a, b, c] * f


def clip_norms(w, lo, hi, rate, eps):
    n = w.shape[0] * w.shape[2]
    if n:
        _clip_norms[launch_1d(n)](w, float(lo), float(hi), float(rate), float(eps))


@kernel(*[(_one(t),) for t in _F])
def _non_neg(w):
    i = cuda.grid(1)
    if i < w.size and w[i] < 0:
        w[i] = 0


def non_neg(w):
    if w.size:
        _non_neg[launch_1d(w.size)](w.reshape(w.size))
