"""Functional Model: several inputs and outputs, merges, fan-out, per-output losses,
loss_weights and metrics, and gradients checked against finite differences."""
import numpy as np
import pytest

import nbmodel as nb
from nbmodel import layers


def two_in_two_out():
    a = layers.Input((3,), name="a")
    b = layers.Input((2,), name="b")
    ha = layers.Dense(4, activation="tanh", name="ha")(a)
    hb = layers.Dense(4, activation="sigmoid", name="hb")(b)
    s = layers.Add(name="add")([ha, hb])
    c = layers.Concatenate(name="cat")([s, b])          # b fans out: hb and cat
    cls = layers.Dense(3, activation="softmax", name="cls")(c)
    reg = layers.Dense(1, name="reg")(s)                 # s fans out: cat and reg
    return nb.Model(inputs=[a, b], outputs=[cls, reg], seed=0)


def data(n=24, seed=0, dtype="float32"):
    rng = np.random.default_rng(seed)
    xa = rng.standard_normal((n, 3)).astype(dtype)
    xb = rng.standard_normal((n, 2)).astype(dtype)
    y_cls = (xa[:, 0] > 0).astype(np.int64) + (xb[:, 0] > 1)
    y_reg = (xa[:, 1:2] - xb[:, :1]).astype(dtype)
    return [xa, xb], [y_cls, y_reg]


def compile_two(model, optimizer="adam"):
    model.compile(optimizer=optimizer,
                  loss={"cls": "sparse_categorical_crossentropy", "reg": "mse"},
                  loss_weights={"cls": 1.0, "reg": 0.5},
                  metrics={"cls": ["accuracy"], "reg": ["mae"]})
    return model


def test_two_inputs_two_outputs_train_with_keras_history_keys():
    x, y = data(n=48)
    model = compile_two(two_in_two_out(), nb.optimizers.Adam(0.02))
    hist = model.fit(x, y, epochs=8, batch_size=8, validation_split=0.25, verbose=0)
    keys = {"loss", "cls_loss", "reg_loss", "cls_accuracy", "reg_mae"}
    assert set(hist.history) == keys | {"val_" + k for k in keys}
    h = hist.history
    assert h["loss"][-1] < 0.7 * h["loss"][0]
    # the total is the weighted sum of the per-output losses
    for i in range(8):
        assert h["loss"][i] == pytest.approx(h["cls_loss"][i] + 0.5 * h["reg_loss"][i], rel=1e-6)
        assert h["val_loss"][i] == pytest.approx(h["val_cls_loss"][i] + 0.5 * h["val_reg_loss"][i], rel=1e-6)


def test_evaluate_and_predict_several_outputs():
    x, y = data()
    model = compile_two(two_in_two_out())
    d = model.evaluate(x, y, return_dict=True)
    assert list(d) == ["loss", "cls_loss", "reg_loss", "cls_accuracy", "reg_mae"]
    values = model.evaluate(x, y, batch_size=5)
    assert values == pytest.approx(list(d.values()))
    assert model.metrics_names == list(d)
    p_cls, p_reg = model.predict(x, batch_size=7)
    assert p_cls.shape == (24, 3) and p_reg.shape == (24, 1)
    expected_cls = -np.mean(np.log(p_cls.astype(np.float64)[np.arange(24), y[0]]))
    expected_reg = np.mean((p_reg.astype(np.float64) - y[1]) ** 2)
    assert d["cls_loss"] == pytest.approx(expected_cls, rel=1e-5)
    assert d["reg_loss"] == pytest.approx(expected_reg, rel=1e-5)
    assert d["reg_mae"] == pytest.approx(np.mean(np.abs(p_reg - y[1])), rel=1e-5)
    assert d["loss"] == pytest.approx(expected_cls + 0.5 * expected_reg, rel=1e-5)


def test_dict_inputs_and_targets_by_name():
    x, y = data()
    model = compile_two(two_in_two_out())
    by_list = model.evaluate(x, y, return_dict=True)
    by_name = model.evaluate({"b": x[1], "a": x[0]}, {"reg": y[1], "cls": y[0]}, return_dict=True)
    assert by_name == pytest.approx(by_list)
    with pytest.raises(ValueError, match="no data for"):
        model.predict({"a": x[0]})


def test_list_losses_and_metrics_per_output():
    x, y = data()
    model = two_in_two_out()
    model.compile("sgd", loss=["sparse_categorical_crossentropy", "mae"], loss_weights=[2.0, 1.0],
                  metrics=[["accuracy"], ["mse"]])
    d = model.evaluate(x, y, return_dict=True)
    assert set(d) == {"loss", "cls_loss", "reg_loss", "cls_accuracy", "reg_mse"}
    assert d["loss"] == pytest.approx(2 * d["cls_loss"] + d["reg_loss"], rel=1e-6)
    with pytest.raises(ValueError, match="3 losses given for 2 outputs"):
        model.compile("sgd", loss=["mse", "mse", "mse"])


# -------------------------------------------------------------- gradients
def _flat(ws):
    return np.concatenate([w.reshape(-1) for w in ws])


def _unflat(v, like):
    out, off = [], 0
    for w in like:
        out.append(v[off:off + w.size].reshape(w.shape))
        off += w.size
    return out


def check_model_gradients(model, x, y, eps=1e-6):
    """One SGD(lr=1) step gives -gradient; compare it with central differences of test_on_batch."""
    w0 = model.get_weights()
    assert all(w.dtype == np.float64 for w in w0)
    model.train_on_batch(x, y)
    grad = _flat(w0) - _flat(model.get_weights())
    v0 = _flat(w0)
    num = np.empty_like(v0)
    for i in range(v0.size):
        vals = []
        for sign in (1, -1):
            v = v0.copy()
            v[i] += sign * eps
            model.set_weights(_unflat(v, w0))
            out = model.test_on_batch(x, y)
            vals.append(out[0] if isinstance(out, list) else out)
        num[i] = (vals[0] - vals[1]) / (2 * eps)
    model.set_weights(w0)
    np.testing.assert_allclose(grad, num, rtol=1e-5, atol=1e-8)
    assert np.abs(grad).max() > 1e-3  # the check is not vacuous
    return grad


def test_two_in_two_out_gradients_match_finite_differences(float64):
    x, y = data(n=6, dtype="float64")
    model = two_in_two_out()
    model.compile(nb.optimizers.SGD(1.0), loss={"cls": "sparse_categorical_crossentropy", "reg": "mse"},
                  loss_weights={"cls": 1.0, "reg": 0.5})
    check_model_gradients(model, x, y)
    # evaluate (batched) agrees with test_on_batch
    assert model.evaluate(x, y, batch_size=4)[0] == pytest.approx(model.test_on_batch(x, y)[0], rel=1e-12)


def test_fan_out_gradients_add_up(float64):
    rng = np.random.default_rng(2)
    inp = layers.Input((3,))
    h = layers.Dense(4, activation="tanh", name="shared")(inp)
    left = layers.Dense(2, name="left")(h)
    right = layers.Dense(2, activation="sigmoid", name="right")(h)
    out = layers.Add()([left, right])
    model = nb.Model(inp, out, seed=1)
    model.compile(nb.optimizers.SGD(1.0), "mse")
    x = rng.standard_normal((5, 3))
    y = rng.standard_normal((5, 2))
    grad = check_model_gradients(model, x, y)
    # were only one branch's gradient kept, the shared layer's (first 16 entries) would be off
    assert np.abs(grad[:16]).max() > 1e-3


def test_fan_out_of_a_model_input(float64):
    inp = layers.Input((3,))
    a = layers.Dense(2, name="a")(inp)
    b = layers.Dense(2, activation="tanh", name="b")(inp)
    model = nb.Model(inp, layers.Concatenate()([a, b]), seed=3)
    model.compile(nb.optimizers.SGD(1.0), "mse")
    rng = np.random.default_rng(4)
    check_model_gradients(model, rng.standard_normal((4, 3)), rng.standard_normal((4, 4)))


def test_functional_summary_and_layers():
    model = two_in_two_out()
    names = [layer.name for layer in model.layers]
    assert names[:2] == ["a", "b"] and set(names[2:]) == {"ha", "hb", "add", "cat", "cls", "reg"}
    assert model.get_layer("cls").units == 3
    lines = []
    model.summary(print_fn=lines.append)
    text = "\n".join(lines)
    for name in names:
        assert name in text
    assert model.count_params() == (3 * 4 + 4) + (2 * 4 + 4) + (6 * 3 + 3) + (4 + 1)


def test_graph_errors():
    a = layers.Input((3,))
    b = layers.Input((3,))
    out = layers.Dense(2)(layers.Add()([a, b]))
    with pytest.raises(ValueError, match="not in the model's inputs"):
        nb.Model(inputs=a, outputs=out)
    with pytest.raises(TypeError, match="symbolic tensors"):
        nb.Model(inputs=a, outputs=np.zeros(3))
    with pytest.raises(ValueError, match="both inputs and outputs"):
        nb.Model(inputs=a)
    model = nb.Model([a, b], out)
    model.compile("sgd", "mse")
    with pytest.raises(ValueError, match="2 inputs, got 1"):
        model.predict(np.zeros((2, 3)))


def test_metrics_list_for_several_outputs_needs_one_entry_per_output():
    a = layers.Input((3,))
    o1, o2 = layers.Dense(2, name="o1")(a), layers.Dense(1, name="o2")(a)
    model = nb.Model(a, [o1, o2])
    with pytest.raises(ValueError, match="one entry per output"):
        model.compile("sgd", ["sparse_categorical_crossentropy", "mse"], metrics=["accuracy"])
    model.compile("sgd", ["sparse_categorical_crossentropy", "mse"], metrics=["accuracy", None])
    x = np.ones((4, 3), np.float32)
    logs = model.evaluate(x, [np.zeros(4, np.int64), np.zeros((4, 1), np.float32)], return_dict=True)
    assert "o1_accuracy" in logs and not any(k.startswith("o2_") and "acc" in k for k in logs)
