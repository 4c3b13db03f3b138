"""The tester-facing HTML form: ``GET /`` and ``POST /result``.

``POST /result`` answers a full page (the form again, with the results under it) to a plain
form post, and only the results fragment (``_result.html``) when the request carries
``X-Requested-With: fetch`` (what ``static/app.js`` sends). Errors are rendered the same
way, as readable HTML with the error's HTTP status, never as JSON.
"""
from __future__ import annotations

import base64
import logging
from typing import Any

import cherrypy
import jinja2
from markupsafe import escape

from ..config import REPO_ROOT
from ..dataplane import Instance, ModelResult
from ..errors import InvalidInput, ServiceError, http_code
from ..models import preprocess
from ..models.registry import ModelState
from .api import request_context
from .bodies import check_image_bytes, instance_from_options
from .feedback import current_caller, feedback_fields, require_inputlog
from .responses import log_server_error, note_error

log = logging.getLogger("service.web")

TEMPLATES = jinja2.Environment(
    loader=jinja2.FileSystemLoader(REPO_ROOT / "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)


def percent(probability: float) -> str:
    """0.9912 -> "99.1%"; never rounds a near-certainty to 100% or a small chance to 0%."""
    if 0 < probability < 0.0005:
        return "<0.1%"
    if 0.9995 <= probability < 1:
        return ">99.9%"
    return f"{probability * 100:.1f}%"


TEMPLATES.filters["percent"] = percent

FRAGMENT_HEADER = "X-Requested-With"
FRAGMENT_VALUE = "fetch"
PREVIEW_PX = 224  # the enlarged model input is about this wide (28 px x 8)
TIMING_KEYS = ("decode", "preprocess", "queue", "inference", "total", "explain")
ERROR_TITLES = {  # by error code first, then by HTTP status
    "missing_image": "No image to read",
    "bad_parameter": "Please check the form",
    "blank_image": "No digit found",
    "several_digits": "More than one digit: click on the one to read",
    "model_not_found": "Unknown model",
    400: "That image could not be used",
    404: "Not found",
    405: "Upload an image with the form",
    413: "That file is too large",
    415: "That file type is not supported",
    503: "The model is not available right now",
    504: "The model took too long to answer",
}


def _upload_instance(image: Any, x: Any, y: Any, max_bytes: int) -> Instance:
    if isinstance(image, list):
        raise InvalidInput("Upload one image at a time.", "bad_parameter")
    if image is None or getattr(image, "file", None) is None:
        raise InvalidInput("No image was uploaded: choose an image file, then press "
                           "Recognize.", "missing_image")
    data = image.file.read()
    if not data:
        raise InvalidInput("The chosen file is empty (0 bytes); choose another image.",
                           "missing_image")
    check_image_bytes(data, max_bytes, "The chosen file")
    # The API's own rules for x and y (numbers; both or neither).
    return instance_from_options(data, {"x": x, "y": y})


def _form_values(model: Any, x: Any, y: Any) -> dict[str, str]:
    """What the user sent, to fill the form in again (file inputs cannot be refilled)."""
    def text(value: Any) -> str:
        return value if isinstance(value, str) else ""
    return {"model": text(model) or "all", "x": text(x), "y": text(y), "api_key": _form_key()}


def _form_key() -> str:
    """The API key typed into the form (checked by tools.access), or ""."""
    return getattr(cherrypy.serving.request, "form_api_key", "")


def _result_view(result: ModelResult, labels: list[str] | None = None) -> dict[str, Any]:
    best = result.predictions[0]
    array = result.inputs[0]
    height, width = array.shape[:2]
    scale = max(1, PREVIEW_PX // max(height, width))
    png = preprocess.to_png(array, scale=scale)
    return {
        "model": result.model,
        "version": result.version,
        "label": best.label,
        "class_id": best.class_id,
        "probability": best.probability,
        "top": [{"class_id": c, "label": label, "probability": p} for c, label, p in best.top_k],
        "image": "data:image/png;base64," + base64.b64encode(png).decode("ascii"),
        "image_width": width * scale,
        "image_height": height * scale,
        "input_size": f"{width}\u00d7{height}",
        "scale": scale,
        "timings": [(k, result.timing_ms[k]) for k in TIMING_KEYS if k in result.timing_ms],
        "labels": labels or sorted(label for _, label, _ in best.top_k),  # for feedback
        "explanation": _explanation_view(result, labels),
    }


def _explanation_view(result: ModelResult, labels: list[str] | None) -> dict[str, Any] | None:
    """The first image's heat maps: for the class read, and for the runner-up."""
    if not result.explanations:
        return None
    first = result.explanations[0]
    names = labels or [str(i) for i in range(max(first["class"], first["second"]["class"]) + 1)]
    return {"png": first["png"], "label": names[first["class"]],
            "second_png": first["second"]["png"], "second_label": names[first["second"]["class"]]}


def _labels(registry: Any, name: str) -> list[str] | None:
    try:
        return registry.get(name).labels
    except ServiceError:  # swapped out meanwhile: the top-k labels will do
        return None


def _wants_fragment() -> bool:
    return cherrypy.request.headers.get(FRAGMENT_HEADER, "").strip().lower() == FRAGMENT_VALUE


def page_context(app: Any) -> dict[str, Any]:
    """What every page's frame shows: the serving models, the upload limit."""
    statuses = app.registry.statuses()
    max_bytes = app.predictor.limits.max_body_bytes
    return {
        "models": [{"name": s.name, "version": s.version}
                   for s in statuses if s.state is ModelState.AVAILABLE],
        "unavailable": [{"name": s.name, "state": s.state.value, "error": s.error}
                        for s in statuses if s.state is not ModelState.AVAILABLE],
        "max_bytes": max_bytes,
        "max_size": _human_bytes(max_bytes),
    }


def _render(app: Any, template: str, fragment: bool, **context: Any) -> str:
    context.setdefault("results", [])
    context.setdefault("error", None)
    context.setdefault("filename", "")
    context.setdefault("form", {"model": "all", "x": "", "y": "", "api_key": _form_key()})
    context["needs_key"] = app.access.form_needs_key()
    context.setdefault("request_id", None)
    # The fragment goes into a page whose script sends feedback; a full page posts a form.
    context.setdefault("feedback", app.inputlog is not None)
    context["fragment"] = fragment
    if fragment:
        return TEMPLATES.get_template("_result.html").render(**context)
    return TEMPLATES.get_template(template).render(**page_context(app), **context)


def _respond(app: Any, template: str, fragment: bool | None = None, **context: Any) -> bytes:
    fragment = _wants_fragment() if fragment is None else fragment
    headers = cherrypy.response.headers
    headers["Content-Type"] = "text/html; charset=utf-8"
    if template != "index.html":
        headers["Vary"] = FRAGMENT_HEADER
        headers["Cache-Control"] = "no-store"
    return _render(app, template, fragment, **context).encode("utf-8")


def _error_response(app: Any, status: int, code: str, message: str,
                    headers: dict | None = None, form: dict | None = None) -> bytes:
    note_error(code)
    cherrypy.response.status = status
    cherrypy.response.headers.update(headers or {})
    log_server_error(status, code, message)
    title = ERROR_TITLES.get(code) or ERROR_TITLES.get(status, "Something went wrong")
    error = {"status": status, "code": code, "message": message, "title": title}
    context = {"error": error}
    if form:
        context["form"] = form
    return _respond(app, "result.html", **context)


def html_error_page(status: str, message: str, traceback: str = "", version: str = "") -> str:
    """``error_page.default`` for /result: CherryPy's HTTP errors as the HTML result page."""
    code = int(str(status).split()[0])
    try:
        app = cherrypy.request.app.root
        limit = app.predictor.limits.max_body_bytes
        text = {
            405: "This page shows the result of an upload: choose an image below and press "
                 "Recognize.",
            413: f"The upload is larger than the server accepts ({_human_bytes(limit)}); "
                 "choose a smaller image.",
            500: "The server hit an unexpected error; it has been logged.",
        }.get(code) or str(message)
        body = _error_response(app, code, http_code(code), text)
        return body.decode("utf-8")
    except Exception:  # never let the error page itself fail
        log.error("the HTML error page failed", exc_info=True)
        cherrypy.response.headers["Content-Type"] = "text/html; charset=utf-8"
        return (f"<!doctype html><title>Error {code}</title><h1>Error {code}</h1>"
                f"<p>{escape(str(message))}</p><p><a href=\"/\">Back to "
                "the form</a></p>")


def _human_bytes(size: int) -> str:
    if size < 1024:
        return f"{size} bytes"
    value, unit = size / 1024, "KB"
    for bigger in ("MB", "GB"):
        if value < 1024:
            break
        value, unit = value / 1024, bigger
    return f"{value:,.1f}".rstrip("0").rstrip(".") + f" {unit}"


# -- handlers (routes.py says which path and method each serves) -------------------------
def index(app: Any, /, **_: Any) -> bytes:
    return _respond(app, "index.html", fragment=False)


def result(app: Any, /, image: Any = None, x: Any = None, y: Any = None, model: Any = "all",
           **_: Any) -> bytes:
    """POST /result: the upload's predictions as the page (or its fragment)."""
    form = cherrypy.serving.request.form_values = _form_values(model, x, y)
    instance = _upload_instance(image, x, y, app.predictor.limits.max_image_bytes)
    if not isinstance(model, str):
        raise InvalidInput("Choose one model, or all models.", "bad_parameter")
    names = None if model in ("", "all") else [model]
    # top_k=None: the plane's default, the top 5 (or every label, for fewer than 5).
    context = request_context()
    # explain: one more batched session.run per model, for the card's heat maps
    results = app.plane.predict(names, [instance], top_k=None, context=context, explain=True)
    views = [_result_view(r, _labels(app.registry, r.model)) for r in results.values()]
    return _respond(app, "result.html", results=views, form=form,
                    filename=getattr(image, "filename", None) or "",
                    request_id=context.request_id)


def feedback_form(app: Any, /, request_id: Any = None, label: Any = None,
                  correction: Any = None, **_: Any) -> bytes:
    """The "Correct?" buttons without JavaScript: record the label, then say thanks."""
    chosen = label or correction  # "Yes" sends the predicted label; "Send" the chosen one
    answer = require_inputlog(app.inputlog).feedback(
        **feedback_fields({"request_id": request_id, "label": chosen}),
        caller=current_caller())
    return _respond(app, "feedback.html", fragment=False, answer=answer)


def render_error(exc: ServiceError) -> bytes:
    """A ServiceError on a form route, as the HTML result page (the form filled in again)."""
    app = cherrypy.request.app.root
    form = getattr(cherrypy.serving.request, "form_values", None)
    return _error_response(app, exc.status, exc.code, exc.message, exc.headers, form)
