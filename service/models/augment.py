"""Training-time augmentation: each epoch sees every MNIST digit written a little differently.

What people send differs from MNIST's clean scans in the ways drawn here, one random draw per
image and epoch: a small affine change (rotation, scale, shear, shift), an elastic distortion
(Simard et al. 2003: a smoothed random displacement field), and a thicker or thinner stroke.
OpenCV does each per image in microseconds, so an epoch of 60,000 digits costs a second or two
beside the minute TensorFlow spends training on it.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import cv2
import numpy as np

SIZE = 28


@dataclass(frozen=True)
class Augmentation:
    """The ranges drawn from (uniformly) for each image; ``keep`` is the share left as is."""

    keep: float = 0.25
    rotate_deg: float = 10.0
    scale: float = 0.1          # 1 +- this
    shear: float = 0.15         # x += shear * y
    shift_px: float = 2.0
    elastic_p: float = 0.35
    elastic_alpha: float = 6.0   # pixels of displacement, before smoothing
    elastic_sigma: float = 3.5
    thicken_p: float = 0.1
    thin_p: float = 0.05

    def describe(self) -> dict:
        return asdict(self)


DEFAULT = Augmentation()
_KERNEL = np.ones((2, 2), np.uint8)


def augment(images: np.ndarray, rng: np.random.Generator,
            params: Augmentation = DEFAULT) -> np.ndarray:
    """A new uint8 (N, 28, 28) array: ``images`` each changed by one random draw."""
    out = images.copy()
    n = len(images)
    changed = rng.random(n) >= params.keep
    draws = _affine_draws(rng, n, params)
    elastic = rng.random(n) < params.elastic_p
    stroke = rng.random(n)
    for i in np.flatnonzero(changed):
        img = cv2.warpAffine(images[i], draws[i], (SIZE, SIZE), flags=cv2.INTER_LINEAR,
                             borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        if elastic[i]:
            img = _elastic(img, rng, params)
        if stroke[i] < params.thicken_p:
            img = cv2.dilate(img, _KERNEL)
        elif stroke[i] < params.thicken_p + params.thin_p:
            img = _thinned(img)
        out[i] = img
    return out


def _thinned(img: np.ndarray) -> np.ndarray:
    """One pixel thinner, unless that would break a stroke already thin (most ink lost)."""
    thinner = cv2.erode(img, _KERNEL)
    return thinner if int(thinner.sum()) * 5 >= int(img.sum()) * 3 else img


def _affine_draws(rng: np.random.Generator, n: int, p: Augmentation) -> np.ndarray:
    """(N, 2, 3) matrices about the image centre: rotate, scale, shear, then shift."""
    angle = np.deg2rad(rng.uniform(-p.rotate_deg, p.rotate_deg, n))
    scale = rng.uniform(1 - p.scale, 1 + p.scale, n)
    shear = rng.uniform(-p.shear, p.shear, n)
    shift = rng.uniform(-p.shift_px, p.shift_px, (n, 2))
    cos, sin = np.cos(angle) * scale, np.sin(angle) * scale
    linear = np.empty((n, 2, 2))
    linear[:, 0, 0], linear[:, 0, 1] = cos, -sin + cos * shear
    linear[:, 1, 0], linear[:, 1, 1] = sin, cos + sin * shear
    centre = np.array([(SIZE - 1) / 2] * 2)
    offset = centre - linear @ centre + shift
    return np.concatenate([linear, offset[:, :, None]], axis=2).astype(np.float32)


def _elastic(img: np.ndarray, rng: np.random.Generator, p: Augmentation) -> np.ndarray:
    fields = rng.uniform(-1, 1, (2, SIZE, SIZE)).astype(np.float32)
    dx, dy = (cv2.GaussianBlur(f, (0, 0), p.elastic_sigma) * p.elastic_alpha * p.elastic_sigma
              for f in fields)  # blurring shrinks the field ~ 1/sigma: scale it back
    grid = np.arange(SIZE, dtype=np.float32)
    map_x, map_y = grid[None, :] + dx, grid[:, None] + dy
    return cv2.remap(img, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                     borderValue=0)
