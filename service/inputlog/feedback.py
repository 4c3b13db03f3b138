"""Feedback: the true label of logged predictions, checked against their models' labels."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from ..errors import Forbidden, InvalidInput, NotFound, Unavailable
from .records import Connection, labels, request_records, set_feedback
from .writer import LabelsFor, Writer

log = logging.getLogger("service.inputlog")


@dataclass(frozen=True)
class Caller:
    """The API key asking, as the owner check sees it."""

    key_id: str
    admin: bool


def give_feedback(writer: Writer, labels_for: LabelsFor | None, request_id: str,
                  label: str | None, class_id: int | None, instance: int | None,
                  caller: Caller | None) -> dict[str, Any]:
    """Record the true label of every record of ``request_id`` (or of one ``instance``).

    Give ``label`` or ``class_id``; it must be one of the labels of the models that answered.
    A ``caller`` may only label its own predictions, unless it is an admin key.
    """
    with writer.db.borrow() as conn:
        rows = request_records(conn, request_id)
        if not rows and writer.behind():
            written = writer.flush()  # the request may still be waiting in the queue
            rows = request_records(conn, request_id)
            if not rows and not written:
                raise Unavailable("Recent predictions are still being written to the input "
                                  "log; retry shortly.", "feedback_pending", retry_after=2)
        if not rows:
            raise NotFound(f"No logged prediction has request id {request_id!r}.",
                           "request_not_found")
        rows = _of_instance(rows, request_id, instance)
        _check_owner(rows, caller)
        label, class_id = _resolve(conn, rows, label, class_id, labels_for)
        updated = set_feedback(conn, [r["id"] for r in rows], label, class_id)
    return {"request_id": request_id, "label": label, "class": class_id, "updated": updated}


def _resolve(conn: Connection, rows: list[Any], label: str | None,
             class_id: int | None, labels_for: LabelsFor | None) -> tuple[str, int]:
    """(label, class id), checked against the labels of every model in ``rows``."""
    resolved: tuple[str, int] | None = None
    for model, version in sorted({(r["model"], r["version"]) for r in rows}):
        known = labels(conn, model, version) or _current_labels(model, labels_for)
        if class_id is not None:
            if not 0 <= class_id < len(known):
                raise InvalidInput(f"class must be from 0 to {len(known) - 1} for model "
                                   f"{model}, got {class_id}.", "bad_label")
            pair = (known[class_id], class_id)
        elif label in known:
            pair = (label, known.index(label))
        else:
            raise InvalidInput(f"{label!r} is not a label of model {model}; expected one "
                               f"of {known}.", "bad_label")
        if resolved is not None and pair != resolved:
            raise InvalidInput("The models of this request label their classes differently; "
                               "send the label and the instance.", "bad_label")
        resolved = pair
    assert resolved is not None
    return resolved


def _current_labels(model: str, labels_for: LabelsFor | None) -> list[str]:
    """For records logged before their model's labels were saved: the served model's."""
    try:
        if labels_for is not None:
            return list(labels_for(model))
    except Exception as exc:
        log.warning("labels of model %s unavailable: %s", model, exc)
    raise Unavailable(f"The labels of model {model} are not known now; try again later.",
                      "labels_unavailable", retry_after=5)


def _check_owner(rows: list[Any], caller: Caller | None) -> None:
    """With API keys, feedback on another key's prediction needs an admin key."""
    if caller is None or caller.admin:
        return
    if any(row["api_key_id"] != caller.key_id for row in rows):
        raise Forbidden("This prediction was made with another API key; only that key or an "
                        "admin key may give feedback on it.", "feedback_forbidden")


def _of_instance(rows: list[Any], request_id: str,
                 instance: int | None) -> list[Any]:
    """The records of image ``instance`` of the request (all of them for None)."""
    if instance is None:
        return rows
    count = 1 + max(row["instance"] for row in rows)
    if not 0 <= instance < count:
        raise InvalidInput(f"'instance' must be from 0 to {count - 1}: request {request_id!r} "
                           f"had {count} image(s); got {instance}.", "bad_parameter")
    return [row for row in rows if row["instance"] == instance]
