"""Telling every process's caches that the data behind them changed.

A write announces topics inside its own transaction (``announce``); they
reach this process's subscribers once the transaction has committed
(``delivered``), and other processes' subscribers through the feed:

- ``LocalFeed`` — one process on SQLite: the only writer is this process,
  so local delivery is all there is.
- ``SqliteProcessFeed`` — several processes on one SQLite file
  (``moorage serve --workers``): a thread polls ``PRAGMA data_version``,
  which changes whenever another connection commits, every
  ``POLL_INTERVAL`` seconds, and then tells subscribers "everything".
- ``PostgresFeed`` — PostgreSQL: ``pg_notify`` inside the writing
  transaction (sent if and only if it commits) and a listening connection
  on a thread of its own, checked every ``PING_INTERVAL`` seconds.

``healthy`` says whether caches may be trusted right now: a PostgreSQL
feed whose connection broke is unhealthy until it listens again, and every
subscriber is told "everything" both when it breaks and when it is back, so
nothing cached before or during the gap survives it."""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterable
from typing import Protocol

from sqlalchemy import Engine, select
from sqlalchemy import func as sqlfunc
from sqlalchemy.engine import Connection

log = logging.getLogger("moorage.changes")

CHANNEL = "moorage_changes"
POLL_INTERVAL = 0.1
PING_INTERVAL = 1.0
# None stands for "everything": a subscriber drops all it holds.
Subscriber = Callable[[str | None], None]


def repository_topic(region: str, name: str) -> str:
    return f"repo:{region}:{name}"


def namespace_topic(region: str, name: str) -> str:
    return f"ns:{region}:{name}"


KEYS_TOPIC = "keys"


class ChangeFeed(Protocol):
    @property
    def healthy(self) -> bool: ...

    def subscribe(self, subscriber: Subscriber) -> None: ...

    def announce(self, conn: Connection, topics: Iterable[str]) -> None:
        """Inside a write transaction: other processes hear of ``topics`` if and
        only if it commits."""

    def delivered(self, topics: Iterable[str]) -> None:
        """After the commit: this process's subscribers hear of ``topics``."""

    def start(self) -> None: ...

    def stop(self) -> None: ...


class LocalFeed:
    """This process is the only writer."""

    def __init__(self) -> None:
        self._subscribers: list[Subscriber] = []

    @property
    def healthy(self) -> bool:
        return True

    def subscribe(self, subscriber: Subscriber) -> None:
        self._subscribers.append(subscriber)

    def announce(self, conn: Connection, topics: Iterable[str]) -> None:
        pass

    def delivered(self, topics: Iterable[str]) -> None:
        for topic in topics:
            self._tell(topic)

    def _tell(self, topic: str | None) -> None:
        for subscriber in self._subscribers:
            try:
                subscriber(topic)
            except Exception:  # one cache's trouble is not the writer's
                log.exception("a cache failed to take a change (%s)", topic)

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass


class _Watcher(LocalFeed):
    """A feed with a thread of its own that watches the database."""

    def __init__(self) -> None:
        super().__init__()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._watch, name="changes", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def _watch(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError


class SqliteProcessFeed(_Watcher):
    """Several processes on one SQLite file: any commit by another connection
    drops every cache within ``interval`` seconds."""

    def __init__(self, engine: Engine, interval: float = POLL_INTERVAL) -> None:
        super().__init__()
        self.engine = engine
        self.interval = interval

    def _watch(self) -> None:
        last: int | None = None
        while not self._stop.is_set():
            try:
                raw = self.engine.raw_connection()
                try:
                    while not self._stop.is_set():
                        cursor = raw.cursor()
                        cursor.execute("PRAGMA data_version")
                        row = cursor.fetchone()
                        version = int(row[0]) if row else 0
                        cursor.close()
                        if version != last:
                            if last is not None:
                                self._tell(None)
                            last = version
                        self._stop.wait(self.interval)
                finally:
                    raw.close()
            except Exception as exc:
                log.warning("watching the database for changes failed: %s", exc)
                self._tell(None)
                last = None
                self._stop.wait(1.0)


class PostgresFeed(_Watcher):
    """``LISTEN``/``NOTIFY`` on a connection of its own."""

    def __init__(self, engine: Engine, ping_interval: float = PING_INTERVAL) -> None:
        super().__init__()
        self.engine = engine
        self.ping_interval = ping_interval
        self._healthy = False
        self._listening = threading.Event()

    @property
    def healthy(self) -> bool:
        return self._healthy

    def announce(self, conn: Connection, topics: Iterable[str]) -> None:
        for topic in dict.fromkeys(topics):
            conn.execute(select(sqlfunc.pg_notify(CHANNEL, topic)))

    def wait_listening(self, timeout: float) -> bool:
        return self._listening.wait(timeout)

    def _connect(self) -> object:
        import psycopg  # the driver PostgreSQL URLs name

        url = self.engine.url.set(drivername="postgresql")
        dsn = url.render_as_string(hide_password=False)
        return psycopg.connect(
            dsn,
            autocommit=True,
            connect_timeout=10,
            keepalives=1,
            keepalives_idle=5,
            keepalives_interval=1,
            keepalives_count=2,
            application_name="moorage-changes",
        )

    def _watch(self) -> None:
        backoff = 0.2
        while not self._stop.is_set():
            conn = None
            try:
                conn = self._connect()
                conn.execute(f"LISTEN {CHANNEL}")  # type: ignore[attr-defined]
                # Whatever changed while nobody listened: drop it all, then trust again.
                self._tell(None)
                self._healthy = True
                self._listening.set()
                backoff = 0.2
                log.info("listening for changes on PostgreSQL")
                while not self._stop.is_set():
                    gen = conn.notifies(timeout=self.ping_interval)  # type: ignore[attr-defined]
                    for notice in gen:
                        self._tell(notice.payload)
                    # Quiet for a while: make sure the connection is still alive.
                    conn.execute("SELECT 1")  # type: ignore[attr-defined]
            except Exception as exc:
                if self._stop.is_set():
                    break
                was = self._healthy
                self._healthy = False
                self._listening.clear()
                self._tell(None)
                if was:
                    log.warning("lost the change feed (%s); caches are off until it is back", exc)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 5.0)
            finally:
                self._healthy = self._healthy and not self._stop.is_set()
                if conn is not None:
                    with contextlib.suppress(Exception):
                        conn.close()  # type: ignore[attr-defined]


def feed_for(engine: Engine, processes_share_sqlite: bool) -> LocalFeed:
    """The feed that fits the database and how many processes use it."""
    if engine.dialect.name == "postgresql":
        return PostgresFeed(engine)
    if processes_share_sqlite:
        return SqliteProcessFeed(engine)
    return LocalFeed()
