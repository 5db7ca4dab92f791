"""d2l's GRU (reset-before, 9.1) as a Keras 3 model: ids in, one-hot inside, logits out."""

import keras

vocab_size, num_hiddens = 28, 32
model = keras.Sequential(
    [
        keras.Input((None,), dtype="int32"),
        keras.layers.Lambda(lambda X: keras.ops.one_hot(X, vocab_size)),
        keras.layers.GRU(num_hiddens, reset_after=False, return_sequences=True),
        keras.layers.Dense(vocab_size),
    ]
)
