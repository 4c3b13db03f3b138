"""The OpenAPI 3.1 description of every route, served at ``GET /openapi.json``.

Written as Python rather than a JSON file so that what repeats (the predict body kinds, the
error responses, the query options) is written once. Schemas are JSON Schema 2020-12, as
OpenAPI 3.1 specifies; ``tests/web/test_openapi.py`` checks real responses against them.
"""
from __future__ import annotations

import functools
import json
from typing import Any

from . import access
from .feedback import MAX_LABEL_CHARS, MAX_REQUEST_ID_CHARS
from .fields import INT64_MAX

JSON = "application/json"
HTML = "text/html"
RAW_IMAGE_TYPES = ("image/png", "image/jpeg", "image/gif", "image/bmp", "image/tiff",
                   "image/webp", "application/octet-stream")

# Error codes by status: a response's ``error.code`` must be one of its status's codes.
ERROR_CODES: dict[int, tuple[str, ...]] = {
    400: ("invalid_json", "missing_image", "bad_instance", "bad_base64", "invalid_image",
          "blank_image", "bad_parameter", "invalid_input", "bad_request", "bad_path",
          "not_a_file", "json_too_deep"),
    401: ("unauthorized", "invalid_api_key"),
    403: ("remote_path_disabled", "path_forbidden", "forbidden"),
    404: ("not_found", "model_not_found", "index_not_found", "image_not_found"),
    405: ("method_not_allowed",),
    408: ("request_timeout",),
    409: ("conflict", "reload_failed"),
    411: ("length_required",),
    413: ("body_too_large", "image_too_large", "batch_too_large", "image_bytes_too_large",
          "too_many_frames", "too_many_blocks", "payload_too_large"),
    415: ("unsupported_media_type", "unsupported_image_format"),
    429: ("rate_limited",),
    500: ("internal_error",),
    503: ("model_unavailable", "overloaded", "not_ready", "unavailable", "too_many_in_flight",
          "worker_restarted", "feedback_pending"),
    504: ("deadline_exceeded",),
}
ERROR_WHEN = {
    400: "Malformed JSON (or nested too deep), missing or empty field, bad base64, bad path, "
         "undecodable or truncated image, no ink, bad parameter.",
    401: "Missing or wrong admin token, or (with [auth] keys_file) a missing or invalid API key.",
    403: "Forbidden: path instances with no images_root or escaping it; admin routes off or "
         "called without an admin key; feedback on another key's prediction.",
    404: "Unknown route, model, MNIST index or image path.",
    405: "Wrong method; the Allow header lists the right ones.",
    408: "The request did not arrive in full in time (the connection guard cut it).",
    409: "The request clashes with the current state (a rejected model version).",
    411: "A body was expected but the request has neither Content-Length nor "
         "Transfer-Encoding.",
    413: "Body over max_body_bytes, image over max_image_bytes or max_pixels, too many frames, "
         "or more than max_batch_size images.",
    415: "Content-Type not accepted, or an image format other than PNG, JPEG, GIF, BMP, TIFF, "
         "WebP.",
    429: "Over the client's request or image rate limit; Retry-After says when to retry.",
    500: "Unexpected server error (logged; no details are sent).",
    503: "Model FAILED or loading, its session worker restarted, queue full, too many requests "
         "in flight, or not ready; Retry-After says when to retry.",
    504: "No answer within request_timeout_s.",
}
PREDICT_ERRORS = (400, 403, 404, 405, 413, 415, 500, 503, 504)


def ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def obj(required: tuple[str, ...] = (), **properties: Any) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        schema["required"] = list(required)
    return schema


def array(items: dict[str, Any], **more: Any) -> dict[str, Any]:
    return {"type": "array", "items": items, **more}


INT, NUM, STR, BOOL = {"type": "integer"}, {"type": "number"}, {"type": "string"}, {"type": "boolean"}
INDEX = {"type": "integer", "minimum": 0, "maximum": INT64_MAX}
REQUEST_ID = {"type": "string", "minLength": 1, "maxLength": MAX_REQUEST_ID_CHARS}
LABEL = {"type": "string", "minLength": 1, "maxLength": MAX_LABEL_CHARS}
PROBABILITY = {"type": "number", "minimum": 0, "maximum": 1}
BINARY = {"type": "string", "contentMediaType": "application/octet-stream"}


def nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [schema, {"type": "null"}]}


# -- schemas -----------------------------------------------------------------------------------
INSTANCE_OPTIONS = {
    "x": {"type": "number", "description": "Crop centre, pixels of the original image "
                                           "(give x and y together)."},
    "y": {"type": "number", "description": "Crop centre, pixels of the original image."},
    "crop": {"type": "number", "exclusiveMinimum": 0, "maximum": 1,
             "description": "Crop size as a fraction of the shorter side."},
}
B64 = {"type": "string", "description": "Standard or URL-safe base64, padded or not, or a "
                                        "data:image/...;base64, URL."}

SCHEMAS: dict[str, Any] = {
    "Error": {**obj(("error",), error=obj(("code", "message"), code=STR, message=STR)),
              "additionalProperties": False},
    "Class": obj(("class", "label", "probability"), **{"class": INT}, label=STR,
                 probability=PROBABILITY),
    "Prediction": obj(("class", "label", "probability", "top_k"), **{"class": INT}, label=STR,
                      probability=PROBABILITY, top_k=array(ref("Class"), minItems=1)),
    "Timing": {**obj(("decode", "preprocess", "queue", "inference", "total")),
               "additionalProperties": NUM,
               "description": "Milliseconds: bytes to pixels, to model input, waiting for a "
                              "session, session.run of the batch, and the whole handler."},
    "ModelPrediction": obj(("model", "version", "request_id", "predictions", "timing_ms"),
                           model=STR, version=INT, request_id=STR,
                           predictions=array(ref("Prediction"), minItems=1),
                           timing_ms=ref("Timing")),
    "MultiPrediction": obj(("request_id", "results"), request_id=STR,
                           results={"type": "object",
                                    "additionalProperties": ref("ModelPrediction")}),
    "PredictJson": {
        "description": "One prediction per instance, in order; {\"image\": b64} is shorthand "
                       "for one instance.",
        "oneOf": [
            obj(("instances",), instances=array(
                {"oneOf": [obj(("b64",), b64=B64, **INSTANCE_OPTIONS),
                           obj(("path",), path={"type": "string", "description":
                               "A file inside images_root (relative, or absolute within)."},
                               **INSTANCE_OPTIONS)]}, minItems=1),
                top_k={"type": "integer", "minimum": 1}),
            obj(("image",), image=B64, top_k={"type": "integer", "minimum": 1},
                **INSTANCE_OPTIONS),
        ],
    },
    "PredictForm": obj(("image",), image=BINARY, top_k=INT, **INSTANCE_OPTIONS),
    "ModelInput": obj(("name", "shape", "dtype", "preprocess"), name=STR,
                      shape=array(nullable(INT)), dtype=STR, preprocess=STR),
    "ModelSummary": obj(("name", "version", "state"), name=STR, version=nullable(INT),
                        state={"enum": ["LOADING", "AVAILABLE", "FAILED"]},
                        input=ref("ModelInput"), labels=array(STR), accuracy=NUM, error=STR),
    "ModelList": obj(("models",), models=array(ref("ModelSummary"))),
    "ModelDetails": {"allOf": [ref("ModelSummary"), obj(
        architecture=STR, created=STR, outputs={"type": "object"},
        preprocess={"type": "object"}, per_class_accuracy=array(NUM), sha256=STR,
        tf_version=STR, training={"type": "object"}, load_seconds=NUM,
        layers=array(obj(("name", "op"), name=STR, op=STR, shape=nullable(array(nullable(INT))))),
        pool=obj(pool_size=INT, max_batch_size=INT, batch_timeout_ms=NUM, queue_size=INT),
        serving=nullable(INT), policy={"enum": ["latest", "pinned"]}, pinned=nullable(INT),
        versions=array(INT), previous_version=nullable(INT),
        last_reload_failure=nullable(obj(("version", "reason"), version=nullable(INT),
                                         reason=STR, code=STR, at=STR)))]},
    "ReloadRequest": obj(version={"type": "integer", "minimum": 1, "maximum": INT64_MAX,
                                  "description": "Serve and pin this version (a rollback); "
                                                 "omit to serve the newest and follow it."}),
    "ReloadResult": obj(("name", "version", "state"), name=STR, version=nullable(INT),
                        state={"enum": ["LOADING", "AVAILABLE", "FAILED"]},
                        previous_version=nullable(INT), policy={"enum": ["latest", "pinned"]},
                        pinned=nullable(INT)),
    "FeedbackRequest": {"oneOf": [
        obj(("request_id", "label"), request_id=REQUEST_ID, label=LABEL, instance=INDEX),
        obj(("request_id", "class"), request_id=REQUEST_ID, **{"class": INDEX},
            instance=INDEX),
    ], "description": "The true label of an earlier prediction (by its request_id); "
                      "instance picks one image of a batch."},
    "FeedbackResult": obj(("request_id", "label", "class", "updated"), request_id=STR,
                          label=STR, **{"class": INT}, updated=INT),
    "ServiceStatus": obj(("status", "models"), status={"enum": ["ok", "degraded"]},
                         models={"type": "object", "additionalProperties": obj(
                             ("state", "version"), state=STR, version=nullable(INT),
                             error=STR, queue_depth=INT, busy_workers=INT, batches=INT,
                             worker_restarts={"type": "object", "additionalProperties": INT},
                             load_seconds=NUM)}),
    "Alive": obj(("status",), status={"const": "alive"}),
    "Ready": obj(("status",), status={"const": "ready"}),
    "Recognized": obj(("digit", "probability"), digit=INT, probability=PROBABILITY),
    "SeedClassification": obj(("prediction", "elapsed_time_ms", "debug"), prediction=INT,
                              elapsed_time_ms=NUM,
                              debug=obj(("probabilities",), probabilities=array(PROBABILITY))),
    "SeedBatchClassification": obj(("responses",), responses=array(
        obj(("class", "probability"), **{"class": INT}, probability=PROBABILITY))),
    "SeedLabel": obj(("label",), label={"type": "integer", "minimum": 0, "maximum": 9}),
}


# -- responses and parameters ----------------------------------------------------------------
def json_ok(schema: str, description: str) -> dict[str, Any]:
    return {"200": {"description": description, "content": {JSON: {"schema": ref(schema)}}}}


def error(status: int, codes: tuple[str, ...] | None = None, media: str = JSON) -> dict[str, Any]:
    """The shared error shape, its code restricted to ``codes`` (default: the status's)."""
    codes = codes or ERROR_CODES[status]
    content = {JSON: {"schema": error_schema(codes)}} if media == JSON else {HTML: {"schema": STR}}
    response = {"description": f"{ERROR_WHEN[status]} Codes: {', '.join(codes)}.",
                "content": content}
    if status in (429, 503) and media == JSON:  # "try again later" always says when
        response["headers"] = {"Retry-After": RETRY_AFTER}
    return {str(status): response}


def error_schema(codes: tuple[str, ...]) -> dict[str, Any]:
    return {"allOf": [ref("Error")],
            "properties": {"error": {"properties": {"code": {"enum": list(codes)}}}}}


RETRY_AFTER = {"required": True, "description": "Seconds to wait before retrying.",
               "schema": {"type": "string", "pattern": "^[0-9]+$"}}


def errors(*statuses: int, media: str = JSON) -> dict[str, Any]:
    return {k: v for status in statuses for k, v in error(status, media=media).items()}


def query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema,
            "description": description}


def path_param(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": schema,
            "description": description}


OPTION_PARAMS = [
    query("top_k", {"type": "integer", "minimum": 1}, "How many ranked classes (default 5)."),
    query("x", NUM, "Crop centre x, pixels of the original image (raw bodies)."),
    query("y", NUM, "Crop centre y, pixels of the original image (raw bodies)."),
    query("crop", INSTANCE_OPTIONS["crop"], "Crop size, a fraction of the shorter side."),
]
MODEL_NAME = path_param("name", STR, "A served model, e.g. digits-cnn.")
MNIST_INDEX = path_param("idx", {"type": "integer", "minimum": 0, "maximum": 9999},
                         "An MNIST test image index.")
ADMIN_TOKEN = [{"bearerToken": []}, {"adminToken": []}]


def predict_body(json_schema: str = "PredictJson") -> dict[str, Any]:
    """The three body kinds, chosen by Content-Type."""
    content = {media: {"schema": BINARY} for media in RAW_IMAGE_TYPES}
    content["multipart/form-data"] = {"schema": ref("PredictForm")}
    content[JSON] = {"schema": ref(json_schema)}
    return {"required": True, "content": content,
            "description": "Raw image bytes (options in the query string; "
                           "application/octet-stream is sniffed), a multipart form with a "
                           "file field 'image', or JSON."}


def operation(summary: str, responses: dict[str, Any], tag: str, **more: Any) -> dict[str, Any]:
    return {"summary": summary, "tags": [tag], "responses": responses, **more}


# -- paths -------------------------------------------------------------------------------------
PATHS: dict[str, Any] = {
    "/v1/models": {"get": operation(
        "Served models: state, input, labels, accuracy.", {
            **json_ok("ModelList", "Every configured model."), **errors(405, 500)}, "models")},
    "/v1/models/{name}": {"parameters": [MODEL_NAME], "get": operation(
        "One model's manifest-derived metadata, layers, pool settings and versions.", {
            **json_ok("ModelDetails", "The model."), **errors(404, 405, 500)}, "models")},
    "/v1/models/{name}/predict": {"parameters": [MODEL_NAME], "post": operation(
        "Classify one or more images with one model.", {
            **json_ok("ModelPrediction", "One prediction per image, in order; the "
                                         "X-Request-ID header echoes request_id."),
            **errors(*PREDICT_ERRORS)}, "predict", parameters=OPTION_PARAMS,
        requestBody=predict_body())},
    "/v1/models/{name}/reload": {"parameters": [MODEL_NAME], "post": operation(
        "Admin: load the newest version (or pin {\"version\": N}, a rollback) beside the "
        "serving one and swap it in once warmed and through the QA gate.", {
            **json_ok("ReloadResult", "The model as it now serves."),
            **error(400), **error(401), **error(403, ("forbidden", "admin_disabled")),
            **error(404, ("model_not_found", "not_found")), **errors(405, 409, 500),
            **error(503, ("model_unavailable", "unavailable"))}, "admin",
        security=ADMIN_TOKEN,
        requestBody={"required": False, "content": {JSON: {"schema": ref("ReloadRequest")}}})},
    "/v1/predict": {"post": operation(
        "The same images through every available model (or ?models=a,b), concurrently.", {
            **json_ok("MultiPrediction", "Each model's prediction, by model name."),
            **errors(*PREDICT_ERRORS)}, "predict",
        parameters=[query("models", STR, "Comma-separated model names (default: every "
                                         "available model)."), *OPTION_PARAMS],
        requestBody=predict_body())},
    "/v1/feedback": {"post": operation(
        "Record the true label of an earlier prediction, for the next training run.", {
            **json_ok("FeedbackResult", "The label was recorded on `updated` records."),
            **error(400, (*ERROR_CODES[400], "bad_label")),
            **error(404, ("request_not_found", "feedback_disabled", "not_found")),
            **errors(405, 413, 415, 500),
            **error(503, ("labels_unavailable", "inputlog_unavailable"))}, "feedback",
        requestBody={"required": True, "content": {JSON: {"schema": ref("FeedbackRequest")}}})},
    "/status": {"get": operation(
        "ok, or degraded when a configured model FAILED; per-model state and queue.", {
            **json_ok("ServiceStatus", "The service's state."), **errors(405, 500)}, "health")},
    "/healthz": {"get": operation("Liveness: 200 while the process runs.", {
        **json_ok("Alive", "Alive."), **errors(405, 500)}, "health")},
    "/readyz": {"get": operation(
        "Readiness: 200 once every configured model is loaded and warmed.", {
            **json_ok("Ready", "Ready."), **error(503, ("not_ready",)), **errors(405, 500)},
        "health")},
    "/metrics": {"get": operation("Prometheus metrics (text exposition format 0.0.4).", {
        "200": {"description": "Metrics prefixed digits_.",
                "content": {"text/plain": {"schema": STR}}}, **errors(405, 500)},
        "operations")},
    "/openapi.json": {"get": operation("This document.", {
        "200": {"description": "OpenAPI 3.1.", "content": {JSON: {"schema": {
            "type": "object", "required": ["openapi", "paths"]}}}}, **errors(405, 500)},
        "operations")},
    "/recognize": {"post": operation(
        "Seed-compatible: {\"image\": b64} -> {\"digit\", \"probability\"} (default model).", {
            **json_ok("Recognized", "The best class."), **errors(*PREDICT_ERRORS)}, "seed",
        requestBody=predict_body())},
    "/mnist/classify": {"post": operation(
        "Seed-compatible: a raw image (or form), or JSON {\"requests\": [{\"image\": b64}]}.", {
            "200": {"description": "One image: its class and every probability; JSON "
                                   "requests: one class per request.",
                    "content": {JSON: {"schema": {"oneOf": [
                        ref("SeedClassification"), ref("SeedBatchClassification")]}}}},
            **errors(*PREDICT_ERRORS)}, "seed",
        requestBody={**predict_body(), "content": {
            **predict_body()["content"], JSON: {"schema": obj(("requests",), requests=array(
                obj(("image",), image=B64), minItems=1))}}})},
    "/mnist/classify/{idx}": {"parameters": [MNIST_INDEX], "get": operation(
        "Seed-compatible: classify MNIST test image idx.", {
            **json_ok("SeedClassification", "Its class and every probability."),
            **error(404, ("index_not_found", "not_found")), **errors(405, 500, 503, 504)},
        "seed")},
    "/mnist/image/{idx}": {"parameters": [MNIST_INDEX], "get": operation(
        "Seed-compatible: MNIST test image idx as JPEG (or ?format=png).", {
            "200": {"description": "The 28x28 image.",
                    "content": {"image/jpeg": {"schema": BINARY},
                                "image/png": {"schema": BINARY}}},
            **error(400, ("bad_parameter",)), **error(404, ("index_not_found", "not_found")),
            **errors(405, 500)}, "seed",
        parameters=[query("format", {"enum": ["jpeg", "jpg", "png"]}, "Image format.")])},
    "/mnist/label/{idx}": {"parameters": [MNIST_INDEX], "get": operation(
        "Seed-compatible: the label of MNIST test image idx.", {
            **json_ok("SeedLabel", "The label."),
            **error(404, ("index_not_found", "not_found")), **errors(405, 500)}, "seed")},
    "/": {"get": operation("The upload form (HTML); posts to /result.", {
        "200": {"description": "The form.", "content": {HTML: {"schema": STR}}},
        **errors(405, 500)}, "html")},
    "/result": {"post": operation(
        "The form's result page (HTML); with X-Requested-With: fetch, only the results "
        "fragment. Errors are HTML pages with the error's status.", {
            "200": {"description": "The results.", "content": {HTML: {"schema": STR}}},
            **errors(400, 403, 404, 405, 413, 415, 500, 503, 504, media=HTML)}, "html",
        requestBody={"required": True, "content": {"multipart/form-data": {"schema": obj(
            ("image",), image=BINARY, model={"type": "string", "description":
                                             "A model name, or 'all'."},
            x=NUM, y=NUM)}}})},
    "/feedback_form": {"post": operation(
        "The result page's \"Correct?\" buttons without JavaScript: record the label of a "
        "prediction (as POST /v1/feedback), then a thank-you page (HTML).", {
            "200": {"description": "Thanks.", "content": {HTML: {"schema": STR}}},
            **errors(400, 404, 405, 413, 415, 500, 503, media=HTML)}, "html",
        requestBody={"required": True, "content": {
            "application/x-www-form-urlencoded": {"schema": obj(
                ("request_id",), request_id=STR,
                label={"type": "string", "description": "\"Yes\": the predicted label."},
                correction={"type": "string", "description": "The label chosen instead."})}}})},
    "/static/{file}": {"parameters": [path_param("file", STR, "app.js or style.css.")],
                       "get": operation("The form's script and style sheet.", {
                           "200": {"description": "The file.",
                                   "content": {"text/css": {"schema": STR},
                                               "text/javascript": {"schema": STR}}},
                           **error(404, ("not_found",)), **errors(405, 500)}, "html")},
}

# -- answers given before a route's handler runs ---------------------------------------------
# With [auth] keys_file, service/web/access.py asks for a key (401) on the routes its
# POLICIES name, and rate-limits them (429, or 503 too_many_in_flight); the HTML form routes
# answer those as pages. The health and metrics routes need a key only when protect_health /
# protect_metrics say so.
KEYED = (access.KEY, access.ADMIN, access.FORM)
PROTECTABLE = (access.HEALTH, access.METRICS)


def add_error(responses: dict[str, Any], status: int, codes: tuple[str, ...],
              media: str = JSON) -> None:
    """Document ``codes`` under ``status`` in ``responses``, merged into what is there."""
    entry = responses.get(str(status))
    if entry is None:
        responses.update(error(status, codes, media))
        return
    content = entry["content"]
    if media == HTML:
        content.setdefault(HTML, {"schema": STR})
        return
    if JSON not in content:
        content[JSON] = {"schema": error_schema(codes)}
        return
    enum = content[JSON]["schema"]["properties"]["error"]["properties"]["code"]["enum"]
    enum.extend(code for code in codes if code not in enum)
    entry["description"] = f"{ERROR_WHEN[status]} Codes: {', '.join(enum)}."


def add_access_errors(path: str, responses: dict[str, Any]) -> None:
    # The connection guard (a request too slow to arrive, no worker free) answers any route,
    # in JSON even on the HTML routes: no handler has run.
    add_error(responses, 408, ERROR_CODES[408])
    add_error(responses, 503, ("overloaded",))
    policy = access.policy_for(path)
    media = HTML if policy == access.FORM else JSON
    keyed = policy in KEYED
    if keyed or policy in PROTECTABLE:
        add_error(responses, 401, ERROR_CODES[401], media)
    if keyed:
        add_error(responses, 429, ERROR_CODES[429], media)
        add_error(responses, 503, ("too_many_in_flight",), media)


def document_access_errors(paths: dict[str, Any]) -> None:
    """Add the answers of the connection guard, of API keys and rate limits, and of CherryPy's
    body reading to every operation they can reach."""
    for path, item in paths.items():
        for method, op in item.items():
            if method == "parameters":
                continue
            add_access_errors(path, op["responses"])
            # /v1/models/... take a bodiless POST as an empty body (tools.bodiless_post)
            if "requestBody" in op and not path.startswith("/v1/models/"):
                add_error(op["responses"], 411, ERROR_CODES[411],
                          HTML if access.policy_for(path) == access.FORM else JSON)
    add_error(paths["/v1/models/{name}/reload"]["post"]["responses"], 403, ("admin_required",))
    add_error(paths["/v1/feedback"]["post"]["responses"], 403, ("feedback_forbidden",))
    add_error(paths["/v1/feedback"]["post"]["responses"], 503, ("feedback_pending",))


document_access_errors(PATHS)


DESCRIPTION = """Send an image with one handwritten digit; get back which digit it is, with
probabilities. Predict routes take raw image bytes, a multipart form or JSON, chosen by
Content-Type. Every error has the same shape, `{"error": {"code", "message"}}`, and an HTTP
status that says whose fault it was."""


@functools.lru_cache(maxsize=1)
def document() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {"title": "digits", "version": "1", "description": DESCRIPTION},
        "paths": PATHS,
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {
                "bearerToken": {"type": "http", "scheme": "bearer",
                                "description": "Authorization: Bearer <[service] admin_token>"},
                "adminToken": {"type": "apiKey", "in": "header", "name": "X-Admin-Token"},
            },
        },
    }


@functools.lru_cache(maxsize=1)
def document_bytes() -> bytes:
    return json.dumps(document(), separators=(",", ":")).encode()
