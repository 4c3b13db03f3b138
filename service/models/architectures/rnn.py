"""digits-rnn: an LSTM reading the image as 28 rows of 28 pixels."""
from __future__ import annotations

from .base import Architecture


def build():
    import keras
    from keras import layers

    # unroll=True: 28 static steps freeze into a plain GraphDef without a while loop.
    return keras.Sequential(
        [
            keras.Input(shape=(28, 28), name="image"),
            layers.LSTM(128, unroll=True, name="lstm"),
            layers.Dense(10, activation="softmax", name="probabilities"),
        ],
        name="digits_rnn",
    )


ARCHITECTURE = Architecture(
    name="digits-rnn",
    description="LSTM 128 over 28 rows of 28 pixels, softmax 10",
    input_shape=(28, 28),
    build=build,
    default_epochs=30,
    learning_rate=2e-3,
    lr_schedule="cosine",
)
