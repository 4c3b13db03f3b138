"""API keys: a JSON file of key ids with salted hashes, never the keys themselves.

A key reads ``dk_<id>_<secret>``: the id (not secret) finds the record, the 256-bit random
secret is checked against ``HMAC-SHA256(salt, secret)`` with a constant-time comparison. A
fast hash is the right tool here: the secret is random, not a password, so there is nothing
to slow down a guess of -- and every request pays for the check.

The server re-reads the file when it changes (checked at most once a second), so
``python -m service keys add|revoke`` takes effect without a restart.
"""
from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import re
import secrets
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping

from ..blobstore import write_atomic
from ..config import RateLimits
from ..errors import ConfigError, InvalidInput, NotFound

PREFIX = "dk"
KEY_PATTERN = re.compile(r"^dk_([0-9a-f]{12})_([A-Za-z0-9_-]{43})$")
NAME_PATTERN = re.compile(r"^[\w.@-]{1,64}$")
RECHECK_S = 1.0  # how often the server looks at the file's modification time
LIMIT_FIELDS = tuple(f.name for f in dataclasses.fields(RateLimits))


def key_limits(values: Mapping[str, float | None]) -> dict[str, float]:
    """A key's own limits: the :class:`RateLimits` fields it sets, in field order.

    A field left out (or None) falls back to ``[ratelimit]``; a key's 0 turns it off.
    """
    unknown = sorted(set(values) - set(LIMIT_FIELDS))
    if unknown:
        raise InvalidInput(f"unknown rate limit(s) {unknown}; known: {list(LIMIT_FIELDS)}")
    return {k: values[k] for k in LIMIT_FIELDS if values.get(k) is not None}


@dataclass(frozen=True)
class ApiKey:
    id: str
    name: str
    admin: bool
    salt: str
    hash: str
    created: str
    revoked: str | None = None
    limits: dict[str, float] = field(default_factory=dict)  # see key_limits()

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def rate_limits(self, defaults: RateLimits) -> RateLimits:
        """``defaults`` with this key's own limits applied."""
        return dataclasses.replace(defaults, **self.limits) if self.limits else defaults

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ApiKey":
        own = data.get("limits", {})
        limits = key_limits({k: own.get(k) for k in LIMIT_FIELDS})  # unknown names ignored
        return cls(**{**{f: data.get(f) for f in ("revoked",)},
                      **{f: data[f] for f in ("id", "name", "admin", "salt", "hash", "created")},
                      "limits": limits})

    def public(self) -> dict[str, Any]:
        """What ``keys list`` shows: everything but the salt and hash."""
        data = self.to_dict()
        del data["salt"], data["hash"]
        return data


def _digest(salt: str, secret: str) -> str:
    return hmac.new(bytes.fromhex(salt), secret.encode(), hashlib.sha256).hexdigest()


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def read_keys(path: Path) -> dict[str, ApiKey]:
    """Every key in ``path`` by id (revoked ones included); a missing file holds none."""
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read the key file {path}: {exc}") from None
    try:
        keys = [ApiKey.from_dict(item) for item in data["keys"]]
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"the key file {path} is malformed: {exc!r}") from None
    return {key.id: key for key in keys}


def write_keys(path: Path, keys: dict[str, ApiKey]) -> None:
    """Replace ``path`` atomically, readable by its owner only."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = json.dumps({"keys": [k.to_dict() for k in keys.values()]}, indent=2) + "\n"
    write_atomic(path, payload.encode(), mode=0o600)


def add_key(path: Path, name: str, admin: bool = False,
            limits: Mapping[str, float | None] | None = None) -> tuple[ApiKey, str]:
    """Create a key; returns its record and the key itself (shown once, never stored).

    ``limits``: the key's own, by :class:`RateLimits` field (see :func:`key_limits`).
    """
    if not NAME_PATTERN.match(name):
        raise InvalidInput(f"key name {name!r}: use 1-64 letters, digits, '.', '@', '-', '_'.")
    own = key_limits(limits or {})
    keys = read_keys(path)
    key_id = secrets.token_hex(6)
    while key_id in keys:
        key_id = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    salt = secrets.token_hex(16)
    record = ApiKey(key_id, name, admin, salt, _digest(salt, secret), _now(), limits=own)
    keys[key_id] = record
    write_keys(path, keys)
    return record, f"{PREFIX}_{key_id}_{secret}"


def revoke_key(path: Path, which: str) -> list[ApiKey]:
    """Revoke the key with this id, or every live key with this name."""
    keys = read_keys(path)
    matched = [k for k in keys.values() if k.revoked is None and which in (k.id, k.name)]
    if not matched:
        raise NotFound(f"no live key has the id or name {which!r}")
    for key in matched:
        keys[key.id] = dataclasses.replace(key, revoked=_now())
    write_keys(path, keys)
    return [keys[k.id] for k in matched]


class KeyRing:
    """The server's view of the key file: ``verify(presented)`` -> the live key or None."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._lock = threading.Lock()
        self._keys: dict[str, ApiKey] = {}
        self._stamp: tuple[int, int] | None = None
        self._checked = 0.0
        self._refresh(force=True)

    def verify(self, presented: str) -> ApiKey | None:
        self._refresh()
        match = KEY_PATTERN.match(presented)
        key = self._keys.get(match.group(1)) if match else None
        secret = match.group(2) if match else presented
        # Hash and compare even for an unknown id, so timing says nothing about ids.
        salt, expected = (key.salt, key.hash) if key else ("00" * 16, "0" * 64)
        good = hmac.compare_digest(_digest(salt, secret), expected)
        return key if good and key is not None and key.revoked is None else None

    def get(self, key_id: str) -> ApiKey | None:
        return self._keys.get(key_id)

    def _refresh(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._checked < RECHECK_S:
            return
        with self._lock:
            self._checked = now
            try:
                stat = self.path.stat()
                stamp = (stat.st_mtime_ns, stat.st_size)
            except FileNotFoundError:
                stamp = None
            if stamp == self._stamp and not force:
                return
            try:
                self._keys = read_keys(self.path)
            except ConfigError:
                if force:
                    raise
                return  # keep the keys we had: a half-edited file must not open or lock all
            self._stamp = stamp
