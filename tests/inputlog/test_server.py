"""A real server logs every predict route and body kind, to a local directory or an S3
bucket (a real moto server), and its predictions succeed while the image store is down."""
from __future__ import annotations

import base64

import pytest
import requests

from inputlog_support import DIGIT2, DIGIT7, PHOTO, integrity, query, sha, stored_files
from support import ServerProcess, free_port


# Two rows shaped like the CNN's input: a vertical bar, then the same bar at half intensity.
TENSOR = [1.0 if col == 14 else 0.0 for _row in range(28) for col in range(28)] + \
         [0.5 if col == 14 else 0.0 for _row in range(28) for col in range(28)]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def every_route(url: str) -> dict[str, tuple[str, int]]:
    """One request per route and body kind -> {request id: (route, records expected)}."""
    png = {"Content-Type": "image/png"}
    calls = {
        "raw": (requests.post, "/v1/models/digits-cnn/predict", {"data": DIGIT7, "headers": png}, 1),
        "multipart": (requests.post, "/v1/models/digits-rnn/predict",
                      {"files": {"image": ("d.gif", DIGIT2)}}, 1),
        "json-b64": (requests.post, "/v1/models/digits-cnn/predict",
                     {"json": {"instances": [{"b64": b64(DIGIT7)},
                                             {"b64": b64(DIGIT2), "x": 56, "y": 56, "crop": 0.9}]}}, 2),
        "json-path": (requests.post, "/v1/models/digits-cnn/predict",
                      {"json": {"instances": [{"path": "photo_digit.jpg"}]}}, 1),
        "multi-model": (requests.post, "/v1/predict", {"data": DIGIT7, "headers": png}, 2),
        "recognize": (requests.post, "/recognize", {"json": {"image": b64(DIGIT7)}}, 1),
        "classify-raw": (requests.post, "/mnist/classify", {"data": DIGIT7, "headers": png}, 1),
        "classify-json": (requests.post, "/mnist/classify",
                          {"json": {"requests": [{"image": b64(DIGIT7)}, {"image": b64(DIGIT2)}]}}, 2),
        "classify-idx": (requests.get, "/mnist/classify/42", {}, 1),
        "html": (requests.post, "/result", {"files": {"image": ("d.png", DIGIT7)}}, 2),
        # Already preprocessed: the log keeps each row as a PNG of the model's input.
        "v2-fp32": (requests.post, "/v2/models/digits-cnn/infer",
                    {"json": {"inputs": [{"name": "image", "datatype": "FP32",
                                          "shape": [2, 28, 28, 1], "data": TENSOR}]}}, 2),
    }
    seen = {}
    for name, (method, route, kwargs, records) in calls.items():
        response = method(url + route, timeout=30, **kwargs)
        assert response.status_code == 200, (name, response.text[:300])
        seen[response.headers["X-Request-ID"]] = (route, records)
    return seen


@pytest.fixture(scope="module")
def logged_server(tmp_path_factory):
    """A server whose every predict route was called once, then stopped (flushing its log)."""
    tmp = tmp_path_factory.mktemp("inputlog-server")
    (tmp / "images").mkdir()
    (tmp / "images" / "photo_digit.jpg").write_bytes(PHOTO)
    logdir = tmp / "log"
    proc = ServerProcess(tmp, f'[service]\nimages_root = "{tmp / "images"}"\n'
                              f'[inputlog]\ndir = "{logdir}"\n').start()
    try:
        expected = every_route(proc.url)
    finally:
        code = proc.stop()
    return logdir, expected, code, proc.log()


def test_every_predict_route_and_body_kind_is_logged(logged_server):
    logdir, expected, code, server_log = logged_server
    assert code == 0 and "flushing the input log" in server_log
    rows = query(logdir, "SELECT request_id, route, client, COUNT(*) AS n FROM predictions "
                         "GROUP BY request_id")
    assert {r["request_id"]: (r["route"], r["n"]) for r in rows} == expected
    assert {r["client"] for r in rows} == {"127.0.0.1"}
    html = next(rid for rid, (route, _) in expected.items() if route == "/result")
    models = query(logdir, "SELECT model FROM predictions WHERE request_id = ?", (html,))
    assert sorted(r[0] for r in models) == ["digits-cnn", "digits-rnn"]
    assert integrity(logdir) == "ok"


def test_preprocessed_rows_are_kept_as_pngs_of_the_model_input(logged_server):
    import io

    import numpy as np
    from PIL import Image

    logdir, expected = logged_server[:2]
    infer = next(rid for rid, (route, _) in expected.items() if route.startswith("/v2/"))
    rows = query(logdir, "SELECT p.instance, p.image_format, p.image_width, i.key FROM "
                         "predictions p JOIN images i ON i.sha256 = p.image_sha256 "
                         "WHERE request_id = ? ORDER BY instance", (infer,))
    assert [(r["image_format"], r["image_width"]) for r in rows] == [("PNG", 28)] * 2
    for row, peak in zip(rows, (255, 128)):
        pixels = np.asarray(Image.open(io.BytesIO((logdir / row["key"]).read_bytes())))
        assert pixels.shape == (28, 28) and pixels[:, 14].min() >= peak - 1
        assert pixels[:, 13].max() == 0


def test_the_server_stores_each_distinct_image_once(logged_server):
    logdir = logged_server[0]
    shas = {r[0] for r in query(logdir, "SELECT image_sha256 FROM predictions")}
    files = stored_files(logdir)
    assert len(files) == len(shas) == len(query(logdir, "SELECT sha256 FROM images"))
    for path in files:
        assert sha(path.read_bytes()) == path.name.split(".")[0]
    assert sha(DIGIT7) in shas and sha(DIGIT2) in shas and sha(PHOTO) in shas
    crop = query(logdir, "SELECT x, y, crop FROM predictions WHERE crop IS NOT NULL")
    assert [tuple(r) for r in crop] == [(56.0, 56.0, 0.9)]


def test_images_go_to_an_s3_bucket_under_the_prefix(s3_server, tmp_path):
    s3_server.client().create_bucket(Bucket="inputlog-test")
    logdir = tmp_path / "log"
    proc = ServerProcess(tmp_path, s3_server.config_section() +
                         f'[inputlog]\ndir = "{logdir}"\nbackend = "s3"\n'
                         'bucket = "inputlog-test"\nprefix = "logged/"\n'
                         '[service]\nmodels = ["digits-cnn"]\n').start()
    try:
        response = requests.post(proc.url + "/v1/models/digits-cnn/predict", data=DIGIT7,
                                 headers={"Content-Type": "image/png"}, timeout=30)
        assert response.status_code == 200
    finally:
        assert proc.stop() == 0
    key = f"logged/images/{sha(DIGIT7)[:2]}/{sha(DIGIT7)}.png"
    body = s3_server.client().get_object(Bucket="inputlog-test", Key=key)["Body"].read()
    assert body == DIGIT7
    assert len(query(logdir, "SELECT id FROM predictions")) == 1
    assert not (logdir / "images").exists()  # the database stays local; images do not


def test_predictions_succeed_when_the_image_store_is_down(tmp_path):
    logdir = tmp_path / "log"
    proc = ServerProcess(tmp_path, f'[s3]\nendpoint_url = "http://127.0.0.1:{free_port()}"\n'
                                   'region = "us-east-1"\naccess_key_id = "x"\n'
                                   'secret_access_key = "x"\n'
                                   f'[inputlog]\ndir = "{logdir}"\nbackend = "s3"\n'
                                   'bucket = "gone"\n[service]\nmodels = ["digits-cnn"]\n').start()
    try:
        for _ in range(3):
            response = requests.post(proc.url + "/v1/models/digits-cnn/predict", data=DIGIT7,
                                     headers={"Content-Type": "image/png"}, timeout=30)
            assert response.status_code == 200
    finally:
        assert proc.stop() == 0
    assert "input log dropped" in proc.log() and "store_error" in proc.log()
    assert query(logdir, "SELECT id FROM predictions") == []
