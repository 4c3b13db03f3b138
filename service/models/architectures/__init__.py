"""Trainable architectures by name. A new one is a module here and one line below."""
from __future__ import annotations

from . import cnn, rnn
from .base import Architecture

ARCHITECTURES: dict[str, Architecture] = {
    cnn.ARCHITECTURE.name: cnn.ARCHITECTURE,
    rnn.ARCHITECTURE.name: rnn.ARCHITECTURE,
}


def get_architecture(name: str) -> Architecture:
    try:
        return ARCHITECTURES[name]
    except KeyError:
        known = ", ".join(sorted(ARCHITECTURES))
        raise KeyError(f"unknown architecture {name!r}; known: {known}") from None
