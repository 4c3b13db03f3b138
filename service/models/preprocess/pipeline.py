"""Upload bytes to model input: decode (no larger than needed), crop, normalise."""
from __future__ import annotations

import io
import logging
import time

import numpy as np
from PIL import Image

from service.errors import InvalidImage, ServiceError

from .containers import DEFAULT_MAX_FRAMES, DEFAULT_MAX_PIXELS
from .decode import (crop_and_convert, decode_for, describe_error, plain_gray_png,
                     requested_crop)
from .normalise import normalise
from .spec import DEFAULT_SPEC, PreprocessSpec

log = logging.getLogger("service.models.preprocess")


def to_model_input(
    img: Image.Image,
    spec: PreprocessSpec = DEFAULT_SPEC,
    x: float | None = None,
    y: float | None = None,
    crop: float | None = None,
) -> np.ndarray:
    """Float32 in [0, 1]: (H, W) for gray specs, (H, W, 3) for RGB.

    ``x``, ``y`` (pixels of the upright original image) pick the centre of a square crop of
    ``crop`` (or the spec's ``crop_fraction``, or 1) times the shorter side; ``crop`` alone
    crops around the image centre.
    """
    original, point = requested_crop(img, x, y, crop)
    try:
        pixels, cropped = crop_and_convert(img, spec, original, point, crop)
    except ServiceError:
        raise
    except Exception as exc:
        raise _unexpected(exc) from None
    return _normalised(pixels, spec, cropped, original)


def _normalised(pixels: np.ndarray, spec: PreprocessSpec, cropped: bool,
                original: tuple[int, int]) -> np.ndarray:
    """``normalise``, with any error that is not ours reported as an unreadable image."""
    try:
        return normalise(pixels, spec, cropped, original)
    except ServiceError:
        raise
    except Exception as exc:
        raise _unexpected(exc) from None


def _unexpected(exc: Exception) -> InvalidImage:
    # Not expected after a successful decode; keep the traceback for whoever debugs it.
    log.warning("preprocessing failed", exc_info=True)
    return InvalidImage(f"The image could not be processed: {describe_error(exc)}")


def model_input(
    data: bytes,
    spec: PreprocessSpec = DEFAULT_SPEC,
    *,
    x: float | None = None,
    y: float | None = None,
    crop: float | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_frames: int = DEFAULT_MAX_FRAMES,
) -> tuple[np.ndarray, float]:
    """``spec``'s model input from upload bytes (see :func:`to_model_input`), and the
    seconds its decoding took. A plain grayscale PNG skips Pillow (``plain_gray_png``)."""
    started = time.monotonic()
    if x is None and y is None and crop is None:
        pixels = plain_gray_png(data, spec, max_pixels)
        if pixels is not None:
            decoded = time.monotonic()
            return _normalised(pixels, spec, False, pixels.shape[::-1]), decoded - started
    img = decode_for(data, spec, x=x, y=y, crop=crop, max_pixels=max_pixels,
                     max_frames=max_frames)
    decoded = time.monotonic()
    return to_model_input(img, spec, x=x, y=y, crop=crop), decoded - started


def preprocess(
    data: bytes,
    spec: PreprocessSpec = DEFAULT_SPEC,
    *,
    x: float | None = None,
    y: float | None = None,
    crop: float | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_frames: int = DEFAULT_MAX_FRAMES,
) -> np.ndarray:
    """Decode ``data`` and turn it into ``spec``'s model input (see :func:`to_model_input`)."""
    return model_input(data, spec, x=x, y=y, crop=crop, max_pixels=max_pixels,
                       max_frames=max_frames)[0]


def warm_up() -> None:
    """Load Pillow's codecs and run each path once, so the first request does not pay for it."""
    Image.init()
    digit = np.zeros((40, 40), np.uint8)
    digit[8:32, 18:22] = 255
    for fmt in ("PNG", "JPEG"):
        buffer = io.BytesIO()
        Image.fromarray(digit).resize((120, 120)).save(buffer, format=fmt)
        preprocess(buffer.getvalue())
