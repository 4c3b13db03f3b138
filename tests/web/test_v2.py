"""The Open Inference Protocol (KServe V2) routes against the real server, spoken by the
official ``tritonclient[http]``, and by plain ``requests`` where the wire itself is the point
(error shapes, MLServer-style JSON, the binary extension's header)."""
from __future__ import annotations

import base64
import io

import numpy as np
import pytest
import requests
import tritonclient.http as triton
from PIL import Image
from tritonclient.utils import InferenceServerException

from service.models import datasets

CNN = "digits-cnn"
COUNT = 16  # MNIST test images 0..15, PNG-encoded


@pytest.fixture(scope="module")
def mnist() -> tuple[list[bytes], np.ndarray, list[int]]:
    """The first test images as PNG bytes, as the model's input, and their labels."""
    images, labels = datasets.load_mnist("test")
    pngs = []
    for image in images[:COUNT]:
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="PNG")
        pngs.append(buffer.getvalue())
    tensor = (images[:COUNT].astype(np.float32) / 255.0)[..., None]
    return pngs, tensor, labels[:COUNT].tolist()


@pytest.fixture(scope="module")
def client(server):
    client = triton.InferenceServerClient(server.removeprefix("http://"))
    yield client
    client.close()


@pytest.fixture(scope="module")
def serving(server) -> int:
    return requests.get(f"{server}/v1/models/{CNN}", timeout=10).json()["serving"]


def bytes_input(images: list[bytes], binary: bool) -> triton.InferInput:
    """BYTES as tritonclient sends them: raw with the binary extension, else base64 text
    (its JSON BYTES are UTF-8 strings, so encoded images must be base64)."""
    tensor = triton.InferInput("image_bytes", [len(images)], "BYTES")
    data = images if binary else [base64.b64encode(i).decode() for i in images]
    tensor.set_data_from_numpy(np.array(data, dtype=object), binary_data=binary)
    return tensor


def test_server_and_model_health(client):
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready(CNN)
    assert not client.is_model_ready("nope")
    meta = client.get_server_metadata()
    assert meta["name"] == "digits" and set(meta["extensions"]) == {
        "binary_tensor_data", "classification"}


def test_model_metadata_names_inputs_and_outputs(client, serving):
    meta = client.get_model_metadata(CNN)
    assert meta["name"] == CNN and meta["platform"] == "tensorflow_graphdef"
    assert str(serving) in meta["versions"]
    inputs = {t["name"]: t for t in meta["inputs"]}
    assert inputs["image_bytes"] == {"name": "image_bytes", "datatype": "BYTES", "shape": [-1]}
    assert inputs["image"] == {"name": "image", "datatype": "FP32", "shape": [-1, 28, 28, 1]}
    assert meta["outputs"] == [
        {"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]},
        {"name": "class", "datatype": "INT64", "shape": [-1]}]
    assert client.get_model_metadata(CNN, str(serving))["name"] == CNN


@pytest.mark.parametrize("binary", [False, True], ids=["json-base64", "binary-extension"])
def test_infer_encoded_images_gives_the_known_digits(client, mnist, serving, binary):
    pngs, _, labels = mnist
    outputs = [triton.InferRequestedOutput("class", binary_data=binary),
               triton.InferRequestedOutput("probabilities", binary_data=binary)]
    result = client.infer(CNN, [bytes_input(pngs, binary)], outputs=outputs,
                          request_id=f"triton-{binary}")
    response = result.get_response()
    assert response["id"] == f"triton-{binary}" and response["model_name"] == CNN
    assert response["model_version"] == str(serving)
    assert result.as_numpy("class").tolist() == labels
    probabilities = result.as_numpy("probabilities")
    assert probabilities.shape == (COUNT, 10) and probabilities.dtype == np.float32
    assert np.allclose(probabilities.sum(axis=1), 1, atol=1e-4)
    assert probabilities.argmax(axis=1).tolist() == labels


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary-extension"])
def test_infer_fp32_model_input_skips_preprocessing(client, mnist, binary):
    _, tensor, labels = mnist
    image = triton.InferInput("image", list(tensor.shape), "FP32")
    image.set_data_from_numpy(tensor, binary_data=binary)
    result = client.infer(CNN, [image])  # no outputs asked: both, as JSON
    assert result.as_numpy("class").tolist() == labels
    assert result.as_numpy("probabilities").shape == (COUNT, 10)


def test_classification_extension_gives_score_index_label(client, mnist):
    pngs, _, labels = mnist
    outputs = [triton.InferRequestedOutput("probabilities", class_count=3)]
    result = client.infer(CNN, [bytes_input(pngs[:2], True)], outputs=outputs)
    top = result.as_numpy("probabilities")
    assert top.shape == (2, 3)
    for row, label in zip(top, labels):
        best = row[0].decode() if isinstance(row[0], bytes) else row[0]
        score, index, name = best.split(":")
        assert (int(index), name) == (label, str(label)) and float(score) > 0.5


def test_a_pinned_version_serves_only_while_it_is_loaded(client, mnist, serving):
    pngs, _, labels = mnist
    result = client.infer(CNN, [bytes_input(pngs[:1], True)], model_version=str(serving))
    assert result.as_numpy("class").tolist() == labels[:1]
    with pytest.raises(InferenceServerException) as info:
        client.infer(CNN, [bytes_input(pngs[:1], True)], model_version=str(serving + 1))
    assert info.value.status() == "404" and "not loaded" in info.value.message()
    assert not client.is_model_ready(CNN, str(serving + 1))


def test_mlserver_style_json_bytes_by_plain_http(server, mnist):
    """What MLServer's and KServe's clients send: base64 strings in a JSON BYTES tensor."""
    pngs, _, labels = mnist
    body = {"id": "plain-1", "inputs": [{
        "name": "image_bytes", "datatype": "BYTES", "shape": [2],
        "data": [base64.b64encode(p).decode() for p in pngs[:2]]}],
        "outputs": [{"name": "class"}]}
    answer = requests.post(f"{server}/v2/models/{CNN}/infer", json=body, timeout=30)
    assert answer.status_code == 200 and answer.headers["Content-Type"] == "application/json"
    assert answer.headers["X-Request-ID"]
    data = answer.json()
    assert data["id"] == "plain-1" and [o["name"] for o in data["outputs"]] == ["class"]
    assert data["outputs"][0] == {"name": "class", "datatype": "INT64", "shape": [2],
                                  "data": labels[:2]}


@pytest.mark.parametrize("path, body, status, words", [
    (f"/v2/models/{CNN}/infer", b"{", 400, "not valid JSON"),
    (f"/v2/models/{CNN}/infer", b'{"inputs": [{"name": "x", "datatype": "BYTES", '
                                b'"shape": [1], "data": ["bm90IGFuIGltYWdl"]}]}', 400, "image"),
    (f"/v2/models/{CNN}/infer", b'{"inputs": [{"name": "x", "datatype": "INT64", '
                                b'"shape": [1], "data": [1]}]}', 400, "FP32"),
    (f"/v2/models/{CNN}/infer", b'{"inputs": [{"name": "image", "datatype": "FP32", '
                                b'"shape": [1, 28, 28], "data": ' +
     str([0.0] * 784).encode() + b'}]}', 400, "shape"),
    ("/v2/models/nope/infer", b'{"inputs": []}', 404, "no model named"),
    (f"/v2/models/{CNN}/versions/x/infer", b'{"inputs": []}', 400, "positive integer"),
])
def test_errors_are_v2_shaped_with_the_right_status(server, path, body, status, words):
    answer = requests.post(server + path, data=body, timeout=30,
                           headers={"Content-Type": "application/json"})
    assert answer.status_code == status
    error = answer.json()
    assert list(error) == ["error"] and isinstance(error["error"], str)
    assert words in error["error"]


def test_cherrypys_own_errors_are_v2_shaped_too(server):
    answer = requests.get(f"{server}/v2/models/{CNN}/infer", timeout=10)
    assert answer.status_code == 405 and answer.headers["Allow"] == "POST"
    assert list(answer.json()) == ["error"]


def test_metrics_count_v2_requests_under_their_protocol(server, client, mnist):
    client.infer(CNN, [bytes_input(mnist[0][:1], True)])
    text = requests.get(f"{server}/metrics", timeout=10).text
    line = next(line for line in text.splitlines()
                if line.startswith("digits_http_requests_total{")
                and 'route="/v2/models/{name}/infer"' in line and 'status="200"' in line)
    assert 'protocol="v2"' in line and float(line.rsplit(" ", 1)[1]) >= 1
