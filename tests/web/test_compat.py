"""Seed-compatible routes keep their old shapes."""
from __future__ import annotations

import base64
import io

import pytest
import requests
from PIL import Image

from support import FIXTURES

PNG7 = (FIXTURES / "digit7_28.png").read_bytes()


def test_recognize(server):
    r = requests.post(server + "/recognize", json={"image": base64.b64encode(PNG7).decode()})
    body = r.json()
    assert set(body) == {"digit", "probability"}
    assert body["digit"] == 7 and 0.5 < body["probability"] <= 1


def test_recognize_errors_are_json(server):
    r = requests.post(server + "/recognize", json={"image": "***"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "bad_base64"
    r = requests.get(server + "/recognize")
    assert r.status_code == 405 and r.headers["Allow"] == "POST"


def test_mnist_classify_raw(server):
    r = requests.post(server + "/mnist/classify", data=PNG7, headers={"Content-Type": "image/png"})
    body = r.json()
    assert set(body) == {"prediction", "elapsed_time_ms", "debug"}
    assert body["prediction"] == 7 and body["elapsed_time_ms"] > 0
    probabilities = body["debug"]["probabilities"]
    assert len(probabilities) == 10 and abs(sum(probabilities) - 1) < 1e-4
    assert max(range(10), key=probabilities.__getitem__) == 7


def test_mnist_classify_json_batch(server):
    gif = (FIXTURES / "digit2_112.gif").read_bytes()
    requests_ = [{"image": base64.b64encode(d).decode()} for d in (PNG7, gif, PNG7)]
    r = requests.post(server + "/mnist/classify", json={"requests": requests_})
    responses = r.json()["responses"]
    assert [x["class"] for x in responses] == [7, 2, 7]
    assert all(set(x) == {"class", "probability"} for x in responses)
    bad = requests.post(server + "/mnist/classify", json={"images": []})
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "missing_image"


def test_mnist_image_and_label(server):
    r = requests.get(server + "/mnist/image/0")
    assert r.headers["Content-Type"] == "image/jpeg"
    assert Image.open(io.BytesIO(r.content)).size == (28, 28)
    r = requests.get(server + "/mnist/image/0?format=png")
    assert r.headers["Content-Type"] == "image/png" and r.content == PNG7
    assert requests.get(server + "/mnist/label/42").json() == {"label": 4}
    assert requests.get(server + "/mnist/image/0?format=svg").status_code == 400


@pytest.mark.parametrize("path", ["/mnist/label/10000", "/mnist/label/-1", "/mnist/label/abc",
                                  "/mnist/image/1e3", "/mnist/classify/99999", "/mnist/label",
                                  "/mnist/label/1/2", "/mnist/nothing/1"])
def test_bad_index_is_404(server, path):
    r = requests.get(server + path)
    assert r.status_code == 404 and r.headers["Content-Type"] == "application/json"
    assert r.json()["error"]["code"] in ("index_not_found", "not_found")


def test_mnist_classify_agrees_with_labels_on_500_test_images(server):
    """The first 500 test images; the model's full-set accuracy is in its manifest."""
    session = requests.Session()
    agree = 0
    for idx in range(500):
        label = session.get(f"{server}/mnist/label/{idx}").json()["label"]
        body = session.get(f"{server}/mnist/classify/{idx}").json()
        assert len(body["debug"]["probabilities"]) == 10
        agree += body["prediction"] == label
    assert agree / 500 >= 0.99, agree
