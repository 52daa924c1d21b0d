"""The batch-block time loops of the CPU recurrent kernels (nbmodel/kernels/cpu/recurrent.py,
module doc "Threads") against the serial loop: SimpleRNN, LSTM and GRU (reset_after True and
False) layers run forward and backward once with the blocks forced on tiny shapes (2 or 3
blocks, uneven ones included) and once with them off; outputs, final states and every
gradient must agree, with step masks, input dropout, go_backwards and an initial state.
Each test also asserts which path ran, so that it cannot pass without the blocks."""
import numpy as np
import pytest

import nbmodel as nb
from nbmodel import layers
from nbmodel.config import get_num_threads
from nbmodel.kernels.cpu import recurrent as cpu

T, D, U = 5, 3, 4
TOL = {"float32": {"rtol": 1e-5, "atol": 1e-6}, "float64": {"rtol": 1e-12, "atol": 1e-12}}
BLOCKS = ("_lstm_forward_blocks", "_lstm_backward_blocks", "_gru_forward_blocks", "_gru_backward_blocks",
          "_rnn_forward_blocks", "_rnn_backward_blocks")
KINDS = {"SimpleRNN": (layers.SimpleRNN, {}), "LSTM": (layers.LSTM, {}),
         "GRU": (layers.GRU, {"reset_after": True}), "GRU-reset-before": (layers.GRU, {"reset_after": False})}


@pytest.fixture
def counted(monkeypatch):
    """Counts the calls of every blocks function (the launchers look them up at call time)."""
    calls = dict.fromkeys(BLOCKS, 0)
    for name in BLOCKS:
        def wrapper(*args, _name=name, _fn=getattr(cpu, name)):
            calls[_name] += 1
            return _fn(*args)
        monkeypatch.setattr(cpu, name, wrapper)
    before = get_num_threads()
    yield calls
    nb.set_num_threads(before)


def _step_mask(B):
    """Leading, trailing and interior skipped steps, a row without a real step, full rows."""
    m = np.ones((B, T), bool)
    m[0, :2] = False
    m[1, -2:] = False
    m[2, 2] = False
    m[3] = False
    m[4, 1] = m[4, 3] = False
    return m


def _run(kind, dtype, B, seq, backwards, init, masked, dropout, recurrent_dropout=0.0, return_state=False,
         zero_output_for_mask=False):
    """One forward (training) and backward of a fresh layer with fixed weights, inputs, dropout
    draws (the layer's seed) and output gradients; returns every array to compare."""
    cls, kw = KINDS[kind]
    layer = cls(U, return_sequences=seq, go_backwards=backwards, return_state=return_state, dropout=dropout,
                recurrent_dropout=recurrent_dropout, zero_output_for_mask=zero_output_for_mask, dtype=dtype,
                seed=3, **kw)
    layer.build((None, T, D))
    r = np.random.default_rng(1)
    layer.set_weights([0.5 * r.standard_normal(w.shape) for w in layer.get_weights()])
    x = r.standard_normal((B, T, D)).astype(dtype)
    n_states = 2 if kind == "LSTM" else 1
    states = [r.standard_normal((B, U)).astype(dtype) for _ in range(n_states)] if init else None
    kwargs = {"initial_state": states} if init else {}
    if masked:
        kwargs["mask"] = _step_mask(B)
    out = layer.forward(x, training=True, **kwargs)
    outs = [np.array(o) for o in (out if return_state else [out])]
    dys = [r.standard_normal(o.shape).astype(dtype) for o in outs]
    back = layer.backward(dys if return_state else dys[0])
    dx, dstates = back if init else (back, [])
    grads = [np.array(layer.grads[k]) for k in sorted(layer.grads)]
    return outs + [np.array(dx)] + [np.array(s) for s in dstates] + grads


def _compare(kind, dtype, monkeypatch, counted, threads, B, min_rows, **case):
    nb.set_num_threads(threads)
    monkeypatch.setattr(cpu, "MIN_BLOCK_WORK", 1 << 62)  # never blocks: the serial loop
    serial = _run(kind, dtype, B, **case)
    assert sum(counted.values()) == 0
    monkeypatch.setattr(cpu, "MIN_BLOCK_WORK", 0)
    monkeypatch.setattr(cpu, "MIN_BLOCK_ROWS", min_rows)
    blocked = _run(kind, dtype, B, **case)
    assert len(serial) == len(blocked)
    for i, (a, b) in enumerate(zip(serial, blocked)):
        assert a.dtype == np.dtype(dtype) and a.shape == b.shape
        np.testing.assert_allclose(b, a, err_msg=f"array {i}", **TOL[dtype])
    return counted


CASES = {
    "seq-mask-dropout-init": dict(seq=True, backwards=False, init=True, masked=True, dropout=0.3),
    "last-backwards-mask-states": dict(seq=False, backwards=True, init=False, masked=True, dropout=0.0,
                                       return_state=True),
    "seq-backwards-zero-masked": dict(seq=True, backwards=True, init=True, masked=True, dropout=0.3,
                                      zero_output_for_mask=True),
    "last-dropout": dict(seq=False, backwards=False, init=False, masked=False, dropout=0.3),
}


# Every cell and case in float64; float32 once (the pieces are the same generic code, and each
# dtype compiles every blocked piece again: a cold kernel cache pays about a minute per dtype).
RUNS = [(kind, "float64", case) for kind in sorted(KINDS) for case in sorted(CASES)]
RUNS.append(("SimpleRNN", "float32", "seq-mask-dropout-init"))


@pytest.mark.parametrize(("kind", "dtype", "case"), RUNS)
def test_blocks_match_serial_loop(kind, dtype, case, monkeypatch, counted):
    """Two blocks of 3 rows (2 threads), or three uneven blocks of 2, 2 and 3 rows."""
    threads, B, min_rows = (2, 6, 3) if case != "seq-backwards-zero-masked" else (3, 7, 2)
    calls = _compare(kind, dtype, monkeypatch, counted, threads, B, min_rows, **CASES[case])
    family = {"SimpleRNN": "_rnn", "LSTM": "_lstm"}.get(kind, "_gru")
    assert calls[family + "_forward_blocks"] == 1
    assert calls[family + "_backward_blocks"] == 1
    assert sum(calls.values()) == 2


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_recurrent_dropout_keeps_serial_loop(kind, monkeypatch, counted):
    """Recurrent dropout masks: the serial loop even where the thresholds would block (and the
    same results as with the thresholds off)."""
    case = dict(seq=True, backwards=False, init=True, masked=True, dropout=0.3, recurrent_dropout=0.4)
    calls = _compare(kind, "float64", monkeypatch, counted, 2, 6, 3, **case)
    assert sum(calls.values()) == 0


def test_batch_blocks_decision(monkeypatch):
    """One thread, recurrent masks, too few rows or too little work: the serial loop; else
    min(threads, rows // MIN_BLOCK_ROWS) blocks."""
    monkeypatch.setattr(cpu, "MIN_BLOCK_ROWS", 4)
    monkeypatch.setattr(cpu, "MIN_BLOCK_WORK", 1 << 20)
    monkeypatch.setattr(cpu, "get_num_threads", lambda: 1)
    assert cpu.batch_blocks(64, 32, 128, 4, 0) == 0
    monkeypatch.setattr(cpu, "get_num_threads", lambda: 2)
    assert cpu.batch_blocks(64, 32, 128, 4, 0) == 2
    assert cpu.batch_blocks(64, 32, 128, 4, 4) == 0  # recurrent masks
    assert cpu.batch_blocks(7, 32, 128, 4, 0) == 0  # one block of 4 rows at most
    assert cpu.batch_blocks(64, 2, 8, 1, 0) == 0  # 1024 multiply-adds
    monkeypatch.setattr(cpu, "get_num_threads", lambda: 8)
    assert cpu.batch_blocks(12, 32, 128, 4, 0) == 3


@pytest.mark.parametrize("kind", ["LSTM", "GRU-reset-before"])
def test_outer_products_same_through_either_blas(kind, monkeypatch):
    """NUMPY_BLAS_SPINS (NumPy imported before nbmodel) moves the products outside the time
    loops from NumPy's BLAS to the kernels' at more than one thread: same results, and the
    kernels' BLAS really runs."""
    case = CASES["seq-mask-dropout-init"]
    before = get_num_threads()
    try:
        nb.set_num_threads(2)
        monkeypatch.setattr(cpu, "NUMPY_BLAS_SPINS", False)
        numpy_blas = _run(kind, "float64", 6, **case)
        used = []
        monkeypatch.setattr(cpu, "_kernel_blas_dot", lambda *a, _f=cpu._kernel_blas_dot: used.append(1) or _f(*a))
        monkeypatch.setattr(cpu, "NUMPY_BLAS_SPINS", True)
        kernel_blas = _run(kind, "float64", 6, **case)
    finally:
        nb.set_num_threads(before)
    assert len(used) == 3  # input projection, dkernel, drecurrent (dx, input-masked, in the mask loop)
    for a, b in zip(numpy_blas, kernel_blas):
        np.testing.assert_allclose(b, a, **TOL["float64"])
