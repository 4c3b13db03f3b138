"""The canonical API over real HTTP against a real server (shipped graphs, real TensorFlow)."""
from __future__ import annotations

import base64
import io
import json
import os

import numpy as np
import pytest
import requests
from PIL import Image

from support import FIXTURES

FIXTURE_LABELS = {name: info["label"] for name, info in
                  json.loads((FIXTURES / "fixtures.json").read_text()).items()}
CNN = "/v1/models/digits-cnn/predict"
PNG7 = (FIXTURES / "digit7_28.png").read_bytes()
RAW_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".gif": "image/gif", ".bmp": "image/bmp",
             ".tiff": "image/tiff", ".webp": "image/webp"}


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def b64(name: str) -> str:
    return base64.b64encode(fixture(name)).decode()


def assert_error(response: requests.Response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"] == "application/json"
    body = response.json()
    assert set(body) == {"error"} and body["error"]["code"] == code, body
    assert body["error"]["message"] and "Traceback" not in response.text
    return body


def assert_prediction(body: dict, label: int, model: str = "digits-cnn") -> None:
    assert body["model"] == model and isinstance(body["version"], int)
    assert len(body["request_id"]) >= 16
    prediction = body["predictions"][0]
    assert prediction["class"] == label and prediction["label"] == str(label)
    ranked = prediction["top_k"]
    assert ranked[0]["class"] == label and ranked[0]["probability"] == prediction["probability"]
    assert all(a["probability"] >= b["probability"] for a, b in zip(ranked, ranked[1:]))
    assert set(body["timing_ms"]) == {"decode", "preprocess", "queue", "inference", "total"}


# -- metadata and health -------------------------------------------------------------------------
def test_models_list(server):
    body = requests.get(server + "/v1/models").json()
    models = {m["name"]: m for m in body["models"]}
    assert set(models) == {"digits-cnn", "digits-rnn"}
    for model in models.values():
        assert model["state"] == "AVAILABLE" and model["labels"] == [str(i) for i in range(10)]
        assert model["input"]["name"] == "image:0" and model["accuracy"] > 0.98
    assert models["digits-cnn"]["input"]["shape"] == [None, 28, 28, 1]
    assert models["digits-rnn"]["input"]["shape"] == [None, 28, 28]


def test_model_details_include_layers_read_from_the_graph(server):
    body = requests.get(server + "/v1/models/digits-cnn").json()
    ops = {layer["op"] for layer in body["layers"]}
    assert {"Conv2D", "MaxPool", "MatMul", "Softmax"} <= ops
    assert body["preprocess"]["kind"] == "mnist" and len(body["sha256"]) == 64
    assert len(body["per_class_accuracy"]) == 10
    rnn = requests.get(server + "/v1/models/digits-rnn").json()
    assert any(layer["op"] == "Tanh" for layer in rnn["layers"])


def test_health_routes(server):
    assert requests.get(server + "/healthz").status_code == 200
    assert requests.get(server + "/readyz").json() == {"status": "ready"}
    status = requests.get(server + "/status").json()
    assert status["status"] == "ok" and status["models"]["digits-cnn"]["state"] == "AVAILABLE"


# -- predict: body kinds -----------------------------------------------------------------------
@pytest.mark.parametrize("name", [n for n in FIXTURE_LABELS if FIXTURE_LABELS[n] is not None
                                  and n != "animated.gif"])
def test_raw_body_in_every_format(server, name):
    content_type = RAW_TYPES[os.path.splitext(name)[1]]
    r = requests.post(server + CNN, data=fixture(name), headers={"Content-Type": content_type})
    assert r.status_code == 200, r.text
    assert_prediction(r.json(), FIXTURE_LABELS[name])


def test_octet_stream_is_sniffed_and_options_apply(server):
    r = requests.post(server + CNN + "?top_k=3", data=fixture("digit2_112.webp"),
                      headers={"Content-Type": "application/octet-stream"})
    body = r.json()
    assert_prediction(body, 2)
    assert len(body["predictions"][0]["top_k"]) == 3


def test_multipart_form(server):
    r = requests.post(server + CNN, files={"image": ("d.png", fixture("digit7_28.png"))},
                      data={"top_k": "10"})
    body = r.json()
    assert_prediction(body, 7)
    probabilities = [p["probability"] for p in body["predictions"][0]["top_k"]]
    assert len(probabilities) == 10 and abs(sum(probabilities) - 1) < 1e-4


def test_several_digits_are_422_with_boxes_and_a_point_picks_one(server):
    body = assert_error(requests.post(server + CNN, json={"instances": [
        {"b64": b64("digit7_28.png")}, {"b64": b64("two_digits.png")}]}), 422, "several_digits")
    assert body["error"]["message"].startswith("Image 1: ")
    (seven, two) = body["error"]["boxes"]
    x, y = two[0] + two[2] / 2, two[1] + two[3] / 2
    r = requests.post(server + CNN, json={"image": b64("two_digits.png"), "x": x, "y": y,
                                          "crop": 0.9})
    assert r.status_code == 200, r.text
    assert_prediction(r.json(), 2)


def test_json_instances_in_order_with_every_base64_flavour(server):
    png = fixture("digit7_28.png")
    gif = fixture("digit2_112.gif")
    instances = [
        {"b64": base64.b64encode(png).decode()},
        {"b64": base64.urlsafe_b64encode(gif).decode().rstrip("=")},
        {"b64": "data:image/png;base64," + base64.b64encode(png).decode()},
        {"b64": base64.b64encode(gif).decode().rstrip("=")},
    ]
    r = requests.post(server + CNN, json={"instances": instances, "top_k": 1})
    assert r.status_code == 200, r.text
    predictions = r.json()["predictions"]
    assert [p["class"] for p in predictions] == [7, 2, 7, 2]
    assert all(len(p["top_k"]) == 1 for p in predictions)


def test_json_image_shorthand(server):
    r = requests.post(server + CNN, json={"image": b64("digit7_112.jpg")})
    assert_prediction(r.json(), 7)


def test_crop_around_a_point_picks_that_digit(server):
    seven = Image.open(io.BytesIO(fixture("digit7_112.jpg"))).convert("L")
    two = Image.open(io.BytesIO(fixture("digit2_112.tiff"))).convert("L")
    canvas = Image.new("L", (224, 112))
    canvas.paste(seven, (0, 0))
    canvas.paste(two, (112, 0))
    buffer = io.BytesIO()
    canvas.save(buffer, format="PNG")
    data = base64.b64encode(buffer.getvalue()).decode()
    r = requests.post(server + CNN, json={"instances": [
        {"b64": data, "x": 56, "y": 56, "crop": 0.9}, {"b64": data, "x": 168, "y": 56, "crop": 0.9}]})
    assert [p["class"] for p in r.json()["predictions"]] == [7, 2]


def test_all_models_at_once(server):
    r = requests.post(server + "/v1/predict", data=fixture("digit7_28.png"),
                      headers={"Content-Type": "image/png"})
    body = r.json()
    assert set(body["results"]) == {"digits-cnn", "digits-rnn"}
    for name, result in body["results"].items():
        assert_prediction(result, 7, name)
        assert result["request_id"] == body["request_id"]
    only = requests.post(server + "/v1/predict?models=digits-rnn", json={"image": b64("digit7_28.png")})
    assert set(only.json()["results"]) == {"digits-rnn"}


# -- remote paths --------------------------------------------------------------------------------
def test_remote_path_inside_the_root(server, images_root):
    r = requests.post(server + CNN, json={"instances": [
        {"path": "digit7_28.png"}, {"path": "sub/digit2.gif"}, {"path": str(images_root / "digit7_28.png")}]})
    assert [p["class"] for p in r.json()["predictions"]] == [7, 2, 7]


def test_remote_path_escapes_are_forbidden(server, images_root, tmp_path_factory):
    outside = tmp_path_factory.mktemp("outside")
    (outside / "secret.png").write_bytes(fixture("digit7_28.png"))
    link = images_root / "leak.png"
    if not link.exists():
        link.symlink_to(outside / "secret.png")
    for path in ("../outside/secret.png", "/etc/passwd", str(outside / "secret.png"), "leak.png",
                 "sub/../../x.png"):
        r = requests.post(server + CNN, json={"instances": [{"path": path}]})
        assert_error(r, 403, "path_forbidden")


def test_remote_path_missing_file(server):
    r = requests.post(server + CNN, json={"instances": [{"path": "nope.png"}]})
    assert_error(r, 404, "image_not_found")


# -- errors ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, status, code", [
    ({"data": b"{bad", "headers": {"Content-Type": "application/json"}}, 400, "invalid_json"),
    ({"json": [1, 2]}, 400, "invalid_json"),
    ({"json": {}}, 400, "missing_image"),
    ({"json": {"instances": []}}, 400, "missing_image"),
    ({"json": {"instances": [{"b64": ""}]}}, 400, "missing_image"),
    ({"json": {"instances": ["x"]}}, 400, "bad_instance"),
    ({"json": {"image": "@@not base64@@"}}, 400, "bad_base64"),
    ({"json": {"image": "aGVsbG8gd29ybGQ="}}, 400, "invalid_image"),
    ({"data": b"", "headers": {"Content-Type": "image/png"}}, 400, "missing_image"),
    ({"data": fixture("truncated.png"), "headers": {"Content-Type": "image/png"}}, 400, "invalid_image"),
    ({"data": fixture("not_an_image.txt"), "headers": {"Content-Type": "image/png"}}, 400, "invalid_image"),
    ({"data": fixture("blank.png"), "headers": {"Content-Type": "image/png"}}, 400, "blank_image"),
    ({"data": fixture("specks.png"), "headers": {"Content-Type": "image/png"}}, 400, "blank_image"),
    ({"data": fixture("two_digits.png"), "headers": {"Content-Type": "image/png"}}, 422,
     "several_digits"),
    ({"files": {"other": ("a.png", b"x")}}, 400, "missing_image"),
    ({"json": {"image": b64("digit7_28.png"), "top_k": 11}}, 400, "bad_parameter"),
    ({"json": {"image": b64("digit7_28.png"), "top_k": "many"}}, 400, "bad_parameter"),
    ({"json": {"image": b64("digit7_28.png"), "x": 3}}, 400, "bad_parameter"),
    ({"json": {"image": b64("digit7_28.png"), "crop": 1.5}}, 400, "bad_parameter"),
    ({"json": {"image": b64("digit7_28.png"), "x": 500, "y": 3}}, 400, "invalid_input"),
    ({"json": {"instances": [{"path": "digit7_28.png"}] * 257}}, 413, "batch_too_large"),
    ({"data": b"hello", "headers": {"Content-Type": "text/plain"}}, 415, "unsupported_media_type"),
    ({"data": b"x"}, 415, "unsupported_media_type"),
])
def test_client_errors(server, kwargs, status, code):
    assert_error(requests.post(server + CNN, **kwargs), status, code)


@pytest.mark.parametrize("route", [CNN, "/v1/predict", "/recognize", "/mnist/classify"])
def test_curl_s_default_form_type_gets_a_415_that_names_the_fix(server, route):
    """``curl --data-binary @7.png URL`` labels image bytes as a form; CherryPy's form parser
    would answer a charset error. The answer says what to add instead."""
    r = requests.post(server + route, data=fixture("digit7_28.png"),
                      headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert_error(r, 415, "unsupported_media_type")
    assert "-H 'Content-Type: image/png'" in r.json()["error"]["message"]


def test_unsupported_image_format_is_415(server):
    buffer = io.BytesIO()
    Image.open(FIXTURES / "digit7_28.png").save(buffer, format="PPM")
    r = requests.post(server + CNN, data=buffer.getvalue(), headers={"Content-Type": "image/png"})
    assert_error(r, 415, "unsupported_image_format")


def test_body_over_the_limit_is_413_without_reading_it_all(server):
    r = requests.post(server + CNN, data=b"\0" * (11 * 1024 * 1024),
                      headers={"Content-Type": "image/png"})
    assert_error(r, 413, "body_too_large")


def test_decompression_bomb_is_413(server):
    buffer = io.BytesIO()
    Image.new("1", (6000, 6000)).save(buffer, format="PNG")  # 36 MP in a few KB
    r = requests.post(server + CNN, data=buffer.getvalue(), headers={"Content-Type": "image/png"})
    assert_error(r, 413, "image_too_large")


def test_unknown_model_route_and_method(server):
    assert_error(requests.post(server + "/v1/models/nope/predict", json={}), 404, "model_not_found")
    assert_error(requests.get(server + "/v1/models/nope"), 404, "model_not_found")
    assert_error(requests.get(server + "/v1/nothing"), 404, "not_found")
    assert_error(requests.get(server + "/v1/models/digits-cnn/predict/x"), 404, "not_found")
    r = requests.get(server + CNN)
    assert_error(r, 405, "method_not_allowed")
    assert r.headers["Allow"] == "POST"
    r = requests.delete(server + "/v1/models")
    assert_error(r, 405, "method_not_allowed")
    assert "GET" in r.headers["Allow"]
    assert_error(requests.post(server + "/v1/predict?models=nope", json={"image": b64("digit7_28.png")}),
                 404, "model_not_found")


# -- explain=true: occlusion maps ---------------------------------------------------------------
def decoded_png(url: str) -> Image.Image:
    assert url.startswith("data:image/png;base64,")
    return Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))


@pytest.mark.parametrize("request_kwargs", [
    lambda: {"params": {"explain": "true"}, "data": PNG7,
             "headers": {"Content-Type": "image/png"}},
    lambda: {"json": {"instances": [{"b64": base64.b64encode(PNG7).decode()}],
                      "explain": True}},
], ids=["query", "json"])
def test_explain_adds_each_images_maps_and_their_cost(server, request_kwargs):
    answer = requests.post(server + CNN, timeout=60, **request_kwargs())
    assert answer.status_code == 200, answer.text
    data = answer.json()
    prediction = data["predictions"][0]
    explanation = prediction["explanation"]
    assert explanation["method"] == "occlusion" and explanation["class"] == prediction["class"]
    assert explanation["second"]["class"] == prediction["top_k"][1]["class"]
    for entry in (explanation, explanation["second"]):
        scores = entry["map"]
        assert len(scores) == 28 and all(len(row) == 28 for row in scores)
        assert decoded_png(entry["png"]).size == (224, 224)
    # the stroke of the 7 is what holds its class up: the map is positive only on ink
    ink = np.asarray(Image.open(io.BytesIO(PNG7)).convert("L")) > 0
    support = np.array(explanation["map"])
    assert support.max() > 0 and support[ink].mean() > support[~ink].mean()
    assert data["timing_ms"]["explain"] > 0


def test_without_explain_there_is_no_map_and_bad_values_are_400(server):
    plain = requests.post(server + CNN, data=PNG7, headers={"Content-Type": "image/png"},
                          timeout=30).json()
    assert "explanation" not in plain["predictions"][0] and "explain" not in plain["timing_ms"]
    bad = requests.post(server + CNN, params={"explain": "maybe"}, data=PNG7,
                        headers={"Content-Type": "image/png"}, timeout=30)
    assert bad.status_code == 400 and "explain" in bad.json()["error"]["message"]
    many = {"instances": [{"b64": base64.b64encode(PNG7).decode()}] * 17, "explain": True}
    too_many = requests.post(server + CNN, json=many, timeout=30)
    assert too_many.status_code == 400 and "at most 16" in too_many.json()["error"]["message"]
