"""The OpenAPI 3.1 description, built from the route table (``build_document(ROUTES)``).

The schemas and the pieces operations are made of (the predict body kinds, the error
responses, the query options) are written once here; each route declares its operation
with them in ``routes.py``. Schemas are JSON Schema 2020-12, as OpenAPI 3.1 specifies;
``tests/web/test_openapi.py`` checks real responses against them.
"""
from __future__ import annotations

import copy
from typing import Any, Iterable

from ..errors import CODES
from . import access
from .bodies import RAW_IMAGE_TYPES
from .feedback import MAX_LABEL_CHARS, MAX_REQUEST_ID_CHARS
from .fields import INT64_MAX
from .responses import to_json

JSON = "application/json"
HTML = "text/html"
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
    422: "The image holds several digits, well apart: error.boxes gives each one's "
         "[left, top, width, height] in the image's pixels; send one, or pick one with x, y.",
    429: "Over the client's request or image rate limit; Retry-After says when to retry.",
    500: "Unexpected server error (logged; no details are sent).",
    503: "Model FAILED or loading, its session worker restarted, queue full, too many requests "
         "in flight, or not ready; Retry-After says when to retry.",
    504: "No answer within request_timeout_s.",
}
PREDICT_ERRORS = (400, 403, 404, 405, 413, 415, 422, 500, 503, 504)


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

TENSOR_SHAPE = array({"type": "integer", "minimum": -1})
V2_TENSOR = obj(("name", "datatype", "shape"), name=STR, datatype=STR, shape=TENSOR_SHAPE)
V2_SCHEMAS: dict[str, Any] = {
    "V2ServerMetadata": obj(("name", "version", "extensions"), name=STR, version=STR,
                            extensions=array(STR)),
    "V2Live": obj(("live",), live=BOOL),
    "V2Ready": obj(("ready",), ready=BOOL),
    "V2ModelReady": obj(("name", "ready"), name=STR, ready=BOOL),
    "V2ModelMetadata": obj(("name", "versions", "platform", "inputs", "outputs"), name=STR,
                           versions=array(STR), platform=STR, inputs=array(V2_TENSOR),
                           outputs=array(V2_TENSOR)),
    "V2Tensor": {"allOf": [V2_TENSOR, obj(parameters={"type": "object"},
                                          data={"type": "array"})]},
    "V2InferRequest": obj(
        ("inputs",), id=STR, parameters=obj(binary_data_output=BOOL),
        inputs=array(ref("V2Tensor"), minItems=1, description=(
            "One input: BYTES [N] of encoded images (base64 strings in JSON, or raw with "
            "binary_data_size), or FP32 shaped like the model's input.")),
        outputs=array(obj(("name",), name={"enum": ["probabilities", "class"]},
                          parameters=obj(binary_data=BOOL, classification={
                              "type": "integer", "minimum": 0}))),),
    "V2InferResponse": obj(("model_name", "model_version", "outputs"), model_name=STR,
                           model_version=STR, id=STR, outputs=array(ref("V2Tensor"))),
}
TF_TENSOR_INFO = obj(("dtype", "name", "tensor_shape"), dtype=STR, name=STR, tensor_shape=obj(
    ("dim",), dim=array(obj(("size",), size=STR, name=STR)), unknown_rank=BOOL))
TF_SIGNATURE = obj(("inputs", "outputs", "method_name"), method_name=STR,
                   inputs={"type": "object", "additionalProperties": TF_TENSOR_INFO},
                   outputs={"type": "object", "additionalProperties": TF_TENSOR_INFO})
TF_SERVING_SCHEMAS: dict[str, Any] = {
    "TFPredictRequest": {
        **obj(signature_name={"enum": ["", "serving_default", "tensor"]},
              instances={"type": "array", "minItems": 1}, inputs={}),
        "description": "instances (row format) or inputs (columnar): each example "
                       "{\"b64\": <encoded image>}, or numbers shaped like the model's input; "
                       "named ({\"image_bytes\": ...}) or not."},
    "TFPredictResponse": obj(predictions=array(array(PROBABILITY)),
                             outputs=array(array(PROBABILITY))),
    "TFClassifyRequest": obj(("examples",), signature_name=STR, examples=array(
        {"type": "object", "minProperties": 1, "maxProperties": 1}, minItems=1)),
    "TFClassifyResponse": obj(("result",), result=array(array(
        {"type": "array", "prefixItems": [STR, PROBABILITY], "minItems": 2, "maxItems": 2}))),
    "TFMetadata": obj(("model_spec", "metadata"), model_spec=obj(
        ("name", "signature_name", "version"), name=STR, signature_name=STR, version=STR),
        metadata=obj(("signature_def",), signature_def=obj(("signature_def",), signature_def={
            "type": "object", "additionalProperties": TF_SIGNATURE}))),
    "TFVersionStatus": obj(("version", "state", "status"), version=STR,
                           state={"enum": ["LOADING", "AVAILABLE", "END"]},
                           status=obj(("error_code", "error_message"), error_code=STR,
                                      error_message=STR)),
    "TFModelStatus": obj(("model_version_status",),
                         model_version_status=array(ref("TFVersionStatus"))),
}

SCHEMAS: dict[str, Any] = {
    "Error": {**obj(("error",), error=obj(("code", "message"), code=STR, message=STR,
                                          boxes=array(array(NUM, minItems=4, maxItems=4)))),
              "additionalProperties": False},
    "Class": obj(("class", "label", "probability"), **{"class": INT}, label=STR,
                 probability=PROBABILITY),
    "Prediction": obj(("class", "label", "probability", "top_k"), **{"class": INT}, label=STR,
                      probability=PROBABILITY, top_k=array(ref("Class"), minItems=1),
                      explanation=ref("Explanation")),
    "ClassMap": obj(("class", "map", "png"), **{"class": INT},
                    map=array(array(NUM, minItems=28, maxItems=28), minItems=28, maxItems=28),
                    png={"type": "string", "pattern": "^data:image/png;base64,"}),
    "Explanation": {"allOf": [ref("ClassMap"), obj(
        ("method", "second"), method={"const": "occlusion"}, second=ref("ClassMap"))],
        "description": "With explain=true: per input pixel, the mean drop of the class's "
                       "log-probability when a 6x6 patch covering it is blanked (positive: it "
                       "supported the class), for the best class and (second) the runner-up; "
                       "png: the map over the 28x28 input, red for, blue against."},
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
                top_k={"type": "integer", "minimum": 1}, explain=BOOL),
            obj(("image",), image=B64, top_k={"type": "integer", "minimum": 1}, explain=BOOL,
                **INSTANCE_OPTIONS),
        ],
    },
    "PredictForm": obj(("image",), image=BINARY, top_k=INT, explain=BOOL, **INSTANCE_OPTIONS),
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
                                         reason=STR, code=STR, at=STR)),
        model_version_status=array(ref("TFVersionStatus")), served_by=nullable(STR))]},
    "FeedbackSummary": obj(("name", "versions"), name=STR, versions=array(obj(
        ("version", "logged", "labelled", "correct", "accuracy", "confused"), version=INT,
        logged=INT, labelled=INT, correct=INT, accuracy=nullable(NUM),
        confused=array(obj(("true", "read_as", "count"), true=INT, read_as=INT, count=INT))))),
    "ReloadRequest": obj(version={"type": "integer", "minimum": 1, "maximum": INT64_MAX,
                                  "description": "Serve and pin this version (a rollback); "
                                                 "omit to serve the newest and follow it."}),
    "ReloadResult": obj(("name", "version", "state"), name=STR, version=nullable(INT),
                        state={"enum": ["LOADING", "AVAILABLE", "FAILED"]},
                        previous_version=nullable(INT), policy={"enum": ["latest", "pinned"]},
                        pinned=nullable(INT), workers={
                            "type": "object", "additionalProperties": nullable(INT),
                            "description": "With several workers: the version each serves "
                                           "once the others followed."}),
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
                             load_seconds=NUM)},
                         worker=STR, workers=array(obj(
                             ("name", "pid", "state", "ready", "restarts"), name=STR,
                             pid=nullable(INT), state=STR, ready={"type": "boolean"},
                             restarts=INT, last_exit=nullable(STR),
                             models={"type": "object"}))),
    "Alive": obj(("status",), status={"const": "alive"}),
    "Ready": obj(("status",), status={"const": "ready"}),
    "Recognized": obj(("digit", "probability"), digit=INT, probability=PROBABILITY),
    "SeedClassification": obj(("prediction", "elapsed_time_ms", "debug"), prediction=INT,
                              elapsed_time_ms=NUM,
                              debug=obj(("probabilities",), probabilities=array(PROBABILITY))),
    "SeedBatchClassification": obj(("responses",), responses=array(
        obj(("class", "probability"), **{"class": INT}, probability=PROBABILITY))),
    "SeedLabel": obj(("label",), label={"type": "integer", "minimum": 0, "maximum": 9}),
    # -- the standard protocols -------------------------------------------------------------
    "MessageError": {**obj(("error",), error=STR), "additionalProperties": False,
                     "description": "The error shape of the V2 and TF Serving routes."},
    **V2_SCHEMAS,
    **TF_SERVING_SCHEMAS,
}


# -- responses and parameters ----------------------------------------------------------------
def json_ok(schema: str, description: str) -> dict[str, Any]:
    return {"200": {"description": description, "content": {JSON: {"schema": ref(schema)}}}}


def error(status: int, codes: tuple[str, ...] | None = None, media: str = JSON) -> dict[str, Any]:
    """The shared error shape, its code restricted to ``codes`` (default: the status's)."""
    codes = codes or CODES[status]
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
    query("explain", {"enum": ["true", "false", "1", "0", "yes", "no", "on", "off"]},
          "Add each image's occlusion map (explanation; at most 16 images a request)."),
]
MODEL_NAME = path_param("name", {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._-]*$"},
                        "A served model, e.g. digits-cnn.")
MNIST_INDEX = path_param("idx", {"type": "integer", "minimum": 0, "maximum": 9999},
                         "An MNIST test image index.")
PATH_PARAMS = {"name": MODEL_NAME, "idx": MNIST_INDEX,
               "file": path_param("file", STR, "app.js or style.css."),
               "version": path_param("version", STR, "A model version, e.g. 2: answered only "
                                                     "while that version serves."),
               "label": path_param("label", STR, "A version label: stable (the serving "
                                                 "version).")}
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


def json_body(schema: str) -> dict[str, Any]:
    return {"required": True, "content": {JSON: {"schema": ref(schema)}}}


def operation(summary: str, responses: dict[str, Any], tag: str, **more: Any) -> dict[str, Any]:
    return {"summary": summary, "tags": [tag], "responses": responses, **more}


# -- answers given before a route's handler runs ---------------------------------------------
# With [auth] keys_file, service/web/access.py asks for a key (401) on the routes its
# POLICIES name, and rate-limits them (429, or 503 too_many_in_flight); the HTML form routes
# answer those as pages. The health and metrics routes need a key only when protect_health /
# protect_metrics say so.
KEYED = (access.KEY, access.ADMIN, access.FORM, access.FEEDBACK_SUMMARY)
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


def add_access_errors(route: Any, responses: dict[str, Any]) -> None:
    """The answers of the connection guard (any route, in JSON even on the HTML routes: no
    handler has run), of API keys and rate limits, and of CherryPy's body reading."""
    add_error(responses, 408, ("request_timeout",))
    add_error(responses, 503, ("overloaded",))
    media = HTML if route.policy == access.FORM else JSON
    keyed = route.policy in KEYED
    if keyed or route.policy in PROTECTABLE:
        add_error(responses, 401, CODES[401], media)
    if keyed:
        add_error(responses, 429, CODES[429], media)
        add_error(responses, 503, ("too_many_in_flight",), media)


def path_item(route: Any) -> dict[str, Any]:
    """The route's OpenAPI path item: its path parameters, and one operation per method."""
    item: dict[str, Any] = {}
    if route.params:
        item["parameters"] = [PATH_PARAMS[name] for name in route.params]
    for method in route.methods:
        op = copy.deepcopy(dict(route.operation))
        add_access_errors(route, op["responses"])
        # A route with tools.bodiless_post takes a bare POST as an empty body: no 411.
        if "requestBody" in op and not route.config.get("tools.bodiless_post.on"):
            add_error(op["responses"], 411, CODES[411], HTML if route.policy == access.FORM
                      else JSON)
        if route.answer.error_schema != "Error":
            _errors_as(route.answer.error_schema, op["responses"])
        item[method.lower()] = op
    return item


def _errors_as(schema: str, responses: dict[str, Any]) -> None:
    """The JSON error answers of a route with the protocols' error shape, ``schema``."""
    for status, response in responses.items():
        if int(status) >= 400 and JSON in response["content"]:
            response["content"][JSON] = {"schema": ref(schema)}
            response["description"] = ERROR_WHEN[int(status)]


DESCRIPTION = """Send an image with one handwritten digit; get back which digit it is, with
probabilities. Predict routes take raw image bytes, a multipart form or JSON, chosen by
Content-Type. Every error has the same shape, `{"error": {"code", "message"}}`, and an HTTP
status that says whose fault it was."""


def build_document(routes: Iterable[Any]) -> dict[str, Any]:
    """The OpenAPI 3.1 document of ``routes`` (the route table's rows)."""
    return {
        "openapi": "3.1.0",
        "info": {"title": "digits", "version": "1", "description": DESCRIPTION},
        "paths": {route.template: path_item(route) for route in routes},
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {
                "bearerToken": {"type": "http", "scheme": "bearer",
                                "description": "Authorization: Bearer <[service] admin_token>"},
                "adminToken": {"type": "apiKey", "in": "header", "name": "X-Admin-Token"},
            },
        },
    }


def document_bytes(document: dict[str, Any]) -> bytes:
    return to_json(document)
