"""Where the input log's records live: a SQLite file (the default) or a PostgreSQL database.

Both hold the same tables (``records.MIGRATIONS``, written once, its few type names filled in per
dialect) and take the same SQL, written with ``?`` placeholders; :class:`Connection` is the
small surface ``records.py`` asks for (``execute``, ``executemany``, ``transaction``), whichever
the database. The schema is versioned (``schema_version``) and migrated at start-up: every
migration a database has not had yet runs once, under a lock, so replicas starting together
migrate it once.

- :class:`SqliteDatabase`: the file ``inputlog.sqlite3`` in ``[inputlog] dir``, one machine's.
- :class:`PostgresDatabase`: ``[inputlog] database_url``, shared by every replica. Request
  threads borrow connections from a pool (psycopg_pool); the writer keeps its own. A database
  that is down raises :attr:`Database.transient` errors, which the writer retries (the records
  wait in its queue) and which a request sees as 503.
"""
from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path
from typing import Any, Iterator, Protocol, Sequence

from ..errors import Unavailable
from .records import Connection, migrate

DB_NAME = "inputlog.sqlite3"
SQLITE_BUSY_TIMEOUT_S = 5.0
PG_CONNECT_TIMEOUT_S = 3     # a down database is known this fast (the writer retries)
PG_BORROW_TIMEOUT_S = 1.0    # a request waits this long for a pooled connection, then connects
PG_POOL_MAX = 4              # request-side connections per replica (feedback, summaries)


class Database(Protocol):
    shared: bool                               # other replicas write it too
    transient: tuple[type[Exception], ...]     # "down, try again": the writer keeps its batch

    def connect(self) -> Connection:
        """A connection of the caller's own (the writer's); migrates on the first."""

    def borrow(self) -> contextlib.AbstractContextManager[Connection]:
        """A connection for one short piece of work; a database that fails is a 503."""

    def describe(self) -> str: ...
    def close(self) -> None: ...


# -- SQLite -------------------------------------------------------------------------------------
class SqliteConnection:
    def __init__(self, conn: sqlite3.Connection):
        self.conn = conn

    def execute(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Cursor:
        return self.conn.execute(sql, params)

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        self.conn.executemany(sql, rows)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """``BEGIN IMMEDIATE`` ... ``COMMIT`` (``ROLLBACK`` on error): the write lock first."""
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    def close(self) -> None:
        self.conn.close()


class SqliteDatabase:
    shared = False
    transient: tuple[type[Exception], ...] = ()  # a failing file is dropped, not waited for

    def __init__(self, directory: Path):
        self.directory = Path(directory)
        self._migrated = False

    @property
    def path(self) -> Path:
        return self.directory / DB_NAME

    def connect(self) -> SqliteConnection:
        self.directory.mkdir(parents=True, exist_ok=True)
        raw = sqlite3.connect(self.path, timeout=SQLITE_BUSY_TIMEOUT_S, isolation_level=None,
                              check_same_thread=False)
        raw.row_factory = sqlite3.Row
        raw.execute("PRAGMA journal_mode=WAL")  # request threads read while the writer writes
        raw.execute("PRAGMA synchronous=NORMAL")  # with WAL: durable at checkpoints, never corrupt
        conn = SqliteConnection(raw)
        if not self._migrated:
            migrate(conn, "sqlite")
            self._migrated = True
        return conn

    @contextlib.contextmanager
    def borrow(self) -> Iterator[SqliteConnection]:
        try:
            conn = self.connect()
        except (OSError, sqlite3.Error) as exc:
            raise Unavailable(f"The input log database in {self.directory} cannot be opened: "
                              f"{exc}", "inputlog_unavailable") from exc
        try:
            yield conn
        finally:
            conn.close()

    def describe(self) -> str:
        return str(self.path)

    def close(self) -> None:
        pass


# -- PostgreSQL ---------------------------------------------------------------------------------
class PostgresConnection:
    def __init__(self, conn: Any):
        self.conn = conn  # a psycopg.Connection in autocommit mode, rows as dicts

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        return self.conn.execute(_pg(sql), params)

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        with self.conn.cursor() as cursor:
            cursor.executemany(_pg(sql), rows)  # pipelined by psycopg: one round trip or so

    def transaction(self) -> contextlib.AbstractContextManager[Any]:
        return self.conn.transaction()

    def close(self) -> None:
        self.conn.close()


def _pg(sql: str) -> str:
    """records.py's ``?`` placeholders as psycopg's (no statement has a literal ``?``)."""
    return sql.replace("?", "%s")


class PostgresDatabase:
    shared = True

    def __init__(self, url: str):
        import psycopg
        from psycopg_pool import ConnectionPool

        self.url = url
        self.transient = (psycopg.OperationalError, psycopg.InterfaceError)
        self._psycopg = psycopg
        self._migrated = False
        self._pool = ConnectionPool(url, min_size=0, max_size=PG_POOL_MAX, open=False,
                                    kwargs=self._connect_args(), timeout=PG_BORROW_TIMEOUT_S,
                                    check=ConnectionPool.check_connection,
                                    name="inputlog")

    def _connect_args(self) -> dict[str, Any]:
        from psycopg.rows import dict_row

        return {"autocommit": True, "row_factory": dict_row,
                "connect_timeout": PG_CONNECT_TIMEOUT_S, "application_name": "digits-inputlog"}

    def connect(self) -> PostgresConnection:
        conn = PostgresConnection(self._psycopg.connect(self.url, **self._connect_args()))
        if not self._migrated:
            try:
                migrate(conn, "postgresql")
            except BaseException:
                conn.close()
                raise
            self._migrated = True
        return conn

    @contextlib.contextmanager
    def borrow(self) -> Iterator[PostgresConnection]:
        from psycopg_pool import PoolTimeout

        self._pool.open(wait=False)  # idempotent; opened on first use, not at import
        try:
            raw, pooled = self._pool.getconn(timeout=PG_BORROW_TIMEOUT_S), True
        except PoolTimeout:
            # After an outage the pool's reconnections back off for seconds or minutes: one
            # direct connection answers at once whether the database is back.
            raw, pooled = None, False
        try:
            if raw is None:
                raw = self._psycopg.connect(self.url, **self._connect_args())
            yield PostgresConnection(raw)
        except self.transient as exc:
            raise Unavailable(f"The input log database ({self.describe()}) cannot be reached: "
                              f"{first_line(exc)}", "inputlog_unavailable",
                              retry_after=5) from exc
        finally:
            if pooled:
                self._pool.putconn(raw)  # a broken connection is discarded there
            elif raw is not None:
                raw.close()

    def describe(self) -> str:
        """The URL without its password."""
        from psycopg.conninfo import conninfo_to_dict

        try:
            info = conninfo_to_dict(self.url)
        except self._psycopg.ProgrammingError:
            return "postgresql"
        return (f"postgresql://{info.get('user', '')}@{info.get('host', '')}:"
                f"{info.get('port', 5432)}/{info.get('dbname', '')}")

    def close(self) -> None:
        self._pool.close()


def first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def open_database(directory: Path, url: str | None) -> Database:
    """The input log's database: PostgreSQL at ``url`` when given, else SQLite in ``directory``."""
    return PostgresDatabase(url) if url else SqliteDatabase(directory)
