"""Fuzz the live server: schemathesis over every operation of /openapi.json, and hypothesis
posting random and mutated real images to the predict route, raw and as base64 JSON.

Every answer must hold these properties, whatever was sent:

- no 5xx, except an overload answer: 503 with ``Retry-After``, or 504 ``deadline_exceeded``
  (both say "try again later", which is the truth under load -- never a bug to hide);
- an error body is our JSON shape ``{"error": {"code": str, "message": str}}`` -- on the HTML
  pages (``/result``, ``/feedback_form``, ``/models``), whose errors are documented as HTML, it
  is HTML instead, and on the V2 and TF Serving routes the protocols' ``{"error": str}``;
- no traceback text anywhere;
- no answer slower than the request deadline (``request_timeout_s``, 10 s) plus a margin.

Schemathesis adds its own checks: documented status codes, content types and response
schemas. ``FUZZ_EXAMPLES`` bounds the cases per operation (small in CI; ``make fuzz`` sets
many more); ``FUZZ_URL`` points the tests at an already-running server instead of the shared
one. ``FUZZ_SEED`` seeds both fuzzers, and failing examples are kept in git
(``tests/fuzzing.py``), so a run is reproducible and a found failure is replayed ever after.
"""
from __future__ import annotations

import base64
import json
import os
import re
import socket
import time
from dataclasses import dataclass
from typing import Any, Mapping
from urllib.parse import urlsplit

import pytest
import requests
import schemathesis
from hypothesis import example, given, settings
from hypothesis import strategies as st

from service.config import ServiceSettings
from service.web.dispatch import MESSAGE_ANSWER
from service.web.routes import HTML_ANSWER, ROUTES, openapi_document as document
from fuzzing import DATABASE, SEED, fuzz_settings, mutated_image, seeded
from support import FIXTURES

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "25"))  # per operation (schemathesis), per mode
DEADLINE_S = ServiceSettings().request_timeout_s  # the shared server runs the default (10 s)
MARGIN_S = 5.0     # two shared CI cores: the answer may queue behind other work
PREDICT = "/v1/models/digits-cnn/predict"
HTML_ERROR_ROUTES = {route.template for route in ROUTES if route.answer is HTML_ANSWER}
# The V2 and TF Serving routes answer errors in their protocols' shape: {"error": "<message>"}.
MESSAGE_ERROR_ROUTES = {route.template for route in ROUTES if route.answer is MESSAGE_ANSWER}
TRACEBACK = re.compile(r"Traceback \(most recent call last\)|File \"[^\"]+\", line \d+")
SEEDS = {path.name: path.read_bytes() for path in sorted(FIXTURES.iterdir())
         if path.suffix in {".png", ".jpg", ".gif", ".bmp", ".tiff", ".webp"}}
# Answers checked, by source: the last test asserts the fuzzers really ran this many.
CHECKED: dict[str, int] = {"schemathesis": 0, "raw": 0, "json": 0}


@dataclass(frozen=True)
class Answer:
    """The parts of an HTTP response the properties look at, from either client library."""

    route: str
    status: int
    headers: Mapping[str, str]  # lower-case names
    body: bytes
    seconds: float

    @property
    def media(self) -> str:
        return self.headers.get("content-type", "").split(";")[0].strip()

    def describe(self) -> str:
        return f"{self.route} -> {self.status} {self.media}: {self.body[:300]!r}"


def check_answer(answer: Answer) -> None:
    """The properties every answer must have (see the module docstring)."""
    assert answer.seconds <= DEADLINE_S + MARGIN_S, f"{answer.seconds:.1f} s: {answer.describe()}"
    assert not TRACEBACK.search(answer.body.decode("utf-8", "replace")), answer.describe()
    if answer.status >= 500:
        assert is_overload(answer), f"server error: {answer.describe()}"
    if answer.status >= 400:
        if answer.route in HTML_ERROR_ROUTES and answer.media == "text/html":
            return
        check_error_body(answer)


def is_overload(answer: Answer) -> bool:
    """503 with Retry-After, or 504 deadline_exceeded: a legitimate 'try again later'."""
    if answer.status == 503:
        return "retry-after" in answer.headers
    return answer.status == 504 and (answer.route in MESSAGE_ERROR_ROUTES
                                     or error_code(answer.body) == "deadline_exceeded")


def check_error_body(answer: Answer) -> None:
    assert answer.media == "application/json", answer.describe()
    payload = json.loads(answer.body)
    assert set(payload) == {"error"}, answer.describe()
    error = payload["error"]
    if answer.route in MESSAGE_ERROR_ROUTES:
        assert isinstance(error, str) and error, answer.describe()
        return
    assert isinstance(error, dict), answer.describe()
    extra = {"boxes"} if error.get("code") == "several_digits" else set()  # each digit's box
    assert set(error) == {"code", "message"} | extra, answer.describe()
    assert isinstance(error["code"], str) and error["code"], answer.describe()
    assert isinstance(error["message"], str) and error["message"], answer.describe()


def error_code(body: bytes) -> str | None:
    try:
        return json.loads(body)["error"]["code"]
    except (ValueError, KeyError, TypeError):
        return None


# -- schemathesis: every documented operation ------------------------------------------------
def fuzz_config() -> schemathesis.Config:
    """Positive and negative cases, bounded; checks tuned to what a schema can say."""
    return schemathesis.Config.from_dict({
        "request-timeout": DEADLINE_S + MARGIN_S,
        "seed": SEED,
        "generation": {"max-examples": EXAMPLES, "mode": "all"},
        "checks": {
            # A schema-valid body is not a readable image with ink in it: random base64 or
            # bytes are rightly refused 400 (invalid_image, bad_base64, blank_image), 413 or 415.
            "positive_data_acceptance": {"expected-statuses": [
                "2xx", "400", "401", "403", "404", "409", "413", "415"]},
        },
    })


@schemathesis.serializer("image/bmp", "image/tiff")
def raw_image(ctx: schemathesis.SerializationContext, value: Any) -> bytes:
    """Raw image bodies go as bytes, like schemathesis's own image/png, image/jpeg, ..."""
    from schemathesis.transport.serialization import serialize_binary

    return serialize_binary(value)


# Loaded in-process at collection (the per-operation tests need it then; pytest 9.2 broke
# schemathesis.pytest.from_fixture), and checked equal to the live server's /openapi.json.
schema = schemathesis.openapi.from_dict(document(), config=fuzz_config())


@pytest.fixture(scope="module")
def base_url(request) -> str:
    """The server under test (FUZZ_URL, else the shared one), once its /openapi.json is shown
    to be the document fuzzed here."""
    url = os.environ.get("FUZZ_URL") or request.getfixturevalue("server")
    served = requests.get(url + "/openapi.json", timeout=10)
    assert served.status_code == 200
    assert served.json() == json.loads(json.dumps(document())), "served document differs"
    return url


@schema.parametrize()
@settings(database=DATABASE, derandomize=False, deadline=None)  # kept examples: tests/fuzzing.py
def test_every_operation_conforms(case, base_url):
    response = case.call_and_validate(base_url=base_url)
    CHECKED["schemathesis"] += 1
    # elapsed: this request alone (the checks may send more)
    check_answer(Answer(case.operation.path, response.status_code,
                        {k.lower(): v[0] for k, v in response.headers.items()},
                        response.content, response.elapsed))


# -- hypothesis: random and mutated real images through predict ------------------------------
IMAGE_BYTES = st.one_of(mutated_image(sorted(SEEDS.values())), st.binary(max_size=4096),
                        st.sampled_from(sorted(SEEDS.values())))
RAW_TYPES = st.sampled_from(["image/png", "image/jpeg", "application/octet-stream"])
BASE64 = st.sampled_from([base64.b64encode, base64.urlsafe_b64encode,
                          lambda data: base64.b64encode(data).rstrip(b"=")])
HYPOTHESIS = fuzz_settings(max(10, EXAMPLES * 5))


def post(url: str, route: str = PREDICT, **kwargs: Any) -> Answer:
    """POST and time one request (the timeout leaves room to see a too-slow answer)."""
    started = time.monotonic()
    response = requests.post(url + route, timeout=DEADLINE_S + MARGIN_S + 5, **kwargs)
    return Answer(route, response.status_code,
                  {k.lower(): v for k, v in response.headers.items()}, response.content,
                  time.monotonic() - started)


# Query options, extreme floats included: crop=1e-313 once overflowed the JPEG draft size.
OPTIONS = st.fixed_dictionaries({}, optional={
    "top_k": st.integers(-2, 12), "crop": st.floats(allow_nan=False, allow_subnormal=True),
    "x": st.floats(-1e6, 1e6), "y": st.floats(-1e6, 1e6)})


@HYPOTHESIS
@seeded
@given(data=IMAGE_BYTES, media=RAW_TYPES, options=OPTIONS)
@example(data=SEEDS["digit7_112.jpg"], media="image/jpeg", options={"crop": 2.2250738585e-313})
def test_raw_bytes_never_break_predict(base_url, data, media, options):
    answer = post(base_url, data=data, headers={"Content-Type": media}, params=options)
    CHECKED["raw"] += 1
    check_answer(answer)
    assert answer.status in (200, 400, 413, 415, 422, 503, 504), answer.describe()


@HYPOTHESIS
@seeded
@given(data=IMAGE_BYTES, encode=BASE64, shorthand=st.booleans(), junk=st.sampled_from(
    ["", "!", " ", "====", "data:image/png;base64,"]))
def test_base64_json_never_breaks_predict(base_url, data, encode, shorthand, junk):
    encoded = encode(data).decode()
    text = junk + encoded if junk.startswith("data:") else encoded + junk
    body = {"image": text} if shorthand else {"instances": [{"b64": text}], "top_k": 3}
    answer = post(base_url, json=body)
    CHECKED["json"] += 1
    check_answer(answer)
    assert answer.status in (200, 400, 413, 415, 422, 503, 504), answer.describe()
    if answer.status == 200:
        assert len(json.loads(answer.body)["predictions"]) == 1


# Found by schemathesis: CherryPy's multipart parser raised ValueError/EOFError (a 500) on
# these before any handler ran.
MALFORMED_MULTIPART = [
    ("multipart/form-data", b"xx"),                                        # no boundary
    ("multipart/mixed", b"xx"),
    ("multipart/form-data; boundary=b", b'--b\r\nContent-Disposition: form-data; name="image"'
                                       b"\r\n"),                            # headers cut short
]


@pytest.mark.parametrize("media, body", MALFORMED_MULTIPART)
@pytest.mark.parametrize("route", [PREDICT, "/v1/predict", "/mnist/classify", "/result"])
def test_malformed_multipart_is_the_clients_400(base_url, route, media, body):
    answer = post(base_url, route, data=body, headers={"Content-Type": media})
    assert answer.status == 400, answer.describe()
    check_answer(answer)


def bodiless_post(base_url: str, route: str, media: str) -> Answer:
    """A POST with neither Content-Length nor Transfer-Encoding (requests always sends one)."""
    url = urlsplit(base_url)
    started = time.monotonic()
    with socket.create_connection((url.hostname, url.port), timeout=DEADLINE_S) as sock:
        sock.sendall(f"POST {route} HTTP/1.1\r\nHost: fuzz\r\nContent-Type: {media}\r\n"
                     "Connection: close\r\n\r\n".encode())
        response = b""
        while chunk := sock.recv(65536):
            response += chunk
    head, _, body = response.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in lines)}
    return Answer(route, int(status_line.split()[1]), headers, body, time.monotonic() - started)


# Found by hand after the fuzz run: a bodiless POST to /v1/models/<name>/predict (whose
# tools.bodiless_post skips CherryPy's body processing, for reload) read the raw socket
# reader with CherryPy's two-argument read() -- a TypeError, a 500.
@pytest.mark.parametrize("media", ["image/png", "application/json"])
@pytest.mark.parametrize("route", [PREDICT, "/v1/predict", "/recognize", "/v1/feedback"])
def test_a_bodiless_post_is_refused_by_the_client(base_url, route, media):
    answer = bodiless_post(base_url, route, media)
    assert answer.status in (400, 411, 415), answer.describe()
    check_answer(answer)


JSON_HEADERS = {"content-type": "application/json"}
BAD_ANSWERS = [
    Answer(PREDICT, 500, JSON_HEADERS, b'{"error":{"code":"internal_error","message":"x"}}', 0.1),
    Answer(PREDICT, 503, JSON_HEADERS, b'{"error":{"code":"overloaded","message":"x"}}', 0.1),
    Answer(PREDICT, 504, JSON_HEADERS, b'{"error":{"code":"other","message":"x"}}', 0.1),
    Answer(PREDICT, 400, JSON_HEADERS, b'{"error":{"code":"x"}}', 0.1),
    Answer(PREDICT, 400, JSON_HEADERS, b'{"error":{"code":"x","message":"y"},"more":1}', 0.1),
    Answer(PREDICT, 400, {"content-type": "text/html"}, b"<p>bad</p>", 0.1),
    Answer(PREDICT, 200, JSON_HEADERS, b'Traceback (most recent call last):\n', 0.1),
    Answer(PREDICT, 200, JSON_HEADERS, b"{}", DEADLINE_S + MARGIN_S + 1),
]


@pytest.mark.parametrize("answer", BAD_ANSWERS, ids=lambda a: f"{a.status}-{a.body[:20]!r}")
def test_the_properties_refuse_bad_answers(answer):
    with pytest.raises(AssertionError):
        check_answer(answer)


def test_the_properties_accept_good_answers():
    retry = {**JSON_HEADERS, "retry-after": "1"}
    check_answer(Answer(PREDICT, 503, retry, b'{"error":{"code":"overloaded","message":"x"}}', 1))
    check_answer(Answer(PREDICT, 504, JSON_HEADERS,
                        b'{"error":{"code":"deadline_exceeded","message":"x"}}', DEADLINE_S))
    check_answer(Answer("/result", 400, {"content-type": "text/html"}, b"<p>bad</p>", 0.1))


def test_the_fuzzers_really_ran():
    """Guard against a silently empty run (e.g. a schema that generates nothing)."""
    if not any(CHECKED.values()):
        pytest.skip("run with the fuzz tests above")
    print(f"answers checked: {CHECKED}")
    assert CHECKED["schemathesis"] >= 5 * EXAMPLES, CHECKED
    assert CHECKED["raw"] >= max(10, EXAMPLES * 5) // 2, CHECKED
    assert CHECKED["json"] >= max(10, EXAMPLES * 5) // 2, CHECKED
