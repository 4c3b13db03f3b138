"""GET /openapi.json stays truthful: real requests, good and bad, against real servers; each
answer's status must be documented for its operation, its media type listed, and its JSON
body valid against the documented schema. Every route the app exposes is documented, and
every documented operation is exercised here."""
from __future__ import annotations

import base64
from dataclasses import dataclass, field
from typing import Any, Callable

import pytest
import requests
from jsonschema import Draft202012Validator

from support import FIXTURES, ServerProcess

PNG7 = (FIXTURES / "digit7_28.png").read_bytes()
BLANK = (FIXTURES / "blank.png").read_bytes()
B64 = base64.b64encode(PNG7).decode()
CNN = "/v1/models/digits-cnn"
TOKEN = "s3cret-admin-token"
KNOWN_ROUTES = {
    "/", "/result", "/static/{file}", "/status", "/healthz", "/readyz", "/metrics",
    "/openapi.json", "/v1/models", "/v1/models/{name}", "/v1/models/{name}/predict",
    "/v1/models/{name}/reload", "/v1/models/{name}/feedback-summary", "/v1/predict", "/v1/feedback", "/recognize", "/mnist/classify",
    "/mnist/classify/{idx}", "/mnist/image/{idx}", "/mnist/label/{idx}", "/feedback_form",
    "/v2", "/v2/health/live", "/v2/health/ready", "/v2/models/{name}", "/v2/models/{name}/ready",
    "/v2/models/{name}/infer", "/v2/models/{name}/versions/{version}/infer",
    "/v1/models/{name}:predict", "/v1/models/{name}:classify", "/v1/models/{name}/metadata",
    "/v1/models/{name}/versions/{version}", "/v1/models/{name}/labels/{label}",
}
V2_IMAGES = {"json": {"inputs": [{"name": "image_bytes", "datatype": "BYTES", "shape": [1],
                                  "data": [B64]}]}}
V2_BINARY = {"json": {"inputs": [{"name": "image_bytes", "datatype": "BYTES", "shape": [1],
                                  "data": [B64]}],
                      "outputs": [{"name": "class", "parameters": {"binary_data": True}}]}}
TF_ROW = {"json": {"instances": [{"b64": B64}]}}
TF_EXAMPLES = {"json": {"examples": [{"image_bytes": {"b64": B64}}]}}


def png_json(**more: Any) -> dict:
    return {"json": {"instances": [{"b64": B64, **more}]}}


def raw(data: bytes = PNG7, media: str = "image/png", **params: Any) -> dict:
    return {"data": data, "headers": {"Content-Type": media}, "params": params}


def form(data: bytes = PNG7, **fields: Any) -> dict:
    return {"files": {"image": ("digit.png", data, "image/png")}, "data": fields}


def admin(token: str | None = TOKEN, **body: Any) -> dict:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return {"headers": headers, **({"json": body} if body else {})}


def new_request_id(url: str) -> str:
    predicted = requests.post(url + CNN + "/predict", **raw(), timeout=30)
    assert predicted.status_code == 200
    return predicted.json()["request_id"]


def feedback_for_new_prediction(url: str) -> dict:
    """A real request_id: predict first, then label it."""
    return {"json": {"request_id": new_request_id(url), "label": "7"}}


def form_feedback_for_new_prediction(url: str) -> dict:
    return {"data": {"request_id": new_request_id(url), "label": "7"}}


@dataclass
class Case:
    method: str
    template: str
    path: str
    status: int
    request: dict | Callable[[str], dict] = field(default_factory=dict)
    server: str = "shared"  # or "admin": a server with an admin token

    @property
    def id(self) -> str:
        return f"{self.method} {self.path} -> {self.status}"


CASES = [
    # canonical API
    Case("GET", "/v1/models", "/v1/models", 200),
    Case("POST", "/v1/models", "/v1/models", 405),
    Case("GET", "/v1/models/{name}", CNN, 200),
    Case("GET", "/v1/models/{name}", "/v1/models/nope", 404),
    Case("POST", "/v1/models/{name}/predict", CNN + "/predict", 200, raw(top_k=3)),
    Case("POST", "/v1/models/{name}/predict", CNN + "/predict", 200, raw(explain="true")),
    Case("POST", "/v1/models/{name}/predict", CNN + "/predict", 200,
         raw(media="application/octet-stream", x=14, y=14, crop=0.9)),
    Case("POST", "/v1/models/{name}/predict", CNN + "/predict", 200, form(top_k="2")),
    Case("POST", "/v1/models/{name}/predict", CNN + "/predict", 200, png_json(x=14, y=14)),
    Case("POST", "/v1/models/{name}/predict", CNN + "/predict", 200, {"json": {"image": B64}}),
    Case("POST", "/v1/models/{name}/predict", CNN + "/predict", 200,
         {"json": {"instances": [{"path": "digit7_28.png"}], "top_k": 1}}),
    Case("POST", "/v1/models/{name}/predict", CNN + "/predict", 400, raw(BLANK)),
    Case("POST", "/v1/models/{name}/predict", CNN + "/predict", 400, raw(top_k=0)),
    Case("POST", "/v1/models/{name}/predict", CNN + "/predict", 400, raw(b"not an image")),
    Case("POST", "/v1/models/{name}/predict", CNN + "/predict", 400,
         {"json": {"instances": [{"b64": "!!!"}]}}),
    Case("POST", "/v1/models/{name}/predict", CNN + "/predict", 400,
         {"data": b"{", "headers": {"Content-Type": "application/json"}}),
    Case("POST", "/v1/models/{name}/predict", CNN + "/predict", 403,
         {"json": {"instances": [{"path": "../../etc/passwd"}]}}),
    Case("POST", "/v1/models/{name}/predict", CNN + "/predict", 404,
         {"json": {"instances": [{"path": "missing.png"}]}}),
    Case("POST", "/v1/models/{name}/predict", "/v1/models/nope/predict", 404, raw()),
    Case("GET", "/v1/models/{name}/predict", CNN + "/predict", 405),
    Case("POST", "/v1/models/{name}/predict", CNN + "/predict", 413,
         {"json": {"instances": [{"b64": B64}] * 257}}),
    Case("POST", "/v1/models/{name}/predict", CNN + "/predict", 415, raw(media="text/plain")),
    Case("POST", "/v1/models/{name}/predict", CNN + "/predict", 415,
         raw(b"P6\n2 2\n255\n" + b"\0" * 12, "application/octet-stream")),  # PPM
    Case("POST", "/v1/predict", "/v1/predict", 200, png_json()),
    Case("POST", "/v1/predict", "/v1/predict?models=digits-rnn", 200, raw()),
    Case("POST", "/v1/predict", "/v1/predict?models=,", 400, raw()),
    Case("POST", "/v1/predict", "/v1/predict?models=nope", 404, raw()),
    Case("GET", "/v1/predict", "/v1/predict", 405),
    # feedback (the input log)
    Case("POST", "/v1/feedback", "/v1/feedback", 200, feedback_for_new_prediction),
    Case("POST", "/v1/feedback", "/v1/feedback", 404,
         {"json": {"request_id": "0" * 32, "class": 7}}),
    Case("POST", "/v1/feedback", "/v1/feedback", 400, {"json": {"label": "7"}}),
    Case("POST", "/v1/feedback", "/v1/feedback", 415,
         {"data": b"x", "headers": {"Content-Type": "text/plain"}}),
    Case("GET", "/v1/feedback", "/v1/feedback", 405),
    Case("GET", "/v1/models/{name}/feedback-summary", CNN + "/feedback-summary", 200),
    Case("GET", "/v1/models/{name}/feedback-summary", "/v1/models/nope/feedback-summary", 404),
    # admin: reload
    Case("POST", "/v1/models/{name}/reload", CNN + "/reload", 403, admin()),
    Case("POST", "/v1/models/{name}/reload", CNN + "/reload", 401, admin(None), "admin"),
    Case("POST", "/v1/models/{name}/reload", CNN + "/reload", 401, admin("wrong"), "admin"),
    Case("POST", "/v1/models/{name}/reload", CNN + "/reload", 200, admin(), "admin"),
    Case("POST", "/v1/models/{name}/reload", CNN + "/reload", 200, admin(version=1), "admin"),
    Case("POST", "/v1/models/{name}/reload", CNN + "/reload", 400, admin(version="one"),
         "admin"),
    Case("POST", "/v1/models/{name}/reload", CNN + "/reload", 409, admin(version=99), "admin"),
    Case("POST", "/v1/models/{name}/reload", "/v1/models/nope/reload", 404, admin(), "admin"),
    Case("GET", "/v1/models/{name}/reload", CNN + "/reload", 405, admin(), "admin"),
    # health and operations
    Case("GET", "/status", "/status", 200),
    Case("GET", "/healthz", "/healthz", 200),
    Case("GET", "/readyz", "/readyz", 200),
    Case("POST", "/readyz", "/readyz", 405),
    Case("GET", "/metrics", "/metrics", 200),
    Case("GET", "/openapi.json", "/openapi.json", 200),
    Case("DELETE", "/openapi.json", "/openapi.json", 405),
    # seed-compatible
    Case("POST", "/recognize", "/recognize", 200, {"json": {"image": B64}}),
    Case("POST", "/recognize", "/recognize", 400, {"json": {"picture": B64}}),
    Case("POST", "/mnist/classify", "/mnist/classify", 200, raw()),
    Case("POST", "/mnist/classify", "/mnist/classify", 200,
         {"json": {"requests": [{"image": B64}, {"image": B64}]}}),
    Case("POST", "/mnist/classify", "/mnist/classify", 400, {"json": {"image": B64}}),
    Case("GET", "/mnist/classify/{idx}", "/mnist/classify/42", 200),
    Case("GET", "/mnist/classify/{idx}", "/mnist/classify/10000", 404),
    Case("GET", "/mnist/image/{idx}", "/mnist/image/42", 200),
    Case("GET", "/mnist/image/{idx}", "/mnist/image/42?format=png", 200),
    Case("GET", "/mnist/image/{idx}", "/mnist/image/42?format=gif", 400),
    Case("GET", "/mnist/image/{idx}", "/mnist/image/x", 404),
    Case("GET", "/mnist/label/{idx}", "/mnist/label/42", 200),
    Case("GET", "/mnist/label/{idx}", "/mnist/label/10000", 404),
    # the Open Inference Protocol (KServe V2); {version} is filled in by serving_version()
    Case("GET", "/v2", "/v2", 200),
    Case("GET", "/v2/health/live", "/v2/health/live", 200),
    Case("GET", "/v2/health/ready", "/v2/health/ready", 200),
    Case("POST", "/v2/health/ready", "/v2/health/ready", 405),
    Case("GET", "/v2/models/{name}", "/v2/models/digits-cnn", 200),
    Case("GET", "/v2/models/{name}", "/v2/models/nope", 404),
    Case("GET", "/v2/models/{name}/versions/{version}", "/v2/models/digits-cnn/versions/{v}", 200),
    Case("GET", "/v2/models/{name}/versions/{version}", "/v2/models/digits-cnn/versions/x", 400),
    Case("GET", "/v2/models/{name}/ready", "/v2/models/digits-cnn/ready", 200),
    Case("GET", "/v2/models/{name}/versions/{version}/ready",
         "/v2/models/digits-cnn/versions/{v}/ready", 200),
    Case("GET", "/v2/models/{name}/versions/{version}/ready",
         "/v2/models/digits-cnn/versions/99/ready", 404),
    Case("POST", "/v2/models/{name}/infer", "/v2/models/digits-cnn/infer", 200, V2_IMAGES),
    Case("POST", "/v2/models/{name}/infer", "/v2/models/digits-cnn/infer", 200, V2_BINARY),
    Case("POST", "/v2/models/{name}/infer", "/v2/models/digits-cnn/infer", 400,
         {"json": {"inputs": []}}),
    Case("POST", "/v2/models/{name}/infer", "/v2/models/digits-cnn/infer", 413,
         {"json": {"inputs": [{"name": "i", "datatype": "BYTES", "shape": [257],
                               "data": [B64] * 257}]}}),
    Case("GET", "/v2/models/{name}/infer", "/v2/models/digits-cnn/infer", 405),
    Case("POST", "/v2/models/{name}/versions/{version}/infer",
         "/v2/models/digits-cnn/versions/{v}/infer", 200, V2_IMAGES),
    Case("POST", "/v2/models/{name}/versions/{version}/infer",
         "/v2/models/digits-cnn/versions/99/infer", 404, V2_IMAGES),
    # TensorFlow Serving's REST API
    Case("POST", "/v1/models/{name}:predict", "/v1/models/digits-cnn:predict", 200, TF_ROW),
    Case("POST", "/v1/models/{name}:predict", "/v1/models/digits-cnn:predict", 200,
         {"json": {"inputs": {"image": [[[[0.0]] * 28] * 28]}}}),
    Case("POST", "/v1/models/{name}:predict", "/v1/models/digits-cnn:predict", 400,
         {"json": {"instances": "x"}}),
    Case("POST", "/v1/models/{name}:predict", "/v1/models/nope:predict", 404, TF_ROW),
    Case("GET", "/v1/models/{name}:predict", "/v1/models/digits-cnn:predict", 405),
    Case("POST", "/v1/models/{name}/versions/{version}:predict",
         "/v1/models/digits-cnn/versions/{v}:predict", 200, TF_ROW),
    Case("POST", "/v1/models/{name}/labels/{label}:predict",
         "/v1/models/digits-cnn/labels/stable:predict", 200, TF_ROW),
    Case("POST", "/v1/models/{name}/labels/{label}:predict",
         "/v1/models/digits-cnn/labels/canary:predict", 404, TF_ROW),
    Case("POST", "/v1/models/{name}:classify", "/v1/models/digits-cnn:classify", 200,
         TF_EXAMPLES),
    Case("POST", "/v1/models/{name}:classify", "/v1/models/digits-cnn:classify", 400,
         {"json": {"examples": []}}),
    Case("POST", "/v1/models/{name}/versions/{version}:classify",
         "/v1/models/digits-cnn/versions/{v}:classify", 200, TF_EXAMPLES),
    Case("POST", "/v1/models/{name}/labels/{label}:classify",
         "/v1/models/digits-cnn/labels/stable:classify", 200, TF_EXAMPLES),
    Case("GET", "/v1/models/{name}/metadata", "/v1/models/digits-cnn/metadata", 200),
    Case("GET", "/v1/models/{name}/metadata", "/v1/models/nope/metadata", 404),
    Case("GET", "/v1/models/{name}/versions/{version}/metadata",
         "/v1/models/digits-cnn/versions/{v}/metadata", 200),
    Case("GET", "/v1/models/{name}/labels/{label}/metadata",
         "/v1/models/digits-cnn/labels/stable/metadata", 200),
    Case("GET", "/v1/models/{name}/versions/{version}", "/v1/models/digits-cnn/versions/{v}",
         200),
    Case("GET", "/v1/models/{name}/versions/{version}", "/v1/models/digits-cnn/versions/99",
         404),
    Case("GET", "/v1/models/{name}/labels/{label}", "/v1/models/digits-cnn/labels/stable", 200),
    # HTML
    Case("GET", "/", "/", 200),
    Case("POST", "/", "/", 405),
    Case("POST", "/result", "/result", 200, form(model="digits-cnn")),
    Case("POST", "/result", "/result", 400, {"data": {"model": "all"}}),
    Case("POST", "/result", "/result", 400, form(BLANK)),
    Case("POST", "/result", "/result", 404, form(model="nope")),
    Case("GET", "/result", "/result", 405),
    Case("POST", "/feedback_form", "/feedback_form", 200, form_feedback_for_new_prediction),
    Case("POST", "/feedback_form", "/feedback_form", 400, {"data": {"label": "7"}}),
    Case("POST", "/feedback_form", "/feedback_form", 404,
         {"data": {"request_id": "0" * 32, "label": "7"}}),
    Case("GET", "/feedback_form", "/feedback_form", 405),
    Case("GET", "/models", "/models", 200),
    Case("POST", "/models", "/models", 405),
    Case("GET", "/models/{name}/confusion.png", "/models/digits-cnn/confusion.png", 200),
    Case("GET", "/models/{name}/confusion.png", "/models/nope/confusion.png", 404),
    Case("GET", "/static/{file}", "/static/app.js", 200),
    Case("GET", "/static/{file}", "/static/style.css", 200),
    Case("GET", "/static/{file}", "/static/nope.js", 404),
]


@pytest.fixture(scope="module")
def admin_server(tmp_path_factory):
    """A second server with an admin token (the shared one has none: admin routes off)."""
    tmp = tmp_path_factory.mktemp("openapi-admin")
    proc = ServerProcess(tmp, f'[service]\nmodels = ["digits-cnn"]\nadmin_token = "{TOKEN}"\n'
                              '[inputlog]\nenabled = False\n').start()
    yield proc.url
    proc.stop()


@pytest.fixture(scope="module")
def document(server) -> dict:
    response = requests.get(server + "/openapi.json", timeout=10)
    assert response.status_code == 200
    return response.json()


def test_document_is_openapi_31_with_valid_schemas(document):
    assert document["openapi"].startswith("3.1")
    for name, schema in document["components"]["schemas"].items():
        Draft202012Validator.check_schema(schema)
    for path, item in document["paths"].items():
        for method, op in item.items():
            if method == "parameters":
                continue
            assert op["responses"], f"{method} {path}"
            for status, response in op["responses"].items():
                for media in response.get("content", {}).values():
                    Draft202012Validator.check_schema(media["schema"])


def test_every_known_route_is_documented(document):
    assert KNOWN_ROUTES <= set(document["paths"]), KNOWN_ROUTES - set(document["paths"])


def test_the_document_is_the_route_table(document):
    """Derived, not written beside it: every route's methods, and nothing else."""
    from service.web.routes import ROUTES

    documented = {(path, method) for path, item in document["paths"].items()
                  for method in item if method != "parameters"}
    assert documented == {(route.template, method.lower()) for route in ROUTES
                          for method in route.methods}


def test_every_documented_operation_is_exercised(document):
    documented = {(path, method.upper()) for path, item in document["paths"].items()
                  for method in item if method != "parameters"}
    exercised = {(case.template, case.method) for case in CASES
                 if str(case.status).startswith("2")}
    assert documented <= exercised, documented - exercised


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.id)
def test_responses_match_the_document(case, document, server, request):
    url = request.getfixturevalue("admin_server") if case.server == "admin" else server
    kwargs = case.request(url) if callable(case.request) else case.request
    path = case.path.replace("{v}", str(serving_version(url)))
    response = requests.request(case.method, url + path, timeout=30, **kwargs)
    assert response.status_code == case.status, response.text[:500]
    check_against_document(document, case, response)


def serving_version(url: str) -> int:
    return requests.get(url + CNN, timeout=10).json()["serving"]


def check_against_document(document: dict, case: Case, response: requests.Response) -> None:
    item = document["paths"][case.template]
    operation = item.get(case.method.lower()) or _any_operation(item)
    documented = operation["responses"]
    status = str(response.status_code)
    assert status in documented, f"{status} is not documented for {case.template}"
    content = documented[status].get("content", {})
    media = response.headers.get("Content-Type", "").split(";")[0].strip()
    assert media in content, f"{media} is not documented for {status} of {case.template}"
    if media == "application/json":
        schema = {**content[media]["schema"], "components": document["components"]}
        Draft202012Validator(schema).validate(response.json())


def _any_operation(item: dict) -> dict:
    """A wrong-method request answers with the statuses every operation documents (405)."""
    return next(op for method, op in item.items() if method != "parameters")

