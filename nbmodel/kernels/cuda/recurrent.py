"""Recurrent family on CUDA: SimpleRNN, LSTM and GRU forward and backward
through time (see nbmodel/kernels/contract.py and the CPU twin
nbmodel/kernels/cpu/recurrent.py, whose workspaces, formulas and order of
operations these kernels follow).

Layout as on the CPU: time-major workspaces, so that every step's slice is
one contiguous (batch, features) matrix.

- ``_swap_steps`` copies x (B, T, D) to xs (T, B, D), reversing time for
  ``go_backwards`` (by index), and dxs back to dx after backward;
- the input projection of all steps is one gemm, xs (T*B, D) @ kernel into
  P/G (T, B, n);
- each step is one launch of the cell's step kernel, one thread per (batch
  row, unit): the biases and the recurrent term are added, the gate
  activations applied (``gate_act``: the CPU's float32 tanh/sigmoid
  formulas), the cell and h updated, and what backward needs written (the
  activated gates over the projection in G, c and act(c), the GRU's
  recurrent candidate term) together with the output row y[:, t] when the
  sequence is returned;
- the recurrent term h_{t-1} @ recurrent_kernel is computed by the step
  kernel itself, each thread the dot products of its own gates (one launch
  per step), unless the product is big (``_FUSED_MAX`` multiply-adds per
  step): then a gemm into ``rec`` (cuBLAS on a GPU) runs before the step
  kernel, whose threads would otherwise each read the whole
  recurrent_kernel once per batch row;
- backward runs the same way in reverse: per step one launch of the
  gate-gradient kernel, which first takes the gradient reaching h_t from the
  step above (dZ_{t+1} @ recurrent_kernel.T, the same fused-or-gemm choice)
  and writes the step's gate gradients into dZ (and dR, GRU); after the loop
  dkernel = xs.T @ dZ, drecurrent = H.T @ dZ, dx = dZ @ kernel.T are one
  gemm each over all T*B rows and dbias the column sums of dZ.

Dropout (mask_x, n_mx, mask_h, n_mh, HM: see the CPU twin) changes only the
products, never the step kernels: the inputs are masked on their way to
time-major (one xs per mask set); with recurrent masks the recurrent term is
always a gemm per mask set (masked states HM[s, t] = H[t] * mask_h[:, s] against
a contiguous copy of the gate block's columns) and so is the gradient through
it; per-gate masks turn each large gemm into one per gate block.

Step masks (step_mask, has_step_mask, zero_masked: see the CPU twin) live in
the step kernels: a thread whose row is skipped at step t writes the carried
state (H[t], C[t]) as the new one and the previous output row (or zeros) as
its output; backward it writes zero gate gradients and keeps the gradient
reaching its state for the step below, in ``carry`` (SimpleRNN, LSTM: the
next launch reads it instead of the recurrent term, which is 0 for that row)
or in dhz (GRU: the direct path). The rows skipped at step 0 get their
initial-state gradient back from ``carry`` after the last gemm.

Every kernel is deterministic: each output element is written by one thread,
sums run in a fixed order, no atomics.
"""
from __future__ import annotations

from ..cpu._jit import inline
from ..cpu.activations import act_grad_scalar
from ..cpu.recurrent import gate_act, real_before, step_real
from .array import add_into, copy, copy_block, fill, take_block
from .gemm import column_sums, gemm, per_dtype
from .runtime import cuda, kernel, launch_1d, shared_helper, types

_F = (types.float32, types.float64)
_I = types.int64
_B = types.boolean

# Where a step kernel finds the recurrent term (forward) or the gradient
# reaching h_t from the step above (backward).
_NONE = 0   # nothing: the first step without an initial state (h_{-1} = 0); the last step of backward (dh given)
_GEMM = 1   # in rec (forward) or dh (backward), written by a gemm before the launch
_FUSED = 2  # computed by each thread, dot products over the previous step

# The fused recurrent term up to this many multiply-adds per step (batch *
# n_gates*units * units): each thread reads one column of recurrent_kernel per
# gate, so the whole matrix is read once per batch row. A guess (no GPU
# measurement yet): below it one launch per step beats a gemm plus a launch.
_FUSED_MAX = 1 << 22


def _one(t):
    return t[::1]


def _two(t):
    return t[:, ::1]


def _three(t):
    return t[:, :, ::1]


# ------------------------------------------------------------ shared pieces
@inline
def _rec_term(H, t, b, rk, rec, col, mode):
    """Column ``col`` of h_{t-1} @ recurrent_kernel for batch row b (h_{t-1} = H[t])."""
    acc = H.dtype.type(0)
    if mode == _GEMM:
        acc = rec[b, col]
    elif mode == _FUSED:
        for k in range(H.shape[2]):
            acc += H[t, b, k] * rk[k, col]
    return acc


@inline
def _dh_term(Z, t, b, rk, dh, j, mode):
    """dh[b, j] as it reaches h_t: dh itself, or (Z[t + 1] @ recurrent_kernel.T)[b, j]."""
    if mode != _FUSED:
        return dh[b, j]
    acc = dh.dtype.type(0)
    for k in range(rk.shape[1]):
        acc += Z[t + 1, b, k] * rk[j, k]
    return acc


_rec = shared_helper(_rec_term)
_dh = shared_helper(_dh_term)
_real = shared_helper(step_real)
_real_before = shared_helper(real_before)


@inline
def _skipped_output(y, b, t, j, zero_masked):
    """The output y[b, t, j] of a skipped step: the previous output, zeros at the first step
    or with zero_masked."""
    if zero_masked or t == 0:
        return y.dtype.type(0)
    return y[b, t - 1, j]


@inline
def _dh_carried(Z, t, b, rk, dh, j, mode, step_mask, has_sm, reverse, carry):
    """The gradient reaching h_t: ``_dh_term``, or the carried one when row b was skipped at
    step t + 1 (its gate gradients there are 0)."""
    if mode != _NONE and has_sm and not _real(step_mask, True, b, t + 1, reverse):
        return carry[b, j]
    return _dh(Z, t, b, rk, dh, j, mode)


@inline
def _skipped_dy(dy, b, t, j, has_seq, zero_masked, step_mask, reverse):
    """The output gradient that joins the state gradient of a step skipped by row b: dy where
    the output is the carried h (not zero_masked, after a real step), else 0."""
    if has_seq and not zero_masked and _real_before(step_mask, b, t, reverse):
        return dy[b, t, j]
    return dy.dtype.type(0)


# (these call the helpers above by their shared names: the simulator runs Python all the way down)
_skip_out = shared_helper(_skipped_output)
_dh_carry = shared_helper(_dh_carried)
_skip_dy = shared_helper(_skipped_dy)


@kernel(*[(_three(t), _B, _B, _three(t)) for t in _F])
def _swap_steps(src, rev0, rev1, out):
    """out[i, j, k] = src[j', i', k]: the first two axes swapped, i' = n0 - 1 - i when rev0,
    j' = n1 - 1 - j when rev1 (n0, n1: out's first two sizes)."""
    n = cuda.grid(1)
    if n < out.size:
        n0 = out.shape[0]
        n1 = out.shape[1]
        d = out.shape[2]
        k = n % d
        ij = n // d
        j = ij % n1
        i = ij // n1
        out[i, j, k] = src[n1 - 1 - j if rev1 else j, n0 - 1 - i if rev0 else i, k]


def _time_major(x, reverse, xs):
    _swap_steps[launch_1d(xs.size)](x, reverse, False, xs)


# ------------------------------------------------------------ dropout masks
@kernel(*[(_three(t), _three(t), _I, _B, _three(t)) for t in _F])
def _time_major_masked(x, m, s, reverse, out):
    """out[t, b, k] = x[b, t', k] * m[b, s, k] (t' = T - 1 - t when reverse)."""
    n = cuda.grid(1)
    if n < out.size:
        T = out.shape[0]
        B = out.shape[1]
        d = out.shape[2]
        k = n % d
        tb = n // d
        b = tb % B
        t = tb // B
        out[t, b, k] = x[b, T - 1 - t if reverse else t, k] * m[b, s, k]


@kernel(*[(_three(t), _three(t), _I, _B, _three(t)) for t in _F])
def _add_batch_major_masked(xs, m, s, reverse, out):
    """out[b, t, k] += xs[t', b, k] * m[b, s, k] (t' = T - 1 - t when reverse)."""
    n = cuda.grid(1)
    if n < out.size:
        T = out.shape[1]
        d = out.shape[2]
        k = n % d
        bt = n // d
        t = bt % T
        b = bt // T
        out[b, t, k] += xs[T - 1 - t if reverse else t, b, k] * m[b, s, k]


@kernel(*[(_two(t), _three(t), _I, _two(t)) for t in _F])
def _times_mask(a, m, s, out):
    """out[b, k] = a[b, k] * m[b, s, k] (out may be a)."""
    n = cuda.grid(1)
    if n < out.size:
        d = out.shape[1]
        b = n // d
        k = n - b * d
        out[b, k] = a[b, k] * m[b, s, k]


def _masked_time_major(x, reverse, mask_x, n_mx, xs):
    """xs[s] = time-major x times input mask s (xs[0] = x without masks)."""
    if n_mx == 0:
        _time_major(x, reverse, xs[0])
        return
    for s in range(n_mx):
        _time_major_masked[launch_1d(xs[s].size)](x, mask_x, s, bool(reverse), xs[s])


def _take_columns(a, lo, out):
    """out (r, w) = a[:, lo:lo + w] for a C-contiguous (r, n) a."""
    r, w = out.shape
    take_block(a.reshape(r, a.shape[1], 1), lo, out.reshape(r, w, 1))


def _put_columns(src, out, lo):
    """out[:, lo:lo + w] = src (r, w)."""
    r, w = src.shape
    copy_block(src.reshape(r, w, 1), out.reshape(r, out.shape[1], 1), lo)


def _column_blocks(w, n_mask):
    """Contiguous copies of w's n_mask column blocks (None for one mask or none)."""
    if n_mask <= 1:
        return None
    bw = w.shape[1] // n_mask
    blocks = []
    for s in range(n_mask):
        blk = cuda.device_array((w.shape[0], bw), w.dtype)
        _take_columns(w, s * bw, blk)
        blocks.append(blk)
    return blocks


def _project_blocks(a, w, blocks, out):
    """out (r, n) = a[s] @ w[:, block s] per mask set (a[0] @ w when ``blocks`` is None)."""
    if blocks is None:
        gemm(a[0], w, out)
        return
    r = out.shape[0]
    bw = blocks[0].shape[1]
    tmp = cuda.device_array((r, bw), out.dtype)
    for s, blk in enumerate(blocks):
        gemm(a[s], blk, tmp)
        _put_columns(tmp, out, s * bw)


def _grad_blocks(a, z, n_mask, out):
    """out (d, n) = a[s].T @ z[:, block s] per mask set (a[0].T @ z with one mask or none)."""
    if n_mask <= 1:
        gemm(a[0], z, out, trans_a=True)
        return
    r, n = z.shape
    bw = n // n_mask
    zb = cuda.device_array((r, bw), z.dtype)
    tmp = cuda.device_array((out.shape[0], bw), out.dtype)
    for s in range(n_mask):
        _take_columns(z, s * bw, zb)
        gemm(a[s], zb, tmp, trans_a=True)
        _put_columns(tmp, out, s * bw)


class _RecurrentMasks:
    """The recurrent products of one call with recurrent masks: h_{t-1} @ recurrent_kernel
    from the masked states, and the gradient of h_{t-1} through it."""

    def __init__(self, recurrent_kernel, mask_h, n_mh, HM):
        self.rk = recurrent_kernel
        self.mask_h, self.n, self.HM = mask_h, n_mh, HM
        self.blocks = _column_blocks(recurrent_kernel, n_mh)

    def product(self, H, t, rec):
        for s in range(self.n):
            _times_mask[launch_1d(H[t].size)](H[t], self.mask_h, s, self.HM[s, t])
        _project_blocks([self.HM[s, t] for s in range(self.n)], self.rk, self.blocks, rec)

    def gradient(self, dz, dh):
        """dh = sum over mask sets of (dz[:, block s] @ recurrent_kernel[:, block s].T) * mask_h[:, s]."""
        B, u = dh.shape
        tmp = cuda.device_array((B, u), dh.dtype)
        zb = None if self.blocks is None else cuda.device_array((B, self.blocks[0].shape[1]), dz.dtype)
        fill(dh, 0)
        for s in range(self.n):
            if self.blocks is None:
                gemm(dz, self.rk, tmp, trans_b=True)
            else:
                _take_columns(dz, s * zb.shape[1], zb)
                gemm(zb, self.blocks[s], tmp, trans_b=True)
            _times_mask[launch_1d(tmp.size)](tmp, self.mask_h, s, tmp)
            add_into(dh, tmp)


@kernel(*[(_two(t), _two(t), _two(t), _B) for t in _F])
def _restore_first(dh, carry, step_mask, reverse):
    """dh[b] = carry[b] for the rows skipped at step 0 (their initial-state gradient)."""
    n = cuda.grid(1)
    if n < dh.size:
        u = dh.shape[1]
        b = n // u
        j = n - b * u
        if not _real(step_mask, True, b, 0, reverse):
            dh[b, j] = carry[b, j]


def _batch_major(xs, reverse, x):
    _swap_steps[launch_1d(x.size)](xs, False, reverse, x)


def _cells(B, u):
    return launch_1d(B * u)


def _mode(B, n, u):
    return _FUSED if B * n * u <= _FUSED_MAX else _GEMM


def _weight_grads(xs, kernel_, H, HM, Z, R, mask_x, n_mx, n_mh, use_init, need_dx, dkernel, drecurrent, dxs,
                  reverse, dx):
    """After the loop: dkernel = xs.T @ Z, drecurrent = h_{t-1}.T @ R over every step
    with a previous state, dx = Z @ kernel.T (times the input masks); per mask set
    with masks per gate (R is Z except for the GRU)."""
    K, T, B, D = xs.shape
    n = Z.shape[2]
    u = H.shape[2]
    Z2 = Z.reshape(T * B, n)
    _grad_blocks([xs[s].reshape(T * B, D) for s in range(K)], Z2, n_mx, dkernel)
    s0 = 0 if use_init else 1  # without an initial state h_{-1} = 0 adds nothing
    if T > s0:
        R2 = R[s0:T].reshape((T - s0) * B, n)
        if n_mh == 0:
            gemm(H[s0:T].reshape((T - s0) * B, u), R2, drecurrent, trans_a=True)
        else:
            _grad_blocks([HM[s, s0:T].reshape((T - s0) * B, u) for s in range(n_mh)], R2, n_mh, drecurrent)
    else:
        fill(drecurrent, 0)
    if not need_dx:
        return
    dxs2 = dxs.reshape(T * B, D)
    if n_mx == 0:
        gemm(Z2, kernel_, dxs2, trans_b=True)
        _batch_major(dxs, reverse, dx)
        return
    fill(dx, 0)
    blocks = _column_blocks(kernel_, n_mx)
    zb = None if blocks is None else cuda.device_array((T * B, n // n_mx), Z.dtype)
    for s in range(n_mx):
        if blocks is None:
            gemm(Z2, kernel_, dxs2, trans_b=True)
        else:
            _take_columns(Z2, s * zb.shape[1], zb)
            gemm(zb, blocks[s], dxs2, trans_b=True)
        _add_batch_major_masked[launch_1d(dx.size)](dxs, mask_x, s, bool(reverse), dx)


def _forward_start(x, reverse, kernel_, recurrent_kernel, mask_x, n_mx, mask_h, n_mh, HM, xs, G):
    """Masked time-major inputs, their projection into G, and the recurrent masks (or None)."""
    K, T, B, D = xs.shape
    _masked_time_major(x, reverse, mask_x, n_mx, xs)
    _project_blocks([xs[s].reshape(T * B, D) for s in range(K)], kernel_, _column_blocks(kernel_, n_mx),
                    G.reshape(T * B, G.shape[2]))
    return _RecurrentMasks(recurrent_kernel, mask_h, n_mh, HM) if n_mh else None


def _rec_forward(masks, fused, t, use_init, H, recurrent_kernel, rec):
    """The step kernel's mode for step t, after the gemm (masked or not) into rec if it reads one."""
    if not (t > 0 or use_init):
        return _NONE
    if masks is not None:
        masks.product(H, t, rec)
        return _GEMM
    if fused == _GEMM:
        gemm(H[t], recurrent_kernel, rec)
    return fused


def _rec_backward(masks, fused, t, T, Z, recurrent_kernel, dh):
    """The step-back kernel's mode for step t, after the gemm (masked or not) into dh if it reads one."""
    if t == T - 1:
        return _NONE
    if masks is not None:
        masks.gradient(Z[t + 1], dh)
        return _GEMM
    if fused == _GEMM:
        gemm(Z[t + 1], recurrent_kernel, dh, trans_b=True)
    return fused


def _initial_grad(masks, Z0, recurrent_kernel, dh):
    """dh = the gradient of the initial state through the first step's recurrent product."""
    if masks is not None:
        masks.gradient(Z0, dh)
    else:
        gemm(Z0, recurrent_kernel, dh, trans_b=True)


def _carry(has_step_mask, dh):
    """The backward's carried state gradients (B, u) with a step mask; without one dh stands
    in (never read or written)."""
    return cuda.device_array(dh.shape, dh.dtype) if has_step_mask else dh


def _restore_skipped(has_step_mask, dh, carry, step_mask, reverse):
    """After the initial state's gemm: the rows skipped at step 0 pass their carried gradient."""
    if has_step_mask:
        _restore_first[launch_1d(dh.size)](dh, carry, step_mask, bool(reverse))


# ------------------------------------------------------------------ LSTM
def _build_lstm_step(nbt):
    f32 = nbt == types.float32

    def _lstm_step(G, H, C, TC, rec, rk, bias, t, mode, act, rec_act, ret_seq, y, step_mask, has_sm, zero_masked,
                   reverse):
        """Step t (gates i, f, c, o) for thread (b, j): G[t] holds the projection on entry,
        the activated gates on exit; C[t + 1], TC[t], H[t + 1] (and y[b, t]) written (the
        carried c and h when row b skips the step)."""
        k = cuda.grid(1)
        u = H.shape[2]
        if k < H.shape[1] * u:
            b = k // u
            j = k - b * u
            one = nbt(1)
            for g in range(4):
                c = g * u + j
                v = G[t, b, c] + _rec(H, t, b, rk, rec, c, mode) + bias[c]
                G[t, b, c] = gate_act(act if g == 2 else rec_act, v, one, f32)
            cell = G[t, b, u + j] * C[t, b, j] + G[t, b, j] * G[t, b, 2 * u + j]
            a = nbt(gate_act(act, cell, one, f32))
            h = G[t, b, 3 * u + j] * a
            real = _real(step_mask, has_sm, b, t, reverse)
            if not real:
                cell = C[t, b, j]
                h = H[t, b, j]
            C[t + 1, b, j] = cell
            TC[t, b, j] = a
            H[t + 1, b, j] = h
            if ret_seq:
                y[b, t, j] = h if real else _skip_out(y, b, t, j, zero_masked)

    return _lstm_step


def _build_lstm_step_back(nbt):
    def _lstm_step_back(G, C, TC, dy, dh, dc, dZ, rk, t, mode, has_seq, act, rec_act, step_mask, has_sm,
                        zero_masked, reverse, carry):
        """Gate gradients of step t into dZ[t] for thread (b, j); dc[b, j] becomes the
        gradient of c_{t-1}. Row b skipped: zero gate gradients, dc unchanged, the
        gradient reaching h_t kept in carry for the step below."""
        k = cuda.grid(1)
        u = dh.shape[1]
        if k < dh.shape[0] * u:
            b = k // u
            j = k - b * u
            one = nbt(1)
            d = _dh_carry(dZ, t, b, rk, dh, j, mode, step_mask, has_sm, reverse, carry)
            if not _real(step_mask, has_sm, b, t, reverse):
                carry[b, j] = d + _skip_dy(dy, b, t, j, has_seq, zero_masked, step_mask, reverse)
                for g in range(4):
                    dZ[t, b, g * u + j] = nbt(0)
                return
            if has_seq:
                d += dy[b, t, j]
            a = TC[t, b, j]
            o = G[t, b, 3 * u + j]
            dZ[t, b, 3 * u + j] = d * a * act_grad_scalar(rec_act, o, o, one)
            dct = dc[b, j] + d * o * act_grad_scalar(act, a, a, one)
            i = G[t, b, j]
            f = G[t, b, u + j]
            c_hat = G[t, b, 2 * u + j]
            dZ[t, b, j] = dct * c_hat * act_grad_scalar(rec_act, i, i, one)
            dZ[t, b, u + j] = dct * C[t, b, j] * act_grad_scalar(rec_act, f, f, one)
            dZ[t, b, 2 * u + j] = dct * i * act_grad_scalar(act, c_hat, c_hat, one)
            dc[b, j] = dct * f

    return _lstm_step_back


_LSTM_STEP = per_dtype(_build_lstm_step, lambda t: (
    _three(t), _three(t), _three(t), _three(t), _two(t), _two(t), _one(t), _I, _I, _I, _I, _B, _three(t), _two(t), _B,
    _B, _B))
_LSTM_STEP_BACK = per_dtype(_build_lstm_step_back, lambda t: (
    _three(t), _three(t), _three(t), _three(t), _two(t), _two(t), _three(t), _two(t), _I, _I, _B, _I, _I, _two(t), _B,
    _B, _B, _two(t)))


def lstm_forward(x, reverse, kernel, recurrent_kernel, bias, use_init, act, rec_act, ret_seq,
                 mask_x, n_mx, mask_h, n_mh, HM, step_mask, has_step_mask, zero_masked, xs, G, H, C, TC, rec, y):
    """LSTM over x (B, T, D) (gate order i, f, c, o); H[0], C[0] hold the initial
    state (zeros without one: ``use_init`` False skips the first recurrent term)."""
    B, T, D = x.shape
    u = H.shape[2]
    step = _LSTM_STEP[G.dtype]
    fused = _mode(B, 4 * u, u)
    masks = _forward_start(x, reverse, kernel, recurrent_kernel, mask_x, n_mx, mask_h, n_mh, HM, xs, G)
    for t in range(T):
        mode = _rec_forward(masks, fused, t, use_init, H, recurrent_kernel, rec)
        step[_cells(B, u)](G, H, C, TC, rec, recurrent_kernel, bias, t, mode, int(act), int(rec_act),
                           bool(ret_seq), y, step_mask, bool(has_step_mask), bool(zero_masked), bool(reverse))


def lstm_backward(xs, reverse, kernel, recurrent_kernel, G, H, C, TC, dy, has_seq, act, rec_act,
                  mask_x, n_mx, mask_h, n_mh, HM, step_mask, has_step_mask, zero_masked, use_init, need_dx, dh, dc, dZ,
                  dkernel, drecurrent, dbias, dxs, dx):
    """Backward through time of lstm_forward: dh, dc (B, u) hold the gradients reaching the
    last step on entry, those of the initial state on exit."""
    K, T, B, D = xs.shape
    u = dh.shape[1]
    step = _LSTM_STEP_BACK[dZ.dtype]
    fused = _mode(B, 4 * u, u)
    masks = _RecurrentMasks(recurrent_kernel, mask_h, n_mh, HM) if n_mh else None
    carry = _carry(has_step_mask, dh)
    for t in range(T - 1, -1, -1):
        mode = _rec_backward(masks, fused, t, T, dZ, recurrent_kernel, dh)
        step[_cells(B, u)](G, C, TC, dy, dh, dc, dZ, recurrent_kernel, t, mode, bool(has_seq), int(act),
                           int(rec_act), step_mask, bool(has_step_mask), bool(zero_masked), bool(reverse), carry)
    if use_init:
        _initial_grad(masks, dZ[0], recurrent_kernel, dh)
        _restore_skipped(has_step_mask, dh, carry, step_mask, reverse)
    else:
        fill(dh, 0)
    _weight_grads(xs, kernel, H, HM, dZ, dZ, mask_x, n_mx, n_mh, use_init, need_dx, dkernel, drecurrent, dxs,
                  reverse, dx)
    column_sums(dZ.reshape(T * B, 4 * u), dbias)


# ------------------------------------------------------------------- GRU
def _build_gru_step(nbt):
    f32 = nbt == types.float32

    def _gru_step(G, H, RH, rec, rk, bias, t, mode, act, rec_act, ret_seq, y, step_mask, has_sm, zero_masked,
                  reverse):
        """Step t (reset_after, gates z, r, h) for thread (b, j): z, r from projection +
        biases + recurrence, RH[t] = the recurrent candidate term h_{t-1} U_h + b_rec_h,
        candidate act(x_h + b_in_h + r * RH), h = z * h_{t-1} + (1 - z) * candidate."""
        k = cuda.grid(1)
        u = H.shape[2]
        if k < H.shape[1] * u:
            b = k // u
            j = k - b * u
            one = nbt(1)
            for g in range(2):
                c = g * u + j
                v = G[t, b, c] + bias[0, c] + bias[1, c] + _rec(H, t, b, rk, rec, c, mode)
                G[t, b, c] = gate_act(rec_act, v, one, f32)
            c = 2 * u + j
            rh = _rec(H, t, b, rk, rec, c, mode) + bias[1, c]
            RH[t, b, j] = rh
            hh = nbt(gate_act(act, G[t, b, c] + bias[0, c] + G[t, b, u + j] * rh, one, f32))
            G[t, b, c] = hh
            z = G[t, b, j]
            h = z * H[t, b, j] + (one - z) * hh
            real = _real(step_mask, has_sm, b, t, reverse)
            if not real:
                h = H[t, b, j]
            H[t + 1, b, j] = h
            if ret_seq:
                y[b, t, j] = h if real else _skip_out(y, b, t, j, zero_masked)

    return _gru_step


def _build_gru_step_back(nbt):
    def _gru_step_back(G, H, RH, dy, dh, dhz, dZ, dR, rk, t, mode, first, has_seq, act, rec_act, step_mask, has_sm,
                       zero_masked, reverse):
        """Gradients of step t into dZ[t] (input projection) and dR[t] (recurrent product) for
        thread (b, j); dhz[b, j] becomes the direct gradient of h_{t-1} through z (the
        whole gradient reaching h_t when row b skips the step)."""
        k = cuda.grid(1)
        u = dh.shape[1]
        if k < dh.shape[0] * u:
            b = k // u
            j = k - b * u
            one = nbt(1)
            d = _dh(dR, t, b, rk, dh, j, mode)
            if not first:  # dhz starts at zero
                d += dhz[b, j]
            if not _real(step_mask, has_sm, b, t, reverse):
                dhz[b, j] = d + _skip_dy(dy, b, t, j, has_seq, zero_masked, step_mask, reverse)
                for g in range(3):
                    dZ[t, b, g * u + j] = nbt(0)
                    dR[t, b, g * u + j] = nbt(0)
                return
            if has_seq:
                d += dy[b, t, j]
            o = 2 * u + j
            z = G[t, b, j]
            r = G[t, b, u + j]
            hh = G[t, b, o]
            dpz = d * (H[t, b, j] - hh) * act_grad_scalar(rec_act, z, z, one)
            dph = d * (one - z) * act_grad_scalar(act, hh, hh, one)
            dpr = dph * RH[t, b, j] * act_grad_scalar(rec_act, r, r, one)
            dZ[t, b, j] = dpz
            dZ[t, b, u + j] = dpr
            dZ[t, b, o] = dph
            dR[t, b, j] = dpz
            dR[t, b, u + j] = dpr
            dR[t, b, o] = dph * r
            dhz[b, j] = d * z

    return _gru_step_back


_GRU_STEP = per_dtype(_build_gru_step, lambda t: (
    _three(t), _three(t), _three(t), _two(t), _two(t), _two(t), _I, _I, _I, _I, _B, _three(t), _two(t), _B, _B, _B))
_GRU_STEP_BACK = per_dtype(_build_gru_step_back, lambda t: (
    _three(t), _three(t), _three(t), _three(t), _two(t), _two(t), _three(t), _three(t), _two(t), _I, _I, _B,
    _B, _I, _I, _two(t), _B, _B, _B))


# reset_after=False (Keras 2 / TF1): the candidate's recurrent product takes r * h_{t-1},
# so each step is two launches around a gemm (RH[t] @ U_h) forward and backward.
def _build_gru_zr_before(nbt):
    f32 = nbt == types.float32

    def _gru_zr_before(G, H, RH, HM, rec, rk, bias, t, mode, has_mh, rec_act):
        """z, r of step t for thread (b, j) and RH[t] = r * h_{t-1} (the candidate block's
        masked state with recurrent masks; 0 without a previous state)."""
        k = cuda.grid(1)
        u = H.shape[2]
        if k < H.shape[1] * u:
            b = k // u
            j = k - b * u
            one = nbt(1)
            for g in range(2):
                c = g * u + j
                G[t, b, c] = gate_act(rec_act, G[t, b, c] + bias[0, c] + _rec(H, t, b, rk, rec, c, mode), one, f32)
            hp = nbt(0)
            if mode != _NONE:
                hp = HM[2, t, b, j] if has_mh else H[t, b, j]
            RH[t, b, j] = G[t, b, u + j] * hp

    return _gru_zr_before


def _build_gru_h_before(nbt):
    f32 = nbt == types.float32

    def _gru_h_before(G, H, rech, bias, t, act, ret_seq, y, step_mask, has_sm, zero_masked, reverse):
        """Candidate act(x_h + b_h + (RH[t] @ U_h)[b, j]) and h update for thread (b, j) (h
        carried when row b skips the step)."""
        k = cuda.grid(1)
        u = H.shape[2]
        if k < H.shape[1] * u:
            b = k // u
            j = k - b * u
            one = nbt(1)
            c = 2 * u + j
            hh = nbt(gate_act(act, G[t, b, c] + bias[0, c] + rech[b, j], one, f32))
            G[t, b, c] = hh
            z = G[t, b, j]
            h = z * H[t, b, j] + (one - z) * hh
            real = _real(step_mask, has_sm, b, t, reverse)
            if not real:
                h = H[t, b, j]
            H[t + 1, b, j] = h
            if ret_seq:
                y[b, t, j] = h if real else _skip_out(y, b, t, j, zero_masked)

    return _gru_h_before


def _build_gru_h_before_back(nbt):
    def _gru_h_before_back(G, H, dy, dh, dhz, dZ, dR, dph, rk, t, mode, first, has_seq, act, rec_act, step_mask,
                           has_sm, zero_masked, reverse):
        """z and candidate gradients of step t for thread (b, j); dR's candidate block is 0
        (that product's gradient goes through RH); dph = the candidate gradient; dhz = d * z.
        Row b skipped: zero gradients (dph too: the reset gate's pass adds nothing) and dhz = d."""
        k = cuda.grid(1)
        u = dh.shape[1]
        if k < dh.shape[0] * u:
            b = k // u
            j = k - b * u
            one = nbt(1)
            d = _dh(dR, t, b, rk, dh, j, mode)
            if not first:
                d += dhz[b, j]
            if not _real(step_mask, has_sm, b, t, reverse):
                dhz[b, j] = d + _skip_dy(dy, b, t, j, has_seq, zero_masked, step_mask, reverse)
                for g in range(3):
                    dZ[t, b, g * u + j] = nbt(0)
                    dR[t, b, g * u + j] = nbt(0)
                dph[b, j] = nbt(0)
                return
            if has_seq:
                d += dy[b, t, j]
            o = 2 * u + j
            z = G[t, b, j]
            hh = G[t, b, o]
            dpz = d * (H[t, b, j] - hh) * act_grad_scalar(rec_act, z, z, one)
            dpc = d * (one - z) * act_grad_scalar(act, hh, hh, one)
            dZ[t, b, j] = dpz
            dZ[t, b, o] = dpc
            dR[t, b, j] = dpz
            dR[t, b, o] = nbt(0)
            dph[b, j] = dpc
            dhz[b, j] = d * z

    return _gru_h_before_back


def _build_gru_r_before_back(nbt):
    def _gru_r_before_back(G, H, HM, mask_h, drh, dhz, dZ, dR, t, has_prev, has_mh, rec_act):
        """From drh = d(r * h_{t-1}) (B, u): the reset gate's gradient, and its path into
        h_{t-1} (through the candidate block's mask) added to dhz, for thread (b, j)."""
        k = cuda.grid(1)
        u = drh.shape[1]
        if k < drh.shape[0] * u:
            b = k // u
            j = k - b * u
            one = nbt(1)
            r = G[t, b, u + j]
            hp = nbt(0)
            m = one
            if has_prev:
                if has_mh:
                    hp = HM[2, t, b, j]
                    m = mask_h[b, 2, j]
                else:
                    hp = H[t, b, j]
            dpr = drh[b, j] * hp * act_grad_scalar(rec_act, r, r, one)
            dZ[t, b, u + j] = dpr
            dR[t, b, u + j] = dpr
            dhz[b, j] += drh[b, j] * r * m

    return _gru_r_before_back


_GRU_ZR_BEFORE = per_dtype(_build_gru_zr_before, lambda t: (
    _three(t), _three(t), _three(t), types.Array(t, 4, "C"), _two(t), _two(t), _two(t), _I, _I, _B, _I))
_GRU_H_BEFORE = per_dtype(_build_gru_h_before, lambda t: (
    _three(t), _three(t), _two(t), _two(t), _I, _I, _B, _three(t), _two(t), _B, _B, _B))
_GRU_H_BEFORE_BACK = per_dtype(_build_gru_h_before_back, lambda t: (
    _three(t), _three(t), _three(t), _two(t), _two(t), _three(t), _three(t), _two(t), _two(t), _I, _I, _B, _B, _I,
    _I, _two(t), _B, _B, _B))
_GRU_R_BEFORE_BACK = per_dtype(_build_gru_r_before_back, lambda t: (
    _three(t), _three(t), types.Array(t, 4, "C"), _three(t), _two(t), _two(t), _three(t), _three(t), _I, _B, _B,
    _I))


def gru_forward(x, reverse, kernel, recurrent_kernel, bias, use_init, act, rec_act, reset_after, ret_seq,
                mask_x, n_mx, mask_h, n_mh, HM, step_mask, has_step_mask, zero_masked, xs, G, H, RH, rec, y):
    """GRU (gate order z, r, h) over x (B, T, D); bias (2, 3u): input and recurrent
    biases with reset_after, (1, 3u) without (RH[t] = r * h_{t-1} then)."""
    B, T, D = x.shape
    u = H.shape[2]
    fused = _mode(B, 3 * u, u)
    masks = _forward_start(x, reverse, kernel, recurrent_kernel, mask_x, n_mx, mask_h, n_mh, HM, xs, G)
    if not reset_after:
        zr, hstep = _GRU_ZR_BEFORE[G.dtype], _GRU_H_BEFORE[G.dtype]
        u_h = _column_blocks(recurrent_kernel, 3)[2]
        rech = cuda.device_array((B, u), G.dtype)
    for t in range(T):
        mode = _rec_forward(masks, fused, t, use_init, H, recurrent_kernel, rec)
        if reset_after:
            _GRU_STEP[G.dtype][_cells(B, u)](G, H, RH, rec, recurrent_kernel, bias, t, mode, int(act), int(rec_act),
                                             bool(ret_seq), y, step_mask, bool(has_step_mask), bool(zero_masked),
                                             bool(reverse))
        else:
            zr[_cells(B, u)](G, H, RH, HM, rec, recurrent_kernel, bias, t, mode, masks is not None, int(rec_act))
            gemm(RH[t], u_h, rech)
            hstep[_cells(B, u)](G, H, rech, bias, t, int(act), bool(ret_seq), y, step_mask, bool(has_step_mask),
                                bool(zero_masked), bool(reverse))


def gru_backward(xs, reverse, kernel, recurrent_kernel, G, H, RH, dy, has_seq, act, rec_act, reset_after,
                 mask_x, n_mx, mask_h, n_mh, HM, step_mask, has_step_mask, zero_masked, use_init, need_dx, dh, dhz, dZ,
                 dR, dkernel, drecurrent, dbias, dxs, dx):
    """Backward through time of gru_forward: dh (B, u) the gradient reaching the last step
    on entry, that of the initial state on exit; dhz (B, u) workspace; dbias (2, 3u), or
    (1, 3u) without reset_after."""
    K, T, B, D = xs.shape
    u = dh.shape[1]
    fused = _mode(B, 3 * u, u)
    masks = _RecurrentMasks(recurrent_kernel, mask_h, n_mh, HM) if n_mh else None
    if not reset_after:
        hback, rback = _GRU_H_BEFORE_BACK[dZ.dtype], _GRU_R_BEFORE_BACK[dZ.dtype]
        u_h = _column_blocks(recurrent_kernel, 3)[2]
        dph = cuda.device_array((B, u), dZ.dtype)
        drh = cuda.device_array((B, u), dZ.dtype)
    for t in range(T - 1, -1, -1):
        mode = _rec_backward(masks, fused, t, T, dR, recurrent_kernel, dh)
        if reset_after:
            _GRU_STEP_BACK[dZ.dtype][_cells(B, u)](G, H, RH, dy, dh, dhz, dZ, dR, recurrent_kernel, t, mode,
                                                   t == T - 1, bool(has_seq), int(act), int(rec_act), step_mask,
                                                   bool(has_step_mask), bool(zero_masked), bool(reverse))
        else:
            hback[_cells(B, u)](G, H, dy, dh, dhz, dZ, dR, dph, recurrent_kernel, t, mode, t == T - 1,
                                bool(has_seq), int(act), int(rec_act), step_mask, bool(has_step_mask),
                                bool(zero_masked), bool(reverse))
            gemm(dph, u_h, drh, trans_b=True)
            rback[_cells(B, u)](G, H, HM, mask_h, drh, dhz, dZ, dR, t, bool(t > 0 or use_init), masks is not None,
                                int(rec_act))
    # the initial state's gradient: dR_0 @ recurrent_kernel.T (none without an initial state) + dhz
    if use_init:
        _initial_grad(masks, dR[0], recurrent_kernel, dh)
        add_into(dh, dhz)
    else:
        copy(dhz, dh)
    _weight_grads(xs, kernel, H, HM, dZ, dR, mask_x, n_mx, n_mh, use_init, need_dx, dkernel, drecurrent, dxs,
                  reverse, dx)
    column_sums(dZ.reshape(T * B, 3 * u), dbias[0])
    if reset_after:
        column_sums(dR.reshape(T * B, 3 * u), dbias[1])
    else:  # the candidate block of drecurrent: (r * h_{t-1}).T @ its gradient
        zb = cuda.device_array((T * B, u), dZ.dtype)
        tmp = cuda.device_array((u, u), dZ.dtype)
        _take_columns(dZ.reshape(T * B, 3 * u), 2 * u, zb)
        gemm(RH.reshape(T * B, u), zb, tmp, trans_a=True)
        _put_columns(tmp, drecurrent, 2 * u)


# -------------------------------------------------------------- SimpleRNN
def _build_rnn_step(nbt):
    f32 = nbt == types.float32

    def _rnn_step(P, H, rec, rk, bias, t, mode, act, ret_seq, y, step_mask, has_sm, zero_masked, reverse):
        """h_t = act(x_t kernel + bias + h_{t-1} recurrent_kernel) for thread (b, j) (h_{t-1}
        carried when row b skips the step)."""
        k = cuda.grid(1)
        u = H.shape[2]
        if k < H.shape[1] * u:
            b = k // u
            j = k - b * u
            h = nbt(gate_act(act, P[t, b, j] + bias[j] + _rec(H, t, b, rk, rec, j, mode), nbt(1), f32))
            real = _real(step_mask, has_sm, b, t, reverse)
            if not real:
                h = H[t, b, j]
            H[t + 1, b, j] = h
            if ret_seq:
                y[b, t, j] = h if real else _skip_out(y, b, t, j, zero_masked)

    return _rnn_step


def _build_rnn_step_back(nbt):
    def _rnn_step_back(H, dy, dh, dZ, rk, t, mode, has_seq, act, step_mask, has_sm, zero_masked, reverse, carry):
        """dZ[t] = (gradient reaching h_t) * act'(h_t) for thread (b, j); row b skipped: 0,
        and the gradient reaching h_t kept in carry for the step below."""
        k = cuda.grid(1)
        u = dh.shape[1]
        if k < dh.shape[0] * u:
            b = k // u
            j = k - b * u
            d = _dh_carry(dZ, t, b, rk, dh, j, mode, step_mask, has_sm, reverse, carry)
            if not _real(step_mask, has_sm, b, t, reverse):
                carry[b, j] = d + _skip_dy(dy, b, t, j, has_seq, zero_masked, step_mask, reverse)
                dZ[t, b, j] = nbt(0)
                return
            if has_seq:
                d += dy[b, t, j]
            h = H[t + 1, b, j]
            dZ[t, b, j] = d * act_grad_scalar(act, h, h, nbt(1))

    return _rnn_step_back


_RNN_STEP = per_dtype(_build_rnn_step, lambda t: (
    _three(t), _three(t), _two(t), _two(t), _one(t), _I, _I, _I, _B, _three(t), _two(t), _B, _B, _B))
_RNN_STEP_BACK = per_dtype(_build_rnn_step_back, lambda t: (
    _three(t), _three(t), _two(t), _three(t), _two(t), _I, _I, _B, _I, _two(t), _B, _B, _B, _two(t)))


def simple_rnn_forward(x, reverse, kernel, recurrent_kernel, bias, use_init, act, ret_seq, mask_x, n_mx, mask_h,
                       n_mh, HM, step_mask, has_step_mask, zero_masked, xs, P, H, rec, y):
    """h_t = act(x_t kernel + h_{t-1} recurrent_kernel + bias) over x (B, T, D); P (T, B, u)
    the input projection, H (T + 1, B, u) every state, H[0] the initial one."""
    B, T, D = x.shape
    u = H.shape[2]
    step = _RNN_STEP[P.dtype]
    fused = _mode(B, u, u)
    masks = _forward_start(x, reverse, kernel, recurrent_kernel, mask_x, n_mx, mask_h, n_mh, HM, xs, P)
    for t in range(T):
        mode = _rec_forward(masks, fused, t, use_init, H, recurrent_kernel, rec)
        step[_cells(B, u)](P, H, rec, recurrent_kernel, bias, t, mode, int(act), bool(ret_seq), y, step_mask,
                           bool(has_step_mask), bool(zero_masked), bool(reverse))


def simple_rnn_backward(xs, reverse, kernel, recurrent_kernel, H, dy, has_seq, act, mask_x, n_mx, mask_h, n_mh,
                        HM, step_mask, has_step_mask, zero_masked, use_init, need_dx, dh, dZ, dkernel, drecurrent,
                        dbias, dxs, dx):
    """Backward through time of simple_rnn_forward (arguments as lstm_backward)."""
    K, T, B, D = xs.shape
    u = dh.shape[1]
    step = _RNN_STEP_BACK[dZ.dtype]
    fused = _mode(B, u, u)
    masks = _RecurrentMasks(recurrent_kernel, mask_h, n_mh, HM) if n_mh else None
    carry = _carry(has_step_mask, dh)
    for t in range(T - 1, -1, -1):
        mode = _rec_backward(masks, fused, t, T, dZ, recurrent_kernel, dh)
        step[_cells(B, u)](H, dy, dh, dZ, recurrent_kernel, t, mode, bool(has_seq), int(act), step_mask,
                           bool(has_step_mask), bool(zero_masked), bool(reverse), carry)
    if use_init:
        _initial_grad(masks, dZ[0], recurrent_kernel, dh)
        _restore_skipped(has_step_mask, dh, carry, step_mask, reverse)
    else:
        fill(dh, 0)
    _weight_grads(xs, kernel, H, HM, dZ, dZ, mask_x, n_mx, n_mh, use_init, need_dx, dkernel, drecurrent, dxs,
                  reverse, dx)
    column_sums(dZ.reshape(T * B, u), dbias)
