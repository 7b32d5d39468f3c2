"""Where the audit trail is stored: a SQLite file (the default) or a PostgreSQL database.

``--audit PATH`` names a SQLite file; ``--audit postgresql://user@host/db`` (or ``postgres://``, any
libpq connection URL; the password best kept in ``PGPASSWORD`` or ``~/.pgpass`` rather than the URL)
a PostgreSQL database, the option for a hospital deployment: one trail for several servers, the
database's own backups and replication. Both hold the same tables; the audit code writes its SQL once,
in the SQL both understand, with ``?`` parameters, and :class:`Database` adapts it (``%s`` parameters,
BIGINT sequence numbers, byte-order comparison of the UTC times).

Writers are serialised by the store: SQLite's write lock on the file (``BEGIN IMMEDIATE``), in
PostgreSQL a transaction-level advisory lock that every carepath writer takes (readers go on, a second
writer waits; it needs no privilege beyond INSERT), so two servers, or a server and ``carepath audit
prune``, never fork the chain. Readers (verify, export, report) open the store read-only. The tables
are made on first use (in PostgreSQL only when one is missing, so the servers' role needs no CREATE
once they exist).
"""

from __future__ import annotations

import hashlib
import re
import sqlite3
from abc import ABC, abstractmethod
from collections.abc import Generator, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

POSTGRES = ("postgresql://", "postgres://")
FETCH = 5000  # rows a reader fetches at a time


class StoreError(Exception):
    """The store cannot be opened or used; the message names it (a URL without its password)."""


class Cursor(Protocol):
    rowcount: int

    def fetchone(self) -> Any: ...
    def fetchall(self) -> list[Any]: ...
    def fetchmany(self, size: int = ...) -> list[Any]: ...


def is_postgres(target: str | Path) -> bool:
    return isinstance(target, str) and target.startswith(POSTGRES)


def shown(target: str | Path) -> str:
    """The store as messages name it: a file's path, or the URL with any password (in its user part or
    a ``password=`` parameter) replaced by ***; never raises, even for a malformed URL."""
    if not is_postgres(target):
        return str(target)
    text = str(target)
    try:
        parts = urlsplit(text)
        netloc = parts.netloc
        if parts.password is not None:
            netloc = netloc.replace(f":{parts.password}@", ":***@", 1)
        pairs = [pair for pair in parts.query.split("&") if pair]
        query = "&".join(f"{p.partition('=')[0]}=***" if p.partition("=")[0].lower() == "password" else p for p in pairs)
        return f"{parts.scheme}://{netloc}{parts.path}" + (f"?{query}" if query else "")
    except ValueError:
        scheme = text.split("://", 1)[0]
        return f"{scheme}://(a URL that cannot be read)"


class Database(ABC):
    """One connection to the store, in autocommit mode: writes go in :meth:`write` transactions."""

    dialect: str  # sqlite or postgresql
    errors: tuple[type[Exception], ...]  # what the driver raises
    transient: tuple[type[Exception], ...]  # of those, what says nothing of the data (locks, timeouts, connections)

    def __init__(self, target: str | Path, conn: Any) -> None:
        self.target, self.name, self.conn = target, shown(target), conn

    def sql(self, text: str) -> str:
        return text

    def execute(self, text: str, args: Sequence[Any] = ()) -> Cursor:
        return self.conn.execute(self.sql(text), tuple(args))  # type: ignore[no-any-return]

    def executemany(self, text: str, rows: Sequence[Sequence[Any]]) -> None:
        if rows:
            self.conn.cursor().executemany(self.sql(text), rows)

    @abstractmethod
    def script(self, text: str) -> None:
        """Several statements without parameters (the schema)."""

    @abstractmethod
    def columns(self, table: str) -> list[str]:
        """A table's columns in order ([] when there is no such table)."""

    @abstractmethod
    def write(self) -> AbstractContextManager[None]:
        """One write transaction, holding the store's writer lock; rolled back on any error."""

    @abstractmethod
    def snapshot(self) -> AbstractContextManager[None]:
        """Reads that all see the store as of one moment (verify: the chain and the rows beside it)."""

    def stream(self, text: str, args: Sequence[Any] = ()) -> Generator[tuple[Any, ...], None, None]:
        """The rows of a query, fetched a few thousand at a time."""
        cur = self.execute(text, args)
        while chunk := cur.fetchmany(FETCH):
            yield from chunk

    def broken(self) -> bool:
        """Whether the connection is lost (a PostgreSQL server restarted or the network cut): it must
        be opened again. A SQLite file's connection is never lost."""
        return False

    def close(self) -> None:
        self.conn.close()


class SqliteDatabase(Database):
    dialect = "sqlite"
    errors = (sqlite3.Error,)
    transient = (sqlite3.OperationalError,)

    def script(self, text: str) -> None:
        self.conn.executescript(text)

    def columns(self, table: str) -> list[str]:
        return [r[1] for r in self.conn.execute(f"PRAGMA table_info({table})")]

    @contextmanager
    def snapshot(self) -> Iterator[None]:
        self.conn.execute("BEGIN")  # a read transaction: in WAL mode, one snapshot until it ends
        try:
            yield
        finally:
            if self.conn.in_transaction:
                self.conn.execute("COMMIT")

    @contextmanager
    def write(self) -> Iterator[None]:
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            if self.conn.in_transaction:
                self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")


_PARAM = re.compile(r"\?")


class PostgresDatabase(Database):
    dialect = "postgresql"
    errors: tuple[type[Exception], ...] = ()  # set when psycopg is imported
    transient: tuple[type[Exception], ...] = ()

    def __init__(self, target: str | Path, conn: Any, lock_timeout: float) -> None:
        super().__init__(target, conn)
        self.lock_timeout = lock_timeout

    def sql(self, text: str) -> str:
        return _PARAM.sub("%s", text)

    def script(self, text: str) -> None:
        """The schema, made when a table is missing, once even when several servers start together."""
        tables = set(re.findall(r"CREATE TABLE IF NOT EXISTS (\w+)", text))
        have = {r[0] for r in self.conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = current_schema()").fetchall()}
        if tables <= have:
            return
        with self.conn.transaction():
            self.conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
            self.conn.execute(postgres_schema(text))

    def columns(self, table: str) -> list[str]:
        rows = self.conn.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_schema = current_schema() AND table_name = %s"
            " ORDER BY ordinal_position",
            (table,),
        ).fetchall()
        return [r[0] for r in rows]

    @contextmanager
    def snapshot(self) -> Iterator[None]:
        with self.conn.transaction():
            self.conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            yield

    @contextmanager
    def write(self) -> Iterator[None]:
        with self.conn.transaction():
            self.conn.execute(f"SET LOCAL lock_timeout = '{int(self.lock_timeout * 1000)}ms'")
            self.conn.execute("SELECT pg_advisory_xact_lock(%s)", (_WRITER_LOCK,))
            yield

    def broken(self) -> bool:
        return bool(self.conn.closed or self.conn.broken)

    def stream(self, text: str, args: Sequence[Any] = ()) -> Generator[tuple[Any, ...], None, None]:
        with self.conn.transaction(), self.conn.cursor(name="carepath_read") as cur:  # a server-side cursor
            cur.itersize = FETCH
            cur.execute(self.sql(text), tuple(args))
            yield from cur


_SCHEMA_LOCK = int.from_bytes(hashlib.sha256(b"carepath audit schema").digest()[:7], "big")
_WRITER_LOCK = int.from_bytes(hashlib.sha256(b"carepath audit writer").digest()[:7], "big")


def postgres_schema(text: str) -> str:
    """The SQLite schema in PostgreSQL's words: BIGINT integers (sequence numbers outgrow 32 bits),
    and the UTC time columns compared byte by byte (COLLATE "C": ISO 8601 text then sorts by time
    whatever the database's locale)."""
    text = re.sub(r"\bINTEGER\b", "BIGINT", text)
    return re.sub(r"^(\s+(?:ts|at) TEXT)", r'\1 COLLATE "C"', text, flags=re.M)


def open_database(target: str | Path, *, write: bool, lock_timeout: float) -> Database:
    """A connection to the store: ``write`` for the server and prune (SQLite in WAL mode); else
    read-only. A missing SQLite file is an error unless ``write``."""
    if is_postgres(target):
        try:
            import psycopg
            import psycopg.conninfo
        except ImportError:
            raise StoreError(f"{shown(target)}: a PostgreSQL audit trail needs psycopg: pip install 'carepath[postgres]'") from None
        PostgresDatabase.errors = (psycopg.Error,)
        PostgresDatabase.transient = (psycopg.OperationalError,)
        try:
            given = psycopg.conninfo.conninfo_to_dict(str(target))
            # TCP keepalives, unless the URL says otherwise: a connection cut without a reset is found
            # in about a minute, rather than a commit waiting on it for as long as the kernel lets it
            alive = {"keepalives": 1, "keepalives_idle": 30, "keepalives_interval": 10, "keepalives_count": 3}
            params: dict[str, Any] = {k: v for k, v in alive.items() if k not in given}
            params |= {"connect_timeout": max(2, int(lock_timeout)), "application_name": "carepath-audit"}
            conn = psycopg.connect(psycopg.conninfo.make_conninfo(str(target), **params), autocommit=True)
            if not write:
                conn.execute("SET default_transaction_read_only = on")
        except psycopg.Error as exc:
            raise StoreError(f"{shown(target)}: cannot connect: {str(exc).strip()}") from None
        return PostgresDatabase(target, conn, lock_timeout)
    path = Path(target)
    if not write and not path.is_file():
        raise StoreError(f"{path}: no such audit file")
    where = path if write else f"{path.resolve().as_uri()}?mode=ro"
    try:
        lite = sqlite3.connect(where, uri=not write, isolation_level=None, check_same_thread=False, timeout=lock_timeout)
    except sqlite3.Error as exc:
        raise StoreError(f"{path}: cannot open the audit trail: {exc}") from None
    try:
        if write:
            lite.execute("PRAGMA journal_mode=WAL")
    except sqlite3.Error as exc:
        lite.close()
        raise StoreError(f"{path}: cannot open the audit trail: {exc}") from None
    return SqliteDatabase(path, lite)
