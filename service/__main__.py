"""Command line: ``python -m service {serve,train,evaluate,publish,...} ...``."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from .errors import ServiceError

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = REPO_ROOT / "conf" / "service.conf"
Subcommands = argparse._SubParsersAction  # what add_subparsers() returns


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


def config_path(path: Path) -> Path | None:
    """The shipped default may be absent (all defaults apply); any other file must exist."""
    return None if path == DEFAULT_CONFIG and not path.exists() else path


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m service",
                                     description="Handwritten digit recognition service.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (_add_serve_parser, _add_cluster_parser, _add_replicas_parser,
                _add_train_parser, _add_evaluate_parser,
                _add_export_parser, _add_keys_parser, _add_publish_parser,
                _add_classify_parser):  # as --help lists them
        add(commands)
    return parser


def _config_option(parser: argparse.ArgumentParser, purpose: str) -> None:
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help=purpose)


def _graphs_dir_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--graphs-dir", type=Path, default=REPO_ROOT / "graphs")


def _add_serve_parser(commands: Subcommands) -> None:
    serve = commands.add_parser("serve", help="run the HTTP service")
    _config_option(serve, "CherryPy-format config")
    serve.add_argument("--host", help="override server.socket_host")
    serve.add_argument("--port", type=int, help="override server.socket_port")
    serve.add_argument("--daemon", action="store_true", help="detach into the background")
    serve.add_argument("--pidfile", type=Path, help="write the process id here (with "
                       "workers: the supervising parent's)")
    serve.add_argument("--workers", type=int, metavar="N",
                       help="serving processes sharing the port; 0: one per core "
                            "(default: [service] workers, 1)")
    serve.add_argument("--socket-dir", type=Path, metavar="DIR",
                       help="each worker listens on DIR/worker-<n>.sock instead (for nginx)")
    serve.add_argument("--replica-id", metavar="ID",
                       help="this replica's name in X-Served-By (sets $DIGITS_REPLICA_ID, "
                            "which beats [service] replica_id; default: pid-<pid>)")
    serve.set_defaults(handler=_serve)


def _serve(args: argparse.Namespace) -> int:
    from .config import REPLICA_ENV, load_settings

    path = config_path(args.config)
    service = load_settings(path).service
    if args.replica_id:  # the environment reaches the workers too
        os.environ[REPLICA_ENV] = args.replica_id
    workers = service.workers if args.workers is None else args.workers
    socket_dir = args.socket_dir or service.socket_dir
    if workers < 0:
        print(f"error: --workers must be >= 0, got {workers}", file=sys.stderr)
        return 2
    if workers == 1 and socket_dir is None:
        from .web.app import serve

        return serve(path, host=args.host, port=args.port, daemon=args.daemon,
                     pidfile=args.pidfile)
    from .cluster.launch import serve_cluster  # the parent never imports TensorFlow

    return serve_cluster(path, workers or os.cpu_count() or 1, socket_dir, host=args.host,
                         port=args.port, daemon=args.daemon, pidfile=args.pidfile)


def _add_cluster_parser(commands: Subcommands) -> None:
    cluster = commands.add_parser(
        "cluster", help="run N workers behind nginx in the foreground (make cluster)",
        description="Start `serve --workers N --socket-dir PREFIX/sockets`, wait until every "
                    "worker answers, then run nginx (deploy/nginx.conf, rendered to "
                    "PREFIX/nginx.conf) in front of them on --host:--port. Ctrl-C or SIGTERM "
                    "stops both; SIGHUP reloads both. Exit status: 0 stopped, 1 the service "
                    "died, 2 cannot start (e.g. nginx missing), 3 nginx died.")
    _config_option(cluster, "the service's CherryPy-format config")
    cluster.add_argument("--port", type=int, default=8080, help="nginx listens here (8080)")
    cluster.add_argument("--host", default="127.0.0.1", help="nginx listens on (127.0.0.1)")
    cluster.add_argument("--workers", type=int, default=2, metavar="N",
                         help="serving processes behind nginx (2)")
    cluster.add_argument("--prefix", type=Path, default=REPO_ROOT / "var" / "cluster",
                         metavar="DIR", help="nginx's config, pid, logs, temp files and the "
                                             "workers' sockets (var/cluster)")
    cluster.add_argument("--nginx", default="nginx", help="the nginx binary (nginx)")
    cluster.set_defaults(handler=_cluster)


def _add_replicas_parser(commands: Subcommands) -> None:
    replicas = commands.add_parser(
        "replicas", help="PostgreSQL, Redis, S3 and N replicas behind nginx (make replicas)",
        description="On loopback: a throwaway PostgreSQL cluster (input log records, API "
                    "keys), Redis (rate limits), an S3 test server (model versions from the "
                    "shipped graphs, input log images), N replicas (`serve --replica-id "
                    "replica-<i>`, one port each) and nginx in front on --port. Ctrl-C or "
                    "SIGTERM stops them all; the stores' data is thrown away.")
    _config_option(replicas, "the base config; the stores' sections are filled in")
    replicas.add_argument("--port", type=int, default=8080, help="nginx listens here (8080)")
    replicas.add_argument("--replicas", type=int, default=2, metavar="N", help="(2)")
    replicas.add_argument("--keys", action="store_true",
                          help="API keys on, in PostgreSQL (`keys --config "
                               "PREFIX/replica.conf add NAME`)")
    replicas.add_argument("--poll-interval", type=float, default=5.0, metavar="S",
                          help="each replica looks for new versions in the bucket this often")
    replicas.add_argument("--prefix", type=Path, default=REPO_ROOT / "var" / "replicas",
                          metavar="DIR", help="every file of the run (var/replicas)")
    replicas.set_defaults(handler=_replicas)


def _replicas(args: argparse.Namespace) -> int:
    from .replicas.local import LocalReplicas

    if args.replicas < 1:
        print(f"error: --replicas must be >= 1, got {args.replicas}", file=sys.stderr)
        return 2
    return LocalReplicas(prefix=args.prefix, port=args.port, count=args.replicas,
                         base_config=config_path(args.config), keys=args.keys,
                         poll_interval_s=args.poll_interval).run()


def _cluster(args: argparse.Namespace) -> int:
    from .cluster.front import run_cluster  # no TensorFlow here: the service child has it

    return run_cluster(config_path(args.config), port=args.port, workers=args.workers,
                       host=args.host, prefix=args.prefix, nginx=args.nginx)


def _add_train_parser(commands: Subcommands) -> None:
    train = commands.add_parser("train", help="train an architecture and export a new version")
    train.add_argument("--model", required=True, help="architecture name, e.g. digits-cnn")
    train.add_argument("--epochs", type=int, help="default: the architecture's own")
    train.add_argument("--batch-size", type=int, help="default: the architecture's own")
    train.add_argument("--limit", type=int, help="train on the first N training images only")
    train.add_argument("--seed", type=int, default=1234)
    _graphs_dir_option(train)
    train.add_argument("--extra-data", type=Path, metavar="DIR",
                       help="also train on the IDX dataset in DIR (from `export`)")
    train.add_argument("--no-augment", dest="augment", action="store_false",
                       help="train on the digits as they are (default: augmented each epoch)")
    train.set_defaults(handler=_train)


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
                      limit=args.limit, graphs_dir=args.graphs_dir, extra_data=args.extra_data,
                      augment=args.augment)
    print(f"training {run.model}: {run.epochs} epochs, batch {run.batch_size}, seed {run.seed}"
          + (f", first {run.limit} images" if run.limit else "")
          + ("" if run.augment else ", no augmentation"), flush=True)
    manifest = train(run)
    print(f"exported {manifest.name} version {manifest.version} "
          f"-> {args.graphs_dir / manifest.name / str(manifest.version)}")
    print(f"test accuracy: {manifest.accuracy:.4%}")
    return 0


def _add_evaluate_parser(commands: Subcommands) -> None:
    evaluate = commands.add_parser("evaluate", help="score a frozen version on the MNIST test set")
    evaluate.add_argument("--model", required=True)
    evaluate.add_argument("--version", type=int, help="default: the newest")
    _graphs_dir_option(evaluate)
    _config_option(evaluate, "for the QA gate's accuracy floor")
    evaluate.add_argument("--wild", action="store_true",
                          help="score on the wild set (MNIST test digits rendered as photos, "
                               "scans, drawings...) and scikit-learn's digits, per category")
    evaluate.add_argument("--out", type=Path, metavar="DIR",
                          help="with --wild: where the figures go (default var/wild/<model>)")
    evaluate.add_argument("--per-category", type=int, default=None, metavar="N",
                          help="with --wild: images per category (default 200)")
    evaluate.set_defaults(handler=_evaluate)


def _evaluate(args: argparse.Namespace) -> int:
    from .config import ModelConfig, load_settings
    from .models.evaluate_cli import run_evaluation

    settings = load_settings(config_path(args.config))
    config = next((m for m in settings.models if m.name == args.model), ModelConfig(args.model))
    wild_out = (args.out or REPO_ROOT / "var" / "wild" / args.model) if args.wild else None
    return run_evaluation(args.model, args.version, args.graphs_dir, config, wild_out,
                          args.per_category)


def _add_classify_parser(commands: Subcommands) -> None:
    classify = commands.add_parser(
        "classify", help="classify files and folders of images through a running service",
        description="Walk PATHs for images, send them in batches on --concurrency threads, "
                    "retry 429/503 as Retry-After says, and write one row per file. Files in "
                    "folders named by their digit are scored (accuracy, confusion matrix). "
                    "Exit status 1 if any file got no answer.")
    classify.add_argument("paths", nargs="+", type=Path, metavar="PATH")
    classify.add_argument("--url", default="http://127.0.0.1:8080")
    classify.add_argument("--model", default="digits-cnn")
    classify.add_argument("--batch", type=int, default=64, help="images per request")
    classify.add_argument("--concurrency", type=int, default=4, help="requests in flight")
    classify.add_argument("--api-key", help="sent as X-API-Key")
    classify.add_argument("--top-k", type=int, default=3)
    classify.add_argument("--protocol", choices=("native", "v2"), default="native",
                          help="native: /v1/models/M/predict (JSON, base64); v2: the Open "
                               "Inference Protocol's /v2/models/M/infer (binary tensors)")
    classify.add_argument("--retries", type=int, default=8,
                          help="per request, on 429, 503 or a lost connection")
    classify.add_argument("--out", type=Path, metavar="FILE",
                          help="results.csv, or .jsonl for one JSON object a line")
    classify.add_argument("--confusion", type=Path, metavar="FILE",
                          help="with digit-named folders: the confusion matrix as a PNG")
    classify.add_argument("--no-progress", action="store_true")
    classify.set_defaults(handler=_classify)


def _classify(args: argparse.Namespace) -> int:
    import time

    from .client import bulk
    from .models import evaluation

    if args.batch < 1 or args.concurrency < 1 or args.retries < 0 or args.top_k < 1:
        print("error: --batch, --concurrency and --top-k must be at least 1, --retries at "
              "least 0", file=sys.stderr)
        return 2
    try:
        files = bulk.image_files(args.paths)
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not files:
        print("error: no image files found", file=sys.stderr)
        return 2
    client = bulk.Classifier(bulk.Options(
        url=args.url, model=args.model, batch=args.batch, concurrency=args.concurrency,
        api_key=args.api_key, retries=args.retries, top_k=args.top_k,
        progress=not args.no_progress, protocol=args.protocol))
    started = time.monotonic()
    rows = client.classify(files)
    for line in bulk.summary(rows, time.monotonic() - started, client.retried):
        print(line)
    if args.out:
        bulk.write_rows(rows, args.out)
        print(f"{len(rows)} rows written to {args.out}")
    matrix = bulk.confusion(rows)
    if matrix is not None:
        result = evaluation.from_confusion(matrix)
        print(result.report([str(i) for i in range(10)]))
        if args.confusion:
            evaluation.confusion_png(result, [str(i) for i in range(10)], args.confusion)
            print(f"confusion matrix written to {args.confusion}")
    return 1 if any(r.error for r in rows) else 0


def _add_export_parser(commands: Subcommands) -> None:
    export = commands.add_parser(
        "export", help="write the input log as an MNIST-format IDX dataset",
        description="Preprocess every logged image as its model saw it (28x28 uint8) and write "
                    "inputlog-{images,labels} IDX files, SHA256SUMS and index.csv into --out, "
                    "for `train --extra-data`. Only images with feedback are exported unless "
                    "--include-unlabelled (whose labels are the model's own predictions).")
    export.add_argument("--out", type=Path, required=True, metavar="DIR")
    export.add_argument("--since", metavar="DATE", help="ISO date or datetime (UTC by default)")
    export.add_argument("--model", help="only records of this model")
    which = export.add_mutually_exclusive_group()
    which.add_argument("--labelled-only", action="store_true",
                       help="only images with feedback (the default)")
    which.add_argument("--include-unlabelled", action="store_true",
                       help="also images without feedback, labelled with the prediction")
    _config_option(export, "for [inputlog] (directory, image backend), [s3] and graphs_dir")
    export.add_argument("--inputlog-dir", type=Path, metavar="DIR",
                        help="read this input log (local images) instead of the config's")
    export.add_argument("--no-progress", action="store_true", help="no progress bar")
    export.set_defaults(handler=_export)


def _export(args: argparse.Namespace) -> int:
    import dataclasses

    from .blobstore import LocalBlobStore
    from .config import load_settings
    from .inputlog.export import ExportOptions, export
    from .inputlog.images import make_store

    settings = load_settings(config_path(args.config))
    if args.inputlog_dir:
        log_settings = dataclasses.replace(settings.inputlog, dir=args.inputlog_dir,
                                           backend="local", database_url=None)
        store = LocalBlobStore(args.inputlog_dir)
    else:
        log_settings = settings.inputlog
        store = make_store(log_settings, settings.s3)
    result = export(ExportOptions(
        out_dir=args.out, inputlog_dir=log_settings.dir, store=store,
        graphs_dir=settings.service.graphs_dir, since=args.since, model=args.model,
        include_unlabelled=args.include_unlabelled, progress=not args.no_progress,
        database_url=log_settings.database_url))
    skipped = ", ".join(f"{n} {reason}" for reason, n in sorted(result.skipped.items()))
    print(f"exported {result.exported} images ({result.labelled} with feedback) to {args.out}"
          + (f"; skipped {skipped}" if skipped else ""))
    for path in result.files:
        print(f"  {path}")
    return 0


def _add_keys_parser(commands: Subcommands) -> None:
    keys = commands.add_parser(
        "keys", help="manage API keys (add, list, revoke)",
        description="API keys live in the file named by the config's [auth] keys_file, or "
                    "in the PostgreSQL database [auth] keys_database_url, as salted hashes: a "
                    "new key is printed once and cannot be shown again. A running server "
                    "picks up changes within a second (a file) or two (a database).")
    _config_option(keys, "for [auth] keys_file or keys_database_url")
    keys.add_argument("--file", type=Path, help="the key file (default: the config's)")
    actions = keys.add_subparsers(dest="action", required=True, metavar="ACTION")
    add = actions.add_parser("add", help="create a key and print it once")
    add.add_argument("name", help="who the key is for, e.g. billing-app")
    add.add_argument("--admin", action="store_true", help="may call admin routes (reload)")
    add.add_argument("--requests-per-s", type=float, help="this key's request rate limit")
    add.add_argument("--requests-burst", type=float)
    add.add_argument("--images-per-s", type=float, help="this key's image rate limit")
    add.add_argument("--images-burst", type=float)
    add.add_argument("--max-in-flight", type=int, help="this key's concurrent requests")
    actions.add_parser("list", help="the keys, without their secrets")
    revoke = actions.add_parser("revoke", help="revoke a key by id, or every key of a name")
    revoke.add_argument("which", metavar="ID_OR_NAME")
    keys.set_defaults(handler=_keys)


def _shown(store: Any) -> str:
    """Where the keys are; a file's path relative to the working directory when below it."""
    if not hasattr(store, "path"):
        return store.describe()
    path = Path(store.path).resolve()
    return str(path.relative_to(Path.cwd())) if path.is_relative_to(Path.cwd()) else str(path)


def _keys(args: argparse.Namespace) -> int:
    from .access.key_stores import key_store
    from .access.keys import LIMIT_FIELDS, add_key, read_keys, revoke_key
    from .config import load_settings

    path = args.file or load_settings(config_path(args.config)).auth.keys_at()
    if path is None:
        print("error: no keys: set [auth] keys_file or keys_database_url in the config, or "
              "pass --file", file=sys.stderr)
        return 2
    if args.action == "add":
        limits = {f: getattr(args, f) for f in LIMIT_FIELDS}
        record, key = add_key(path, args.name, args.admin, limits)
        kind = "admin key" if record.admin else "key"
        print(f"created {kind} {record.id} for {record.name} in {_shown(key_store(path))}.\n"
              "Store it now; it is not kept and cannot be shown again:\n" + key)
    elif args.action == "list":
        for record in read_keys(path).values():
            state = f"revoked {record.revoked}" if record.revoked else "live"
            limits = " ".join(f"{k}={v:g}" for k, v in record.public()["limits"].items())
            print(f"{record.id}  {record.name:<20} {'admin' if record.admin else 'user ':<5}  "
                  f"created {record.created}  {state}" + (f"  {limits}" if limits else ""))
    else:
        for record in revoke_key(path, args.which):
            print(f"revoked {record.id} ({record.name})")
    return 0


def _add_publish_parser(commands: Subcommands) -> None:
    publish = commands.add_parser(
        "publish", help="upload a version to an S3-compatible bucket (manifest last)",
        description="Verify a version's model.pb against its manifest, then upload model.pb, "
                    "confusion.png (if present) and manifest.json -- last, so a polling server "
                    "never sees a manifest without its graph. Endpoint and credentials come "
                    "from the config's [s3] section, else AWS_ENDPOINT_URL, "
                    "AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and the rest of boto3's chain.")
    publish.add_argument("--model", required=True, help="model name, e.g. digits-cnn")
    publish.add_argument("--version", type=int, help="default: the newest under --graphs-dir")
    publish.add_argument("--to", required=True, metavar="s3://BUCKET/PREFIX",
                         help="the bucket and prefix a server's [store] reads from")
    _graphs_dir_option(publish)
    _config_option(publish, "for its [s3] section (endpoint, region, credentials)")
    publish.add_argument("--force", action="store_true",
                         help="overwrite a version already in the bucket")
    publish.set_defaults(handler=_publish)


def _publish(args: argparse.Namespace) -> int:
    from .blobstore import make_s3_client
    from .config import load_settings
    from .models import store
    from .models.loader import resolve_version
    from .models.publish import parse_s3_url, publish

    location = parse_s3_url(args.to)
    settings = load_settings(config_path(args.config))
    version = resolve_version(args.graphs_dir, args.model, args.version)
    directory = store.version_dir(args.graphs_dir, args.model, version)
    print(f"publishing {args.model} version {version} from {directory} to {args.to}", flush=True)
    keys = publish(make_s3_client(settings.s3), directory, args.model, version, location,
                   force=args.force, say=lambda line: print(line, flush=True))
    print(f"published {len(keys)} files; manifest last")
    return 0


if __name__ == "__main__":
    sys.exit(main())
