"""Normalization family on CUDA: LayerNormalization (with the residual-add
and two-gradient variants of the Transformer), GroupNormalization and
BatchNormalization with the pieces data parallel sums over replicas (see nbmodel/kernels/contract.py and
nbmodel/kernels/cpu/norm.py, whose formulas and order of operations these
kernels follow).

Layer norm: one block per row (a power of two of threads, up to
``_ROW_MAX``) strides over the row; the row's sum, then its centred sum of
squares (two passes, as on the CPU: accurate in float32), then the sums of
backward are shared-memory trees. dgamma/dbeta are column sums over rows,
computed by a column kernel.

Group norm: one block per (sample, group), as a layer-norm row block over the
group's m * c / groups values; dgamma/dbeta are column sums over the
(sample, position) rows.

Column sums (batch norm statistics and backward sums, layer norm dgamma and
dbeta): a block of ``bx`` columns by ``by`` row lanes (a warp reads
consecutive columns of one row) takes ``_BN_ROWS`` rows, like the CPU's
blocks of 256 rows; the lanes' partial sums meet in a shared-memory tree, and
each block writes its sums into row blockIdx.y of a (row blocks, columns)
array: the output itself, seen as (1, c), when there is one block of rows,
else a scratch array that ``_sum_partials`` adds up column by column in block
order. No atomics: the sums are the same from run to run.
"""
from __future__ import annotations

import math

from .runtime import cuda, kernel, launch_1d, types

_F = (types.float32, types.float64)
_B = types.boolean
_I = types.int64

_BLOCK = 256  # the most threads of any block here: the size of the shared arrays
_ROW_MAX = 256  # threads of a layer-norm row block, at most (a power of two <= _BLOCK)
_COLS = 32  # columns of a column-sum block, at most (a power of two)
_BN_ROWS = 256  # rows of a column-sum block


def _one(t):
    return t[::1]


def _two(t):
    return t[:, ::1]


def _three(t):
    return t[:, :, ::1]


def _pow2(n):
    p = 1
    while p < n:
        p *= 2
    return p


def _row_threads(d):
    return min(_ROW_MAX, max(32, _pow2(d)))


def _columns(m, c):
    """(grid, block, rows per block) of a column-sum launch over x (m, c): columns
    on x, blocks of rows on y (at most 65535 of them: the grid's y limit)."""
    rows = max(_BN_ROWS, -(-m // 65535))
    bx = min(_COLS, _pow2(c))
    by = max(1, min(_BLOCK // bx, _pow2(min(m, rows))))
    return (-(-c // bx), max(1, -(-m // rows))), (bx, by), rows


# ------------------------------------------------------------- block reductions
@cuda.jit(device=True, inline="always")
def _block_sum(part, v):
    """Sum of v over a 1-D block (power-of-two size), returned to every thread."""
    tid = cuda.threadIdx.x
    part[tid] = v
    cuda.syncthreads()
    h = cuda.blockDim.x // 2
    while h > 0:
        if tid < h:
            part[tid] += part[tid + h]
        cuda.syncthreads()
        h //= 2
    total = part[0]
    cuda.syncthreads()  # part may be reused
    return total


@cuda.jit(device=True, inline="always")
def _block_sum2(part, part2, u, v):
    """(sum of u, sum of v) over a 1-D block, returned to every thread."""
    tid = cuda.threadIdx.x
    part[tid] = u
    part2[tid] = v
    cuda.syncthreads()
    h = cuda.blockDim.x // 2
    while h > 0:
        if tid < h:
            part[tid] += part[tid + h]
            part2[tid] += part2[tid + h]
        cuda.syncthreads()
        h //= 2
    su = part[0]
    sv = part2[0]
    cuda.syncthreads()
    return su, sv


@cuda.jit(device=True, inline="always")
def _lanes_sum(part, v):
    """Sum of v over the row lanes (threadIdx.y) of each column (threadIdx.x) of
    a 2-D block (power-of-two lanes), returned to every thread."""
    tx = cuda.threadIdx.x
    ty = cuda.threadIdx.y
    bx = cuda.blockDim.x
    part[ty * bx + tx] = v
    cuda.syncthreads()
    h = cuda.blockDim.y // 2
    while h > 0:
        if ty < h:
            part[ty * bx + tx] += part[(ty + h) * bx + tx]
        cuda.syncthreads()
        h //= 2
    total = part[tx]
    cuda.syncthreads()
    return total


@kernel(*[(_two(t), _one(t)) for t in _F])
def _sum_partials(partials, out):
    """out[j] = the sum of partials[:, j], row by row (a fixed order)."""
    j = cuda.grid(1)
    if j < out.size:
        acc = partials[0, j]
        for b in range(1, partials.shape[0]):
            acc += partials[b, j]
        out[j] = acc


def _targets(grid, c, *outs):
    """Where a column-sum launch of ``grid`` writes each output's block sums: the
    output as (1, c) for one block of rows, else a (row blocks, c) scratch array."""
    if grid[1] == 1:
        return [o.reshape(1, c) if o.size == c else o.reshape(1, o.size) for o in outs]
    return [cuda.device_array((grid[1], c), o.dtype) for o in outs]


def _reduce(grid, targets, *outs):
    """After the launch: each output = its scratch array summed over blocks (several blocks of rows)."""
    if grid[1] > 1:
        for t, o in zip(targets, outs):
            if o.size == t.shape[1]:
                _sum_partials[launch_1d(o.size)](t, o)


# ------------------------------------------------------------------ layer norm
@kernel(*[(_two(t), _two(t), _B, _one(t), _one(t), t, _B, _B, _two(t), _two(t), _one(t), _one(t)) for t in _F])
def _ln_forward(a, b, add, gamma, beta, eps, use_scale, use_center, s, out, mean, rstd):
    """Row blockIdx.x of x = a (add: x = s = a + b) normalized into out."""
    part = cuda.shared.array(_BLOCK, a.dtype)
    i = cuda.blockIdx.x
    tid = cuda.threadIdx.x
    nt = cuda.blockDim.x
    d = a.shape[1]
    one = a.dtype.type(1)
    zero = one - one
    inv_d = one / a.dtype.type(d)
    acc = zero
    j = tid
    while j < d:
        v = a[i, j]
        if add:
            v += b[i, j]
            s[i, j] = v  # read back below by the thread that wrote it
        acc += v
        j += nt
    mu = _block_sum(part, acc) * inv_d
    x = s if add else a
    acc = zero
    j = tid
    while j < d:
        c = x[i, j] - mu
        acc += c * c
        j += nt
    r = one / math.sqrt(_block_sum(part, acc) * inv_d + eps)
    if tid == 0:
        mean[i] = mu
        rstd[i] = r
    j = tid
    while j < d:
        h = (x[i, j] - mu) * r
        if use_scale:
            h = h * gamma[j]
        if use_center:
            h = h + beta[j]
        out[i, j] = h
        j += nt


@kernel(*[(_two(t), _one(t), _one(t), _one(t), _two(t), _two(t), _B, _B, _two(t)) for t in _F])
def _ln_backward(x, gamma, mean, rstd, dya, dyb, use_b, use_scale, dx):
    """dx of row blockIdx.x for dy = dya (use_b: dya + dyb)."""
    part = cuda.shared.array(_BLOCK, x.dtype)
    part2 = cuda.shared.array(_BLOCK, x.dtype)
    i = cuda.blockIdx.x
    tid = cuda.threadIdx.x
    nt = cuda.blockDim.x
    d = x.shape[1]
    one = x.dtype.type(1)
    zero = one - one
    inv_d = one / x.dtype.type(d)
    mu = mean[i]
    r = rstd[i]
    sg = zero
    sgx = zero
    j = tid
    while j < d:
        xh = (x[i, j] - mu) * r
        g = dya[i, j] + dyb[i, j] if use_b else dya[i, j]
        if use_scale:
            g = g * gamma[j]
        sg += g
        sgx += g * xh
        j += nt
    sg, sgx = _block_sum2(part, part2, sg, sgx)
    sg *= inv_d
    sgx *= inv_d
    j = tid
    while j < d:
        xh = (x[i, j] - mu) * r
        g = dya[i, j] + dyb[i, j] if use_b else dya[i, j]
        if use_scale:
            g = g * gamma[j]
        dx[i, j] = r * (g - sg - xh * sgx)
        j += nt


@kernel(*[(_two(t), _one(t), _one(t), _two(t), _two(t), _B, _B, _B, _I, _two(t), _two(t)) for t in _F])
def _ln_param_grads(x, mean, rstd, dya, dyb, use_b, use_scale, use_center, rows, dgamma, dbeta):
    """dgamma[blockIdx.y, j] = sum_i dy x_hat, dbeta[blockIdx.y, j] = sum_i dy over this block's
    rows (see _targets)."""
    part = cuda.shared.array(_BLOCK, x.dtype)
    part2 = cuda.shared.array(_BLOCK, x.dtype)
    m = x.shape[0]
    c = x.shape[1]
    j = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
    r = cuda.blockIdx.y * rows + cuda.threadIdx.y
    r1 = min(m, cuda.blockIdx.y * rows + rows)
    zero = x.dtype.type(0)
    sgx = zero
    sg = zero
    if j < c:
        while r < r1:
            gy = dya[r, j] + dyb[r, j] if use_b else dya[r, j]
            sgx += gy * ((x[r, j] - mean[r]) * rstd[r])
            sg += gy
            r += cuda.blockDim.y
    sgx = _lanes_sum(part, sgx)
    sg = _lanes_sum(part2, sg)
    if cuda.threadIdx.y == 0 and j < c:
        if use_scale:
            dgamma[cuda.blockIdx.y, j] = sgx
        if use_center:
            dbeta[cuda.blockIdx.y, j] = sg


def _ln_grads(x, mean, rstd, dya, dyb, use_b, use_scale, use_center, dgamma, dbeta):
    if not (use_scale or use_center) or not x.shape[1]:
        return
    grid, block, rows = _columns(*x.shape)
    tg, tb = _targets(grid, x.shape[1], dgamma, dbeta)
    _ln_param_grads[grid, block](x, mean, rstd, dya, dyb, use_b, use_scale, use_center, rows, tg, tb)
    _reduce(grid, (tg, tb), dgamma if use_scale else tg[:0], dbeta if use_center else tb[:0])


def layer_norm_forward(x, gamma, beta, eps, use_scale, use_center, out, mean, rstd):
    n, d = x.shape
    if n:
        _ln_forward[n, _row_threads(d)](x, x, False, gamma, beta, x.dtype.type(eps), bool(use_scale),
                                        bool(use_center), x, out, mean, rstd)


def layer_norm_backward(x, gamma, mean, rstd, dy, use_scale, use_center, dx, dgamma, dbeta):
    n, d = x.shape
    if n:
        _ln_backward[n, _row_threads(d)](x, gamma, mean, rstd, dy, dy, False, bool(use_scale), dx)
    _ln_grads(x, mean, rstd, dy, dy, False, bool(use_scale), bool(use_center), dgamma, dbeta)


def add_layer_norm_forward(a, b, gamma, beta, eps, s, out, mean, rstd):
    n, d = a.shape
    if n:
        _ln_forward[n, _row_threads(d)](a, b, True, gamma, beta, a.dtype.type(eps), True, True, s, out, mean,
                                        rstd)


def layer_norm_backward_sum(x, gamma, mean, rstd, dya, dyb, dx, dgamma, dbeta):
    n, d = x.shape
    if n:
        _ln_backward[n, _row_threads(d)](x, gamma, mean, rstd, dya, dyb, True, True, dx)
    _ln_grads(x, mean, rstd, dya, dyb, True, True, True, dgamma, dbeta)


# ------------------------------------------------------------------ group norm
@kernel(*[(_three(t), _one(t), _one(t), t, _I, _B, _B, _three(t), _two(t), _two(t)) for t in _F])
def _gn_forward(x, gamma, beta, eps, groups, use_scale, use_center, out, mean, rstd):
    """Group blockIdx.x % groups of sample blockIdx.x // groups normalized into out."""
    part = cuda.shared.array(_BLOCK, x.dtype)
    b = cuda.blockIdx.x // groups
    g = cuda.blockIdx.x - b * groups
    cg = x.shape[2] // groups
    j0 = g * cg
    k = x.shape[1] * cg
    tid = cuda.threadIdx.x
    nt = cuda.blockDim.x
    one = x.dtype.type(1)
    zero = one - one
    inv = one / x.dtype.type(k)
    acc = zero
    e = tid
    while e < k:
        p = e // cg
        acc += x[b, p, j0 + e - p * cg]
        e += nt
    mu = _block_sum(part, acc) * inv
    acc = zero
    e = tid
    while e < k:
        p = e // cg
        d = x[b, p, j0 + e - p * cg] - mu
        acc += d * d
        e += nt
    r = one / math.sqrt(_block_sum(part, acc) * inv + eps)
    if tid == 0:
        mean[b, g] = mu
        rstd[b, g] = r
    e = tid
    while e < k:
        p = e // cg
        j = j0 + e - p * cg
        h = (x[b, p, j] - mu) * r
        if use_scale:
            h = h * gamma[j]
        if use_center:
            h = h + beta[j]
        out[b, p, j] = h
        e += nt


@kernel(*[(_three(t), _one(t), _two(t), _two(t), _three(t), _I, _B, _three(t)) for t in _F])
def _gn_backward(x, gamma, mean, rstd, dy, groups, use_scale, dx):
    """dx of group blockIdx.x % groups of sample blockIdx.x // groups."""
    part = cuda.shared.array(_BLOCK, x.dtype)
    part2 = cuda.shared.array(_BLOCK, x.dtype)
    b = cuda.blockIdx.x // groups
    g = cuda.blockIdx.x - b * groups
    cg = x.shape[2] // groups
    j0 = g * cg
    k = x.shape[1] * cg
    tid = cuda.threadIdx.x
    nt = cuda.blockDim.x
    one = x.dtype.type(1)
    zero = one - one
    inv = one / x.dtype.type(k)
    mu = mean[b, g]
    r = rstd[b, g]
    sg = zero
    sgx = zero
    e = tid
    while e < k:
        p = e // cg
        j = j0 + e - p * cg
        xh = (x[b, p, j] - mu) * r
        gy = dy[b, p, j] * gamma[j] if use_scale else dy[b, p, j]
        sg += gy
        sgx += gy * xh
        e += nt
    sg, sgx = _block_sum2(part, part2, sg, sgx)
    sg *= inv
    sgx *= inv
    e = tid
    while e < k:
        p = e // cg
        j = j0 + e - p * cg
        xh = (x[b, p, j] - mu) * r
        gy = dy[b, p, j] * gamma[j] if use_scale else dy[b, p, j]
        dx[b, p, j] = r * (gy - sg - xh * sgx)
        e += nt


@kernel(*[(_two(t), _two(t), _two(t), _two(t), _I, _I, _B, _B, _I, _two(t), _two(t)) for t in _F])
def _gn_param_grads(x, mean, rstd, dy, m, groups, use_scale, use_center, rows, dgamma, dbeta):
    """dgamma[blockIdx.y, j] = sum dy x_hat, dbeta[blockIdx.y, j] = sum dy over this block's rows
    of x (n*m, c), row r of sample r // m (see _targets)."""
    part = cuda.shared.array(_BLOCK, x.dtype)
    part2 = cuda.shared.array(_BLOCK, x.dtype)
    nm = x.shape[0]
    c = x.shape[1]
    j = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
    r = cuda.blockIdx.y * rows + cuda.threadIdx.y
    r1 = min(nm, cuda.blockIdx.y * rows + rows)
    zero = x.dtype.type(0)
    sgx = zero
    sg = zero
    if j < c:
        g = j // (c // groups)
        while r < r1:
            b = r // m
            gy = dy[r, j]
            sgx += gy * ((x[r, j] - mean[b, g]) * rstd[b, g])
            sg += gy
            r += cuda.blockDim.y
    sgx = _lanes_sum(part, sgx)
    sg = _lanes_sum(part2, sg)
    if cuda.threadIdx.y == 0 and j < c:
        if use_scale:
            dgamma[cuda.blockIdx.y, j] = sgx
        if use_center:
            dbeta[cuda.blockIdx.y, j] = sg


def group_norm_forward(x, gamma, beta, eps, groups, use_scale, use_center, out, mean, rstd):
    n, m, c = x.shape
    if n and m and c:
        _gn_forward[n * groups, _row_threads(m * c // groups)](x, gamma, beta, x.dtype.type(eps), int(groups),
                                                              bool(use_scale), bool(use_center), out, mean, rstd)


def group_norm_backward(x, gamma, mean, rstd, dy, groups, use_scale, use_center, dx, dgamma, dbeta):
    n, m, c = x.shape
    if not (n and m and c):
        return
    _gn_backward[n * groups, _row_threads(m * c // groups)](x, gamma, mean, rstd, dy, int(groups),
                                                           bool(use_scale), dx)
    if use_scale or use_center:
        grid, block, rows = _columns(n * m, c)
        tg, tb = _targets(grid, c, dgamma, dbeta)
        _gn_param_grads[grid, block](x.reshape(n * m, c), mean, rstd, dy.reshape(n * m, c), m, int(groups),
                                     bool(use_scale), bool(use_center), rows, tg, tb)
        _reduce(grid, (tg, tb), dgamma if use_scale else tg[:0], dbeta if use_center else tb[:0])


# ------------------------------------------------------------ batch norm sums
@kernel(*[(_two(t), _I, _two(t)) for t in _F])
def _col_sum(x, rows, out):
    """out[blockIdx.y, j] = sum of x[:, j] over this block's rows (see _targets)."""
    part = cuda.shared.array(_BLOCK, x.dtype)
    m = x.shape[0]
    c = x.shape[1]
    j = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
    r = cuda.blockIdx.y * rows + cuda.threadIdx.y
    r1 = min(m, cuda.blockIdx.y * rows + rows)
    acc = x.dtype.type(0)
    if j < c:
        while r < r1:
            acc += x[r, j]
            r += cuda.blockDim.y
    acc = _lanes_sum(part, acc)
    if cuda.threadIdx.y == 0 and j < c:
        out[cuda.blockIdx.y, j] = acc


@kernel(*[(_two(t), _one(t), _I, _two(t)) for t in _F])
def _col_centered_squares(x, mean, rows, out):
    """out[blockIdx.y, j] = sum of (x[:, j] - mean[j])**2 over this block's rows (see _targets)."""
    part = cuda.shared.array(_BLOCK, x.dtype)
    m = x.shape[0]
    c = x.shape[1]
    j = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
    r = cuda.blockIdx.y * rows + cuda.threadIdx.y
    r1 = min(m, cuda.blockIdx.y * rows + rows)
    acc = x.dtype.type(0)
    if j < c:
        mu = mean[j]
        while r < r1:
            e = x[r, j] - mu
            acc += e * e
            r += cuda.blockDim.y
    acc = _lanes_sum(part, acc)
    if cuda.threadIdx.y == 0 and j < c:
        out[cuda.blockIdx.y, j] = acc


@kernel(*[(_two(t), _two(t), _one(t), _one(t), _I, _two(t), _two(t)) for t in _F])
def _col_backward_sums(x, dy, mean, rstd, rows, sdy, sdx):
    """sdy[blockIdx.y, j] = sum dy, sdx[blockIdx.y, j] = rstd[j] * sum dy (x - mean) over this
    block's rows (see _targets)."""
    part = cuda.shared.array(_BLOCK, x.dtype)
    part2 = cuda.shared.array(_BLOCK, x.dtype)
    m = x.shape[0]
    c = x.shape[1]
    j = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
    r = cuda.blockIdx.y * rows + cuda.threadIdx.y
    r1 = min(m, cuda.blockIdx.y * rows + rows)
    zero = x.dtype.type(0)
    a0 = zero
    a1 = zero
    if j < c:
        mu = mean[j]
        while r < r1:
            g = dy[r, j]
            a0 += g
            a1 += g * (x[r, j] - mu)
            r += cuda.blockDim.y
    a0 = _lanes_sum(part, a0)
    a1 = _lanes_sum(part2, a1)
    if cuda.threadIdx.y == 0 and j < c:
        sdy[cuda.blockIdx.y, j] = a0
        sdx[cuda.blockIdx.y, j] = a1 * rstd[j]


# ------------------------------------------------------ batch norm per column
@kernel(*[(_one(t), t) for t in _F])
def _scale_cols(a, factor):
    j = cuda.grid(1)
    if j < a.size:
        a[j] *= factor


@kernel(*[(_one(t), _one(t), t, t, t, _one(t), _one(t), _one(t)) for t in _F])
def _update_moving(mean, var, var_factor, eps, momentum, moving_mean, moving_var, rstd):
    """v = var * var_factor (1, or 1/count when var holds a sum); moving statistics
    updated; rstd = 1/sqrt(v + eps). var may be rstd: read before rstd is written."""
    j = cuda.grid(1)
    if j < mean.size:
        one = mean.dtype.type(1)
        v = var[j] * var_factor
        moving_mean[j] = moving_mean[j] * momentum + mean[j] * (one - momentum)
        moving_var[j] = moving_var[j] * momentum + v * (one - momentum)
        rstd[j] = one / math.sqrt(v + eps)


@kernel(*[(_one(t), _one(t), t, _one(t), _one(t)) for t in _F])
def _moving_stats(moving_mean, moving_var, eps, mean, rstd):
    j = cuda.grid(1)
    if j < mean.size:
        mean[j] = moving_mean[j]
        rstd[j] = mean.dtype.type(1) / math.sqrt(moving_var[j] + eps)


@kernel(*[(_two(t), _one(t), _one(t), _one(t), _one(t), _B, _B, _two(t)) for t in _F])
def _bn_apply(x, gamma, beta, mean, rstd, use_scale, use_center, out):
    k = cuda.grid(1)
    c = x.shape[1]
    if k < x.size:
        r = k // c
        j = k - r * c
        w = rstd[j] * gamma[j] if use_scale else rstd[j]
        v = (x[r, j] - mean[j]) * w
        out[r, j] = v + beta[j] if use_center else v


@kernel(*[(_two(t), _two(t), _one(t), _one(t), _one(t), _one(t), _one(t), t, _B, _B, _two(t)) for t in _F])
def _bn_dx(x, dy, gamma, mean, rstd, sdy, sdx, inv_m, training, use_scale, dx):
    k = cuda.grid(1)
    c = x.shape[1]
    if k < x.size:
        r = k // c
        j = k - r * c
        w = rstd[j] * gamma[j] if use_scale else rstd[j]
        if training:
            xh = (x[r, j] - mean[j]) * rstd[j]
            dx[r, j] = w * (dy[r, j] - sdy[j] * inv_m - xh * sdx[j] * inv_m)
        else:
            dx[r, j] = dy[r, j] * w


# ------------------------------------------------------------------ launchers
def batch_norm_column_sums(x, work, out):
    m, c = x.shape
    if c:
        grid, block, rows = _columns(m, c)
        (t,) = _targets(grid, c, out)
        _col_sum[grid, block](x, rows, t)
        _reduce(grid, (t,), out)


def batch_norm_centered_squares(x, mean, work, out):
    m, c = x.shape
    if c:
        grid, block, rows = _columns(m, c)
        (t,) = _targets(grid, c, out)
        _col_centered_squares[grid, block](x, mean, rows, t)
        _reduce(grid, (t,), out)


def batch_norm_update_moving(mean, var, eps, momentum, moving_mean, moving_var, rstd):
    c = mean.shape[0]
    if c:
        t = mean.dtype.type
        _update_moving[launch_1d(c)](mean, var, t(1), t(eps), t(momentum), moving_mean, moving_var, rstd)


def batch_norm_apply(x, gamma, beta, mean, rstd, use_scale, use_center, work, out):
    if x.size:
        _bn_apply[launch_1d(x.size)](x, gamma, beta, mean, rstd, bool(use_scale), bool(use_center), out)


def batch_norm_forward(x, gamma, beta, eps, momentum, training, use_scale, use_center, moving_mean, moving_var,
                       work, mean, rstd, out):
    m, c = x.shape
    if not c:
        return
    t = x.dtype.type
    if training:
        inv_m = t(1) / t(m)
        batch_norm_column_sums(x, work, mean)
        _scale_cols[launch_1d(c)](mean, inv_m)
        batch_norm_centered_squares(x, mean, work, rstd)  # rstd holds the sum of squares for now
        _update_moving[launch_1d(c)](mean, rstd, inv_m, t(eps), t(momentum), moving_mean, moving_var, rstd)
    else:
        _moving_stats[launch_1d(c)](moving_mean, moving_var, t(eps), mean, rstd)
    batch_norm_apply(x, gamma, beta, mean, rstd, use_scale, use_center, work, out)


def batch_norm_backward_sums(x, dy, mean, rstd, work, sdy, sdx):
    m, c = x.shape
    if c:
        grid, block, rows = _columns(m, c)
        ty, tx = _targets(grid, c, sdy, sdx)
        _col_backward_sums[grid, block](x, dy, mean, rstd, rows, ty, tx)
        _reduce(grid, (ty, tx), sdy, sdx)


def batch_norm_backward_dx(x, dy, gamma, mean, rstd, sdy, sdx, count, training, use_scale, work, dx):
    if x.size:
        t = x.dtype.type
        _bn_dx[launch_1d(x.size)](x, dy, gamma, mean, rstd, sdy, sdx, t(1) / t(count), bool(training),
                                  bool(use_scale), dx)


def batch_norm_backward(x, dy, gamma, mean, rstd, training, use_scale, use_center, work, dx, dgamma, dbeta):
    sdy = dbeta if use_center else work[2]
    sdx = dgamma if use_scale else work[3]
    batch_norm_backward_sums(x, dy, mean, rstd, work, sdy, sdx)
    batch_norm_backward_dx(x, dy, gamma, mean, rstd, sdy, sdx, x.shape[0], training, use_scale, work, dx)

