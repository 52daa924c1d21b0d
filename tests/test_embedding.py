"""Embedding as layer cases (gather forward against the reference, scatter-add gradients
with repeated ids, integer id dtypes, on every device); gradient accumulation, errors."""
import numpy as np
import pytest

from nbmodel import layers
from nbmodel.kernels.reference import embedding as ref
from nbmodel.testing import LayerCase

EXACT = {"float32": 0.0, "float64": 0.0}  # a gather copies rows


def _layer(**kw):
    layer = layers.Embedding(7, 3, seed=0, **kw)
    layer.build((None, 4))
    return layer


def embedding_case(label, ids):
    ids = np.asarray(ids)
    return LayerCase(f"embedding-{label}", lambda dt: layers.Embedding(7, 3, seed=0, dtype=dt),
                     inputs=lambda r: ids.copy(),
                     reference=lambda w, i: ref.embedding_forward(i, w["embeddings"]), rtol=EXACT, atol=EXACT)


CASES = [
    embedding_case("repeats", [[0, 6, 2, 2], [5, 5, 1, 0]]),
    embedding_case("repeats-2", [[1, 1, 4, 0], [6, 1, 2, 2]]),
    embedding_case("3d-ids", [[[3, 3], [1, 3]], [[0, 1], [3, 6]]]),
] + [embedding_case(np.dtype(t).name, np.array([[1, 2, 3, 6]], dtype=t))
     for t in (np.int32, np.int64, np.uint8, np.int16)]


@pytest.mark.parametrize("case", CASES, ids=str)
def test_layer_case(case, device):
    case.check(device)


def test_output_shape():
    layer = _layer()
    assert layer.compute_output_shape((None, 4)) == (None, 4, 3)


def test_gradient_accumulates_repeated_ids():
    layer = _layer(dtype="float64")
    ids = np.array([[3, 3, 1, 3], [0, 1, 3, 6]])
    layer.forward(ids, training=True)
    dy = np.random.default_rng(0).standard_normal((2, 4, 3))
    assert layer.backward(dy) is None  # ids are not differentiable
    np.testing.assert_allclose(layer.grads["embeddings"], ref.embedding_backward(ids, dy, 7), atol=1e-14)
    np.testing.assert_allclose(layer.grads["embeddings"][3], dy[0, 0] + dy[0, 1] + dy[0, 3] + dy[1, 2])
    assert not layer.grads["embeddings"][[2, 4, 5]].any()
    # a second backward overwrites (gradients are not accumulated across calls)
    layer.backward(dy)
    np.testing.assert_allclose(layer.grads["embeddings"], ref.embedding_backward(ids, dy, 7), atol=1e-14)


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
