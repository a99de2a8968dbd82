"""Starts the real ``moorage serve`` as a subprocess on a free loopback port."""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import requests
import sqlalchemy as sa

ROOT = Path(__file__).resolve().parents[1]
MOORAGE = Path(sys.executable).with_name("moorage")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


REGION_HOSTS = (
    "us.localhost uk.localhost de.localhost au.localhost jp.localhost "
    "registry.ng.localhost registry.eu-gb.localhost registry.eu-de.localhost "
    "registry.au-syd.localhost"
)


def ensure_region_hosts() -> None:
    """Name the default regional domains in /etc/hosts (tests and CI run as root),
    so real clients reach each region by the name it answers on."""
    hosts = Path("/etc/hosts")
    if "registry.au-syd.localhost" not in hosts.read_text():
        with hosts.open("a") as f:
            f.write(f"\n127.0.0.1 {REGION_HOSTS}\n")


def database_for(data_dir: Path, env: dict[str, str]) -> str:
    """The metadata database of the installation in ``data_dir``: its SQLite
    file, or with ``MOORAGE_TEST_DATABASE=postgres`` a PostgreSQL database of
    its own (the same one whenever that data directory is served again), with
    a server secret kept beside the data directory, as a replica would be
    given one. ``env`` is filled with what the server needs for it."""
    from tests.postgres import cluster, use_postgres

    if not use_postgres():
        return f"sqlite:///{data_dir / 'metadata.db'}"
    url = cluster().database_for(str(data_dir.resolve()))
    secret = data_dir.parent / f"{data_dir.name}.secret"
    if not secret.exists():
        secret.write_text(base64.b64encode(os.urandom(32)).decode())
    env.setdefault("MOORAGE_DATABASE_URL", url)
    env.setdefault("MOORAGE_SECRET_FILE", str(secret))
    return url


def tls_init(directory: Path, *extra: str) -> Path:
    """``moorage tls init`` into ``directory`` (CA reused when present); returns it."""
    result = subprocess.run(
        [str(MOORAGE), "tls", "init", "--dir", str(directory), *extra],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return directory


def test_storage() -> str:
    """The blob store servers start on: ``MOORAGE_TEST_STORAGE`` (``filesystem``,
    the default, or ``s3``), so the registry's test files can run on either."""
    storage = os.environ.get("MOORAGE_TEST_STORAGE") or "filesystem"
    if storage not in ("filesystem", "s3"):
        raise RuntimeError(f"MOORAGE_TEST_STORAGE must be filesystem or s3, not {storage!r}")
    return storage


class MoorageServer:
    """``tls``: a directory as ``moorage tls init`` writes it (ca.crt,
    server.crt, server.key); the server then speaks only HTTPS. Without
    server.crt there, ``extra_args`` name the certificates and the directory
    only gives the CA.

    ``storage``: "filesystem" or "s3" (default: ``MOORAGE_TEST_STORAGE``, else
    filesystem). On S3 the server gets a bucket of its own on the test
    session's SeaweedFS (``tests/seaweed.py``), or ``bucket`` (replicas share
    one); ``s3_env`` adds settings such as ``MOORAGE_S3_REDIRECT``."""

    def __init__(
        self,
        data_dir: Path,
        log_path: Path,
        extra_args: tuple[str, ...] = (),
        auth: str = "none",
        env: dict[str, str] | None = None,
        tls: Path | None = None,
        storage: str | None = None,
        s3_env: dict[str, str] | None = None,
        bucket: str | None = None,
    ) -> None:
        self.storage = storage or test_storage()
        self.bucket: str | None = None
        if self.storage == "s3":
            from tests.seaweed import shared_seaweed

            seaweed = shared_seaweed()
            self.bucket = bucket or seaweed.new_bucket()
            env = {**seaweed.settings_env(self.bucket), **(s3_env or {}), **(env or {})}
        self.data_dir = data_dir
        self.log_path = log_path
        self.extra_args = extra_args
        self.auth = auth
        self.env = dict(env or {})
        self.tls = tls
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.stdout_path = log_path.with_suffix(".stdout")
        self.database_url = self.env.get("MOORAGE_DATABASE_URL") or database_for(data_dir, self.env)

    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"

    @property
    def ca_file(self) -> Path | None:
        return self.tls / "ca.crt" if self.tls else None

    @property
    def verify(self) -> str | bool:
        """What requests' ``verify`` needs for this server."""
        return str(self.ca_file) if self.ca_file else True

    def host_for(self, domain: str) -> str:
        return f"{domain}:{self.port}"

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}"

    def start(self) -> MoorageServer:
        log = self.log_path.open("ab")
        tls_args = (
            ["--tls-cert", str(self.tls / "server.crt"), "--tls-key", str(self.tls / "server.key")]
            if self.tls and (self.tls / "server.crt").exists()
            else []
        )
        self.process = subprocess.Popen(
            [
                str(MOORAGE),
                "serve",
                "--auth",
                self.auth,
                "--port",
                str(self.port),
                "--data",
                str(self.data_dir),
                *tls_args,
                *self.extra_args,
            ],
            stdout=self.stdout_path.open("ab"),
            stderr=log,
            start_new_session=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **self.env},
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"moorage exited early; see {self.log_path}")
            try:
                # The server closes this connection at once: one left for the
                # client's garbage collector would count against the limits.
                health = requests.get(
                    f"{self.url}/health",
                    timeout=1,
                    verify=self.verify,
                    headers={"Connection": "close"},
                )
                if health.status_code == 200:
                    return self
            except requests.ConnectionError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"moorage did not become healthy; see {self.log_path}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int | None:
        if self.process is None:
            return None
        if self.process.poll() is None:
            os.killpg(self.process.pid, sig)
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            code = self.process.wait()
        self.process = None
        return code

    def send_signal(self, sig: int) -> None:
        assert self.process is not None
        self.process.send_signal(sig)

    def kill9(self) -> None:
        """SIGKILL to the supervisor and the worker alike: a crash, not a shutdown."""
        self.stop(signal.SIGKILL)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def access_log(self) -> list[dict[str, object]]:
        entries = []
        for line in self.log_text().splitlines():
            _, marker, payload = line.partition(" moorage.access ")
            if marker:
                entries.append(json.loads(payload))
        return entries

    # -- what is on disk and in the database, for "nothing changed" checks --

    def blob_files(self) -> set[str]:
        """Every stored blob, as ``algorithm:hex`` (files, or objects on S3)."""
        if self.bucket is not None:
            from tests.seaweed import shared_seaweed

            keys = shared_seaweed().keys(self.bucket, "blobs/")
            return {f"{k.split('/')[1]}:{k.split('/')[3]}" for k in keys if k.count("/") == 3}
        root = self.data_dir / "blobs"
        return {f"{p.parent.parent.name}:{p.name}" for p in root.glob("*/*/*") if p.is_file()}

    def upload_files(self) -> set[str]:
        """The uploads with staged bytes: files, or objects and multipart
        uploads under uploads/<id>/ on S3."""
        if self.bucket is not None:
            from tests.seaweed import shared_seaweed

            seaweed = shared_seaweed()
            keys = [*seaweed.keys(self.bucket, "uploads/"), *seaweed.multipart_keys(self.bucket)]
            return {k.split("/")[1] for k in keys if k.startswith("uploads/")}
        return {p.name for p in (self.data_dir / "uploads").iterdir()}

    def db_rows(self) -> dict[str, list[tuple[object, ...]]]:
        tables = [
            "repositories",
            "blobs",
            "repository_blobs",
            "manifests",
            "tags",
            "uploads",
            "manifest_references",
        ]
        return table_rows(self.database_url, tables)

    def query(self, sql: str, **params: object) -> list[tuple[object, ...]]:
        """Rows of one SQL query on this server's metadata database."""
        return query(self.database_url, sql, **params)

    def snapshot(self) -> tuple[set[str], set[str], dict[str, list[tuple[object, ...]]]]:
        return self.blob_files(), self.upload_files(), self.db_rows()


def _engine(url: str) -> sa.Engine:
    return sa.create_engine(url, poolclass=sa.pool.NullPool)


def query(url: str, sql: str, **params: object) -> list[tuple[object, ...]]:
    engine = _engine(url)
    try:
        with engine.connect() as conn:
            return [tuple(r) for r in conn.execute(sa.text(sql), params)]
    finally:
        engine.dispose()


def table_rows(url: str, tables: list[str] | None = None) -> dict[str, list[tuple[object, ...]]]:
    """Every row of ``tables`` (default: every table but Alembic's), sorted."""
    engine = _engine(url)
    try:
        names = tables or [
            t for t in sa.inspect(engine).get_table_names() if t != "alembic_version"
        ]
        with engine.connect() as conn:
            return {
                t: sorted(
                    (tuple(r) for r in conn.execute(sa.text(f'SELECT * FROM "{t}"'))), key=repr
                )
                for t in names
            }
    finally:
        engine.dispose()


def local_server(tmp: Path, **kwargs: Any) -> MoorageServer:
    """A server in ``tmp`` on SQLite and files in both passes of the suite, for
    tests that open its database and blob store in their own process as a
    replica would (``open_registry`` with the data directory only)."""
    env = {"MOORAGE_DATABASE_URL": f"sqlite:///{tmp / 'data' / 'metadata.db'}"}
    env.update(kwargs.pop("env", {}))
    return MoorageServer(tmp / "data", tmp / "server.log", storage="filesystem", env=env, **kwargs)
