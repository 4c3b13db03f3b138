"""Settings read once from a CherryPy-format config file and validated at start-up.

The file is INI with Python-literal values, like every CherryPy config:
``[global]`` is handed to CherryPy as is (server socket, thread pool, logging);
``[service]`` holds this service's settings; each ``[model:<name>]`` section serves a model.
Every key has a default, so an empty file serves the shipped graphs.
"""
from __future__ import annotations

import ast
import configparser
import dataclasses
import ipaddress
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parent.parent
MODEL_PREFIX = "model:"


@dataclass(frozen=True)
class PoolSettings:
    """One model's session pool: its sessions, batching, queue and supervision."""

    pool_size: int = 1              # sessions, one worker thread each
    max_batch_size: int = 256       # rows per session.run
    # The longest a worker waits for more work to fill a batch, and only while fewer
    # submissions have arrived than joined its previous batch (a lone caller never waits).
    # 0: never wait; batches still hold whatever queued while the previous one ran.
    batch_timeout_ms: float = 1.0
    queue_size: int = 1024          # pending submissions before Overloaded
    intra_op_threads: int = 0       # 0: cores // (workers x pool_size): threads <= cores
    inter_op_threads: int = 1
    # The session's worker thread, and the threads TensorFlow starts from it, run this much
    # nicer than the request threads (0-19): when the cores are busy, the thread holding
    # the interpreter lock -- which every request needs -- goes first.
    compute_nice: int = 10
    # A session.run taking longer than this is deemed wedged: its worker is replaced.
    worker_timeout_s: float = 30.0
    # Fault injection, for tests and drills only: each session.run first sleeps this long,
    # so "inference is slow" (a full queue, a missed deadline) happens by construction.
    inject_run_delay_s: float = 0.0

    def __post_init__(self) -> None:
        for key in ("pool_size", "max_batch_size", "queue_size"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be >= 1, got {getattr(self, key)}")
        if self.batch_timeout_ms < 0:
            raise ValueError(f"batch_timeout_ms must be >= 0, got {self.batch_timeout_ms}")
        if not self.worker_timeout_s > 0:
            raise ValueError(f"worker_timeout_s must be > 0, got {self.worker_timeout_s}")
        if self.inject_run_delay_s < 0:
            raise ValueError(f"inject_run_delay_s must be >= 0, got {self.inject_run_delay_s}")
        if not 0 <= self.compute_nice <= 19:
            raise ValueError(f"compute_nice must be from 0 to 19, got {self.compute_nice}")

    def threads_per_session(self) -> int:
        """Intra-op threads for each session: the calling thread's CPUs, split between the
        pool's sessions (a session worker calls it on the CPUs its sessions will use)."""
        return self.intra_op_threads or max(1, usable_cpus() // self.pool_size)

    def for_workers(self, workers: int) -> "PoolSettings":
        """These settings in one of ``workers`` processes: ``intra_op_threads = 0`` means
        cores / (workers x pool_size), so all sessions together use each core once."""
        if self.intra_op_threads:
            return self
        cores = os.cpu_count() or 1
        return dataclasses.replace(self, intra_op_threads=max(1, cores // (workers * self.pool_size)))

    def check_interval(self) -> float:
        """Seconds between supervisor checks: a wedge is seen within timeout + this."""
        return min(1.0, self.worker_timeout_s / 4)


@dataclass(frozen=True)
class ModelConfig:
    """How one model is served (``[model:<name>]``): which version, the QA floor, its pool."""

    name: str
    version: int | None = None  # None: serve and follow the newest in the store; N: pin N
    min_accuracy: float = 0.0
    pool: PoolSettings = field(default_factory=PoolSettings)


@dataclass(frozen=True)
class ServiceSettings:
    graphs_dir: Path = REPO_ROOT / "graphs"
    mnist_dir: Path = REPO_ROOT / "data" / "mnist"
    images_root: Path | None = None      # where {"path": ...} instances may be read; None: off
    default_model: str = "digits-cnn"    # for the seed-compatible routes
    max_body_bytes: int = 10 * 1024 * 1024
    max_pixels: int = 25_000_000
    max_batch_size: int = 256            # instances per request
    request_timeout_s: float = 10.0
    admin_token: str | None = None       # required by admin routes (model reload); None: off
    max_image_bytes: int = 10 * 1024 * 1024  # one image (raw, base64-decoded or read by path)
    max_frames: int = 100                # frames in one GIF/TIFF/WebP/APNG
    max_json_depth: int = 32             # nesting of a JSON body
    client_timeout_s: float = 30.0       # a request must arrive in full within this (slow clients)
    header_timeout_s: float = 10.0       # its request line and headers within this; 0: off
    # Peers whose X-Forwarded-For / X-Forwarded-Proto are believed (web/proxies.py): addresses,
    # CIDR networks, or "unix" (a Unix-socket peer, e.g. nginx on this machine).
    trusted_proxies: tuple[str, ...] = ()
    workers: int = 1                     # serving processes (serve --workers); 0: one per core
    socket_dir: Path | None = None       # workers listen on <dir>/worker-<n>.sock (for nginx)
    run_dir: Path = REPO_ROOT / "var" / "run"  # a cluster's shared state, under <dir>/<parent pid>
    # What X-Served-By and /v1/models/<m>'s served_by say: this replica's name among many.
    # $DIGITS_REPLICA_ID (serve --replica-id, or a pod's name) beats it; neither: pid-<pid>.
    replica_id: str | None = None
    # Interpreter threads on one of the process's CPUs, model sessions on the others; a
    # cluster worker on its share of them (cpu_placement.py). False: the kernel decides.
    pin_cpus: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "trusted_proxies", trusted_proxies(self.trusted_proxies))
        if self.replica_id is not None and not REPLICA_ID.fullmatch(self.replica_id):
            raise ValueError(f"replica_id: {self.replica_id!r} is not a replica id (1-64 "
                             "letters, digits, '.', '_', '-')")


def usable_cpus() -> int:
    """The CPUs the calling thread may run on (taskset, a cpuset, cpu_placement.py)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


REPLICA_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
REPLICA_ENV = "DIGITS_REPLICA_ID"


POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def check_postgres_url(key: str, url: str | None) -> None:
    if url is not None and not url.startswith(POSTGRES_SCHEMES):
        raise ValueError(f"{key}: expected a PostgreSQL URL (postgresql://user:password@host:"
                         f"port/dbname), got {url!r}")


UNIX_PEER = "unix"  # how trusted_proxies names a Unix-socket peer (cheroot reports no address)


def trusted_proxies(entries: Any) -> tuple[str, ...]:
    """``[service] trusted_proxies`` checked and normalised: "unix", or IP networks as text."""
    if isinstance(entries, str) or not isinstance(entries, (list, tuple)):
        raise ValueError(f"trusted_proxies: expected a list of addresses, CIDR networks or "
                         f"{UNIX_PEER!r}, got {entries!r}")
    normalised = []
    for entry in entries:
        if entry == UNIX_PEER:
            normalised.append(UNIX_PEER)
            continue
        try:
            normalised.append(str(ipaddress.ip_network(entry.strip(), strict=False)))
        except (ValueError, TypeError, AttributeError):
            raise ValueError(f"trusted_proxies: {entry!r} is not an IP address, a CIDR network "
                             f"(e.g. \"10.0.0.0/8\") or {UNIX_PEER!r}") from None
    return tuple(normalised)


@dataclass(frozen=True)
class S3Settings:
    """How to reach an S3-compatible service; credentials default to the AWS_* variables."""

    endpoint_url: str | None = None
    region: str | None = None
    access_key_id: str | None = None
    secret_access_key: str | None = None


@dataclass(frozen=True)
class StoreSettings:
    """Where model versions come from: ``graphs_dir``, or ``s3://bucket/prefix``."""

    kind: str = "local"                  # "local" or "s3"
    bucket: str | None = None
    prefix: str = ""
    cache_dir: Path = REPO_ROOT / "var" / "model-cache"
    poll_interval_s: float = 30.0        # look for new versions this often; 0: never


@dataclass(frozen=True)
class InputLogSettings:
    """Every predicted image and its record, for the next training run."""

    enabled: bool = True
    dir: Path = REPO_ROOT / "var" / "inputlog"    # SQLite database (and images, when local)
    # The records in PostgreSQL instead ("postgresql://user:password@host:port/dbname"),
    # shared by every replica; None: the SQLite file in ``dir``.
    database_url: str | None = None
    backend: str = "local"               # where images go: "local" or "s3"
    bucket: str | None = None
    prefix: str = "inputlog/"
    metadata_only: bool = False          # keep records, not image bytes
    max_disk_bytes: int = 1024 ** 3      # oldest images pruned beyond this
    queue_size: int = 10000              # pending writes before a drop (counted, logged)

    def __post_init__(self) -> None:
        check_postgres_url("database_url", self.database_url)


@dataclass(frozen=True)
class LogSettings:
    format: str = "text"                 # "text" or "json" (one object per line)
    file: Path | None = None             # None: stderr
    max_bytes: int = 10 * 1024 * 1024    # rotate the file beyond this
    backup_count: int = 5


@dataclass(frozen=True)
class AuthSettings:
    """API keys: off unless ``keys_file`` names a key file or ``keys_database_url`` a
    PostgreSQL database that every replica reads (``python -m service keys add``)."""

    keys_file: Path | None = None
    keys_database_url: str | None = None  # the table api_keys there (may be the input log's)
    protect_health: bool = False         # /healthz, /readyz, /status need a key too
    protect_metrics: bool = False        # /metrics needs a key too
    form_open: bool = False              # the HTML form works without a key (trusted network)
    # who reads /v1/models/<m>/feedback-summary (and /models's live accuracy): "key" (any
    # key, as the other /v1/models routes), "admin" (admin keys, or the admin token), "open"
    feedback_summary: str = "key"

    def __post_init__(self) -> None:
        check_postgres_url("keys_database_url", self.keys_database_url)
        if self.keys_file is not None and self.keys_database_url is not None:
            raise ValueError("keys_database_url: give keys_file or keys_database_url, not both")

    def keys_at(self) -> Path | str | None:
        """Where the keys are: the file, the database URL, or None (keys are off)."""
        return self.keys_file or self.keys_database_url


@dataclass(frozen=True)
class RateLimits:
    """One client's token buckets and in-flight cap; 0 turns a limit off."""

    requests_per_s: float = 0.0
    requests_burst: float = 0.0          # bucket size; 0: max(1, requests_per_s)
    images_per_s: float = 0.0
    images_burst: float = 0.0            # bucket size; 0: max(max_batch_size, images_per_s)
    max_in_flight: int = 0               # concurrent requests per key or client; 0: no limit


@dataclass(frozen=True)
class RateLimitSettings(RateLimits):
    """``[ratelimit]``: the limits of each API key (each client address without keys).

    A key's own limits in the key file override these.
    """

    # A refused request waits this long before its 429 (at most tarpit_slots at once): a
    # flooding client then costs a sleeping thread, not the CPU everyone else needs.
    tarpit_s: float = 0.5
    tarpit_slots: int = 16
    # Where the buckets and in-flight counts live when every replica must share them, e.g.
    # "redis://127.0.0.1:6379/0" (also rediss://, unix:///path.sock); None: this process's
    # memory, or the machine's shared file for cluster workers (access/shared_limits.py).
    redis_url: str | None = None
    # Redis unreachable: admit requests unchecked (True), or refuse them with 503 (False).
    fail_open: bool = True
    # Each Redis command's connect and read timeout: a hung Redis holds a request this long.
    redis_timeout_s: float = 0.25

    def __post_init__(self) -> None:
        if self.redis_url is not None and not self.redis_url.startswith(REDIS_SCHEMES):
            raise ValueError(f"redis_url: {self.redis_url!r} is not a Redis URL; expected "
                             "redis://host:port/db, rediss://host:port/db (TLS) or "
                             "unix:///path/to/redis.sock")
        if not self.redis_timeout_s > 0:
            raise ValueError(f"redis_timeout_s must be > 0, got {self.redis_timeout_s}")


REDIS_SCHEMES = ("redis://", "rediss://", "unix://")


@dataclass(frozen=True)
class Settings:
    service: ServiceSettings
    models: list[ModelConfig]
    cherrypy: dict[str, Any] = field(default_factory=dict)
    source: Path | None = None
    s3: S3Settings = field(default_factory=S3Settings)
    store: StoreSettings = field(default_factory=StoreSettings)
    inputlog: InputLogSettings = field(default_factory=InputLogSettings)
    logging: LogSettings = field(default_factory=LogSettings)
    auth: AuthSettings = field(default_factory=AuthSettings)
    ratelimit: RateLimitSettings = field(default_factory=RateLimitSettings)


CHERRYPY_DEFAULTS: dict[str, Any] = {
    "server.socket_host": "127.0.0.1",
    "server.socket_port": 8080,
    "server.thread_pool": 16,
    "server.socket_queue_size": 128,
    "server.socket_timeout": 10,
    "server.shutdown_timeout": 10,
    # Connections waiting for a free worker beyond this are answered 503 at once
    # (web/connection_guard.py); a put timeout would stall cheroot's accept loop.
    "server.accepted_queue_size": 64,
    "server.accepted_queue_timeout": 0,
    # Idle keep-alive connections kept open (they wait in cheroot's selector, not a thread);
    # beyond this, answers say "Connection: close" (cheroot's own default is 10).
    "server.keep_alive_conn_limit": 256,
    "engine.autoreload.on": False,
    "log.screen": True,
    "request.show_tracebacks": False,
}

DEFAULT_MODELS = ("digits-cnn", "digits-rnn")


def config_parser() -> configparser.ConfigParser:
    """A parser that reads config files as ``load_settings`` does (and writes them back)."""
    parser = configparser.ConfigParser(interpolation=None, delimiters=("=",))
    parser.optionxform = str  # keep key case, as CherryPy does
    return parser


def load_settings(path: Path | None) -> Settings:
    """Read and validate ``path`` (None or a missing default file: all defaults)."""
    parser = config_parser()
    if path is not None:
        path = Path(path)
        try:
            with open(path) as handle:
                parser.read_file(handle)
        except OSError as exc:
            raise ConfigError(f"cannot read config {path}: {exc.strerror or exc}") from None
        except configparser.Error as exc:
            raise ConfigError(f"{path}: {exc.message}") from None
    where = str(path or "defaults")
    raw = {name: _literal_section(parser, name, where) for name in parser.sections()}

    service = _build(ServiceSettings, raw.get("service", {}), f"{where} [service]")
    model_sections = {n[len(MODEL_PREFIX):]: v for n, v in raw.items() if n.startswith(MODEL_PREFIX)}
    names = raw.get("service", {}).get("models") or list(model_sections) or list(DEFAULT_MODELS)
    for name in names:
        if not isinstance(name, str) or not MODEL_NAME.fullmatch(name):
            raise ConfigError(f"{where} [service] models: {name!r} is not a model name (letters, "
                              "digits, '.', '_', '-'; it is a path segment and a file name)")
    models = [_model_config(n, model_sections.get(n, {}), f"{where} [model:{n}]") for n in names]
    sections = {name: _build(cls, raw.get(name, {}), f"{where} [{name}]")
                for name, cls in SECTIONS.items()}
    _check_choices(sections, where)
    unknown = set(raw) - {"global", "service", *SECTIONS} - {MODEL_PREFIX + n for n in model_sections}
    if unknown:
        raise ConfigError(f"{where}: unknown section(s) {sorted(unknown)}; expected [global], "
                          f"[service], [{'], ['.join(SECTIONS)}] and [model:<name>]")
    if service.admin_token and sections["auth"].keys_at():
        raise ConfigError(f"{where} [service] admin_token: not used with API keys; "
                          "admin routes take an admin key (`python -m service keys add NAME "
                          "--admin`)")
    if service.default_model not in names:
        raise ConfigError(f"{where} [service] default_model: {service.default_model!r} is not "
                          f"one of the served models {names}")
    return Settings(service, models, {**CHERRYPY_DEFAULTS, **raw.get("global", {})}, path,
                    **sections)


MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
SECTIONS = {"s3": S3Settings, "store": StoreSettings, "inputlog": InputLogSettings,
            "logging": LogSettings, "auth": AuthSettings, "ratelimit": RateLimitSettings}
CHOICES = {("store", "kind"): ("local", "s3"), ("inputlog", "backend"): ("local", "s3"),
           ("auth", "feedback_summary"): ("open", "key", "admin"),
           ("logging", "format"): ("text", "json")}


def _check_choices(sections: dict[str, Any], where: str) -> None:
    for (section, key), allowed in CHOICES.items():
        value = getattr(sections[section], key)
        if value not in allowed:
            raise ConfigError(f"{where} [{section}] {key}: {value!r} is not one of {allowed}")
    for section in ("store", "inputlog"):
        settings = sections[section]
        uses_s3 = getattr(settings, "kind", None) == "s3" or getattr(settings, "backend", None) == "s3"
        if uses_s3 and not settings.bucket:
            raise ConfigError(f"{where} [{section}] bucket: required when using S3")


def _literal_section(parser: configparser.ConfigParser, name: str, where: str) -> dict[str, Any]:
    values = {}
    for key, text in parser.items(name):
        try:
            values[key] = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            raise ConfigError(f"{where} [{name}] {key}: {text!r} is not a Python literal "
                              "(quote strings: key = \"value\")") from None
    return values


def _model_config(name: str, values: dict[str, Any], where: str) -> ModelConfig:
    values = dict(values)
    pool_keys = {f.name for f in dataclasses.fields(PoolSettings)}
    pool_values = {k: values.pop(k) for k in list(values) if k in pool_keys}
    pool = _build(PoolSettings, pool_values, where)
    return _build(ModelConfig, {**values, "name": name, "pool": pool}, where)


def _build(cls: type, values: dict[str, Any], where: str):
    """Instantiate a settings dataclass, naming the key at fault in any error."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    converted = {}
    for key, value in values.items():
        if key == "models" and cls is ServiceSettings:
            continue
        if key not in fields:
            raise ConfigError(f"{where} {key}: unknown key; known keys: {sorted(fields)}")
        converted[key] = _convert(value, fields[key], cls, f"{where} {key}")
    try:
        return cls(**converted)
    except ValueError as exc:  # __post_init__ checks name their key
        raise ConfigError(f"{where}: {exc}") from None


def _convert(value: Any, spec: dataclasses.Field, cls: type, where: str) -> Any:
    default = spec.default if spec.default is not dataclasses.MISSING else None
    kind = str(spec.type)
    if value is None and ("None" in kind):
        return None
    if "Path" in kind:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a path string, got {value!r}")
        path = Path(value)
        return path if path.is_absolute() else REPO_ROOT / path
    for typ in (bool, int, float, str):
        if isinstance(default, typ) or kind.startswith(typ.__name__):
            if typ is float and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            if not isinstance(value, typ) or (typ is int and isinstance(value, bool)):
                raise ConfigError(f"{where}: expected {typ.__name__}, got {value!r}")
            if typ in (int, float) and value < 0:
                raise ConfigError(f"{where}: must not be negative, got {value!r}")
            return value
    return value
