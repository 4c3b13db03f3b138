"""The data plane's pieces that need no model: a preprocessed row as the input log keeps it."""
from __future__ import annotations

import io

import numpy as np
from PIL import Image

from service.dataplane import TensorRow


def test_a_tensor_row_is_encoded_only_when_read_and_only_once():
    row = np.zeros((28, 28, 1), np.float32)
    row[5:20, 14] = 1.0
    instance = TensorRow(row)
    assert instance._png is None  # nothing encoded on the request's thread
    data = instance.data
    assert instance.data is data  # once
    pixels = np.asarray(Image.open(io.BytesIO(data)))
    assert pixels.shape == (28, 28) and pixels[5:20, 14].min() == 255 and pixels[0].max() == 0
    assert (instance.x, instance.y, instance.crop) == (None, None, None)
