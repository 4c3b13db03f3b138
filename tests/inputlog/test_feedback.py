"""Feedback in-process: every record of a request labelled, even while it is still queued
(over HTTP, with API keys and their owner check: tests/web/test_feedback.py)."""
from __future__ import annotations

import pytest

from inputlog_support import DIGIT7, query, record, started
from service.errors import InvalidInput, NotFound


def test_feedback_labels_every_record_of_a_request_even_while_queued(settings):
    log = started(settings)
    record(log, [DIGIT7], "r1", models=("digits-cnn", "digits-rnn"))
    # No flush: feedback itself waits for the writer when the id is not in the database yet.
    assert log.feedback("r1", label="1") == {"request_id": "r1", "label": "1", "class": 1,
                                             "updated": 2}
    assert log.feedback("r1", class_id=7)["label"] == "7"
    with pytest.raises(NotFound) as missing:
        log.feedback("nope", label="7")
    assert missing.value.code == "request_not_found"
    for bad in ({"label": "x"}, {"class_id": 10}):
        with pytest.raises(InvalidInput) as error:
            log.feedback("r1", **bad)
        assert error.value.code == "bad_label"
    log.stop()
    rows = query(settings.dir, "SELECT feedback_label, feedback_class, feedback_time FROM predictions")
    assert [(r[0], r[1]) for r in rows] == [("7", 7), ("7", 7)] and all(r[2] for r in rows)
