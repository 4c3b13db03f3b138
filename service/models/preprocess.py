"""Turn uploaded image bytes into the array a model expects.

Shared by the training tools and the server, so it must not import TensorFlow or CherryPy.
Every failure is reported as a :mod:`service.errors` exception; Pillow and numpy errors
never escape.
"""
from __future__ import annotations

import io
import logging
import math
import numbers
import re
import struct
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageOps, JpegImagePlugin

from service.errors import (
    BlankImage,
    InvalidImage,
    InvalidInput,
    PayloadTooLarge,
    ServiceError,
    UnsupportedMediaType,
)

log = logging.getLogger(__name__)

# PNG first: Image.open tries the formats in this order, and PNG is the common upload.
SUPPORTED_FORMATS = ("PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP")
DEFAULT_MAX_PIXELS = 25_000_000
DEFAULT_MAX_FRAMES = 100  # frames in one GIF, TIFF, WebP or APNG (only the first is decoded)

KINDS = ("mnist", "resize")
COLORS = ("gray", "rgb")
INVERT_MODES = ("auto", "never")
MAX_SIDE = 1024  # a model input larger than this is a configuration mistake

MNIST_SIZE = 28
MNIST_BOX = 20  # MNIST digits were scaled so their longest side is 20 px...
MNIST_CENTRE = 14.0  # ...and shifted so the centre of mass sits here (index coordinates)
# Big images are shrunk early (JPEG draft while decoding, integer box-reduce otherwise) but
# kept at least this many times the model input, so the ink box keeps enough resolution.
DRAFT_FACTOR = 4

LIGHT_BACKGROUND = 127  # border median above this means dark ink on light paper
CLEAN_BACKGROUND = 8  # a 28x28 image whose border median is at most this is already MNIST-like
MIN_INK = 24  # contrast (0-255) below which there is nothing we would call a digit
NOISE_CAP = 48  # never treat more than this above the paper level as noise
# Fraction of the peak ink a pixel needs to count towards the bounding box: high enough to
# ignore blur, JPEG ringing and anti-aliasing halos, which would otherwise shrink the digit.
INK_THRESHOLD = 0.2

# Where decode() records the size before any JPEG draft reduction, so that x, y given in the
# image's own pixels can be mapped onto the (possibly smaller) decoded image.
ORIGINAL_SIZE_KEY = "preprocess.original_size"
EXIF_ORIENTATION = 0x0112
BLANK_MESSAGE = "The image is blank: no digit was found."
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")


def _check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"preprocess field {name!r} must be one of {', '.join(choices)}; got {value!r}")


def _is_number(value: Any) -> bool:
    """A finite real (numpy scalars included), but not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def _is_fraction(value: Any) -> bool:
    return _is_number(value) and 0 < value <= 1


@dataclass(frozen=True)
class PreprocessSpec:
    """What a model expects as input, and how to get there from an uploaded image."""

    kind: str = "mnist"
    width: int = MNIST_SIZE
    height: int = MNIST_SIZE
    color: str = "gray"
    crop_fraction: float | None = None  # default crop around a caller-given point
    invert: str = "auto"

    def __post_init__(self) -> None:
        _check_choice("kind", self.kind, KINDS)
        _check_choice("color", self.color, COLORS)
        _check_choice("invert", self.invert, INVERT_MODES)
        for name in ("width", "height"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_SIDE:
                raise ValueError(f"preprocess field {name!r} must be an integer from 1 to {MAX_SIDE}; got {value!r}")
        if self.kind == "mnist" and (self.width, self.height, self.color) != (MNIST_SIZE, MNIST_SIZE, "gray"):
            bad = "color" if self.color != "gray" else ("width" if self.width != MNIST_SIZE else "height")
            raise ValueError(f"preprocess field {bad!r}: kind 'mnist' is always 28x28 gray")
        if self.crop_fraction is not None and not _is_fraction(self.crop_fraction):
            raise ValueError(
                f"preprocess field 'crop_fraction' must be null or a number in (0, 1]; got {self.crop_fraction!r}"
            )

    @classmethod
    def from_dict(cls, d: Any) -> PreprocessSpec:
        """Build from a manifest's ``preprocess`` object; ``ValueError`` names the bad field."""
        if not isinstance(d, dict):
            raise ValueError(f"preprocess must be an object; got {type(d).__name__}")
        unknown = sorted(set(d) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"preprocess field {unknown[0]!r} is unknown")
        return cls(**d)

    def to_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        """One line for people, e.g. on the models page."""
        invert = "light backgrounds inverted" if self.invert == "auto" else "never inverted"
        if self.kind == "mnist":
            text = "MNIST-style 28x28 gray: ink box scaled to 20 px, centred by mass"
        else:
            text = f"resized to {self.width}x{self.height} {'RGB' if self.color == 'rgb' else 'gray'}"
        if self.crop_fraction is not None:
            text += f", {self.crop_fraction:.0%} crop around a given point"
        return f"{text}; {invert}."


DEFAULT_SPEC = PreprocessSpec()


# ---------------------------------------------------------------------------------------------
# Decoding


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
        raise _too_large(None, max_pixels) from None
    except Exception as exc:  # corrupt input can make any decoder fail in any way
        raise InvalidImage(f"The image could not be decoded: {_reason(exc)}") from None
    img.info[ORIGINAL_SIZE_KEY] = original[::-1] if turned else original
    return img


def _open(data: bytes, max_pixels: int, max_frames: int = DEFAULT_MAX_FRAMES) -> Image.Image:
    """Open (header only) in a supported format and check its pixel and frame counts."""
    check_container(data, max_pixels, max_frames)
    try:
        img = Image.open(io.BytesIO(data), formats=SUPPORTED_FORMATS)
    except Image.UnidentifiedImageError:
        raise _unsupported_or_invalid(data) from None
    width, height = img.size
    if width * height > _pixel_limit(max_pixels):
        raise _too_large(img.size, max_pixels)
    if width < 1 or height < 1:
        raise InvalidImage("The image has no pixels.")
    if img.format == "MPO" and img.n_frames > max_frames:  # declared in its header: cheap
        raise _too_many_frames(max_frames)
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


def _pixel_limit(max_pixels: int) -> int:
    # Pillow's own bomb limit stays the ceiling: above it Pillow warns or refuses anyway.
    ceiling = Image.MAX_IMAGE_PIXELS
    return min(max_pixels, ceiling) if ceiling else max_pixels


def _too_large(size: tuple[int, int] | None, max_pixels: int) -> PayloadTooLarge:
    dims = f" ({size[0]}x{size[1]})" if size else ""
    return PayloadTooLarge(
        f"The image is too large{dims}: at most {_pixel_limit(max_pixels):,} pixels are accepted.",
        code="image_too_large",
    )


def _reason(exc: Exception) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text[:200]


# ---------------------------------------------------------------------------------------------
# Container checks: the file's structure (never its pixels), read before Pillow parses it.
# Pillow walks chunks, markers, sub-blocks and stray bytes one Python step at a time, so a
# 10 MB file of tiny blocks costs it seconds; each walker below models those steps and
# refuses a file that needs more than its budget, at C speed or a few steps per block.

BLOCK_BUDGET = 4096  # steps any real image fits in, whatever its size...
BLOCK_BUDGET_BYTES = 64  # ...plus one per this many bytes (real blocks hold hundreds)
MAX_TIFF_TAGS = 1024  # a real TIFF directory holds a few dozen tags
DOCUMENT_SNIFF_BYTES = 1024
_GIF_TAGS = re.compile(rb"[!,;]")
_TIFF_MAGIC = (b"II*\0", b"MM\0*", b"II+\0", b"MM\0+")
_HTML_STARTS = (b"<!doctype html", b"<html", b"<head", b"<body", b"<script", b"<meta", b"<title")


def check_container(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS,
                    max_frames: int = DEFAULT_MAX_FRAMES) -> None:
    """413 for too many frames or blocks, or a WebP canvas over ``max_pixels``."""
    walker = _container_walker(data)
    if walker is None:
        return  # not a multi-block format we read: Pillow's header check is enough
    if walker is _webp_frames:  # libwebp allocates the whole canvas when Pillow opens it
        size = _webp_canvas(data)
        if size and size[0] * size[1] > _pixel_limit(max_pixels):
            raise _too_large(size, max_pixels)
    budget = BLOCK_BUDGET + len(data) // BLOCK_BUDGET_BYTES
    if walker(data, max_frames + 1, budget) > max_frames:
        raise _too_many_frames(max_frames)


def _container_walker(data: bytes):
    if data.startswith((b"GIF87a", b"GIF89a")):
        return _gif_frames
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return _png_frames
    if data.startswith(b"\xff\xd8\xff"):
        return _jpeg_frames
    if data.startswith(_TIFF_MAGIC):
        return _tiff_frames
    if data.startswith(b"RIFF") and data[8:12] == b"WEBP":
        return _webp_frames
    return None


def _too_many_frames(max_frames: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"The image has more than {max_frames} frames; at most {max_frames} "
                           "are accepted (only the first is used).", code="too_many_frames")


def _too_many_blocks(fmt: str, what: str) -> PayloadTooLarge:
    return PayloadTooLarge(f"The {fmt} file has too many {what} to be read safely.",
                           code="too_many_blocks")


def _gif_frames(data: bytes, stop: int, budget: int) -> int:
    """Image descriptors, found as Pillow finds them (stray bytes are skipped one by one)."""
    pos, frames, end = 13 + _gif_palette(data[10] if len(data) > 10 else 0), 0, len(data)
    while pos < end and frames < stop:
        tag = data[pos]
        if tag == 0x3B:  # trailer
            break
        if tag == 0x21:  # extension: label, then sub-blocks
            pos, budget = _gif_sub_blocks(data, pos + 2, budget)
        elif tag == 0x2C:  # image: descriptor, local palette, LZW code size, sub-blocks
            frames += 1
            flags = data[pos + 9] if pos + 9 < end else 0
            pos, budget = _gif_sub_blocks(data, pos + 11 + _gif_palette(flags), budget)
        else:
            found = _GIF_TAGS.search(data, pos + 1)
            budget -= (found.start() if found else end) - pos
            if budget < 0:
                raise _too_many_blocks("GIF", "stray bytes")
            if found is None:
                break
            pos = found.start()
    return frames


def _gif_palette(flags: int) -> int:
    """Bytes of the colour table that ``flags`` (screen or image descriptor) announces."""
    return 3 << ((flags & 7) + 1) if flags & 0x80 else 0


def _gif_sub_blocks(data: bytes, pos: int, budget: int) -> tuple[int, int]:
    """Skip a chain of length-prefixed sub-blocks: the position after it, and the budget left."""
    end = len(data)
    for used in range(1, budget + 1):
        if pos >= end:
            return pos, budget - used
        size = data[pos]
        pos += size + 1
        if not size:
            return pos, budget - used
    raise _too_many_blocks("GIF", "sub-blocks")


def _png_frames(data: bytes, stop: int, budget: int) -> int:
    """APNG frames (declared in acTL, or fcTL chunks counted); Pillow reads every chunk."""
    pos, frames, end = 8, 0, len(data)
    for _ in range(budget):
        if pos + 12 > end:
            return max(frames, 1)
        length, kind = struct.unpack_from(">I4s", data, pos)
        if kind == b"acTL" and length >= 4:
            declared = int.from_bytes(data[pos + 8:pos + 12], "big")
            if declared >= stop:
                return declared
        elif kind == b"fcTL":
            frames += 1
            if frames >= stop:
                return frames
        elif kind == b"IEND":
            return max(frames, 1)
        pos += 12 + length
    raise _too_many_blocks("PNG", "chunks")


def _jpeg_frames(data: bytes, stop: int, budget: int) -> int:
    """The markers before the first scan (all Pillow reads on open); MPO frames come later."""
    pos, end = 2, len(data)
    while budget > 0:
        if pos + 4 > end:
            return 1
        if data[pos] != 0xFF:  # junk between markers: Pillow steps over it byte by byte
            found = data.find(b"\xff", pos)
            budget -= (found if found >= 0 else end) - pos
            if found < 0:
                return 1
            pos = found
            continue
        budget -= 1
        marker = data[pos + 1]
        if marker == 0xDA:  # start of scan: Pillow stops here (even past an EOI, it goes on)
            return 1
        if marker in (0x00, 0x01, 0xFF) or 0xD0 <= marker <= 0xD9:  # no length follows
            pos += 1 if marker == 0xFF else 2
        else:
            pos += 2 + int.from_bytes(data[pos + 2:pos + 4], "big")
    raise _too_many_blocks("JPEG", "markers or stray bytes")


def _tiff_frames(data: bytes, stop: int, budget: int) -> int:
    """Directories in the IFD chain (classic or BigTIFF), each visited once.

    At most ``stop`` directories are read, a few bytes each, so ``budget`` is not needed.
    """
    order = "<" if data[:2] == b"II" else ">"
    big = data[2:4] in (b"+\0", b"\0+")
    count_fmt, offset_fmt, entry = (("Q", "Q", 20) if big else ("H", "I", 12))
    count_size, offset_size = struct.calcsize(count_fmt), struct.calcsize(offset_fmt)
    if len(data) < 8 + (8 if big else 0):
        return 1
    offset = struct.unpack_from(order + offset_fmt, data, 8 if big else 4)[0]
    frames, seen = 0, set()
    while offset and offset not in seen and frames < stop:  # Pillow stops at a repeat too
        seen.add(offset)
        if offset + count_size > len(data):
            break
        tags = struct.unpack_from(order + count_fmt, data, offset)[0]
        if tags > MAX_TIFF_TAGS:
            raise _too_many_blocks("TIFF", "tags")
        frames += 1
        next_at = offset + count_size + tags * entry
        if next_at + offset_size > len(data):
            break
        offset = struct.unpack_from(order + offset_fmt, data, next_at)[0]
    return max(frames, 1)


def _webp_frames(data: bytes, stop: int, budget: int) -> int:
    """ANMF chunks of an animated WebP (a still one has none: one frame)."""
    pos, frames, end = 12, 0, len(data)
    for _ in range(budget):
        if pos + 8 > end:
            return max(frames, 1)
        kind = data[pos:pos + 4]
        size = int.from_bytes(data[pos + 4:pos + 8], "little")
        if kind == b"ANMF":
            frames += 1
            if frames >= stop:
                return frames
        pos += 8 + size + (size & 1)  # chunks are padded to an even length
    raise _too_many_blocks("WebP", "chunks")


def _webp_canvas(data: bytes) -> tuple[int, int] | None:
    """The canvas size a WebP header declares (VP8X, lossy VP8 or lossless VP8L)."""
    kind = data[12:16]
    if kind == b"VP8X" and len(data) >= 30:
        return (int.from_bytes(data[24:27], "little") + 1,
                int.from_bytes(data[27:30], "little") + 1)
    if kind == b"VP8 " and len(data) >= 30 and data[23:26] == b"\x9d\x01\x2a":
        return (int.from_bytes(data[26:28], "little") & 0x3FFF,
                int.from_bytes(data[28:30], "little") & 0x3FFF)
    if kind == b"VP8L" and len(data) >= 25 and data[20] == 0x2F:
        bits = int.from_bytes(data[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    return None


def document_format(data: bytes) -> str | None:
    """"PDF", "SVG", "HTML" or "XML" from the leading bytes (after a BOM and whitespace)."""
    head = data[:DOCUMENT_SNIFF_BYTES]
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):  # UTF-16: drop the zero bytes of ASCII
        head = head[2:].replace(b"\0", b"")
    head = head.removeprefix(b"\xef\xbb\xbf").lstrip().lower()
    if head.startswith(b"%pdf-"):
        return "PDF"
    if not head.startswith(b"<"):
        return None
    if b"<svg" in head or head.startswith(b"<!doctype svg"):
        return "SVG"
    if head.startswith(_HTML_STARTS) or b"<html" in head:
        return "HTML"
    if head.startswith((b"<?xml", b"<!")) or head[1:2].isalpha():
        return "XML"
    return None


def _apply_orientation(img: Image.Image) -> tuple[Image.Image, bool]:
    """Apply the EXIF orientation; also says whether width and height were swapped."""
    orientation = img.getexif().get(EXIF_ORIENTATION)
    # Checking the tag first avoids the copy exif_transpose makes when there is nothing to do.
    if orientation not in (2, 3, 4, 5, 6, 7, 8):
        return img, False
    return ImageOps.exif_transpose(img), orientation >= 5


# ---------------------------------------------------------------------------------------------
# Image -> model input


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
    _check_crop(crop)
    original = _original_size(img)
    point = _check_point(x, y, original)
    try:
        return _to_model_input(img, spec, original, point, crop)
    except ServiceError:
        raise
    except Exception as exc:
        # Not expected after a successful decode; keep the traceback for whoever debugs it.
        log.warning("preprocessing failed", exc_info=True)
        raise InvalidImage(f"The image could not be processed: {_reason(exc)}") from None


def _to_model_input(
    img: Image.Image,
    spec: PreprocessSpec,
    original: tuple[int, int],
    point: tuple[float, float] | None,
    crop: float | None,
) -> np.ndarray:
    box = _crop_box(img.size, original, point, crop, spec.crop_fraction)
    if box is not None:
        img = img.crop(box)
    img = _shrink(_convert(img, spec.color), DRAFT_FACTOR * max(spec.width, spec.height))
    arr, level = _polarity(np.asarray(img), spec.invert)
    if spec.kind == "mnist":
        return _mnist(arr, level, cropped=box is not None)
    return _resize(arr, spec.width, spec.height)


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
    img = decode_for(data, spec, x=x, y=y, crop=crop, max_pixels=max_pixels, max_frames=max_frames)
    return to_model_input(img, spec, x=x, y=y, crop=crop)


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


def _check_crop(crop: Any) -> None:
    if crop is not None and not _is_fraction(crop):
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
        if not _is_number(value) or not 0 <= value <= limit:
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


def _border(arr: np.ndarray) -> np.ndarray:
    """The outermost ring of pixels (gray values), where the background shows."""
    gray = arr if arr.ndim == 2 else arr.mean(axis=2)
    if min(gray.shape) < 3:
        return gray.ravel()
    return np.concatenate([gray[0], gray[-1], gray[1:-1, 0], gray[1:-1, -1]])


def _polarity(arr: np.ndarray, invert: str) -> tuple[np.ndarray, float]:
    """Make ink bright on dark; returns the array and its background (border median) level."""
    level = float(np.median(_border(arr)))
    if invert == "auto" and level > LIGHT_BACKGROUND:
        return 255 - arr, 255.0 - level
    return arr, level


def _mnist(gray: np.ndarray, level: float, cropped: bool) -> np.ndarray:
    # Already in MNIST form: pass through untouched so results match offline evaluation.
    if not cropped and gray.shape == (MNIST_SIZE, MNIST_SIZE) and level <= CLEAN_BACKGROUND:
        if int(gray.max()) - level < MIN_INK:
            raise BlankImage(BLANK_MESSAGE)
        return gray.astype(np.float32) / np.float32(255)
    ink = _remove_background(gray, level)
    digit = _scale_ink_box(ink)
    canvas = _centre_by_mass(digit)
    peak = canvas.max()
    if peak <= 0:
        raise BlankImage(BLANK_MESSAGE)
    return (canvas / peak).astype(np.float32)


def _remove_background(gray: np.ndarray, level: float) -> np.ndarray:
    """Paper (and its noise) to 0, the strongest ink to 255, as uint8."""
    # Photographed paper is not black after inversion and is noisy: subtract a high border
    # percentile, capped so ink touching the border cannot erase the digit.
    noise = float(np.percentile(_border(gray), 90)) - level
    floor = level + min(max(noise, 0.0), NOISE_CAP)
    ink = np.clip(gray.astype(np.float32) - floor, 0, None)
    peak = float(ink.max())
    if peak < MIN_INK:
        raise BlankImage(BLANK_MESSAGE)
    return (ink * (255 / peak)).round().astype(np.uint8)


def _scale_ink_box(ink: np.ndarray) -> np.ndarray:
    """Crop to the ink's bounding box and resize its longest side to 20 px (float32)."""
    mask = ink > 255 * INK_THRESHOLD
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    box = ink[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
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


# ---------------------------------------------------------------------------------------------
# Preview


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


def warm_up() -> None:
    """Load Pillow's codecs and run each path once, so the first request does not pay for it."""
    Image.init()
    digit = np.zeros((40, 40), np.uint8)
    digit[8:32, 18:22] = 255
    for fmt in ("PNG", "JPEG"):
        buffer = io.BytesIO()
        Image.fromarray(digit).resize((120, 120)).save(buffer, format=fmt)
        preprocess(buffer.getvalue())
