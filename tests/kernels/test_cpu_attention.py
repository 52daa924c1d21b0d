"""CPU attention kernels (nbmodel/kernels/cpu/attention.py, with the layer-norm kernels of
norm.py the encoder uses) called directly: they stay in float32 for float32 inputs."""
import numpy as np

from nbmodel import layers as L
from nbmodel.testing import float64_ops


def rng(seed=0):
    return np.random.default_rng(seed)


def test_mha_kernels_stay_float32():
    from nbmodel.kernels.cpu import attention as K

    b, t, h, kd = 2, 4, 2, 3
    f = np.float32
    r = rng()
    q2 = r.standard_normal((b * t, 5)).astype(f)
    w = r.standard_normal((5, h * kd)).astype(f)
    bias = np.zeros(h * kd, f)
    wo = r.standard_normal((h * kd, 5)).astype(f)
    bo = np.zeros(5, f)
    mask = np.ones((1, 1, t, t), bool)
    u = r.random((b, h, t, t)).astype(f)

    def z(*s):
        return np.zeros(s, f)

    args = (q2, q2, q2, w, bias, w, bias, w, bias, wo, bo, True, f(0.5), b, t, t, h, kd, kd, mask, True,
            True, True, f(0.1), u, z(b * t, h * kd), z(b * t, h * kd), z(b * t, h * kd), z(b, h, t, kd),
            z(b, h, t, kd), z(b, h, t, kd), z(b, h, t, t), z(t, t), z(t, kd),
            z(b * t, h * kd), z(b * t, 5))
    # the launchers are Python; each compiled stage they call must stay float32
    (q2_, k2_, v2_, wq, bq, wk, bk, wv, bv, wo_, bo_, use_bias, scale, bb, tq, tk, hh, kd_, vd_, mask_, has_mask,
     causal, keep, rate, u_, qtmp, ktmp, vtmp, qh, kh, vh, probs, pdrop, otmp, o2, out) = args
    assert float64_ops(K._project_heads, q2_, k2_, v2_, wq, bq, wk, bk, wv, bv, use_bias, scale, bb, tq, tk, hh,
                       kd_, vd_, qtmp, ktmp, vtmp, qh, kh, vh) == []
    core = (qh, kh, vh, mask_, has_mask, causal, keep, rate, u_, probs)
    assert float64_ops(K._attend_forward, *core, pdrop, otmp, o2) == []
    assert float64_ops(K._attend_forward_par, *core, o2) == []
    assert float64_ops(K._output_projection, o2, wo_, bo_, use_bias, out) == []
    K.mha_forward(*args)
    dout, ds = r.standard_normal((b * t, 5)).astype(f), z(b, h, t, t)
    do2, g = z(b * t, h * kd), [z(b * t, h * kd) for _ in range(3)]
    assert float64_ops(K._output_backward, o2, wo, dout, True, z(h * kd, 5), z(5), do2) == []
    ws = (z(t, kd), z(t, t), z(t, t), z(t, kd), z(t, kd), z(t, kd))
    core = (qh, kh, vh, probs, f(0.1), u, do2, ds, True, f(0.5))
    assert float64_ops(K._attend_backward, *core, *ws, g[0], 0, g[1], 0, g[2], 0) == []
    assert float64_ops(K._attend_backward_par, *core, g[0], 0, g[1], 0, g[2], 0) == []
    assert float64_ops(K._projections_backward, q2, q2, q2, w, w, w, *g, True, True, z(5, h * kd), z(h * kd),
                       z(5, h * kd), z(h * kd), z(5, h * kd), z(h * kd), z(b * t, 5), z(b * t, 5), z(b * t, 5)) == []


def test_ffn_kernels_stay_float32():
    from nbmodel.kernels.cpu import attention as K

    f = np.float32
    x = rng().standard_normal((4, 6)).astype(f)
    w1 = rng(1).standard_normal((6, 8)).astype(f)
    w2 = rng(2).standard_normal((8, 6)).astype(f)
    b1, b2 = np.zeros(8, f), np.zeros(6, f)
    hid, pre, out = np.zeros((4, 8), f), np.zeros((4, 8), f), np.zeros((4, 6), f)
    for code in (1, 4):  # relu, gelu
        assert float64_ops(K.ffn_forward, x, w1, b1, w2, b2, code, True, pre, hid, out) == []
        assert float64_ops(K._ffn_backward_serial, x, w1, w2, pre, hid, out, code, True, hid.copy(), w1.copy(),
                           b1.copy(), w2.copy(), b2.copy(), x.copy()) == []
        assert float64_ops(K._ffn_input_grads_blocks, w1, w2, pre, hid, out, code, True, 2, hid.copy(),
                           np.zeros((2, 8), f), x.copy()) == []
        assert float64_ops(K._ffn_weight_grads, x, hid, out, hid.copy(), w1.copy(), w2.copy(), b2.copy()) == []



def test_every_encoder_kernel_stays_float32(monkeypatch):
    """Record the float32 arguments each kernel gets in a real training pass, then check its IR."""
    from nbmodel.kernels.cpu import attention as KA
    from nbmodel.kernels.cpu import norm as KN

    # mha_self_forward/backward and the layer norms are Python launchers: record the compiled
    # stages they call
    names = {KA: ["_project_self", "_attend_forward", "_output_projection", "_output_backward", "_attend_backward",
                  "_project_backward", "ffn_forward", "_ffn_backward_serial"],
             KN: ["_add_ln_forward_rows", "_ln_backward_rows"]}
    calls = {}
    for mod, fns in names.items():
        for fn in fns:
            orig = getattr(mod, fn)

            def rec(*args, _orig=orig, _fn=fn):
                calls.setdefault(_fn, (_orig, args))
                return _orig(*args)
            monkeypatch.setattr(mod, fn, rec)
    x = rng().standard_normal((2, 3, 4)).astype(np.float32)
    layer = L.TransformerEncoder(2, 2, 8, use_causal_mask=True, seed=0)
    layer.forward(x, training=True)
    layer.backward(np.ones_like(x))
    assert set(calls) == {fn for fns in names.values() for fn in fns}
    for fn, (orig, args) in calls.items():
        assert float64_ops(orig, *args) == [], fn
