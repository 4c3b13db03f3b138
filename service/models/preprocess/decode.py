"""Decoding an upload into an upright first frame, and cropping and converting it.

JPEGs are decoded no larger than the model and the crop need (draft); EXIF orientation is
applied; transparency is composited onto white; high-depth modes are scaled to 8 bits.
"""
from __future__ import annotations

import io
import math
import struct
import zlib
from typing import Any

import cv2
import numpy as np
from PIL import Image, ImageOps, JpegImagePlugin

from service.errors import InvalidImage, InvalidInput, ServiceError, UnsupportedMediaType

from .containers import (DEFAULT_MAX_FRAMES, DEFAULT_MAX_PIXELS, check_container,
                         document_format, pixel_limit, too_large, too_many_frames)
from .spec import DEFAULT_SPEC, PreprocessSpec, is_fraction, is_number

# PNG first: Image.open tries the formats in this order, and PNG is the common upload.
SUPPORTED_FORMATS = ("PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP")
# Big images are shrunk early (JPEG draft while decoding, integer box-reduce otherwise) but
# kept at least this many times the model input, so the ink box keeps enough resolution.
DRAFT_FACTOR = 4

# Where decode() records the size before any JPEG draft reduction, so that x, y given in the
# image's own pixels can be mapped onto the (possibly smaller) decoded image.
ORIGINAL_SIZE_KEY = "preprocess.original_size"
EXIF_ORIENTATION = 0x0112
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")

# The plain grayscale PNG (what MNIST-style clients send) is decoded by OpenCV's libpng
# straight into an array: 9 us against Pillow's 45 us, and no copy out of a PIL image.
# Plain: 8 bits, gray, not interlaced, small enough that Pillow's path would not shrink it,
# every chunk's CRC right, and no chunk Pillow would act on (transparency, frames, EXIF,
# colour profiles). Anything else -- and anything OpenCV cannot decode -- goes to Pillow.
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PLAIN_PNG_CHUNKS = frozenset({b"IHDR", b"IDAT", b"IEND", b"tEXt", b"zTXt", b"iTXt", b"pHYs",
                              b"tIME"})
PLAIN_PNG_MAX_CHUNKS = 64


def decode(
    data: bytes,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    draft_size: tuple[int, int] | None = None,
    draft_mode: str | None = None,
    max_frames: int = DEFAULT_MAX_FRAMES,
) -> Image.Image:
    """Decode an upload into a fully loaded, upright first frame.

    ``draft_size``/``draft_mode`` only affect JPEG: the decoder may then shrink the image by a
    power of two (never below ``draft_size``) and convert it to ``draft_mode`` while decoding.
    The size before that is kept in ``img.info[ORIGINAL_SIZE_KEY]``. ``max_pixels`` is checked
    against the header before any pixel is decoded; Pillow's ``Image.MAX_IMAGE_PIXELS`` (if
    lower) is the ceiling, so its decompression-bomb checks also end as a 413. ``max_frames``
    and the number of blocks are checked on the container's structure before Pillow reads it.
    """
    if not data:
        raise InvalidImage("The image is empty (0 bytes).")
    try:
        img = _open(data, max_pixels, max_frames)
        original = img.size
        if draft_size and isinstance(img, JpegImagePlugin.JpegImageFile):  # MPO photos too
            img.draft(draft_mode, draft_size)
        img.load()
        img, turned = _apply_orientation(img)
    except ServiceError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise too_large(None, max_pixels) from None
    except Exception as exc:  # corrupt input can make any decoder fail in any way
        raise InvalidImage(f"The image could not be decoded: {describe_error(exc)}") from None
    img.info[ORIGINAL_SIZE_KEY] = original[::-1] if turned else original
    return img


def decode_for(
    data: bytes,
    spec: PreprocessSpec = DEFAULT_SPEC,
    *,
    x: float | None = None,
    y: float | None = None,
    crop: float | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_frames: int = DEFAULT_MAX_FRAMES,
) -> Image.Image:
    """Decode ``data`` no larger than ``spec`` and the crop need (JPEG draft)."""
    _check_crop(crop)  # before paying for the decode
    fraction = crop or (spec.crop_fraction if x is not None or y is not None else None) or 1.0
    # The crop must still hold DRAFT_FACTOR x the model's pixels after the JPEG draft; a
    # vanishing fraction (e.g. 1e-313) needs every pixel: no draft, not an overflow to inf.
    side = DRAFT_FACTOR * max(spec.width, spec.height) / fraction
    draft = (math.ceil(side), math.ceil(side)) if math.isfinite(side) else None
    mode = "L" if spec.color == "gray" else "RGB"
    return decode(data, max_pixels, draft_size=draft, draft_mode=mode, max_frames=max_frames)


def plain_gray_png(data: bytes, spec: PreprocessSpec = DEFAULT_SPEC,
                   max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray | None:
    """The uint8 (H, W) pixels of a plain grayscale PNG (see ``PLAIN_PNG_CHUNKS``), decoded
    as Pillow would decode them; None for any other upload."""
    if spec.color != "gray" or not data.startswith(PNG_SIGNATURE) or len(data) < 33:
        return None
    length, kind, width, height, depth, color, _, _, interlace = struct.unpack_from(
        ">I4sIIBBBBB", data, 8)
    shrinks_at = 2 * DRAFT_FACTOR * max(spec.width, spec.height)  # _shrink's threshold
    if (kind != b"IHDR" or length != 13 or (depth, color, interlace) != (8, 0, 0)
            or not 0 < min(width, height) < shrinks_at
            or width * height > pixel_limit(max_pixels) or not _plain_chunks(data)):
        return None
    pixels = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if pixels is None or pixels.shape != (height, width) or pixels.dtype != np.uint8:
        return None
    return pixels


def _plain_chunks(data: bytes) -> bool:
    """Every chunk up to IEND is one of ``PLAIN_PNG_CHUNKS``, whole, with a correct CRC."""
    pos, end = 8, len(data)
    for _ in range(PLAIN_PNG_MAX_CHUNKS):
        if pos + 12 > end:
            return False
        length, kind = struct.unpack_from(">I4s", data, pos)
        stop = pos + 8 + length
        if kind not in PLAIN_PNG_CHUNKS or stop + 4 > end:
            return False
        if zlib.crc32(data[pos + 4:stop]) != int.from_bytes(data[stop:stop + 4], "big"):
            return False
        if kind == b"IEND":
            return True
        pos = stop + 4
    return False


def _open(data: bytes, max_pixels: int, max_frames: int = DEFAULT_MAX_FRAMES) -> Image.Image:
    """Open (header only) in a supported format and check its pixel and frame counts."""
    check_container(data, max_pixels, max_frames)
    try:
        img = Image.open(io.BytesIO(data), formats=SUPPORTED_FORMATS)
    except Image.UnidentifiedImageError:
        raise _unsupported_or_invalid(data) from None
    width, height = img.size
    if width * height > pixel_limit(max_pixels):
        raise too_large(img.size, max_pixels)
    if width < 1 or height < 1:
        raise InvalidImage("The image has no pixels.")
    if img.format == "MPO" and img.n_frames > max_frames:  # declared in its header: cheap
        raise too_many_frames(max_frames)
    return img


def _unsupported_or_invalid(data: bytes) -> ServiceError:
    """415 for documents (SVG, PDF...) and formats Pillow knows but we refuse, else 400."""
    document = document_format(data)
    if document is not None:
        return UnsupportedMediaType(
            f"The data is {document}, not an image in a format we read; use one of "
            f"{', '.join(SUPPORTED_FORMATS)}.",
            code="unsupported_image_format",
        )
    try:
        with Image.open(io.BytesIO(data)) as img:
            fmt = img.format
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        fmt = "this"
    except Exception:
        return InvalidImage("The data is not an image in a format we can read.")
    return UnsupportedMediaType(
        f"Images in {fmt} format are not supported; use one of {', '.join(SUPPORTED_FORMATS)}.",
        code="unsupported_image_format",
    )


def describe_error(exc: Exception) -> str:
    """The exception's message, short enough for a response."""
    text = str(exc).strip() or type(exc).__name__
    return text[:200]


def _apply_orientation(img: Image.Image) -> tuple[Image.Image, bool]:
    """Apply the EXIF orientation; also says whether width and height were swapped."""
    orientation = img.getexif().get(EXIF_ORIENTATION)
    # Checking the tag first avoids the copy exif_transpose makes when there is nothing to do.
    if orientation not in (2, 3, 4, 5, 6, 7, 8):
        return img, False
    return ImageOps.exif_transpose(img), orientation >= 5


def requested_crop(img: Image.Image, x: Any, y: Any,
                   crop: Any) -> tuple[tuple[int, int], tuple[float, float] | None]:
    """The upright original's size and the crop centre asked for; InvalidInput if out of range."""
    _check_crop(crop)
    original = _original_size(img)
    return original, _check_point(x, y, original)


def crop_and_convert(img: Image.Image, spec: PreprocessSpec, original: tuple[int, int],
                     point: tuple[float, float] | None,
                     crop: float | None) -> tuple[np.ndarray, bool]:
    """The pixels of the requested crop, in ``spec``'s colour and shrunk towards its size
    (uint8, (H, W) or (H, W, 3)); and whether a crop was taken."""
    box = _crop_box(img.size, original, point, crop, spec.crop_fraction)
    if box is not None:
        img = img.crop(box)
    img = _shrink(_convert(img, spec.color), DRAFT_FACTOR * max(spec.width, spec.height))
    return np.asarray(img), box is not None


def _check_crop(crop: Any) -> None:
    if crop is not None and not is_fraction(crop):
        raise InvalidInput(f"crop must be a number greater than 0 and at most 1; got {crop!r}.")


def _original_size(img: Image.Image) -> tuple[int, int]:
    # info can also hold metadata from the file itself, so trust only a well-formed value.
    size = img.info.get(ORIGINAL_SIZE_KEY)
    if isinstance(size, tuple) and len(size) == 2 and all(isinstance(v, int) and v > 0 for v in size):
        return size
    return img.size


def _check_point(x: Any, y: Any, original: tuple[int, int]) -> tuple[float, float] | None:
    if x is None and y is None:
        return None
    for name, value, limit, what in (("x", x, original[0], "width"), ("y", y, original[1], "height")):
        if value is None:
            raise InvalidInput(f"{name} is missing: give both x and y, or neither.")
        if not is_number(value) or not 0 <= value <= limit:
            raise InvalidInput(f"{name} must be between 0 and {limit} (the image {what}); got {value!r}.")
    return float(x), float(y)


def _crop_box(
    size: tuple[int, int],
    original: tuple[int, int],
    point: tuple[float, float] | None,
    crop: float | None,
    default_fraction: float | None,
) -> tuple[int, int, int, int] | None:
    """Pillow box of the square crop, in the decoded image's pixels; None for no crop."""
    if point is None and crop is None:
        return None
    fraction = crop or default_fraction or 1.0
    cx, cy = point if point is not None else (original[0] / 2, original[1] / 2)
    half = fraction * min(original) / 2
    width, height = size
    sx, sy = width / original[0], height / original[1]  # < 1 after a JPEG draft
    left, right = _span((cx - half) * sx, (cx + half) * sx, width)
    top, bottom = _span((cy - half) * sy, (cy + half) * sy, height)
    return left, top, right, bottom


def _span(start: float, stop: float, limit: int) -> tuple[int, int]:
    """Integer [start, stop) clipped to [0, limit), at least one pixel wide."""
    lo = min(max(int(math.floor(start)), 0), limit - 1)
    hi = max(min(int(math.ceil(stop)), limit), lo + 1)
    return lo, hi


def _convert(img: Image.Image, color: str) -> Image.Image:
    """An "L" or "RGB" image, with transparency composited onto white."""
    target = "L" if color == "gray" else "RGB"
    if img.mode == target:
        return img
    if img.mode.startswith(("I", "F")):
        return Image.fromarray(_high_depth_to_gray(img)).convert(target)
    if img.mode in _ALPHA_MODES or "transparency" in img.info:
        return _on_white(img).convert(target)
    if img.mode not in ("1", "L", "P", "RGB"):
        img = img.convert("RGB")  # CMYK, YCbCr, LAB, HSV... have no direct route to L
    return img.convert(target)


def _shrink(img: Image.Image, needed: int) -> Image.Image:
    """Box-reduce by an integer factor while the shorter side stays at least ``needed``."""
    # Like the JPEG draft: later steps then work on ~100 px instead of megapixels.
    factor = min(img.size) // needed
    return img.reduce(factor) if factor >= 2 else img


def _on_white(img: Image.Image) -> Image.Image:
    rgba = img.convert("RGBA")
    canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    canvas.alpha_composite(rgba)
    return canvas.convert("RGB")


def _high_depth_to_gray(img: Image.Image) -> np.ndarray:
    """16-bit, 32-bit and float images to 0-255 (Pillow's convert would clip, not scale)."""
    arr = np.asarray(img).astype(np.float64)
    if img.mode == "F":
        arr = arr * 255 if np.nanmax(arr) <= 1.0 else arr
    elif img.mode.startswith("I;16") or np.max(arr) > 255:
        arr = arr / 257
    return np.clip(np.nan_to_num(arr), 0, 255).round().astype(np.uint8)

