"""Hostile input over real HTTP against the shared server, as one table: each case must be
refused before the work it would cost, with its status, our JSON error body (no traceback)
and its code counted in /metrics.

Covered: bodies over max_body_bytes (lying Content-Length, chunked); decompression bombs
(PNG, JPEG, GIF, WebP, TIFF, BMP headers claiming huge sizes); more than max_frames frames
(GIF, TIFF, WebP, APNG) or containers of absurdly many blocks; JSON deeper than
max_json_depth or with more than max_batch_size instances (before any base64 is decoded);
remote paths escaping images_root or naming FIFOs, sockets, devices, directories; documents
(SVG, PDF, HTML, XML) and refused formats (ICO, PPM) -> 415. Two odd-but-harmless inputs
must still answer 200. max_image_bytes for raw and base64 images, which the shared server's
defaults cannot reach over HTTP, is checked on the body parser at the end.
"""
from __future__ import annotations

import base64
import http.client
import io
import json
import os
import random
import shutil
import socket
import struct
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlsplit

import numpy as np
import pytest
import requests
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from service.errors import PayloadTooLarge
from service.protocols import values
from service.web import bodies
from support import FIXTURES

CNN = "/v1/models/digits-cnn/predict"
MB = 1024 * 1024
MAX_BODY = 10 * MB  # the shared server's defaults (service/config.py)
MAX_FRAMES = 100
MAX_DEPTH = 32
MAX_BATCH = 256
PNG7 = (FIXTURES / "digit7_28.png").read_bytes()
B64_7 = base64.b64encode(PNG7).decode()
HOSTILE_DIR = "hostile"  # made inside the session's images_root by the fixture below


@dataclass(frozen=True)
class Reply:
    status: int
    content_type: str
    text: str
    elapsed: float


Send = Callable[[str], Reply]


def _reply(response: requests.Response, started: float) -> Reply:
    return Reply(response.status_code, response.headers.get("Content-Type", ""),
                 response.text, time.monotonic() - started)


# -- how a case is sent ------------------------------------------------------------------------
def post(route: str = CNN, **kwargs: Any) -> Send:
    """A requests.post of ``kwargs`` (callables among them are called at send time)."""
    def send(url: str) -> Reply:
        resolved = {k: v() if callable(v) else v for k, v in kwargs.items()}
        started = time.monotonic()
        return _reply(requests.post(url + route, timeout=30, **resolved), started)
    return send


def raw(make: Callable[[], bytes], content_type: str = "image/png") -> Send:
    return post(data=make, headers={"Content-Type": content_type})


def as_json(make: Callable[[], Any], route: str = CNN) -> Send:
    return post(route, json=make)


def json_text(make: Callable[[], bytes], route: str = CNN) -> Send:
    return post(route, data=make, headers={"Content-Type": "application/json"})


def as_b64(make: Callable[[], bytes]) -> Send:
    return as_json(lambda: {"instances": [{"b64": base64.b64encode(make()).decode()}]})


def as_form(make: Callable[[], bytes]) -> Send:
    return post(files=lambda: {"image": ("upload.png", make(), "image/png")})


def by_path(path: str | Callable[[], Any]) -> Send:
    return as_json(lambda: {"instances": [{"path": path() if callable(path) else path}]})


def lying_length(length: int | bytes = 1 << 30) -> Send:
    """Headers claiming ``length`` bytes, then nothing: only a header check can answer."""
    def send(url: str) -> Reply:
        parts = urlsplit(url)
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
        started = time.monotonic()
        try:
            conn.putrequest("POST", CNN)
            conn.putheader("Content-Type", "image/png")
            conn.putheader("Content-Length", length if isinstance(length, bytes) else str(length))
            conn.endheaders()
            response = conn.getresponse()
            text = response.read().decode()
            return Reply(response.status, response.getheader("Content-Type", ""), text,
                         time.monotonic() - started)
        finally:
            conn.close()
    return send


def chunked(total: int) -> Send:
    """``total`` bytes with Transfer-Encoding: chunked (no Content-Length to check)."""
    def body():
        sent = 0
        while sent < total:
            piece = min(MB, total - sent)
            sent += piece
            yield b"\0" * piece
    return post(data=body, headers={"Content-Type": "image/png"})


# -- hostile payloads, generated -----------------------------------------------------------------
def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bomb(width: int = 100_000, height: int = 100_000) -> bytes:
    """~1 KB: an IHDR claiming width x height, then an IDAT of compressed zeros."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr)
            + png_chunk(b"IDAT", zlib.compress(b"\0" * 1_000_000, 9)) + png_chunk(b"IEND", b""))


def encode(img: Image.Image, fmt: str, **params: Any) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def small_jpeg() -> bytes:
    return encode(Image.open(FIXTURES / "digit7_28.png").convert("L"), "JPEG")


def jpeg_bomb() -> bytes:
    """A real JPEG whose SOF0 now claims 65500 x 65500."""
    data = bytearray(small_jpeg())
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", 65500, 65500)
    return bytes(data)


def tiny_gif() -> bytes:
    return encode(Image.new("P", (1, 1)), "GIF")


def gif_screen_bomb() -> bytes:
    """A 1x1 GIF whose logical screen claims 65535 x 65535."""
    data = bytearray(tiny_gif())
    data[6:10] = struct.pack("<HH", 65535, 65535)
    return bytes(data)


def gif_frame_bomb() -> bytes:
    """A 1x1 screen whose one frame's descriptor claims 65535 x 65535."""
    data = bytearray(tiny_gif())
    frame = data.index(b"\x2c")
    data[frame + 5:frame + 9] = struct.pack("<HH", 65535, 65535)
    return bytes(data)


def webp_bomb(width: int = 10_000, height: int = 10_000) -> bytes:
    """A VP8X header claiming a width x height canvas (libwebp would allocate it on open)."""
    still = encode(Image.new("L", (28, 28)), "WEBP", lossless=True)
    vp8x = b"VP8X" + struct.pack("<I", 10) + b"\0" * 4 + (width - 1).to_bytes(3, "little") \
        + (height - 1).to_bytes(3, "little")
    body = b"WEBP" + vp8x + still[12:]
    return b"RIFF" + struct.pack("<I", len(body)) + body


def tiff(tags: list[tuple[int, int, int]], pixels: bytes = b"\0" * 784, next_ifd: int = 0) -> bytes:
    """A little-endian TIFF with one IFD of (tag, SHORT or LONG type, value) entries."""
    entries = sorted(tags)
    data_at = 8 + 2 + 12 * len(entries) + 4
    out = b"II*\0" + struct.pack("<IH", 8, len(entries))
    for tag, kind, value in entries:
        value = data_at if tag == 273 else value  # StripOffsets
        packed = struct.pack("<HH", value, 0) if kind == 3 else struct.pack("<I", value)
        out += struct.pack("<HHI", tag, kind, 1) + packed
    return out + struct.pack("<I", next_ifd) + pixels


def tiff_tags(width: int = 28, height: int = 28) -> list[tuple[int, int, int]]:
    return [(256, 4, width), (257, 4, height), (258, 3, 8), (259, 3, 1), (262, 3, 1),
            (273, 4, 0), (277, 3, 1), (278, 4, height), (279, 4, 784)]  # the 784 bytes sent


def tiff_bomb() -> bytes:
    return tiff(tiff_tags(100_000, 100_000))


def tiff_tag_flood() -> bytes:
    return tiff(tiff_tags() + [(1000 + i, 3, 0) for i in range(2000)])


def tiff_ifd_loop() -> bytes:
    """A real digit whose IFD's next pointer points back at itself."""
    data = bytearray(encode(Image.open(FIXTURES / "digit7_28.png").convert("L"), "TIFF"))
    ifd = struct.unpack_from("<I", data, 4)[0]
    count = struct.unpack_from("<H", data, ifd)[0]
    struct.pack_into("<I", data, ifd + 2 + 12 * count, ifd)
    return bytes(data)


def bmp_bomb() -> bytes:
    """A BMP header claiming 50000 x 50000 at 1 bit per pixel."""
    info = struct.pack("<IiiHHIIiiII", 40, 50_000, 50_000, 1, 1, 0, 0, 2835, 2835, 2, 0)
    palette = b"\0\0\0\0\xff\xff\xff\0"
    header = b"BM" + struct.pack("<IHHI", 14 + len(info) + len(palette) + 16, 0, 0,
                                 14 + len(info) + len(palette))
    return header + info + palette + b"\0" * 16


def digit_frames(n: int) -> list[Image.Image]:
    """``n`` different frames (identical ones would be merged by the encoders)."""
    digit = np.asarray(Image.open(FIXTURES / "digit7_28.png").convert("L"))
    rng = np.random.default_rng(n)
    return [Image.fromarray(np.clip(digit.astype(int) + rng.integers(0, 40, digit.shape), 0, 255)
                            .astype(np.uint8)) for _ in range(n)]


def animated(fmt: str, n: int, **params: Any) -> bytes:
    frames = digit_frames(n)
    return encode(frames[0], fmt, save_all=True, append_images=frames[1:], **params)


def gif_many_tiny_frames(n: int = 100_000) -> bytes:
    """A hand-made 1x1 GIF with ``n`` frames of a few bytes each."""
    frame = b"\x2c" + struct.pack("<HHHHB", 0, 0, 1, 1, 0) + b"\x02\x02\x44\x01\x00"
    return b"GIF89a" + struct.pack("<HHBBB", 1, 1, 0x80, 0, 0) + b"\0\0\0\xff\xff\xff" \
        + frame * n + b";"


def gif_sub_block_flood(blocks: int = 1_000_000) -> bytes:
    """A GIF with a comment split into a million one-byte sub-blocks before its frame."""
    data = tiny_gif()
    frame = data.index(b"\x2c")
    return data[:frame] + b"\x21\xfe" + b"\x01X" * blocks + b"\0" + data[frame:]


def apng_lying_actl(declared: int = 1_000_000) -> bytes:
    """A real PNG with an acTL chunk declaring ``declared`` frames."""
    idat = PNG7.index(b"IDAT") - 4
    return PNG7[:idat] + png_chunk(b"acTL", struct.pack(">II", declared, 0)) + PNG7[idat:]


def png_chunk_flood(chunks: int = 200_000) -> bytes:
    """A real PNG preceded by 200k empty private chunks (Pillow would walk each in Python)."""
    idat = PNG7.index(b"IDAT") - 4
    return PNG7[:idat] + png_chunk(b"prIv", b"") * chunks + PNG7[idat:]


def jpeg_marker_flood(markers: int = 1_000_000) -> bytes:
    data = small_jpeg()
    return data[:2] + b"\xff\xfe\x00\x02" * markers + data[2:]


def random_bytes() -> bytes:
    return b"\x00junk" + random.Random(7).randbytes(4096)


def ppm() -> bytes:
    return encode(Image.open(FIXTURES / "digit7_28.png").convert("L"), "PPM")


def ico() -> bytes:
    return encode(Image.open(FIXTURES / "digit7_28.png").convert("RGBA"), "ICO")


SVG = (b'<svg xmlns="http://www.w3.org/2000/svg" width="28" height="28">'
       b'<text x="8" y="22">7</text></svg>')
XML_SVG = b'\xef\xbb\xbf \n\t<?xml version="1.0" encoding="UTF-8"?>\n' + SVG
PDF = b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<< /Type /Catalog >>\nendobj\ntrailer\n%%EOF\n"
HTML = b"<!DOCTYPE html>\n<html><body><img src=x onerror=alert(1)></body></html>"
XML = b'<?xml version="1.0"?>\n<digit value="7"/>'


def nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


def feedback_json(**fields: Any) -> Send:
    """A feedback body with ``fields`` over a plausible one (None drops a field)."""
    body = {"request_id": "0" * 32, "label": "7", **fields}
    return as_json(lambda: {k: v for k, v in body.items() if v is not None}, "/v1/feedback")


def feedback_text(field: bytes) -> Send:
    return json_text(lambda: b'{"request_id": "x", "label": "7", ' + field + b"}", "/v1/feedback")


def get_route(route: str) -> Send:
    def send(url: str) -> Reply:
        started = time.monotonic()
        return _reply(requests.get(url + route, timeout=30), started)
    return send


def instances(n: int, item: dict) -> Callable[[], dict]:
    return lambda: {"instances": [item] * n}


# -- the table -----------------------------------------------------------------------------------
def case(id: str, send: Send, status: int, code: str | None) -> Any:
    return pytest.param(send, status, code, id=id)


def hostile(name: str) -> str:
    return f"{HOSTILE_DIR}/{name}"


CASES = [
    # 1. body size, before reading it
    case("content-length-claims-1GB", lying_length(), 413, "body_too_large"),
    case("chunked-11MB", chunked(11 * MB), 413, "body_too_large"),
    # 2. decompression bombs: refused from the header, never decoded
    case("png-ihdr-100000x100000", raw(png_bomb), 413, "image_too_large"),
    case("png-bomb-as-base64", as_b64(png_bomb), 413, "image_too_large"),
    case("png-bomb-as-form", as_form(png_bomb), 413, "image_too_large"),
    case("png-bomb-via-recognize", as_json(
        lambda: {"image": base64.b64encode(png_bomb()).decode()}, "/recognize"),
        413, "image_too_large"),
    case("jpeg-sof-65500x65500", raw(jpeg_bomb, "image/jpeg"), 413, "image_too_large"),
    case("gif-screen-65535x65535", raw(gif_screen_bomb, "image/gif"), 413, "image_too_large"),
    case("gif-frame-65535x65535", raw(gif_frame_bomb, "image/gif"), 413, "image_too_large"),
    case("webp-canvas-10000x10000", raw(webp_bomb, "image/webp"), 413, "image_too_large"),
    case("tiff-100000x100000", raw(tiff_bomb, "image/tiff"), 413, "image_too_large"),
    case("bmp-50000x50000", raw(bmp_bomb, "image/bmp"), 413, "image_too_large"),
    # 3. frames, counted from the container without decoding pixels
    case("gif-exactly-max-frames", raw(lambda: animated("GIF", MAX_FRAMES), "image/gif"),
         200, None),
    case("gif-max+1-frames", raw(lambda: animated("GIF", MAX_FRAMES + 1), "image/gif"),
         413, "too_many_frames"),
    case("gif-100000-tiny-frames", raw(gif_many_tiny_frames, "image/gif"), 413,
         "too_many_frames"),
    case("tiff-max+1-pages", raw(lambda: animated("TIFF", MAX_FRAMES + 1), "image/tiff"),
         413, "too_many_frames"),
    case("webp-max+1-frames", raw(lambda: animated("WEBP", MAX_FRAMES + 1, lossless=True),
                                  "image/webp"), 413, "too_many_frames"),
    case("apng-max+1-frames", raw(lambda: animated("PNG", MAX_FRAMES + 1)), 413,
         "too_many_frames"),
    case("apng-actl-declares-1e6", raw(apng_lying_actl), 413, "too_many_frames"),
    case("tiff-ifd-loop", raw(tiff_ifd_loop, "image/tiff"), 200, None),
    case("gif-1e6-sub-blocks", raw(gif_sub_block_flood, "image/gif"), 413, "too_many_blocks"),
    case("png-200k-empty-chunks", raw(png_chunk_flood), 413, "too_many_blocks"),
    case("jpeg-1e6-com-markers", raw(jpeg_marker_flood, "image/jpeg"), 413, "too_many_blocks"),
    case("tiff-2000-tags", raw(tiff_tag_flood, "image/tiff"), 413, "too_many_blocks"),
    # 4. JSON: depth before parsing, count before decoding
    case("json-10MB-of-[", json_text(lambda: b"[" * 10_000_000), 400, "json_too_deep"),
    case("json-max+1-deep", json_text(lambda: nested(MAX_DEPTH + 1)), 400, "json_too_deep"),
    case("json-deep-option", as_json(lambda: {"instances": [
        {"b64": base64.b64encode(PNG7).decode(), "x": json.loads(nested(40))}]}),
        400, "json_too_deep"),
    case("json-200k-open-objects", json_text(lambda: b'{"a":' * 200_000), 400, "json_too_deep"),
    case("json-10MB-of-[-via-recognize", json_text(lambda: b"[" * 10_000_000, "/recognize"),
         400, "json_too_deep"),
    case("json-brackets-in-strings-are-not-depth", as_json(lambda: {"image": "[" * 1000}),
         400, "bad_base64"),
    case("json-5000-digit-integer", json_text(
        lambda: b'{"image": "x", "top_k": ' + b"9" * 5000 + b"}"), 400, "invalid_json"),
    case("json-not-utf8", json_text(lambda: b'{"image": "\xff\xfe\xfa"}'), 400, "invalid_json"),
    case("batch-max+1-of-bad-base64", as_json(instances(MAX_BATCH + 1, {"b64": "@@"})),
         413, "batch_too_large"),
    case("batch-max+1-of-escaping-paths", as_json(instances(MAX_BATCH + 1,
                                                            {"path": "../../etc/passwd"})),
         413, "batch_too_large"),
    case("batch-max+1-via-mnist-classify", as_json(
        lambda: {"requests": [{"image": "@@"}] * (MAX_BATCH + 1)}, "/mnist/classify"),
        413, "batch_too_large"),
    # 5. remote paths
    case("path-dotdot", by_path("../../../../etc/passwd"), 403, "path_forbidden"),
    case("path-absolute-outside", by_path("/etc/passwd"), 403, "path_forbidden"),
    case("path-absolute-missing-outside", by_path("/etc/no-such-file.png"), 403,
         "path_forbidden"),
    case("path-absolute-dev-zero", by_path("/dev/zero"), 403, "path_forbidden"),
    case("path-url-encoded", by_path("%2e%2e%2f%2e%2e%2fetc%2fpasswd"), 400, "bad_path"),
    case("path-double-encoded", by_path("%252e%252e%252fetc%252fpasswd"), 400, "bad_path"),
    case("path-encoded-inside", by_path("digit7%5f28.png"), 400, "bad_path"),
    case("path-symlink-to-etc-passwd", by_path(hostile("passwd.png")), 403, "path_forbidden"),
    case("path-symlink-to-dev-zero", by_path(hostile("zero.png")), 403, "path_forbidden"),
    case("path-dangling-symlink-out", by_path(hostile("dangling.png")), 403, "path_forbidden"),
    case("path-symlink-loop", by_path(hostile("loop.png")), 400, "bad_path"),
    case("path-nul-byte", by_path("digit7_28.png\x00.txt"), 400, "bad_path"),
    case("path-newline", by_path("digit7\n28.png"), 400, "bad_path"),
    case("path-escape-char", by_path("\x1b[2Jdigit7_28.png"), 400, "bad_path"),
    case("path-lone-surrogate", json_text(lambda: b'{"instances": [{"path": "\\ud800.png"}]}'),
         400, "bad_path"),
    case("path-5000-chars", by_path("a/" * 2500), 400, "bad_path"),
    case("path-300-char-name", by_path("x" * 300 + ".png"), 400, "bad_path"),
    case("path-not-a-string", by_path(lambda: ["digit7_28.png"]), 400, "bad_path"),
    case("path-directory", by_path("sub"), 400, "not_a_file"),
    case("path-directory-named-png", by_path(hostile("dir.png")), 400, "not_a_file"),
    case("path-fifo", by_path(hostile("pipe.png")), 400, "not_a_file"),
    case("path-symlink-to-fifo", by_path(hostile("to-pipe.png")), 400, "not_a_file"),
    case("path-unix-socket", by_path(hostile("sock.png")), 400, "not_a_file"),
    case("path-larger-than-max-image-bytes", by_path(hostile("big.png")), 413,
         "image_bytes_too_large"),
    case("path-missing-inside", by_path(hostile("nope.png")), 404, "image_not_found"),
    # 6. formats we do not read: 415 from the leading bytes; junk stays 400
    case("svg-as-png", raw(lambda: SVG), 415, "unsupported_image_format"),
    case("svg-bom-whitespace-xml-decl", raw(lambda: XML_SVG, "application/octet-stream"),
         415, "unsupported_image_format"),
    case("svg-utf16", raw(lambda: b"\xff\xfe" + SVG.decode().encode("utf-16-le")), 415,
         "unsupported_image_format"),
    case("svg-as-base64", as_b64(lambda: SVG), 415, "unsupported_image_format"),
    case("svg-content-type", raw(lambda: SVG, "image/svg+xml"), 415, "unsupported_media_type"),
    case("pdf", raw(lambda: PDF, "application/octet-stream"), 415, "unsupported_image_format"),
    case("html-posing-as-png", raw(lambda: HTML), 415, "unsupported_image_format"),
    case("xml", raw(lambda: XML), 415, "unsupported_image_format"),
    case("ico", raw(ico), 415, "unsupported_image_format"),
    case("ppm", raw(ppm), 415, "unsupported_image_format"),
    case("random-bytes", raw(random_bytes), 400, "invalid_image"),
    # 7. broken images: whatever the decoder raises is a 400
    case("png-truncated", raw(lambda: PNG7[:len(PNG7) // 2]), 400, "invalid_image"),
    case("png-garbage-idat", raw(lambda: png_bomb(28, 28).replace(b"IDAT", b"IDAT\xff", 1)),
         400, "invalid_image"),
    case("gif-header-then-junk", raw(lambda: tiny_gif()[:13] + b"\x2c" + b"\xff" * 64,
                                     "image/gif"), 400, "invalid_image"),
    case("tiff-ifd-past-the-end", raw(lambda: b"II*\0" + struct.pack("<I", 1 << 30),
                                      "image/tiff"), 400, "invalid_image"),
    # 8. fields: integers past 64 bits or past their meaning, NaN/Infinity, huge strings
    case("feedback-instance-2**122", feedback_json(instance=2**122), 400, "bad_parameter"),
    case("feedback-instance-negative", feedback_json(instance=-1), 400, "bad_parameter"),
    case("feedback-instance-float", feedback_json(instance=1.5), 400, "bad_parameter"),
    case("feedback-instance-1e400", feedback_text(b'"instance": 1e400'), 400, "bad_parameter"),
    case("feedback-instance-NaN", feedback_text(b'"instance": NaN'), 400, "invalid_json"),
    case("feedback-class-2**64", feedback_json(label=None, **{"class": 2**64}), 400,
         "bad_parameter"),
    case("feedback-class-true", feedback_json(label=None, **{"class": True}), 400,
         "bad_parameter"),
    case("feedback-request-id-1000-chars", feedback_json(request_id="a" * 1000), 400,
         "bad_parameter"),
    case("feedback-label-1000-chars", feedback_json(label="7" * 1000), 400, "bad_label"),
    case("feedback-body-over-4KB", feedback_json(request_id="a" * 5000), 413,
         "body_too_large"),
    case("top_k-2**64", as_json(lambda: {"image": B64_7, "top_k": 2**64}), 400,
         "bad_parameter"),
    case("top_k-Infinity", json_text(lambda: b'{"image": "x", "top_k": Infinity}'), 400,
         "invalid_json"),
    case("top_k-query-30-digits", post(CNN + "?top_k=" + "9" * 30, data=lambda: PNG7,
                                       headers={"Content-Type": "image/png"}),
         400, "bad_parameter"),
    case("top_k-query-superscript-two", post(CNN + "?top_k=%C2%B2", data=lambda: PNG7,
                                             headers={"Content-Type": "image/png"}),
         400, "bad_parameter"),
    case("x-1e400-is-infinite", json_text(
        lambda: b'{"image": "' + B64_7.encode() + b'", "x": 1e400, "y": 1}'), 400,
        "bad_parameter"),
    case("x-NaN", json_text(lambda: b'{"image": "x", "x": NaN, "y": 1}'), 400, "invalid_json"),
    case("crop-10000-digit-string", as_json(lambda: {"image": B64_7, "crop": "1" * 10_000}),
         400, "bad_parameter"),
    case("mnist-index-5000-digits", get_route("/mnist/label/" + "9" * 5000), 404,
         "index_not_found"),
    case("content-length-superscript", lying_length(b"\xc2\xb2"), 400, "bad_request"),
    case("content-length-30-digits", lying_length(b"9" * 30), 413, "body_too_large"),
]


# -- fixtures and helpers ------------------------------------------------------------------------
@pytest.fixture(scope="module", autouse=True)
def hostile_entries(images_root: Path):
    base, sock = make_hostile_entries(images_root)
    yield base
    sock.close()
    shutil.rmtree(base)


def make_hostile_entries(images_root: Path) -> tuple[Path, socket.socket]:
    """FIFO, socket, device and outward symlinks, a directory and a sparse big file."""
    base = images_root / HOSTILE_DIR
    base.mkdir()
    os.mkfifo(base / "pipe.png")
    (base / "to-pipe.png").symlink_to(base / "pipe.png")
    (base / "passwd.png").symlink_to("/etc/passwd")
    (base / "zero.png").symlink_to("/dev/zero")
    (base / "dangling.png").symlink_to("/nonexistent/secret.png")
    (base / "loop.png").symlink_to(base / "loop.png")
    (base / "dir.png").mkdir()
    with open(base / "big.png", "wb") as handle:  # sparse: no disk is spent on it
        handle.truncate(11 * MB)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(base / "sock.png"))
    return base, sock


def scrape(url: str) -> dict[tuple[str, frozenset], float]:
    text = requests.get(url + "/metrics", timeout=10).text
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def rejected(samples: dict, code: str, status: int) -> float:
    key = ("digits_http_rejected_requests_total",
           frozenset({"code": code, "status": str(status)}.items()))
    return samples.get(key, 0.0)


def assert_counted(url: str, code: str, status: int, before: dict) -> None:
    """The rejection counter moved by one (it is updated after the answer is sent: poll)."""
    deadline = time.monotonic() + 5
    while True:
        moved = rejected(scrape(url), code, status) - rejected(before, code, status)
        if moved >= 1 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert moved == 1, (code, status, moved)


def assert_refused(reply: Reply, status: int, code: str) -> None:
    assert reply.status == status, reply.text[:500]
    assert reply.content_type == "application/json", reply.content_type
    body = json.loads(reply.text)
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
    assert body["error"]["code"] == code, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    assert "Traceback" not in reply.text and 'File "' not in reply.text


@pytest.mark.parametrize("send, status, code", CASES)
def test_hostile_input_is_refused(server, send, status, code):
    before = scrape(server)
    reply = send(server)
    assert reply.elapsed < 10, f"took {reply.elapsed:.1f} s"
    if code is None:  # harmless despite its shape: served normally
        assert reply.status == status, reply.text[:500]
        assert json.loads(reply.text)["predictions"][0]["class"] == 7
        return
    assert_refused(reply, status, code)
    assert_counted(server, code, status, before)


# -- outside the table ---------------------------------------------------------------------------
BOMBS = [("image/png", png_bomb), ("image/jpeg", jpeg_bomb), ("image/gif", gif_screen_bomb),
         ("image/gif", gif_frame_bomb), ("image/webp", webp_bomb), ("image/tiff", tiff_bomb),
         ("image/bmp", bmp_bomb)]


def server_pid(url: str) -> int:
    """The pid of the ``python -m service serve --port P`` serving ``url``."""
    port = str(urlsplit(url).port).encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            args = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"serve" in args and any(a == b"--port" and b == port for a, b in zip(args, args[1:])):
            return int(entry.name)
    raise LookupError(f"no server process for {url}")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise LookupError("no VmRSS")


def test_bombs_answer_fast_and_keep_memory_flat(server):
    pid = server_pid(server)
    payloads = [(media, make()) for media, make in BOMBS]
    assert all(len(data) < 2048 for _, data in payloads)  # ~1 KB each
    for media, data in payloads:  # warm: first-use allocations are not a leak
        requests.post(server + CNN, data=data, headers={"Content-Type": media}, timeout=30)
    start = rss_mb(pid)
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # VmHWM: from now on, the peak RSS
    for _ in range(3):
        for media, data in payloads:
            started = time.monotonic()
            r = requests.post(server + CNN, data=data, headers={"Content-Type": media}, timeout=30)
            # Refused from the header, before any pixel (the peak below): the time is only a
            # ceiling against a hang, as in the table.
            assert time.monotonic() - started < 10, media
            assert r.status_code == 413 and r.json()["error"]["code"] == "image_too_large"
    assert rss_mb(pid) - start < 50
    status = Path(f"/proc/{pid}/status").read_text()
    peak = int(status.split("VmHWM:")[1].split()[0]) / 1024
    assert peak - start < 50  # not even for a moment: no claimed canvas (>= 10^8 px) was allocated


def test_paths_outside_do_not_reveal_whether_they_exist(server):
    def message(path: str) -> tuple[int, str]:
        r = requests.post(server + CNN, json={"instances": [{"path": path}]}, timeout=30)
        return r.status_code, r.json()["error"]["message"].replace(repr(path), "<path>")
    assert message("/etc/passwd") == message("/etc/no-such-file")
    assert message("../../etc/passwd") == message("../../etc/no-such-file")
    assert message(hostile("passwd.png")) == message(hostile("dangling.png"))


def test_a_fifo_is_refused_without_blocking(server):
    # No writer ever opens this FIFO, so a blocking open would never return: the request's
    # timeout (a ReadTimeout) is then the failure, however slow the machine.
    r = requests.post(server + CNN, json={"instances": [{"path": hostile("pipe.png")}]},
                      timeout=10)
    assert r.status_code == 400


# The shared server's max_image_bytes equals max_body_bytes, so a raw or base64 image over it
# is always a body over max_body_bytes first; these limits are checked on the parser itself.
def test_base64_longer_than_max_image_bytes_is_refused_undecoded(monkeypatch):
    monkeypatch.setattr(values.base64, "b64decode", lambda *a, **k: pytest.fail("decoded"))
    limits = bodies.BodyLimits(None, MAX_BODY, max_image_bytes=1000)
    text = base64.b64encode(b"\0" * 1003).decode()
    for payload in ({"image": text}, {"instances": [{"b64": text}]}):
        with pytest.raises(PayloadTooLarge) as info:
            bodies.body_from_json(payload, {}, limits)
        assert info.value.code == "image_bytes_too_large"


def test_base64_at_max_image_bytes_is_accepted():
    limits = bodies.BodyLimits(None, MAX_BODY, max_image_bytes=1002)
    text = base64.b64encode(b"\1" * 1002).decode()
    spaced = "\n".join(text[i:i + 76] for i in range(0, len(text), 76))  # MIME line breaks
    body = bodies.body_from_json({"instances": [{"b64": spaced}]}, {}, limits)
    assert body.instances[0].data == b"\1" * 1002


def test_batch_size_is_checked_before_any_base64_is_decoded(monkeypatch):
    monkeypatch.setattr(values.base64, "b64decode", lambda *a, **k: pytest.fail("decoded"))
    limits = bodies.BodyLimits(None, MAX_BODY, max_batch_size=3)
    with pytest.raises(PayloadTooLarge) as info:
        bodies.body_from_json({"instances": [{"b64": "AAAA"}] * 4}, {}, limits)
    assert info.value.code == "batch_too_large"


@pytest.mark.parametrize("depth, refused", [(MAX_DEPTH, False), (MAX_DEPTH + 1, True)])
def test_json_depth_limit_is_exact(depth, refused):
    text = b'{"a": ' * (depth - 1) + b'["[[[\\"\\\\", "]]"]' + b"}" * (depth - 1)
    assert values.json_depth_exceeds(text, MAX_DEPTH) is refused
    if not refused:
        assert values.parse_json(text, MAX_DEPTH)
