"""Learning-rate schedules against their closed forms (Keras 3 formulas)."""
import math

import pytest

from nbmodel import schedules


def test_exponential_decay():
    s = schedules.ExponentialDecay(0.1, decay_steps=10, decay_rate=0.5)
    for step in (0, 1, 5, 10, 25):
        assert s(step) == pytest.approx(0.1 * 0.5 ** (step / 10))
    st = schedules.ExponentialDecay(0.1, decay_steps=10, decay_rate=0.5, staircase=True)
    assert [st(k) for k in (0, 9, 10, 19, 20)] == pytest.approx([0.1, 0.1, 0.05, 0.05, 0.025])


def test_inverse_time_decay():
    s = schedules.InverseTimeDecay(1.0, decay_steps=4, decay_rate=0.5)
    for step in (0, 3, 4, 11):
        assert s(step) == pytest.approx(1.0 / (1 + 0.5 * step / 4))
    st = schedules.InverseTimeDecay(1.0, decay_steps=4, decay_rate=0.5, staircase=True)
    assert st(7) == pytest.approx(1.0 / 1.5) and st(8) == pytest.approx(0.5)


def test_piecewise_constant():
    s = schedules.PiecewiseConstantDecay([10, 20], [1.0, 0.5, 0.1])
    assert [s(k) for k in (0, 10, 11, 20, 21, 1000)] == [1.0, 1.0, 0.5, 0.5, 0.1, 0.1]
    with pytest.raises(ValueError, match="plus 1"):
        schedules.PiecewiseConstantDecay([10, 20], [1.0, 0.5])


def test_cosine_decay():
    s = schedules.CosineDecay(0.2, decay_steps=100, alpha=0.1)
    for step in (0, 30, 100, 500):
        frac = min(step, 100) / 100
        assert s(step) == pytest.approx(0.2 * (0.9 * 0.5 * (1 + math.cos(math.pi * frac)) + 0.1))
    assert s(100) == pytest.approx(0.02)


def test_cosine_decay_warmup():
    s = schedules.CosineDecay(0.0, decay_steps=10, warmup_target=1.0, warmup_steps=5)
    assert [s(k) for k in (0, 1, 4)] == pytest.approx([0.0, 0.2, 0.8])
    assert s(5) == pytest.approx(1.0)  # warmup over: decay starts from the target
    assert s(10) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))
    assert s(15) == pytest.approx(0.0, abs=1e-15) and s(99) == pytest.approx(0.0, abs=1e-15)


def test_serialize_roundtrip_and_custom():
    for s in (schedules.ExponentialDecay(0.1, 3, 0.9, staircase=True),
              schedules.PiecewiseConstantDecay([1, 5], [0.3, 0.2, 0.1]),
              schedules.CosineDecay(0.1, 50, alpha=0.05, warmup_target=0.3, warmup_steps=4),
              schedules.InverseTimeDecay(0.5, 7, 0.2)):
        back = schedules.deserialize(schedules.serialize(s))
        assert type(back) is type(s) and back.get_config() == s.get_config()
        assert [back(k) for k in range(0, 60, 7)] == [s(k) for k in range(0, 60, 7)]

    class Halving(schedules.LearningRateSchedule):
        def __init__(self, lr):
            self.lr = lr

        def __call__(self, step):
            return self.lr / 2 ** step

        def get_config(self):
            return {"lr": self.lr}

    back = schedules.deserialize(schedules.serialize(Halving(1.0)))
    assert back(3) == 0.125
    with pytest.raises(ValueError, match="unknown schedule"):
        schedules.deserialize({"class_name": "Nope", "config": {}})
    with pytest.raises(ValueError, match="decay_steps"):
        schedules.CosineDecay(0.1, 0)
