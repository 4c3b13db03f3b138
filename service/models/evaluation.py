"""Accuracy, per-class accuracy and the confusion matrix of a model on a labelled set."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np


@dataclass(frozen=True)
class Evaluation:
    accuracy: float
    per_class_accuracy: list[float]
    confusion: np.ndarray  # rows: true class, columns: predicted class

    def report(self, labels: list[str]) -> str:
        lines = [f"accuracy: {self.accuracy:.4%} on {int(self.confusion.sum())} images", "",
                 "per-class accuracy:"]
        lines += [f"  {label:>5}: {acc:.4%}" for label, acc in zip(labels, self.per_class_accuracy)]
        lines += ["", "confusion matrix (rows = true, columns = predicted):",
                  "      " + "".join(f"{label:>6}" for label in labels)]
        for label, row in zip(labels, self.confusion):
            lines.append(f"{label:>5} " + "".join(f"{int(v):>6}" for v in row))
        return "\n".join(lines)


def evaluate(predict: Callable[[np.ndarray], np.ndarray], images: np.ndarray,
             labels: np.ndarray, num_classes: int, batch_size: int = 500,
             progress: Callable[[int], None] | None = None) -> Evaluation:
    """Run ``predict`` (batch -> probabilities) over the set in batches and score it."""
    predicted = np.empty(len(images), dtype=np.int64)
    for start in range(0, len(images), batch_size):
        batch = images[start:start + batch_size]
        predicted[start:start + len(batch)] = np.argmax(predict(batch), axis=1)
        if progress:
            progress(len(batch))
    confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(confusion, (labels.astype(np.int64), predicted), 1)
    return from_confusion(confusion)


def from_confusion(confusion: np.ndarray) -> Evaluation:
    """Accuracy and per-class accuracy of a confusion matrix (rows true, columns read)."""
    totals = confusion.sum(axis=1)
    per_class = np.divide(np.diag(confusion), totals, out=np.zeros(len(confusion)),
                          where=totals > 0)
    return Evaluation(float(np.trace(confusion) / max(1, confusion.sum())),
                      [float(a) for a in per_class], confusion)


def confusion_png(evaluation: Evaluation, labels: list[str], path: Path, cell: int = 44) -> Path:
    """Draw the confusion matrix as a heat map, counts in each cell."""
    from PIL import Image, ImageDraw

    matrix = evaluation.confusion
    n = len(labels)
    margin = cell
    size = margin + n * cell + 4
    img = Image.new("RGB", (size, size + 24), "white")
    draw = ImageDraw.Draw(img)
    row_totals = np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    # Off-diagonal cells are scaled up so that a handful of errors is still visible.
    share = matrix / row_totals
    for r in range(n):
        for c in range(n):
            x, y = margin + c * cell, margin + r * cell
            strength = share[r, c] if r == c else min(1.0, share[r, c] * 20)
            colour = _blue(strength) if r == c else _red(strength)
            draw.rectangle([x, y, x + cell - 2, y + cell - 2], fill=colour)
            text = str(int(matrix[r, c]))
            dark = strength > 0.55
            draw.text((x + 4, y + cell // 2 - 6), text, fill="white" if dark else "black")
    for i, label in enumerate(labels):
        draw.text((margin + i * cell + cell // 2 - 3, margin - 16), label, fill="black")
        draw.text((margin - 16, margin + i * cell + cell // 2 - 6), label, fill="black")
    draw.text((4, 4), "true \\ predicted", fill="black")
    draw.text((4, size + 4), f"accuracy {evaluation.accuracy:.2%}", fill="black")
    img.save(path, format="PNG")
    return Path(path)


def _blue(t: float) -> tuple[int, int, int]:
    return (int(235 - 200 * t), int(240 - 150 * t), 255)


def _red(t: float) -> tuple[int, int, int]:
    return (255, int(255 - 200 * t), int(255 - 200 * t)) if t > 0 else (248, 248, 248)
