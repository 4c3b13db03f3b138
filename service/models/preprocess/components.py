"""Find the digit, not the frame: the ink components that make up one digit.

The flattened ink (background.py) is thresholded -- Otsu, but never below half the strongest
ink nor within the image's noise, so faint ruled lines, grain and what is left of a shadow
edge stay out -- only to find connected components. Dust, long thin ones (ruled and table
lines) and weak or frame-long ones along the edge (page edges, dark corners) are dropped. The
digit is the biggest component near the centre (after a crop around a point: the one
nearest it), with the components near it or joined to it by fainter ink (hysteresis): the
pieces of one digit. Other digit-sized groups standing apart are reported (SeveralDigits),
not guessed between. The digit keeps its gray levels: its components, slightly widened,
mask the ink.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from service.errors import BlankImage, SeveralDigits

from .background import InkMap

MIN_CONTRAST = 0.1     # ink weaker than this share of the paper's brightness is no digit
PEAK_PERCENTILE = 99.9
NOISE_PEAK = 8.0       # the peak ink stands this many noise deviations above the paper...
NOISE_FLOOR = 5.0      # ...and ink is at least this many
FAINT_SHARE = 0.2      # ink this strong joins the pieces it connects
PEAK_SHARE = 0.5       # the threshold is at least this share of the (robust) peak ink
SPECK_SHARE = 2e-4     # components smaller than this share of the image are dust
LINE_THICKNESS = 0.015  # thinner on average than this share of the short side, and long...
LINE_LENGTH = 0.5       # ...over this share of the image: a ruled or table line
FRAME_SPAN = 0.8       # touching the edge and spanning this share of it, thinly: the frame
FRAME_FILL = 0.15
WEAK_SHARE = 0.6       # touching the edge, with mean ink under this share of the strongest
                       # component's: what the paper estimate left of a dark corner or shadow
CENTRE_FALLOFF = 0.25  # a component this far from the centre (share of the diagonal) counts half
JOIN_GAP = 0.25        # components this close (share of the digit's size) are the same digit
DIGIT_AREA = 0.25      # a group this big beside the digit, and...
DIGIT_HEIGHT = 0.5     # ...this tall, is another digit
BLANK_MESSAGE = "The image is blank: no digit was found."


@dataclass
class Component:
    label: int
    left: int
    top: int
    width: int
    height: int
    area: int
    strength: float = 0.0  # mean ink
    faint: int = 0  # the component of fainter ink it belongs to

    @property
    def right(self) -> int:
        return self.left + self.width

    @property
    def bottom(self) -> int:
        return self.top + self.height


def digit_ink(found: InkMap, cropped: bool,
              original: tuple[int, int] | None = None) -> np.ndarray:
    """The digit's ink (float32, 0-1), cut to its box, everything else zero.

    ``cropped``: the image is a crop around the caller's point, so the digit is the group
    nearest its centre and other digits are no error. ``original`` (width, height) is the
    upright image's size, for the boxes of a ``SeveralDigits`` error.
    """
    ink, noise = found
    peak = float(np.percentile(ink, PEAK_PERCENTILE))
    if peak < max(MIN_CONTRAST, NOISE_PEAK * noise):
        raise BlankImage(BLANK_MESSAGE)
    floor = max(MIN_CONTRAST, NOISE_FLOOR * noise)
    mask = ink >= max(_otsu(ink), PEAK_SHARE * peak, floor)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask.view(np.uint8), connectivity=8)
    strength = np.bincount(labels.ravel(), ink.ravel(), count) / np.maximum(stats[:, 4], 1)
    # Hysteresis: pieces that fainter ink joins (a light stroke between them) are one.
    _, faint = cv2.connectedComponents((ink >= max(FAINT_SHARE * peak, floor)).view(np.uint8),
                                       connectivity=8)
    stroke_of = np.zeros(count, np.int32)
    stroke_of[labels.ravel()] = faint.ravel()
    found = [Component(i, *map(int, stats[i]), float(strength[i]), int(stroke_of[i]))
             for i in range(1, count)]
    strongest = max((c.strength for c in found), default=0.0)
    parts = [c for c in found if not _clutter(c, ink.shape, strongest)]
    if not parts:
        raise BlankImage(BLANK_MESSAGE)
    group = _group(_main(parts, ink.shape, cropped), parts)
    if not cropped:
        _refuse_several(group, parts, ink.shape, original)
    return _cut(ink, labels, group)


def _otsu(ink: np.ndarray) -> float:
    levels = (ink * 255).astype(np.uint8)
    threshold, _ = cv2.threshold(levels, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    return float(threshold) / 255


def _clutter(c: Component, shape: tuple[int, int], strongest: float) -> bool:
    """Dust, a ruled or table line, or the frame (a page edge, a dark corner)."""
    h, w = shape
    if c.area < SPECK_SHARE * h * w:
        return True
    length = max(c.width / w, c.height / h)
    if length > LINE_LENGTH and c.area / max(c.width, c.height) < LINE_THICKNESS * min(h, w):
        return True
    touches = _touches(c, shape)
    if touches and c.strength < WEAK_SHARE * strongest:
        return True
    spans = c.width > FRAME_SPAN * w or c.height > FRAME_SPAN * h
    return touches and spans and c.area < FRAME_FILL * c.width * c.height


def _touches(c: Component, shape: tuple[int, int]) -> bool:
    return c.left == 0 or c.top == 0 or c.right == shape[1] or c.bottom == shape[0]


def _main(parts: list[Component], shape: tuple[int, int], cropped: bool) -> Component:
    """The biggest component, discounted by its distance from the centre (after a crop
    around a point: the one nearest the centre)."""
    h, w = shape
    diagonal = float(np.hypot(h, w))

    def distance(c: Component) -> float:
        dx = max(c.left - w / 2, w / 2 - c.right, 0.0)
        dy = max(c.top - h / 2, h / 2 - c.bottom, 0.0)
        return float(np.hypot(dx, dy)) / diagonal

    if cropped:
        return min(parts, key=lambda c: (distance(c), -c.area))
    return max(parts, key=lambda c: c.area / (1 + (distance(c) / CENTRE_FALLOFF) ** 2))


def _gap(a: Component, box: tuple[int, int, int, int]) -> float:
    left, top, right, bottom = box
    dx = max(left - a.right, a.left - right, 0)
    dy = max(top - a.bottom, a.top - bottom, 0)
    return float(np.hypot(dx, dy))


def _group(main: Component, parts: list[Component]) -> list[Component]:
    """``main`` and, repeatedly, every component within JOIN_GAP of the group's size or
    joined to it by fainter ink."""
    group = [main]
    rest = [c for c in parts if c is not main]
    grown = True
    while grown and rest:
        box = _box(group)
        size = max(box[2] - box[0], box[3] - box[1])
        faint = {c.faint for c in group}
        near = [c for c in rest if c.faint in faint or _gap(c, box) <= JOIN_GAP * size]
        group += near
        rest = [c for c in rest if c not in near]
        grown = bool(near)
    return group


def _box(parts: list[Component]) -> tuple[int, int, int, int]:
    return (min(c.left for c in parts), min(c.top for c in parts),
            max(c.right for c in parts), max(c.bottom for c in parts))


def _refuse_several(group: list[Component], parts: list[Component], shape: tuple[int, int],
                    original: tuple[int, int] | None) -> None:
    area = sum(c.area for c in group)
    height = _box(group)[3] - _box(group)[1]
    # What touches the frame is too doubtful to refuse for (a shadow's or page's remains,
    # a digit cut off): the digit in the picture is read.
    others = [c for c in parts if c not in group and not _touches(c, shape)
              and c.area >= DIGIT_AREA * area and c.height >= DIGIT_HEIGHT * height]
    if not others:
        return
    boxes = sorted([_box(group)] + [_box([c]) for c in others])
    h, w = shape
    sx, sy = (original[0] / w, original[1] / h) if original else (1 / w, 1 / h)
    scaled = [[round(left * sx, 4), round(top * sy, 4), round((right - left) * sx, 4),
               round((bottom - top) * sy, 4)] for left, top, right, bottom in boxes]
    raise SeveralDigits(f"The image holds {len(boxes)} digits; send one digit per image, or "
                        "pick one with x and y (a point on it).", scaled)


def _cut(ink: np.ndarray, labels: np.ndarray, group: list[Component]) -> np.ndarray:
    left, top, right, bottom = _box(group)
    pad = max(1, round(0.04 * max(right - left, bottom - top)))  # anti-aliased edges
    h, w = ink.shape
    left, top = max(left - pad, 0), max(top - pad, 0)
    right, bottom = min(right + pad, w), min(bottom + pad, h)
    window = labels[top:bottom, left:right]
    keep = np.isin(window, [c.label for c in group]).view(np.uint8)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * pad + 1,) * 2)
    keep = cv2.dilate(keep, kernel)
    return ink[top:bottom, left:right] * keep
