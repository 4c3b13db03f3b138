"""Container checks: the file's structure (never its pixels), read before Pillow parses it.

Pillow walks chunks, markers, sub-blocks and stray bytes one Python step at a time, so a
10 MB file of tiny blocks costs it seconds; each walker below models those steps and refuses
a file that needs more than its budget, at C speed or a few steps per block.
"""
from __future__ import annotations

import re
import struct

from PIL import Image

from service.errors import PayloadTooLarge

DEFAULT_MAX_PIXELS = 25_000_000
DEFAULT_MAX_FRAMES = 100  # frames in one GIF, TIFF, WebP or APNG (only the first is decoded)
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
        if size and size[0] * size[1] > pixel_limit(max_pixels):
            raise too_large(size, max_pixels)
    budget = BLOCK_BUDGET + len(data) // BLOCK_BUDGET_BYTES
    if walker(data, max_frames + 1, budget) > max_frames:
        raise too_many_frames(max_frames)


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


def too_many_frames(max_frames: int) -> PayloadTooLarge:
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


def pixel_limit(max_pixels: int) -> int:
    """The most pixels an image may have: ``max_pixels``, or Pillow's bomb limit if lower."""
    # Pillow's own bomb limit stays the ceiling: above it Pillow warns or refuses anyway.
    ceiling = Image.MAX_IMAGE_PIXELS
    return min(max_pixels, ceiling) if ceiling else max_pixels


def too_large(size: tuple[int, int] | None, max_pixels: int) -> PayloadTooLarge:
    dims = f" ({size[0]}x{size[1]})" if size else ""
    return PayloadTooLarge(
        f"The image is too large{dims}: at most {pixel_limit(max_pixels):,} pixels are accepted.",
        code="image_too_large",
    )
