"""Turn uploaded image bytes into the array a model expects.

Shared by the training tools and the server, so it must not import TensorFlow or CherryPy.
Every failure is reported as a :mod:`service.errors` exception; Pillow and numpy errors
never escape. ``containers`` checks a file's structure before decoding, ``decode`` decodes,
orients and crops, ``normalise`` makes the model input, ``pipeline`` chains them.
"""
from .containers import DEFAULT_MAX_FRAMES, DEFAULT_MAX_PIXELS, check_container, document_format
from .decode import ORIGINAL_SIZE_KEY, SUPPORTED_FORMATS, decode, decode_for
from .pipeline import preprocess, to_model_input, warm_up
from .preview import to_png
from .spec import DEFAULT_SPEC, PreprocessSpec

__all__ = [
    "DEFAULT_MAX_FRAMES", "DEFAULT_MAX_PIXELS", "DEFAULT_SPEC", "ORIGINAL_SIZE_KEY",
    "SUPPORTED_FORMATS", "PreprocessSpec", "check_container", "decode", "decode_for",
    "document_format", "preprocess", "to_model_input", "to_png", "warm_up",
]
