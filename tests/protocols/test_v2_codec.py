"""The V2 codec against tritonclient's own request builder and response parser."""
from __future__ import annotations

import base64

import numpy as np
import pytest
import tritonclient.http as triton

from service.errors import InvalidInput
from service.protocols import v2
from service.protocols.values import BodyLimits
from support import FIXTURES

LABELS = [str(i) for i in range(10)]
LIMITS = BodyLimits(None, 1 << 24)


def png() -> bytes:
    return (FIXTURES / "digit7_28.png").read_bytes()


def request(binary: bool, outputs=None) -> v2.Request:
    """Two PNGs: raw bytes with the binary extension; base64 strings in JSON (as MLServer's
    and KServe's clients send images, and tritonclient must: its JSON BYTES are UTF-8)."""
    image = triton.InferInput("image", [2], "BYTES")
    data = [png(), png()] if binary else [base64.b64encode(png()).decode()] * 2
    image.set_data_from_numpy(np.array(data, dtype=object), binary_data=binary)
    body, json_size = triton.InferenceServerClient.generate_request_body(
        [image], outputs=outputs, request_id="req-1")
    return v2.decode(body, None if json_size is None else str(json_size), LIMITS)


@pytest.mark.parametrize("binary", [False, True])
def test_bytes_images_as_json_or_binary(binary):
    req = request(binary)
    assert req.id == "req-1" and len(req.inputs) == 1
    tensor = req.inputs[0]
    assert tensor.datatype == "BYTES" and tensor.shape == [2] and tensor.value == [png(), png()]


def test_fp32_input_keeps_its_shape():
    data = np.random.default_rng(0).random((3, 28, 28, 1), dtype=np.float32)
    for binary in (False, True):
        tensor = triton.InferInput("image", list(data.shape), "FP32")
        tensor.set_data_from_numpy(data, binary_data=binary)
        body, size = triton.InferenceServerClient.generate_request_body([tensor])
        got = v2.decode(body, None if size is None else str(size), LIMITS).inputs[0].value
        assert got.shape == data.shape and np.allclose(got, data)


@pytest.mark.parametrize("binary", [False, True])
def test_responses_parse_in_tritonclient(binary):
    outputs = [triton.InferRequestedOutput("probabilities", binary_data=binary),
               triton.InferRequestedOutput("class", binary_data=binary)]
    req = request(False, outputs)
    probabilities = np.eye(10, dtype=np.float32)[[7, 2]]
    body, headers = v2.encode("digits-cnn", 2, req, probabilities, LABELS)
    result = triton.InferenceServerClient.parse_response_body(
        body, header_length=int(headers[v2.HEADER_LENGTH]) if headers else None)
    assert result.get_response()["model_version"] == "2"
    assert result.get_response()["id"] == "req-1"
    assert np.array_equal(result.as_numpy("class"), [7, 2])
    assert np.array_equal(result.as_numpy("probabilities"), probabilities)


def test_classification_gives_score_index_label():
    outputs = [triton.InferRequestedOutput("probabilities", binary_data=False, class_count=2)]
    req = request(False, outputs)
    probabilities = np.array([[0.1, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.9, 0.0, 0.0]], np.float32)
    body, headers = v2.encode("digits-cnn", 2, req, probabilities, LABELS)
    result = triton.InferenceServerClient.parse_response_body(body)
    top = result.as_numpy("probabilities")
    best = top[0][0].decode() if isinstance(top[0][0], bytes) else top[0][0]
    assert top.shape == (1, 2) and best.split(":")[1:] == ["7", "7"]


@pytest.mark.parametrize("body, header, code", [
    (b"{", None, "invalid_json"),
    (b'{"inputs": []}', None, "missing_image"),
    (b'{"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": ["@@"]}]}',
     None, "bad_base64"),
    (b'{"inputs": [{"name": "image", "datatype": "FP32", "shape": [2], "data": [1]}]}',
     None, "bad_instance"),
    (b'{"inputs": [{"name": "image", "datatype": "FP16", "shape": [1], "data": [1]}]}',
     None, "bad_instance"),
    (b'{"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], '
     b'"parameters": {"binary_data_size": 99}}]}', "106", "bad_instance"),
    (b'{"inputs": []}', "500", "bad_parameter"),
    (b'{"inputs": [{"name": "i", "datatype": "FP32", "shape": [1], "data": [1]}], '
     b'"outputs": [{"name": "logits"}]}', None, "bad_parameter"),
])
def test_malformed_requests_are_400_with_a_reason(body, header, code):
    with pytest.raises(InvalidInput) as info:
        v2.decode(body, header, LIMITS)
    assert info.value.code == code and info.value.status == 400
