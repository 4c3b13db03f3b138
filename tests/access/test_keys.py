"""The key file: keys are shown once, stored as salted hashes, verified in constant time."""
from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time

import pytest

from service.access import keys
from service.access.keys import KeyRing, add_key, read_keys, revoke_key
from service.errors import ConfigError, InvalidInput, NotFound
from support import REPO


def test_a_new_key_verifies_and_only_its_hash_is_stored(tmp_path):
    path = tmp_path / "keys.json"
    record, key = add_key(path, "billing-app")
    text = path.read_text()
    secret = key.split("_", 2)[2]
    assert key.startswith(f"dk_{record.id}_") and secret not in text and key not in text
    assert record.hash in text and record.salt in text
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    ring = KeyRing(path)
    assert ring.verify(key) == record
    assert not record.admin


@pytest.mark.parametrize("mangle", [
    lambda k: k[:-1] + ("A" if k[-1] != "A" else "B"),   # one character of the secret
    lambda k: k.replace("dk_", "dk_0", 1)[:len(k)],       # the id shifted
    lambda k: "dk_" + "0" * 12 + k[15:],                  # an unknown id, a real secret
    lambda k: k[:20],                                     # truncated
    lambda k: "",
    lambda k: "x" * 5000,
])
def test_anything_but_the_exact_key_is_refused(tmp_path, mangle):
    path = tmp_path / "keys.json"
    _, key = add_key(path, "a")
    assert KeyRing(path).verify(mangle(key)) is None


def test_salts_differ_so_equal_secrets_would_not_hash_alike(tmp_path):
    path = tmp_path / "keys.json"
    first, _ = add_key(path, "a")
    second, _ = add_key(path, "b")
    assert first.salt != second.salt and first.id != second.id


def test_revoking_by_name_or_id_takes_effect_in_a_running_ring(tmp_path, monkeypatch):
    monkeypatch.setattr(keys, "RECHECK_S", 0.0)
    path = tmp_path / "keys.json"
    record, key = add_key(path, "tester")
    _, other = add_key(path, "other", admin=True)
    ring = KeyRing(path)
    assert ring.verify(key) is not None
    time.sleep(0.01)  # a distinct modification time
    revoked = revoke_key(path, "tester")
    assert [r.id for r in revoked] == [record.id] and revoked[0].revoked
    assert ring.verify(key) is None
    assert ring.verify(other).admin
    with pytest.raises(NotFound):
        revoke_key(path, record.id)  # already revoked: nothing live matches


def test_limits_round_trip_and_bad_names_are_refused(tmp_path):
    path = tmp_path / "keys.json"
    record, _ = add_key(path, "fast", limits={"max_in_flight": 4, "requests_per_s": 50,
                                              "images_per_s": None})
    own = read_keys(path)[record.id].limits
    assert own == {"requests_per_s": 50, "max_in_flight": 4}
    assert list(own) == ["requests_per_s", "max_in_flight"]  # RateLimits' order, as written
    with pytest.raises(InvalidInput):
        add_key(path, "no spaces please")
    with pytest.raises(InvalidInput):
        add_key(path, "typo", limits={"request_per_s": 5})


def test_a_malformed_file_is_a_config_error_at_start_but_not_later(tmp_path, monkeypatch):
    monkeypatch.setattr(keys, "RECHECK_S", 0.0)
    path = tmp_path / "keys.json"
    path.write_text("{not json")
    with pytest.raises(ConfigError, match="keys.json"):
        KeyRing(path)
    path.write_text(json.dumps({"keys": []}))
    ring = KeyRing(path)
    _, key = add_key(path, "a")
    assert ring.verify(key) is not None
    path.write_text("{broken")  # a running server keeps the keys it had
    assert ring.verify(key) is not None


def test_cli_prints_the_key_once_and_lists_without_secrets(tmp_path):
    path = tmp_path / "keys.json"

    def cli(*args: str) -> str:
        done = subprocess.run([sys.executable, "-m", "service", "keys", "--file", str(path),
                               *args], cwd=REPO, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return done.stdout

    out = cli("add", "ops", "--admin", "--requests-per-s", "5")
    key = out.strip().splitlines()[-1]
    assert keys.KEY_PATTERN.match(key)
    listing = cli("list")
    assert "ops" in listing and "admin" in listing and "requests_per_s=5" in listing
    assert key.split("_", 2)[2] not in listing and "hash" not in listing
    assert "revoked" in cli("revoke", "ops")
    assert "revoked 20" in cli("list")
