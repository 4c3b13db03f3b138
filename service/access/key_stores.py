"""Where API key records live: a JSON file (one machine) or a PostgreSQL table (every replica).

Both answer the same four calls: ``load`` (every record by id), ``add`` (a new record, its id
unique), ``revoke`` (the live records of an id or a name) and ``stamp`` (what changes when the
records do; a table cannot say cheaply, so a server re-reads it on a timer instead).
"""
from __future__ import annotations

import dataclasses
import json
import secrets
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Union

from ..blobstore import write_atomic
from ..config import POSTGRES_SCHEMES
from ..errors import ConfigError

if TYPE_CHECKING:
    from .keys import ApiKey

NewKey = Callable[[str], "ApiKey"]  # the record of a new key, given its id
CONNECT_TIMEOUT_S = 3
CREATE_LOCK = 7_349_114  # pg_advisory_xact_lock's key while the table is created


def new_id() -> str:
    return secrets.token_hex(6)


class KeyFile:
    """``{"keys": [record, ...]}``, replaced atomically, readable by its owner only."""

    watchable = True

    def __init__(self, path: Path):
        self.path = Path(path)

    def describe(self) -> str:
        return str(self.path)

    def stamp(self) -> tuple[int, int] | None:
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            return None
        return stat.st_mtime_ns, stat.st_size

    def load(self) -> dict[str, ApiKey]:
        from .keys import ApiKey

        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read the key file {self.path}: {exc}") from None
        try:
            keys = [ApiKey.from_dict(item) for item in data["keys"]]
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"the key file {self.path} is malformed: {exc!r}") from None
        return {key.id: key for key in keys}

    def add(self, make: NewKey) -> ApiKey:
        keys = self.load()
        key_id = new_id()
        while key_id in keys:
            key_id = new_id()
        keys[key_id] = record = make(key_id)
        self._write(keys)
        return record

    def revoke(self, which: str, when: str) -> list[ApiKey]:
        keys = self.load()
        matched = [k for k in keys.values() if k.revoked is None and which in (k.id, k.name)]
        for key in matched:
            keys[key.id] = dataclasses.replace(key, revoked=when)
        if matched:
            self._write(keys)
        return [keys[k.id] for k in matched]

    def _write(self, keys: dict[str, ApiKey]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        payload = json.dumps({"keys": [k.to_dict() for k in keys.values()]}, indent=2) + "\n"
        write_atomic(self.path, payload.encode(), mode=0o600)


class KeyTable:
    """The table ``api_keys`` (created if missing) in a PostgreSQL database."""

    watchable = False
    COLUMNS = ("id", "name", "admin", "salt", "hash", "created", "revoked", "limits")
    SCHEMA = """CREATE TABLE IF NOT EXISTS api_keys (
        id      TEXT PRIMARY KEY,
        name    TEXT NOT NULL,
        admin   BOOLEAN NOT NULL,
        salt    TEXT NOT NULL,
        hash    TEXT NOT NULL,
        created TEXT NOT NULL,
        revoked TEXT,
        limits  TEXT NOT NULL      -- JSON: the key's own RateLimits fields
    )"""

    def __init__(self, url: str):
        self.url = url
        self._created = False

    def describe(self) -> str:
        from psycopg.conninfo import conninfo_to_dict

        info = conninfo_to_dict(self.url)
        return f"the api_keys table of postgresql://{info.get('host', '')}/{info.get('dbname', '')}"

    def stamp(self) -> None:
        return None

    def load(self) -> dict[str, ApiKey]:
        from .keys import ApiKey

        rows = self._run(lambda conn: conn.execute(
            f"SELECT {', '.join(self.COLUMNS)} FROM api_keys ORDER BY created, id").fetchall())
        keys = [ApiKey.from_dict({**row, "limits": json.loads(row["limits"])}) for row in rows]
        return {key.id: key for key in keys}

    def add(self, make: NewKey) -> ApiKey:
        record = make(new_id())  # 48 random bits: a clash is refused by the primary key
        values = {**record.to_dict(), "limits": json.dumps(record.limits)}
        self._run(lambda conn: conn.execute(
            f"INSERT INTO api_keys ({', '.join(self.COLUMNS)}) VALUES "
            f"({', '.join(['%s'] * len(self.COLUMNS))})", [values[c] for c in self.COLUMNS]))
        return record

    def revoke(self, which: str, when: str) -> list[ApiKey]:
        from .keys import ApiKey

        rows = self._run(lambda conn: conn.execute(
            f"UPDATE api_keys SET revoked = %s WHERE revoked IS NULL AND (id = %s OR name = %s) "
            f"RETURNING {', '.join(self.COLUMNS)}", (when, which, which)).fetchall())
        return [ApiKey.from_dict({**row, "limits": json.loads(row["limits"])}) for row in rows]

    def _run(self, work: Callable[[Any], Any]) -> Any:
        """``work(connection)`` on a short-lived connection; a failure is a ConfigError."""
        import psycopg
        from psycopg.rows import dict_row

        try:
            with psycopg.connect(self.url, autocommit=True, row_factory=dict_row,
                                 connect_timeout=CONNECT_TIMEOUT_S,
                                 application_name="digits-keys") as conn:
                if not self._created:
                    with conn.transaction():  # replicas starting together: one creates it
                        conn.execute("SELECT pg_advisory_xact_lock(%s)", (CREATE_LOCK,))
                        conn.execute(self.SCHEMA)
                    self._created = True
                return work(conn)
        except psycopg.Error as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise ConfigError(f"cannot use {self.describe()}: {first}") from None


KeyStore = Union[KeyFile, KeyTable]
Where = Union[Path, str, KeyFile, KeyTable]  # a file's path, a database URL, or a store


def key_store(where: Where) -> KeyStore:
    if isinstance(where, (KeyFile, KeyTable)):
        return where
    if isinstance(where, str) and where.startswith(POSTGRES_SCHEMES):
        return KeyTable(where)
    return KeyFile(Path(where))
