"""POST /v1/feedback and the no-JavaScript /feedback_form, against a real server."""
from __future__ import annotations

import base64
import re

import pytest
import requests

from inputlog_support import query
from support import FIXTURES, ServerProcess

DIGIT7 = (FIXTURES / "digit7_28.png").read_bytes()


@pytest.fixture(scope="module")
def fb_server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("feedback-server")
    proc = ServerProcess(tmp, f'[inputlog]\ndir = "{tmp / "log"}"\n').start()
    yield proc.url, tmp / "log"
    proc.stop()


def predict(url: str) -> str:
    response = requests.post(url + "/v1/predict", data=DIGIT7,
                             headers={"Content-Type": "image/png"}, timeout=30)
    assert response.status_code == 200
    return response.json()["request_id"]


def feedback(url: str, **body) -> requests.Response:
    return requests.post(url + "/v1/feedback", json=body, timeout=30)


def test_feedback_by_label_or_class_is_stored_on_every_record(fb_server):
    url, logdir = fb_server
    request_id = predict(url)
    response = feedback(url, request_id=request_id, label="1")
    assert response.status_code == 200
    assert response.json() == {"request_id": request_id, "label": "1", "class": 1, "updated": 2}
    assert feedback(url, request_id=request_id, **{"class": 7}).json()["label"] == "7"
    rows = query(logdir, "SELECT model, feedback_label, feedback_class FROM predictions "
                         "WHERE request_id = ?", (request_id,))
    assert sorted(tuple(r) for r in rows) == [("digits-cnn", "7", 7), ("digits-rnn", "7", 7)]


@pytest.mark.parametrize("body, status, code", [
    ({"request_id": "0" * 32, "label": "7"}, 404, "request_not_found"),
    ({"label": "7"}, 400, "bad_parameter"),
    ({"request_id": "ID", "label": "7", "class": 7}, 400, "bad_parameter"),
    ({"request_id": "ID", "label": "seven"}, 400, "bad_label"),
    ({"request_id": "ID", "class": 10}, 400, "bad_label"),
    ({"request_id": "ID", "class": "7"}, 400, "bad_parameter"),
    (["not", "an", "object"], 400, "invalid_json"),
    # found by the fuzz run: an index past SQLite's INTEGER was an OverflowError, a 500
    ({"label": "3", "request_id": "abc", "instance": 7206837586016596540093792448854097920},
     400, "bad_parameter"),
    ({"request_id": "ID", "label": "7", "instance": 2**63 - 1}, 400, "bad_parameter"),
    ({"request_id": "ID", "label": "7", "instance": 1}, 400, "bad_parameter"),  # one image
    ({"request_id": "ID", "label": "7", "instance": -1}, 400, "bad_parameter"),
    ({"request_id": "ID", "label": "7", "instance": "0"}, 400, "bad_parameter"),
])
def test_bad_feedback_is_a_json_error(fb_server, body, status, code):
    url = fb_server[0]
    if isinstance(body, dict) and body.get("request_id") == "ID":
        body = {**body, "request_id": predict(url)}
    response = requests.post(url + "/v1/feedback", json=body, timeout=30)
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code
    if "instance" in body:
        assert "'instance'" in response.json()["error"]["message"]


def test_feedback_on_one_instance_labels_only_its_records(fb_server):
    url, logdir = fb_server
    two = {"instances": [{"b64": base64.b64encode(DIGIT7).decode()}] * 2}
    request_id = requests.post(url + "/v1/models/digits-cnn/predict", json=two,
                               timeout=30).json()["request_id"]
    response = feedback(url, request_id=request_id, label="1", instance=1)
    assert response.status_code == 200 and response.json()["updated"] == 1
    rows = query(logdir, "SELECT instance, feedback_label FROM predictions "
                         "WHERE request_id = ? ORDER BY instance", (request_id,))
    assert [tuple(r) for r in rows] == [(0, None), (1, "1")]
    beyond = feedback(url, request_id=request_id, label="1", instance=2)
    assert beyond.status_code == 400
    assert "from 0 to 1" in beyond.json()["error"]["message"]


def test_feedback_needs_post_and_json(fb_server):
    url = fb_server[0]
    response = requests.get(url + "/v1/feedback", timeout=10)
    assert response.status_code == 405 and response.headers["Allow"] == "POST"
    assert response.json()["error"]["code"] == "method_not_allowed"
    response = requests.post(url + "/v1/feedback", data="request_id=x", timeout=10,
                             headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert response.status_code == 415
    response = requests.post(url + "/v1/feedback", data="{", timeout=10,
                             headers={"Content-Type": "application/json"})
    assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_json"


def test_result_page_offers_feedback_that_works_without_javascript(fb_server):
    url, logdir = fb_server
    page = requests.post(url + "/result", files={"image": ("d.png", DIGIT7)}, timeout=30)
    assert page.status_code == 200
    request_id = page.headers["X-Request-ID"]
    forms = re.findall(r'<form class="feedback" data-request-id="([0-9a-f]+)" method="post" '
                       r'action="/feedback_form">', page.text)
    assert forms == [request_id, request_id]  # one per model card
    assert 'name="label" value="7"' in page.text and 'name="correction"' in page.text
    fragment = requests.post(url + "/result", files={"image": ("d.png", DIGIT7)}, timeout=30,
                             headers={"X-Requested-With": "fetch"})
    assert '<div class="feedback"' in fragment.text and "<form" not in fragment.text

    thanks = requests.post(url + "/feedback_form", timeout=30,
                           data={"request_id": request_id, "correction": "1", "send": "1"})
    assert thanks.status_code == 200 and "Thanks" in thanks.text
    assert thanks.headers["Content-Type"] == "text/html; charset=utf-8"
    rows = query(logdir, "SELECT feedback_label FROM predictions WHERE request_id = ?",
                 (request_id,))
    assert [r[0] for r in rows] == ["1", "1"]
    missing = requests.post(url + "/feedback_form", data={"request_id": "x", "label": "7"},
                            timeout=30)
    assert missing.status_code == 404 and 'role="alert"' in missing.text


def test_feedback_is_404_when_the_input_log_is_disabled(tmp_path):
    proc = ServerProcess(tmp_path, '[inputlog]\nenabled = False\n'
                                   '[service]\nmodels = ["digits-cnn"]\n').start()
    try:
        response = feedback(proc.url, request_id=predict(proc.url), label="7")
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "feedback_disabled"
        page = requests.post(proc.url + "/result", files={"image": ("d.png", DIGIT7)}, timeout=30)
        assert page.status_code == 200 and 'class="feedback"' not in page.text
    finally:
        proc.stop()
    assert not (tmp_path / "inputlog").exists()


def summary(url: str) -> dict:
    response = requests.get(url + "/v1/models/digits-cnn/feedback-summary", timeout=30)
    assert response.status_code == 200
    return response.json()


def test_the_feedback_summary_gives_live_accuracy_and_confusions(fb_server):
    url, _ = fb_server
    served = requests.get(url + "/v1/models/digits-cnn", timeout=10).json()["serving"]

    def of_served(answer: dict) -> dict:
        return next((v for v in answer["versions"] if v["version"] == served),
                    {"logged": 0, "labelled": 0, "correct": 0, "confused": []})

    before = of_served(summary(url))
    ids = []
    for _ in range(3):
        answer = requests.post(url + "/v1/models/digits-cnn/predict", data=DIGIT7,
                               headers={"Content-Type": "image/png"}, timeout=30)
        assert answer.status_code == 200 and answer.json()["predictions"][0]["class"] == 7
        ids.append(answer.json()["request_id"])
    for request_id, label in zip(ids, ("7", "7", "1")):
        assert feedback(url, request_id=request_id, label=label).status_code == 200
    after = of_served(summary(url))
    assert after["logged"] - before["logged"] == 3
    assert after["labelled"] - before["labelled"] == 3
    assert after["correct"] - before["correct"] == 2
    assert after["accuracy"] == pytest.approx(after["correct"] / after["labelled"])
    pair = next(p for p in after["confused"] if (p["true"], p["read_as"]) == (1, 7))
    earlier = next((p["count"] for p in before["confused"]
                    if (p["true"], p["read_as"]) == (1, 7)), 0)
    assert pair["count"] - earlier == 1
    missing = requests.get(url + "/v1/models/nope/feedback-summary", timeout=10)
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"
