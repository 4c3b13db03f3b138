"""The page flattened: ink as a share of the paper's local brightness, whatever the light.

A phone photo's paper is not one level: vignettes darken the corners, light falls off across
the page, a shadow edge cuts it in two. Taking one paper level (and the dark corner for ink)
is what made the digit shrink to a few pixels. So, unless the frame shows one even level
(scans, drawings), the paper is estimated per pixel by a morphological closing (for dark ink;
an opening for light ink) with a square a few strokes wide: it keeps the paper's large
shapes, a shadow's step included, and removes anything as thin as a stroke. The strokes are
measured first, against a rough (median) paper level. Ink is then (paper - pixel) / paper
for dark ink. Gray levels are kept, as MNIST keeps them; thresholds only find the digit
(components.py).
"""
from __future__ import annotations

from typing import NamedTuple

import cv2
import numpy as np

from .spec import MNIST_SIZE

ESTIMATE_SIDE = 64     # the rough paper level: a median on the image shrunk to this side...
CLOSE_SHARE = 0.4      # ...over this share of it (also the widest closing square)
FLAT_SPREAD = 12.0     # paper levels within this (0-255) are one level: no flattening
MIN_PAPER = 24.0       # darker paper than this is measured against this (no division by ~0)
STROKE_CONTRAST = 0.2  # darker than the rough paper by this share: ink, to measure strokes
STROKE_MARGIN = 3.0    # the closing square is this many times the widest stroke
STROKE_FALLBACK = 0.1  # the square's share of the long side when no stroke can be measured
TAIL = 99.5            # percentile of the deviations from the paper that decides polarity


class InkMap(NamedTuple):
    ink: np.ndarray  # float32 (H, W) in [0, 1]: 0 on paper, 1 for ink as far from it as can be
    noise: float     # the image's noise (a standard deviation), in the same units


def ink_map(gray: np.ndarray, invert: str) -> InkMap:
    """The ink of ``gray`` against its paper. ``invert`` "auto" finds which way the ink goes
    (darker or lighter than the paper); "never" takes ink as lighter, as MNIST draws it."""
    arr = gray.astype(np.float32)
    even = _even_paper(gray)
    rough = even if even is not None else _median_level(gray)
    dark = _ink_is_dark(arr, rough)
    if invert == "never" and dark:  # light paper, as a model that never inverts cannot read
        return InkMap(np.zeros(gray.shape, np.float32), 0.0)
    paper = even if even is not None else _paper(gray, dark, rough)
    if dark:
        scale = np.maximum(paper, MIN_PAPER)
        ink = (paper - arr) / scale
    else:
        scale = np.maximum(255.0 - paper, MIN_PAPER)
        ink = (arr - paper) / scale
    noise = _noise(gray) / float(np.median(scale))
    return InkMap(np.clip(ink, 0.0, 1.0, out=ink), noise)


def _noise(gray: np.ndarray) -> float:
    """The pixels' noise: how far they stray from their 5x5 median (a compressed image's
    grain is smoothed, not gone), at the median pixel -- paper or the inside of a stroke,
    not the few at stroke edges."""
    if min(gray.shape) < 5:
        return 0.0
    stray = np.abs(gray.astype(np.int16) - cv2.medianBlur(gray, 5))[::2, ::2].ravel()
    half = stray.size // 2
    return 1.4826 * float(np.partition(stray, half)[half])


def _ink_is_dark(arr: np.ndarray, median: np.ndarray | float) -> bool:
    """Whether the pixels stray further below the paper than above it."""
    deviation = (arr - median).ravel()
    k = min(deviation.size - 1, int(deviation.size * TAIL / 100))
    above = np.partition(deviation, k)[k]
    below = -np.partition(deviation, deviation.size - 1 - k)[deviation.size - 1 - k]
    return bool(below > above)


def _small(gray: np.ndarray) -> np.ndarray:
    """``gray`` shrunk to about ESTIMATE_SIDE on its long side."""
    h, w = gray.shape
    scale = min(1.0, ESTIMATE_SIDE / max(h, w))
    if scale == 1.0:
        return gray
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return cv2.resize(gray, size, interpolation=cv2.INTER_AREA)


def _too_small(gray: np.ndarray) -> bool:
    return max(gray.shape) < 2 * MNIST_SIZE


def _even_paper(gray: np.ndarray) -> float | None:
    """The paper's one level when the frame shows one (scans, drawings, small images)."""
    ring = border_ring(gray)
    low, high = np.percentile(ring, (20, 80))  # a digit may touch a fifth of the frame
    if high - low <= FLAT_SPREAD or _too_small(gray):
        return float(np.median(ring))
    return None


def _median_level(gray: np.ndarray) -> np.ndarray:
    """A rough paper level either way the ink goes: a wide median at low resolution."""
    small = _small(gray)
    side = max(3, round(CLOSE_SHARE * max(small.shape)) | 1)
    level = cv2.medianBlur(small, min(side, 255))
    return cv2.resize(level, gray.shape[::-1], interpolation=cv2.INTER_LINEAR).astype(np.float32)


def _paper(gray: np.ndarray, dark: bool, median: np.ndarray) -> np.ndarray | float:
    """The paper's level per pixel: a closing (dark ink) or opening (light ink) with a square
    a few strokes wide -- which keeps vignettes, gradients and shadow edges and drops the
    strokes -- or one level when the paper is flat anyway."""
    side = _stroke_side(gray, dark, median)
    operation = cv2.MORPH_CLOSE if dark else cv2.MORPH_OPEN
    kernel = cv2.getStructuringElement(cv2.MORPH_RECT, (side, side))
    level = cv2.morphologyEx(gray, operation, kernel, borderType=cv2.BORDER_REPLICATE)
    sample = level[::4, ::4]
    low, high = np.percentile(sample, (5, 95))
    if high - low <= FLAT_SPREAD:
        return float(np.median(sample))
    return level.astype(np.float32)


def _stroke_side(gray: np.ndarray, dark: bool, median: np.ndarray) -> int:
    """An odd square side STROKE_MARGIN times the ink's stroke width (the widest stroke of
    the components clear of the frame, against the rough paper level)."""
    widest = max(3, round(CLOSE_SHARE * max(gray.shape)) | 1)
    strayed = (median - gray) if dark else (gray - median)
    mask = (strayed > STROKE_CONTRAST * np.maximum(median, MIN_PAPER)).astype(np.uint8)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    h, w = mask.shape
    inner = [i for i in range(1, count) if stats[i, 0] > 0 and stats[i, 1] > 0
             and stats[i, 0] + stats[i, 2] < w and stats[i, 1] + stats[i, 3] < h]
    if not inner:  # no stroke clear of the frame to measure: a typical one
        return int(max(3, round(STROKE_FALLBACK * max(gray.shape))) | 1)
    distance = cv2.distanceTransform(mask, cv2.DIST_L2, 3)
    width = 2 * float(np.percentile(distance[np.isin(labels, inner)], 95))
    return int(min(widest, max(3, round(STROKE_MARGIN * width)) | 1))


def border_ring(arr: np.ndarray) -> np.ndarray:
    """The outermost ring of pixels (gray values, RGB averaged), where the paper shows."""
    gray = arr if arr.ndim == 2 else arr.mean(axis=2)
    if min(gray.shape) < 3:
        return gray.ravel()
    return np.concatenate([gray[0], gray[-1], gray[1:-1, 0], gray[1:-1, -1]])



