"""What every trainable architecture provides: a name, its input, how to build the Keras model."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from ..preprocess import PreprocessSpec


@dataclass(frozen=True)
class Architecture:
    """One trainable model family; ``build`` returns an uncompiled Keras model."""

    name: str
    description: str
    input_shape: tuple[int, ...]  # per image, without the batch dimension
    build: Callable[[], Any]
    preprocess: PreprocessSpec = field(default_factory=PreprocessSpec)
    default_epochs: int = 12
    default_batch_size: int = 128
    learning_rate: float = 1e-3
    lr_schedule: str = "constant"  # or "cosine": decay to 0 over the run, for a sharper finish
    labels_file: str = "labels/digits.txt"
