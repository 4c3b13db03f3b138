"""Preparer (a request's images to one array, in parallel) and the OpenCV plain-PNG path."""
from __future__ import annotations

import io
import random
import struct
import threading
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from service.errors import InvalidImage
from service.models.datasets import load_mnist
from service.models.preprocess import PreprocessSpec, preprocess
from service.models.preprocess.batch import MIN_RUN, Preparer
from service.models.preprocess.decode import plain_gray_png

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
SEED = 20261202


@dataclass
class Upload:
    data: bytes
    x: float | None = None
    y: float | None = None
    crop: float | None = None


def png(pixels: np.ndarray, **save) -> bytes:
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "PNG", **save)
    return out.getvalue()


@pytest.fixture(scope="module")
def digit_pngs() -> list[bytes]:
    images, _ = load_mnist("test")
    return [png(image) for image in images[:40]]


@pytest.fixture
def preparer():
    prep = Preparer(threads=2)
    yield prep
    prep.stop()


def test_a_big_request_is_one_contiguous_array_equal_to_preprocess(preparer, digit_pngs):
    uploads = [Upload(data) for data in digit_pngs]
    uploads.append(Upload((FIXTURES / "digit7_112.jpg").read_bytes(), x=56, y=56, crop=0.8))
    prepared = preparer.prepare(uploads, PreprocessSpec())
    assert prepared.inputs.shape == (41, 28, 28) and prepared.inputs.flags.c_contiguous
    expected = np.stack([preprocess(u.data, x=u.x, y=u.y, crop=u.crop) for u in uploads])
    assert np.array_equal(prepared.inputs, expected)
    assert prepared.decode_s > 0 and prepared.preprocess_s > 0
    assert any(t.name.startswith("preprocess") for t in threading.enumerate())


def test_a_small_request_stays_on_the_calling_thread(digit_pngs):
    prep = Preparer(threads=2)
    prepared = prep.prepare([Upload(d) for d in digit_pngs[:MIN_RUN]], PreprocessSpec())
    assert prepared.inputs.shape == (MIN_RUN, 28, 28) and prep._pool is None


def test_the_lowest_failing_index_is_raised_with_its_number(preparer, digit_pngs):
    uploads = [Upload(data) for data in digit_pngs[:32]]
    broken = b"\x89PNG\r\n\x1a\n not really"
    uploads[5] = uploads[30] = Upload(broken)  # one in each thread's run
    with pytest.raises(InvalidImage) as raised:
        preparer.prepare(uploads, PreprocessSpec())
    assert raised.value.message.startswith("Image 5: ")


def test_one_image_errors_keep_their_message_unprefixed(preparer):
    with pytest.raises(InvalidImage) as raised:
        preparer.prepare([Upload(b"GIF89a broken")], PreprocessSpec())
    assert not raised.value.message.startswith("Image ")


def test_stop_ends_the_pool_threads(digit_pngs):
    prep = Preparer(threads=2)
    prep.prepare([Upload(d) for d in digit_pngs], PreprocessSpec())
    pool_threads = [t for t in threading.enumerate() if t.name.startswith("preprocess")]
    assert pool_threads
    prep.stop()
    for thread in pool_threads:
        thread.join(10)
    assert not any(t.is_alive() for t in pool_threads)


def pillow_pixels(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as img:
        return np.asarray(img.convert("L"))


def random_gray(rng: random.Random, side: int) -> np.ndarray:
    state = np.random.default_rng(rng.randrange(2**32))
    return state.integers(0, 256, (side, rng.randint(1, 60)), dtype=np.uint8)


def test_plain_gray_pngs_decode_as_pillow_decodes_them():
    print("seed", SEED)
    rng = random.Random(SEED)
    for _ in range(50):
        pixels = random_gray(rng, rng.randint(1, 60))
        data = png(pixels, compress_level=rng.randint(0, 9))
        decoded = plain_gray_png(data)
        assert decoded is not None and np.array_equal(decoded, pillow_pixels(data))


def with_chunk_crc_fixed(data: bytes, kind: bytes, damage) -> bytes:
    """``data`` with chunk ``kind``'s payload changed by ``damage`` and its CRC recomputed."""
    pos = 8
    while True:
        length, name = struct.unpack_from(">I4s", data, pos)
        if name == kind:
            body = bytearray(data[pos + 8:pos + 8 + length])
            damage(body)
            chunk = name + bytes(body)
            crc = zlib.crc32(chunk).to_bytes(4, "big")
            return (data[:pos] + struct.pack(">I", len(body)) + chunk + crc
                    + data[pos + 12 + length:])
        pos += 12 + length


def test_damaged_image_data_with_a_right_crc_goes_to_pillow_for_its_error():
    print("seed", SEED)
    rng = random.Random(SEED)
    data = png(random_gray(rng, 28))
    for _ in range(20):
        def damage(body: bytearray) -> None:
            for _ in range(rng.randint(1, 4)):
                body[rng.randrange(len(body))] = rng.randrange(256)
            del body[rng.randrange(len(body)):]
        broken = with_chunk_crc_fixed(data, b"IDAT", damage)
        decoded = plain_gray_png(broken)
        if decoded is not None:  # OpenCV read it: then it must agree with Pillow
            assert np.array_equal(decoded, pillow_pixels(broken))


@pytest.mark.parametrize("case", ["rgb", "16 bit", "interlaced", "transparency", "big",
                                  "bad crc", "truncated", "unknown chunk", "not png"])
def test_anything_but_a_plain_gray_png_is_left_to_pillow(case):
    gray = np.arange(28 * 28, dtype=np.uint8).reshape(28, 28)
    data = {
        "rgb": lambda: png(np.stack([gray] * 3, axis=-1)),
        "16 bit": lambda: png(gray.astype(np.uint16) * 200),
        "interlaced": lambda: _interlaced(gray),
        "transparency": lambda: png(gray, transparency=0),
        "big": lambda: png(np.zeros((1000, 1000), np.uint8)),
        "bad crc": lambda: _flip(png(gray), 43),  # a byte of the IDAT after IHDR
        "truncated": lambda: png(gray)[:-20],
        "unknown chunk": lambda: _with_chunk(png(gray), b"eXIf", b"II*\x00"),
        "not png": lambda: (FIXTURES / "digit7_112.bmp").read_bytes(),
    }[case]()
    assert plain_gray_png(data) is None
    assert plain_gray_png(png(gray), PreprocessSpec(kind="resize", color="rgb")) is None


def _flip(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 1]) + data[at + 1:]


def _interlaced(pixels: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "PNG")
    data = bytearray(out.getvalue())
    data[28] = 1  # IHDR's interlace byte, CRC fixed below
    data[29:33] = zlib.crc32(bytes(data[12:29])).to_bytes(4, "big")
    return bytes(data)


def _with_chunk(data: bytes, kind: bytes, body: bytes) -> bytes:
    chunk = struct.pack(">I", len(body)) + kind + body + zlib.crc32(kind + body).to_bytes(4, "big")
    return data[:33] + chunk + data[33:]
