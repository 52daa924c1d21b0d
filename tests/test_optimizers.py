"""Optimizers: flat-buffer kernels against the float64 Keras-rule reference, PyTorch, state, errors."""
import numpy as np
import pytest

from nbmodel import optimizers, schedules
from nbmodel.kernels.reference.optim import Reference

SHAPES = [(3, 4), (4,), (2, 3), (1,)]


def _problem(seed, dtype=np.float64):
    """Flat params with 4 variables (segments) and a sequence of raw gradient sums."""
    r = np.random.default_rng(seed)
    sizes = [int(np.prod(s)) for s in SHAPES]
    offs = np.cumsum([0] + sizes)
    segments = [(int(o), int(s)) for o, s in zip(offs[:-1], sizes)]
    params = r.standard_normal(offs[-1]).astype(dtype)
    grads = [(r.standard_normal(offs[-1]) * 3).astype(dtype) for _ in range(5)]
    return params, segments, grads


def _run_both(opt, ref, seed=0, count=4, dtype=np.float64):
    params, segments, grads = _problem(seed, dtype)
    ref_vars = [params[o:o + s].astype(np.float64) for o, s in segments]
    opt.build(params, segments)
    for g in grads:
        g_before = g.copy()
        opt.apply(params, g, 1.0 / count)
        assert np.array_equal(g, g_before), "apply must not modify grads_flat"
        ref.step(ref_vars, [g[o:o + s].astype(np.float64) / count for o, s in segments])
    assert opt.iterations == len(grads)
    return params, np.concatenate(ref_vars)


SCHED = schedules.ExponentialDecay(0.05, decay_steps=2, decay_rate=0.5)

CONFIGS = {
    "sgd": (lambda **c: optimizers.SGD(0.1, **c), dict(kind="sgd", learning_rate=0.1)),
    "sgd_momentum": (lambda **c: optimizers.SGD(0.1, momentum=0.9, **c),
                     dict(kind="sgd", learning_rate=0.1, momentum=0.9)),
    "sgd_nesterov": (lambda **c: optimizers.SGD(SCHED, momentum=0.8, nesterov=True, weight_decay=0.1, **c),
                     dict(kind="sgd", learning_rate=SCHED, momentum=0.8, nesterov=True, weight_decay=0.1)),
    "adam": (lambda **c: optimizers.Adam(0.01, **c), dict(kind="adam", learning_rate=0.01)),
    "adam_amsgrad_sched": (lambda **c: optimizers.Adam(SCHED, beta_1=0.8, beta_2=0.9, epsilon=1e-3,
                                                       amsgrad=True, **c),
                           dict(kind="adam", learning_rate=SCHED, beta_1=0.8, beta_2=0.9, epsilon=1e-3,
                                amsgrad=True)),
    "adamw": (lambda **c: optimizers.AdamW(0.01, weight_decay=0.05, **c),
              dict(kind="adamw", learning_rate=0.01, weight_decay=0.05)),
    "rmsprop": (lambda **c: optimizers.RMSprop(0.01, **c), dict(kind="rmsprop", learning_rate=0.01)),
    "rmsprop_centered_momentum": (lambda **c: optimizers.RMSprop(SCHED, rho=0.8, momentum=0.5, centered=True,
                                                                 epsilon=1e-4, **c),
                                  dict(kind="rmsprop", learning_rate=SCHED, rho=0.8, momentum=0.5,
                                       centered=True, epsilon=1e-4)),
    "nadam": (lambda **c: optimizers.Nadam(0.01, **c), dict(kind="nadam", learning_rate=0.01)),
    "nadam_sched_wd": (lambda **c: optimizers.Nadam(SCHED, beta_1=0.8, beta_2=0.9, epsilon=1e-3, weight_decay=0.1, **c),
                       dict(kind="nadam", learning_rate=SCHED, beta_1=0.8, beta_2=0.9, epsilon=1e-3,
                            weight_decay=0.1)),
    "adagrad": (lambda **c: optimizers.Adagrad(0.1, **c), dict(kind="adagrad", learning_rate=0.1)),
    "adagrad_init_sched": (lambda **c: optimizers.Adagrad(SCHED, initial_accumulator_value=0.5, epsilon=1e-3, **c),
                           dict(kind="adagrad", learning_rate=SCHED, initial_accumulator_value=0.5,
                                epsilon=1e-3)),
    "adadelta": (lambda **c: optimizers.Adadelta(1.0, **c), dict(kind="adadelta", learning_rate=1.0)),
    "adadelta_rho_wd": (lambda **c: optimizers.Adadelta(0.5, rho=0.8, epsilon=1e-3, weight_decay=0.1, **c),
                        dict(kind="adadelta", learning_rate=0.5, rho=0.8, epsilon=1e-3, weight_decay=0.1)),
    "adamax": (lambda **c: optimizers.Adamax(0.01, **c), dict(kind="adamax", learning_rate=0.01)),
    "adamax_sched": (lambda **c: optimizers.Adamax(SCHED, beta_1=0.7, beta_2=0.8, epsilon=1e-3, **c),
                     dict(kind="adamax", learning_rate=SCHED, beta_1=0.7, beta_2=0.8, epsilon=1e-3)),
    "lion": (lambda **c: optimizers.Lion(0.01, **c), dict(kind="lion", learning_rate=0.01)),
    "lion_sched_wd": (lambda **c: optimizers.Lion(SCHED, beta_1=0.5, beta_2=0.7, weight_decay=0.1, **c),
                      dict(kind="lion", learning_rate=SCHED, beta_1=0.5, beta_2=0.7, weight_decay=0.1)),
}
CLIPS = {"none": {}, "clipnorm": {"clipnorm": 0.7}, "clipvalue": {"clipvalue": 0.3},
         "global_clipnorm": {"global_clipnorm": 1.1}}


@pytest.mark.parametrize("config", sorted(CONFIGS))
@pytest.mark.parametrize("clip", sorted(CLIPS))
def test_matches_keras_rule_reference(config, clip):
    make, ref_kw = CONFIGS[config]
    ref_kw = dict(ref_kw)
    kind = ref_kw.pop("kind")
    opt = make(**CLIPS[clip])
    params, expected = _run_both(opt, Reference(kind, **ref_kw, **CLIPS[clip]))
    np.testing.assert_allclose(params, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("config", ["sgd_momentum", "adamw", "rmsprop_centered_momentum", "nadam_sched_wd",
                                    "adagrad_init_sched", "adadelta_rho_wd", "adamax_sched"])
def test_float32_stays_float32(config):
    make, ref_kw = CONFIGS[config]
    ref_kw = dict(ref_kw)
    kind = ref_kw.pop("kind")
    opt = make(clipnorm=1.0)
    params, expected = _run_both(opt, Reference(kind, **ref_kw, clipnorm=1.0), dtype=np.float32)
    assert params.dtype == np.float32
    assert all(s.dtype == np.float32 for s in opt.slots.values())
    np.testing.assert_allclose(params, expected, rtol=1e-4, atol=1e-5)


def test_lion_float32_and_sign_of_zero():
    # float32 Lion moves every element by exactly lr per step (sign is +-1), or 0 where b1 m + (1 - b1) g == 0
    opt = optimizers.Lion(0.25, beta_1=0.5, beta_2=0.5)
    p = np.zeros(4, np.float32)
    opt.apply(p, np.array([2.0, -3.0, 0.0, np.nan], np.float32))
    assert p.dtype == np.float32 and opt.slots["momentum"].dtype == np.float32
    np.testing.assert_array_equal(p[:3], [-0.25, 0.25, 0.0])
    assert np.isnan(p[3])
    np.testing.assert_array_equal(opt.slots["momentum"][:3], [1.0, -1.5, 0.0])
    opt.apply(p, np.array([-1.0, 1.5, 0.0, 0.0], np.float32))  # b1 m + (1 - b1) g = 0 for the first two
    np.testing.assert_array_equal(p[:3], [-0.25, 0.25, 0.0])


def test_adamax_infinity_norm_and_adagrad_initial_accumulator():
    opt = optimizers.Adamax(1.0, beta_1=0.5, beta_2=0.5, epsilon=0.0)
    p = np.zeros(2)
    opt.apply(p, np.array([4.0, -2.0]))
    np.testing.assert_array_equal(opt.slots["norm"], [4.0, 2.0])
    opt.apply(p, np.array([1.0, -3.0]))  # u = max(0.5 u, |g|)
    np.testing.assert_array_equal(opt.slots["norm"], [2.0, 3.0])
    ada = optimizers.Adagrad(1.0, initial_accumulator_value=3.0, epsilon=0.0)
    q = np.zeros(1)
    ada.apply(q, np.array([1.0]))  # acc = 3 + 1: p = -1 / 2
    assert q[0] == -0.5 and ada.slots["accumulator"][0] == 4.0


def test_nadam_momentum_cache_schedule():
    # Keras 3: u_t = beta_1 (1 - 0.5 * 0.96**t) (not torch's 0.96**(0.004 t)); one element by hand
    b1, b2, lr, eps = 0.9, 0.999, 0.1, 1e-7
    g1, g2 = 2.0, -1.0
    u = [b1 * (1 - 0.5 * 0.96 ** t) for t in (1, 2, 3)]
    m1, v1 = (1 - b1) * g1, (1 - b2) * g1 ** 2
    p1 = -lr * (u[1] * m1 / (1 - u[0] * u[1]) + (1 - u[0]) * g1 / (1 - u[0])) / (np.sqrt(v1 / (1 - b2)) + eps)
    m2, v2 = m1 + (g2 - m1) * (1 - b1), v1 + (g2 ** 2 - v1) * (1 - b2)
    p2 = p1 - lr * (u[2] * m2 / (1 - u[0] * u[1] * u[2]) + (1 - u[1]) * g2 / (1 - u[0] * u[1])) / (
        np.sqrt(v2 / (1 - b2 ** 2)) + eps)
    opt = optimizers.Nadam(lr)
    p = np.zeros(1)
    opt.apply(p, np.array([g1]))
    assert p[0] == pytest.approx(p1, rel=1e-14)
    opt.apply(p, np.array([g2]))
    assert p[0] == pytest.approx(p2, rel=1e-14)


def test_large_buffer_parallel_chunks():
    # above PAR_MIN the buffer is split into chunks run in prange; chunk edges cross segments
    r = np.random.default_rng(1)
    sizes = [70000, 5, 30000]
    n = sum(sizes)
    segments = [(0, 70000), (70000, 5), (70005, 30000)]
    p = r.standard_normal(n)
    g = r.standard_normal(n)
    opt = optimizers.Adam(0.01, clipnorm=50.0)
    ref = Reference("adam", learning_rate=0.01, clipnorm=50.0)
    ref_vars = [p[o:o + s].copy() for o, s in segments]
    opt.build(p, segments)
    for _ in range(2):
        opt.apply(p, g, 0.5)
        ref.step(ref_vars, [g[o:o + s] * 0.5 for o, s in segments])
    np.testing.assert_allclose(p, np.concatenate(ref_vars), rtol=1e-12, atol=1e-14)


def test_segments_with_gaps_and_default_build():
    p = np.arange(10, dtype=np.float64)
    g = np.ones(10)
    opt = optimizers.SGD(0.5, clipnorm=1.0)
    opt.build(p, [(2, 4), (7, 2)])  # gaps are not clipped
    opt.apply(p, g)
    np.testing.assert_allclose(p[2:6], np.arange(2, 6) - 0.5 * 0.5)
    np.testing.assert_allclose(p[7:9], np.arange(7, 9) - 0.5 / np.sqrt(2))
    np.testing.assert_allclose(p[[0, 1, 6, 9]], np.array([0, 1, 6, 9]) - 0.5)
    q = np.zeros(3)
    opt2 = optimizers.SGD(1.0)
    opt2.apply(q, np.array([1.0, 2.0, 3.0]))  # builds itself with one segment
    np.testing.assert_allclose(q, [-1.0, -2.0, -3.0])


def test_learning_rate_schedule_read_before_step():
    sched = schedules.PiecewiseConstantDecay([1, 2], [1.0, 0.1, 0.01])
    opt = optimizers.SGD(sched)
    p = np.zeros(1)
    seen = []
    for _ in range(4):
        seen.append(opt.current_learning_rate)
        opt.apply(p, np.ones(1))
    assert seen == [1.0, 1.0, 0.1, 0.01]
    assert p[0] == pytest.approx(-(1.0 + 1.0 + 0.1 + 0.01))
    with pytest.raises(TypeError, match="not settable"):
        opt.learning_rate = 0.5
    fixed = optimizers.Adam(0.01)
    fixed.learning_rate = 0.002
    assert fixed.learning_rate == fixed.current_learning_rate == 0.002


def test_state_roundtrip_continues_identically():
    params, segments, grads = _problem(3)
    a = optimizers.RMSprop(0.01, momentum=0.9, centered=True)
    pa = params.copy()
    a.build(pa, segments)
    for g in grads[:3]:
        a.apply(pa, g, 0.25)
    state = a.get_state()
    assert sorted(state) == ["average_gradient", "iterations", "momentum", "velocity"]
    assert int(state["iterations"]) == 3
    b = optimizers.get(optimizers.serialize(a))
    pb = pa.copy()
    b.set_state(state)  # before build: kept and applied by build
    b.build(pb, segments)
    assert b.iterations == 3
    for g in grads[3:]:
        a.apply(pa, g, 0.25)
        b.apply(pb, g, 0.25)
    np.testing.assert_array_equal(pa, pb)
    with pytest.raises(ValueError, match="slots"):
        b.set_state({"velocity": np.zeros(pb.size)})


@pytest.mark.parametrize("make, slots", [
    (lambda: optimizers.Nadam(0.01), ["momentum", "velocity"]),
    (lambda: optimizers.Adagrad(0.1, initial_accumulator_value=0.3), ["accumulator"]),
    (lambda: optimizers.Adadelta(1.0), ["accumulated_delta_var", "accumulated_grad"]),
    (lambda: optimizers.Adamax(0.01), ["momentum", "norm"]),
    (lambda: optimizers.Lion(0.01), ["momentum"])])
def test_new_optimizers_state_roundtrip(make, slots):
    # Keras slot names; a restored optimizer (Nadam: its momentum-cache product is rebuilt from
    # iterations; Adagrad: the loaded accumulator replaces the initial value) continues identically
    params, segments, grads = _problem(4)
    a = make()
    pa = params.copy()
    a.build(pa, segments)
    for g in grads[:3]:
        a.apply(pa, g, 0.5)
    state = a.get_state()
    assert sorted(state) == sorted(slots + ["iterations"])
    b = optimizers.deserialize(optimizers.serialize(a))
    assert type(b) is type(a)
    pb = pa.copy()
    b.set_state(state)
    b.build(pb, segments)
    for g in grads[3:]:
        a.apply(pa, g, 0.5)
        b.apply(pb, g, 0.5)
    np.testing.assert_array_equal(pa, pb)
    c = make()  # set_state after build, then iterations moved back
    pc = params.copy()
    c.build(pc, segments)
    for g in grads:
        c.apply(pc, g, 0.5)
    c.set_state(state)
    pc[:] = pb
    c.apply(pc, grads[3], 0.5)
    d = make()
    pd = pb.copy()
    d.set_state(state)
    d.build(pd, segments)
    d.apply(pd, grads[3], 0.5)
    np.testing.assert_array_equal(pc, pd)


def test_new_optimizers_in_a_model_save_load(tmp_path):
    import nbmodel as nb
    from nbmodel import layers

    r = np.random.default_rng(0)
    x, y = r.standard_normal((8, 3)), r.standard_normal((8, 2))
    for opt in ("nadam", "adagrad", "adadelta", "adamax", "lion"):
        model = nb.Sequential([layers.Input((3,)), layers.Dense(2)], seed=0)
        model.compile(optimizer=opt, loss="mse")
        model.fit(x, y, batch_size=4, epochs=1, verbose=0, shuffle=False)
        model.save(tmp_path / f"{opt}.nbm")
        back = nb.load_model(tmp_path / f"{opt}.nbm")
        assert type(back.optimizer) is type(model.optimizer) and back.optimizer.name == opt
        for k, v in model.optimizer.get_state().items():
            np.testing.assert_array_equal(back.optimizer.get_state()[k], v, err_msg=f"{opt} {k}")
        model.fit(x, y, batch_size=4, epochs=1, verbose=0, shuffle=False)
        back.fit(x, y, batch_size=4, epochs=1, verbose=0, shuffle=False)
        for w1, w2 in zip(model.get_weights(), back.get_weights()):
            np.testing.assert_array_equal(w1, w2, err_msg=opt)


def test_config_roundtrip_with_schedule():
    opt = optimizers.AdamW(schedules.CosineDecay(0.01, 100, alpha=0.1, warmup_target=0.02, warmup_steps=5),
                           weight_decay=0.01, beta_1=0.85, global_clipnorm=2.0)
    cfg = opt.get_config()
    assert cfg["learning_rate"]["class_name"] == "CosineDecay"
    back = optimizers.AdamW.from_config(cfg)
    assert back.get_config() == cfg
    for cls_name, make in (("SGD", lambda: optimizers.SGD(0.1, momentum=0.5, nesterov=True)),
                           ("RMSprop", lambda: optimizers.RMSprop(centered=True)),
                           ("Adam", lambda: optimizers.Adam(amsgrad=True, clipvalue=1.0)),
                           ("Nadam", lambda: optimizers.Nadam(0.002, beta_1=0.8, clipnorm=1.0)),
                           ("Adagrad", lambda: optimizers.Adagrad(initial_accumulator_value=0.2, weight_decay=0.1)),
                           ("Adadelta", lambda: optimizers.Adadelta(1.0, rho=0.9, epsilon=1e-6)),
                           ("Adamax", lambda: optimizers.Adamax(SCHED, beta_2=0.99)),
                           ("Lion", lambda: optimizers.Lion(1e-4, beta_1=0.95, beta_2=0.98, global_clipnorm=1.0))):
        o = make()
        ser = optimizers.serialize(o)
        assert ser["class_name"] == cls_name
        assert optimizers.deserialize(ser).get_config() == o.get_config()


def test_get_and_errors():
    assert isinstance(optimizers.get("ADAM"), optimizers.Adam)
    assert isinstance(optimizers.get("sgd"), optimizers.SGD)
    assert isinstance(optimizers.get("AdamW"), optimizers.AdamW)
    assert isinstance(optimizers.get("rmsprop"), optimizers.RMSprop)
    assert optimizers.get("sgd").get_config()["learning_rate"] == 0.01
    defaults = {"nadam": (optimizers.Nadam, dict(learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-7)),
                "adagrad": (optimizers.Adagrad, dict(learning_rate=0.001, initial_accumulator_value=0.1,
                                                     epsilon=1e-7)),
                "adadelta": (optimizers.Adadelta, dict(learning_rate=0.001, rho=0.95, epsilon=1e-7)),
                "adamax": (optimizers.Adamax, dict(learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-7)),
                "lion": (optimizers.Lion, dict(learning_rate=0.001, beta_1=0.9, beta_2=0.99))}
    for name, (cls, want) in defaults.items():  # Keras 3 defaults and names
        opt = optimizers.get(name.upper())
        assert type(opt) is cls and opt.name == name
        cfg = opt.get_config()
        assert {k: cfg[k] for k in want} == want and cfg["weight_decay"] is None
    opt = optimizers.Adam()
    assert optimizers.get(opt) is opt
    with pytest.raises(ValueError, match="`optimizer`.*adamw"):
        optimizers.get("adamm")
    with pytest.raises(ValueError, match="only one of"):
        optimizers.SGD(clipnorm=1.0, clipvalue=1.0)
    with pytest.raises(ValueError, match="clipnorm"):
        optimizers.SGD(clipnorm=-1.0)
    with pytest.raises(ValueError, match="learning_rate"):
        optimizers.SGD(learning_rate="fast")
    with pytest.raises(ValueError, match="beta_1"):
        optimizers.Adam(beta_1=1.0)
    for make, msg in ((lambda: optimizers.Nadam(-0.1), r"Nadam: learning_rate must be >= 0"),
                      (lambda: optimizers.Nadam(beta_2=1.0), r"Nadam: argument `beta_2` must be in \[0, 1\)"),
                      (lambda: optimizers.Nadam(epsilon=-1.0), r"Nadam: argument `epsilon`"),
                      (lambda: optimizers.Adagrad(initial_accumulator_value=-0.1),
                       r"Adagrad: argument `initial_accumulator_value` must be >= 0"),
                      (lambda: optimizers.Adagrad(-1.0), r"Adagrad: learning_rate"),
                      (lambda: optimizers.Adadelta(rho=1.5), r"Adadelta: argument `rho` must be in \[0, 1\]"),
                      (lambda: optimizers.Adadelta(rho=-0.1), r"Adadelta: argument `rho`"),
                      (lambda: optimizers.Adadelta(rho="high"), r"Adadelta: argument `rho`"),
                      (lambda: optimizers.Adamax(beta_1=-0.5), r"Adamax: argument `beta_1` must be in \[0, 1\)"),
                      (lambda: optimizers.Adamax(beta_2=1.01), r"Adamax: argument `beta_2` must be in \[0, 1\]"),
                      (lambda: optimizers.Lion(beta_1=0.0), r"Lion: argument `beta_1` must be in \(0, 1\]"),
                      (lambda: optimizers.Lion(beta_2=2.0), r"Lion: argument `beta_2`"),
                      (lambda: optimizers.Lion(weight_decay=-1.0), r"Lion: argument `weight_decay`"),
                      (lambda: optimizers.Adamax(clipnorm=1.0, global_clipnorm=1.0), r"Adamax: only one of")):
        with pytest.raises(ValueError, match=msg):
            make()
    optimizers.Adadelta(rho=1.0)
    optimizers.Lion(beta_1=1.0, beta_2=0.0)
    opt = optimizers.SGD()
    opt.build(np.zeros(4, np.float32), [(0, 4)])
    with pytest.raises(ValueError, match="grads_flat"):
        opt.apply(np.zeros(4, np.float32), np.zeros(4))
    with pytest.raises(ValueError, match="built for 4"):
        opt.apply(np.zeros(5, np.float32), np.zeros(5, np.float32))
    with pytest.raises(ValueError, match="overlaps"):
        optimizers.SGD().build(np.zeros(4), [(0, 3), (2, 2)])


def test_nan_gradient_propagates():
    p = np.zeros(3)
    optimizers.SGD(0.1, clipvalue=1.0).apply(p, np.array([np.nan, 5.0, -5.0]))
    assert np.isnan(p[0]) and p[1] == pytest.approx(-0.1) and p[2] == pytest.approx(0.1)
    p = np.zeros(2)
    optimizers.SGD(0.1, global_clipnorm=1.0).apply(p, np.array([np.inf, 1.0]))
    assert np.isnan(p).all()  # Keras: a non-finite global norm makes every update NaN


# ----------------------------------------------------------------- PyTorch
def _torch_run(torch_opt_factory, opt, steps=5, seed=11):
    torch = pytest.importorskip("torch")
    r = np.random.default_rng(seed)
    p0 = r.standard_normal(7)
    gs = [r.standard_normal(7) for _ in range(steps)]
    tp = torch.nn.Parameter(torch.tensor(p0))
    topt = torch_opt_factory([tp])
    p = p0.copy()
    for g in gs:
        tp.grad = torch.tensor(g)
        topt.step()
        opt.apply(p, g)
    return p, tp.detach().numpy()


def test_against_torch():
    torch = pytest.importorskip("torch")
    cases = [
        (lambda ps: torch.optim.SGD(ps, lr=0.1), optimizers.SGD(0.1)),
        (lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9), optimizers.SGD(0.1, momentum=0.9)),
        (lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.7, nesterov=True),
         optimizers.SGD(0.05, momentum=0.7, nesterov=True)),
        # torch puts eps outside sqrt(v_hat): equal when eps is negligible
        (lambda ps: torch.optim.Adam(ps, lr=0.01, betas=(0.8, 0.95), eps=1e-12),
         optimizers.Adam(0.01, beta_1=0.8, beta_2=0.95, epsilon=1e-12)),
        (lambda ps: torch.optim.Adam(ps, lr=0.01, eps=1e-12, amsgrad=True),
         optimizers.Adam(0.01, epsilon=1e-12, amsgrad=True)),
        (lambda ps: torch.optim.AdamW(ps, lr=0.01, weight_decay=0.1, eps=1e-12),
         optimizers.AdamW(0.01, weight_decay=0.1, epsilon=1e-12)),
        # torch RMSprop: alpha = rho, eps outside the sqrt
        (lambda ps: torch.optim.RMSprop(ps, lr=0.01, alpha=0.9, eps=1e-12),
         optimizers.RMSprop(0.01, rho=0.9, epsilon=1e-12)),
        (lambda ps: torch.optim.RMSprop(ps, lr=0.01, alpha=0.8, eps=1e-12, momentum=0.5, centered=True),
         optimizers.RMSprop(0.01, rho=0.8, epsilon=1e-12, momentum=0.5, centered=True)),
        # torch Adagrad: eps outside the sqrt; equal when eps is negligible (lr_decay 0)
        (lambda ps: torch.optim.Adagrad(ps, lr=0.1, initial_accumulator_value=0.3, eps=1e-12),
         optimizers.Adagrad(0.1, initial_accumulator_value=0.3, epsilon=1e-12)),
        # torch Adadelta is the same formula, eps in both square roots: any eps
        (lambda ps: torch.optim.Adadelta(ps, lr=0.5, rho=0.8, eps=1e-3),
         optimizers.Adadelta(0.5, rho=0.8, epsilon=1e-3)),
        (lambda ps: torch.optim.Adadelta(ps, lr=1.0, rho=0.95, eps=1e-6, weight_decay=0.0),
         optimizers.Adadelta(1.0, epsilon=1e-6)),
        # torch Adamax adds eps inside the max (max(b2 u, |g| + eps)); Keras after it: negligible eps
        (lambda ps: torch.optim.Adamax(ps, lr=0.01, betas=(0.7, 0.8), eps=1e-12),
         optimizers.Adamax(0.01, beta_1=0.7, beta_2=0.8, epsilon=1e-12)),
        # torch.optim.NAdam is not compared: its schedule is mu_t = b1 (1 - 0.5 * 0.96**(0.004 t))
        # (momentum_decay=4e-3, Keras 2's form) where Keras 3 uses 0.96**t, and torch has no Lion
    ]
    for factory, opt in cases:
        ours, theirs = _torch_run(factory, opt)
        np.testing.assert_allclose(ours, theirs, rtol=1e-9, atol=1e-10, err_msg=repr(opt))


def test_settable_learning_rate_is_the_float_or_none_under_a_schedule():
    opt = optimizers.Adam(0.01)
    opt.learning_rate = 0.005  # as ReduceLROnPlateau does
    assert opt.settable_learning_rate == 0.005
    assert optimizers.SGD(SCHED).settable_learning_rate is None
