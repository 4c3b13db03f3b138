"""The wild set: MNIST test digits rendered as people send them, one category per way.

Each sample is an encoded image file, made deterministically from a seed, nothing downloaded:
a digit written on paper and photographed with a phone (grey or tinted paper, vignette,
lighting gradient, perspective tilt, blur, noise, JPEG, digit 20-40 % of the frame and off
centre; optionally a shadow edge across the page), on ruled or squared paper, scanned, in
coloured pen or marker, thick or thin, drawn on a canvas and exported with transparency,
white on black, or tiny. The strokes are the MNIST test digit's own, upscaled, so the label
is MNIST's.
"""
from __future__ import annotations

import io
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Iterator

import cv2
import numpy as np
from PIL import Image

SEED = 20261202
PER_CATEGORY = 200


@dataclass(frozen=True)
class Sample:
    category: str
    data: bytes   # the encoded file, as it would be uploaded
    label: int
    index: int    # into the MNIST test set


# ---- the pieces every rendering uses ------------------------------------------------------

def ink_alpha(digit: np.ndarray, height: int, rng: np.random.Generator,
              stroke: float = 0.0) -> np.ndarray:
    """The 28x28 digit's ink as float32 alpha in [0, 1], its box scaled to ``height`` px;
    ``stroke`` > 0 thickens (dilates by that share of the height), < 0 thins."""
    rows, cols = np.flatnonzero(digit.max(1) > 0), np.flatnonzero(digit.max(0) > 0)
    box = digit[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
    scale = height / box.shape[0]
    size = (max(2, round(box.shape[1] * scale)), max(2, height))
    alpha = cv2.resize(box.astype(np.float32) / 255, size, interpolation=cv2.INTER_CUBIC)
    alpha = np.clip((alpha - 0.15) * 1.6, 0, 1)  # crisper edges than the upscale's blur
    radius = round(abs(stroke) * height)
    if radius:
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1,) * 2)
        alpha = cv2.dilate(alpha, kernel) if stroke > 0 else cv2.erode(alpha, kernel)
    pad = max(4, height // 6)
    return np.pad(alpha, pad)


def place(alpha: np.ndarray, shape: tuple[int, int], centre: tuple[float, float]) -> np.ndarray:
    """``alpha`` pasted on a zero (H, W) canvas with its centre at ``centre`` (x, y), clipped."""
    canvas = np.zeros(shape, np.float32)
    h, w = alpha.shape
    top, left = round(centre[1] - h / 2), round(centre[0] - w / 2)
    t0, l0 = max(top, 0), max(left, 0)
    t1, l1 = min(top + h, shape[0]), min(left + w, shape[1])
    if t1 > t0 and l1 > l0:
        canvas[t0:t1, l0:l1] = alpha[t0 - top:t1 - top, l0 - left:l1 - left]
    return canvas


def blend(paper: np.ndarray, ink: np.ndarray, colour: np.ndarray) -> np.ndarray:
    """Ink of ``colour`` laid on ``paper`` (H, W, 3 float) with alpha ``ink`` (H, W)."""
    return paper + (colour - paper) * ink[..., None]


def paper_rgb(shape: tuple[int, int], rng: np.random.Generator, grey: tuple[float, float],
              tint: float) -> np.ndarray:
    level = rng.uniform(*grey)
    hue = rng.normal(0, tint, 3)
    return np.full((*shape, 3), np.clip(level * (1 + hue), 0, 255), np.float32)


def illumination(shape: tuple[int, int], rng: np.random.Generator, vignette: float,
                 gradient: float) -> np.ndarray:
    """A (H, W) light field: darker corners, and light falling off across the frame."""
    h, w = shape
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    cx, cy = rng.uniform(0.35, 0.65) * w, rng.uniform(0.35, 0.65) * h
    r2 = ((x - cx) / (w / 2)) ** 2 + ((y - cy) / (h / 2)) ** 2
    angle = rng.uniform(0, 2 * np.pi)
    ramp = ((x / w - 0.5) * np.cos(angle) + (y / h - 0.5) * np.sin(angle))
    return np.clip((1 - vignette * r2 / 2) * (1 + gradient * ramp), 0.15, 1.3)


def shadow(shape: tuple[int, int], rng: np.random.Generator, strength: float) -> np.ndarray:
    """A (H, W) factor: a soft-edged shadow over one side of a line across the frame."""
    h, w = shape
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    offset = rng.uniform(-0.3, 0.3)
    side = (x / w - 0.5) * np.cos(angle) + (y / h - 0.5) * np.sin(angle) - offset
    softness = rng.uniform(0.005, 0.03)
    return 1 - strength / (1 + np.exp(-side / softness))


def tilt(img: np.ndarray, rng: np.random.Generator, amount: float) -> np.ndarray:
    """A small perspective change (corners moved by up to ``amount`` of the size)."""
    h, w = img.shape[:2]
    src = np.float32([[0, 0], [w, 0], [w, h], [0, h]])
    dst = (src + rng.uniform(-amount, amount, (4, 2)) * [w, h]).astype(np.float32)
    matrix = cv2.getPerspectiveTransform(src, dst)
    return cv2.warpPerspective(img, matrix, (w, h), borderMode=cv2.BORDER_REFLECT)


def camera(img: np.ndarray, rng: np.random.Generator, blur: float, noise: float) -> np.ndarray:
    if blur > 0:
        img = cv2.GaussianBlur(img, (0, 0), blur)
    grain = np.empty(img.shape, np.float32)
    cv2.setRNGSeed(int(rng.integers(2**31)))  # OpenCV's generator: 10x numpy's speed here
    cv2.randn(grain, 0.0, float(noise))
    return img + grain


def encode(img: np.ndarray, fmt: str, quality: int = 90) -> bytes:
    """A gray or RGB float image as a "JPEG" or "PNG" file (OpenCV's encoders: several times
    Pillow's speed on noisy photos)."""
    arr = np.clip(img, 0, 255).round().astype(np.uint8)
    if arr.ndim == 3:
        arr = np.ascontiguousarray(arr[..., ::-1])  # OpenCV writes BGR
    options = [cv2.IMWRITE_JPEG_QUALITY, quality] if fmt == "JPEG" else \
        [cv2.IMWRITE_PNG_COMPRESSION, 1]
    ok, data = cv2.imencode(".jpg" if fmt == "JPEG" else ".png", arr, options)
    if not ok:
        raise RuntimeError(f"OpenCV could not encode a {fmt}")
    return data.tobytes()


def pen_colour(rng: np.random.Generator, kind: str) -> np.ndarray:
    colours = {"dark": [[25, 25, 30], [20, 30, 70], [40, 40, 40]],
               "colour": [[30, 60, 190], [190, 30, 40], [20, 120, 50], [110, 40, 150]]}[kind]
    base = np.array(colours[rng.integers(len(colours))], np.float32)
    return np.clip(base + rng.normal(0, 10, 3), 0, 255).astype(np.float32)


# ---- the categories -----------------------------------------------------------------------

def _frame(rng: np.random.Generator) -> tuple[int, int]:
    long, short = int(rng.integers(300, 480)), int(rng.integers(225, 360))
    return (long, short) if rng.random() < 0.6 else (short, long)  # (H, W): mostly portrait


def photo(digit: np.ndarray, rng: np.random.Generator, with_shadow: bool = False) -> bytes:
    shape = _frame(rng)
    height = round(rng.uniform(0.2, 0.4) * min(shape))
    alpha = ink_alpha(digit, height, rng, stroke=rng.uniform(-0.01, 0.03))
    centre = (rng.uniform(0.3, 0.7) * shape[1], rng.uniform(0.3, 0.7) * shape[0])
    ink = place(alpha, shape, centre)
    paper = paper_rgb(shape, rng, (140, 225), tint=0.06)
    img = blend(paper, ink, pen_colour(rng, "dark"))
    light = illumination(shape, rng, vignette=rng.uniform(0.25, 0.6),
                         gradient=rng.uniform(0.1, 0.5))
    if with_shadow:
        light = light * shadow(shape, rng, rng.uniform(0.3, 0.55))
    img = tilt(img * light[..., None], rng, 0.04)
    img = camera(img, rng, blur=rng.uniform(0.5, 2.0), noise=rng.uniform(2, 6))
    return encode(img, "JPEG", int(rng.integers(60, 92)))


def photo_shadow(digit: np.ndarray, rng: np.random.Generator) -> bytes:
    return photo(digit, rng, with_shadow=True)


def lined(digit: np.ndarray, rng: np.random.Generator, squared: bool) -> bytes:
    shape = _frame(rng)
    height = round(rng.uniform(0.25, 0.45) * min(shape))
    ink = place(ink_alpha(digit, height, rng, stroke=rng.uniform(0, 0.02)), shape,
                (rng.uniform(0.35, 0.65) * shape[1], rng.uniform(0.35, 0.65) * shape[0]))
    paper = paper_rgb(shape, rng, (225, 250), tint=0.02)
    line_colour = np.array([[150, 180, 225], [170, 170, 175]][rng.integers(2)], np.float32)
    lines = np.zeros(shape, np.float32)
    spacing = rng.uniform(0.06, 0.12) * min(shape) if not squared else \
        rng.uniform(0.04, 0.07) * min(shape)
    width = max(1, round(min(shape) / 400))
    for y in np.arange(rng.uniform(0, spacing), shape[0], spacing):
        lines[int(y):int(y) + width] = 0.8
    if squared:
        for x in np.arange(rng.uniform(0, spacing), shape[1], spacing):
            lines[:, int(x):int(x) + width] = 0.8
    img = blend(blend(paper, lines, line_colour), ink, pen_colour(rng, "dark"))
    light = illumination(shape, rng, vignette=rng.uniform(0, 0.3), gradient=rng.uniform(0, 0.3))
    img = camera(tilt(img * light[..., None], rng, 0.02), rng, rng.uniform(0.3, 1.2), 3)
    return encode(img, "JPEG", int(rng.integers(70, 95)))


def ruled(digit: np.ndarray, rng: np.random.Generator) -> bytes:
    return lined(digit, rng, squared=False)


def squared(digit: np.ndarray, rng: np.random.Generator) -> bytes:
    return lined(digit, rng, squared=True)


def _sheet(digit: np.ndarray, rng: np.random.Generator, sides: tuple[int, int],
           aspect: tuple[float, float], height: tuple[float, float],
           stroke: tuple[float, float], centre: tuple[float, float]
           ) -> tuple[tuple[int, int], np.ndarray]:
    """A sheet's (H, W) and the digit's ink alpha on it: a random size and aspect, the digit
    a random share of the short side tall, its stroke changed, near the centre."""
    side = int(rng.integers(*sides))
    shape = (side, round(side * rng.uniform(*aspect)))
    tall = round(rng.uniform(*height) * min(shape))
    ink = place(ink_alpha(digit, tall, rng, stroke=rng.uniform(*stroke)), shape,
                (rng.uniform(*centre) * shape[1], rng.uniform(*centre) * shape[0]))
    return shape, ink


def scan(digit: np.ndarray, rng: np.random.Generator) -> bytes:
    shape, ink = _sheet(digit, rng, (160, 360), (0.8, 1.25), (0.4, 0.75), (0, 0.02), (0.4, 0.6))
    paper = paper_rgb(shape, rng, (235, 255), tint=0.01)
    img = camera(blend(paper, ink, pen_colour(rng, "dark")), rng, rng.uniform(0, 0.8), 2)
    gray = img.mean(axis=2)
    return encode(gray, "PNG") if rng.random() < 0.5 else encode(gray, "JPEG", 85)


def pen(digit: np.ndarray, rng: np.random.Generator, stroke: tuple[float, float] = (0, 0.015),
        kind: str = "colour") -> bytes:
    shape, ink = _sheet(digit, rng, (140, 360), (0.75, 1.33), (0.35, 0.7), stroke, (0.35, 0.65))
    paper = paper_rgb(shape, rng, (225, 255), tint=0.03)
    img = camera(blend(paper, ink, pen_colour(rng, kind)), rng, rng.uniform(0, 1.0), 3)
    return encode(img, "JPEG" if rng.random() < 0.8 else "PNG", 88)


def marker(digit: np.ndarray, rng: np.random.Generator) -> bytes:
    kind = "colour" if rng.random() < 0.5 else "dark"
    return pen(digit, rng, stroke=(0.025, 0.05), kind=kind)


def thin(digit: np.ndarray, rng: np.random.Generator) -> bytes:
    return pen(digit, rng, stroke=(-0.03, -0.015), kind="dark")


def canvas(digit: np.ndarray, rng: np.random.Generator) -> bytes:
    """A drawing app's export: black strokes on a transparent background (RGBA PNG)."""
    side = int(rng.integers(160, 320))
    height = round(rng.uniform(0.5, 0.8) * side)
    alpha = place(ink_alpha(digit, height, rng, stroke=rng.uniform(0.0, 0.025)), (side, side),
                  (rng.uniform(0.4, 0.6) * side, rng.uniform(0.4, 0.6) * side))
    rgba = np.zeros((side, side, 4), np.float32)
    rgba[..., :3] = pen_colour(rng, "dark")
    rgba[..., 3] = alpha * 255
    out = io.BytesIO()
    Image.fromarray(np.clip(rgba, 0, 255).round().astype(np.uint8), "RGBA").save(out, "PNG")
    return out.getvalue()


def inverted(digit: np.ndarray, rng: np.random.Generator) -> bytes:
    """Chalk or a screenshot: light strokes on a dark background."""
    shape, ink = _sheet(digit, rng, (100, 300), (0.8, 1.25), (0.4, 0.75), (0, 0.03), (0.4, 0.6))
    board = paper_rgb(shape, rng, (10, 70), tint=0.1)
    chalk = np.clip(rng.uniform(200, 250) + rng.normal(0, 8, 3), 0, 255).astype(np.float32)
    img = camera(blend(board, ink, chalk), rng, rng.uniform(0, 1.0), rng.uniform(1, 5))
    return encode(img, "PNG" if rng.random() < 0.5 else "JPEG", 90)


def tiny(digit: np.ndarray, rng: np.random.Generator) -> bytes:
    """A thumbnail: 14-28 px, dark on light."""
    side = int(rng.integers(14, 29))
    big = 255 - np.pad(digit, 4).astype(np.float32)
    small = cv2.resize(big, (side, side), interpolation=cv2.INTER_AREA)
    return encode(small, "PNG")


CATEGORIES: dict[str, Callable[[np.ndarray, np.random.Generator], bytes]] = {
    "photo": photo, "photo_shadow": photo_shadow, "ruled": ruled, "squared": squared,
    "scan": scan, "pen": pen, "marker": marker, "thin": thin, "canvas": canvas,
    "inverted": inverted, "tiny": tiny,
}


def wild_set(images: np.ndarray, labels: np.ndarray, per_category: int = PER_CATEGORY,
             seed: int = SEED, categories: tuple[str, ...] = tuple(CATEGORIES)
             ) -> Iterator[Sample]:
    """``per_category`` samples of each category, from test digits drawn with ``seed``; the
    categories render on a few threads (OpenCV and numpy release the interpreter lock), each
    from its own generator, so the set does not depend on the threads."""
    def render(number: int) -> list[Sample]:
        name = categories[number]
        rng = np.random.default_rng([seed, tuple(CATEGORIES).index(name)])
        return [Sample(name, CATEGORIES[name](images[i], rng), int(labels[i]), int(i))
                for i in rng.choice(len(images), per_category, replace=False)]

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        for samples in pool.map(render, range(len(categories))):
            yield from samples
