"""Property: any bytes through decode/preprocess give a model input or one of our 4xx errors."""
from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from service.errors import ServiceError
from service.models.preprocess import PreprocessSpec, preprocess
from fuzzing import fuzz_settings, mutated_image, seeded
from support import FIXTURES

SEEDS = [(FIXTURES / name).read_bytes() for name in
         ("digit7_28.png", "digit7_112.jpg", "digit2_112.gif", "digit7_112.bmp", "digit2_112.tiff",
          "digit2_112.webp", "rgba_digit.png", "exif_rotated.jpg")]
SPECS = [PreprocessSpec(), PreprocessSpec(kind="resize", width=9, height=9, color="rgb",
                                          crop_fraction=0.8)]


def check(data: bytes, spec: PreprocessSpec) -> None:
    try:
        out = preprocess(data, spec, max_pixels=4_000_000)
    except ServiceError as exc:
        assert 400 <= exc.status < 500, (exc.status, exc.code, exc.message)
        assert exc.code and exc.message
        return
    assert out.dtype == np.float32 and out.shape[:2] == (spec.height, spec.width)
    assert np.isfinite(out).all() and out.min() >= 0 and out.max() <= 1


@fuzz_settings(300)
@seeded
@given(mutated_image(SEEDS, max_cut=64, max_junk=0), st.sampled_from(SPECS))
def test_mutated_images_never_crash(data, spec):
    check(data, spec)


@fuzz_settings(200)
@seeded
@given(st.binary(max_size=2048), st.sampled_from(SPECS))
def test_random_bytes_never_crash(data, spec):
    check(data, spec)
