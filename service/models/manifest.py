"""The manifest that travels with every frozen graph: what it is, what it expects, how good it is."""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .preprocess import PreprocessSpec

MANIFEST_FILE = "manifest.json"
GRAPH_FILE = "model.pb"


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: list[int | None]
    dtype: str = "float32"

    @property
    def op_name(self) -> str:
        """``image:0`` -> ``image``: the name protocols give the tensor."""
        return self.name.partition(":")[0]


@dataclass(frozen=True)
class Manifest:
    name: str
    version: int
    created: str
    architecture: str
    input: TensorInfo
    outputs: dict[str, str]  # role -> tensor name; "probabilities" is required
    labels_file: str
    preprocess: PreprocessSpec
    accuracy: float
    per_class_accuracy: list[float]
    sha256: str
    tf_version: str
    training: dict[str, Any] = field(default_factory=dict)

    @property
    def output_name(self) -> str:
        return self.outputs["probabilities"]

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["preprocess"] = self.preprocess.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Manifest":
        """Validate a parsed manifest; ``ValueError`` names the first bad field."""
        _require(data, dict, "manifest")
        fields = {
            "name": str, "version": int, "created": str, "architecture": str, "input": dict,
            "outputs": dict, "labels_file": str, "preprocess": dict, "accuracy": (int, float),
            "per_class_accuracy": list, "sha256": str, "tf_version": str,
        }
        for key, kind in fields.items():
            if key not in data:
                raise ValueError(f"manifest field {key!r} is missing")
            _require(data[key], kind, key)
        if "probabilities" not in data["outputs"]:
            raise ValueError("manifest field 'outputs' has no 'probabilities' tensor")
        if not 0.0 <= data["accuracy"] <= 1.0:
            raise ValueError("manifest field 'accuracy' must be within [0, 1]")
        if len(data["sha256"]) != 64:
            raise ValueError("manifest field 'sha256' is not a sha256 hex digest")
        tensor = data["input"]
        for key in ("name", "shape"):
            if key not in tensor:
                raise ValueError(f"manifest field 'input.{key}' is missing")
        return cls(
            name=data["name"], version=data["version"], created=data["created"],
            architecture=data["architecture"],
            input=TensorInfo(tensor["name"], list(tensor["shape"]), tensor.get("dtype", "float32")),
            outputs=dict(data["outputs"]), labels_file=data["labels_file"],
            preprocess=PreprocessSpec.from_dict(data["preprocess"]),
            accuracy=float(data["accuracy"]),
            per_class_accuracy=[float(a) for a in data["per_class_accuracy"]],
            sha256=data["sha256"], tf_version=data["tf_version"],
            training=dict(data.get("training", {})),
        )

    def write(self, version_dir: Path) -> Path:
        path = Path(version_dir) / MANIFEST_FILE
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path


def _require(value: Any, kind: Any, key: str) -> None:
    if isinstance(value, bool) or not isinstance(value, kind):
        raise ValueError(f"manifest field {key!r} has the wrong type ({type(value).__name__})")


def read_manifest(version_dir: Path) -> Manifest:
    """Parse and validate ``<version_dir>/manifest.json`` (``ValueError`` says what is wrong)."""
    path = Path(version_dir) / MANIFEST_FILE
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"{path} is missing") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path} is not readable JSON: {exc}") from None
    try:
        return Manifest.from_dict(data)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_labels(path: Path) -> list[str]:
    """One label per line; the line index is the class id."""
    labels = [line.strip() for line in Path(path).read_text().splitlines()]
    while labels and not labels[-1]:
        labels.pop()
    if not labels or any(not label for label in labels):
        raise ValueError(f"{path} must hold one non-empty label per line")
    return labels
