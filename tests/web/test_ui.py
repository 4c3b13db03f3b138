"""The tester-facing HTML form (GET /, POST /result) against the real server and shipped graphs."""
from __future__ import annotations

import base64
import io
import re
import socket
from urllib.parse import urlsplit

import pytest
import requests
from PIL import Image

from support import FIXTURES

MODELS = ("digits-cnn", "digits-rnn")
FETCH = {"X-Requested-With": "fetch"}
TOP_LABEL = re.compile(r'class="top-label">([^<]*)<')
DATA_IMG = re.compile(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"')


def post_result(server: str, name: str | None = "digit7_28.png", headers: dict | None = None,
                **fields: str) -> requests.Response:
    """A multipart POST like the form's: file field ``image`` (unless ``name`` is None) + fields."""
    parts = [(key, (None, value)) for key, value in fields.items()]
    if name is not None:
        parts.append(("image", (name, (FIXTURES / name).read_bytes())))
    return requests.post(server + "/result", files=parts, headers=headers or {}, timeout=30)


def assert_html(response: requests.Response, status: int) -> str:
    assert response.status_code == status, response.text[:500]
    assert response.headers["Content-Type"] == "text/html; charset=utf-8"
    return response.text


def test_index_is_a_form_listing_the_available_models(server):
    response = requests.get(server + "/", timeout=10)
    html = assert_html(response, 200)
    assert html.lstrip().lower().startswith("<!doctype html>")
    assert '<meta name="viewport"' in html
    assert re.search(r'<form[^>]+action="/result"[^>]+method="post"[^>]+'
                     r'enctype="multipart/form-data"', html)
    assert re.search(r'<label for="image">', html) and 'id="image" name="image" type="file"' in html
    options = re.findall(r'<option value="([^"]+)"', html)
    assert options == ["all", *MODELS]
    assert '<link rel="stylesheet" href="/static/style.css">' in html
    assert '<script src="/static/app.js" defer></script>' in html


def test_static_assets_are_served(server):
    css = requests.get(server + "/static/style.css", timeout=10)
    js = requests.get(server + "/static/app.js", timeout=10)
    assert css.status_code == 200 and css.headers["Content-Type"].startswith("text/css")
    assert js.status_code == 200 and "javascript" in js.headers["Content-Type"]
    assert "X-Requested-With" in js.text


def test_result_page_shows_each_model_reading_7_and_its_input(server):
    response = post_result(server)
    html = assert_html(response, 200)
    assert "<html" in html and 'id="upload-form"' in html  # a full page, form included
    assert re.findall(r'data-model="([^"]+)"', html) == list(MODELS)
    assert TOP_LABEL.findall(html) == ["7", "7"]
    images = DATA_IMG.findall(html)
    assert len(images) == 2 * 3  # per model: its input, and the heat maps of its best two
    picture = Image.open(io.BytesIO(base64.b64decode(images[0])))
    assert picture.format == "PNG" and picture.size == (224, 224)  # 28x28 enlarged 8 times
    assert html.count("Heat map over the input") == 2 and html.count("Why not ") == 2
    assert html.count('class="bar-row') == 2 * 5  # top 5 per model
    assert re.search(r'class="bar-fill" style="width: (9\d|100)\.\d\d%"', html)
    for timing in ("decode", "preprocess", "queue", "inference", "total", "explain"):
        assert f"<dt>{timing}</dt>" in html
    assert "digit7_28.png" in html
    assert response.headers["Cache-Control"] == "no-store"


def test_one_model_can_be_picked_and_stays_selected(server):
    html = assert_html(post_result(server, model="digits-rnn", x="14", y="14"), 200)
    assert re.findall(r'data-model="([^"]+)"', html) == ["digits-rnn"]
    assert TOP_LABEL.findall(html) == ["7"]
    assert '<option value="digits-rnn" selected>' in html
    assert 'id="x" name="x"' in html and 'value="14"' in html


def test_fetch_gets_only_the_fragment(server):
    response = post_result(server, headers=FETCH)
    html = assert_html(response, 200)
    assert "<html" not in html and "<form" not in html
    assert TOP_LABEL.findall(html) == ["7", "7"]
    assert "data:image/png;base64," in html
    assert response.headers["Vary"] == "X-Requested-With"


@pytest.mark.parametrize("headers", [{}, FETCH], ids=["page", "fragment"])
def test_a_file_that_is_not_an_image_is_a_readable_html_error(server, headers):
    html = assert_html(post_result(server, "not_an_image.txt", headers=headers), 400)
    assert 'role="alert"' in html
    assert "not an image" in html
    assert "invalid_image" in html
    assert ("<html" in html) is (not headers)
    assert not html.lstrip().startswith("{")


def test_no_file_is_a_400_html_page(server):
    html = assert_html(post_result(server, None, model="all"), 400)
    assert "<html" in html and 'role="alert"' in html
    assert "No image was uploaded" in html


def test_an_empty_file_is_a_400(server):
    response = requests.post(server + "/result", files={"image": ("empty.png", b"")}, timeout=10)
    assert "is empty" in assert_html(response, 400)


@pytest.mark.parametrize("name, fields, status, text", [
    ("blank.png", {}, 400, "blank"),
    ("truncated.png", {}, 400, "truncated"),
    ("digit7_28.png", {"x": "3"}, 400, "Give both x and y, or neither."),
    ("digit7_28.png", {"x": "a", "y": "3"}, 400, "x must be a number"),
    ("digit7_28.png", {"model": "nope"}, 404, "There is no model named &#39;nope&#39;."),
])
def test_service_errors_keep_their_status(server, name, fields, status, text):
    html = assert_html(post_result(server, name, headers=FETCH, **fields), status)
    assert 'role="alert"' in html and text in html


def test_an_oversized_upload_is_an_html_413(server):
    """Refused from its Content-Length, before the body is read: only headers are sent."""
    url = urlsplit(server)
    with socket.create_connection((url.hostname, url.port), timeout=10) as sock:
        sock.sendall(b"POST /result HTTP/1.1\r\nHost: test\r\nX-Requested-With: fetch\r\n"
                     b"Content-Type: multipart/form-data; boundary=b\r\n"
                     b"Content-Length: 1000000000\r\n\r\n--b\r\n")
        response = b""
        while chunk := sock.recv(65536):
            response += chunk
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413 "), head
    assert b"Content-Type: text/html; charset=utf-8" in head
    assert b"larger than the server accepts" in body
    assert b'role="alert"' in body and b"<html" not in body


def test_get_on_result_is_an_html_405_with_the_form(server):
    response = requests.get(server + "/result", timeout=10)
    html = assert_html(response, 405)
    assert response.headers["Allow"] == "POST"
    assert 'id="upload-form"' in html and 'role="alert"' in html


def test_user_text_is_escaped(server):
    image = (FIXTURES / "digit7_28.png").read_bytes()
    response = requests.post(server + "/result", files={"image": ("<b>x</b>.png", image)},
                             timeout=30)
    html = assert_html(response, 200)
    assert "&lt;b&gt;x&lt;/b&gt;.png" in html and "<b>x</b>" not in html
    html = assert_html(post_result(server, model="<script>alert(1)</script>", x='"><i>', y="1"),
                       400)
    assert "x must be a number" in html
    assert "<script>alert" not in html and '"><i>' not in html
