"""Photos and pages as people send them: the page flattened (background.py), the digit found
among the ink's components (components.py), read by the default model. Fixtures are real
files made by tests/fixtures/make_fixtures.py; ``expect`` in fixtures.json says what each
must give."""
from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from service.errors import BlankImage, SeveralDigits
from service.models import graph, store, wild
from service.models.preprocess import PreprocessSpec, preprocess
from service.models.preprocess.background import ink_map
from support import FIXTURES, REPO

META = json.loads((FIXTURES / "fixtures.json").read_text())
EXPECTED = {name: m for name, m in META.items() if "expect" in m}


@pytest.fixture(scope="module")
def read():
    """The default (newest) digits-cnn version: upload bytes -> the class it reads."""
    graphs = REPO / "graphs"
    version = store.list_versions(graphs, "digits-cnn")[-1]
    pb = (store.version_dir(graphs, "digits-cnn", version) / "model.pb").read_bytes()
    frozen = graph.FrozenGraph(pb, "image:0", "probabilities:0")

    def classify(data: bytes, **crop) -> int:
        return int(graph.run_frozen(frozen, preprocess(data, **crop)[None, ..., None]).argmax())
    return classify


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def test_every_kind_of_page_is_covered():
    assert set(EXPECTED) >= {"photo_vignette.jpg", "photo_shadow.jpg", "ruled_paper.jpg",
                             "page_edge.jpg", "two_digits.png", "specks.png"}


@pytest.mark.parametrize("name", sorted(n for n, m in EXPECTED.items() if m["expect"] == "class"))
def test_photos_and_pages_are_read_as_their_digit(read, name):
    assert read(fixture(name)) == EXPECTED[name]["label"]


def test_two_digits_are_said_with_their_boxes_not_guessed_between():
    data = fixture("two_digits.png")
    with pytest.raises(SeveralDigits) as info:
        preprocess(data)
    error = info.value
    assert error.status == 422 and error.code == "several_digits"
    width, height = Image.open(io.BytesIO(data)).size
    (left, right) = error.boxes
    assert left[0] + left[2] < right[0]  # left to right, apart
    for x, y, w, h in error.boxes:  # in the image's pixels, around each digit
        assert 0 <= x < x + w <= width and 0 <= y < y + h <= height and 50 < h < 120
    assert error.to_dict()["error"]["boxes"] == error.boxes


def test_a_crop_point_picks_one_of_two_digits(read):
    data = fixture("two_digits.png")
    (seven, two) = (b for b in _boxes(data))
    assert read(data, x=seven[0] + seven[2] / 2, y=seven[1] + seven[3] / 2, crop=0.9) == 7
    assert read(data, x=two[0] + two[2] / 2, y=two[1] + two[3] / 2, crop=0.9) == 2


def _boxes(data: bytes) -> list[list[float]]:
    with pytest.raises(SeveralDigits) as info:
        preprocess(data)
    return info.value.boxes


def test_specks_alone_are_blank():
    with pytest.raises(BlankImage):
        preprocess(fixture("specks.png"))


def test_the_vignette_is_not_ink():
    """The dark corners of a photo flatten to paper: what is left in the outer ring is far
    below the digit's ink (and the threshold, half of it)."""
    with Image.open(io.BytesIO(fixture("photo_vignette.jpg"))) as img:
        gray = np.asarray(img.convert("L").reduce(2))
    ink, _ = ink_map(gray, "auto")
    ring = np.concatenate([ink[:8].ravel(), ink[-8:].ravel(), ink[:, :8].ravel(),
                           ink[:, -8:].ravel()])
    assert float(np.percentile(ring, 99)) < 0.3 * float(ink.max())


def test_a_shadow_edge_leaves_no_ink_behind():
    """Across photo_shadow.jpg, what reaches the threshold (half the peak) is the digit: its
    box is a digit's size, not a band along the shadow's edge."""
    with Image.open(io.BytesIO(fixture("photo_shadow.jpg"))) as img:
        gray = np.asarray(img.convert("L").reduce(2))
    ink, _ = ink_map(gray, "auto")
    rows, cols = np.nonzero(ink >= 0.5 * ink.max())
    height, width = np.ptp(rows) / gray.shape[0], np.ptp(cols) / gray.shape[1]
    assert 0.1 < height < 0.45 and width < 0.45


def test_ink_keeps_its_gray_levels():
    """Thresholds only find the digit: the model input is not binarised."""
    out = preprocess(fixture("photo_vignette.jpg"))
    levels = out[(out > 0) & (out < 1)]
    assert levels.size > 50 and np.unique(np.round(levels, 2)).size > 20


def test_light_ink_on_a_dark_board_and_never_invert():
    board = np.full((200, 200), 40.0)
    board[50:150, 95:110] = 230.0  # a chalk "1"
    data = wild.encode(board, "PNG")
    out = preprocess(data)
    assert out[:, 12:16].sum() > out[:, :6].sum() + 5
    assert preprocess(data, PreprocessSpec(invert="never")).max() == 1.0
    with pytest.raises(BlankImage):  # dark ink on light paper, and the model never inverts
        preprocess(wild.encode(255 - board, "PNG"), PreprocessSpec(invert="never"))
