"""A model input rendered as a PNG, for people to see what the model saw."""
from __future__ import annotations

import io

import numpy as np
from PIL import Image


def to_png(array: np.ndarray, scale: int = 8) -> bytes:
    """Render a model input (values in [0, 1]) as a PNG enlarged ``scale`` times, pixels kept sharp."""
    arr = np.asarray(array, dtype=np.float32)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] == 3)) or arr.size == 0:
        raise ValueError(f"to_png needs an (H, W) or (H, W, 3) array; got shape {arr.shape}")
    if isinstance(scale, bool) or not isinstance(scale, int) or scale < 1:
        raise ValueError(f"to_png scale must be a positive integer; got {scale!r}")
    pixels = (np.clip(np.nan_to_num(arr), 0.0, 1.0) * 255).round().astype(np.uint8)
    img = Image.fromarray(pixels)
    img = img.resize((img.width * scale, img.height * scale), Image.Resampling.NEAREST)
    out = io.BytesIO()
    img.save(out, format="PNG")
    return out.getvalue()

