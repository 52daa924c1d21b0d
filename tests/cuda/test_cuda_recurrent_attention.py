"""The CUDA recurrent and attention families (and gemm's column_sums) against
their CPU twins (models with these layers trained on cuda:
test_cuda_models.py). Simulator or GPU.

Geometry. The 1-D launches take blocks of 32 threads here (``runtime.THREADS``,
which ``launch_1d`` reads at each launch), so that the tiny shapes still run
on two or more blocks with a ragged last one: 36 cells (batch 4 x 9 units)
per recurrent step, 36 query rows and 72-90 value elements per attention
launch. Every recurrent configuration runs with the recurrent term fused into
the step kernel (the default at these sizes) and once more with it as a gemm
before each step (``_FUSED_MAX`` = 0).

Tolerances. float64: rtol 1e-11, atol 1e-12 (sums in other orders). float32:
rtol 1e-5, atol 1e-5 on O(1) values: the products sum in another order than
BLAS, the GPU's exp and division differ from the CPU's by an ulp or two, and
backward through time (and the softmax backward) subtracts nearly equal
terms, so the bound is absolute as well as relative. Where the exact value
is 0 (the key bias gradient: softmax does not see a shift of every score)
only the absolute bound means anything.
"""
import importlib

import numpy as np
import pytest

from nbmodel.backend import CpuDevice
from nbmodel.kernels import codes
from nbmodel.kernels.contract import parameters

CPU = CpuDevice()  # the twins' reference device
DTYPES = [np.float32, np.float64]
TOL = {np.float32: {"rtol": 1e-5, "atol": 1e-5}, np.float64: {"rtol": 1e-11, "atol": 1e-12}}


@pytest.fixture(scope="module")
def dev(cuda_device):
    return cuda_device


@pytest.fixture
def small_blocks(dev, monkeypatch):
    runtime = importlib.import_module("nbmodel.kernels.cuda.runtime")
    monkeypatch.setattr(runtime, "THREADS", 32)


def twin(dev, family, name, args, outputs):
    """Run ``family.name`` on cpu and cuda with the same arguments (a dict by contract
    name: arrays are copied to each device, other values passed as they are) and
    compare the arrays named in ``outputs``."""
    def call(device):
        put = {k: device.asarray(np.array(v)) if isinstance(v, np.ndarray) else v for k, v in args.items()}
        getattr(device.kernels(family), name)(*[put[p] for p in parameters(family, name)])
        return {k: device.to_host(put[k]) for k in outputs}

    want, got = call(CPU), call(dev)
    for k in outputs:
        dtype = want[k].dtype.type
        assert got[k].dtype == want[k].dtype, f"{name} {k}: dtype {got[k].dtype}"
        np.testing.assert_allclose(got[k], want[k], err_msg=f"{name}: {k}", **TOL[dtype])
    return got


def cpu_run(family, name, args):
    """``family.name`` on the CPU over copies of ``args``: the arguments after the call."""
    host = {k: v.copy() if isinstance(v, np.ndarray) else v for k, v in args.items()}
    getattr(CPU.kernels(family), name)(*[host[p] for p in parameters(family, name)])
    return host


def _nan(shape, dtype):
    """An output buffer: NaN where the kernel writes nothing."""
    return np.full(shape, np.nan, dtype)


# ------------------------------------------------------------------ column sums
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n, m", [(70, 37), (5, 3), (0, 4)])
def test_column_sums_match_numpy(dev, dtype, n, m):
    """Two column tiles (37 > 32, ragged) over 4 row lanes; one lane; no rows (zeros)."""
    gemm_mod = importlib.import_module("nbmodel.kernels.cuda.gemm")
    a = np.random.default_rng(0).standard_normal((n, m)).astype(dtype)
    out = dev.full(m, np.nan, dtype)
    gemm_mod.column_sums(dev.asarray(a), out)
    np.testing.assert_allclose(dev.to_host(out), a.astype(np.float64).sum(0), **TOL[dtype])


# ------------------------------------------------------------------ recurrent
B, T, D, U = 4, 3, 5, 9  # B * U = 36 cells: two 32-thread blocks
GATES = {"simple_rnn": 1, "lstm": 4, "gru": 3}
# (reverse, use_init, ret_seq / has_seq, need_dx, act, rec_act)
CONFIGS = {
    "plain": (False, False, True, True, codes.TANH, codes.SIGMOID),
    "reverse-init-last": (True, True, False, False, codes.TANH, codes.SIGMOID),
    "reverse-seq-other-acts": (True, False, True, True, codes.ELU, codes.TANH),
    "init-relu": (False, True, True, True, codes.RELU, codes.SIGMOID),
}


# Keras step masks (B, T): a leading, a trailing and an interior skipped step, and a row
# with no real step
STEP_MASK = np.array([[0, 1, 1], [1, 1, 0], [1, 0, 1], [0, 0, 0]])


def _recurrent_args(cell, dtype, reverse, use_init, ret_seq, need_dx, act, rec_act, seed=0, masks=None,
                    reset_after=True, step_mask=False, zero_masked=False):
    """``masks``: None, "input" (one input mask) or "gates" (input and recurrent masks per gate);
    ``reset_after``: the GRU's formulation (False: bias (1, 3u)); ``step_mask``: STEP_MASK as the
    Keras step mask (else the (1, 1) dummy), ``zero_masked`` its zero outputs."""
    r = np.random.default_rng(seed)
    n = GATES[cell] * U
    w = lambda *s: (0.5 * r.standard_normal(s)).astype(dtype)  # noqa: E731
    n_mx = {None: 0, "input": 1, "gates": GATES[cell]}[masks]
    n_mh = GATES[cell] if masks == "gates" else 0
    keep = lambda *s: ((r.random(s) >= 0.3) / 0.7).astype(dtype)  # noqa: E731
    drop = dict(mask_x=keep(B, n_mx, D) if n_mx else np.zeros((1, 1, 1), dtype), n_mx=n_mx,
                mask_h=keep(B, n_mh, U) if n_mh else np.zeros((1, 1, 1), dtype), n_mh=n_mh,
                HM=_nan((n_mh, T, B, U), dtype) if n_mh else np.zeros((1, 1, 1, 1), dtype),
                step_mask=STEP_MASK.astype(dtype) if step_mask else np.zeros((1, 1), dtype),
                has_step_mask=step_mask, zero_masked=zero_masked)
    H = np.zeros((T + 1, B, U), dtype)
    if use_init:
        H[0] = r.standard_normal((B, U))
    fwd = dict(x=w(B, T, D) * 2, reverse=reverse, kernel=w(D, n), recurrent_kernel=w(U, n),
               bias=w(2 if reset_after else 1, n) if cell == "gru" else w(n), use_init=use_init, act=act,
               ret_seq=ret_seq,
               xs=_nan((max(n_mx, 1), T, B, D), dtype), H=H, **drop, rec=_nan((B, n), dtype),
               y=_nan((B, T, U), dtype) if ret_seq else _nan((1, 1, 1), dtype))
    if cell == "simple_rnn":
        fwd["P"] = _nan((T, B, U), dtype)
    else:
        fwd.update(G=_nan((T, B, n), dtype), rec_act=rec_act)
    if cell == "lstm":
        C = np.zeros((T + 1, B, U), dtype)
        if use_init:
            C[0] = r.standard_normal((B, U))
        fwd.update(C=C, TC=_nan((T, B, U), dtype))
    if cell == "gru":
        fwd.update(RH=_nan((T, B, U), dtype), reset_after=reset_after)
    bwd = dict(dy=w(B, T, U) if ret_seq else _nan((1, 1, 1), dtype), has_seq=ret_seq, need_dx=need_dx,
               dh=w(B, U), dZ=_nan((T, B, n), dtype), dkernel=_nan((D, n), dtype),
               drecurrent=_nan((U, n), dtype), dbias=_nan(fwd["bias"].shape, dtype), dxs=_nan((T, B, D), dtype),
               dx=_nan((B, T, D), dtype))
    if cell == "lstm":
        bwd["dc"] = w(B, U)
    if cell == "gru":
        bwd.update(dhz=_nan((B, U), dtype), dR=_nan((T, B, n), dtype))
    return fwd, bwd


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("config", sorted(CONFIGS))
@pytest.mark.parametrize("cell", sorted(GATES))
def test_recurrent_matches_cpu(dev, small_blocks, cell, config, dtype):
    _check_recurrent(dev, cell, CONFIGS[config], dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cell", sorted(GATES))
def test_recurrent_with_a_gemm_per_step_matches_cpu(dev, small_blocks, monkeypatch, cell, dtype):
    monkeypatch.setattr(importlib.import_module("nbmodel.kernels.cuda.recurrent"), "_FUSED_MAX", 0)
    _check_recurrent(dev, cell, (True, True, True, True, codes.TANH, codes.SIGMOID), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("masks", ["input", "gates"])
@pytest.mark.parametrize("cell", sorted(GATES))
def test_recurrent_with_dropout_masks_matches_cpu(dev, small_blocks, cell, masks, dtype):
    """One input mask, or input and recurrent masks per gate (Keras' two dropout modes)."""
    _check_recurrent(dev, cell, (True, True, True, True, codes.TANH, codes.SIGMOID), dtype, masks)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("masks", [None, "gates"])
@pytest.mark.parametrize("config", ["plain", "reverse-init-last", "reverse-seq-other-acts"])
@pytest.mark.parametrize("fused_max", [None, 0])
def test_gru_reset_before_matches_cpu(dev, small_blocks, monkeypatch, config, masks, fused_max, dtype):
    """GRU(reset_after=False): the recurrent term fused or a gemm, with and without masks."""
    if fused_max is not None:
        monkeypatch.setattr(importlib.import_module("nbmodel.kernels.cuda.recurrent"), "_FUSED_MAX", fused_max)
    _check_recurrent(dev, "gru", CONFIGS[config], dtype, masks, reset_after=False)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("zero_masked", [False, True])
@pytest.mark.parametrize("config", ["plain", "reverse-init-last", "init-relu"])
@pytest.mark.parametrize("cell", sorted(GATES))
def test_recurrent_with_step_masks_matches_cpu(dev, small_blocks, cell, config, zero_masked, dtype):
    """Keras masking: skipped steps carry the states over (forward), pass the state gradients
    through (backward; the carried gradient reaches the initial state with use_init)."""
    _check_recurrent(dev, cell, CONFIGS[config], dtype, step_mask=True, zero_masked=zero_masked)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cell", sorted(GATES))
def test_recurrent_with_step_and_dropout_masks_and_gemms_matches_cpu(dev, small_blocks, monkeypatch, cell, dtype):
    """Step masks with per-gate dropout masks, the recurrent term as a gemm per step."""
    monkeypatch.setattr(importlib.import_module("nbmodel.kernels.cuda.recurrent"), "_FUSED_MAX", 0)
    _check_recurrent(dev, cell, (True, True, True, True, codes.TANH, codes.SIGMOID), dtype, "gates", step_mask=True)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("masks, fused_max", [(None, None), ("gates", 0)])
def test_gru_reset_before_with_step_masks_matches_cpu(dev, small_blocks, monkeypatch, masks, fused_max, dtype):
    if fused_max is not None:
        monkeypatch.setattr(importlib.import_module("nbmodel.kernels.cuda.recurrent"), "_FUSED_MAX", fused_max)
    _check_recurrent(dev, "gru", CONFIGS["init-relu"], dtype, masks, reset_after=False, step_mask=True)


def _check_recurrent(dev, cell, config, dtype, masks=None, reset_after=True, step_mask=False, zero_masked=False):
    reverse, use_init, ret_seq, need_dx, act, rec_act = config
    fwd, bwd = _recurrent_args(cell, dtype, *config, masks=masks, reset_after=reset_after, step_mask=step_mask,
                               zero_masked=zero_masked)
    states = {"simple_rnn": ["P", "H"], "lstm": ["G", "H", "C", "TC"], "gru": ["G", "H", "RH"]}[cell]
    outs = ["xs"] + states + (["y"] if ret_seq else []) + (["HM"] if masks == "gates" else [])
    twin(dev, "recurrent", f"{cell}_forward", fwd, outs)
    # backward from the CPU forward's results: both sides start from the same state
    args = {**cpu_run("recurrent", f"{cell}_forward", fwd), **bwd}
    grads = ["dh", "dZ", "dkernel", "drecurrent", "dbias"] + (["dx"] if need_dx else [])
    grads += {"simple_rnn": [], "lstm": ["dc"], "gru": ["dhz", "dR"]}[cell]
    twin(dev, "recurrent", f"{cell}_backward", args, grads)


# ------------------------------------------------------------------ attention
def _mha_args(dtype, b=3, heads=2, tq=6, tk=5, kd=2, vd=3, dims=(4, 5, 3), dout=4, mask=None, causal=False,
              rate=0.0, keep=True, use_bias=True, seed=0):
    """mha_forward arguments: 36 query rows (two 32-thread blocks), value elements 108."""
    r = np.random.default_rng(seed)
    dq, dv, dk = dims
    f = lambda *s: r.standard_normal(s).astype(dtype)  # noqa: E731
    w = lambda *s: (r.standard_normal(s) / np.sqrt(s[0])).astype(dtype)  # noqa: E731  (O(1) values and gradients)
    t = np.dtype(dtype).type
    m = np.ones((1, 1, 1, 1), bool) if mask is None else mask
    return dict(q2=f(b * tq, dq), k2=f(b * tk, dk), v2=f(b * tk, dv), wq=w(dq, heads * kd), bq=f(heads * kd),
                wk=w(dk, heads * kd), bk=f(heads * kd), wv=w(dv, heads * vd), bv=f(heads * vd),
                wo=w(heads * vd, dout), bo=f(dout), use_bias=use_bias, scale=t(1 / np.sqrt(kd)), batch=b, tq=tq,
                tk=tk, heads=heads, kd=kd, vd=vd, mask=m, has_mask=mask is not None, causal=causal, keep=keep,
                rate=t(rate), u=r.random((b, heads, tq, tk)).astype(dtype) if rate else np.zeros((1, 1, 1, 1), dtype),
                qtmp=_nan((b * tq, heads * kd), dtype), ktmp=_nan((b * tk, heads * kd), dtype),
                vtmp=_nan((b * tk, heads * vd), dtype), qh=_nan((b, heads, tq, kd), dtype),
                kh=_nan((b, heads, tk, kd), dtype), vh=_nan((b, heads, tk, vd), dtype),
                probs=_nan((b, heads, tq, tk) if keep else (1, 1, tq, tk), dtype),
                pdrop=_nan((tq, tk) if rate else (1, 1), dtype), otmp=_nan((tq, vd), dtype),
                o2=_nan((b * tq, heads * vd), dtype), out=_nan((b * tq, dout), dtype))


def _mha_backward_args(fwd, dtype, has_dscores=False, need_dx=True, seed=1):
    """mha_backward arguments after mha_forward ran (on the CPU) on ``fwd``."""
    r = np.random.default_rng(seed)
    b, tq, tk, h, kd, vd = (fwd[k] for k in ("batch", "tq", "tk", "heads", "kd", "vd"))
    dq, dk, dv, dout = fwd["q2"].shape[1], fwd["k2"].shape[1], fwd["v2"].shape[1], fwd["out"].shape[1]
    n = b * tq
    return dict(dout=r.standard_normal((n, dout)).astype(dtype),
                dscores=(r.standard_normal((b, h, tq, tk)) if has_dscores else np.zeros((1, 1, 1, 1))).astype(dtype),
                has_dscores=has_dscores, need_dx=need_dx, do2=_nan((n, h * vd), dtype), dotmp=_nan((tq, vd), dtype),
                dp=_nan((tq, tk), dtype), tvtmp=_nan((tk, vd), dtype), tqtmp=_nan((tq, kd), dtype),
                tktmp=_nan((tk, kd), dtype), dq2=_nan((n, h * kd), dtype), dk2=_nan((b * tk, h * kd), dtype),
                dv2=_nan((b * tk, h * vd), dtype), dwq=_nan((dq, h * kd), dtype), dbq=_nan(h * kd, dtype),
                dwk=_nan((dk, h * kd), dtype), dbk=_nan(h * kd, dtype), dwv=_nan((dv, h * vd), dtype),
                dbv=_nan(h * vd, dtype), dwo=_nan((h * vd, dout), dtype), dbo=_nan(dout, dtype),
                dxq=_nan((n, dq) if need_dx else (1, 1), dtype), dxk=_nan((b * tk, dk) if need_dx else (1, 1), dtype),
                dxv=_nan((b * tk, dv) if need_dx else (1, 1), dtype))


def _mask3(b=3, tq=6, tk=5, seed=9):
    m = np.random.default_rng(seed).random((b, 1, tq, tk)) > 0.4
    m[0, 0, 1] = False  # a fully masked row: zeros
    return m


MHA_CASES = {
    "plain": {},
    "cross-no-bias": dict(tk=7, dims=(4, 6, 2), use_bias=False),
    "mask-fully-masked-row": dict(mask=_mask3()),
    "mask-heads-4d": dict(mask=np.random.default_rng(3).random((3, 2, 6, 5)) > 0.3),
    "causal": dict(causal=True),
    "causal-mask-dropout": dict(mask=_mask3(), causal=True, rate=0.3),
    "dropout": dict(rate=0.4),
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", sorted(MHA_CASES))
def test_mha_matches_cpu(dev, small_blocks, case, dtype):
    fwd = _mha_args(dtype, **MHA_CASES[case])
    got = twin(dev, "attention", "mha_forward", fwd, ["qh", "kh", "vh", "probs", "o2", "out"])
    if case.startswith("mask-fully") or case.startswith("causal-mask"):
        assert not got["probs"][0, :, 1].any()  # nothing to attend to: zeros, not NaN
    host = cpu_run("attention", "mha_forward", fwd)
    bwd = _mha_backward_args(host, dtype, has_dscores=case == "dropout", need_dx=case != "causal")
    outs = ["do2", "dq2", "dk2", "dv2", "dwq", "dwk", "dwv", "dwo"]
    outs += ["dbq", "dbk", "dbv", "dbo"] if fwd["use_bias"] else []
    outs += ["dxq", "dxk", "dxv"] if bwd["need_dx"] else []
    twin(dev, "attention", "mha_backward", {**host, **bwd}, outs)


@pytest.mark.parametrize("dtype", DTYPES)
def test_mha_inference_one_block_at_a_time(dev, small_blocks, dtype):
    """keep=False: probs holds one (q_len, k_len) block, the kernels run per block."""
    fwd = _mha_args(dtype, mask=_mask3(), keep=False)
    twin(dev, "attention", "mha_forward", fwd, ["o2", "out"])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rate, causal, need_dx", [(0.0, False, True), (0.3, True, False)])
def test_mha_self_matches_cpu(dev, small_blocks, dtype, rate, causal, need_dx):
    base = _mha_args(dtype, tk=6, dims=(4, 4, 4), causal=causal, rate=rate)
    b, t, h, kd, vd = base["batch"], base["tq"], base["heads"], base["kd"], base["vd"]
    ctot = 2 * h * kd + h * vd
    wcat = np.concatenate([base["wq"], base["wk"], base["wv"]], 1)
    bcat = np.concatenate([base["bq"], base["bk"], base["bv"]])
    fwd = {k: base[k] for k in ("wo", "bo", "use_bias", "scale", "batch", "heads", "kd", "vd", "mask", "has_mask",
                                "causal", "keep", "rate", "u", "qh", "kh", "vh", "probs", "pdrop", "otmp", "o2",
                                "out")}
    fwd.update(x2=base["q2"], wcat=wcat, bcat=bcat, t=t, qkv=_nan((b * t, ctot), dtype))
    twin(dev, "attention", "mha_self_forward", fwd, ["qkv", "qh", "kh", "vh", "probs", "o2", "out"])
    host = cpu_run("attention", "mha_self_forward", fwd)
    bwd = _mha_backward_args({**base, **host}, dtype, has_dscores=True, need_dx=need_dx)
    bwd = {k: bwd[k] for k in ("dout", "dscores", "has_dscores", "need_dx", "do2", "dotmp", "dp", "tvtmp", "tqtmp",
                               "tktmp", "dwo", "dbo")}
    bwd.update(g=_nan((b * t, ctot), dtype), dwcat=_nan(wcat.shape, dtype), dbcat=_nan(ctot, dtype),
               dx=_nan((b * t, 4) if need_dx else (1, 1), dtype))
    twin(dev, "attention", "mha_self_backward", {**host, **bwd},
         ["do2", "g", "dwcat", "dbcat", "dwo", "dbo"] + (["dx"] if need_dx else []))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("code, need_dx", [(codes.RELU, True), (codes.GELU, False), (codes.LINEAR, True)])
def test_ffn_matches_cpu(dev, small_blocks, code, need_dx, dtype):
    r = np.random.default_rng(4)
    n, d, ff = 7, 5, 9
    f = lambda *s: r.standard_normal(s).astype(dtype)  # noqa: E731
    keep_pre = code in codes.NEEDS_PREACTIVATION
    fwd = dict(x=f(n, d), w1=f(d, ff), b1=f(ff), w2=f(ff, d), b2=f(d), code=code, keep_pre=keep_pre,
               pre=_nan((n, ff), dtype), hid=_nan((n, ff), dtype), out=_nan((n, d), dtype))
    twin(dev, "attention", "ffn_forward", fwd, ["hid", "out"] + (["pre"] if keep_pre else []))
    host = cpu_run("attention", "ffn_forward", fwd)
    if not keep_pre:
        host["pre"] = host["hid"]  # as the layer passes it
    bwd = dict(dout=f(n, d), need_dx=need_dx, dz=_nan((n, ff), dtype), dw1=_nan((d, ff), dtype),
               db1=_nan(ff, dtype), dw2=_nan((ff, d), dtype), db2=_nan(d, dtype), dx=_nan((n, d), dtype))
    twin(dev, "attention", "ffn_backward", {**host, **bwd},
         ["dz", "dw1", "db1", "dw2", "db2"] + (["dx"] if need_dx else []))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("id_type", [np.int64, np.int32])
def test_pos_embed_matches_cpu(dev, small_blocks, dtype, id_type):
    """Repeated ids add up in dtok; positions past the sequence get a zero gradient."""
    r = np.random.default_rng(5)
    b, t, vocab, seq, d = 4, 3, 5, 6, 7
    ids = r.integers(0, vocab, (b, t)).astype(id_type)
    ids[:, 0] = 2  # a repeated id
    tok, pos = r.standard_normal((vocab, d)).astype(dtype), r.standard_normal((seq, d)).astype(dtype)
    twin(dev, "attention", "pos_embed_forward", dict(ids=ids, tok=tok, pos=pos, out=_nan((b, t, d), dtype)), ["out"])
    got = twin(dev, "attention", "pos_embed_backward",
               dict(ids=ids, dy=r.standard_normal((b, t, d)).astype(dtype), dtok=_nan((vocab, d), dtype),
                    dpos=_nan((seq, d), dtype)), ["dtok", "dpos"])
    assert not got["dpos"][t:].any()
