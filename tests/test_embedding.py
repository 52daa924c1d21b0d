"""Embedding: gather forward, scatter-add backward with repeated ids, errors."""
import numpy as np
import pytest

from nbmodel import layers
from nbmodel.kernels.reference import embedding as ref
from nbmodel.testing import gradcheck


def _layer(**kw):
    layer = layers.Embedding(7, 3, seed=0, **kw)
    layer.build((None, 4))
    return layer


def test_forward_matches_reference():
    layer = _layer()
    ids = np.array([[0, 6, 2, 2], [5, 5, 1, 0]])
    y = layer.forward(ids)
    assert y.shape == (2, 4, 3) and y.dtype == np.float32
    np.testing.assert_array_equal(y, ref.embedding(ids, layer.params["embeddings"]).astype(np.float32))
    assert layer.compute_output_shape((None, 4)) == (None, 4, 3)


@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.uint8, np.int16])
def test_integer_dtypes(dtype):
    layer = _layer()
    ids = np.array([[1, 2, 3, 6]], dtype=dtype)
    np.testing.assert_array_equal(layer.forward(ids)[0], layer.params["embeddings"][[1, 2, 3, 6]])


def test_gradient_accumulates_repeated_ids():
    layer = _layer(dtype="float64")
    ids = np.array([[3, 3, 1, 3], [0, 1, 3, 6]])
    layer.forward(ids, training=True)
    dy = np.random.default_rng(0).standard_normal((2, 4, 3))
    assert layer.backward(dy) is None  # ids are not differentiable
    np.testing.assert_allclose(layer.grads["embeddings"], ref.embedding_grad(ids, dy, 7), atol=1e-14)
    np.testing.assert_allclose(layer.grads["embeddings"][3], dy[0, 0] + dy[0, 1] + dy[0, 3] + dy[1, 2])
    assert not layer.grads["embeddings"][[2, 4, 5]].any()
    # a second backward overwrites (gradients are not accumulated across calls)
    layer.backward(dy)
    np.testing.assert_allclose(layer.grads["embeddings"], ref.embedding_grad(ids, dy, 7), atol=1e-14)


def test_gradcheck():
    layer = _layer()
    gradcheck(layer, np.array([[1, 1, 4, 0], [6, 1, 2, 2]]))


def test_initializer_range():
    layer = layers.Embedding(200, 16, seed=1)
    layer.build((None, 3))
    e = layer.params["embeddings"]
    assert e.shape == (200, 16) and np.abs(e).max() <= 0.05 and e.std() > 0.02


def test_bad_ids():
    layer = layers.Embedding(5, 2, name="tok")
    with pytest.raises(ValueError, match="^tok: token id 5 at position \\(1, 0\\) is out of range"):
        layer.forward(np.array([[0, 1], [5, 2]]))
    with pytest.raises(ValueError, match="^tok: token id -1"):
        layer.forward(np.array([[0, -1]]))
    with pytest.raises(TypeError, match="^tok: expected integer token ids, got dtype float32"):
        layer.forward(np.array([[0.0, 1.0]], dtype=np.float32))
    with pytest.raises(TypeError, match="^tok: "):
        layer.forward(np.array([["a", "b"]]))
    with pytest.raises(ValueError, match="output_dim"):
        layers.Embedding(5, 0)


def test_config_roundtrip():
    layer = layers.Embedding(9, 4, name="e")
    clone = layers.Embedding.from_config(layer.get_config())
    assert (clone.input_dim, clone.output_dim, clone.name) == (9, 4, "e")


def test_kernels_stay_float32():
    from nbmodel.kernels.cpu import embedding as k
    from nbmodel.testing import float64_ops

    ids = np.array([0, 2, 2], np.int64)
    table = np.ones((3, 4), np.float32)
    out = np.empty((3, 4), np.float32)
    assert float64_ops(k.embedding_forward, ids, table, out) == []
    assert float64_ops(k.embedding_backward, ids, out, np.empty_like(table)) == []


def test_in_a_model_as_first_layer():
    import nbmodel as nb

    model = nb.Sequential([layers.Input((5,), dtype="int64"), layers.Embedding(10, 4),
                           layers.LSTM(3), layers.Dense(2)], seed=0)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    rng = np.random.default_rng(0)
    x = rng.integers(0, 10, (8, 5))
    y = rng.integers(0, 2, 8)
    before = model.get_weights()[0].copy()
    model.fit(x, y, epochs=1, batch_size=4, verbose=0)
    assert not np.array_equal(before, model.get_weights()[0])
