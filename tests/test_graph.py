"""Graph execution details: gradients through initial_state kwargs."""
import numpy as np

import nbmodel as nb
from nbmodel import layers as L


def _loss(model, x, y):
    return model.test_on_batch(x, y)


def test_encoder_states_feeding_a_decoder_get_gradients(float64):
    rng = np.random.default_rng(0)
    src, tgt = L.Input((4, 3)), L.Input((5, 2))
    _, h, c = L.LSTM(3, return_state=True, name="enc")(src)
    seq = L.LSTM(3, return_sequences=True, name="dec")(tgt, initial_state=[h, c])
    out = L.Dense(1, name="head")(seq)
    model = nb.Model([src, tgt], out, seed=0)
    model.compile(optimizer=nb.optimizers.SGD(1.0), loss="mse")
    x = [rng.standard_normal((2, 4, 3)), rng.standard_normal((2, 5, 2))]
    y = rng.standard_normal((2, 5, 1))

    enc = model.get_layer("enc")
    kernel = enc.params["kernel"]
    before = kernel.copy()
    # numerical gradient of the loss w.r.t. a few encoder weights
    eps, numeric = 1e-6, {}
    for idx in [(0, 0), (1, 5), (2, 11)]:
        old = kernel[idx]
        kernel[idx] = old + eps
        fp = _loss(model, x, y)
        kernel[idx] = old - eps
        fm = _loss(model, x, y)
        kernel[idx] = old
        numeric[idx] = (fp - fm) / (2 * eps)
    model.train_on_batch(x, y)  # SGD(1.0): the step equals minus the gradient
    for idx, g in numeric.items():
        assert abs(g) > 1e-8, "the encoder must influence the loss"
        np.testing.assert_allclose(before[idx] - kernel[idx], g, rtol=1e-5, atol=1e-9)
