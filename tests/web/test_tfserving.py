"""TensorFlow Serving's REST API against the real server, by plain ``requests``: every request
shape a TF Serving REST caller sends, and TF Serving's answers and error shape."""
from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
import requests
from PIL import Image

from service.models import datasets

CNN = "digits-cnn"
COUNT = 8


@pytest.fixture(scope="module")
def mnist() -> tuple[list[str], list, list[int]]:
    """The first test images as base64 PNGs, as nested lists of the model's input, labels."""
    images, labels = datasets.load_mnist("test")
    b64 = []
    for image in images[:COUNT]:
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="PNG")
        b64.append(base64.b64encode(buffer.getvalue()).decode())
    tensor = ((images[:COUNT].astype(np.float32) / 255.0)[..., None]).tolist()
    return b64, tensor, labels[:COUNT].tolist()


@pytest.fixture(scope="module")
def serving(server) -> int:
    return requests.get(f"{server}/v1/models/{CNN}", timeout=10).json()["serving"]


def post(server: str, path: str, body) -> requests.Response:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    # curl -d's Content-Type, as TF Serving's own examples send it
    return requests.post(server + path, data=data, timeout=30,
                         headers={"Content-Type": "application/x-www-form-urlencoded"})


def classes(rows: list[list[float]]) -> list[int]:
    return [int(np.argmax(row)) for row in rows]


@pytest.mark.parametrize("instances", [
    lambda b64, _: [{"b64": v} for v in b64],
    lambda b64, _: [{"image_bytes": {"b64": v}} for v in b64],
    lambda _, tensor: tensor,
    lambda _, tensor: [{"image": t} for t in tensor],
], ids=["b64", "named-b64", "numbers", "named-numbers"])
def test_predict_row_format(server, mnist, instances):
    b64, tensor, labels = mnist
    answer = post(server, f"/v1/models/{CNN}:predict", {"instances": instances(b64, tensor)})
    assert answer.status_code == 200, answer.text
    data = answer.json()
    assert list(data) == ["predictions"] and len(data["predictions"]) == COUNT
    assert all(len(row) == 10 for row in data["predictions"])
    assert classes(data["predictions"]) == labels


@pytest.mark.parametrize("inputs", [
    lambda b64, _: [{"b64": v} for v in b64],
    lambda b64, _: {"image_bytes": [{"b64": v} for v in b64]},
    lambda _, tensor: {"image": tensor},
], ids=["b64", "named-b64", "named-numbers"])
def test_predict_columnar_format(server, mnist, inputs):
    b64, tensor, labels = mnist
    answer = post(server, f"/v1/models/{CNN}:predict", {"inputs": inputs(b64, tensor)})
    assert answer.status_code == 200, answer.text
    assert list(answer.json()) == ["outputs"] and classes(answer.json()["outputs"]) == labels


def test_signature_names_and_pinned_versions(server, mnist, serving):
    b64, tensor, labels = mnist
    one = {"instances": [{"b64": b64[0]}]}
    for path in (f":predict", f"/versions/{serving}:predict", "/labels/stable:predict"):
        answer = post(server, f"/v1/models/{CNN}{path}", one)
        assert answer.status_code == 200 and classes(answer.json()["predictions"]) == labels[:1]
    named = post(server, f"/v1/models/{CNN}:predict",
                 {"signature_name": "tensor", "instances": tensor[:1]})
    assert named.status_code == 200 and classes(named.json()["predictions"]) == labels[:1]
    for path, status in ((f"/versions/{serving + 1}:predict", 404),
                         ("/labels/canary:predict", 404), ("/versions/two:predict", 400)):
        answer = post(server, f"/v1/models/{CNN}{path}", one)
        assert answer.status_code == status and list(answer.json()) == ["error"]


def test_classify_gives_label_score_pairs_best_first(server, mnist):
    b64, _, labels = mnist
    answer = post(server, f"/v1/models/{CNN}:classify",
                  {"examples": [{"image_bytes": {"b64": v}} for v in b64[:3]]})
    assert answer.status_code == 200, answer.text
    result = answer.json()["result"]
    assert len(result) == 3
    for pairs, label in zip(result, labels):
        assert len(pairs) == 10 and pairs[0][0] == str(label)
        scores = [score for _, score in pairs]
        assert scores == sorted(scores, reverse=True) and abs(sum(scores) - 1) < 1e-4


def test_model_status_and_metadata(server, serving):
    details = requests.get(f"{server}/v1/models/{CNN}", timeout=10).json()
    statuses = {s["version"]: s for s in details["model_version_status"]}
    assert statuses[str(serving)] == {"version": str(serving), "state": "AVAILABLE",
                                      "status": {"error_code": "OK", "error_message": ""}}
    assert details["name"] == CNN  # the native fields are still there
    one = requests.get(f"{server}/v1/models/{CNN}/versions/{serving}", timeout=10).json()
    assert one == {"model_version_status": [statuses[str(serving)]]}
    labelled = requests.get(f"{server}/v1/models/{CNN}/labels/stable", timeout=10).json()
    assert labelled == one
    meta = requests.get(f"{server}/v1/models/{CNN}/metadata", timeout=10).json()
    assert meta["model_spec"] == {"name": CNN, "signature_name": "", "version": str(serving)}
    signatures = meta["metadata"]["signature_def"]["signature_def"]
    assert set(signatures) == {"serving_default", "tensor"}
    image_bytes = signatures["serving_default"]["inputs"]["image_bytes"]
    assert image_bytes["dtype"] == "DT_STRING"
    dims = signatures["tensor"]["inputs"]["image"]["tensor_shape"]["dim"]
    assert [d["size"] for d in dims] == ["-1", "28", "28", "1"]
    assert signatures["tensor"]["outputs"]["probabilities"]["dtype"] == "DT_FLOAT"


@pytest.mark.parametrize("path, body, status, words", [
    (f"/v1/models/{CNN}:predict", b"{", 400, "not valid JSON"),
    (f"/v1/models/{CNN}:predict", {"instances": [1, 2], "inputs": [1]}, 400, "not both"),
    (f"/v1/models/{CNN}:predict", {"instances": []}, 400, "non-empty"),
    (f"/v1/models/{CNN}:predict", {"instances": [[0.5] * 10]}, 400, "784 numbers"),
    (f"/v1/models/{CNN}:predict", {"instances": ["abc"]}, 400, "b64"),
    (f"/v1/models/{CNN}:predict", {"instances": [{"b64": "bm90IGFuIGltYWdl"}]}, 400, "image"),
    (f"/v1/models/{CNN}:predict", {"signature_name": "x", "instances": [[0.0] * 784]}, 400,
     "Unknown signature_name"),
    (f"/v1/models/{CNN}:predict", {"instances": [{"b64": "AAAA"}] * 257}, 413, "at most 256"),
    ("/v1/models/nope:predict", {"instances": [[0.0] * 784]}, 404, "no model named"),
    (f"/v1/models/{CNN}:classify", {"examples": [{"a": 1, "b": 2}]}, 400, "one feature"),
])
def test_errors_are_tf_serving_shaped_with_the_right_status(server, path, body, status, words):
    answer = post(server, path, body)
    assert answer.status_code == status, answer.text
    error = answer.json()
    assert list(error) == ["error"] and words in error["error"]


def test_regress_is_not_there(server):
    assert post(server, f"/v1/models/{CNN}:regress", {"examples": [{"x": 1}]}).status_code == 404


def test_cherrypys_own_errors_are_tf_serving_shaped_too(server):
    answer = requests.get(f"{server}/v1/models/{CNN}:predict", timeout=10)
    assert answer.status_code == 405 and list(answer.json()) == ["error"]
