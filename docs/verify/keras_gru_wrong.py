"""The same model with Keras' default GRU (reset_after=True)."""

import keras

vocab_size, num_hiddens = 28, 32
model = keras.Sequential(
    [
        keras.Input((None,), dtype="int32"),
        keras.layers.Lambda(lambda X: keras.ops.one_hot(X, vocab_size)),
        keras.layers.GRU(num_hiddens, return_sequences=True),
        keras.layers.Dense(vocab_size),
    ]
)
