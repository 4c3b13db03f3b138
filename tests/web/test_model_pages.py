"""GET /models, the testers' models page, and each model's confusion matrix picture, against
the real server (the browser and accessibility checks are in tests/web/test_browser.py)."""
from __future__ import annotations

import re

import requests

from support import FIXTURES, wait_for

DIGIT7 = (FIXTURES / "digit7_28.png").read_bytes()


def live_cell(page: str, model: str, version: int) -> str | None:
    """The live-accuracy cell of ``version``'s row, None while it has no row."""
    section = page.split(f'id="model-{model}"', 1)[1].split("</section>", 1)[0]
    row = re.search(rf'<tr data-version="{version}">(.*?)</tr>', section, re.S)
    return re.search(r'class="live-accuracy">(.*?)</td>', row.group(1), re.S).group(1) \
        if row else None


def test_the_page_shows_every_model_with_its_figures(server):
    page = requests.get(server + "/models", timeout=30)
    assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html")
    for name in ("digits-cnn", "digits-rnn"):
        details = requests.get(f"{server}/v1/models/{name}", timeout=10).json()
        assert f'id="model-{name}"' in page.text
        assert f"version {details['serving']} serving" in page.text
        assert f'src="/models/{name}/confusion.png"' in page.text
        assert page.text.count(f'<li>version {details["serving"]} <strong>(serving)') >= 1
    assert page.text.count('<span class="accuracy-bar"') == 20  # ten digits, two models


def test_the_confusion_matrix_picture_is_served(server):
    picture = requests.get(server + "/models/digits-cnn/confusion.png", timeout=10)
    assert picture.status_code == 200 and picture.headers["Content-Type"] == "image/png"
    assert picture.content[:8] == b"\x89PNG\r\n\x1a\n"
    assert requests.get(server + "/models/nope/confusion.png", timeout=10).status_code == 404


def test_live_accuracy_moves_with_feedback(server):
    serving = requests.get(server + "/v1/models/digits-cnn", timeout=10).json()["serving"]
    answer = requests.post(server + "/v1/models/digits-cnn/predict", data=DIGIT7,
                           headers={"Content-Type": "image/png"}, timeout=30).json()
    # the input log writes in the background: the row is there once it has caught up
    before = wait_for(lambda: live_cell(requests.get(server + "/models", timeout=30).text,
                                        "digits-cnn", serving), interval=0.2)
    label = requests.post(server + "/v1/feedback", json={"request_id": answer["request_id"],
                                                         "label": "1"}, timeout=30)
    assert label.status_code == 200
    after = live_cell(requests.get(server + "/models", timeout=30).text, "digits-cnn", serving)
    assert after != before and re.search(r"\d+ of \d+", after)
