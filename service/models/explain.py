"""Why the model read an image as it did: occlusion sensitivity over its 28x28 input.

A PATCH x PATCH square of background is slid over the input in steps of STRIDE; every
occluded copy goes to the session pool as one batch (one ``session.run``), and each pixel's
score is the mean drop in a class's log-probability (nats) over the copies whose patch
covered it -- logs, because a confident model's probability barely moves from 0.9999 while
its log-probability does. Positive: the pixel pushed the model toward that class; negative:
away from it. It needs only the frozen graph: no gradients, no second model.
"""
from __future__ import annotations

import base64
import io
from dataclasses import dataclass

import numpy as np
from PIL import Image

PATCH, STRIDE = 6, 2
SCALE = 8  # the PNG's pixels per input pixel
TINY = 1e-12  # probabilities below this count as this (log of 0)
MAX_IMAGES = 16  # explained per request: each costs COPIES more rows of the model


@dataclass(frozen=True)
class ClassMap:
    class_id: int
    scores: np.ndarray  # (H, W) float32, the mean log-probability drop per pixel

    def to_dict(self, image: np.ndarray) -> dict:
        return {"class": self.class_id, "map": np.round(self.scores, 5).tolist(),
                "png": data_url(overlay(image, self.scores))}


def positions(height: int, width: int) -> list[tuple[int, int]]:
    """Every patch's top-left corner, the last row and column flush with the edge."""
    rows = sorted(set(range(0, height - PATCH + 1, STRIDE)) | {height - PATCH})
    cols = sorted(set(range(0, width - PATCH + 1, STRIDE)) | {width - PATCH})
    return [(r, c) for r in rows for c in cols]


COPIES = len(positions(28, 28))  # occluded copies of a 28x28 input: 144


def occluded(image: np.ndarray) -> np.ndarray:
    """One copy of ``image`` (H, W[, C]) per patch position, the patch set to 0 (background)."""
    spots = positions(*image.shape[:2])
    copies = np.repeat(image[None], len(spots), axis=0)
    for index, (r, c) in enumerate(spots):
        copies[index, r:r + PATCH, c:c + PATCH] = 0.0
    return copies


def class_maps(image: np.ndarray, probabilities: np.ndarray, occluded_probabilities: np.ndarray,
               classes: list[int]) -> list[ClassMap]:
    """Each class's map, from the image's own probabilities and its occluded copies'."""
    height, width = image.shape[:2]
    spots = positions(height, width)
    coverage = np.zeros((height, width), np.float32)
    for r, c in spots:
        coverage[r:r + PATCH, c:c + PATCH] += 1
    maps = []
    logs = np.log(np.maximum(probabilities, TINY))
    occluded_logs = np.log(np.maximum(occluded_probabilities, TINY))
    for class_id in classes:
        drops = logs[class_id] - occluded_logs[:, class_id]
        total = np.zeros((height, width), np.float32)
        for drop, (r, c) in zip(drops, spots):
            total[r:r + PATCH, c:c + PATCH] += drop
        maps.append(ClassMap(class_id, total / coverage))
    return maps


def overlay(image: np.ndarray, scores: np.ndarray) -> bytes:
    """The input in gray with the map over it: red where a pixel supported the class, blue
    where it spoke against it; SCALE times larger, as a PNG."""
    gray = np.clip(image.reshape(image.shape[:2]), 0, 1) * 0.6
    peak = float(np.abs(scores).max()) or 1.0
    strength = np.clip(scores / peak, -1, 1)
    rgb = np.stack([gray] * 3, axis=-1)
    rgb[..., 0] += np.clip(strength, 0, 1) * 0.9
    rgb[..., 2] += np.clip(-strength, 0, 1) * 0.9
    pixels = (np.clip(rgb, 0, 1) * 255).astype(np.uint8)
    picture = Image.fromarray(pixels, "RGB").resize(
        (pixels.shape[1] * SCALE, pixels.shape[0] * SCALE), Image.NEAREST)
    out = io.BytesIO()
    picture.save(out, format="PNG")
    return out.getvalue()


def data_url(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")
