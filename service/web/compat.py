"""Routes of the earlier digit services, as thin adapters over the canonical predict path."""
from __future__ import annotations

import io
from typing import Any

import cherrypy
import numpy as np

from ..dataplane import Instance
from ..errors import InvalidInput, NotFound
from ..models import datasets
from .bodies import PredictBody, body_from_json, media_type, read_json_body


def _probabilities_by_class(prediction: dict[str, Any]) -> list[float]:
    """Canonical top_k holding every label -> probabilities indexed by class id."""
    ranked = prediction["top_k"]
    probabilities = [0.0] * len(ranked)
    for entry in ranked:
        probabilities[entry["class"]] = entry["probability"]
    return probabilities


def recognize(app: Any, /, **params: Any) -> dict[str, Any]:
    """POST /recognize: {"image": b64} -> {"digit", "probability"}."""
    canonical = app.predictor.one(app.default_model, app.predictor.parse(params))
    best = canonical["predictions"][0]
    return {"digit": best["class"], "probability": best["probability"]}


def mnist_classify(app: Any, /, **params: Any) -> dict[str, Any]:
    """POST /mnist/classify: a raw image or form, or JSON {"requests": [{"image": b64}]}."""
    if media_type() != "application/json":
        return _classify_one(app, app.predictor.parse(params))
    payload = read_json_body(app.predictor.limits)
    if not isinstance(payload, dict) or not isinstance(payload.get("requests"), list):
        raise InvalidInput("The JSON body needs 'requests': [{\"image\": base64}, ...].",
                           "missing_image")
    instances = [{"b64": r.get("image") if isinstance(r, dict) else None}
                 for r in payload["requests"]]
    body = body_from_json({"instances": instances}, params, app.predictor.limits)
    canonical = app.predictor.one(app.default_model, body)
    return {"responses": [{"class": p["class"], "probability": p["probability"]}
                          for p in canonical["predictions"]]}


def mnist_classify_index(app: Any, /, idx: str, **_: Any) -> dict[str, Any]:
    """GET /mnist/classify/<idx>."""
    image = _test_image(app, idx)
    return _classify_one(app, PredictBody([Instance(_png(image))]))


def _classify_one(app: Any, body: PredictBody) -> dict[str, Any]:
    labels = app.registry.get(app.default_model).labels
    body = PredictBody(body.instances, top_k=len(labels))
    canonical = app.predictor.one(app.default_model, body)
    best = canonical["predictions"][0]
    return {"prediction": best["class"], "elapsed_time_ms": canonical["timing_ms"]["total"],
            "debug": {"probabilities": _probabilities_by_class(best)}}


def mnist_image(app: Any, /, idx: str, format: Any = "jpeg", **_: Any) -> bytes:
    """GET /mnist/image/<idx>[?format=png]."""
    image = _test_image(app, idx)
    fmt = str(format).lower()
    if fmt not in ("jpeg", "jpg", "png"):
        raise InvalidInput(f"format must be jpeg or png, got {fmt!r}.", "bad_parameter")
    if fmt == "png":
        cherrypy.response.headers["Content-Type"] = "image/png"
        return _png(image)
    cherrypy.response.headers["Content-Type"] = "image/jpeg"
    return _encode(image, "JPEG", quality=95)


def mnist_label(app: Any, /, idx: str, **_: Any) -> dict[str, Any]:
    """GET /mnist/label/<idx>."""
    images, labels = datasets.load_mnist("test", app.mnist_dir)
    return {"label": int(labels[_index(idx, len(labels))])}


def _test_image(app: Any, idx: str) -> np.ndarray:
    images, _ = datasets.load_mnist("test", app.mnist_dir)
    return images[_index(idx, len(images))]


def _index(text: str, count: int) -> int:
    # at most 9 digits: int() of thousands of them would raise, not say "not found"
    if not (text.isascii() and text.isdigit() and len(text) <= 9) or int(text) >= count:
        raise NotFound(f"MNIST test image index must be an integer from 0 to {count - 1}.",
                       "index_not_found")
    return int(text)


def _png(image: np.ndarray) -> bytes:
    return _encode(image, "PNG")


def _encode(image: np.ndarray, fmt: str, **options) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format=fmt, **options)
    return buffer.getvalue()
