"""What a model expects as input (``PreprocessSpec``, from its manifest), validated."""
from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass
from typing import Any

KINDS = ("mnist", "resize")
COLORS = ("gray", "rgb")
INVERT_MODES = ("auto", "never")
MAX_SIDE = 1024  # a model input larger than this is a configuration mistake
MNIST_SIZE = 28


def _check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"preprocess field {name!r} must be one of {', '.join(choices)}; got {value!r}")


def is_number(value: Any) -> bool:
    """A finite real (numpy scalars included), but not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def is_fraction(value: Any) -> bool:
    return is_number(value) and 0 < value <= 1


@dataclass(frozen=True)
class PreprocessSpec:
    """What a model expects as input, and how to get there from an uploaded image."""

    kind: str = "mnist"
    width: int = MNIST_SIZE
    height: int = MNIST_SIZE
    color: str = "gray"
    crop_fraction: float | None = None  # default crop around a caller-given point
    invert: str = "auto"

    def __post_init__(self) -> None:
        _check_choice("kind", self.kind, KINDS)
        _check_choice("color", self.color, COLORS)
        _check_choice("invert", self.invert, INVERT_MODES)
        for name in ("width", "height"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_SIDE:
                raise ValueError(f"preprocess field {name!r} must be an integer from 1 to {MAX_SIDE}; got {value!r}")
        if self.kind == "mnist" and (self.width, self.height, self.color) != (MNIST_SIZE, MNIST_SIZE, "gray"):
            bad = "color" if self.color != "gray" else ("width" if self.width != MNIST_SIZE else "height")
            raise ValueError(f"preprocess field {bad!r}: kind 'mnist' is always 28x28 gray")
        if self.crop_fraction is not None and not is_fraction(self.crop_fraction):
            raise ValueError(
                f"preprocess field 'crop_fraction' must be null or a number in (0, 1]; got {self.crop_fraction!r}"
            )

    @classmethod
    def from_dict(cls, d: Any) -> PreprocessSpec:
        """Build from a manifest's ``preprocess`` object; ``ValueError`` names the bad field."""
        if not isinstance(d, dict):
            raise ValueError(f"preprocess must be an object; got {type(d).__name__}")
        unknown = sorted(set(d) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"preprocess field {unknown[0]!r} is unknown")
        return cls(**d)

    def to_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        """One line for people, e.g. on the models page."""
        invert = "light backgrounds inverted" if self.invert == "auto" else "never inverted"
        if self.kind == "mnist":
            text = "MNIST-style 28x28 gray: ink box scaled to 20 px, centred by mass"
        else:
            text = f"resized to {self.width}x{self.height} {'RGB' if self.color == 'rgb' else 'gray'}"
        if self.crop_fraction is not None:
            text += f", {self.crop_fraction:.0%} crop around a given point"
        return f"{text}; {invert}."


DEFAULT_SPEC = PreprocessSpec()
