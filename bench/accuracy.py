"""What people really send (issue 13), in one run: the default model on the wild set per
category and on MNIST test, the preprocessing's speed, and the new default version's batch-1
``session.run`` beside the previous one's.

    python bench/accuracy.py      # `make accuracy`; writes its section of bench/RESULTS.md
"""
from __future__ import annotations

import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from bench import run as bench  # noqa: E402
from bench import sections  # noqa: E402
from service.config import ModelConfig, load_settings  # noqa: E402
from service.models import datasets, store, wild, wild_eval  # noqa: E402
from service.models.loader import load_version  # noqa: E402
from service.models.preprocess import preprocess  # noqa: E402
from support import FIXTURES  # noqa: E402

MODEL = "digits-cnn"
CATEGORY_FLOOR, OVERALL_FLOOR, MNIST_FLOOR = 0.97, 0.985, 0.995
MNIST_PNG_MS, PHOTO_MS, RUN_RATIO = 0.1, 10.0, 1.2
OUT = REPO / "var" / "wild" / MODEL


def preprocess_ms(data: bytes, repeats: int) -> float:
    """Median milliseconds of ``preprocess(data)`` over ``repeats`` calls (after a warm-up)."""
    for _ in range(5):
        preprocess(data)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        preprocess(data)
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


def session_run_ms(versions: list[int], rounds: int = 7, runs: int = 300) -> dict[int, float]:
    """Batch-1 ``session.run`` of each version (a prepared callable, as the session pool runs
    it), in interleaved rounds; the median ms per run."""
    import tensorflow as tf
    from tensorflow.core.protobuf.config_pb2 import CallableOptions

    from service.config import PoolSettings
    from service.models.graph import import_graph, parse_graph_def

    pool = PoolSettings()
    config = tf.compat.v1.ConfigProto(intra_op_parallelism_threads=pool.threads_per_session(),
                                      inter_op_parallelism_threads=pool.inter_op_threads)
    config.experimental.disable_thread_spinning = True  # as the session pool runs
    calls = {}
    for v in versions:
        pb = (store.version_dir(REPO / "graphs", MODEL, v) / "model.pb").read_bytes()
        session = tf.compat.v1.Session(graph=import_graph(parse_graph_def(pb)), config=config)
        calls[v] = session._make_callable_from_options(
            CallableOptions(feed=["image:0"], fetch=["probabilities:0"]))
    x = np.zeros((1, 28, 28, 1), np.float32)
    per_round: dict[int, list[float]] = {v: [] for v in versions}
    for _ in range(rounds):
        for v, run in calls.items():
            for _ in range(20):
                run(x)
            started = time.perf_counter()
            for _ in range(runs):
                run(x)
            per_round[v].append((time.perf_counter() - started) / runs * 1000)
    return {v: statistics.median(t) for v, t in per_round.items()}


def measure() -> dict:
    settings = load_settings(REPO / "conf" / "service.conf")
    config = next(m for m in settings.models if m.name == MODEL)
    model = load_version(REPO / "graphs", ModelConfig(MODEL, None, config.min_accuracy,
                                                     config.pool))
    try:
        report = wild_eval.run(model, OUT)
        version, mnist = model.version, model.manifest.accuracy
    finally:
        model.close()
    images, _ = datasets.load_mnist("test")
    mnist_png = wild.encode(images[0].astype(np.float32), "PNG")
    bench.log("timing the preprocessing and batch-1 session.run")
    speed = {"mnist_png_ms": preprocess_ms(mnist_png, 2000),
             "photo_1000_ms": preprocess_ms((FIXTURES / "photo_digit.jpg").read_bytes(), 200)}
    versions = store.list_versions(REPO / "graphs", MODEL)
    runs = session_run_ms(versions[-2:]) if len(versions) > 1 else {}
    return {"version": version, "mnist": mnist, "report": report, "speed": speed, "runs": runs}


def verdict(ok: bool) -> str:
    return "met" if ok else "**not met**"


def markdown(m: dict) -> str:
    machine, report = bench.machine_info(), m["report"]
    lines = [
        "## Accuracy on what people send (`make accuracy`, bench/accuracy.py)", "",
        f"- Date (UTC): {datetime.now(timezone.utc):%Y-%m-%d %H:%M:%S}; machine: "
        f"{machine['cores']} cores ({machine['cpu_model']}); git {bench.git_commit()}",
        f"- Model: {MODEL} version {m['version']} (the default), through the service's "
        f"preprocessing. Wild set: `python -m service evaluate --model {MODEL} --wild` "
        f"({wild.PER_CATEGORY} MNIST test digits per category, seed {wild.SEED}; confusion "
        f"matrices and `worst.png` in var/wild/{MODEL}/).", "",
        "| category | accuracy | images | refused | target |", "|---|---|---|---|---|"]
    for name, acc in report.accuracy.items():
        refused = ", ".join(f"{n} {c}" for c, n in report.refused[name].items()) or "-"
        target = ("out of distribution: reported only" if name == wild_eval.OOD
                  else f">= {CATEGORY_FLOOR:.0%}: {verdict(acc >= CATEGORY_FLOOR)}")
        lines.append(f"| {name} | {acc:.2%} | {report.counts[name]} | {refused} | {target} |")
    lines.append(f"| **overall (wild)** | **{report.overall:.2%}** | "
                 f"{sum(n for c, n in report.counts.items() if c != wild_eval.OOD)} | | "
                 f">= {OVERALL_FLOOR:.1%}: {verdict(report.overall >= OVERALL_FLOOR)} |")
    speed = m["speed"]
    lines += ["", "| measure | value | target |", "|---|---|---|",
              f"| MNIST test accuracy, version {m['version']} | {m['mnist']:.2%} | "
              f">= {MNIST_FLOOR:.1%}: {verdict(m['mnist'] >= MNIST_FLOOR)} |",
              f"| preprocess a 28x28 MNIST PNG (median of 2,000) | {speed['mnist_png_ms']:.3f} ms"
              f" | <= {MNIST_PNG_MS} ms: {verdict(speed['mnist_png_ms'] <= MNIST_PNG_MS)} |",
              f"| preprocess a 1000x1000 photo JPEG (tests/fixtures/photo_digit.jpg, median of "
              f"200) | {speed['photo_1000_ms']:.2f} ms | <= {PHOTO_MS:g} ms: "
              f"{verdict(speed['photo_1000_ms'] <= PHOTO_MS)} |"]
    if m["runs"]:
        (old, old_ms), (new, new_ms) = sorted(m["runs"].items())
        ratio = new_ms / old_ms
        lines.append(f"| batch-1 session.run, v{new} / v{old} (7 interleaved rounds) | "
                     f"{new_ms:.3f} / {old_ms:.3f} ms = {ratio:.2f}x | <= {RUN_RATIO}x: "
                     f"{verdict(ratio <= RUN_RATIO)} |")
    mean_ms = ", ".join(f"{c} {v:.1f}" for c, v in report.preprocess_ms.items())
    lines += ["", f"Mean preprocessing per wild image, ms: {mean_ms}."]
    return "\n".join(lines) + "\n"


def main() -> int:
    text = markdown(measure())
    print(text)
    sections.write_section(BENCH_DIR / "RESULTS.md", "accuracy", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
