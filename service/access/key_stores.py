"""Where API key records live: a JSON file (one machine) or a PostgreSQL table (every replica).

Both answer the same four calls: ``load`` (every record), ``add`` (a new record, its id
unique), ``revoke`` (the live records of an id or a name) and ``stamp`` (what changes when the
records do; a table cannot say cheaply, so a server re-reads it on a timer instead). A record
is a plain dict, ``ApiKey.to_dict()``'s shape; ``keys.py`` makes keys of them.
"""
from __future__ import annotations

import json
import secrets
from pathlib import Path
from typing import Any, Callable, Union

from ..blobstore import write_atomic
from ..config import POSTGRES_SCHEMES
from ..errors import ConfigError

Record = dict[str, Any]
NewKey = Callable[[str], Record]  # the record of a new key, given its id
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

    def load(self) -> list[Record]:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return []
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read the key file {self.path}: {exc}") from None
        if not isinstance(data, dict) or not isinstance(data.get("keys"), list):
            raise ConfigError(f"the key file {self.path} is malformed: no list of keys")
        return data["keys"]

    def add(self, make: NewKey) -> Record:
        records = self.load()
        taken = {r.get("id") for r in records if isinstance(r, dict)}
        key_id = new_id()
        while key_id in taken:
            key_id = new_id()
        records.append(record := make(key_id))
        self._write(records)
        return record

    def revoke(self, which: str, when: str) -> list[Record]:
        records = self.load()
        matched = [r for r in records if isinstance(r, dict) and r.get("revoked") is None
                   and which in (r.get("id"), r.get("name"))]
        for record in matched:
            record["revoked"] = when
        if matched:
            self._write(records)
        return matched

    def _write(self, records: list[Record]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        payload = json.dumps({"keys": records}, indent=2) + "\n"
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

    def load(self) -> list[Record]:
        rows = self._run(lambda conn: conn.execute(
            f"SELECT {', '.join(self.COLUMNS)} FROM api_keys ORDER BY created, id").fetchall())
        return [_from_row(row) for row in rows]

    def add(self, make: NewKey) -> Record:
        record = make(new_id())  # 48 random bits: a clash is refused by the primary key
        values = {**record, "limits": json.dumps(record.get("limits") or {})}
        self._run(lambda conn: conn.execute(
            f"INSERT INTO api_keys ({', '.join(self.COLUMNS)}) VALUES "
            f"({', '.join(['%s'] * len(self.COLUMNS))})", [values.get(c) for c in self.COLUMNS]))
        return record

    def revoke(self, which: str, when: str) -> list[Record]:
        rows = self._run(lambda conn: conn.execute(
            f"UPDATE api_keys SET revoked = %s WHERE revoked IS NULL AND (id = %s OR name = %s) "
            f"RETURNING {', '.join(self.COLUMNS)}", (when, which, which)).fetchall())
        return [_from_row(row) for row in rows]

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


def _from_row(row: dict[str, Any]) -> Record:
    return {**row, "limits": json.loads(row["limits"])}


KeyStore = Union[KeyFile, KeyTable]
Where = Union[Path, str, KeyFile, KeyTable]  # a file's path, a database URL, or a store


def key_store(where: Where) -> KeyStore:
    if isinstance(where, (KeyFile, KeyTable)):
        return where
    if isinstance(where, str) and where.startswith(POSTGRES_SCHEMES):
        return KeyTable(where)
    return KeyFile(Path(where))
