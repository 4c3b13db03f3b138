"""THE route table: every route declared once, with its methods, handler, access policy,
answer format and OpenAPI operation.

The dispatcher (``dispatch.TableDispatcher``), the metrics' route templates, the access
policies and ``/openapi.json`` are all read from ``ROUTES``: adding a route is adding a row.
"""
from __future__ import annotations

import dataclasses

from ..errors import NotFound
from .bodies import PREDICT_BODY_PROCESSORS
from . import admin, api, compat, model_pages, observability, tfserving, ui, v2
from .access import (ADMIN, FEEDBACK_SUMMARY, FORM, HEALTH, KEY, METRICS, OPEN,
                     unmatched_policy)
from .dispatch import MESSAGE_ANSWER, Answer, Route, RouteTable
from .feedback import feedback, feedback_summary
from .openapi import (ADMIN_TOKEN, B64, BINARY, HTML, JSON, NUM, OPTION_PARAMS,
                      PREDICT_ERRORS, STR, array, build_document, error, errors, json_body,
                      json_ok, obj, operation, predict_body, query, ref)

INFER_ERRORS = (400, 404, 405, 413, 422, 500, 503, 504)  # the protocols' predict routes

HTML_ANSWER = Answer(ui.render_error, ui.html_error_page)  # the form's routes: HTML pages
BODILESS_POST = {"tools.bodiless_post.on": True}  # a bare POST .../reload is not a 411
# A body of image bytes labelled as curl's default form type gets our 415 and its fix.
IMAGE_BODY = {"request.body.processors": PREDICT_BODY_PROCESSORS}
# The protocols' bodies are read as they are, whatever the Content-Type (curl -d's included).
RAW_BODY = {"request.body.processors": {}}
# TF Serving's paths end in ":verb": the native /v1/models/{name} takes no ':' in a name (so
# x:regress is no route), TF Serving's take the shortest name before their own suffix.
NATIVE_NAME, TF_NAME = "{name:[^/:]+}", "{name:[^/]+?}"


def with_protocol(protocol: str, *routes: Route) -> list[Route]:
    """``routes``, labelled ``protocol`` in the metrics."""
    return [dataclasses.replace(route, protocol=protocol) for route in routes]


def tf_serving(suffix: str, methods: tuple[str, ...], handler, operation_: dict, *,
               pins: tuple[str, ...] = ("", "/versions/{version}", "/labels/{label}"),
               config: dict | None = None) -> list[Route]:
    """A TF Serving route and its pinned forms (``/versions/{v}``, ``/labels/{l}``)."""
    return [Route(f"/v1/models/{TF_NAME}{pin}{suffix}", methods, handler, KEY, operation_,
                  MESSAGE_ANSWER, config or {}, "tfserving") for pin in pins]


def open_inference(suffix: str, methods: tuple[str, ...], handler, operation_: dict,
                   config: dict | None = None) -> list[Route]:
    """A V2 model route and its pinned form (``/versions/{v}``)."""
    return [Route(f"/v2/models/{{name}}{pin}{suffix}", methods, handler, KEY, operation_,
                  MESSAGE_ANSWER, config or {}, "v2") for pin in ("", "/versions/{version}")]


def _not_found(app, /, **_) -> None:
    """What a path under /static answers when staticdir had no file for it."""
    raise NotFound("There is nothing at this URL.", "not_found")


ROUTES = (
    # -- the API -----------------------------------------------------------------------------
    Route("/v1/models", ("GET",), api.list_models, KEY, operation(
        "Served models: state, input, labels, accuracy.", {
            **json_ok("ModelList", "Every configured model."), **errors(405, 500)}, "models")),
    # -- TensorFlow Serving's REST API (before /v1/models/{name}: its paths end in :verb) ----
    *tf_serving(":predict", ("POST",), tfserving.predict, operation(
        "TF Serving Predict: {\"instances\": [{\"b64\": ...}]} (row) or {\"inputs\": ...} "
        "(columnar); numbers shaped like the model's input skip preprocessing.", {
            **json_ok("TFPredictResponse", "One probability row per example."),
            **errors(*INFER_ERRORS)}, "tfserving",
        requestBody=json_body("TFPredictRequest")), config=RAW_BODY),
    *tf_serving(":classify", ("POST",), tfserving.classify, operation(
        "TF Serving Classify: {\"examples\": [{\"image_bytes\": {\"b64\": ...}}]} -> each "
        "example's [label, score] pairs, best first.", {
            **json_ok("TFClassifyResponse", "The classes of each example, best first."),
            **errors(*INFER_ERRORS)}, "tfserving",
        requestBody=json_body("TFClassifyRequest")), config=RAW_BODY),
    *tf_serving("/metadata", ("GET",), tfserving.get_metadata, operation(
        "TF Serving model metadata: the signatures (serving_default: encoded images; tensor: "
        "the model's input).", {
            **json_ok("TFMetadata", "GetModelMetadataResponse."),
            **errors(400, 404, 405, 500, 503)}, "tfserving")),
    *tf_serving("", ("GET",), tfserving.get_status, operation(
        "TF Serving model status of one version (or of the version a label names).", {
            **json_ok("TFModelStatus", "GetModelStatusResponse."),
            **errors(400, 404, 405, 500, 503)}, "tfserving"),
        pins=("/versions/{version}", "/labels/{label}")),
    Route(f"/v1/models/{NATIVE_NAME}", ("GET",), api.get_model, KEY, operation(
        "One model's manifest-derived metadata, layers, pool settings and versions; "
        "model_version_status answers TF Serving's model status call.", {
            **json_ok("ModelDetails", "The model."), **errors(404, 405, 500)}, "models")),
    Route("/v1/models/{name}/predict", ("POST",), api.predict_one, KEY, operation(
        "Classify one or more images with one model.", {
            **json_ok("ModelPrediction", "One prediction per image, in order; the "
                                         "X-Request-ID header echoes request_id."),
            **errors(*PREDICT_ERRORS)}, "predict", parameters=OPTION_PARAMS,
        requestBody=predict_body()), config={**BODILESS_POST, **IMAGE_BODY}),
    Route("/v1/models/{name}/feedback-summary", ("GET",), feedback_summary, FEEDBACK_SUMMARY,
          operation(
              "Live accuracy from feedback: per version, predictions logged, how many got a "
              "label, the share of those that was right, and the digits most often confused "
              "([auth] feedback_summary: who may read it).", {
                  **json_ok("FeedbackSummary", "Per version, oldest first."),
                  **error(403, ("admin_disabled", "admin_required")),
                  **error(404, ("model_not_found", "feedback_disabled", "not_found")),
                  **errors(405, 500)}, "feedback")),
    Route("/v1/models/{name}/reload", ("POST",), admin.reload, ADMIN, operation(
        "Admin: load the newest version (or pin {\"version\": N}, a rollback) beside the "
        "serving one and swap it in once warmed and through the QA gate.", {
            **json_ok("ReloadResult", "The model as it now serves."),
            **error(400), **error(401),
            **error(403, ("forbidden", "admin_disabled", "admin_required")),
            **error(404, ("model_not_found", "not_found")), **errors(405, 409, 500),
            **error(503, ("model_unavailable", "unavailable"))}, "admin",
        security=ADMIN_TOKEN,
        requestBody={"required": False, "content": {JSON: {"schema": ref("ReloadRequest")}}}),
        config=BODILESS_POST),
    Route("/v1/predict", ("POST",), api.predict_many, KEY, operation(
        "The same images through every available model (or ?models=a,b), concurrently.", {
            **json_ok("MultiPrediction", "Each model's prediction, by model name."),
            **errors(*PREDICT_ERRORS)}, "predict",
        parameters=[query("models", STR, "Comma-separated model names (default: every "
                                         "available model)."), *OPTION_PARAMS],
        requestBody=predict_body()), config=IMAGE_BODY),
    Route("/v1/feedback", ("POST",), feedback, KEY, operation(
        "Record the true label of an earlier prediction, for the next training run.", {
            **json_ok("FeedbackResult", "The label was recorded on `updated` records."),
            **error(400), **error(403, ("feedback_forbidden",)),
            **error(404, ("request_not_found", "feedback_disabled", "not_found")),
            **errors(405, 413, 415, 500),
            **error(503, ("labels_unavailable", "inputlog_unavailable", "feedback_pending"))},
        "feedback",
        requestBody=json_body("FeedbackRequest"))),
    # -- the Open Inference Protocol (KServe V2) ----------------------------------------------
    Route("/v2", ("GET",), v2.server_metadata, HEALTH, operation(
        "V2 server metadata: name, version, extensions.", {
            **json_ok("V2ServerMetadata", "The server."), **errors(405, 500)}, "v2"),
        MESSAGE_ANSWER, protocol="v2"),
    Route("/v2/health/live", ("GET",), v2.server_live, HEALTH, operation(
        "V2 liveness.", {**json_ok("V2Live", "Alive."), **errors(405, 500)}, "v2"),
        MESSAGE_ANSWER, protocol="v2"),
    Route("/v2/health/ready", ("GET",), v2.server_ready, HEALTH, operation(
        "V2 readiness: 200 once every model is loaded, else 503.", {
            **json_ok("V2Ready", "Ready."), **errors(405, 500, 503)}, "v2"),
        MESSAGE_ANSWER, protocol="v2"),
    *open_inference("", ("GET",), v2.model_metadata, operation(
        "V2 model metadata: versions, platform, inputs (BYTES encoded images, or the FP32 "
        "model input) and outputs.", {
            **json_ok("V2ModelMetadata", "The model."),
            **errors(400, 404, 405, 500, 503)}, "v2")),
    *open_inference("/ready", ("GET",), v2.model_ready, operation(
        "V2 model readiness.", {
            **json_ok("V2ModelReady", "Ready."), **errors(400, 404, 405, 500, 503)},
        "v2")),
    *open_inference("/infer", ("POST",), v2.infer, operation(
        "V2 inference: a BYTES input of encoded images (base64 in JSON, or raw with the binary "
        "tensor data extension), or an FP32 input shaped like the model's.", {
            "200": {"description": "The requested outputs (probabilities, class).",
                    "content": {JSON: {"schema": ref("V2InferResponse")},
                                "application/octet-stream": {"schema": BINARY}}},
            **errors(*INFER_ERRORS)}, "v2",
        requestBody={"required": True, "content": {
            JSON: {"schema": ref("V2InferRequest")},
            "application/octet-stream": {"schema": BINARY}}}), config=RAW_BODY),
    # -- health and operations ---------------------------------------------------------------
    Route("/status", ("GET",), api.service_status, HEALTH, operation(
        "ok, or degraded when a configured model FAILED; per-model state and queue.", {
            **json_ok("ServiceStatus", "The service's state."), **errors(405, 500)}, "health")),
    Route("/healthz", ("GET",), api.healthz, HEALTH, operation(
        "Liveness: 200 while the process runs.", {
            **json_ok("Alive", "Alive."), **errors(405, 500)}, "health")),
    Route("/readyz", ("GET",), api.readyz, HEALTH, operation(
        "Readiness: 200 once every configured model is loaded and warmed.", {
            **json_ok("Ready", "Ready."), **error(503, ("not_ready",)), **errors(405, 500)},
        "health")),
    Route("/metrics", ("GET",), observability.metrics, METRICS, operation(
        "Prometheus metrics (text exposition format 0.0.4).", {
            "200": {"description": "Metrics prefixed digits_.",
                    "content": {"text/plain": {"schema": STR}}}, **errors(405, 500)},
        "operations")),
    Route("/openapi.json", ("GET",), observability.openapi_json, OPEN, operation(
        "This document.", {
            "200": {"description": "OpenAPI 3.1.", "content": {JSON: {"schema": {
                "type": "object", "required": ["openapi", "paths"]}}}}, **errors(405, 500)},
        "operations")),
    # -- the earlier digit services' routes --------------------------------------------------
    *with_protocol("seed",
        Route("/recognize", ("POST",), compat.recognize, KEY, operation(
            "Seed-compatible: {\"image\": b64} -> {\"digit\", \"probability\"} (default model).", {
                **json_ok("Recognized", "The best class."), **errors(*PREDICT_ERRORS)}, "seed",
            requestBody=predict_body()), config=IMAGE_BODY),
        Route("/mnist/classify", ("POST",), compat.mnist_classify, KEY, operation(
            "Seed-compatible: a raw image (or form), or JSON {\"requests\": [{\"image\": b64}]}.", {
                "200": {"description": "One image: its class and every probability; JSON "
                                       "requests: one class per request.",
                        "content": {JSON: {"schema": {"oneOf": [
                            ref("SeedClassification"), ref("SeedBatchClassification")]}}}},
                **errors(*PREDICT_ERRORS)}, "seed",
            requestBody={**predict_body(), "content": {
                **predict_body()["content"], JSON: {"schema": obj(("requests",), requests=array(
                    obj(("image",), image=B64), minItems=1))}}}), config=IMAGE_BODY),
        Route("/mnist/classify/{idx}", ("GET",), compat.mnist_classify_index, KEY, operation(
            "Seed-compatible: classify MNIST test image idx.", {
                **json_ok("SeedClassification", "Its class and every probability."),
                **error(404, ("index_not_found", "not_found")), **errors(405, 500, 503, 504)},
            "seed")),
        Route("/mnist/image/{idx}", ("GET",), compat.mnist_image, OPEN, operation(
            "Seed-compatible: MNIST test image idx as JPEG (or ?format=png).", {
                "200": {"description": "The 28x28 image.",
                        "content": {"image/jpeg": {"schema": BINARY},
                                    "image/png": {"schema": BINARY}}},
                **error(400, ("bad_parameter",)), **error(404, ("index_not_found", "not_found")),
                **errors(405, 500)}, "seed",
            parameters=[query("format", {"enum": ["jpeg", "jpg", "png"]}, "Image format.")])),
        Route("/mnist/label/{idx}", ("GET",), compat.mnist_label, OPEN, operation(
            "Seed-compatible: the label of MNIST test image idx.", {
                **json_ok("SeedLabel", "The label."),
                **error(404, ("index_not_found", "not_found")), **errors(405, 500)}, "seed"))),
    # -- the tester's pages ------------------------------------------------------------------
    *with_protocol("html",
        Route("/", ("GET",), ui.index, OPEN, operation(
            "The upload form (HTML); posts to /result.", {
                "200": {"description": "The form.", "content": {HTML: {"schema": STR}}},
                **errors(405, 500)}, "html")),
        Route("/result", ("POST",), ui.result, FORM, operation(
            "The form's result page (HTML); with X-Requested-With: fetch, only the results "
            "fragment. Errors are HTML pages with the error's status.", {
                "200": {"description": "The results.", "content": {HTML: {"schema": STR}}},
                **errors(400, 403, 404, 405, 413, 415, 422, 500, 503, 504, media=HTML)}, "html",
            requestBody={"required": True, "content": {"multipart/form-data": {"schema": obj(
                ("image",), image=BINARY, model={"type": "string", "description":
                                                 "A model name, or 'all'."},
                x=NUM, y=NUM)}}}), HTML_ANSWER),
        Route("/feedback_form", ("POST",), ui.feedback_form, FORM, operation(
            "The result page's \"Correct?\" buttons without JavaScript: record the label of a "
            "prediction (as POST /v1/feedback), then a thank-you page (HTML).", {
                "200": {"description": "Thanks.", "content": {HTML: {"schema": STR}}},
                **errors(400, 404, 405, 413, 415, 500, 503, media=HTML)}, "html",
            requestBody={"required": True, "content": {
                "application/x-www-form-urlencoded": {"schema": obj(
                    ("request_id",), request_id=STR,
                    label={"type": "string", "description": "\"Yes\": the predicted label."},
                    correction={"type": "string",
                                "description": "The label chosen instead."})}}}), HTML_ANSWER),
        Route("/models", ("GET",), model_pages.models, FORM, operation(
            "The models page (HTML): each model's test accuracy, per-digit accuracy, "
            "confusion matrix, versions and live accuracy from feedback.", {
                "200": {"description": "The page.", "content": {HTML: {"schema": STR}}},
                **errors(405, 500, media=HTML)}, "html",
            parameters=[query("api_key", STR, "An API key, where the form needs one.")]),
            HTML_ANSWER),
        Route("/models/{name}/confusion.png", ("GET",), model_pages.confusion_png, OPEN,
              operation("The serving version's confusion matrix on the MNIST test set.", {
                  "200": {"description": "A PNG.", "content": {"image/png": {"schema": BINARY}}},
                  **error(404, ("model_not_found", "not_found")), **errors(405, 500)}, "html")),
        Route("/static/{file:.+}", ("GET",), _not_found, OPEN, operation(
            "The form's script and style sheet.", {
                "200": {"description": "The file.",
                        "content": {"text/css": {"schema": STR}, "text/javascript": {"schema": STR}}},
                **error(404, ("not_found",)), **errors(405, 500)}, "html"))),
)
TABLE = RouteTable(ROUTES)


def route_template(path: str) -> str:
    """``/mnist/label/123`` -> ``/mnist/label/{idx}``; ``unmatched`` for any other path."""
    return TABLE.template(path)


def openapi_document() -> dict:
    """The OpenAPI document of the table, as ``GET /openapi.json`` serves it."""
    return build_document(ROUTES)


def policy_for(path: str) -> str:
    matched = TABLE.match(path)
    return matched[0].policy if matched else unmatched_policy(path)
