"""Shared pytest fixtures: fixture images and one real server for the session."""
from __future__ import annotations

from pathlib import Path

import pytest

import fuzzing
from service.replicas.servers import PostgresServer, RedisServer, S3Server
from support import FIXTURES, ServerProcess, require_server


@pytest.fixture
def fixtures_dir() -> Path:
    """The committed sample images (see tests/fixtures/fixtures.json)."""
    return FIXTURES


@pytest.fixture(scope="session")
def images_root(tmp_path_factory) -> Path:
    """A directory the shared server may read {"path": ...} images from."""
    root = tmp_path_factory.mktemp("images_root")
    for name in ("digit7_28.png", "photo_digit.jpg"):
        (root / name).write_bytes((FIXTURES / name).read_bytes())
    (root / "sub").mkdir()
    (root / "sub" / "digit2.gif").write_bytes((FIXTURES / "digit2_112.gif").read_bytes())
    return root


@pytest.fixture(scope="session")
def server(tmp_path_factory, images_root) -> str:
    """One real server (shipped graphs) for the whole session; yields its base URL."""
    tmp = tmp_path_factory.mktemp("server")
    proc = ServerProcess(tmp, f'[service]\nimages_root = "{images_root}"\n').start()
    yield proc.url
    proc.stop()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A real S3-compatible endpoint (moto_server) for the session; create your own buckets."""
    server = S3Server(tmp_path_factory.mktemp("s3")).start()
    yield server
    server.cleanup()


@pytest.fixture(scope="session")
def postgres_server():
    """A real PostgreSQL server (a throwaway cluster) for the session; tests take a database
    of their own with ``postgres_server.new_database()``."""
    server = require_server(PostgresServer).start()
    yield server
    server.cleanup()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    """A real redis-server for the session; keep to keys of your own (a prefix), and do not
    stop it (take ``private_redis`` for that)."""
    server = require_server(RedisServer, tmp_path_factory.mktemp("redis")).start()
    yield server
    server.cleanup()


@pytest.fixture
def private_redis(tmp_path):
    """A real redis-server of this test's own, to stop, restart or freeze."""
    server = require_server(RedisServer, tmp_path / "redis").start()
    yield server
    server.cleanup()  # SIGKILL: a frozen one goes too


def pytest_report_header() -> str:
    return f"fuzz: FUZZ_SEED={fuzzing.SEED}, examples database {fuzzing.EXAMPLES_DIR}"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """A failed property-based test says how to replay it (the seed of this run)."""
    report = yield
    if report.failed and item.get_closest_marker("fuzz") is not None:
        report.sections.append(("fuzz seed", fuzzing.REPLAY))
    return report


def pytest_collection_modifyitems(items) -> None:
    for item in items:  # every hypothesis or schemathesis test is a fuzz test
        if getattr(getattr(item, "obj", None), "is_hypothesis_test", False) or \
                "schemathesis" in type(item).__module__ or "fuzz" in item.path.name:
            item.add_marker("fuzz")
