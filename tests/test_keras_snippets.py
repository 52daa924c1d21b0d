"""Keras 3 guide-style snippets ported by changing only the imports (``import nbmodel as
keras``, ``from nbmodel import layers``), each trained on small synthetic data to a stated
loss. They exercise the habits users bring: functional graphs with several inputs and
outputs, a U-Net-like model, shared layers (siamese), a stateful LSTM over a long series,
masking and padding, a text classifier with mask_zero."""
import numpy as np
import pytest

import nbmodel as keras
from nbmodel import layers


@pytest.fixture(autouse=True)
def _seeded_one_thread(one_thread):
    keras.set_random_seed(0)  # keras.utils.set_random_seed(0) in a Keras script
    yield


def test_functional_api_ticket_classifier():
    # "The Functional API" guide: title + body + tags -> priority and department
    num_tags, num_words, num_departments = 12, 100, 4
    title_input = keras.Input(shape=(None,), name="title")
    body_input = keras.Input(shape=(None,), name="body")
    tags_input = keras.Input(shape=(num_tags,), name="tags")
    title_features = layers.Embedding(num_words, 16)(title_input)
    body_features = layers.Embedding(num_words, 16)(body_input)
    title_features = layers.LSTM(32)(title_features)
    body_features = layers.LSTM(8)(body_features)
    x = layers.concatenate([title_features, body_features, tags_input])
    priority_pred = layers.Dense(1, name="priority")(x)
    department_pred = layers.Dense(num_departments, name="department")(x)
    model = keras.Model(inputs=[title_input, body_input, tags_input], outputs=[priority_pred, department_pred])
    model.compile(optimizer=keras.optimizers.Adam(1e-2),
                  loss={"priority": keras.losses.MeanSquaredError(),
                        "department": keras.losses.CategoricalCrossentropy(from_logits=True)},
                  loss_weights={"priority": 1.0, "department": 0.2})
    rng = np.random.default_rng(0)
    title_data = rng.integers(0, num_words, size=(64, 10))
    body_data = rng.integers(0, num_words, size=(64, 20))
    tags_data = rng.integers(0, 2, size=(64, num_tags)).astype("float32")
    priority_targets = tags_data[:, :1] * 0.5 + 0.1
    dept_targets = np.eye(num_departments)[tags_data[:, :num_departments].argmax(1)]
    history = model.fit({"title": title_data, "body": body_data, "tags": tags_data},
                        {"priority": priority_targets, "department": dept_targets}, epochs=15, batch_size=16,
                        verbose=0)
    assert history.history["loss"][-1] < 0.5 * history.history["loss"][0]


def test_unet_like_segmentation():
    # "Image segmentation with a U-Net-like architecture" guide, in small
    def get_model(img_size, num_classes):
        inputs = keras.Input(shape=img_size + (1,))
        x = layers.Conv2D(8, 3, strides=2, padding="same")(inputs)
        x = layers.BatchNormalization()(x)
        x = layers.Activation("relu")(x)
        previous_block_activation = x
        for filters in [16]:
            x = layers.Activation("relu")(x)
            x = layers.SeparableConv2D(filters, 3, padding="same")(x)
            x = layers.BatchNormalization()(x)
            x = layers.Activation("relu")(x)
            x = layers.SeparableConv2D(filters, 3, padding="same")(x)
            x = layers.BatchNormalization()(x)
            x = layers.MaxPooling2D(3, strides=2, padding="same")(x)
            residual = layers.Conv2D(filters, 1, strides=2, padding="same")(previous_block_activation)
            x = layers.add([x, residual])
            previous_block_activation = x
        for filters in [16, 8]:
            x = layers.Activation("relu")(x)
            x = layers.Conv2DTranspose(filters, 3, padding="same")(x)
            x = layers.BatchNormalization()(x)
            x = layers.UpSampling2D(2)(x)
            residual = layers.UpSampling2D(2)(previous_block_activation)
            residual = layers.Conv2D(filters, 1, padding="same")(residual)
            x = layers.add([x, residual])
            previous_block_activation = x
        outputs = layers.Conv2D(num_classes, 3, activation="softmax", padding="same")(x)
        return keras.Model(inputs, outputs)

    model = get_model((8, 8), 2)
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="sparse_categorical_crossentropy")
    rng = np.random.default_rng(1)
    x = rng.random((32, 8, 8, 1)).astype("float32")
    y = (x[..., 0] > 0.5).astype("int64")  # segment the bright pixels
    history = model.fit(x, y, epochs=60, batch_size=8, verbose=0)
    assert history.history["loss"][-1] < 0.3 < history.history["loss"][0]
    # the same with Cropping2D / ZeroPadding2D around an odd size, as U-Nets on odd images do
    inputs = keras.Input(shape=(7, 7, 1))
    padded = layers.ZeroPadding2D(((0, 1), (0, 1)))(inputs)
    down = layers.Conv2D(4, 3, strides=2, padding="same", activation="relu")(padded)
    up = layers.Conv2DTranspose(4, 3, strides=2, padding="same")(down)
    merged = layers.concatenate([up, padded])
    out = layers.Cropping2D(((0, 1), (0, 1)))(layers.Conv2D(1, 1)(merged))
    small = keras.Model(inputs, out)
    small.compile(optimizer="adam", loss="mse")
    xs = rng.standard_normal((16, 7, 7, 1)).astype("float32")
    assert small.predict(xs).shape == (16, 7, 7, 1)
    h = small.fit(xs, xs, epochs=60, batch_size=8, verbose=0)
    assert h.history["loss"][-1] < 0.5 * h.history["loss"][0]


def test_siamese_shared_embedding_similarity():
    # a shared tower: the same Embedding and pooling applied to two token sequences, cosine
    # similarity through Dot(normalize=True)
    vocab, dim = 50, 8
    left, right = keras.Input(shape=(6,), dtype="int64"), keras.Input(shape=(6,), dtype="int64")
    embed = layers.Embedding(vocab, dim)
    pool = layers.GlobalAveragePooling1D()
    dense = layers.Dense(8)
    a = dense(pool(embed(left)))
    b = dense(pool(embed(right)))
    similarity = layers.Dot(axes=1, normalize=True)([a, b])
    model = keras.Model([left, right], similarity)
    model.compile(optimizer=keras.optimizers.Adam(2e-2), loss="mse")
    assert len(model.get_weights()) == 3  # embeddings, kernel, bias: once
    rng = np.random.default_rng(2)
    x1 = rng.integers(0, vocab, (96, 6))
    same = rng.random(96) < 0.5
    x2 = np.where(same[:, None], x1[:, ::-1], rng.integers(0, vocab, (96, 6)))  # the same tokens reordered
    y = np.where(same, 1.0, 0.0)[:, None]
    history = model.fit([x1, x2], y, epochs=40, batch_size=16, verbose=0)
    assert history.history["loss"][-1] < 0.1


def test_stateful_lstm_over_a_long_series():
    # a long sine wave cut into consecutive windows: a stateful LSTM carries its state from
    # one window to the next (batch i of every epoch continues sample i of the previous one)
    batch, steps, windows = 4, 10, 6
    t = np.arange(steps * windows + 1, dtype="float32")
    phases = np.arange(batch, dtype="float32")[:, None]
    series = np.sin(0.3 * (t[None, :] + 7 * phases))
    x = series[:, :-1].reshape(batch, windows, steps).transpose(1, 0, 2).reshape(-1, steps, 1)
    y = series[:, 1:].reshape(batch, windows, steps).transpose(1, 0, 2).reshape(-1, steps, 1)
    model = keras.Sequential([
        keras.Input(shape=(steps, 1), batch_size=batch),
        layers.LSTM(16, return_sequences=True, stateful=True),
        layers.Dense(1),
    ])
    model.compile(optimizer=keras.optimizers.Adam(2e-2), loss="mse")
    losses = []
    for _ in range(25):
        h = model.fit(x, y, batch_size=batch, epochs=1, shuffle=False, verbose=0)
        losses.append(h.history["loss"][-1])
        for layer in model.layers:
            if hasattr(layer, "reset_states"):
                layer.reset_states()
    assert losses[-1] < 0.02 < losses[0]


def test_regularized_mlp():
    # an MLP with weight decay through kernel_regularizer and a max-norm constraint, as in the
    # Keras regularization examples; the reported loss includes the penalty
    model = keras.Sequential([
        keras.Input(shape=(10,)),
        layers.Dense(32, activation="relu", kernel_regularizer=keras.regularizers.L2(1e-3),
                     kernel_constraint=keras.constraints.MaxNorm(2.0), name="hidden"),
        layers.Dropout(0.2),
        layers.Dense(1, kernel_regularizer="l2"),
    ])
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="mse")
    rng = np.random.default_rng(3)
    x = rng.standard_normal((128, 10)).astype("float32")
    y = (x[:, :3].sum(1, keepdims=True) > 0).astype("float32")
    history = model.fit(x, y, epochs=30, batch_size=16, verbose=0)
    assert history.history["loss"][-1] < 0.15 < history.history["loss"][0]
    norms = np.sqrt((model.get_layer("hidden").get_weights()[0] ** 2).sum(axis=0))
    assert norms.max() <= 2.0 + 1e-5


def test_masking_and_padding_guide():
    # "Understanding masking & padding": pad, let Embedding(mask_zero=True) or Masking make the
    # mask, and a mask-consuming LSTM skips the padding
    raw_inputs = [[711, 632, 71], [73, 8, 3215, 55, 927], [83, 91, 1, 645, 1253, 927]]
    padded_inputs = keras.utils.pad_sequences(raw_inputs, padding="post")
    embedding = layers.Embedding(input_dim=5000, output_dim=16, mask_zero=True)
    masked_output = embedding(padded_inputs)
    mask = embedding.compute_mask(padded_inputs)
    np.testing.assert_array_equal(mask, padded_inputs != 0)
    masking_layer = layers.Masking()
    unmasked_embedding = np.tile(np.expand_dims(padded_inputs, axis=-1), [1, 1, 10]).astype("float32")
    masking_layer(unmasked_embedding)
    np.testing.assert_array_equal(masking_layer.compute_mask(unmasked_embedding), mask)
    # passing the mask to a layer by hand
    lstm = layers.LSTM(32)
    output = lstm(masked_output, mask=mask)
    np.testing.assert_allclose(output[0], lstm(masked_output[:1, :3])[0], rtol=1e-5, atol=1e-6)

    # a model: the label is the last real token's parity; the padding length varies, so only a
    # layer that skips the padding finds the last real token
    inputs = keras.Input(shape=(None,), dtype="int32")
    x = layers.Embedding(input_dim=12, output_dim=8, mask_zero=True)(inputs)
    x = layers.LSTM(16)(x)
    outputs = layers.Dense(1, activation="sigmoid")(x)
    model = keras.Model(inputs, outputs)
    model.compile(optimizer=keras.optimizers.Adam(2e-2), loss="binary_crossentropy", metrics=["accuracy"])
    rng = np.random.default_rng(4)
    seqs = [list(rng.integers(1, 12, rng.integers(2, 9))) for _ in range(192)]
    x_train = keras.utils.pad_sequences(seqs, padding="post")
    y_train = np.array([s[-1] % 2 for s in seqs], "float32")[:, None]
    history = model.fit(x_train, y_train, epochs=25, batch_size=32, verbose=0)
    assert history.history["loss"][-1] < 0.15 < history.history["loss"][0]
    assert history.history["accuracy"][-1] > 0.95


def test_text_classifier_with_mask_zero():
    # the bidirectional-LSTM text classifier of the Keras examples, in small: does token 1
    # occur in the (zero-padded) sequence?
    inputs = keras.Input(shape=(None,), dtype="int32")
    x = layers.Embedding(20, 8, mask_zero=True)(inputs)
    x = layers.Bidirectional(layers.LSTM(8, return_sequences=True))(x)
    x = layers.Bidirectional(layers.LSTM(8))(x)
    outputs = layers.Dense(1, activation="sigmoid")(x)
    model = keras.Model(inputs, outputs)
    model.compile(optimizer=keras.optimizers.Adam(2e-2), loss="binary_crossentropy", metrics=["accuracy"])
    rng = np.random.default_rng(5)
    seqs = [list(rng.integers(2, 20, rng.integers(3, 11))) for _ in range(192)]
    for s in seqs[::2]:
        s[rng.integers(len(s))] = 1
    x_train = keras.utils.pad_sequences(seqs, maxlen=10)  # pre-padding, as the example's default
    y_train = np.array([1 in s for s in seqs], "float32")[:, None]
    history = model.fit(x_train, y_train, epochs=20, batch_size=32, verbose=0)
    assert history.history["loss"][-1] < 0.2 < history.history["loss"][0]
