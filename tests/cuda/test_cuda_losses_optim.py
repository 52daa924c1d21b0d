"""The CUDA losses and optim families against their CPU twins (simulator or GPU).

Shapes are tiny but cover two or more blocks with a ragged last one: losses
run one thread per row in blocks of 128 (150 rows: 2 blocks), the optimizer
steps one thread per element in blocks of 256 (300 elements: 2 blocks), and
segment_sumsq is run with 32-thread blocks of 64 elements (monkeypatched
launch geometry, a launcher-side choice) so that segments span several blocks
and blocks several segments.

Tolerances. float64: rtol 1e-12 (same formulas in the same order per row or
element; only libm vs libdevice and fused multiply-adds differ, about 1e-16).
float32: rtol 2e-5 with atol 2e-6 (about 1e-5 of the values' scale): the CPU
uses its polynomial fast_exp and correctly rounded division and square root,
the GPU (fastmath) its hardware exp2/log2 approximations, approximate
division and square root and fused multiply-adds, each a few ulp (float32
ulp 1.2e-7) per operation, a few dozen operations deep; the simulator
computes exp/log in float64. segment_sumsq is float64 whatever the input, but
sums in another order: rtol 1e-12.
"""
import numpy as np
import pytest

from nbmodel.backend import CpuDevice
from nbmodel.kernels.codes import BCE, BCE_LOGITS, HUBER, MAE, MSE

CPU = CpuDevice()  # the twins' reference device

F32_TOL = {"rtol": 2e-5, "atol": 2e-6}
F64_TOL = {"rtol": 1e-12, "atol": 1e-13}


def _tol(dtype):
    return F32_TOL if np.dtype(dtype) == np.float32 else F64_TOL


def _close(got, want, dtype, what):
    assert got.dtype == want.dtype, what
    np.testing.assert_allclose(got, want, err_msg=what, **_tol(dtype))


@pytest.fixture(scope="module")
def losses(cuda_device):
    return cuda_device, cuda_device.kernels("losses"), CPU.kernels("losses")


@pytest.fixture(scope="module")
def optim(cuda_device):
    return cuda_device, cuda_device.kernels("optim"), CPU.kernels("optim")


# ------------------------------------------------------------------- losses
N, D, C = 150, 3, 7  # 150 rows: two blocks of 128 threads, the second ragged


def _dense_data(code, dtype, r):
    if code in (BCE,):
        yp = r.uniform(0.02, 0.98, (N, D))
        yp[::17, 0] = 0.0  # clipped to eps: no gradient
        yp[5::19, 1] = 1.0  # clipped to 1 - eps
        yt = (r.random((N, D)) < 0.5).astype(float)
        yt[::7] = r.random((len(yt[::7]), D))  # soft targets
    else:
        yp = r.standard_normal((N, D)) * 2
        yt = r.standard_normal((N, D))
        if code == MAE:
            yt[::11] = yp[::11]  # e == 0: zero gradient
    return yt.astype(dtype), yp.astype(dtype)


def _run_dense(dev, kern, code, yt, yp, a, b, eps, w, w_per, use_w, need_grad, on_device):
    dtype = yp.dtype
    rows = np.zeros(N, dtype)
    dy = np.zeros((N, D) if need_grad else (1, 1), dtype)
    if on_device:
        rows_d, dy_d = dev.asarray(rows), dev.asarray(dy)
        kern.dense_loss(code, dev.asarray(yt), dev.asarray(yp), a, b, eps, dev.asarray(w), w_per, use_w,
                        need_grad, rows_d, dy_d)
        return dev.to_host(rows_d), dev.to_host(dy_d)
    kern.dense_loss(code, yt, yp, a, b, eps, w, w_per, use_w, need_grad, rows, dy)
    return rows, dy


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("code", [MSE, MAE, HUBER, BCE, BCE_LOGITS])
def test_dense_loss_matches_cpu(losses, code, dtype):
    dev, kc, kh = losses
    r = np.random.default_rng(code)
    yt, yp = _dense_data(code, dtype, r)
    t = np.dtype(dtype).type
    a, b = {HUBER: (0.7, 0.0), BCE: (0.9, 0.05), BCE_LOGITS: (0.8, 0.1)}.get(code, (0.0, 0.0))
    w = r.uniform(0.5, 2.0, N // 3).astype(dtype)  # one weight per 3 rows
    for w_, w_per, use_w, need_grad in ((w, 3, True, True), (np.ones(1, dtype), 1, False, False)):
        args = (code, yt, yp, t(a), t(b), t(1e-7), w_, w_per, use_w, need_grad)
        rows_h, dy_h = _run_dense(None, kh, *args, on_device=False)
        rows_c, dy_c = _run_dense(dev, kc, *args, on_device=True)
        _close(rows_c, rows_h, dtype, f"row_loss code {code} use_w {use_w}")
        _close(dy_c, dy_h, dtype, f"dy code {code} use_w {use_w}")


def _run_cce(dev, kern, yt, yp, from_logits, a, b, w, w_per, use_w, need_grad, on_device):
    dtype = yp.dtype
    t = dtype.type
    rows = np.zeros(N, dtype)
    dy = np.zeros((N, C) if need_grad else (1, 1), dtype)
    if on_device:
        rows_d, dy_d = dev.asarray(rows), dev.asarray(dy)
        kern.categorical_ce(dev.asarray(yt), dev.asarray(yp), from_logits, t(a), t(b), t(1e-7), dev.asarray(w),
                            w_per, use_w, need_grad, rows_d, dy_d)
        return dev.to_host(rows_d), dev.to_host(dy_d)
    kern.categorical_ce(yt, yp, from_logits, t(a), t(b), t(1e-7), w, w_per, use_w, need_grad, rows, dy)
    return rows, dy


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("from_logits", [True, False])
def test_categorical_ce_matches_cpu(losses, from_logits, dtype):
    dev, kc, kh = losses
    r = np.random.default_rng(7 + from_logits)
    yt = np.eye(C)[r.integers(0, C, N)]
    yt[::9] = r.dirichlet(np.ones(C), len(yt[::9]))  # soft targets
    if from_logits:
        yp = r.standard_normal((N, C)) * 3
    else:
        yp = r.uniform(0.05, 1.0, (N, C))
        yp[::13, 2] = 0.0  # q = 0: clipped, no gradient
    yt, yp = yt.astype(dtype), yp.astype(dtype)
    s = 0.1  # label smoothing: t * (1 - s) + s / C
    w = r.uniform(0.5, 2.0, N).astype(dtype)
    for w_, use_w, need_grad in ((w, True, True), (np.ones(1, dtype), False, False), (w, True, False)):
        args = (yt, yp, from_logits, 1 - s, s / C, w_, 1, use_w, need_grad)
        rows_h, dy_h = _run_cce(None, kh, *args, on_device=False)
        rows_c, dy_c = _run_cce(dev, kc, *args, on_device=True)
        _close(rows_c, rows_h, dtype, f"row_loss use_w {use_w} need_grad {need_grad}")
        _close(dy_c, dy_h, dtype, f"dy use_w {use_w} need_grad {need_grad}")


def _labels(label_dtype, r):
    lab = r.integers(0, C, N).astype(label_dtype)
    lab[3::23] = 2  # the ignored class
    lab[10] = -1  # bad: negative
    lab[140] = C  # bad: == C (second block)
    if np.dtype(label_dtype).kind == "f":
        lab[60] = 2.5  # bad: not a whole number
        lab[61] = np.nan  # bad
    return lab


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("label_dtype", [np.int64, np.int32, np.float32, np.float64])
def test_sparse_ce_matches_cpu(losses, label_dtype, dtype):
    dev, kc, kh = losses
    r = np.random.default_rng(11)
    lab = _labels(label_dtype, r)
    t = np.dtype(dtype).type
    w = r.uniform(0.5, 2.0, N // 5).astype(dtype)
    cases = [(True, 2, True, w, 5, True, True), (False, 0, False, np.ones(1, dtype), 1, False, True),
             (True, 0, True, w, 5, True, False), (False, 4, True, np.ones(1, dtype), 1, False, True)]
    for from_logits, ignore, use_ignore, w_, w_per, use_w, need_grad in cases:
        yp = (r.standard_normal((N, C)) * 2 if from_logits else r.uniform(0.05, 1.0, (N, C))).astype(dtype)
        if not from_logits:
            yp[20, int(lab[20])] = 0.0  # the label's probability clipped: no gradient
        rows_h, dy_h = np.zeros(N, dtype), np.zeros((N, C) if need_grad else (1, 1), dtype)
        rows_d, dy_d = dev.asarray(rows_h), dev.asarray(dy_h)
        got = kc.sparse_ce(dev.asarray(lab), dev.asarray(yp), from_logits, ignore, use_ignore, t(1e-7),
                           dev.asarray(w_), w_per, use_w, need_grad, rows_d, dy_d)
        want = kh.sparse_ce(lab, yp, from_logits, ignore, use_ignore, t(1e-7), w_, w_per, use_w, need_grad,
                            rows_h, dy_h)
        what = f"from_logits {from_logits} ignore {ignore if use_ignore else None} need_grad {need_grad}"
        assert got == tuple(int(v) for v in want), what
        assert all(type(v) is int for v in got), "counts come back as Python ints"
        _close(dev.to_host(rows_d), rows_h, dtype, "row_loss " + what)
        _close(dev.to_host(dy_d), dy_h, dtype, "dy " + what)


def test_sparse_ce_ignore_outside_label_range(losses):
    """An ignore value no int32 label can hold: nothing is ignored (as on the CPU)."""
    dev, kc, kh = losses
    r = np.random.default_rng(5)
    lab = r.integers(0, C, 9).astype(np.int32)
    yp = r.standard_normal((9, C))
    rows_h, dy_h = np.zeros(9), np.zeros((9, C))
    rows_d, dy_d = dev.asarray(rows_h), dev.asarray(dy_h)
    got = kc.sparse_ce(dev.asarray(lab), dev.asarray(yp), True, 2**40, True, 1e-7, dev.asarray(np.ones(1)), 1,
                       False, True, rows_d, dy_d)
    want = kh.sparse_ce(lab, yp, True, 2**40, True, 1e-7, np.ones(1), 1, False, True, rows_h, dy_h)
    assert got == tuple(want) == (9, 0)
    _close(dev.to_host(dy_d), dy_h, np.float64, "dy")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_matches_agree_with_cpu(losses, dtype):
    dev, kc, kh = losses
    r = np.random.default_rng(3)
    yp = r.integers(0, 4, (N, C)).astype(dtype)  # many ties
    yp[7] = np.nan
    yp[8, 3] = np.nan
    yt = np.eye(C, dtype=dtype)[r.integers(0, C, N)]
    for label_dtype in (np.int64, np.int32, np.float64, np.float32):
        lab = _labels(label_dtype, r)
        for k in (0, 1, 2, 3):
            out_h, out_d = np.zeros(N), dev.zeros(N, np.float64)
            kh.sparse_matches(lab, yp, k, out_h)
            kc.sparse_matches(dev.asarray(lab), dev.asarray(yp), k, out_d)
            np.testing.assert_array_equal(dev.to_host(out_d), out_h, err_msg=f"sparse {label_dtype} k={k}")
    for k in (0, 2):
        out_h, out_d = np.zeros(N), dev.zeros(N, np.float64)
        kh.categorical_matches(yt, yp, k, out_h)
        kc.categorical_matches(dev.asarray(yt), dev.asarray(yp), k, out_d)
        np.testing.assert_array_equal(dev.to_host(out_d), out_h, err_msg=f"categorical k={k}")


# -------------------------------------------------------------------- optim
P = 300  # two blocks of 256 threads, the second ragged
BOUNDS = np.array([0, 50, 50, 170, P], np.int64)  # one empty segment
SCALES = [0.5, 3.0, 1.0, 0.25]

SGD = [dict(momentum=0.0, nesterov=False, use_cv=True, use_wd=False),
       dict(momentum=0.9, nesterov=False, use_cv=False, use_wd=True),
       dict(momentum=0.9, nesterov=True, use_cv=True, use_wd=True)]
ADAM = [dict(amsgrad=False, use_cv=False, use_wd=False),
        dict(amsgrad=True, use_cv=True, use_wd=False),
        dict(amsgrad=False, use_cv=False, use_wd=True)]
RMSPROP = [dict(centered=False, momentum=0.0, use_cv=False, use_wd=False),
           dict(centered=True, momentum=0.0, use_cv=False, use_wd=False),
           dict(centered=False, momentum=0.8, use_cv=False, use_wd=True),
           dict(centered=True, momentum=0.8, use_cv=True, use_wd=False)]
PLAIN = [dict(use_cv=False, use_wd=False), dict(use_cv=True, use_wd=True)]
NEW = ("nadam", "adagrad", "adadelta", "adamax", "lion")
CASES = ([("sgd", c) for c in SGD] + [("adam", c) for c in ADAM] + [("rmsprop", c) for c in RMSPROP]
         + [(k, c) for k in NEW for c in PLAIN])
# slots per rule (sizes when used; a variant's unused slots are 1-element placeholders)
N_SLOTS = {"nadam": 2, "adagrad": 1, "adadelta": 2, "adamax": 2, "lion": 1}


def _step(kern, kind, p, g, bounds, scales, slots, opt, t, step):
    cv, wd_lr = t(0.8), t(0.01)
    if kind == "sgd":
        kern.sgd_step(p, g, bounds, scales, opt["use_cv"], cv, opt["use_wd"], wd_lr, t(0.05), t(opt["momentum"]),
                      opt["nesterov"], slots[0])
    elif kind == "adam":
        b1, b2 = 0.9, 0.999
        alpha = 0.01 * np.sqrt(1 - b2 ** step) / (1 - b1 ** step)
        kern.adam_step(p, g, bounds, scales, opt["use_cv"], cv, opt["use_wd"], wd_lr, t(alpha), t(1 - b1),
                       t(1 - b2), t(1e-7), opt["amsgrad"], *slots)
    elif kind == "rmsprop":
        kern.rmsprop_step(p, g, bounds, scales, opt["use_cv"], cv, opt["use_wd"], wd_lr, t(0.01), t(0.9), t(0.1),
                          t(opt["momentum"]), t(1e-7), opt["centered"], *slots)
    else:
        base = (p, g, bounds, scales, opt["use_cv"], cv, opt["use_wd"], wd_lr)
        hyper = {"nadam": (0.01, 0.1, 0.001, 0.9 / (1 - 0.4 * step), 0.5 / (1 - 0.3 * step), 1 / (1 - 0.999 ** step),
                           1e-7),
                 "adagrad": (0.05, 1e-7),
                 "adadelta": (1.0, 0.95, 0.05, 1e-7),
                 "adamax": (0.01 / (1 - 0.9 ** step), 0.1, 0.999, 1e-7),
                 "lion": (0.01, 0.9, 0.1, 0.99, 0.01)}[kind]
        getattr(kern, f"{kind}_step")(*base, *[t(h) for h in hyper], *slots)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kind, opt", CASES, ids=[f"{k}-{'-'.join(f'{a}={b}' for a, b in o.items())}"
                                                  for k, o in CASES])
def test_optimizer_steps_match_cpu(optim, kind, opt, dtype):
    dev, kc, kh = optim
    r = np.random.default_rng(17)
    t = np.dtype(dtype).type
    p = r.standard_normal(P).astype(dtype)
    # slots a variant does not use are 1-element placeholders, as the optimizers pass them
    sizes = {**{k: [P] * n for k, n in N_SLOTS.items()},
             "sgd": [P if opt.get("momentum") else 1],
             "adam": [P, P, P if opt.get("amsgrad") else 1],
             "rmsprop": [P, P if opt.get("momentum") else 1, P if opt.get("centered") else 1]}[kind]
    slots = [np.zeros(n, dtype) for n in sizes]
    if kind == "adagrad":
        slots[0] += dtype(0.1)  # Keras' initial_accumulator_value
    scales = np.array(SCALES, dtype)
    p_d, slots_d = dev.asarray(p), [dev.asarray(s) for s in slots]
    bounds_d, scales_d = dev.asarray(BOUNDS), dev.asarray(scales)
    for step in (1, 2):
        g = (r.standard_normal(P) * 0.6).astype(dtype)
        g[::37] = 0.0  # Lion: sign(0) on the first step
        _step(kh, kind, p, g, BOUNDS, scales, slots, opt, t, step)
        _step(kc, kind, p_d, dev.asarray(g), bounds_d, scales_d, slots_d, opt, t, step)
    _close(dev.to_host(p_d), p, dtype, f"{kind} {opt}: params")
    for i, (sd, sh) in enumerate(zip(slots_d, slots)):
        _close(dev.to_host(sd), sh, dtype, f"{kind} {opt}: slot {i}")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_segment_sumsq_matches_cpu(optim, monkeypatch, dtype):
    dev, kc, kh = optim
    r = np.random.default_rng(23)
    g = (r.standard_normal(P) * 3).astype(dtype)
    bounds = np.array([0, 5, 5, 7, 150, 299, P], np.int64)  # empty, tiny, multi-block and 1-element segments
    want = np.empty(bounds.size - 1)
    kh.segment_sumsq(g, bounds, want)
    g_d, b_d = dev.asarray(g), dev.asarray(bounds)
    for threads, items in ((32, 2), (256, 8)):  # 5 blocks of 64 elements; the default: one block
        monkeypatch.setattr(kc, "_SUM_THREADS", threads)
        monkeypatch.setattr(kc, "_SUM_ITEMS", items)
        out = dev.full(bounds.size - 1, np.nan, np.float64)
        kc.segment_sumsq(g_d, b_d, out)
        got = dev.to_host(out)
        assert got.dtype == np.float64
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=0, err_msg=f"{threads} threads x {items}")
    assert want[1] == 0 and dev.to_host(out)[1] == 0


@pytest.mark.parametrize("name", ["nadam", "adagrad", "adadelta", "adamax", "lion"])
def test_optimizer_classes_on_cuda_match_cpu(cuda_device, name):
    # the Python side (hyperparameters, Nadam's schedule, Adagrad's initial accumulator) on the device
    from nbmodel import optimizers

    r = np.random.default_rng(29)
    p = r.standard_normal(40)
    segments = [(0, 15), (15, 25)]
    host = type(optimizers.get(name))(learning_rate=0.05, clipnorm=1.0, weight_decay=0.01)
    dev_opt = optimizers.deserialize(optimizers.serialize(host)).to(cuda_device)
    p_h, p_d = p.copy(), cuda_device.asarray(p)
    host.build(p_h, segments)
    dev_opt.build(p_d, segments)
    for _ in range(3):
        g = r.standard_normal(40)
        host.apply(p_h, g, 0.5)
        dev_opt.apply(p_d, cuda_device.asarray(g), 0.5)
    np.testing.assert_allclose(cuda_device.to_host(p_d), p_h, **F64_TOL)
    for k, v in host.get_state().items():
        np.testing.assert_allclose(dev_opt.get_state()[k], v, **F64_TOL, err_msg=k)
