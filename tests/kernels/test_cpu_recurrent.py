"""CPU recurrent kernels (nbmodel/kernels/cpu/recurrent.py) called directly: the SimpleRNN,
LSTM and GRU forward and backward kernels stay in float32 for float32 inputs, with and without
dropout and step masks. The entry points are Python launchers: every compiled kernel they
call (prologue, time loop serial and in batch blocks, epilogue) is checked with the
arguments it receives."""
import re

import numba
import numpy as np
import pytest

from nbmodel.kernels.cpu import recurrent as k
from nbmodel.testing import float64_ops

B, T, D, U = 2, 3, 3, 4
# the compiled kernels that the launchers call (their GEMMs outside the time loops run in NumPy)
LAUNCHED = re.compile(r"_(lstm|gru|rnn)_(forward|backward)_(steps|blocks)|masked_time_major|from_time_major"
                      r"|bias_colsum|_add_masked_input_grad")


def _launched_kernels(launcher, args):
    """(name, kernel, args) of every compiled kernel ``launcher(*args)`` calls, once with the
    serial time loop and once with batch blocks (recorded, not run)."""
    calls = []
    names = [n for n in dir(k) if LAUNCHED.fullmatch(n)]
    for blocks in (False, True):
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(k, "get_num_threads", lambda: 2)
            mp.setattr(k, "MIN_BLOCK_ROWS", 1)
            mp.setattr(k, "MIN_BLOCK_WORK", 0 if blocks else 1 << 62)
            for n in names:
                mp.setattr(k, n, lambda *a, _n=n, _f=getattr(k, n): calls.append((_n, _f, a)))
            with np.errstate(all="ignore"):  # NumPy's GEMMs then read workspaces no kernel wrote
                launcher(*args)
    return calls


CHECKED = set()
SEEN = set()


def f64_ops(launcher, *args):
    """float64_ops of every kernel the launcher calls (the time loop serial and, without
    recurrent masks, in blocks)."""
    lines = []
    for name, fn, a in _launched_kernels(launcher, args):
        key = (name, tuple(numba.typeof(v) for v in a))
        if key not in SEEN:  # each signature once: float64_ops compiles without the cache
            SEEN.add(key)
            lines += float64_ops(fn, *a)
        CHECKED.add(name)
    return lines


def test_lstm_and_gru_kernels_stay_float32():
    from nbmodel import activations as codes

    f = np.float32
    rng = np.random.default_rng(0)
    x = rng.standard_normal((B, T, D)).astype(f)
    W = rng.standard_normal((D, 4 * U)).astype(f)
    R = rng.standard_normal((U, 4 * U)).astype(f)
    b = np.zeros(4 * U, f)
    xs = np.empty((1, T, B, D), f)
    # dropout off and on (one input mask; one input and one recurrent mask per gate)
    nm, HM0 = np.zeros((1, 1, 1), f), np.zeros((1, 1, 1, 1), f)
    mx, mh, HM = np.ones((B, 4, D), f), np.ones((B, 4, U), f), np.empty((4, T, B, U), f)
    xs4 = np.empty((4, T, B, D), f)
    G = np.empty((T, B, 4 * U), f)
    H = np.zeros((T + 1, B, U), f)
    C = np.zeros((T + 1, B, U), f)
    TC = np.empty((T, B, U), f)
    rec = np.empty((B, 4 * U), f)
    y = np.empty((B, T, U), f)
    tanh, sig = codes.TANH, codes.SIGMOID
    # step masks: none (the (1, 1) dummy) and one with skipped steps (zero outputs or carried)
    ns = (np.zeros((1, 1), f), False, False)
    sm = (np.array([[1, 0, 1], [0, 1, 1]], f), True, False)
    sz = (sm[0], True, True)
    assert f64_ops(k.lstm_forward, x, False, W, R, b, False, tanh, sig, True, nm, 0, nm, 0, HM0, *ns, xs, G, H,
                       C, TC, rec, y) == []
    assert f64_ops(k.lstm_forward, x, False, W, R, b, True, tanh, sig, True, mx, 4, mh, 4, HM, *sm, xs4, G, H, C,
                       TC, rec, y) == []
    dh = np.ones((B, U), f)
    dc = np.zeros((B, U), f)
    dZ = np.empty_like(G)
    dxs = np.empty((T, B, D), f)
    assert f64_ops(k.lstm_backward, xs, False, W, R, G, H, C, TC, y, True, tanh, sig, nm, 0, nm, 0, HM0, *ns,
                       False, True, dh, dc, dZ, np.empty_like(W), np.empty_like(R), np.empty_like(b), dxs,
                       np.empty_like(x)) == []
    assert f64_ops(k.lstm_backward, xs4, False, W, R, G, H, C, TC, y, True, tanh, sig, mx, 4, mh, 4, HM, *sm,
                       True, True, dh, dc, dZ, np.empty_like(W), np.empty_like(R), np.empty_like(b), dxs,
                       np.empty_like(x)) == []
    W3, R3, b3 = W[:, :3 * U].copy(), R[:, :3 * U].copy(), np.zeros((2, 3 * U), f)
    G3 = np.empty((T, B, 3 * U), f)
    RH = np.empty((T, B, U), f)
    rec3 = np.empty((B, 3 * U), f)
    mx1 = mx[:, :1].copy()
    assert f64_ops(k.gru_forward, x, True, W3, R3, b3, False, tanh, sig, True, True, mx1, 1, nm, 0, HM0, *sz,
                       xs, G3, H, RH, rec3, y) == []
    assert f64_ops(k.gru_backward, xs, True, W3, R3, G3, H, RH, y, True, tanh, sig, True, mx1, 1, nm, 0, HM0,
                       *sz, True, True, dh, np.empty_like(dh), np.empty_like(G3), np.empty_like(G3),
                       np.empty_like(W3), np.empty_like(R3), np.empty_like(b3), dxs, np.empty_like(x)) == []
    # reset_after=False (bias (1, 3u)) with per-gate masks
    m3, mh3, HM3, b1 = np.ones((B, 3, D), f), np.ones((B, 3, U), f), np.empty((3, T, B, U), f), np.zeros((1, 3 * U), f)
    xs3 = np.empty((3, T, B, D), f)
    assert f64_ops(k.gru_forward, x, True, W3, R3, b1, True, tanh, sig, False, True, m3, 3, mh3, 3, HM3, *sm,
                       xs3, G3, H, RH, rec3, y) == []
    assert f64_ops(k.gru_backward, xs3, True, W3, R3, G3, H, RH, y, True, tanh, sig, False, m3, 3, mh3, 3, HM3,
                       *sm, True, True, dh, np.empty_like(dh), np.empty_like(G3), np.empty_like(G3),
                       np.empty_like(W3), np.empty_like(R3), np.empty_like(b1), dxs, np.empty_like(x)) == []
    # SimpleRNN
    W1, R1, bu = W[:, :U].copy(), R[:, :U].copy(), np.zeros(U, f)
    P = np.empty((T, B, U), f)
    rec1 = np.empty((B, U), f)
    for s_args in (ns, sm):
        assert f64_ops(k.simple_rnn_forward, x, False, W1, R1, bu, True, tanh, True, nm, 0, nm, 0, HM0, *s_args,
                           xs, P, H, rec1, y) == []
        assert f64_ops(k.simple_rnn_backward, xs, False, W1, R1, H, y, True, tanh, nm, 0, nm, 0, HM0, *s_args,
                           True, True, dh, np.empty_like(P), np.empty_like(W1), np.empty_like(R1), np.empty_like(bu),
                           dxs, np.empty_like(x)) == []
    launched = {n for n in dir(k) if LAUNCHED.fullmatch(n)}
    assert len(launched) == 16 and launched <= CHECKED
