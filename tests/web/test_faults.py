"""Faults on disk after start-up: the version in memory keeps serving, untouched."""
from __future__ import annotations

import shutil
import time

import requests

from support import FIXTURES, REPO, ServerProcess

IMAGE = (FIXTURES / "digit7_28.png").read_bytes()
PREDICT = "/v1/models/digits-cnn/predict"


def probabilities(url: str) -> list[float]:
    response = requests.post(url + PREDICT, data=IMAGE, params={"top_k": 10},
                             headers={"Content-Type": "image/png"}, timeout=10)
    assert response.status_code == 200, response.text
    return [entry["probability"] for entry in response.json()["predictions"][0]["top_k"]]


def test_a_model_file_corrupted_after_start_up_does_not_touch_the_served_version(tmp_path):
    graphs = tmp_path / "graphs"
    shutil.copytree(REPO / "graphs" / "digits-cnn" / "1", graphs / "digits-cnn" / "1")
    proc = ServerProcess(tmp_path, f'[service]\nmodels = ["digits-cnn"]\ngraphs_dir = "{graphs}"'
                                   '\n[store]\npoll_interval_s = 0.2\n').start()
    try:
        before = probabilities(proc.url)
        model_pb = graphs / "digits-cnn" / "1" / "model.pb"
        model_pb.write_bytes(b"\x00garbage" * 1000)  # same version, bytes ruined
        time.sleep(1.0)  # several polls of the store
        assert probabilities(proc.url) == before
        model_pb.unlink()
        time.sleep(0.5)
        assert probabilities(proc.url) == before
        status = requests.get(proc.url + "/status", timeout=10).json()
        assert status["models"]["digits-cnn"]["state"] == "AVAILABLE"
        assert requests.get(proc.url + "/readyz", timeout=10).status_code == 200
    finally:
        proc.stop()
