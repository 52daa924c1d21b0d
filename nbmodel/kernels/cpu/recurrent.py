"""SimpleRNN, LSTM and GRU: forward and backward through time.

Layout. The layer passes batch-major arrays (batch, time, features); inside,
the kernels work time-major so that every step's slice is one contiguous
(batch, features) matrix that BLAS can use directly:

- the input projection of all steps is ONE GEMM, ``xs (T*B, D) @ kernel``,
  into ``G (T, B, n_gates*u)``;
- each step is one recurrent GEMM ``h_{t-1} @ recurrent_kernel`` into a
  preallocated ``rec`` (run transposed, on feature-major copies of the rows:
  see ``recurrent_product``) plus one fused pass that adds the biases, applies every
  gate nonlinearity, updates the cell and writes h (and the batch-major output
  row when the full sequence is returned). The activated gates overwrite the
  projection in ``G`` (what backward needs), so no extra storage is touched;
- backward through time runs one fused gate-gradient pass and one GEMM
  (``dz_t @ recurrent_kernel.T``) per step, writes every step's gate gradients
  into ``dZ (T, B, n_gates*u)``, and after the loop computes the weight
  gradients and the input gradient as three large GEMMs over all T*B rows.

Threads. The entry points are Python launchers (as in conv.py): the input
projection (one GEMM, BLAS's own threads), then the time loop, then (backward)
the weight and bias gradients (large GEMMs, BLAS's own threads). The GEMMs
outside the time loop (``outer_dot``) are NumPy's: on these transposed
products NumPy's BLAS measured 8-20% faster than the SciPy BLAS that numba's
np.dot calls (LSTM weight gradients at the reference shapes, AVX2 and AVX-512
kernels). The exception: more than one thread, and a NumPy BLAS that may spin
after each product (``config.NUMPY_BLAS_SPINS``: a NumPy on another BLAS,
imported before nbmodel; NumPy's own OpenBLAS is restarted without the spin at
import), whose idle workers would take cores from the time loop's threads.
Then they use the kernels' BLAS, the one pool every other kernel uses.
Measured at 2 threads with a spinning NumPy pool: lstm step 0.8x, gru 0.85x.

Rows never interact inside a time loop (each sample's recurrence is its own), so with
more than one thread the loop can be split into one block of batch rows per
thread (``batch_blocks`` decides): each block runs every step for its rows
b0..b1 with a one-thread GEMM (``kernel_blas_serial``) and its own gate
passes, one parallel region for the whole loop instead of a small GEMM split
by BLAS at every step. Every step helper takes the row range and indexes the
full C-contiguous arrays (``H[t, b0:b1]`` stays C-contiguous in numba; views
such as ``G[:, b0:b1]`` are not, and the gate loops stop vectorizing). Blocks
write disjoint rows of the shared workspaces (rec, carry, the GRU
temporaries). Recurrent dropout masks and small loops (few rows per block,
little work) run the serial loop, rows 0..B.

``go_backwards`` only reverses time when ``x`` is copied to time-major and when
``dx`` is copied back; outputs stay in processing order (Keras semantics).

Step masks (Keras masking; ``step_mask, has_step_mask, zero_masked``):
step_mask (B, T) of the layer dtype in x's time order (read backwards with
``reverse``), 1 = a real step, 0 = a skipped one; with ``has_step_mask``
False it is a (1, 1) dummy that is never read. Every step still runs for
every row (the GEMMs and gate passes are unchanged); a cheap per-row pass
after the gate pass carries a skipped row's states over (H[t + 1] = H[t], and
C), and its output row is the previous output row (zeros at the first step,
even with an initial state, or always with ``zero_masked``), as Keras' rnn
loop does. Backward, a skipped row gets zero gate gradients (so the weight
and input gradients after the loop need nothing else: dx is 0 there) and
passes its state gradients through the step unchanged; its output gradient
joins the state gradient only where the output is the carried h (not
zero_masked, after a real step).

tanh and sigmoid: libm's scalar calls cannot be vectorized, and the gate pass
evaluates five of them per unit and step. In float32 they are computed with a
rational approximation of tanh (max abs error ~3e-7, about float32 rounding)
that LLVM turns into SIMD code; float64 (the gradient checks) uses math.tanh
and math.exp. The choice is made at compile time from the argument type.
The CUDA twins compute the same float32 formulas through ``gate_act``
(numba-cuda cannot compile the ``ftanh``/``fsigmoid`` overloads without a
GPU): ``tanh_f32`` and ``sigmoid_f32`` are the bodies of both.
"""
import math

import numpy as np
from numba import types
from numba.extending import overload

from ...config import FASTMATH, NUMPY_BLAS_SPINS, get_num_threads, kernel_blas_serial
from ..codes import SIGMOID, TANH
from ._blas import gemm
from ._jit import inline, jit, pjit, prange
from .activations import act_grad_scalar, act_scalar, sigmoid_scalar

# tanh(x) ~= x * P(x^2) / Q(x^2) on |x| <= 9 (fitted for this module; beyond 9
# tanh is 1 to float32 precision).
_TP0 = np.float32(9.99999906e-01)
_TP1 = np.float32(1.33731325e-01)
_TP2 = np.float32(3.48650327e-03)
_TP3 = np.float32(2.04704934e-05)
_TP4 = np.float32(1.31823135e-08)
_TQ1 = np.float32(4.67064294e-01)
_TQ2 = np.float32(2.58416831e-02)
_TQ3 = np.float32(3.27125483e-04)
_TQ4 = np.float32(7.70189213e-07)
_TCLIP = np.float32(9.0)
_F1 = np.float32(1.0)
_FHALF = np.float32(0.5)


# Overload implementations are compiled with their own options: without these
# they get error_model="python", whose division-by-zero check kept the gate
# loops from vectorizing wherever LLVM did not inline the call.
_OVERLOAD_OPTIONS = {"fastmath": set(FASTMATH), "error_model": "numpy"}


def ftanh(v):
    """tanh; vectorizable rational approximation for float32 (see module doc)."""
    return math.tanh(v)


def fsigmoid(v):
    """Logistic sigmoid; float32 goes through the fast tanh."""
    return 1.0 / (1.0 + math.exp(-v))


@inline
def tanh_f32(v):
    """The float32 tanh of this module (see the module doc) for a float32 v."""
    x = min(max(v, -_TCLIP), _TCLIP)
    s = x * x
    p = (((_TP4 * s + _TP3) * s + _TP2) * s + _TP1) * s + _TP0
    q = (((_TQ4 * s + _TQ3) * s + _TQ2) * s + _TQ1) * s + _F1
    r = x * p / q
    return min(max(r, -_F1), _F1)


@inline
def sigmoid_f32(v):
    """The float32 sigmoid of this module, through tanh_f32."""
    return _FHALF + _FHALF * tanh_f32(_FHALF * v)


@overload(ftanh, jit_options=_OVERLOAD_OPTIONS)
def _ftanh_impl(v):
    if v == types.float32:
        def impl(v):
            return tanh_f32(v)
        return impl

    def impl(v):
        return math.tanh(v)
    return impl


@overload(fsigmoid, jit_options=_OVERLOAD_OPTIONS)
def _fsigmoid_impl(v):
    if v == types.float32:
        def impl(v):
            return sigmoid_f32(v)
        return impl

    def impl(v):
        return sigmoid_scalar(v, v - v + 1)
    return impl


# The other activations are called, not inlined: inlining the full switch at
# every gate multiplies the compile time of these kernels for rare cases.
@jit
def _act_call(code, v, one):
    return act_scalar(code, v, one)


@jit
def _act_grad_call(code, y, one):
    return act_grad_scalar(code, y, y, one)


@inline
def ract(code, v, one):
    """Activation ``code`` of one value, with the fast tanh/sigmoid."""
    if code == TANH:
        return ftanh(v)
    if code == SIGMOID:
        return fsigmoid(v)
    return _act_call(code, v, one)


@inline
def gate_act(code, v, one, f32):
    """``ract`` for kernels that pick the float32 formulas themselves (``f32``:
    a constant of the compiled kernel): the CUDA twins, which cannot compile
    the overloads. Other codes through act_scalar, inlined."""
    if f32 and code == TANH:
        return tanh_f32(v)
    if f32 and code == SIGMOID:
        return sigmoid_f32(v)
    return act_scalar(code, v, one)


@inline
def ract_grad(code, y, one):
    """Derivative of activation ``code`` from its output (the layers only allow
    activations whose derivative is a function of the output)."""
    if code == TANH:
        return one - y * y
    if code == SIGMOID:
        return y * (one - y)
    return _act_grad_call(code, y, one)


# ----------------------------------------------------------------- layout
@jit
def to_time_major(x, reverse, out):
    """out[t, b] = x[b, t] (x[b, T-1-t] when reverse); x (B, T, D), out (T, B, D)."""
    B, T, D = x.shape
    for t in range(T):
        src = T - 1 - t if reverse else t
        for b in range(B):
            for k in range(D):
                out[t, b, k] = x[b, src, k]


@jit
def from_time_major(src, reverse, out):
    """Inverse of to_time_major: out[b, t] = src[t, b] (src[T-1-t, b] when reverse)."""
    T, B, D = src.shape
    for b in range(B):
        for t in range(T):
            s = T - 1 - t if reverse else t
            for k in range(D):
                out[b, t, k] = src[s, b, k]


# ------------------------------------------------------------- step masks
@inline
def step_real(step_mask, has_step_mask, b, t, reverse):
    """Whether processing step t of row b is a real step (always, without a step mask)."""
    if not has_step_mask:
        return True
    T = step_mask.shape[1]
    return step_mask[b, T - 1 - t if reverse else t] != step_mask.dtype.type(0)


@inline
def real_before(step_mask, b, t, reverse):
    """Whether row b has a real step before processing step t: a skipped step's output is
    the carried h after one, zeros before."""
    T = step_mask.shape[1]
    for s in range(t):
        if step_mask[b, T - 1 - s if reverse else s] != step_mask.dtype.type(0):
            return True
    return False


@inline
def _carry_skipped(S, t, step_mask, reverse, b0, b1):
    """S[t + 1, b] = S[t, b] for the rows b0..b1 skipped at step t (the state carried over)."""
    u = S.shape[2]
    for b in range(b0, b1):
        if not step_real(step_mask, True, b, t, reverse):
            for j in range(u):
                S[t + 1, b, j] = S[t, b, j]


@inline
def _restore_skipped(dh, carry, t, step_mask, reverse, b0, b1):
    """dh[b] = carry[b] for the rows b0..b1 skipped at step t (their state gradient passes the step)."""
    u = dh.shape[1]
    for b in range(b0, b1):
        if not step_real(step_mask, True, b, t, reverse):
            for j in range(u):
                dh[b, j] = carry[b, j]


@inline
def _skipped_output_grad(dy, dhb, b, t, has_seq, step_mask, zero_masked, reverse):
    """Row b skipped at step t: its output gradient joins the state gradient dhb where that
    output is the carried h (not zero_masked, after a real step)."""
    if has_seq and not zero_masked and real_before(step_mask, b, t, reverse):
        yb = dy[b, t]
        for j in range(dhb.shape[0]):
            dhb[j] += yb[j]


# ---------------------------------------------------------- dropout masks
# Keras 3 semantics (keras/src/layers/rnn/{simple_rnn,lstm,gru}.py): masks are
# drawn once per call and reused at every step. ``n_mx`` input masks
# mask_x (B, n_mx, D) and ``n_mh`` recurrent masks mask_h (B, n_mh, u) (batch
# first: a data-parallel shard draws its rows of the global batch's masks): 0 = no
# mask; 1 = one mask for every gate; n_gates = one per gate block of
# ``n_gates*u`` columns (Keras' implementation 1, used when recurrent_dropout
# > 0). The gate passes never see the masks: they only change the products
# around them (input projection, recurrent term, their gradients).
@jit
def masked_time_major(x, reverse, mask_x, n_mx, xs):
    """xs[s] = time-major x times input mask s (xs[0] = x when n_mx == 0); xs (K, T, B, D)."""
    if n_mx == 0:
        to_time_major(x, reverse, xs[0])
        return
    B, T, D = x.shape
    for s in range(n_mx):
        m = mask_x[:, s]
        out = xs[s]
        for t in range(T):
            src = T - 1 - t if reverse else t
            for b in range(B):
                for k in range(D):
                    out[t, b, k] = x[b, src, k] * m[b, k]


@jit
def _kernel_blas_dot(a, b, out):
    gemm(a, b, out)


def outer_dot(a, b, out):
    """out = a @ b for a product outside the time loops: NumPy's BLAS, or the kernels'
    (numba's np.dot, SciPy's) where NumPy's would spin against the loop's threads
    (module doc, "Threads"). The per-gate mask products stay NumPy's: their column
    blocks are not contiguous."""
    if not NUMPY_BLAS_SPINS or get_num_threads() == 1:
        np.dot(a, b, out=out)
    else:
        _kernel_blas_dot(a, b, out)


def project_blocks(a, n_mask, w, out):
    """out (R, n) = a[s] (R, d) @ w[:, block s] for every mask set s (one product
    over all columns when n_mask <= 1); a (K, R, d). NumPy's BLAS (module doc)."""
    if n_mask <= 1:
        outer_dot(a[0], w, out)
        return
    bw = out.shape[1] // n_mask
    for s in range(n_mask):
        out[:, s * bw:(s + 1) * bw] = a[s] @ w[:, s * bw:(s + 1) * bw]


@inline
def _zero_rows(a, b0, b1):
    """a[b0:b1] = 0 for a 2-D a."""
    for b in range(b0, b1):
        for j in range(a.shape[1]):
            a[b, j] = 0


@inline
def _rows_from_feature_major(src, dst, b0):
    """dst[b0 + b] = src[:, b]: a feature-major (n, rows) block back into batch-major rows,
    128 features at a time: a whole column of a (512, 32) block strides over more cache
    lines than L1 holds at that power-of-two stride (measured 2.6x slower)."""
    n = src.shape[0]
    for j0 in range(0, n, 128):
        w = min(128, n - j0)
        s = src[j0:j0 + w]
        for b in range(src.shape[1]):
            d = dst[b0 + b, j0:j0 + w]
            for j in range(w):  # from 0 over views: numba vectorizes only such loops
                d[j] = s[j, b]


@inline
def _step_workspaces(recurrent_kernel, rows):
    """kernel_t and the feature-major hT, recT of recurrent_product for a block of rows."""
    u, n = recurrent_kernel.shape
    dt = recurrent_kernel.dtype
    return np.ascontiguousarray(recurrent_kernel.T), np.empty((u, rows), dt), np.empty((n, rows), dt)


# The forward step product runs in the orientation BLAS is fastest at for a few rows
# against a wide kernel: the kernel on the left and the rows as feature-major columns,
# kernel.T (4u, u) @ h.T (u, rows) rather than h @ kernel. Measured (float32, u=128,
# LSTM kernel, 32 products): 1.4-1.5x faster at 16 and 32 rows on SciPy's BLAS, AVX2
# and AVX-512 kernels; on NumPy's (``_blas.gemm`` at one thread) 1.72-1.75 vs 1.91-1.95
# ms; the transposes around it cost a few percent. (The backward product, on NumPy's
# BLAS, is faster on rows: recurrent_grad.)
@jit
def recurrent_product(H, t, recurrent_kernel, kernel_t, mask_h, n_mh, HM, b0, b1, hT, recT, rec):
    """rec[b0:b1] = h_{t-1} @ recurrent_kernel over rows b0..b1 (h_{t-1} = H[t]); without
    masks through kernel_t (recurrent_kernel.T, C-contiguous) and the feature-major
    workspaces hT (u, b1 - b0), recT (n, b1 - b0); with recurrent masks the masked states
    HM[s, t] = H[t] * mask_h[:, s] are kept for the weight gradient."""
    if n_mh == 0:
        u = H.shape[2]
        for j in range(u):
            for b in range(b0, b1):
                hT[j, b - b0] = H[t, b, j]
        gemm(kernel_t, hT, recT)
        _rows_from_feature_major(recT, rec, b0)
        return
    u = mask_h.shape[2]
    for s in range(n_mh):
        for b in range(b0, b1):
            for j in range(u):
                HM[s, t, b, j] = H[t, b, j] * mask_h[b, s, j]
    if n_mh == 1:
        gemm(HM[0, t, b0:b1], recurrent_kernel, rec[b0:b1])
        return
    bw = rec.shape[1] // n_mh
    tmp = np.empty((b1 - b0, bw), rec.dtype)
    for s in range(n_mh):
        gemm(HM[s, t, b0:b1], np.ascontiguousarray(recurrent_kernel[:, s * bw:(s + 1) * bw]), tmp)
        rec[b0:b1, s * bw:(s + 1) * bw] = tmp


@jit
def recurrent_grad(dZ, t, kernel_rt, mask_h, n_mh, b0, b1, dh):
    """dh[b0:b1] = gradient of h_{t-1} through the recurrent product whose output gradient
    is dZ[t] (B, n), over rows b0..b1: dZ[t] @ recurrent_kernel.T, through kernel_rt
    (recurrent_kernel.T, C-contiguous (n, u)) so that both operands are in rows
    (``_blas.gemm`` then runs NumPy's BLAS: 0.9x the time of the feature-major
    ``recurrent_kernel @ dZ[t].T`` on SciPy's, and no transpose back)."""
    if n_mh == 0:
        gemm(dZ[t, b0:b1], kernel_rt, dh[b0:b1])
        return
    u = dh.shape[1]
    bw = dZ.shape[2] // n_mh
    tmp = np.empty((b1 - b0, u), dh.dtype)
    _zero_rows(dh, b0, b1)
    for s in range(n_mh):
        gemm(np.ascontiguousarray(dZ[t, b0:b1, s * bw:(s + 1) * bw]), kernel_rt[s * bw:(s + 1) * bw], tmp)
        for b in range(b0, b1):
            for j in range(u):
                dh[b, j] += tmp[b - b0, j] * mask_h[b, s, j]


def _grad_blocks(a, n_mask, z, out):
    """out (d, n) = a[s].T @ z[:, block s] per mask set (one product when n_mask <= 1)."""
    if n_mask <= 1:
        outer_dot(a[0].T, z, out)
        return
    bw = z.shape[1] // n_mask
    for s in range(n_mask):
        out[:, s * bw:(s + 1) * bw] = a[s].T @ z[:, s * bw:(s + 1) * bw]


@jit
def _add_masked_input_grad(dxs, m, reverse, dx):
    """dx (B, T, D) += the time-major dxs (T, B, D) times one input mask set m (B, D)."""
    T, B, D = dxs.shape
    for b in range(B):
        for t in range(T):
            src = T - 1 - t if reverse else t
            for k in range(D):
                dx[b, src, k] += dxs[t, b, k] * m[b, k]


@jit
def bias_colsum(dZ2, db):
    """db = the column sums of dZ2 (rows, n): a bias gradient."""
    n, m = dZ2.shape
    for j in range(m):
        db[j] = 0
    for i in range(n):
        for j in range(m):
            db[j] += dZ2[i, j]


def weight_grads(xs, kernel, H, HM, Z, R, mask_x, n_mx, n_mh, use_init, need_dx, reverse,
                 dkernel, drecurrent, dxs, dx):
    """After the loop: dkernel = xs.T @ Z, drecurrent = h_{t-1}.T @ R over the
    steps with a previous state, dx = Z @ kernel.T (times the input masks);
    each per mask set when there are masks per gate (R is Z except for the GRU)."""
    K, T, B, D = xs.shape
    n = Z.shape[2]
    u = H.shape[2]
    Z2 = Z.reshape(T * B, n)
    _grad_blocks(xs.reshape(K, T * B, D), n_mx, Z2, dkernel)
    s0 = 0 if use_init else 1  # without an initial state h_{-1} = 0 adds nothing
    if T > s0:
        R2 = R[s0:T].reshape((T - s0) * B, n)
        if n_mh == 0:
            outer_dot(H[s0:T].reshape((T - s0) * B, u).T, R2, drecurrent)
        else:
            _grad_blocks(HM[:, s0:T].reshape(HM.shape[0], (T - s0) * B, u), n_mh, R2, drecurrent)
    else:
        drecurrent[:, :] = 0
    if not need_dx:
        return
    dxs2 = dxs.reshape(T * B, D)
    if n_mx == 0:
        outer_dot(Z2, kernel.T, dxs2)
        from_time_major(dxs, reverse, dx)
        return
    dx[:, :, :] = 0
    bw = n // n_mx
    for s in range(n_mx):
        np.dot(Z2[:, s * bw:(s + 1) * bw], kernel[:, s * bw:(s + 1) * bw].T, out=dxs2)
        _add_masked_input_grad(dxs, mask_x[:, s], reverse, dx)


# --------------------------------------------------------- launch helpers
def project_inputs(x, reverse, kernel, mask_x, n_mx, xs, G):
    """The prologue of every forward: xs = the (masked) time-major x, G = its projection
    xs @ kernel for every step as one GEMM (with BLAS's own threads)."""
    B, T, D = x.shape
    masked_time_major(x, reverse, mask_x, n_mx, xs)
    project_blocks(xs.reshape(xs.shape[0], T * B, D), n_mx, kernel, G.reshape(T * B, G.shape[2]))


def param_grads(xs, kernel, H, HM, Z, R, mask_x, n_mx, n_mh, use_init, need_dx, reverse,
                dkernel, drecurrent, dbias, dxs, dx):
    """The epilogue of the LSTM and SimpleRNN backward: weight_grads, and dbias = the
    column sums of Z over every step and row."""
    T, B, n = Z.shape
    weight_grads(xs, kernel, H, HM, Z, R, mask_x, n_mx, n_mh, use_init, need_dx, reverse,
                 dkernel, drecurrent, dxs, dx)
    bias_colsum(Z.reshape(T * B, n), dbias)


# Batch blocks of the time loops (module doc, "Threads"); tests monkeypatch both.
MIN_BLOCK_ROWS = 4
# multiply-adds of a loop's recurrent products, T * B * u * (gates * u). Measured at 2
# threads (layer forward + backward, float32, blocks / serial): LSTM 8.4M (B=16, T=32,
# u=64) 1.65, 16.8M (B=32) 0.75, 67M (u=128) 0.61; SimpleRNN 4.2M 1.25, 16.8M 0.66.
MIN_BLOCK_WORK = 1 << 24


def batch_blocks(B, T, u, gates, n_mh):
    """Blocks of rows (one per thread) for a time loop, or 0: the serial loop, whose
    per-step GEMMs use BLAS's own threads.

    Rows never interact inside the loop, so each block runs every step for its rows
    with a one-thread GEMM, and the loop pays one fork/join instead of a threaded
    small GEMM per step. Blocks need more than one thread, at least MIN_BLOCK_ROWS
    rows each (a GEMM of a row or two per step is mostly call overhead) and
    MIN_BLOCK_WORK multiply-adds in the loop's recurrent products (below that the fork
    and join cost what the split saves). Recurrent dropout masks (n_mh > 0) keep the
    serial loop: their per-gate products copy kernel blocks and allocate every step.
    """
    threads = get_num_threads()
    if threads < 2 or n_mh:
        return 0
    nblocks = min(threads, B // MIN_BLOCK_ROWS)
    if nblocks < 2 or T * B * u * gates * u < MIN_BLOCK_WORK:
        return 0
    return nblocks


# ------------------------------------------------------------------- LSTM
@inline
def _lstm_gates(G, H, C, TC, rec, bias, t, act, rec_act, one, b0, b1):
    """One step: gates from projection + recurrence + bias, cell and h update.

    Short loops over one contiguous row each, so that LLVM vectorizes them
    (one long loop touching eight arrays gets no SIMD: too many alias checks).
    """
    u = H.shape[2]
    for b in range(b0, b1):
        g = G[t, b]
        r = rec[b]
        # loops start at 0 with an offset: numba's range(start, stop) loops
        # do not vectorize
        for k in range(4):
            o = k * u
            if k == 2:
                for j in range(u):
                    g[o + j] = ract(act, g[o + j] + r[o + j] + bias[o + j], one)
            else:
                for j in range(u):
                    g[o + j] = ract(rec_act, g[o + j] + r[o + j] + bias[o + j], one)
        cp = C[t, b]
        cn = C[t + 1, b]
        hn = H[t + 1, b]
        tc = TC[t, b]
        for j in range(u):
            c = g[u + j] * cp[j] + g[j] * g[2 * u + j]
            a = ract(act, c, one)
            cn[j] = c
            tc[j] = a
            hn[j] = g[3 * u + j] * a


@inline
def _copy_step(H, t, y, step_mask, has_step_mask, zero_masked, reverse, b0, b1):
    """y[:, t] = H[t + 1]: the batch-major output sequence; a skipped row gets the previous
    output row (zeros at the first step or with zero_masked)."""
    u = y.shape[2]
    for b in range(b0, b1):
        if step_real(step_mask, has_step_mask, b, t, reverse):
            for j in range(u):
                y[b, t, j] = H[t + 1, b, j]
        elif zero_masked or t == 0:
            for j in range(u):
                y[b, t, j] = 0
        else:
            for j in range(u):
                y[b, t, j] = y[b, t - 1, j]


@jit
def _lstm_forward_steps(recurrent_kernel, bias, use_init, act, rec_act, ret_seq, mask_h, n_mh, HM, step_mask,
                        has_step_mask, zero_masked, reverse, G, H, C, TC, rec, y, b0, b1):
    """The time loop of lstm_forward for rows b0..b1 (G holds the input projection)."""
    T = G.shape[0]
    one = G.dtype.type(1)
    std = act == TANH and rec_act == SIGMOID
    kernel_t, hT, recT = _step_workspaces(recurrent_kernel, b1 - b0)
    for t in range(T):
        if t > 0 or use_init:
            recurrent_product(H, t, recurrent_kernel, kernel_t, mask_h, n_mh, HM, b0, b1, hT, recT, rec)
        else:
            _zero_rows(rec, b0, b1)
        if std:  # constant codes: the branches fold and the loops vectorize
            _lstm_gates(G, H, C, TC, rec, bias, t, TANH, SIGMOID, one, b0, b1)
        else:
            _lstm_gates(G, H, C, TC, rec, bias, t, act, rec_act, one, b0, b1)
        if has_step_mask:
            _carry_skipped(H, t, step_mask, reverse, b0, b1)
            _carry_skipped(C, t, step_mask, reverse, b0, b1)
        if ret_seq:
            _copy_step(H, t, y, step_mask, has_step_mask, zero_masked, reverse, b0, b1)


@pjit
def _lstm_forward_blocks(recurrent_kernel, bias, use_init, act, rec_act, ret_seq, mask_h, n_mh, HM, step_mask,
                         has_step_mask, zero_masked, reverse, G, H, C, TC, rec, y, nblocks):
    """_lstm_forward_steps over ``nblocks`` blocks of rows, one per thread."""
    B = rec.shape[0]
    for k in prange(nblocks):
        _lstm_forward_steps(recurrent_kernel, bias, use_init, act, rec_act, ret_seq, mask_h, n_mh, HM, step_mask,
                            has_step_mask, zero_masked, reverse, G, H, C, TC, rec, y,
                            B * k // nblocks, B * (k + 1) // nblocks)


def lstm_forward(x, reverse, kernel, recurrent_kernel, bias, use_init, act, rec_act, ret_seq,
                 mask_x, n_mx, mask_h, n_mh, HM, step_mask, has_step_mask, zero_masked, xs, G, H, C, TC, rec, y):
    """LSTM over all steps (gate order i, f, c, o).

    x (B, T, D) batch-major; xs (T, B, D) workspace; G (T, B, 4u) activated
    gates; H, C (T+1, B, u) with H[0], C[0] the initial state (filled by the
    caller, zeros when there is none; ``use_init`` False skips the first
    recurrent GEMM); TC (T, B, u) activation(c); rec (B, 4u) workspace;
    y (B, T, u) the output sequence when ``ret_seq``; step masks as in the
    module doc.
    """
    project_inputs(x, reverse, kernel, mask_x, n_mx, xs, G)
    B, T = x.shape[0], x.shape[1]
    nblocks = batch_blocks(B, T, H.shape[2], 4, n_mh)
    args = (recurrent_kernel, bias, use_init, act, rec_act, ret_seq, mask_h, n_mh, HM, step_mask, has_step_mask,
            zero_masked, reverse, G, H, C, TC, rec, y)
    if nblocks:
        with kernel_blas_serial():
            _lstm_forward_blocks(*args, nblocks)
    else:
        _lstm_forward_steps(*args, 0, B)


@inline
def _lstm_gates_backward(G, C, TC, dy, dh, dc, dZ, t, has_seq, act, rec_act, one, step_mask, has_step_mask,
                         zero_masked, reverse, carry, b0, b1):
    """Gate gradients of step t into dZ[t]; dc becomes the gradient of c_{t-1}. A skipped
    row: zero gate gradients, dc unchanged, its dh kept in carry (restored after the
    recurrent product's gradient)."""
    u = dh.shape[1]
    for b in range(b0, b1):
        g = G[t, b]
        cp = C[t, b]
        tc = TC[t, b]
        dz = dZ[t, b]
        dhb = dh[b]
        dcb = dc[b]
        if not step_real(step_mask, has_step_mask, b, t, reverse):
            _skipped_output_grad(dy, dhb, b, t, has_seq, step_mask, zero_masked, reverse)
            for j in range(4 * u):
                dz[j] = 0
            for j in range(u):
                carry[b, j] = dhb[j]
            continue
        if has_seq:
            yb = dy[b, t]
            for j in range(u):
                dhb[j] += yb[j]
        for j in range(u):
            a = tc[j]
            o = g[3 * u + j]
            d = dhb[j]
            dz[3 * u + j] = d * a * ract_grad(rec_act, o, one)
            dcb[j] += d * o * ract_grad(act, a, one)
        for j in range(u):
            dct = dcb[j]
            i = g[j]
            f = g[u + j]
            c_hat = g[2 * u + j]
            dz[j] = dct * c_hat * ract_grad(rec_act, i, one)
            dz[u + j] = dct * cp[j] * ract_grad(rec_act, f, one)
            dz[2 * u + j] = dct * i * ract_grad(act, c_hat, one)
            dcb[j] = dct * f


@jit
def _lstm_backward_steps(recurrent_kernel, G, C, TC, dy, has_seq, act, rec_act, mask_h, n_mh, step_mask,
                         has_step_mask, zero_masked, reverse, use_init, dh, dc, dZ, carry, b0, b1):
    """The time loop of lstm_backward for rows b0..b1: dZ, and dh, dc of the initial state."""
    T = G.shape[0]
    one = G.dtype.type(1)
    std = act == TANH and rec_act == SIGMOID
    kernel_rt = np.ascontiguousarray(recurrent_kernel.T)
    for t in range(T - 1, -1, -1):
        if std:
            _lstm_gates_backward(G, C, TC, dy, dh, dc, dZ, t, has_seq, TANH, SIGMOID, one, step_mask, has_step_mask,
                                 zero_masked, reverse, carry, b0, b1)
        else:
            _lstm_gates_backward(G, C, TC, dy, dh, dc, dZ, t, has_seq, act, rec_act, one, step_mask, has_step_mask,
                                 zero_masked, reverse, carry, b0, b1)
        if t > 0 or use_init:
            recurrent_grad(dZ, t, kernel_rt, mask_h, n_mh, b0, b1, dh)
            if has_step_mask:
                _restore_skipped(dh, carry, t, step_mask, reverse, b0, b1)
        else:
            _zero_rows(dh, b0, b1)


@pjit
def _lstm_backward_blocks(recurrent_kernel, G, C, TC, dy, has_seq, act, rec_act, mask_h, n_mh, step_mask,
                          has_step_mask, zero_masked, reverse, use_init, dh, dc, dZ, carry, nblocks):
    """_lstm_backward_steps over ``nblocks`` blocks of rows, one per thread."""
    B = dh.shape[0]
    for k in prange(nblocks):
        _lstm_backward_steps(recurrent_kernel, G, C, TC, dy, has_seq, act, rec_act, mask_h, n_mh, step_mask,
                             has_step_mask, zero_masked, reverse, use_init, dh, dc, dZ, carry,
                             B * k // nblocks, B * (k + 1) // nblocks)


def lstm_backward(xs, reverse, kernel, recurrent_kernel, G, H, C, TC, dy, has_seq, act, rec_act,
                  mask_x, n_mx, mask_h, n_mh, HM, step_mask, has_step_mask, zero_masked, use_init, need_dx, dh, dc, dZ,
                  dkernel, drecurrent, dbias, dxs, dx):
    """Backward through time of lstm_forward.

    dh, dc (B, u): on entry the gradients reaching the last step (last output
    and final states); on exit the gradients of the initial state. dy
    (B, T, u) the output-sequence gradient when ``has_seq``. Param gradients
    are written into dkernel, drecurrent, dbias; dx (B, T, D) when need_dx.
    """
    T, B = xs.shape[1], xs.shape[2]
    u = dh.shape[1]
    carry = np.empty((B if has_step_mask else 1, u), xs.dtype)  # a skipped row's dh across the step
    nblocks = batch_blocks(B, T, u, 4, n_mh)
    args = (recurrent_kernel, G, C, TC, dy, has_seq, act, rec_act, mask_h, n_mh, step_mask, has_step_mask,
            zero_masked, reverse, use_init, dh, dc, dZ, carry)
    if nblocks:
        with kernel_blas_serial():
            _lstm_backward_blocks(*args, nblocks)
    else:
        _lstm_backward_steps(*args, 0, B)
    param_grads(xs, kernel, H, HM, dZ, dZ, mask_x, n_mx, n_mh, use_init, need_dx, reverse,
                dkernel, drecurrent, dbias, dxs, dx)


# -------------------------------------------------------------------- GRU
@inline
def _gru_gates(G, H, RH, rec, b_in, b_rec, t, act, rec_act, one, b0, b1):
    """One GRU step (reset_after): z, r from projection + recurrence, candidate
    act(x_h + r * (h_{t-1} U_h + b_rec_h)), h = z * h_{t-1} + (1 - z) * hh."""
    u = H.shape[2]
    for b in range(b0, b1):
        g = G[t, b]
        r_ = rec[b]
        for j in range(2 * u):
            g[j] = ract(rec_act, g[j] + b_in[j] + b_rec[j] + r_[j], one)
        rh_ = RH[t, b]
        o = 2 * u
        for j in range(u):
            rh = r_[o + j] + b_rec[o + j]
            rh_[j] = rh
            g[o + j] = ract(act, g[o + j] + b_in[o + j] + g[u + j] * rh, one)
        hp = H[t, b]
        hn = H[t + 1, b]
        for j in range(u):
            z = g[j]
            hn[j] = z * hp[j] + (one - z) * g[o + j]


@inline
def _gru_zr_before(G, H, RH, HM, n_mh, rec, b_in, t, has_prev, rec_act, one, b0, b1):
    """reset_after=False, first half of step t: z, r, and RH[t] = r * h_{t-1} (the
    candidate block's masked h_{t-1} with recurrent masks; 0 without a previous state)."""
    u = H.shape[2]
    for b in range(b0, b1):
        g = G[t, b]
        r_ = rec[b]
        for j in range(2 * u):
            g[j] = ract(rec_act, g[j] + b_in[j] + r_[j], one)
        rh = RH[t, b]
        if not has_prev:
            for j in range(u):
                rh[j] = 0
        elif n_mh > 0:
            hm = HM[2, t, b]
            for j in range(u):
                rh[j] = g[u + j] * hm[j]
        else:
            hp = H[t, b]
            for j in range(u):
                rh[j] = g[u + j] * hp[j]


@inline
def _gru_h_before(G, H, rech, b_in, t, act, one, b0, b1):
    """reset_after=False, second half: candidate act(x_h + b_h + (r * h_{t-1}) U_h), h update."""
    u = H.shape[2]
    o = 2 * u
    for b in range(b0, b1):
        g = G[t, b]
        rc = rech[b]
        for j in range(u):
            g[o + j] = ract(act, g[o + j] + b_in[o + j] + rc[j], one)
        hp = H[t, b]
        hn = H[t + 1, b]
        for j in range(u):
            z = g[j]
            hn[j] = z * hp[j] + (one - z) * g[o + j]


@jit
def _gru_forward_steps(recurrent_kernel, u_h, bias, use_init, act, rec_act, reset_after, ret_seq, mask_h, n_mh, HM,
                       step_mask, has_step_mask, zero_masked, reverse, G, H, RH, rec, rech, y, b0, b1):
    """The time loop of gru_forward for rows b0..b1 (G holds the input projection).
    Without reset_after: u_h the candidate block of recurrent_kernel (C-contiguous) and
    rech (B, u) its product; with it both are unused."""
    T = G.shape[0]
    one = G.dtype.type(1)
    b_in = bias[0]
    b_rec = bias[bias.shape[0] - 1]
    std = act == TANH and rec_act == SIGMOID
    kernel_t, hT, recT = _step_workspaces(recurrent_kernel, b1 - b0)
    for t in range(T):
        has_prev = t > 0 or use_init
        if has_prev:
            recurrent_product(H, t, recurrent_kernel, kernel_t, mask_h, n_mh, HM, b0, b1, hT, recT, rec)
        else:
            _zero_rows(rec, b0, b1)
        if reset_after:
            if std:
                _gru_gates(G, H, RH, rec, b_in, b_rec, t, TANH, SIGMOID, one, b0, b1)
            else:
                _gru_gates(G, H, RH, rec, b_in, b_rec, t, act, rec_act, one, b0, b1)
        else:
            if std:
                _gru_zr_before(G, H, RH, HM, n_mh, rec, b_in, t, has_prev, SIGMOID, one, b0, b1)
            else:
                _gru_zr_before(G, H, RH, HM, n_mh, rec, b_in, t, has_prev, rec_act, one, b0, b1)
            gemm(RH[t, b0:b1], u_h, rech[b0:b1])
            if std:
                _gru_h_before(G, H, rech, b_in, t, TANH, one, b0, b1)
            else:
                _gru_h_before(G, H, rech, b_in, t, act, one, b0, b1)
        if has_step_mask:
            _carry_skipped(H, t, step_mask, reverse, b0, b1)
        if ret_seq:
            _copy_step(H, t, y, step_mask, has_step_mask, zero_masked, reverse, b0, b1)


@pjit
def _gru_forward_blocks(recurrent_kernel, u_h, bias, use_init, act, rec_act, reset_after, ret_seq, mask_h, n_mh, HM,
                        step_mask, has_step_mask, zero_masked, reverse, G, H, RH, rec, rech, y, nblocks):
    """_gru_forward_steps over ``nblocks`` blocks of rows, one per thread."""
    B = rec.shape[0]
    for k in prange(nblocks):
        _gru_forward_steps(recurrent_kernel, u_h, bias, use_init, act, rec_act, reset_after, ret_seq, mask_h, n_mh,
                           HM, step_mask, has_step_mask, zero_masked, reverse, G, H, RH, rec, rech, y,
                           B * k // nblocks, B * (k + 1) // nblocks)


def gru_forward(x, reverse, kernel, recurrent_kernel, bias, use_init, act, rec_act, reset_after, ret_seq,
                mask_x, n_mx, mask_h, n_mh, HM, step_mask, has_step_mask, zero_masked, xs, G, H, RH, rec, y):
    """GRU (gate order z, r, h) over all steps.

    reset_after (Keras 3 default): bias (2, 3u), row 0 input bias, row 1
    recurrent bias; RH (T, B, u) the recurrent candidate term
    h_{t-1} U_h + b_rec_h that the reset gate multiplies. reset_after=False
    (Keras 2 / TF1): bias (1, 3u) input bias only; the candidate is
    act(x_h + b_h + (r * h_{t-1}) U_h) with RH[t] = r * h_{t-1}. G (T, B, 3u)
    holds the activated z, r, hh. Other arguments as in lstm_forward.
    """
    project_inputs(x, reverse, kernel, mask_x, n_mx, xs, G)
    B, T = x.shape[0], x.shape[1]
    u = H.shape[2]
    if reset_after:
        u_h, rech = recurrent_kernel, rec  # unused
    else:
        u_h = np.ascontiguousarray(recurrent_kernel[:, 2 * u:])
        rech = np.empty((B, u), x.dtype)
    nblocks = batch_blocks(B, T, u, 3, n_mh)
    args = (recurrent_kernel, u_h, bias, use_init, act, rec_act, reset_after, ret_seq, mask_h, n_mh, HM, step_mask,
            has_step_mask, zero_masked, reverse, G, H, RH, rec, rech, y)
    if nblocks:
        with kernel_blas_serial():
            _gru_forward_blocks(*args, nblocks)
    else:
        _gru_forward_steps(*args, 0, B)


@inline
def _skipped_gru_row(dZ, dR, dhb, dhzb, t, b):
    """GRU row b skipped at step t: zero gradients of both products; the whole state gradient
    takes the direct path (dhz) to h_{t-1}."""
    for j in range(dZ.shape[2]):
        dZ[t, b, j] = 0
        dR[t, b, j] = 0
    for j in range(dhb.shape[0]):
        dhzb[j] = dhb[j]


@inline
def _gru_gates_backward(G, H, RH, dy, dh, dhz, dZ, dR, t, has_seq, act, rec_act, one, step_mask, has_step_mask,
                        zero_masked, reverse, b0, b1):
    u = dh.shape[1]
    o = 2 * u
    for b in range(b0, b1):
        g = G[t, b]
        dhb = dh[b]
        dhzb = dhz[b]
        for j in range(u):
            dhb[j] += dhzb[j]
        if not step_real(step_mask, has_step_mask, b, t, reverse):
            _skipped_output_grad(dy, dhb, b, t, has_seq, step_mask, zero_masked, reverse)
            _skipped_gru_row(dZ, dR, dhb, dhzb, t, b)
            continue
        if has_seq:
            yb = dy[b, t]
            for j in range(u):
                dhb[j] += yb[j]
        hp = H[t, b]
        dz = dZ[t, b]
        dr = dR[t, b]
        for j in range(u):
            d = dhb[j]
            z = g[j]
            hh = g[o + j]
            dpz = d * (hp[j] - hh) * ract_grad(rec_act, z, one)
            dph = d * (one - z) * ract_grad(act, hh, one)
            dz[j] = dpz
            dz[o + j] = dph
            dr[j] = dpz
            dr[o + j] = dph * g[u + j]
            dhzb[j] = d * z
        rh_ = RH[t, b]
        for j in range(u):
            dpr = dz[o + j] * rh_[j] * ract_grad(rec_act, g[u + j], one)
            dz[u + j] = dpr
            dr[u + j] = dpr


@inline
def _gru_h_before_backward(G, H, dy, dh, dhz, dZ, dR, dph, t, has_seq, act, rec_act, one, step_mask, has_step_mask,
                           zero_masked, reverse, b0, b1):
    """reset_after=False, first half of step t backward: the z and candidate gradients
    (dph (B, u) also apart, for the candidate product's gradient); dhz = d * z. A skipped
    row's dph is 0, so the second half adds nothing to it."""
    u = dh.shape[1]
    o = 2 * u
    for b in range(b0, b1):
        g = G[t, b]
        dhb = dh[b]
        dhzb = dhz[b]
        for j in range(u):
            dhb[j] += dhzb[j]
        if not step_real(step_mask, has_step_mask, b, t, reverse):
            _skipped_output_grad(dy, dhb, b, t, has_seq, step_mask, zero_masked, reverse)
            _skipped_gru_row(dZ, dR, dhb, dhzb, t, b)
            dpb = dph[b]
            for j in range(u):
                dpb[j] = 0
            continue
        if has_seq:
            yb = dy[b, t]
            for j in range(u):
                dhb[j] += yb[j]
        hp = H[t, b]
        dz = dZ[t, b]
        dr = dR[t, b]
        dp = dph[b]
        for j in range(u):
            d = dhb[j]
            z = g[j]
            hh = g[o + j]
            dpz = d * (hp[j] - hh) * ract_grad(rec_act, z, one)
            dpc = d * (one - z) * ract_grad(act, hh, one)
            dz[j] = dpz
            dz[o + j] = dpc
            dr[j] = dpz
            dr[o + j] = 0  # the candidate's product is (r * h_{t-1}) U_h: its gradient goes through drh
            dp[j] = dpc
            dhzb[j] = d * z


@inline
def _gru_r_before_backward(G, H, HM, n_mh, mask_h, drh, dhz, dZ, dR, t, has_prev, rec_act, one, b0, b1):
    """reset_after=False, second half: drh = d(r * h_{t-1}); the reset gate's gradient and
    the path into h_{t-1} (through the candidate block's mask) added to dhz."""
    u = drh.shape[1]
    for b in range(b0, b1):
        g = G[t, b]
        dz = dZ[t, b]
        dr = dR[t, b]
        d_ = drh[b]
        dhzb = dhz[b]
        for j in range(u):
            r = g[u + j]
            if not has_prev:  # h_{-1} = 0: r has no effect
                hm = one - one
                m = one
            elif n_mh > 0:
                hm = HM[2, t, b, j]
                m = mask_h[b, 2, j]
            else:
                hm = H[t, b, j]
                m = one
            dpr = d_[j] * hm * ract_grad(rec_act, r, one)
            dz[u + j] = dpr
            dr[u + j] = dpr
            dhzb[j] += d_[j] * r * m


@jit
def _gru_backward_steps(recurrent_kernel, u_h, G, H, RH, dy, has_seq, act, rec_act, reset_after, mask_h, n_mh, HM,
                        step_mask, has_step_mask, zero_masked, reverse, use_init, dh, dhz, dZ, dR, dph, drh, b0, b1):
    """The time loop of gru_backward for rows b0..b1: dZ, dR, and dh of the initial state.
    Without reset_after: u_h as in _gru_forward_steps, dph and drh (B, u) workspaces."""
    T = G.shape[0]
    one = G.dtype.type(1)
    std = act == TANH and rec_act == SIGMOID
    _zero_rows(dhz, b0, b1)
    kernel_rt = np.ascontiguousarray(recurrent_kernel.T)
    for t in range(T - 1, -1, -1):
        if reset_after:
            if std:
                _gru_gates_backward(G, H, RH, dy, dh, dhz, dZ, dR, t, has_seq, TANH, SIGMOID, one, step_mask,
                                    has_step_mask, zero_masked, reverse, b0, b1)
            else:
                _gru_gates_backward(G, H, RH, dy, dh, dhz, dZ, dR, t, has_seq, act, rec_act, one, step_mask,
                                    has_step_mask, zero_masked, reverse, b0, b1)
        else:
            if std:
                _gru_h_before_backward(G, H, dy, dh, dhz, dZ, dR, dph, t, has_seq, TANH, SIGMOID, one, step_mask,
                                       has_step_mask, zero_masked, reverse, b0, b1)
            else:
                _gru_h_before_backward(G, H, dy, dh, dhz, dZ, dR, dph, t, has_seq, act, rec_act, one, step_mask,
                                       has_step_mask, zero_masked, reverse, b0, b1)
            gemm(dph[b0:b1], u_h.T, drh[b0:b1])
            _gru_r_before_backward(G, H, HM, n_mh, mask_h, drh, dhz, dZ, dR, t, t > 0 or use_init, rec_act, one,
                                   b0, b1)
        # dh_{t-1} = dhz (direct path through z) + dR_t @ U.T; dhz is added at
        # the start of the next step's pass
        if t > 0 or use_init:
            recurrent_grad(dR, t, kernel_rt, mask_h, n_mh, b0, b1, dh)
        else:
            _zero_rows(dh, b0, b1)
    for b in range(b0, b1):
        for j in range(dh.shape[1]):
            dh[b, j] += dhz[b, j]


@pjit
def _gru_backward_blocks(recurrent_kernel, u_h, G, H, RH, dy, has_seq, act, rec_act, reset_after, mask_h, n_mh, HM,
                         step_mask, has_step_mask, zero_masked, reverse, use_init, dh, dhz, dZ, dR, dph, drh, nblocks):
    """_gru_backward_steps over ``nblocks`` blocks of rows, one per thread."""
    B = dh.shape[0]
    for k in prange(nblocks):
        _gru_backward_steps(recurrent_kernel, u_h, G, H, RH, dy, has_seq, act, rec_act, reset_after, mask_h, n_mh,
                            HM, step_mask, has_step_mask, zero_masked, reverse, use_init, dh, dhz, dZ, dR, dph, drh,
                            B * k // nblocks, B * (k + 1) // nblocks)


def _gru_param_grads(xs, kernel, H, HM, RH, dZ, dR, mask_x, n_mx, n_mh, use_init, need_dx, reverse, reset_after,
                     dkernel, drecurrent, dbias, dxs, dx):
    """After gru_backward's loop: weight_grads, the bias gradients and, without
    reset_after, the candidate columns of drecurrent (RH.T @ the candidate gradients)."""
    T, B, n3 = dZ.shape
    u = n3 // 3
    weight_grads(xs, kernel, H, HM, dZ, dR, mask_x, n_mx, n_mh, use_init, need_dx, reverse,
                 dkernel, drecurrent, dxs, dx)
    bias_colsum(dZ.reshape(T * B, n3), dbias[0])
    if reset_after:
        bias_colsum(dR.reshape(T * B, n3), dbias[1])
    else:
        drecurrent[:, 2 * u:] = RH.reshape(T * B, u).T @ dZ.reshape(T * B, n3)[:, 2 * u:]


def gru_backward(xs, reverse, kernel, recurrent_kernel, G, H, RH, dy, has_seq, act, rec_act, reset_after,
                 mask_x, n_mx, mask_h, n_mh, HM, step_mask, has_step_mask, zero_masked, use_init, need_dx, dh, dhz, dZ,
                 dR, dkernel, drecurrent, dbias, dxs, dx):
    """Backward through time of gru_forward.

    dh (B, u): on entry the gradient reaching the last step, on exit that of
    the initial state; dhz (B, u) workspace. dZ (T, B, 3u) gradients of the
    input projection, dR (T, B, 3u) of the recurrent product (they differ in
    the candidate block by the reset gate). dbias (2, 3u), or (1, 3u) without
    reset_after (then dR's candidate block is 0 and drecurrent's candidate
    columns are RH.T @ the candidate gradients). A skipped row's state gradient
    passes the step through dhz (its dR row is 0).
    """
    T, B = xs.shape[1], xs.shape[2]
    u = dh.shape[1]
    if reset_after:
        u_h, dph, drh = recurrent_kernel, dh, dh  # unused
    else:
        u_h = np.ascontiguousarray(recurrent_kernel[:, 2 * u:])
        dph = np.empty((B, u), xs.dtype)
        drh = np.empty((B, u), xs.dtype)
    nblocks = batch_blocks(B, T, u, 3, n_mh)
    args = (recurrent_kernel, u_h, G, H, RH, dy, has_seq, act, rec_act, reset_after, mask_h, n_mh, HM, step_mask,
            has_step_mask, zero_masked, reverse, use_init, dh, dhz, dZ, dR, dph, drh)
    if nblocks:
        with kernel_blas_serial():
            _gru_backward_blocks(*args, nblocks)
    else:
        _gru_backward_steps(*args, 0, B)
    _gru_param_grads(xs, kernel, H, HM, RH, dZ, dR, mask_x, n_mx, n_mh, use_init, need_dx, reverse, reset_after,
                     dkernel, drecurrent, dbias, dxs, dx)


# -------------------------------------------------------------- SimpleRNN
@inline
def _rnn_step(P, H, rec, bias, t, act, one, b0, b1):
    u = H.shape[2]
    for b in range(b0, b1):
        p = P[t, b]
        r = rec[b]
        hn = H[t + 1, b]
        for j in range(u):
            hn[j] = ract(act, p[j] + bias[j] + r[j], one)


@jit
def _rnn_forward_steps(recurrent_kernel, bias, use_init, act, ret_seq, mask_h, n_mh, HM, step_mask, has_step_mask,
                       zero_masked, reverse, P, H, rec, y, b0, b1):
    """The time loop of simple_rnn_forward for rows b0..b1 (P holds the input projection)."""
    T = P.shape[0]
    one = P.dtype.type(1)
    kernel_t, hT, recT = _step_workspaces(recurrent_kernel, b1 - b0)
    for t in range(T):
        if t > 0 or use_init:
            recurrent_product(H, t, recurrent_kernel, kernel_t, mask_h, n_mh, HM, b0, b1, hT, recT, rec)
        else:
            _zero_rows(rec, b0, b1)
        if act == TANH:
            _rnn_step(P, H, rec, bias, t, TANH, one, b0, b1)
        else:
            _rnn_step(P, H, rec, bias, t, act, one, b0, b1)
        if has_step_mask:
            _carry_skipped(H, t, step_mask, reverse, b0, b1)
        if ret_seq:
            _copy_step(H, t, y, step_mask, has_step_mask, zero_masked, reverse, b0, b1)


@pjit
def _rnn_forward_blocks(recurrent_kernel, bias, use_init, act, ret_seq, mask_h, n_mh, HM, step_mask, has_step_mask,
                        zero_masked, reverse, P, H, rec, y, nblocks):
    """_rnn_forward_steps over ``nblocks`` blocks of rows, one per thread."""
    B = rec.shape[0]
    for k in prange(nblocks):
        _rnn_forward_steps(recurrent_kernel, bias, use_init, act, ret_seq, mask_h, n_mh, HM, step_mask,
                           has_step_mask, zero_masked, reverse, P, H, rec, y,
                           B * k // nblocks, B * (k + 1) // nblocks)


def simple_rnn_forward(x, reverse, kernel, recurrent_kernel, bias, use_init, act, ret_seq,
                       mask_x, n_mx, mask_h, n_mh, HM, step_mask, has_step_mask, zero_masked, xs, P, H, rec, y):
    """h_t = act(x_t kernel + h_{t-1} recurrent_kernel + bias) over all steps.

    P (T, B, u) the input projection; H (T+1, B, u) with H[0] the initial state.
    """
    project_inputs(x, reverse, kernel, mask_x, n_mx, xs, P)
    B, T = x.shape[0], x.shape[1]
    nblocks = batch_blocks(B, T, H.shape[2], 1, n_mh)
    args = (recurrent_kernel, bias, use_init, act, ret_seq, mask_h, n_mh, HM, step_mask, has_step_mask,
            zero_masked, reverse, P, H, rec, y)
    if nblocks:
        with kernel_blas_serial():
            _rnn_forward_blocks(*args, nblocks)
    else:
        _rnn_forward_steps(*args, 0, B)


@inline
def _rnn_step_backward(H, dy, dh, dZ, t, has_seq, act, one, step_mask, has_step_mask, zero_masked, reverse, carry,
                       b0, b1):
    u = dh.shape[1]
    for b in range(b0, b1):
        h = H[t + 1, b]
        dz = dZ[t, b]
        dhb = dh[b]
        if not step_real(step_mask, has_step_mask, b, t, reverse):
            _skipped_output_grad(dy, dhb, b, t, has_seq, step_mask, zero_masked, reverse)
            for j in range(u):
                dz[j] = 0
                carry[b, j] = dhb[j]
            continue
        if has_seq:
            yb = dy[b, t]
            for j in range(u):
                dhb[j] += yb[j]
        for j in range(u):
            dz[j] = dhb[j] * ract_grad(act, h[j], one)


@jit
def _rnn_backward_steps(recurrent_kernel, H, dy, has_seq, act, mask_h, n_mh, step_mask, has_step_mask, zero_masked,
                        reverse, use_init, dh, dZ, carry, b0, b1):
    """The time loop of simple_rnn_backward for rows b0..b1: dZ, and dh of the initial state."""
    T = dZ.shape[0]
    one = dZ.dtype.type(1)
    kernel_rt = np.ascontiguousarray(recurrent_kernel.T)
    for t in range(T - 1, -1, -1):
        if act == TANH:
            _rnn_step_backward(H, dy, dh, dZ, t, has_seq, TANH, one, step_mask, has_step_mask, zero_masked, reverse,
                               carry, b0, b1)
        else:
            _rnn_step_backward(H, dy, dh, dZ, t, has_seq, act, one, step_mask, has_step_mask, zero_masked, reverse,
                               carry, b0, b1)
        if t > 0 or use_init:
            recurrent_grad(dZ, t, kernel_rt, mask_h, n_mh, b0, b1, dh)
            if has_step_mask:
                _restore_skipped(dh, carry, t, step_mask, reverse, b0, b1)
        else:
            _zero_rows(dh, b0, b1)


@pjit
def _rnn_backward_blocks(recurrent_kernel, H, dy, has_seq, act, mask_h, n_mh, step_mask, has_step_mask, zero_masked,
                         reverse, use_init, dh, dZ, carry, nblocks):
    """_rnn_backward_steps over ``nblocks`` blocks of rows, one per thread."""
    B = dh.shape[0]
    for k in prange(nblocks):
        _rnn_backward_steps(recurrent_kernel, H, dy, has_seq, act, mask_h, n_mh, step_mask, has_step_mask,
                            zero_masked, reverse, use_init, dh, dZ, carry, B * k // nblocks, B * (k + 1) // nblocks)


def simple_rnn_backward(xs, reverse, kernel, recurrent_kernel, H, dy, has_seq, act, mask_x, n_mx, mask_h, n_mh,
                        HM, step_mask, has_step_mask, zero_masked, use_init,
                        need_dx, dh, dZ, dkernel, drecurrent, dbias, dxs, dx):
    """Backward through time of simple_rnn_forward (arguments as lstm_backward)."""
    T, B = xs.shape[1], xs.shape[2]
    u = dh.shape[1]
    carry = np.empty((B if has_step_mask else 1, u), xs.dtype)  # a skipped row's dh across the step
    nblocks = batch_blocks(B, T, u, 1, n_mh)
    args = (recurrent_kernel, H, dy, has_seq, act, mask_h, n_mh, step_mask, has_step_mask, zero_masked, reverse,
            use_init, dh, dZ, carry)
    if nblocks:
        with kernel_blas_serial():
            _rnn_backward_blocks(*args, nblocks)
    else:
        _rnn_backward_steps(*args, 0, B)
    param_grads(xs, kernel, H, HM, dZ, dZ, mask_x, n_mx, n_mh, use_init, need_dx, reverse,
                dkernel, drecurrent, dbias, dxs, dx)
