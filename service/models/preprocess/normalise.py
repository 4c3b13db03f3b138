"""Pixels (ink of any polarity) to the model input: MNIST-style normalisation, or a resize."""
from __future__ import annotations

import numpy as np
from PIL import Image

from service.errors import BlankImage

from .background import border_ring, ink_map
from .components import BLANK_MESSAGE, digit_ink
from .spec import MNIST_SIZE, PreprocessSpec

MNIST_BOX = 20  # MNIST digits were scaled so their longest side is 20 px...
MNIST_CENTRE = 14.0  # ...and shifted so the centre of mass sits here (index coordinates)
LIGHT_BACKGROUND = 127  # border median above this means dark ink on light paper
CLEAN_BACKGROUND = 8  # a 28x28 image whose border median is at most this is already MNIST-like
MIN_INK = 24  # contrast (0-255) below which there is nothing we would call a digit
# Fraction of the peak ink a pixel needs to count towards the bounding box: high enough to
# ignore blur, JPEG ringing and anti-aliasing halos, which would otherwise shrink the digit.
INK_THRESHOLD = 0.2


def normalise(pixels: np.ndarray, spec: PreprocessSpec, cropped: bool,
              original: tuple[int, int] | None = None) -> np.ndarray:
    """``spec``'s model input from an image's uint8 pixels ((H, W) gray or (H, W, 3) RGB, in
    ``spec``'s colour): float32 in [0, 1], ink bright on dark. ``cropped``: the pixels are a
    crop of the upload around the caller's point, never passed through as already
    MNIST-like. ``original``: the upright upload's (width, height), for error boxes."""
    if spec.kind == "mnist":
        return _mnist(pixels, spec.invert, cropped, original)
    arr, _ = _polarity(pixels, spec.invert)
    return _resize(arr, spec.width, spec.height)


def _median(values: np.ndarray) -> float:
    """``np.median`` of a 1-D array, without its generic machinery (20 us on 108 values)."""
    half = values.size // 2
    if values.size % 2:
        return float(np.partition(values, half)[half])
    low, high = np.partition(values, (half - 1, half))[half - 1:half + 1]
    return (float(low) + float(high)) / 2


def _polarity(arr: np.ndarray, invert: str) -> tuple[np.ndarray, float]:
    """Make ink bright on dark; returns the array and its background (border median) level."""
    level = _median(border_ring(arr))
    if invert == "auto" and level > LIGHT_BACKGROUND:
        return 255 - arr, 255.0 - level
    return arr, level


def _mnist(gray: np.ndarray, invert: str, cropped: bool,
           original: tuple[int, int] | None) -> np.ndarray:
    if not cropped and gray.shape == (MNIST_SIZE, MNIST_SIZE):
        # Already in MNIST form: pass through untouched so results match offline evaluation.
        arr, level = _polarity(gray, invert)
        if level <= CLEAN_BACKGROUND:
            if int(arr.max()) - level < MIN_INK:
                raise BlankImage(BLANK_MESSAGE)
            return arr.astype(np.float32) / np.float32(255)
    ink = digit_ink(ink_map(gray, invert), cropped, original)
    digit = _scale_ink_box(ink)
    canvas = _centre_by_mass(digit)
    peak = canvas.max()
    if peak <= 0:
        raise BlankImage(BLANK_MESSAGE)
    return (canvas / peak).astype(np.float32)


def _scale_ink_box(ink: np.ndarray) -> np.ndarray:
    """Crop to the ink's bounding box and resize its longest side to 20 px (float32)."""
    peak = float(ink.max())
    mask = ink > peak * INK_THRESHOLD
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    box = (ink[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1] * (255 / peak)).round()
    box = box.astype(np.uint8)
    height, width = box.shape
    scale = MNIST_BOX / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    resized = Image.fromarray(box).resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)
    return np.asarray(resized, dtype=np.float32)


def _centre_by_mass(digit: np.ndarray) -> np.ndarray:
    """Paste into a 28x28 zero canvas with the centre of mass at (14, 14), kept inside."""
    total = float(digit.sum())
    if total <= 0:
        raise BlankImage(BLANK_MESSAGE)
    height, width = digit.shape
    cy = float(digit.sum(axis=1) @ np.arange(height)) / total
    cx = float(digit.sum(axis=0) @ np.arange(width)) / total
    top = min(max(round(MNIST_CENTRE - cy), 0), MNIST_SIZE - height)
    left = min(max(round(MNIST_CENTRE - cx), 0), MNIST_SIZE - width)
    canvas = np.zeros((MNIST_SIZE, MNIST_SIZE), np.float32)
    canvas[top:top + height, left:left + width] = digit
    return canvas


def _resize(arr: np.ndarray, width: int, height: int) -> np.ndarray:
    if arr.shape[:2] != (height, width):
        arr = np.asarray(Image.fromarray(arr).resize((width, height), Image.Resampling.LANCZOS, reducing_gap=3.0))
    return arr.astype(np.float32) / np.float32(255)

