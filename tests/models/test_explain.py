"""Occlusion maps: the patches cover the input, and a class that depends on one region of
the image gets its support exactly there (a model made of numpy, so the expected map is
known; the served CNN's maps are checked through the API in tests/web/test_api.py)."""
from __future__ import annotations

import base64
import io

import numpy as np
from PIL import Image

from service.models import explain


def toy_probabilities(batch: np.ndarray) -> np.ndarray:
    """Class 1's evidence is the ink in the top-left 8x8 corner, class 0's the rest."""
    corner = batch[:, :8, :8].reshape(len(batch), -1).mean(axis=1)
    rest = batch.reshape(len(batch), -1).mean(axis=1)
    logits = np.stack([rest, 4 * corner], axis=1) * 5
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    return exp / exp.sum(axis=1, keepdims=True)


def test_the_patches_cover_every_pixel_and_reach_the_edges():
    spots = explain.positions(28, 28)
    assert len(spots) == explain.COPIES == 144
    covered = np.zeros((28, 28), int)
    for r, c in spots:
        covered[r:r + explain.PATCH, c:c + explain.PATCH] += 1
    assert covered.min() >= 1 and (27 - explain.PATCH + 1, 27 - explain.PATCH + 1) in spots


def test_each_copy_blanks_one_patch_and_keeps_the_shape():
    image = np.ones((28, 28, 1), np.float32)
    copies = explain.occluded(image)
    assert copies.shape == (144, 28, 28, 1)
    assert all((copy == 0).sum() == explain.PATCH ** 2 for copy in copies)
    assert (image == 1).all()  # the input itself is untouched


def test_support_sits_where_the_class_looks():
    image = np.zeros((28, 28), np.float32)
    image[2:7, 2:7] = 1.0     # ink in the corner: class 1
    image[15:25, 15:25] = 1.0  # and elsewhere
    probabilities = toy_probabilities(image[None])[0]
    occluded = toy_probabilities(explain.occluded(image))
    corner, = explain.class_maps(image, probabilities, occluded, [1])
    assert corner.class_id == 1 and corner.scores.shape == (28, 28)
    inside, outside = corner.scores[2:7, 2:7].mean(), corner.scores[15:25, 15:25].mean()
    assert inside > 0 and inside > 10 * abs(outside)


def test_the_picture_is_the_input_scaled_with_the_map_in_colour():
    image = np.zeros((28, 28), np.float32)
    scores = np.zeros((28, 28), np.float32)
    scores[0, 0], scores[27, 27] = 1.0, -1.0
    entry = explain.ClassMap(3, scores).to_dict(image)
    assert entry["class"] == 3 and np.array(entry["map"]).shape == (28, 28)
    png = base64.b64decode(entry["png"].removeprefix("data:image/png;base64,"))
    picture = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
    assert picture.shape == (28 * explain.SCALE, 28 * explain.SCALE, 3)
    red, blue = picture[0, 0], picture[-1, -1]
    assert red[0] > 200 and red[2] == 0 and blue[2] > 200 and blue[0] == 0
