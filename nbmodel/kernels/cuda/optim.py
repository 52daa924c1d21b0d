"""Optimizer family on CUDA: one fused update per element of the flat
parameter buffer, and the float64 per-segment sums of squares that the clip
norms need (see nbmodel/kernels/contract.py and nbmodel/kernels/cpu/optim.py).

The step kernels run one thread per element; each finds its segment of
``bounds`` by the CPU's binary search (``_segment_of``) and forms the clipped,
scaled gradient with the CPU's ``_grad``: both are ``@inline`` helpers that
numba inlines into the CUDA kernel. Every element is updated independently,
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

from ..cpu.optim import _grad, _segment_of
from .runtime import THREADS, cuda, kernel, launch_1d, simulator, types

_F = (types.float32, types.float64)
_I = types.int64[::1]
_B = types.boolean


def _shared(fn):
    """A CPU ``@inline`` helper called from a CUDA kernel: numba inlines it when it
    compiles the kernel; the simulator runs its Python function instead (the CPU
    dispatcher cannot take the simulator's stand-in arrays)."""
    return fn.py_func if simulator() else fn


_seg = _shared(_segment_of)
_clipped = _shared(_grad)


def _one(t):
    return t[::1]


@kernel(*[(_one(t), _one(t), _I, _one(t), _B, t, _B, t, t, t, _B, _one(t)) for t in _F])
def _sgd(p, g, bounds, scales, use_cv, cv, use_wd, wd_lr, lr, momentum, nesterov, m):
    i = cuda.grid(1)
    if i < p.size:
        zero = p.dtype.type(0)
        gj = _clipped(g, i, scales[_seg(bounds, i)], use_cv, cv)
        pj = p[i]
        if use_wd:
            pj -= pj * wd_lr
        if momentum != zero:
            mj = momentum * m[i] - gj * lr
            m[i] = mj
            if nesterov:
                pj += momentum * mj - gj * lr
            else:
                pj += mj
        else:
            pj -= gj * lr
        p[i] = pj


def sgd_step(p, g, bounds, scales, use_cv, cv, use_wd, wd_lr, lr, momentum, nesterov, m):
    if p.size:
        t = p.dtype.type
        _sgd[launch_1d(p.size)](p, g, bounds, scales, bool(use_cv), t(cv), bool(use_wd), t(wd_lr), t(lr),
                                t(momentum), bool(nesterov), m)


@kernel(*[(_one(t), _one(t), _I, _one(t), _B, t, _B, t, t, t, t, t, _B, _one(t), _one(t), _one(t)) for t in _F])
def _adam(p, g, bounds, scales, use_cv, cv, use_wd, wd_lr, alpha, one_m_b1, one_m_b2, eps, amsgrad, m, v, vhat):
    i = cuda.grid(1)
    if i < p.size:
        gj = _clipped(g, i, scales[_seg(bounds, i)], use_cv, cv)
        pj = p[i]
        if use_wd:
            pj -= pj * wd_lr
        mj = m[i] + (gj - m[i]) * one_m_b1
        vj = v[i] + (gj * gj - v[i]) * one_m_b2
        m[i] = mj
        v[i] = vj
        if amsgrad:
            vh = max(vhat[i], vj)
            vhat[i] = vh
            vj = vh
        p[i] = pj - (mj * alpha) / (math.sqrt(vj) + eps)


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
        zero = p.dtype.type(0)
        gj = _clipped(g, i, scales[_seg(bounds, i)], use_cv, cv)
        pj = p[i]
        if use_wd:
            pj -= pj * wd_lr
        vj = rho * vel[i] + one_m_rho * (gj * gj)
        vel[i] = vj
        if centered:
            aj = rho * avg[i] + one_m_rho * gj
            avg[i] = aj
            den = vj - aj * aj + eps
        else:
            den = vj + eps
        inc = (lr * gj) / math.sqrt(den)
        if momentum > zero:
            mj = momentum * mom[i] + inc
            mom[i] = mj
            p[i] = pj - mj
        else:
            p[i] = pj - inc


def rmsprop_step(p, g, bounds, scales, use_cv, cv, use_wd, wd_lr, lr, rho, one_m_rho, momentum, eps, centered,
                 vel, mom, avg):
    if p.size:
        t = p.dtype.type
        _rmsprop[launch_1d(p.size)](p, g, bounds, scales, bool(use_cv), t(cv), bool(use_wd), t(wd_lr), t(lr),
                                    t(rho), t(one_m_rho), t(momentum), t(eps), bool(centered), vel, mom, avg)


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
