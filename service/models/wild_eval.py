"""``python -m service evaluate --wild``: a served version on the wild set (wild.py), through
the service's own preprocessing, per category; and on scikit-learn's 8x8 digits (another
population of writers) as an out-of-distribution check.

Writes, under ``--out``: one confusion-matrix PNG per category, ``worst.png`` (a contact
sheet of the misread and refused samples: the upload, the model input, true -> read), and
``wild.json`` with every figure.
"""
from __future__ import annotations

import io
import json
import sys
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

from service.errors import ServiceError

from . import datasets, evaluation, wild
from .loader import ServedModel
from .preprocess import PreprocessSpec, preprocess

OOD = "sklearn_digits"  # not a wild category: reported apart, not in the overall
SHEET_TILE = 112
SHEET_COLUMNS = 6
SHEET_MAX = 48


@dataclass
class Outcome:
    category: str
    label: int
    data: bytes
    model_input: np.ndarray | None  # None: refused, ``error`` says why
    error: str = ""
    predicted: int = -1

    @property
    def right(self) -> bool:
        return self.model_input is not None and self.predicted == self.label


@dataclass
class Report:
    accuracy: dict[str, float] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    refused: dict[str, dict[str, int]] = field(default_factory=dict)
    overall: float = 0.0
    preprocess_ms: dict[str, float] = field(default_factory=dict)

    def table(self) -> str:
        lines = [f"{'category':16} {'accuracy':>9} {'images':>7}  refused"]
        for name, acc in self.accuracy.items():
            refused = ", ".join(f"{n} {code}" for code, n in self.refused[name].items()) or "-"
            lines.append(f"{name:16} {acc:9.2%} {self.counts[name]:7d}  {refused}")
        lines.append(f"{'overall (wild)':16} {self.overall:9.2%} "
                     f"{sum(n for c, n in self.counts.items() if c != OOD):7d}")
        return "\n".join(lines)


def sklearn_digits() -> list[wild.Sample]:
    """scikit-learn's 1,797 8x8 digits (ink 0-16) with a 2-pixel margin, as written on a
    page, upscaled to 96x96 PNGs, ink dark on white."""
    from sklearn.datasets import load_digits  # shipped inside the package: nothing downloaded

    digits = load_digits()
    samples = []
    for index, (pixels, label) in enumerate(zip(digits.images, digits.target)):
        ink = Image.fromarray(np.pad(pixels * (255 / 16), 2).astype(np.uint8))
        big = ink.resize((96, 96), Image.Resampling.BICUBIC)
        samples.append(wild.Sample(OOD, wild.encode(255 - np.asarray(big, np.float32), "PNG"),
                                   int(label), index))
    return samples


def run(model: ServedModel, out_dir: Path, per_category: int = wild.PER_CATEGORY,
        seed: int = wild.SEED) -> Report:
    images, labels = datasets.load_mnist("test")
    total = per_category * len(wild.CATEGORIES)
    print(f"{model.name} version {model.version}: building the wild set ({total} images, "
          f"seed {seed}) and scikit-learn's digits", flush=True)
    samples = list(tqdm(wild.wild_set(images, labels, per_category, seed), total=total,
                        unit="img", file=sys.stderr, desc="render"))
    samples += sklearn_digits()
    outcomes, timing = _prepare(samples, model.manifest.preprocess)
    _predict(model, outcomes)
    report = _report(outcomes, timing)
    _write(report, outcomes, model, out_dir)
    return report


def _prepare(samples: list[wild.Sample], spec: PreprocessSpec
             ) -> tuple[list[Outcome], dict[str, float]]:
    outcomes, spent, seen = [], Counter(), Counter()
    for sample in tqdm(samples, unit="img", file=sys.stderr, desc="preprocess"):
        started = time.perf_counter()
        try:
            outcome = Outcome(sample.category, sample.label, sample.data,
                              preprocess(sample.data, spec))
        except ServiceError as exc:
            outcome = Outcome(sample.category, sample.label, sample.data, None, exc.code)
        spent[sample.category] += time.perf_counter() - started
        seen[sample.category] += 1
        outcomes.append(outcome)
    return outcomes, {c: round(spent[c] / seen[c] * 1000, 3) for c in seen}


def _predict(model: ServedModel, outcomes: list[Outcome], batch: int = 256) -> None:
    ready = [o for o in outcomes if o.model_input is not None]
    for start in range(0, len(ready), batch):
        chunk = ready[start:start + batch]
        probabilities, _ = model.predict(np.stack([o.model_input for o in chunk]), timeout=120)
        for outcome, row in zip(chunk, probabilities):
            outcome.predicted = int(np.argmax(row))


def _report(outcomes: list[Outcome], timing: dict[str, float]) -> Report:
    report = Report(preprocess_ms=timing)
    for name in [*wild.CATEGORIES, OOD]:
        mine = [o for o in outcomes if o.category == name]
        report.accuracy[name] = float(np.mean([o.right for o in mine]))
        report.counts[name] = len(mine)
        report.refused[name] = dict(Counter(o.error for o in mine if o.model_input is None))
    in_wild = [o.right for o in outcomes if o.category != OOD]
    report.overall = float(np.mean(in_wild))
    return report


def _write(report: Report, outcomes: list[Outcome], model: ServedModel, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    classes = len(model.labels)
    for name in report.accuracy:
        mine = [o for o in outcomes if o.category == name]
        confusion = np.zeros((classes, classes), np.int64)
        for o in mine:
            if o.model_input is not None:
                confusion[o.label, o.predicted] += 1
        # the caption's accuracy counts the refused images as misread
        result = replace(evaluation.from_confusion(confusion), accuracy=report.accuracy[name])
        evaluation.confusion_png(result, model.labels, out_dir / f"confusion-{name}.png")
    contact_sheet([o for o in outcomes if not o.right], out_dir / "worst.png")
    (out_dir / "wild.json").write_text(json.dumps(
        {"model": model.name, "version": model.version, "accuracy": report.accuracy,
         "images": report.counts, "refused": report.refused, "overall": report.overall,
         "preprocess_ms_mean": report.preprocess_ms}, indent=2) + "\n")


def contact_sheet(outcomes: list[Outcome], path: Path) -> Path:
    """Up to SHEET_MAX misread or refused samples, a few of each category: the upload, the
    model input beside it, and "category: true -> read" (or the error) under them."""
    by_category: dict[str, list[Outcome]] = {}
    for o in outcomes:
        by_category.setdefault(o.category, []).append(o)
    share = max(1, SHEET_MAX // max(1, len(by_category)))
    chosen = [o for group in by_category.values() for o in group[:share]][:SHEET_MAX]
    tile = SHEET_TILE
    rows = max(1, -(-len(chosen) // SHEET_COLUMNS))
    sheet = Image.new("RGB", (SHEET_COLUMNS * 2 * tile, rows * (tile + 16)), "white")
    draw = ImageDraw.Draw(sheet)
    for i, o in enumerate(chosen):
        x, y = (i % SHEET_COLUMNS) * 2 * tile, (i // SHEET_COLUMNS) * (tile + 16)
        sheet.paste(_thumbnail(o.data, tile - 4), (x, y))
        if o.model_input is not None:
            seen = Image.fromarray((o.model_input * 255).astype(np.uint8))
            sheet.paste(seen.resize((tile - 4, tile - 4), Image.Resampling.NEAREST), (x + tile, y))
        verdict = f"{o.label} -> {o.predicted}" if o.model_input is not None else \
            f"{o.label}: {o.error}"
        draw.text((x + 2, y + tile), f"{o.category}: {verdict}", fill=(190, 0, 0))
    sheet.save(path, format="PNG")
    return path


def _thumbnail(data: bytes, side: int) -> Image.Image:
    with Image.open(io.BytesIO(data)) as img:
        rgba = img.convert("RGBA")
    backdrop = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    backdrop.alpha_composite(rgba)
    thumb = backdrop.convert("RGB")
    thumb.thumbnail((side, side))
    return thumb
