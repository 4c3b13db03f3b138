"""`python -m service classify`: a folder of MNIST PNGs in digit-named folders, against the
real server; a server that refuses with 503 (max_in_flight) is waited out as Retry-After
says; a bad file is isolated from its batch."""
from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from service.models import datasets
from support import REPO, ServerProcess

COUNT = 200


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """200 MNIST test digits as PNGs under <digit>/<index>.png."""
    root = tmp_path_factory.mktemp("digits")
    images, labels = datasets.load_mnist("test")
    for index in range(COUNT):
        target = root / str(labels[index]) / f"{index:05d}.png"
        target.parent.mkdir(exist_ok=True)
        Image.fromarray(images[index]).save(target)
    return root


@pytest.fixture(scope="module")
def busy_server(tmp_path_factory):
    """One request in flight per client: the rest get 503 too_many_in_flight, Retry-After 1."""
    tmp = tmp_path_factory.mktemp("bulk-server")
    proc = ServerProcess(tmp, '[service]\nmodels = ["digits-cnn"]\n'
                              '[ratelimit]\nmax_in_flight = 1\n'
                              '[model:digits-cnn]\ninject_run_delay_s = 0.05\n').start()
    yield proc
    proc.stop()


def classify(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "service", "classify", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("protocol", ["native", "v2"])
def test_a_folder_is_classified_scored_and_written_with_503s_retried(busy_server, folder,
                                                                     tmp_path, protocol):
    out, picture = tmp_path / "results.csv", tmp_path / "confusion.png"
    done = classify(str(folder), "--url", busy_server.url, "--batch", "20", "--concurrency",
                    "4", "--out", str(out), "--confusion", str(picture), "--protocol", protocol)
    assert done.returncode == 0, done.stdout + done.stderr
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == COUNT and not any(r["error"] for r in rows)
    assert all(r["model"] == "digits-cnn" and r["request_id"] and r["version"] for r in rows)
    right = sum(int(r["class"]) == int(Path(r["path"]).parent.name) for r in rows)
    assert right >= 0.97 * COUNT
    assert f"accuracy: {right / COUNT:.4%} on {COUNT} images" in done.stdout
    retried = int(done.stdout.split(" request(s) retried")[0].rsplit(", ", 1)[1])
    assert retried > 0  # four threads, one request in flight allowed: 503s were waited out
    assert "img/s" in done.stderr  # the progress bar
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(json.loads(rows[0]["top_k"])) == 3


@pytest.mark.parametrize("protocol, says", [("native", "400 invalid_image:"), ("v2", "400: ")])
def test_a_bad_file_fails_alone_and_the_exit_status_says_so(busy_server, folder, tmp_path,
                                                            protocol, says):
    mixed = tmp_path / "mixed"
    (mixed / "7").mkdir(parents=True)
    for source in sorted((folder / "7").glob("*.png"))[:5]:
        (mixed / "7" / source.name).write_bytes(source.read_bytes())
    (mixed / "7" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    out = tmp_path / "results.jsonl"
    done = classify(str(mixed), "--url", busy_server.url, "--batch", "6", "--out", str(out),
                    "--no-progress", "--protocol", protocol)
    assert done.returncode == 1
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    failed = [r for r in rows if r["error"]]
    assert [Path(r["path"]).name for r in failed] == ["broken.png"]
    assert failed[0]["error"].startswith(says)
    assert sum(r["class"] == 7 for r in rows) == 5


def test_missing_paths_and_empty_folders_are_usage_errors(tmp_path):
    assert classify(str(tmp_path / "nowhere"), "--no-progress").returncode == 2
    assert "no image files" in classify(str(tmp_path), "--no-progress").stderr
