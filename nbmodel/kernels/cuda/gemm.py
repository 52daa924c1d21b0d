"""Matrix products on CUDA for the kernel families (dense, attention,
recurrent): ``gemm(a, b, out, trans_a, trans_b)`` computes
``out = op(a) @ op(b)``. Not a contract family: a private helper of the
CUDA package.

On a GPU with CuPy importable the product goes to cuBLAS: CuPy wraps the
numba device arrays without a copy (``__cuda_array_interface__``) and both
libraries queue work on the legacy default stream, so it runs in order with
the numba kernels around it. Otherwise (always under the simulator) one of
two own shared-memory kernels runs:

- ``_gemm_tile``: 16x16 threads, one output each, 16x16 tiles of op(a) and
  op(b) through shared memory; many small blocks, for small outputs
  (``_gemm_small``: the same with 4x4 tiles, for outputs of at most 128
  elements, where a 16x16 block would leave most threads idle);
- ``_gemm_big``: 16x16 threads, a 4x4 block of outputs each (a 64x64 output
  tile per block, register-blocked), k in steps of 16; for outputs with
  enough 64x64 tiles to occupy the GPU.

Both take the transposes as flags and read the transposed operand by index
(no copy), each thread loading neighbouring elements of memory (coalesced)
and storing them transposed into shared memory where needed; shared arrays
are padded by one column against bank conflicts. Accumulation is in the
arrays' dtype: each kernel is built per dtype (``per_dtype``) with its
constants and shared arrays of that numba type, so the float32 kernels hold
no float64 instruction (checked in PTX by tests/cuda/test_ptx.py).

``column_sums(a, out)`` is the product of a ones row with ``a``: the bias
gradient of a layer whose forward is a GEMM plus a bias (recurrent cells,
attention projections). One block per 32 columns, up to 8 row lanes, the
lanes' sums meeting in a shared-memory tree: deterministic, no atomics.
"""
from __future__ import annotations

import warnings

import numpy as np

from .runtime import cuda, kernel, simulator, types

__all__ = ["gemm", "column_sums", "per_dtype", "FLOATS"]

FLOATS = (types.float32, types.float64)
_SUFFIX = {types.float32: "f32", types.float64: "f64"}

TILE = 16        # _gemm_tile: output tile edge = block edge
SMALL = 4        # _gemm_small: the same kernel with 4x4 tiles, for outputs of at most SMALL_MAX elements
SMALL_MAX = 128  # (half a 16x16 block: fewer idle threads; the simulator runs about 1 ms per thread)
BIG = 64         # _gemm_big: output tile edge per block
BIG_K = 16       # _gemm_big: k step
_PER = BIG // TILE  # outputs per thread along each axis in _gemm_big (4)
_BIG_PAD = BIG + 1


def per_dtype(build, *signatures):
    """Build one CUDA kernel per float type: ``build(nbt)`` returns the Python
    kernel for numba type ``nbt`` (its shared arrays and constants of that
    type); each ``signatures`` entry is a callable ``nbt -> argument types``.
    Returns ``{np.dtype: kernel}``; the kernels are named ``<name>_f32`` and
    ``<name>_f64`` for the PTX check."""
    out = {}
    for nbt in FLOATS:
        fn = build(nbt)
        fn.__name__ = fn.__qualname__ = f"{fn.__name__}_{_SUFFIX[nbt]}"
        out[np.dtype(str(nbt))] = kernel(*[sig(nbt) for sig in signatures])(fn)
    return out


def _mat(t):
    return t[:, ::1]


_GEMM_SIG = (lambda t: (_mat(t), _mat(t), _mat(t), types.boolean, types.boolean),)


def _build_tile(nbt, tile=TILE):
    pad = tile + 1  # shared rows padded by one element against bank conflicts

    def _gemm_tile(a, b, out, trans_a, trans_b):
        """out = op(a) @ op(b); block (tile, tile) computes out[row0:row0+tile, col0:col0+tile]."""
        sa = cuda.shared.array((tile, pad), nbt)  # sa[r, kk] = op(a)[row0 + r, k0 + kk]
        sb = cuda.shared.array((tile, pad), nbt)  # sb[kk, c] = op(b)[k0 + kk, col0 + c]
        tx = cuda.threadIdx.x
        ty = cuda.threadIdx.y
        row0 = cuda.blockIdx.x * tile  # rows on the grid's x (no 65535 limit): tall im2col products
        col0 = cuda.blockIdx.y * tile
        m = out.shape[0]
        n = out.shape[1]
        k = a.shape[0] if trans_a else a.shape[1]
        zero = nbt(0)
        acc = zero
        for k0 in range(0, k, tile):
            # each thread reads a[.., tx]: neighbours in memory, whichever way a is stored
            if trans_a:  # a is (k, m): a[k0 + ty, row0 + tx] = op(a)[row0 + tx, k0 + ty]
                kk = k0 + ty
                r = row0 + tx
                sa[tx, ty] = a[kk, r] if kk < k and r < m else zero
            else:        # a is (m, k)
                r = row0 + ty
                kk = k0 + tx
                sa[ty, tx] = a[r, kk] if r < m and kk < k else zero
            if trans_b:  # b is (n, k): b[col0 + ty, k0 + tx] = op(b)[k0 + tx, col0 + ty]
                c = col0 + ty
                kk = k0 + tx
                sb[tx, ty] = b[c, kk] if c < n and kk < k else zero
            else:        # b is (k, n)
                kk = k0 + ty
                c = col0 + tx
                sb[ty, tx] = b[kk, c] if kk < k and c < n else zero
            cuda.syncthreads()
            for j in range(tile):
                acc += sa[ty, j] * sb[j, tx]
            cuda.syncthreads()
        r = row0 + ty
        c = col0 + tx
        if r < m and c < n:
            out[r, c] = acc

    if tile != TILE:
        _gemm_tile.__name__ = _gemm_tile.__qualname__ = "_gemm_small"
    return _gemm_tile


def _build_big(nbt):
    def _gemm_big(a, b, out, trans_a, trans_b):
        """out = op(a) @ op(b); block (16, 16) computes a 64x64 output tile, thread (ty, tx)
        the outputs (row0 + ty + 16 i, col0 + tx + 16 j), i, j < 4."""
        sa = cuda.shared.array((BIG_K, _BIG_PAD), nbt)  # sa[kk, r] = op(a)[row0 + r, k0 + kk]
        sb = cuda.shared.array((BIG_K, _BIG_PAD), nbt)  # sb[kk, c] = op(b)[k0 + kk, col0 + c]
        acc = cuda.local.array((_PER, _PER), nbt)
        fa = cuda.local.array(_PER, nbt)
        fb = cuda.local.array(_PER, nbt)
        tx = cuda.threadIdx.x
        ty = cuda.threadIdx.y
        t = ty * TILE + tx
        row0 = cuda.blockIdx.x * BIG
        col0 = cuda.blockIdx.y * BIG
        m = out.shape[0]
        n = out.shape[1]
        k = a.shape[0] if trans_a else a.shape[1]
        zero = nbt(0)
        for i in range(_PER):
            for j in range(_PER):
                acc[i, j] = zero
        for k0 in range(0, k, BIG_K):
            # 64x16 elements of op(a) and 16x64 of op(b), four per thread, read along memory rows
            for p in range(_PER):
                if trans_a:  # a is (k, m): r runs along a row of a
                    r = t % BIG
                    kk = t // BIG + p * (TILE * TILE // BIG)
                    ga = a[k0 + kk, row0 + r] if k0 + kk < k and row0 + r < m else zero
                else:        # a is (m, k): kk runs along a row of a
                    kk = t % BIG_K
                    r = t // BIG_K + p * (TILE * TILE // BIG_K)
                    ga = a[row0 + r, k0 + kk] if row0 + r < m and k0 + kk < k else zero
                sa[kk, r] = ga
                if trans_b:  # b is (n, k): kk runs along a row of b
                    kk = t % BIG_K
                    c = t // BIG_K + p * (TILE * TILE // BIG_K)
                    gb = b[col0 + c, k0 + kk] if col0 + c < n and k0 + kk < k else zero
                else:        # b is (k, n): c runs along a row of b
                    c = t % BIG
                    kk = t // BIG + p * (TILE * TILE // BIG)
                    gb = b[k0 + kk, col0 + c] if k0 + kk < k and col0 + c < n else zero
                sb[kk, c] = gb
            cuda.syncthreads()
            for kk in range(BIG_K):
                for i in range(_PER):
                    fa[i] = sa[kk, ty + i * TILE]
                for j in range(_PER):
                    fb[j] = sb[kk, tx + j * TILE]
                for i in range(_PER):
                    for j in range(_PER):
                        acc[i, j] += fa[i] * fb[j]
            cuda.syncthreads()
        for i in range(_PER):
            r = row0 + ty + i * TILE
            if r < m:
                for j in range(_PER):
                    c = col0 + tx + j * TILE
                    if c < n:
                        out[r, c] = acc[i, j]

    return _gemm_big


_TILE_KERNELS = per_dtype(_build_tile, *_GEMM_SIG)
_BIG_KERNELS = per_dtype(_build_big, *_GEMM_SIG)
_SMALL_KERNELS = per_dtype(lambda nbt: _build_tile(nbt, SMALL), *_GEMM_SIG)


_SUM_COLS = 32     # columns per column_sums block, at most (a warp along a row: coalesced)
_SUM_LANES = 8     # row lanes per column_sums block, at most (a power of two: the tree halves it)
_LANE_ROWS = 32    # rows per lane before column_sums takes another lane


def _build_column_sums(nbt):
    def _column_sums(a, out):
        """out = a.sum(axis=0); block (bx, by) over columns col0..col0+bx: thread (tx, ty)
        sums rows ty, ty + by, ... of column col0 + tx; the by partial sums meet in shared memory."""
        part = cuda.shared.array((_SUM_LANES, _SUM_COLS), nbt)
        tx = cuda.threadIdx.x
        ty = cuda.threadIdx.y
        lanes = cuda.blockDim.y
        c = cuda.blockIdx.x * cuda.blockDim.x + tx
        acc = nbt(0)
        if c < a.shape[1]:
            for r in range(ty, a.shape[0], lanes):
                acc += a[r, c]
        part[ty, tx] = acc
        cuda.syncthreads()
        s = lanes // 2
        while s > 0:
            if ty < s:
                part[ty, tx] += part[ty + s, tx]
            cuda.syncthreads()
            s //= 2
        if ty == 0 and c < a.shape[1]:
            out[c] = part[0, tx]

    return _column_sums


_COLUMN_SUMS = per_dtype(_build_column_sums, lambda t: (_mat(t), t[::1]))


# ------------------------------------------------------------ launchers
_CUPY = []  # [CuPy module or None], decided on first use


def _cupy():
    """CuPy when it may run the product (a real GPU, CuPy importable), else None."""
    if not _CUPY:
        mod = None
        if not simulator():
            try:
                import cupy as mod
            except Exception:  # noqa: BLE001 - not installed or unusable: the own kernels
                mod = None
        _CUPY.append(mod)
    return _CUPY[0]


_CUPY_WORKED = []  # [True] once a product went through CuPy


_SMS = []


def _sm_count() -> int:
    if not _SMS:
        try:
            _SMS.append(int(cuda.get_current_device().MULTIPROCESSOR_COUNT))
        except Exception:  # noqa: BLE001 - the simulator has no such attribute
            _SMS.append(64)
    return _SMS[0]


def _check(a, b, out, trans_a, trans_b):
    if a.ndim != 2 or b.ndim != 2 or out.ndim != 2:
        raise ValueError(f"gemm: expected 2-D arrays, got shapes {a.shape}, {b.shape}, {out.shape}")
    m, k = (a.shape[1], a.shape[0]) if trans_a else a.shape
    kb, n = (b.shape[1], b.shape[0]) if trans_b else b.shape
    if k != kb or tuple(out.shape) != (m, n):
        raise ValueError(f"gemm: op(a) {(m, k)} @ op(b) {(kb, n)} does not fit out {tuple(out.shape)}")
    if not (a.dtype == b.dtype == out.dtype):
        raise ValueError(f"gemm: dtypes differ: {a.dtype}, {b.dtype}, {out.dtype}")
    return m, n, k


def own_gemm(a, b, out, trans_a=False, trans_b=False, big=None):
    """``gemm`` by the own kernels; ``big`` picks the register-blocked kernel
    (None: when the output has at least one 64x64 tile per multiprocessor);
    outputs of at most SMALL_MAX elements take 4x4 tiles."""
    m, n, k = _check(a, b, out, trans_a, trans_b)
    if m == 0 or n == 0:
        return
    if big is None:
        big = (-(-m // BIG)) * (-(-n // BIG)) >= _sm_count()
    if big:
        grid, kern = (-(-m // BIG), -(-n // BIG)), _BIG_KERNELS[out.dtype]
        block = (TILE, TILE)
    else:
        tile, kernels = (SMALL, _SMALL_KERNELS) if m * n <= SMALL_MAX else (TILE, _TILE_KERNELS)
        grid, kern, block = (-(-m // tile), -(-n // tile)), kernels[out.dtype], (tile, tile)
    kern[grid, block](a, b, out, bool(trans_a), bool(trans_b))


def cupy_gemm(cp, a, b, out, trans_a=False, trans_b=False):
    """``gemm`` through the CuPy module ``cp`` (cuBLAS), no copies."""
    m, n, k = _check(a, b, out, trans_a, trans_b)
    if m == 0 or n == 0:
        return
    ca = cp.asarray(a)
    cb = cp.asarray(b)
    cp.matmul(ca.T if trans_a else ca, cb.T if trans_b else cb, out=cp.asarray(out))


def gemm(a, b, out, trans_a=False, trans_b=False):
    """out = op(a) @ op(b) for 2-D C-contiguous float32/float64 device arrays
    of one dtype (op: transpose when the flag is set); out is overwritten.

    cuBLAS through CuPy where it works; if CuPy fails on its first product
    (e.g. a CuPy build for another CUDA version), a warning says so and the
    own kernels take over for the rest of the process."""
    _check(a, b, out, trans_a, trans_b)
    cp = _cupy()
    if cp is not None:
        try:
            cupy_gemm(cp, a, b, out, trans_a, trans_b)
        except Exception as e:  # noqa: BLE001 - an unusable CuPy shows itself on the first product
            if _CUPY_WORKED:
                raise
            warnings.warn(f"nbmodel: cuBLAS through CuPy failed ({type(e).__name__}: {e}); "
                          "using nbmodel's own GEMM kernels", RuntimeWarning, stacklevel=2)
            _CUPY[0] = None
        else:
            if not _CUPY_WORKED:
                _CUPY_WORKED.append(True)
            return
    own_gemm(a, b, out, trans_a, trans_b)


def _pow2(n: int) -> int:
    p = 1
    while p < n:
        p *= 2
    return p


def column_sums(a, out):
    """out = a.sum(axis=0) for a 2-D C-contiguous device array a (n, m) and out (m,)
    of its dtype; zeros when n is 0. Deterministic (a fixed order of additions)."""
    n, m = a.shape
    if tuple(out.shape) != (m,) or a.dtype != out.dtype:
        raise ValueError(f"column_sums: {a.shape} {a.dtype} does not fit out {tuple(out.shape)} {out.dtype}")
    if m == 0:
        return
    cols = min(_SUM_COLS, _pow2(m))
    lanes = min(_SUM_LANES, _pow2(-(-n // _LANE_ROWS)))  # one lane per 32 rows: tiny inputs take one
    _COLUMN_SUMS[out.dtype][-(-m // cols), (cols, lanes)](a, out)
