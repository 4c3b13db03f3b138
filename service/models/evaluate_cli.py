"""``python -m service evaluate``: score a frozen version exactly as the server loads it."""
from __future__ import annotations

import sys
from pathlib import Path

from tqdm import tqdm

from ..config import ModelConfig
from . import datasets, evaluation, wild, wild_eval
from .loader import load_version
from .training import to_input_shape


def run_evaluation(name: str, version: int | None, graphs_dir: Path, config: ModelConfig,
                   wild_out: Path | None = None, per_category: int | None = None) -> int:
    """Load through the registry's path (checksum, QA gate, session pool), then score on the
    MNIST test set, or (``wild_out``) on the wild set."""
    config = ModelConfig(name, version, config.min_accuracy, config.pool)
    model = load_version(graphs_dir, config)
    if wild_out is not None:
        try:
            report = wild_eval.run(model, wild_out, per_category or wild.PER_CATEGORY)
        finally:
            model.close()
        print(report.table())
        print(f"confusion matrices, worst.png and wild.json written to {wild_out}")
        return 0
    try:
        images, labels = datasets.load_mnist("test")
        print(f"{model.name} version {model.version}: evaluating on {len(images)} MNIST test "
              f"images", flush=True)
        with tqdm(total=len(images), unit="img", file=sys.stderr) as bar:
            result = evaluation.evaluate(
                lambda batch: model.predict(to_input_shape(batch, model.input_shape))[0],
                images, labels, len(model.labels), batch_size=model.pool.settings.max_batch_size,
                progress=bar.update)
    finally:
        model.close()
    print(result.report(model.labels))
    recorded = model.manifest.accuracy
    if abs(recorded - result.accuracy) > 1e-9:
        print(f"warning: the manifest records {recorded:.4%}; measured {result.accuracy:.4%}")
    png = evaluation.confusion_png(result, model.labels,
                                   graphs_dir / name / str(model.version) / "confusion.png")
    print(f"confusion matrix written to {png}")
    return 0
