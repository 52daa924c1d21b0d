"""Math shared by the CPU kernels of several families: a vectorizable float32
exp and the pieces of a softmax over one row.

Softmax of a row r is ``exp(r - row_max(r)) / sum``: ``row_max`` then
``exp_store`` (or ``exp_sum`` when only the sum is needed, e.g. a loss value)
then ``scale_row`` by 1/sum. The activations family (softmax_rows), the
losses (cross-entropy from logits) and attention (masked softmax of the
scores) use these, so there is one implementation of each piece. Every
helper is ``@inline``: it compiles into the loop of its caller.
"""
import math

import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic, overload

from ...config import FASTMATH
from ._jit import inline


# ------------------------------------------------------- vectorizable exp
@intrinsic
def _f32_from_bits(typingctx, bits):
    """Reinterpret an int32 as the float32 with the same bits."""
    sig = types.float32(types.int32)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())

    return sig, codegen


def fast_exp(x):
    """exp(x). In float32 kernels it compiles to straight-line arithmetic that
    LLVM vectorizes (math.exp is a libm call per element: 13x slower here, no
    SVML): exp(x) = 2^k * P(r), r = x - k ln2, |r| <= ln2/2, P the degree-7
    Taylor polynomial; relative error < 1.3 ulp for -87.33 <= x <= 88.37, 0
    below (flush to zero, -inf gives 0), saturating at exp(88.37) above; NaN
    stays NaN. float64 uses math.exp."""
    return math.exp(x)


@overload(fast_exp, fastmath=set(FASTMATH))
def _fast_exp_impl(x):
    if x != types.float32:
        return lambda x: math.exp(x)

    def impl(x):
        f = np.float32
        y = x
        y = max(y, f(-87.33))
        y = min(y, f(88.37))
        k = np.floor(y * f(1.4426950408889634) + f(0.5))
        # ln2 split in two (Cody-Waite) so that r keeps full float32 precision
        r = y - k * f(0.693359375) + k * f(2.12194440e-4)
        p = f(1.0 / 5040)
        p = p * r + f(1.0 / 720)
        p = p * r + f(1.0 / 120)
        p = p * r + f(1.0 / 24)
        p = p * r + f(1.0 / 6)
        p = p * r + f(0.5)
        p = p * r + f(1.0)
        p = p * r + f(1.0)
        e = p * _f32_from_bits((np.int32(k) + np.int32(127)) << np.int32(23))
        return f(0.0) if x < f(-87.33) else e

    return impl


# ------------------------------------------------- softmax pieces (1-D rows)
@inline
def row_max(r):
    """max of a 1-D row with 8 independent running maxima: the single-accumulator
    loop cannot be vectorized without the no-NaN flag and ran 4x slower.

    (``max(a, b)`` in numba is ``b if b > a else a``: a NaN never replaces
    a number here, and the softmax of a row with a NaN is NaN either way,
    through its exp and sum.)
    """
    c = r.size
    m0 = r[0]
    m1 = m0
    m2 = m0
    m3 = m0
    m4 = m0
    m5 = m0
    m6 = m0
    m7 = m0
    j = 0
    while j + 8 <= c:
        m0 = max(m0, r[j])
        m1 = max(m1, r[j + 1])
        m2 = max(m2, r[j + 2])
        m3 = max(m3, r[j + 3])
        m4 = max(m4, r[j + 4])
        m5 = max(m5, r[j + 5])
        m6 = max(m6, r[j + 6])
        m7 = max(m7, r[j + 7])
        j += 8
    m0 = max(m0, m1)
    m2 = max(m2, m3)
    m4 = max(m4, m5)
    m6 = max(m6, m7)
    m0 = max(m0, m2)
    m4 = max(m4, m6)
    m = max(m0, m4)
    while j < c:
        m = max(m, r[j])
        j += 1
    return m


@inline
def exp_sum(r, m):
    """sum_j exp(r[j] - m) (loss values without a gradient; one running sum)."""
    s = r.dtype.type(0)
    for j in range(r.size):
        s += fast_exp(r[j] - m)
    return s


@inline
def exp_store(r, m, d):
    """d = exp(r - m) (d may be r); returns the sum. Two passes: the exp loop has no
    reduction and vectorizes, the sum runs in ``row_sum``'s partial sums (one loop
    doing both vectorizes only under the reassoc flag, kept off: config.FASTMATH)."""
    for j in range(r.size):
        d[j] = fast_exp(r[j] - m)
    return row_sum(d, r.dtype.type(0), False)


@inline
def row_sum(r, shift, square):
    """sum_j (r[j] - shift), or of its square when ``square``, over a 1-D row in 8
    interleaved partial sums: a fixed order that LLVM vectorizes without the
    reassoc flag (kept off for reproducibility: see config.FASTMATH)."""
    c = r.size
    s0 = r.dtype.type(0)
    s1 = s2 = s3 = s4 = s5 = s6 = s7 = s0
    j = 0
    while j + 8 <= c:
        v0 = r[j] - shift
        v1 = r[j + 1] - shift
        v2 = r[j + 2] - shift
        v3 = r[j + 3] - shift
        v4 = r[j + 4] - shift
        v5 = r[j + 5] - shift
        v6 = r[j + 6] - shift
        v7 = r[j + 7] - shift
        if square:
            v0 *= v0
            v1 *= v1
            v2 *= v2
            v3 *= v3
            v4 *= v4
            v5 *= v5
            v6 *= v6
            v7 *= v7
        s0 += v0
        s1 += v1
        s2 += v2
        s3 += v3
        s4 += v4
        s5 += v5
        s6 += v6
        s7 += v7
        j += 8
    s = ((s0 + s1) + (s2 + s3)) + ((s4 + s5) + (s6 + s7))
    while j < c:
        v = r[j] - shift
        s += v * v if square else v
        j += 1
    return s


@inline
def row_dot(a, b):
    """sum_j a[j] * b[j] over two 1-D rows (row_dot_centered with no shift: same bits)."""
    return row_dot_centered(a, b, a.dtype.type(0))


@inline
def row_dot_centered(a, b, shift):
    """sum_j a[j] * (b[j] - shift) over two 1-D rows, in row_sum's 8 interleaved partial
    sums (a single running sum is a chain of dependent adds: scalar, 4x slower on rows of 64)."""
    c = a.size
    s0 = a.dtype.type(0)
    s1 = s2 = s3 = s4 = s5 = s6 = s7 = s0
    j = 0
    while j + 8 <= c:
        s0 += a[j] * (b[j] - shift)
        s1 += a[j + 1] * (b[j + 1] - shift)
        s2 += a[j + 2] * (b[j + 2] - shift)
        s3 += a[j + 3] * (b[j + 3] - shift)
        s4 += a[j + 4] * (b[j + 4] - shift)
        s5 += a[j + 5] * (b[j + 5] - shift)
        s6 += a[j + 6] * (b[j + 6] - shift)
        s7 += a[j + 7] * (b[j + 7] - shift)
        j += 8
    s = ((s0 + s1) + (s2 + s3)) + ((s4 + s5) + (s6 + s7))
    while j < c:
        s += a[j] * (b[j] - shift)
        j += 1
    return s


@inline
def scale_row(d, k):
    """d *= k."""
    for j in range(d.size):
        d[j] *= k
