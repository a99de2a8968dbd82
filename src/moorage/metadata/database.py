"""The metadata database: the engine for SQLite or PostgreSQL, write
transactions that hold under concurrent processes, upserts for either
dialect, start-up under one lock, and the threads blocking calls run on.

SQLite: every transaction begins explicitly, a write transaction with
``BEGIN IMMEDIATE``, so what a write reads (a namespace's owner, an existing
row) is read under the same write lock as what it then writes, in this
process or another one sharing the file (``moorage serve --workers``). The
Python driver's own transaction handling begins only before the first
INSERT/UPDATE/DELETE and would leave those reads outside.

PostgreSQL: READ COMMITTED, with ``INSERT ... ON CONFLICT`` wherever two
writers may create the same row, and row locks where a decision must hold
until commit."""

from __future__ import annotations

import asyncio
import fcntl
import functools
import hashlib
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Engine, Table, create_engine, event, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection
from sqlalchemy.engine.url import make_url

T = TypeVar("T")

WRITE_OPTION = "moorage_write"
# Connections each process may hold; the database threads match it, so a
# thread never waits for a connection another thread holds.
POOL_SIZE = 8
POOL_OVERFLOW = 8


def _sqlite_connect(dbapi_connection: Any, _record: object) -> None:
    # The driver's own transaction handling off: transactions begin in _sqlite_begin.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    # WAL lets readers run beside the single writer (in this process or another);
    # FULL fsyncs each commit so an acknowledged push survives power loss.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()


def _sqlite_begin(conn: Connection) -> None:
    write = conn.get_execution_options().get(WRITE_OPTION, False)
    conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")


def create_metadata_engine(url: str) -> Engine:
    """An engine for ``url``: SQLite (``sqlite:///path``) or PostgreSQL
    (``postgresql+psycopg://user@host/db``)."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        engine = create_engine(url, pool_size=POOL_SIZE, max_overflow=POOL_OVERFLOW)
        event.listen(engine, "connect", _sqlite_connect)
        event.listen(engine, "begin", _sqlite_begin)
        return engine
    if parsed.get_backend_name() == "postgresql":
        return create_engine(
            url,
            pool_size=POOL_SIZE,
            max_overflow=POOL_OVERFLOW,
            pool_pre_ping=True,  # a replica outlives a database restart
            pool_recycle=3600,
            connect_args={
                "connect_timeout": 10,
                "application_name": "moorage",
                # A dead peer is noticed within about 15 s rather than hours.
                "keepalives": 1,
                "keepalives_idle": 5,
                "keepalives_interval": 2,
                "keepalives_count": 3,
            },
        )
    return create_engine(url)


def writer(engine: Engine) -> Engine:
    """The engine whose transactions are write transactions (on SQLite,
    ``BEGIN IMMEDIATE``: the write lock from the first statement on)."""
    return engine.execution_options(**{WRITE_OPTION: True})


def is_postgres(engine: Engine | Connection) -> bool:
    return engine.dialect.name == "postgresql"


def upsert(conn: Connection, table: Any) -> Any:
    """``INSERT`` for ``table`` (an ORM class or Table) with the dialect's
    ``ON CONFLICT`` clauses available: ``.on_conflict_do_nothing(...)`` and
    ``.on_conflict_do_update(...)`` exist on SQLite and PostgreSQL alike."""
    target: Table = getattr(table, "__table__", table)
    if conn.dialect.name == "postgresql":
        return postgresql.insert(target)
    if conn.dialect.name == "sqlite":
        return sqlite.insert(target)
    raise NotImplementedError(f"no upsert for {conn.dialect.name}")


def lock_key(name: str) -> int:
    """A 63-bit key for PostgreSQL advisory locks."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big") >> 1


def advisory_xact_lock(conn: Connection, name: str) -> None:
    """On PostgreSQL, a lock named ``name`` held until the transaction ends;
    on SQLite the write transaction already excludes every other writer."""
    if is_postgres(conn):
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": lock_key(name)})


@contextmanager
def installation_lock(engine: Engine, data_dir: Path | None) -> Iterator[None]:
    """One process at a time for start-up work (migrations, the first
    account, the shared secret's check): a session advisory lock on
    PostgreSQL, held by every replica in turn; a file lock beside SQLite."""
    if is_postgres(engine):
        with engine.connect() as conn:
            conn.execute(text("SELECT pg_advisory_lock(:key)"), {"key": lock_key("startup")})
            conn.commit()
            try:
                yield
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": lock_key("startup")})
                conn.commit()
        return
    path = (data_dir or Path(".")) / ".startup.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


# Threads for database calls. Few: each call holds the GIL for most of its
# SQLAlchemy work, and more threads only contend for it with the event loop
# (uncached manifest GETs, SQLite, 8 connections: 3,200 req/s on 1 thread,
# 2,250-2,800 on 4, 2,000-2,600 on 16; see docs/architecture.md).
DB_THREADS = 4


class DatabaseThreads:
    """Runs blocking database calls off the event loop, on threads of their
    own, fewer than the connection pool holds, so none waits for a
    connection, and none is taken by uploads (which hash on the blob
    store's threads) or by password hashing (sign-in's threads)."""

    def __init__(self, size: int = DB_THREADS) -> None:
        self._pool = ThreadPoolExecutor(size, thread_name_prefix="db")

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        call = functools.partial(fn, *args, **kwargs) if kwargs else functools.partial(fn, *args)
        return await loop.run_in_executor(self._pool, call)

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
