"""digits-cnn: the classic Keras MNIST convnet."""
from __future__ import annotations

from .base import Architecture


def build():
    import keras
    from keras import layers

    return keras.Sequential(
        [
            keras.Input(shape=(28, 28, 1), name="image"),
            layers.Conv2D(32, 3, activation="relu", name="conv1"),
            layers.Conv2D(64, 3, activation="relu", name="conv2"),
            layers.MaxPooling2D(2, name="pool"),
            layers.Dropout(0.25, name="dropout1"),
            layers.Flatten(name="flatten"),
            layers.Dense(128, activation="relu", name="dense1"),
            layers.Dropout(0.5, name="dropout2"),
            layers.Dense(10, activation="softmax", name="probabilities"),
        ],
        name="digits_cnn",
    )


ARCHITECTURE = Architecture(
    name="digits-cnn",
    description="Conv 3x3x32, conv 3x3x64, max-pool, dropout, dense 128, dropout, softmax 10",
    input_shape=(28, 28, 1),
    build=build,
    default_epochs=30,
    lr_schedule="cosine",
)
