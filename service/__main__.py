"""Command line: ``python -m service {serve,train,evaluate} ...``."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .errors import ServiceError

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = REPO_ROOT / "conf" / "service.conf"


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TF's C++ start-up chatter
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.handler(args) or 0
    except ServiceError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m service",
                                     description="Handwritten digit recognition service.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the HTTP service")
    serve.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="CherryPy-format config")
    serve.add_argument("--host", help="override server.socket_host")
    serve.add_argument("--port", type=int, help="override server.socket_port")
    serve.add_argument("--daemon", action="store_true", help="detach into the background")
    serve.add_argument("--pidfile", type=Path, help="write the process id here")
    serve.set_defaults(handler=_serve)

    train = commands.add_parser("train", help="train an architecture and export a new version")
    train.add_argument("--model", required=True, help="architecture name, e.g. digits-cnn")
    train.add_argument("--epochs", type=int, help="default: the architecture's own")
    train.add_argument("--batch-size", type=int, help="default: the architecture's own")
    train.add_argument("--limit", type=int, help="train on the first N training images only")
    train.add_argument("--seed", type=int, default=1234)
    train.add_argument("--graphs-dir", type=Path, default=REPO_ROOT / "graphs")
    train.set_defaults(handler=_train)

    evaluate = commands.add_parser("evaluate", help="score a frozen version on the MNIST test set")
    evaluate.add_argument("--model", required=True)
    evaluate.add_argument("--version", type=int, help="default: the newest")
    evaluate.add_argument("--graphs-dir", type=Path, default=REPO_ROOT / "graphs")
    evaluate.add_argument("--config", type=Path, default=DEFAULT_CONFIG,
                          help="for the QA gate's accuracy floor")
    evaluate.set_defaults(handler=_evaluate)
    return parser


def _serve(args: argparse.Namespace) -> int:
    from .web.app import serve

    return serve(args.config, host=args.host, port=args.port, daemon=args.daemon,
                 pidfile=args.pidfile)


def _train(args: argparse.Namespace) -> int:
    from .models.architectures import ARCHITECTURES
    from .models.training import TrainingRun, train

    if args.model not in ARCHITECTURES:
        known = ", ".join(sorted(ARCHITECTURES))
        print(f"error: unknown model {args.model!r}; known: {known}", file=sys.stderr)
        return 2
    arch = ARCHITECTURES[args.model]
    run = TrainingRun(model=args.model, epochs=args.epochs or arch.default_epochs,
                      batch_size=args.batch_size or arch.default_batch_size, seed=args.seed,
                      limit=args.limit, graphs_dir=args.graphs_dir)
    print(f"training {run.model}: {run.epochs} epochs, batch {run.batch_size}, seed {run.seed}"
          + (f", first {run.limit} images" if run.limit else ""), flush=True)
    manifest = train(run)
    print(f"exported {manifest.name} version {manifest.version} "
          f"-> {args.graphs_dir / manifest.name / str(manifest.version)}")
    print(f"test accuracy: {manifest.accuracy:.4%}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from .config import load_settings
    from .models.evaluate_cli import run_evaluation
    from .models.registry import ModelConfig

    settings = load_settings(args.config if args.config.exists() else None)
    config = next((m for m in settings.models if m.name == args.model), ModelConfig(args.model))
    return run_evaluation(args.model, args.version, args.graphs_dir, config)


if __name__ == "__main__":
    sys.exit(main())
