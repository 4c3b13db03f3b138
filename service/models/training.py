"""Train an architecture on MNIST, freeze it, verify the frozen graph and export a new version."""
from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from . import augment, datasets, evaluation, graph, store
from .architectures import get_architecture
from .architectures.base import Architecture
from .manifest import Manifest, TensorInfo, read_labels, sha256_bytes

REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class TrainingRun:
    model: str
    epochs: int
    batch_size: int
    seed: int = 1234
    limit: int | None = None  # train on the first N training images only (smoke runs)
    graphs_dir: Path = REPO_ROOT / "graphs"
    data_dir: Path = datasets.DEFAULT_DIR
    verbose: int = 1
    extra_data: Path | None = None  # an IDX pair (e.g. `python -m service export`) added to train
    augment: bool = True  # each epoch on freshly augmented digits (augment.py)


def to_input_shape(images: np.ndarray, input_shape: tuple[int, ...]) -> np.ndarray:
    """uint8 (N, 28, 28) -> float32 in [0, 1] shaped (N, *input_shape)."""
    return (images.astype(np.float32) / 255.0).reshape((len(images), *input_shape))


def to_input(images: np.ndarray, arch: Architecture) -> np.ndarray:
    return to_input_shape(images, arch.input_shape)


def train(run: TrainingRun) -> Manifest:
    """Train, freeze, check the frozen graph against Keras, evaluate, and write a version."""
    import keras
    import tensorflow as tf

    arch = get_architecture(run.model)
    keras.utils.set_random_seed(run.seed)
    tf.config.experimental.enable_op_determinism()

    x_train, y_train = datasets.load_mnist("train", run.data_dir)
    x_test, y_test = datasets.load_mnist("test", run.data_dir)
    if run.limit:
        x_train, y_train = x_train[: run.limit], y_train[: run.limit]
    extra = 0
    if run.extra_data:
        x_train, y_train, extra = with_extra_data(x_train, y_train, run.extra_data)

    model = arch.build()
    steps = run.epochs * -(-len(x_train) // run.batch_size)
    model.compile(optimizer=keras.optimizers.Adam(_learning_rate(arch, steps)),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    started = time.monotonic()
    fit(model, arch, run, x_train, y_train.astype(np.int64))
    train_seconds = time.monotonic() - started

    frozen = graph.freeze_keras_model(model, arch.input_shape)
    check_frozen_matches_keras(model, frozen, to_input(x_test[:256], arch))

    labels = read_labels(REPO_ROOT / arch.labels_file)
    result = evaluation.evaluate(lambda b: graph.run_frozen(frozen, to_input(b, arch)),
                                 x_test, y_test, len(labels), batch_size=len(x_test))
    manifest = Manifest(
        name=arch.name,
        version=store.next_version(run.graphs_dir, arch.name),
        created=datetime.now(timezone.utc).replace(microsecond=0).isoformat(),
        architecture=arch.description,
        input=TensorInfo(frozen.input_tensor, [None, *arch.input_shape], "float32"),
        outputs={"probabilities": frozen.output_tensor},
        labels_file=arch.labels_file,
        preprocess=arch.preprocess,
        accuracy=result.accuracy,
        per_class_accuracy=result.per_class_accuracy,
        sha256=sha256_bytes(frozen.graph_def_bytes),
        tf_version=tf.__version__,
        training={"epochs": run.epochs, "batch_size": run.batch_size, "seed": run.seed,
                  "limit": run.limit, "train_images": int(len(x_train)),
                  "extra_data": str(run.extra_data) if run.extra_data else None,
                  "extra_images": extra,
                  "learning_rate": arch.learning_rate, "lr_schedule": arch.lr_schedule,
                  "optimizer": "adam",
                  "augmentation": augment.DEFAULT.describe() if run.augment else None,
                  "seconds": round(train_seconds, 1)},
    )
    out = store.write_version(run.graphs_dir, manifest, frozen.graph_def_bytes)
    evaluation.confusion_png(result, labels, out / "confusion.png")
    return manifest


def fit(model, arch: Architecture, run: TrainingRun, images: np.ndarray,
        labels: np.ndarray) -> None:
    """Train for ``run.epochs``; with augmentation, each epoch on a new draw of the images."""
    if not run.augment:
        model.fit(to_input(images, arch), labels, epochs=run.epochs, batch_size=run.batch_size,
                  shuffle=True, verbose=run.verbose)
        return
    rng = np.random.default_rng(run.seed)
    for epoch in range(run.epochs):
        if run.verbose:
            print(f"Epoch {epoch + 1}/{run.epochs}: augmenting {len(images)} images", flush=True)
        model.fit(to_input(augment.augment(images, rng), arch), labels,
                  initial_epoch=epoch, epochs=epoch + 1, batch_size=run.batch_size,
                  shuffle=True, verbose=run.verbose)


def with_extra_data(images: np.ndarray, labels: np.ndarray, extra_dir: Path
                    ) -> tuple[np.ndarray, np.ndarray, int]:
    """Append the verified IDX pair in ``extra_dir``; it must be MNIST-shaped like ``images``."""
    x_extra, y_extra = datasets.load_idx_dir(extra_dir)
    if x_extra.shape[1:] != images.shape[1:]:
        raise datasets.DatasetError(f"The extra data in {extra_dir} holds images of shape "
                                    f"{x_extra.shape[1:]}; training needs {images.shape[1:]}.")
    return (np.concatenate([images, x_extra]), np.concatenate([labels, y_extra]),
            int(len(x_extra)))


def _learning_rate(arch: Architecture, steps: int):
    import keras

    if arch.lr_schedule == "cosine":
        return keras.optimizers.schedules.CosineDecay(arch.learning_rate, decay_steps=steps)
    return arch.learning_rate


def check_frozen_matches_keras(model, frozen: graph.FrozenGraph, sample: np.ndarray,
                               atol: float = 1e-5) -> None:
    """The frozen graph must compute what the Keras model computes; raise if it does not."""
    expected = np.asarray(model(sample, training=False))
    actual = graph.run_frozen(frozen, sample)
    worst = float(np.max(np.abs(expected - actual)))
    if worst > atol:
        raise RuntimeError(f"frozen graph differs from the Keras model by {worst:g} (> {atol:g})")
