"""API keys: key ids with salted hashes, never the keys themselves, in a JSON file or a table.

A key reads ``dk_<id>_<secret>``: the id (not secret) finds the record, the 256-bit random
secret is checked against ``HMAC-SHA256(salt, secret)`` with a constant-time comparison. A
fast hash is the right tool here: the secret is random, not a password, so there is nothing
to slow down a guess of -- and every request pays for the check.

Where the records live (``key_stores.py``): the file ``[auth] keys_file`` (one machine), or
the table ``api_keys`` in the PostgreSQL database ``[auth] keys_database_url`` (every
replica). ``python -m service keys add|revoke`` writes there and a running server follows
without a restart: it re-reads a file when it changes (checked at most once a second), and
the table every ``TABLE_RELOAD_S`` in the background.
"""
from __future__ import annotations

import dataclasses
import hashlib
import hmac
import logging
import os
import re
import secrets
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Mapping

from ..config import RateLimits
from ..errors import ConfigError, InvalidInput, NotFound
from .key_stores import KeyStore, Where, key_store

log = logging.getLogger("service.access")

PREFIX = "dk"
KEY_PATTERN = re.compile(r"^dk_([0-9a-f]{12})_([A-Za-z0-9_-]{43})$")
NAME_PATTERN = re.compile(r"^[\w.@-]{1,64}$")
RECHECK_S = 1.0       # how often the server looks at the file's modification time
TABLE_RELOAD_S = 2.0  # how often it re-reads a table (a change is honoured within this)
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


def now_text() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def add_key(where: Where, name: str, admin: bool = False,
            limits: Mapping[str, float | None] | None = None) -> tuple[ApiKey, str]:
    """Create a key; returns its record and the key itself (shown once, never stored).

    ``where``: a key file's path, or a store. ``limits``: the key's own, by
    :class:`RateLimits` field (see :func:`key_limits`).
    """
    if not NAME_PATTERN.match(name):
        raise InvalidInput(f"key name {name!r}: use 1-64 letters, digits, '.', '@', '-', '_'.")
    own = key_limits(limits or {})
    secret = secrets.token_urlsafe(32)
    salt = secrets.token_hex(16)
    store = key_store(where)
    record = ApiKey.from_dict(store.add(lambda key_id: ApiKey(
        key_id, name, admin, salt, _digest(salt, secret), now_text(), limits=own).to_dict()))
    return record, f"{PREFIX}_{record.id}_{secret}"


def revoke_key(where: Where, which: str) -> list[ApiKey]:
    """Revoke the key with this id, or every live key with this name."""
    store = key_store(where)
    revoked = store.revoke(which, now_text())
    if not revoked:
        raise NotFound(f"no live key has the id or name {which!r}")
    return [_key(record, store) for record in revoked]


def read_keys(where: Where) -> dict[str, ApiKey]:
    """Every key by id (revoked ones included); a missing file holds none."""
    store = key_store(where)
    return {key.id: key for key in (_key(record, store) for record in store.load())}


def _key(record: Any, store: KeyStore) -> ApiKey:
    try:
        return ApiKey.from_dict(record)
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"{store.describe()} holds a malformed key: {exc!r}") from None


class KeyRing:
    """The server's view of the keys: ``verify(presented)`` -> the live key or None."""

    def __init__(self, where: Where):
        self.store = key_store(where)
        self._lock = threading.Lock()
        self._keys: dict[str, ApiKey] = {}
        self._stamp: Any = None
        self._checked = 0.0
        self._follower: tuple[int, threading.Thread] | None = None  # (pid, thread)
        self._closed = threading.Event()
        self._refresh(force=True)  # a store that cannot be read fails at start-up, loudly

    def verify(self, presented: str) -> ApiKey | None:
        if self.store.watchable:
            self._refresh()
        else:
            self._follow()
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
        """Re-read a file whose stamp changed (looked at once per RECHECK_S at most)."""
        now = time.monotonic()
        if not force and now - self._checked < RECHECK_S:
            return
        with self._lock:
            self._checked = now
            stamp = self.store.stamp()
            if stamp == self._stamp and not force and self.store.watchable:
                return
            try:
                self._keys = read_keys(self.store)
            except ConfigError:
                if force:
                    raise
                return  # keep the keys we had: a half-edited file must not open or lock all
            self._stamp = stamp

    def _follow(self) -> None:
        """A table is re-read by a thread of this process (started here, not at start-up:
        a daemon forks after the ring is made, and a fork keeps no thread)."""
        follower = self._follower
        if follower is not None and follower[0] == os.getpid():
            return
        with self._lock:
            if self._follower is not None and self._follower[0] == os.getpid():
                return
            thread = threading.Thread(target=self._reload_forever, name="keys-follower",
                                      daemon=True)
            self._follower = (os.getpid(), thread)
            thread.start()

    def _reload_forever(self) -> None:
        failing = False
        while not self._closed.wait(TABLE_RELOAD_S):
            try:
                self._keys = read_keys(self.store)
            except ConfigError as exc:  # keep the keys we had while the database is away
                if not failing:
                    log.warning("API keys not reloaded (keeping the %d known) until %s "
                                "answers: %s", len(self._keys), self.store.describe(), exc)
                failing = True
                continue
            if failing:
                log.info("API keys reloaded again from %s", self.store.describe())
            failing = False

    def close(self) -> None:
        """Stop re-reading the table (a ring's thread otherwise lives as long as its process)."""
        self._closed.set()
