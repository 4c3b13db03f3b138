"""GET /metrics moves as requests are made; access, prediction and model logs as JSON lines."""
from __future__ import annotations

import json
import logging

import requests
from prometheus_client.parser import text_string_to_metric_families

from support import FIXTURES, REPO, ServerProcess
from service import logs
from service.config import LogSettings, load_settings
from service.models import store

PNG7 = (FIXTURES / "digit7_28.png").read_bytes()
BLANK = (FIXTURES / "blank.png").read_bytes()
CNN = "/v1/models/digits-cnn/predict"
MODELS = ("digits-cnn", "digits-rnn")
# the version the server serves: the newest shipped one
CNN_VERSION = store.list_versions(REPO / "graphs", "digits-cnn")[-1]


def scrape(url: str) -> dict[tuple[str, frozenset], float]:
    """Every sample of GET /metrics as {(name, labels): value}."""
    response = requests.get(url + "/metrics", timeout=10)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(response.text) for s in family.samples}


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def predict(url: str, data: bytes = PNG7) -> requests.Response:
    return requests.post(url + CNN, data=data, headers={"Content-Type": "image/png"}, timeout=30)


def test_counters_and_histograms_move_with_requests(server):
    before = scrape(server)
    n = 3
    for _ in range(n):
        assert predict(server).status_code == 200
    assert predict(server, BLANK).status_code == 400
    assert requests.get(server + "/mnist/label/123", timeout=10).status_code == 200
    after = scrape(server)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    route = "/v1/models/{name}/predict"
    assert delta("digits_http_requests_total", route=route, method="POST", status="200",
                 protocol="native") == n
    assert delta("digits_http_requests_total", route=route, method="POST", status="400",
                 protocol="native") == 1
    assert delta("digits_http_request_duration_seconds_count", route=route) == n + 1
    assert delta("digits_http_rejected_requests_total", code="blank_image", status="400") == 1
    for phase in ("decode", "preprocess", "queue", "inference", "total"):
        assert delta("digits_prediction_duration_seconds_count", model="digits-cnn",
                     version=str(CNN_VERSION), phase=phase) == n
    assert delta("digits_prediction_batch_size_count", model="digits-cnn") == n
    assert delta("digits_prediction_batch_size_sum", model="digits-cnn") == n
    assert delta("digits_session_run_batch_size_count", model="digits-cnn", version=str(CNN_VERSION)) >= 1
    # One series for every MNIST index, not one per index.
    assert delta("digits_http_requests_total", route="/mnist/label/{idx}", method="GET",
                 status="200", protocol="seed") == 1
    assert not any("123" in str(labels) for _, labels in after)


def test_rejections_of_cherrypy_errors_are_counted_by_code(server):
    before = scrape(server)
    assert requests.get(server + "/no/such/route", timeout=10).status_code == 404
    assert requests.get(server + CNN, timeout=10).status_code == 405
    after = scrape(server)
    for code, status in (("not_found", "404"), ("method_not_allowed", "405")):
        key = ("digits_http_rejected_requests_total",
               frozenset({"code": code, "status": status}.items()))
        assert after.get(key, 0) - before.get(key, 0) == 1


def test_scrape_time_gauges_and_model_loads(server):
    samples = scrape(server)
    for model in MODELS:
        assert ("digits_model_queue_depth", frozenset({"model": model}.items())) in samples
        assert ("digits_model_busy_workers", frozenset({"model": model}.items())) in samples
        assert value(samples, "digits_model_workers", model=model) >= 1
        assert value(samples, "digits_model_state", model=model, state="AVAILABLE") == 1
        assert value(samples, "digits_model_loads_total", model=model, kind="load",
                     outcome="ok") >= 1
        assert value(samples, "digits_model_load_duration_seconds_count", model=model,
                     kind="load") >= 1
    # The shared server runs with the input log on: its counters are read at scrape time.
    assert predict(server).status_code == 200
    names = {name for name, _ in scrape(server)}
    assert {"digits_inputlog_written_total", "digits_inputlog_queue_depth"} <= names


def test_metrics_only_answers_get(server):
    response = requests.post(server + "/metrics", timeout=10)
    assert response.status_code == 405 and response.json()["error"]["code"] == "method_not_allowed"


# -- logs ----------------------------------------------------------------------------------------
def test_json_logs_go_to_the_configured_file(tmp_path):
    log_file = tmp_path / "logs" / "service.jsonl"
    proc = ServerProcess(tmp_path, '[service]\nmodels = ["digits-cnn"]\n'
                                   '[inputlog]\nenabled = False\n'
                                   f'[logging]\nformat = "json"\nfile = "{log_file}"\n')
    proc.start()
    try:
        ok = predict(proc.url)
        assert ok.status_code == 200
        assert predict(proc.url, BLANK).status_code == 400
        assert requests.get(proc.url + "/mnist/label/7", timeout=10).status_code == 200
    finally:
        assert proc.stop() == 0
    lines = [json.loads(line) for line in log_file.read_text().splitlines()]
    assert all({"ts", "level", "logger", "message"} <= set(line) for line in lines)
    request_id = ok.headers["X-Request-ID"]

    access = [line for line in lines if line.get("event") == "access"]
    served = next(a for a in access if a["request_id"] == request_id)
    assert served["method"] == "POST" and served["path"] == CNN and served["status"] == 200
    assert served["route"] == "/v1/models/{name}/predict" and served["client"] == "127.0.0.1"
    assert served["duration_ms"] > 0 and served["bytes"] == len(ok.content)
    assert any(a["status"] == 400 and a["error"] == "blank_image" for a in access)
    assert any(a["route"] == "/mnist/label/{idx}" for a in access)

    prediction = next(line for line in lines if line.get("event") == "prediction")
    assert prediction["request_id"] == request_id
    assert (prediction["model"], prediction["version"], prediction["batch_size"]) == (
        "digits-cnn", CNN_VERSION, 1)
    assert set(prediction["timing_ms"]) == {"decode", "preprocess", "queue", "inference", "total"}

    loaded = next(line for line in lines if line.get("event") == "model_loaded")
    assert loaded["model"] == "digits-cnn" and loaded["load_seconds"] > 0
    # CherryPy's engine messages come through the same handler, in the same format.
    assert any(line["logger"] == "cherrypy.error" and "Bus STARTED" in line["message"]
               for line in lines)
    # Nothing went to the console: the file replaces stderr.
    assert "Bus STARTED" not in proc.log()


def test_text_is_the_default_format():
    assert load_settings(None).logging.format == "text"
    record = logging.LogRecord("service.models", logging.INFO, __file__, 1, "loaded %s",
                               ("digits-cnn",), None)
    line = logs.formatter_for(LogSettings()).format(record)
    assert line.endswith("service.models INFO loaded digits-cnn") and not line.startswith("{")


def test_log_file_rotates(tmp_path):
    settings = LogSettings(format="json", file=tmp_path / "rot.log", max_bytes=2000,
                           backup_count=2)
    logs.configure(settings, screen=False)
    logger = logging.getLogger("service.test_rotation")
    try:
        for i in range(100):
            logger.info("line %d", i, extra={"event": "test", "i": i})
    finally:
        logs.configure(LogSettings(), screen=False)  # detach the file handler
    files = sorted(tmp_path.glob("rot.log*"))
    assert [f.name for f in files] == ["rot.log", "rot.log.1", "rot.log.2"]
    assert all(json.loads(line)["event"] == "test"
               for f in files for line in f.read_text().splitlines())
