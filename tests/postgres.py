"""A real PostgreSQL server for the tests: ``initdb`` and ``pg_ctl`` in a
temporary directory, run as an unprivileged user (PostgreSQL refuses root),
listening on loopback only, with its socket in the same directory.

One cluster serves a whole test session (started on first use, stopped at
exit); each installation the tests make (a data directory) or each test
module gets a database of its own."""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import os
import pwd
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import psycopg

from tests.server import free_port

BIN = Path(os.environ.get("MOORAGE_PG_BIN", "/usr/lib/postgresql/15/bin"))


def _unprivileged_user() -> str:
    """PostgreSQL will not run as root: the Debian package's ``postgres`` user,
    or ``nobody`` where there is none."""
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    raise RuntimeError("no unprivileged user to run PostgreSQL as")


class PostgresServer:
    def __init__(self, directory: Path | None = None) -> None:
        self.root = directory or Path(tempfile.mkdtemp(prefix="moorage-pg-"))
        self.data = self.root / "data"
        self.socket_dir = self.root / "run"
        self.log = self.root / "postgres.log"
        self.port = free_port()
        self.user = os.environ.get("MOORAGE_PG_USER") or _unprivileged_user()
        self._created: set[str] = set()
        self._lock = threading.Lock()

    def _run_as_user(self, *args: str) -> None:
        cmd = ["runuser", "-u", self.user, "--", *args] if os.geteuid() == 0 else list(args)
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} failed: {result.stdout}{result.stderr}")

    def start(self) -> PostgresServer:
        if not (BIN / "initdb").exists():
            raise RuntimeError(
                f"PostgreSQL is not installed in {BIN}: run `make test-deps` "
                "(Debian package postgresql)"
            )
        self.socket_dir.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            entry = pwd.getpwnam(self.user)
            for path in (self.root, self.socket_dir):
                os.chown(path, entry.pw_uid, entry.pw_gid)
        self._run_as_user(
            str(BIN / "initdb"),
            "-D",
            str(self.data),
            "--auth=trust",
            "--username=moorage",
            "--encoding=UTF8",
            "--no-sync",
        )
        options = (
            f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.socket_dir} "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
            "-c max_connections=300 -c shared_buffers=64MB"
        )
        self._run_as_user(
            str(BIN / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-o", options, "start"
        )
        self._wait_ready()
        return self

    def _wait_ready(self, timeout: float = 60) -> None:
        """Ready when it accepts a connection and answers a query (what
        ``pg_isready`` checks, and one step more)."""
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            try:
                with psycopg.connect(self.dsn("postgres"), connect_timeout=2) as conn:
                    conn.execute("SELECT 1")
                return
            except psycopg.OperationalError as exc:
                last = exc
                time.sleep(0.1)
        raise RuntimeError(f"PostgreSQL did not become ready: {last}; see {self.log}")

    def dsn(self, database: str) -> str:
        return f"postgresql://moorage@127.0.0.1:{self.port}/{database}"

    def url(self, database: str) -> str:
        """The SQLAlchemy URL Moorage takes in ``[database] url``."""
        return f"postgresql+psycopg://moorage@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        """A fresh, empty database (dropped first if a previous run left it);
        returns its SQLAlchemy URL."""
        with self._lock, psycopg.connect(self.dsn("postgres"), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{name}"')
            self._created.add(name)
        return self.url(name)

    def database_for(self, key: str) -> str:
        """The database of one installation (e.g. a data directory), created the
        first time it is asked for and the same URL afterwards, so a server
        restarted on the same data directory finds its metadata again."""
        name = "m_" + hashlib.sha256(key.encode()).hexdigest()[:20]
        with self._lock:
            known = name in self._created
        if not known:
            self.create_database(name)
        return self.url(name)

    def stop(self) -> None:
        if self.data.exists():
            with contextlib.suppress(RuntimeError):
                self._run_as_user(
                    str(BIN / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop"
                )
        shutil.rmtree(self.root, ignore_errors=True)


_cluster: PostgresServer | None = None
_cluster_lock = threading.Lock()


def cluster() -> PostgresServer:
    """The session's PostgreSQL server, started on first use."""
    global _cluster
    with _cluster_lock:
        if _cluster is None:
            _cluster = PostgresServer().start()
            atexit.register(_cluster.stop)
        return _cluster


def use_postgres() -> bool:
    """``MOORAGE_TEST_DATABASE=postgres`` runs the servers the tests start on
    PostgreSQL instead of the embedded SQLite."""
    return os.environ.get("MOORAGE_TEST_DATABASE", "sqlite").lower() in ("postgres", "postgresql")
