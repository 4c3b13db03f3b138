"""The page flattened: ink as a share of the paper's local brightness, whatever the light.

A phone photo's paper is not one level: vignettes darken the corners, light falls off across
the page, a shadow edge cuts it in two. Taking one paper level (and the dark corner for ink)
is what made the digit shrink to a few pixels. So the paper is estimated per pixel -- a
morphological closing (for dark ink; an opening for light ink) at low resolution, which keeps
the paper's large shapes, steps included, and removes anything as thin as a stroke -- and the
ink is measured against it: (paper - pixel) / paper for dark ink. Gray levels are kept, as
MNIST keeps them; thresholds are for finding the digit only (components.py).
"""
from __future__ import annotations

import cv2
import numpy as np

from .spec import MNIST_SIZE

ESTIMATE_SIDE = 64     # the paper is estimated on the image shrunk to about this long side...
CLOSE_SHARE = 0.4      # ...with a square of this share of it: wider than any stroke
FLAT_SPREAD = 12.0     # paper levels within this (0-255) are one level: no flattening
MIN_PAPER = 24.0       # darker paper than this is measured against this (no division by ~0)
STROKE_CONTRAST = 0.2  # darker than the fitted paper by this share: ink, to measure strokes
STROKE_MARGIN = 3.0
TAIL = 99.5            # percentile of the deviations from the paper that decides polarity


def ink_map(gray: np.ndarray, invert: str) -> np.ndarray:
    """float32 (H, W) in [0, 1]: 0 on paper, 1 for ink as far from the paper as it can be.

    ``invert`` "auto" finds which way the ink goes (darker or lighter than the paper);
    "never" takes ink as lighter, as MNIST draws it.
    """
    arr = gray.astype(np.float32)
    median = _median_level(gray)
    dark = invert == "auto" and _ink_is_dark(arr, median)
    paper = _paper(gray, dark, median)
    if dark:
        ink = (paper - arr) / np.maximum(paper, MIN_PAPER)
    else:
        ink = (arr - paper) / np.maximum(255.0 - paper, MIN_PAPER)
    return np.clip(ink, 0.0, 1.0, out=ink)


def _ink_is_dark(arr: np.ndarray, median: np.ndarray | float) -> bool:
    """Whether the pixels stray further below the paper than above it."""
    deviation = (arr - median).ravel()
    k = min(deviation.size - 1, int(deviation.size * TAIL / 100))
    above = np.partition(deviation, k)[k]
    below = -np.partition(deviation, deviation.size - 1 - k)[deviation.size - 1 - k]
    return bool(below > above)


def _small(gray: np.ndarray) -> tuple[np.ndarray, float]:
    """``gray`` shrunk to about ESTIMATE_SIDE on its long side, and the scale."""
    h, w = gray.shape
    scale = min(1.0, ESTIMATE_SIDE / max(h, w))
    if scale == 1.0:
        return gray, scale
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return cv2.resize(gray, size, interpolation=cv2.INTER_AREA), scale


def _too_small(gray: np.ndarray) -> bool:
    return max(gray.shape) < 2 * MNIST_SIZE


def _median_level(gray: np.ndarray) -> np.ndarray | float:
    """A rough paper level either way the ink goes: a wide median at low resolution."""
    if _too_small(gray):
        return _border_median(gray)
    small, _ = _small(gray)
    side = max(3, round(CLOSE_SHARE * max(small.shape)) | 1)
    level = cv2.medianBlur(small, min(side, 255))
    return cv2.resize(level, gray.shape[::-1], interpolation=cv2.INTER_LINEAR).astype(np.float32)


def _paper(gray: np.ndarray, dark: bool, median: np.ndarray | float) -> np.ndarray | float:
    """The paper's level per pixel: a closing (dark ink) or opening (light ink) with a square
    a few strokes wide -- which keeps vignettes, gradients and shadow edges and drops the
    strokes -- or one level when the paper is flat anyway."""
    if _too_small(gray):
        return median
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
    if not inner:
        return widest
    distance = cv2.distanceTransform(mask, cv2.DIST_L2, 3)
    width = 2 * float(np.percentile(distance[np.isin(labels, inner)], 95))
    return int(min(widest, max(3, round(STROKE_MARGIN * width)) | 1))


def _border_median(gray: np.ndarray) -> float:
    if min(gray.shape) < 3:
        return float(np.median(gray))
    ring = np.concatenate([gray[0], gray[-1], gray[1:-1, 0], gray[1:-1, -1]])
    return float(np.median(ring))
