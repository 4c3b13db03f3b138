"""Build model versions for reload tests from the shipped CNN: good, corrupt or gated ones."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

from support import REPO

NAME = "digits-cnn"
SHIPPED = REPO / "graphs" / NAME / "1"
KINDS = ("good", "corrupt_pb", "checksum", "qa_gate")


def build_version(root: Path, version: int, kind: str = "good") -> Path:
    """``root/<NAME>/<version>/`` as a copy of the shipped graph, damaged as ``kind`` says:
    ``corrupt_pb`` garbage graph with a matching checksum; ``checksum`` a flipped byte;
    ``qa_gate`` a manifest claiming 50% accuracy."""
    assert kind in KINDS, kind
    target = Path(root) / NAME / str(version)
    shutil.copytree(SHIPPED, target)
    manifest = json.loads((target / "manifest.json").read_text())
    manifest["version"] = version
    pb = target / "model.pb"
    if kind == "corrupt_pb":
        pb.write_bytes(b"\x00not a graph\xff" * 64)
        manifest["sha256"] = hashlib.sha256(pb.read_bytes()).hexdigest()
    elif kind == "checksum":
        data = bytearray(pb.read_bytes())
        data[len(data) // 2] ^= 0xFF
        pb.write_bytes(bytes(data))
    elif kind == "qa_gate":
        manifest["accuracy"] = 0.5
    (target / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return target


def publish_local(graphs_dir: Path, version: int, kind: str = "good") -> Path:
    """Add a version to a live graphs dir the way training does: build aside, then rename."""
    staging = Path(graphs_dir) / NAME / f".staging-{uuid.uuid4().hex}"
    built = build_version(staging, version, kind)
    final = Path(graphs_dir) / NAME / str(version)
    os.rename(built, final)
    shutil.rmtree(staging)
    return final


def publish_s3(tmp: Path, version: int, to: str, config: Path, kind: str = "good") -> str:
    """Publish with the real CLI (``python -m service publish``); returns its output."""
    graphs = Path(tmp) / f"publish-{uuid.uuid4().hex}"
    build_version(graphs, version, kind)
    result = subprocess.run(
        [sys.executable, "-m", "service", "publish", "--model", NAME, "--version", str(version),
         "--to", to, "--graphs-dir", str(graphs), "--config", str(config)],
        cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout
