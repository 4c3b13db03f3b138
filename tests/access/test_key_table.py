"""API keys in PostgreSQL (a real server): `keys add/list/revoke` write the table, and every
ring reading it (every replica) honours a change within its reload period."""
from __future__ import annotations

import logging
import subprocess
import sys

import pytest

from service.access import keys
from service.access.key_stores import KeyTable
from service.access.keys import KeyRing, add_key, read_keys, revoke_key
from service.errors import ConfigError, NotFound
from service.replicas.servers import PostgresServer
from support import REPO, require_server, wait_for


@pytest.fixture
def url(postgres_server) -> str:
    return postgres_server.new_database()


@pytest.fixture
def fast_reload(monkeypatch):
    monkeypatch.setattr(keys, "TABLE_RELOAD_S", 0.05)


@pytest.fixture
def rings():
    """KeyRing(where), each closed (its reloading thread stopped) after the test."""
    made: list[KeyRing] = []

    def make(where) -> KeyRing:
        made.append(KeyRing(where))
        return made[-1]
    yield make
    for ring in made:
        ring.close()


def test_a_key_added_to_the_table_verifies_and_only_its_hash_is_stored(url, rings):
    record, key = add_key(url, "billing-app", limits={"requests_per_s": 5})
    assert read_keys(url) == {record.id: record}
    assert record.limits == {"requests_per_s": 5}
    ring = rings(url)
    assert ring.verify(key) == record and ring.verify(key[:-1] + "x") is None
    stored = KeyTable(url)._run(lambda c: c.execute("SELECT * FROM api_keys").fetchall())
    assert key.split("_", 2)[2] not in repr(stored) and stored[0]["hash"] == record.hash


def test_every_ring_follows_an_add_and_a_revoke(url, fast_reload, rings):
    first, second = rings(url), rings(url)  # two replicas
    record, key = add_key(url, "tester")
    for ring in (first, second):
        wait_for(lambda: ring.verify(key) is not None, timeout=10, what="the new key")
    revoke_key(url, "tester")
    for ring in (first, second):
        wait_for(lambda: ring.verify(key) is None, timeout=10, what="the revocation")
    with pytest.raises(NotFound):
        revoke_key(url, record.id)


def test_a_database_that_goes_away_keeps_the_keys_known(fast_reload, rings, caplog):
    caplog.set_level(logging.INFO, logger="service.access")
    server = require_server(PostgresServer).start()
    try:
        _, key = add_key(server.url, "tester")
        ring = rings(server.url)
        assert ring.verify(key) is not None
        server.stop()
        wait_for(lambda: "API keys not reloaded (keeping the 1 known)" in caplog.text,
                 timeout=30)
        assert ring.verify(key) is not None
        assert caplog.text.count("API keys not reloaded") == 1  # once an outage, not per try
        server.start()
        wait_for(lambda: "API keys reloaded again" in caplog.text, timeout=30)
    finally:
        server.cleanup()
    with pytest.raises(ConfigError, match="cannot use the api_keys table"):
        KeyRing(server.url)  # at start-up, a database that cannot be read fails loudly


def test_the_keys_command_writes_the_configured_table(url, tmp_path, rings):
    config = tmp_path / "service.conf"
    config.write_text(f'[auth]\nkeys_database_url = "{url}"\n')

    def cli(*args: str) -> str:
        done = subprocess.run([sys.executable, "-m", "service", "keys", "--config", str(config),
                               *args], cwd=REPO, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    created = cli("add", "app", "--max-in-flight", "2")
    assert "in the api_keys table of postgresql://127.0.0.1/" in created
    key = created.strip().splitlines()[-1]
    assert rings(url).verify(key).name == "app"
    assert "max_in_flight=2" in cli("list")
    assert "revoked" in cli("revoke", "app")
    assert rings(url).verify(key) is None


def test_a_file_and_a_table_at_once_are_refused_naming_the_key(tmp_path):
    from service.config import load_settings

    config = tmp_path / "service.conf"
    config.write_text('[auth]\nkeys_file = "k.json"\nkeys_database_url = "postgresql://x/y"\n')
    with pytest.raises(ConfigError, match=r"\[auth\].*keys_database_url"):
        load_settings(config)
