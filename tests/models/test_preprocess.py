"""Tests for the shared image preprocessing: real encoded bytes through the real decoders."""
from __future__ import annotations

import io
import json
import math
import os
import struct
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from service.errors import (
    BlankImage,
    InvalidImage,
    InvalidInput,
    PayloadTooLarge,
    ServiceError,
    SeveralDigits,
    UnsupportedMediaType,
)
from service.models import preprocess as preprocess_package
from service.models.datasets import load_mnist
from service.models.preprocess import (
    DEFAULT_MAX_FRAMES,
    ORIGINAL_SIZE_KEY,
    SUPPORTED_FORMATS,
    PreprocessSpec,
    check_container,
    decode,
    document_format,
    preprocess,
    to_model_input,
    to_png,
)
from service.models.preprocess.containers import BLOCK_BUDGET, BLOCK_BUDGET_BYTES, MAX_TIFF_TAGS

EXIF_ORIENTATION = 0x0112
RGB_SPEC = PreprocessSpec(kind="resize", width=9, height=9, color="rgb", crop_fraction=0.8)


# --- helpers ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mnist() -> tuple[np.ndarray, np.ndarray]:
    return load_mnist("test")


def encode(img: Image.Image, fmt: str, **params) -> bytes:
    out = io.BytesIO()
    img.save(out, format=fmt, **params)
    return out.getvalue()


def upscaled(digit: np.ndarray, factor: int) -> Image.Image:
    return Image.fromarray(digit).resize((28 * factor, 28 * factor), Image.Resampling.BICUBIC)


def corr(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel())[0, 1])


def centre_of_mass(arr: np.ndarray) -> tuple[float, float]:
    total = arr.sum()
    return (arr.sum(axis=1) @ np.arange(arr.shape[0])) / total, (arr.sum(axis=0) @ np.arange(arr.shape[1])) / total


def ink_box_side(arr: np.ndarray, threshold: float = 0.0) -> int:
    rows, cols = np.flatnonzero((arr > threshold).any(axis=1)), np.flatnonzero((arr > threshold).any(axis=0))
    return int(max(rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1))


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims width x height but whose pixel data is nowhere near complete."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1-bit gray
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def assert_mnist_like(out: np.ndarray) -> None:
    assert out.shape == (28, 28) and out.dtype == np.float32
    assert 0.0 <= out.min() and out.max() <= 1.0


# --- MNIST itself passes through untouched ------------------------------------------------


def test_every_mnist_test_digit_passes_through_bit_exactly(mnist):
    images, _ = mnist
    changed = [
        i for i, digit in enumerate(images)
        if not np.array_equal(to_model_input(Image.fromarray(digit)), (digit / 255).astype(np.float32))
    ]
    assert changed == []


def test_png_encoded_mnist_digits_pass_through_bit_exactly(mnist):
    images, _ = mnist
    for i in range(0, 10_000, 50):
        out = preprocess(encode(Image.fromarray(images[i]), "PNG"))
        assert out.dtype == np.float32
        assert np.array_equal(out, images[i].astype(np.float32) / 255), f"test image {i} changed"


# --- PreprocessSpec -----------------------------------------------------------------------


def test_spec_defaults_are_mnist():
    spec = PreprocessSpec()
    assert (spec.kind, spec.width, spec.height, spec.color, spec.crop_fraction, spec.invert) == (
        "mnist", 28, 28, "gray", None, "auto")


@pytest.mark.parametrize("spec", [PreprocessSpec(), RGB_SPEC, PreprocessSpec(kind="resize", invert="never")])
def test_spec_dict_round_trip(spec):
    data = spec.to_dict()
    assert json.loads(json.dumps(data)) == data
    assert PreprocessSpec.from_dict(data) == spec
    assert PreprocessSpec.from_dict({}) == PreprocessSpec()


def test_spec_describe_is_one_line():
    for spec in (PreprocessSpec(), RGB_SPEC):
        text = spec.describe()
        assert text and "\n" not in text
    assert "9x9 RGB" in RGB_SPEC.describe() and "80%" in RGB_SPEC.describe()


@pytest.mark.parametrize("data, field", [
    ({"kind": "thumbnail"}, "kind"),
    ({"kind": None}, "kind"),
    ({"kind": "resize", "width": 0}, "width"),
    ({"kind": "resize", "width": "28"}, "width"),
    ({"kind": "resize", "width": True}, "width"),
    ({"kind": "resize", "height": 2.5}, "height"),
    ({"kind": "resize", "height": 100_000}, "height"),
    ({"color": "cmyk"}, "color"),
    ({"kind": "mnist", "color": "rgb"}, "color"),
    ({"kind": "mnist", "width": 9}, "width"),
    ({"invert": "always"}, "invert"),
    ({"crop_fraction": 0}, "crop_fraction"),
    ({"crop_fraction": 1.5}, "crop_fraction"),
    ({"crop_fraction": "0.8"}, "crop_fraction"),
    ({"crop_fraction": float("nan")}, "crop_fraction"),
    ({"crop_size": 0.8}, "crop_size"),
])
def test_spec_from_dict_names_the_bad_field(data, field):
    with pytest.raises(ValueError, match=f"'{field}'"):
        PreprocessSpec.from_dict(data)


def test_spec_from_dict_needs_an_object():
    with pytest.raises(ValueError, match="preprocess"):
        PreprocessSpec.from_dict(["mnist"])


# --- decoding -----------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", SUPPORTED_FORMATS)
def test_each_supported_format_decodes(fmt, mnist):
    images, _ = mnist
    params = {"quality": 95} if fmt in ("JPEG", "WEBP") else {}
    img = upscaled(images[0], 4)
    out = preprocess(encode(img if fmt != "BMP" else img.convert("RGB"), fmt, **params))
    assert_mnist_like(out)
    assert corr(out, images[0]) > 0.9


def test_fixture_files_decode(fixtures_dir: Path, mnist):
    images, _ = mnist
    meta = json.loads((fixtures_dir / "fixtures.json").read_text())
    digits = {name: m for name, m in meta.items() if m["label"] is not None}
    assert len(digits) >= 8
    for name, m in digits.items():
        out = preprocess((fixtures_dir / name).read_bytes())
        assert_mnist_like(out)
        assert corr(out, images[m["source_index"]]) > 0.85, name


def test_animated_gif_uses_the_first_frame(mnist):
    images, _ = mnist
    first, second = upscaled(images[0], 4), upscaled(images[1], 4)
    for fmt in ("GIF", "WEBP", "TIFF"):
        data = encode(first, fmt, save_all=True, append_images=[second])
        out = preprocess(data)
        assert corr(out, images[0]) > 0.9 > corr(out, images[1]), fmt


@pytest.mark.parametrize("fmt", ["ICO", "PPM"])
def test_formats_pillow_knows_but_we_refuse_are_415(fmt, mnist):
    data = encode(upscaled(mnist[0][0], 2), fmt)
    with pytest.raises(UnsupportedMediaType) as info:
        preprocess(data)
    assert info.value.status == 415 and info.value.code == "unsupported_image_format"
    assert fmt in info.value.message


def truncated_png(mnist) -> bytes:
    data = encode(upscaled(mnist[0][0], 4), "PNG")
    return data[: len(data) // 2]


@pytest.mark.parametrize("make", [
    lambda mnist: b"",
    lambda mnist: b"This is plain text, not an image.\n",
    truncated_png,
    lambda mnist: encode(upscaled(mnist[0][0], 4), "JPEG")[:300],
    lambda mnist: b"\x89PNG\r\n\x1a\n" + b"\0" * 40,
])
def test_undecodable_bytes_are_invalid_image(make, mnist):
    with pytest.raises(InvalidImage) as info:
        preprocess(make(mnist))
    assert info.value.status == 400 and info.value.code == "invalid_image"


def test_fixture_bad_files_are_invalid_image(fixtures_dir: Path):
    for name in ("truncated.png", "not_an_image.txt"):
        with pytest.raises(InvalidImage):
            preprocess((fixtures_dir / name).read_bytes())


@pytest.mark.parametrize("img, fmt", [
    (Image.new("L", (64, 64), 255), "PNG"),
    (Image.new("L", (64, 64), 0), "PNG"),
    (Image.new("L", (28, 28), 255), "PNG"),
    (Image.new("L", (28, 28), 0), "PNG"),
    (Image.new("RGB", (400, 300), (250, 250, 245)), "JPEG"),
    (Image.new("RGBA", (50, 50), (0, 0, 0, 0)), "PNG"),
    (Image.fromarray(np.random.default_rng(1).normal(200, 6, (200, 200)).clip(0, 255).astype(np.uint8)), "JPEG"),
])
def test_images_without_ink_are_blank(img, fmt):
    with pytest.raises(BlankImage) as info:
        preprocess(encode(img, fmt))
    assert info.value.status == 400 and info.value.code == "blank_image"
    assert info.value.message == "The image is blank: no digit was found."


def test_fixture_blank_png_is_blank(fixtures_dir: Path):
    with pytest.raises(BlankImage):
        preprocess((fixtures_dir / "blank.png").read_bytes())


def test_too_many_pixels_is_refused_from_the_header():
    # 36 Mpx declared, but the pixel data is garbage: only the header check can give a 413.
    with pytest.raises(PayloadTooLarge) as info:
        preprocess(png_header_only(6000, 6000))
    assert info.value.status == 413 and info.value.code == "image_too_large"
    assert "6000x6000" in info.value.message
    # The same file under the limit gets as far as decoding the pixels, and fails there.
    with pytest.raises(InvalidImage):
        preprocess(png_header_only(5000, 5000))


def test_max_pixels_is_configurable(mnist):
    data = encode(upscaled(mnist[0][0], 4), "PNG")  # 112 x 112 = 12544 px
    assert preprocess(data, max_pixels=12544).shape == (28, 28)
    with pytest.raises(PayloadTooLarge):
        preprocess(data, max_pixels=12543)
    with pytest.raises(PayloadTooLarge):
        decode(data, max_pixels=100)


def test_pillows_own_bomb_check_becomes_413():
    # 400 Mpx is past Pillow's hard limit, which fires while opening, before our check.
    with pytest.raises(PayloadTooLarge) as info:
        decode(png_header_only(20_000, 20_000), max_pixels=10**10)
    assert info.value.code == "image_too_large"


def test_decode_returns_a_loaded_image(mnist):
    img = decode(encode(upscaled(mnist[0][0], 4), "PNG"))
    assert img.size == (112, 112) and img.info[ORIGINAL_SIZE_KEY] == (112, 112)


def test_jpeg_draft_decodes_smaller_but_remembers_the_original_size(mnist):
    images, _ = mnist
    canvas = Image.new("L", (1200, 900), 0)
    canvas.paste(upscaled(images[0], 20), (300, 200))
    data = encode(canvas, "JPEG", quality=90)
    img = decode(data, draft_size=(112, 112), draft_mode="L")
    assert img.size == (150, 113) and img.mode == "L"
    assert img.info[ORIGINAL_SIZE_KEY] == (1200, 900)
    full = to_model_input(decode(data))
    assert corr(preprocess(data), full) > 0.95
    assert corr(full, images[0]) > 0.9


@pytest.mark.parametrize("mode", ["I;16", "CMYK", "P", "1", "LA", "F"])
def test_unusual_pixel_modes_are_handled(mode, mnist):
    images, _ = mnist
    gray = upscaled(images[0], 4)
    if mode == "I;16":
        img, fmt = Image.fromarray(np.asarray(gray).astype(np.uint16) * 257), "PNG"
    elif mode == "CMYK":
        img, fmt = Image.fromarray(255 - np.asarray(gray)).convert("CMYK"), "JPEG"
    elif mode == "1":
        img, fmt = gray.point(lambda v: 255 if v > 127 else 0).convert("1"), "PNG"
    elif mode == "F":
        img, fmt = Image.fromarray(np.asarray(gray, np.float32) / 255), "TIFF"
    else:
        img, fmt = gray.convert(mode), "PNG"
    out = preprocess(encode(img, fmt))
    assert_mnist_like(out)
    assert corr(out, images[0]) > (0.8 if mode == "1" else 0.9)  # 1-bit loses the anti-aliasing


@pytest.mark.filterwarnings("ignore::UserWarning")  # Pillow grumbles about broken TIFF tags
def test_corrupted_files_only_raise_service_errors(mnist):
    rng = np.random.default_rng(7)
    img = upscaled(mnist[0][0], 2)
    for fmt in SUPPORTED_FORMATS:
        good = bytearray(encode(img if fmt != "BMP" else img.convert("RGB"), fmt))
        for _ in range(40):
            bad = bytearray(good)
            for pos in rng.integers(0, len(bad), size=int(rng.integers(1, 8))):
                bad[pos] = int(rng.integers(0, 256))
            try:
                preprocess(bytes(bad[: int(rng.integers(1, len(bad) + 1))]))
            except ServiceError:
                pass


# --- polarity, centring, scaling ----------------------------------------------------------


def test_light_background_is_inverted(mnist):
    images, _ = mnist
    for i in range(10):
        bright = upscaled(images[i], 3)
        dark_on_light = Image.fromarray(255 - np.asarray(bright))
        ref = preprocess(encode(bright, "PNG"))
        out = preprocess(encode(dark_on_light, "PNG"))
        assert out.mean() < 0.5  # ink bright, background dark
        assert corr(out, ref) > 0.9, i


def test_invert_never_keeps_polarity(mnist):
    dark_on_light = Image.fromarray(255 - np.asarray(upscaled(mnist[0][0], 3)))
    with pytest.raises(BlankImage):  # light paper, nothing brighter on it
        to_model_input(dark_on_light, PreprocessSpec(invert="never"))
    out = to_model_input(dark_on_light, PreprocessSpec(kind="resize", invert="never"))
    assert out.mean() > 0.5


@pytest.mark.parametrize("index", range(10))
def test_photo_like_rendering_is_normalised_like_mnist(index, mnist):
    images, _ = mnist
    digit = Image.fromarray(255 - images[index]).resize((140, 140), Image.Resampling.BICUBIC)
    canvas = Image.new("L", (400, 300), 255)
    canvas.paste(digit, (230, 20))  # far off-centre
    out = preprocess(encode(canvas, "JPEG", quality=85))
    assert_mnist_like(out)
    cy, cx = centre_of_mass(out)
    assert abs(cy - 14) <= 1 and abs(cx - 14) <= 1
    assert ink_box_side(out) == 20
    assert ink_box_side(out, 0.05) >= 19
    assert corr(out, images[index]) > 0.8


def test_small_digit_is_scaled_up_and_centred(mnist):
    images, _ = mnist
    canvas = Image.new("L", (28, 28), 0)
    canvas.paste(Image.fromarray(images[0]).resize((12, 12), Image.Resampling.LANCZOS), (0, 0))
    out = to_model_input(canvas, crop=1.0)  # the crop forces the full pipeline on a 28x28 input
    cy, cx = centre_of_mass(out)
    assert abs(cy - 14) <= 1 and abs(cx - 14) <= 1
    assert ink_box_side(out) == 20


def test_wide_ink_keeps_its_aspect_ratio():
    bar = np.zeros((100, 200), np.uint8)
    bar[45:55, 20:180] = 255
    out = preprocess(encode(Image.fromarray(bar), "PNG"))
    rows, cols = np.flatnonzero((out > 0.5).any(axis=1)), np.flatnonzero((out > 0.5).any(axis=0))
    assert len(cols) == 20 and 1 <= len(rows) <= 2


def test_transparent_background_counts_as_white(mnist):
    images, _ = mnist
    alpha = upscaled(images[4], 4)
    black = Image.new("L", alpha.size, 0)
    rgba = Image.merge("RGBA", (black, black, black, alpha))
    out = preprocess(encode(rgba, "PNG"))
    assert out.mean() < 0.5 and out.max() == 1.0
    assert corr(out, images[4]) > 0.9
    # Palette image with a transparent index, and a gray image with alpha, likewise.
    assert corr(preprocess(encode(rgba.convert("LA"), "PNG")), images[4]) > 0.9


def test_fixture_rgba_digit(fixtures_dir: Path, mnist):
    out = preprocess((fixtures_dir / "rgba_digit.png").read_bytes())
    assert corr(out, mnist[0][4]) > 0.9


def test_exif_orientation_is_applied(mnist):
    images, _ = mnist
    upright = Image.new("L", (112, 160), 235)
    upright.paste(Image.fromarray(255 - np.asarray(upscaled(images[23], 4))), (0, 20))
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6  # "rotate 90 CW to view"
    stored = encode(upright.transpose(Image.Transpose.ROTATE_90), "JPEG", quality=95, exif=exif.tobytes())
    img = decode(stored)
    assert img.size == (112, 160) and img.info[ORIGINAL_SIZE_KEY] == (112, 160)
    out = preprocess(stored)
    assert corr(out, preprocess(encode(upright, "JPEG", quality=95))) > 0.97
    assert corr(out, images[23]) > 0.9
    # Without the tag the digit would be lying on its side.
    sideways = preprocess(encode(upright.transpose(Image.Transpose.ROTATE_90), "JPEG", quality=95))
    assert corr(sideways, images[23]) < 0.5


def test_fixture_exif_rotated(fixtures_dir: Path, mnist):
    data = (fixtures_dir / "exif_rotated.jpg").read_bytes()
    assert decode(data).size == (112, 140)
    assert corr(preprocess(data), mnist[0][23]) > 0.9


# --- cropping around a point --------------------------------------------------------------


def two_digits(mnist, scale: int = 4) -> tuple[Image.Image, np.ndarray, np.ndarray]:
    """A 7 on the left and a 2 on the right, side by side."""
    images, _ = mnist
    side = 28 * scale
    canvas = Image.new("L", (2 * side, side), 0)
    canvas.paste(upscaled(images[0], scale), (0, 0))
    canvas.paste(upscaled(images[1], scale), (side, 0))
    return canvas, images[0], images[1]


def test_crop_around_a_point_picks_that_digit(mnist):
    canvas, seven, two = two_digits(mnist)
    data = encode(canvas, "PNG")
    right = preprocess(data, x=168, y=56, crop=1.0)
    left = preprocess(data, x=56, y=56, crop=1.0)
    assert corr(right, two) > 0.9 > corr(right, seven)
    assert corr(left, seven) > 0.9 > corr(left, two)


def test_crop_point_is_in_original_pixels_after_jpeg_draft(mnist):
    canvas, seven, two = two_digits(mnist, scale=20)  # 1120 x 560
    data = encode(canvas, "JPEG", quality=90)
    img = decode(data, draft_size=(112, 112), draft_mode="L")
    assert img.width < canvas.width  # the draft did shrink it...
    right = preprocess(data, x=840, y=280, crop=0.95)  # ...yet x, y still mean the same spot
    assert corr(right, two) > 0.9 > corr(right, seven)


def test_crop_fraction_from_the_spec_is_the_default_around_a_point(mnist):
    canvas, seven, two = two_digits(mnist)
    spec = PreprocessSpec(crop_fraction=1.0)
    assert corr(to_model_input(canvas, spec, x=168, y=56), two) > 0.9
    # Without a point the spec's fraction does not crop: both digits are seen, and said.
    with pytest.raises(SeveralDigits) as info:
        to_model_input(canvas, spec)
    assert info.value.status == 422 and len(info.value.boxes) == 2


def test_crop_without_a_point_crops_around_the_centre(mnist):
    images, _ = mnist
    canvas = Image.new("L", (300, 300), 0)
    canvas.paste(upscaled(images[0], 3), (108, 108))
    canvas.paste(upscaled(images[1], 3), (0, 0))  # another digit in the corner
    data = encode(canvas, "PNG")
    assert corr(preprocess(data, crop=0.5), images[0]) > 0.9
    with pytest.raises(SeveralDigits):
        preprocess(data)


@pytest.mark.parametrize("crop", [0, 0.0, -0.5, 1.5, float("nan"), float("inf"), "0.5", True])
def test_bad_crop_is_invalid_input(crop, mnist):
    data = encode(upscaled(mnist[0][0], 4), "PNG")
    for kwargs in ({"crop": crop}, {"crop": crop, "x": 50, "y": 50}):
        with pytest.raises(InvalidInput, match="crop") as info:
            preprocess(data, **kwargs)
        assert type(info.value) is InvalidInput and info.value.status == 400


@pytest.mark.parametrize("x, y, name", [
    (-1, 50, "x"), (113, 50, "x"), (50, -0.5, "y"), (50, 200, "y"),
    (float("nan"), 50, "x"), (50, None, "y"), (None, 50, "x"), ("50", 50, "x"),
])
def test_point_outside_the_image_is_invalid_input(x, y, name, mnist):
    img = upscaled(mnist[0][0], 4)
    with pytest.raises(InvalidInput, match=f"^{name} ") as info:
        preprocess(encode(img, "PNG"), x=x, y=y)
    assert type(info.value) is InvalidInput
    with pytest.raises(InvalidInput, match=f"^{name} "):
        to_model_input(img, x=x, y=y)


def test_point_on_the_edge_is_accepted(mnist):
    img = upscaled(mnist[0][0], 4)
    assert to_model_input(img, x=112, y=0, crop=1.0).shape == (28, 28)


# --- "resize" kind ------------------------------------------------------------------------


def test_resize_rgb_after_crop():
    rng = np.random.default_rng(3)
    pixels = np.zeros((100, 120, 3), np.uint8)
    pixels[..., 0] = 200  # reddish paper...
    pixels[30:70, 40:80, 2] = 255  # ...with a blue-ish square
    pixels += rng.integers(0, 20, pixels.shape, dtype=np.uint8)
    data = encode(Image.fromarray(pixels), "PNG")
    for kwargs in ({"x": 60, "y": 50}, {"crop": 0.8}):
        out = preprocess(data, RGB_SPEC, **kwargs)
        assert out.shape == (9, 9, 3) and out.dtype == np.float32
        assert 0.0 <= out.min() and out.max() <= 1.0
        assert not np.allclose(out[..., 0], out[..., 2])  # colour survived


def test_resize_gray_of_a_big_jpeg():
    spec = PreprocessSpec(kind="resize", width=16, height=12, invert="never")
    img = Image.fromarray(np.tile(np.linspace(0, 255, 1600, dtype=np.uint8), (1200, 1)))
    out = preprocess(encode(img, "JPEG"), spec)
    assert out.shape == (12, 16) and out.dtype == np.float32
    assert np.all(np.diff(out[6]) > 0)  # the gradient survives the draft and reduce


# --- preview ------------------------------------------------------------------------------


def test_to_png_renders_an_enlarged_image(mnist):
    arr = mnist[0][0] / 255
    data = to_png(arr)
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    img = Image.open(io.BytesIO(data))
    assert img.size == (224, 224) and img.mode == "L"
    assert np.array_equal(np.asarray(img)[::8, ::8], mnist[0][0])
    rgb = Image.open(io.BytesIO(to_png(np.full((9, 9, 3), 0.5, np.float32), scale=4)))
    assert rgb.size == (36, 36) and rgb.mode == "RGB"


def test_to_png_rejects_bad_arrays():
    for bad in (np.zeros((2, 2, 2, 2)), np.zeros((4, 4, 2)), np.zeros((0, 5))):
        with pytest.raises(ValueError):
            to_png(bad)
    with pytest.raises(ValueError):
        to_png(np.zeros((4, 4)), scale=0)


def test_to_png_clips_out_of_range_values():
    img = Image.open(io.BytesIO(to_png(np.array([[-1.0, 2.0], [math.nan, 0.5]]), scale=1)))
    assert np.asarray(img).tolist() == [[0, 255], [0, 128]]


# --- container checks: frames and blocks, from the structure alone ----------------------


def noisy_frames(n: int) -> list[Image.Image]:
    """``n`` different 28x28 frames (identical ones would be merged by the encoders)."""
    rng = np.random.default_rng(n)
    return [Image.fromarray(rng.integers(0, 255, (28, 28), dtype=np.uint8)) for _ in range(n)]


def animation(fmt: str, n: int) -> bytes:
    frames = noisy_frames(n)
    extra = {"lossless": True} if fmt == "WEBP" else {}
    return encode(frames[0], fmt, save_all=True, append_images=frames[1:], **extra)


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def insert_before_idat(png: bytes, chunks: bytes) -> bytes:
    at = png.index(b"IDAT") - 4
    return png[:at] + chunks + png[at:]


def refused(data: bytes, **limits) -> ServiceError:
    with pytest.raises(ServiceError) as info:
        check_container(data, **limits)
    return info.value


# The walkers' cost is counted, not timed: in lines of the preprocess package run, a few per
# block of their budget (7-8 today), whatever the machine's speed.
STEPS_PER_BLOCK = 16
PACKAGE_DIR = os.path.dirname(preprocess_package.__file__)


def block_budget(data: bytes) -> int:
    """The blocks check_container lets a walker read in ``data``."""
    return BLOCK_BUDGET + len(data) // BLOCK_BUDGET_BYTES


class TooManySteps(BaseException):
    """Past the cap (a BaseException: no ``except Exception`` in the code can hide it)."""


class PythonSteps:
    """Counts the lines of service/models/preprocess/ run inside ``with``; past ``cap`` it
    stops the code under test, so a walker that would loop for ever fails too."""

    def __init__(self, cap: int):
        self.cap, self.count = cap, 0

    def _call(self, frame, event, arg):
        return self._line if os.path.dirname(frame.f_code.co_filename) == PACKAGE_DIR else None

    def _line(self, frame, event, arg):
        if event == "line":
            self.count += 1
            if self.count > self.cap:
                raise TooManySteps(f"more than {self.cap} lines of the preprocess package")
        return self._line

    def __enter__(self) -> "PythonSteps":
        self._previous = sys.gettrace()
        sys.settrace(self._call)
        return self

    def __exit__(self, *exc_info) -> None:
        sys.settrace(self._previous)


@pytest.mark.parametrize("fmt", ["GIF", "TIFF", "WEBP", "PNG"])
def test_more_frames_than_max_frames_is_413(fmt):
    assert Image.open(io.BytesIO(animation(fmt, 4))).n_frames == 4  # what Pillow would count
    decode(animation(fmt, 3), max_frames=3)
    with pytest.raises(PayloadTooLarge) as info:
        decode(animation(fmt, 4), max_frames=3)
    assert info.value.status == 413 and info.value.code == "too_many_frames"


def test_max_frames_reaches_preprocess_and_the_default_is_100():
    assert DEFAULT_MAX_FRAMES == 100
    data = animation("GIF", 5)
    with pytest.raises(PayloadTooLarge):
        preprocess(data, max_frames=4)
    preprocess(data, max_frames=5, spec=RGB_SPEC)


def test_mpo_frames_are_counted_from_its_header():
    frames = [img.convert("RGB") for img in noisy_frames(3)]
    data = encode(frames[0], "MPO", save_all=True, append_images=frames[1:])
    with pytest.raises(PayloadTooLarge) as info:
        decode(data, max_frames=2)
    assert info.value.code == "too_many_frames"


def gif_with_frames(n: int) -> bytes:
    frame = b"\x2c" + struct.pack("<HHHHB", 0, 0, 1, 1, 0) + b"\x02\x02\x44\x01\x00"
    return b"GIF89a" + struct.pack("<HHBBB", 1, 1, 0x80, 0, 0) + b"\0" * 6 + frame * n + b";"


def test_frame_count_stops_early_and_never_asks_pillow(monkeypatch):
    monkeypatch.setattr(Image, "open", lambda *a, **k: pytest.fail("Pillow was asked"))
    with PythonSteps(cap=50 * (DEFAULT_MAX_FRAMES + 1)) as steps:  # a few dozen lines a frame
        assert refused(gif_with_frames(500_000)).code == "too_many_frames"  # 7.5 MB of frames
    assert steps.count > 0  # counted, and it stopped at frame 101: walking on breaks the cap


def test_a_lying_actl_is_refused_from_its_declaration():
    data = insert_before_idat(encode(Image.new("L", (28, 28)), "PNG"),
                              png_chunk(b"acTL", struct.pack(">II", 10**6, 0)))
    assert refused(data).code == "too_many_frames"


@pytest.mark.parametrize("name, make", [
    ("gif sub-blocks", lambda g: g[:g.index(b"\x2c")] + b"\x21\xfe" + b"\x01X" * 500_000
     + b"\0" + g[g.index(b"\x2c"):]),
    ("gif stray bytes", lambda g: g[:g.index(b"\x2c")] + b"\0" * 1_000_000 + g[g.index(b"\x2c"):]),
])
def test_gif_block_floods_are_413(name, make):
    error = refused(make(encode(Image.new("P", (1, 1)), "GIF")))
    assert error.status == 413 and error.code == "too_many_blocks", name


def test_png_chunk_and_jpeg_marker_floods_are_413():
    png = insert_before_idat(encode(Image.new("L", (8, 8)), "PNG"), png_chunk(b"prIv", b"") * 100_000)
    jpeg = encode(Image.new("L", (8, 8)), "JPEG")
    app0_end = 4 + int.from_bytes(jpeg[4:6], "big")
    for data in (png, jpeg[:2] + b"\xff\xfe\x00\x02" * 300_000 + jpeg[2:],
                 jpeg[:app0_end] + b"\0" * 1_000_000 + jpeg[app0_end:]):
        # Refused within its budget, at C speed or a few steps per block: walking the whole
        # flood (100 000 chunks, 300 000 markers) or its stray bytes one by one breaks the cap.
        with PythonSteps(cap=STEPS_PER_BLOCK * block_budget(data)) as steps:
            assert refused(data).code == "too_many_blocks"
        assert steps.count > 0


def tiff_entries(count: int) -> bytes:
    return b"II*\0" + struct.pack("<IH", 8, count) + b"\0" * 12 * count + struct.pack("<I", 0)


def test_a_tiff_directory_with_too_many_tags_is_413():
    check_container(tiff_entries(MAX_TIFF_TAGS))
    assert refused(tiff_entries(MAX_TIFF_TAGS + 1)).code == "too_many_blocks"


def test_big_real_images_fit_the_block_budget():
    rng = np.random.default_rng(0)
    noise = Image.fromarray(rng.integers(0, 255, (1200, 1200), dtype=np.uint8))
    for fmt in ("GIF", "PNG", "JPEG", "TIFF", "WEBP"):
        data = encode(noise, fmt)
        assert len(data) > 500_000 or fmt in ("JPEG", "WEBP"), fmt
        check_container(data)


@pytest.mark.parametrize("name, data", [
    ("tiff ifd loop A->B->A", b"II*\0" + struct.pack("<IH", 8, 0) + struct.pack("<I", 14)
     + struct.pack("<H", 0) + struct.pack("<I", 8)),
    ("tiff ifd past the end", b"II*\0" + struct.pack("<I", 1 << 31)),
    ("bigtiff ifd loop", b"II+\0" + struct.pack("<HHQ", 8, 0, 16) + struct.pack("<QQ", 0, 16)),
    ("png chunk length 2**32-1", b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 2**32 - 1) + b"IHDR" * 4),
    ("webp chunk size 2**32-1", b"RIFF\0\0\0\0WEBP" + b"VP8 " + struct.pack("<I", 2**32 - 1)),
    ("jpeg zero-length markers", b"\xff\xd8\xff" + b"\xe1\x00\x00\xff" * 1000),
    ("gif with only a header", b"GIF89a"),
    ("gif descriptor cut short", b"GIF89a" + b"\0" * 7 + b"\x2c\x00"),
])
def test_walkers_end_on_hostile_structures(name, data):
    started = time.monotonic()
    try:
        with PythonSteps(cap=STEPS_PER_BLOCK * block_budget(data)):  # a loop in ours is stopped
            check_container(data)
            decode(data)
    except ServiceError as exc:
        assert 400 <= exc.status < 500, name
    # Pillow's own parsing of these few bytes is not counted: a ceiling against a runaway loop.
    assert time.monotonic() - started < 10, name


def test_a_huge_webp_canvas_is_refused_before_libwebp_allocates_it(monkeypatch):
    still = encode(Image.new("L", (28, 28)), "WEBP", lossless=True)
    vp8x = b"VP8X" + struct.pack("<I", 10) + b"\0" * 4 + (9999).to_bytes(3, "little") * 2
    body = b"WEBP" + vp8x + still[12:]
    monkeypatch.setattr(Image, "open", lambda *a, **k: pytest.fail("Pillow was asked"))
    with pytest.raises(PayloadTooLarge) as info:
        decode(b"RIFF" + struct.pack("<I", len(body)) + body)
    assert info.value.code == "image_too_large" and "10000x10000" in info.value.message


SVG = b'<svg xmlns="http://www.w3.org/2000/svg" width="8" height="8"/>'


@pytest.mark.parametrize("data, fmt", [
    (SVG, "SVG"),
    (b"\xef\xbb\xbf\r\n  <?xml version='1.0'?>\n<!-- drawn -->\n" + SVG, "SVG"),
    (b"\xff\xfe" + SVG.decode().encode("utf-16-le"), "SVG"),
    (b"\xfe\xff" + b"<!DOCTYPE svg>".decode().encode("utf-16-be"), "SVG"),
    (b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n", "PDF"),
    (b"\n<!doctype HTML><title>x</title>", "HTML"),
    (b"<html><body>7</body></html>", "HTML"),
    (b"<?xml version='1.0'?><digit/>", "XML"),
])
def test_documents_are_415_by_their_leading_bytes(data, fmt):
    assert document_format(data) == fmt
    with pytest.raises(UnsupportedMediaType) as info:
        decode(data)
    assert info.value.code == "unsupported_image_format" and fmt in info.value.message


@pytest.mark.parametrize("data", [b"<3 digits", b"hello <svg>", b"\0\0\0\0<svg", b"%PD", b""])
def test_other_bytes_are_not_documents(data):
    assert document_format(data) is None
