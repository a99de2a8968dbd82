"""Several Moorage replicas over one PostgreSQL database, behind HAProxy, as
the tests start them: every replica a real ``moorage serve`` process on a
port of its own, all sharing one blob store (by default a bucket on the
tests' SeaweedFS; or the filesystem store on a directory every replica sees,
as an NFS mount would be), one database and one server secret; HAProxy
(Debian's) balancing them round robin with health checks on ``/health``."""

from __future__ import annotations

import base64
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import requests

from tests.postgres import cluster
from tests.seaweed import shared_seaweed
from tests.server import MoorageServer, free_port


class HaProxy:
    def __init__(self, directory: Path, backends: list[int]) -> None:
        self.directory = directory
        self.port = free_port()
        self.stats_port = free_port()
        self.backends = backends
        self.process: subprocess.Popen[bytes] | None = None

    def host_for(self, domain: str) -> str:
        return f"{domain}:{self.port}"

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def config(self) -> str:
        servers = "\n".join(
            f"  server r{i} 127.0.0.1:{port} check" for i, port in enumerate(self.backends)
        )
        return f"""global
  maxconn 4096
defaults
  mode http
  timeout connect 2s
  timeout client 300s
  timeout server 300s
  timeout http-request 30s
  retries 3
  option redispatch
frontend registry
  bind 127.0.0.1:{self.port}
  default_backend replicas
frontend stats
  bind 127.0.0.1:{self.stats_port}
  stats enable
  stats uri /stats
backend replicas
  balance roundrobin
  option httpchk
  http-check send meth GET uri /health ver HTTP/1.1 hdr Host localhost
  http-check expect status 200
  default-server inter 300ms fall 2 rise 2
{servers}
"""

    def start(self) -> HaProxy:
        haproxy = shutil.which("haproxy") or "/usr/sbin/haproxy"
        if not Path(haproxy).exists():
            raise RuntimeError("haproxy is not installed: run `make test-deps`")
        self.directory.mkdir(parents=True, exist_ok=True)
        config = self.directory / "haproxy.cfg"
        config.write_text(self.config())
        self.process = subprocess.Popen(
            [haproxy, "-f", str(config), "-db"],
            stdout=(self.directory / "haproxy.log").open("ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.wait_up(len(self.backends))
        return self

    def up(self) -> int:
        """Backends HAProxy's health checks consider up."""
        try:
            csv = requests.get(f"http://127.0.0.1:{self.stats_port}/stats;csv", timeout=2).text
        except requests.ConnectionError:
            return 0
        return sum(
            1
            for line in csv.splitlines()
            if line.startswith("replicas,r") and line.split(",")[17].startswith("UP")
        )

    def wait_up(self, count: int, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while self.up() != count:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"haproxy exited; see {self.directory / 'haproxy.log'}")
            if time.monotonic() > deadline:
                raise AssertionError(f"haproxy does not see {count} backends up")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(10)
            self.process = None


class Replicas:
    """``count`` replicas of one installation and HAProxy in front of them."""

    def __init__(
        self,
        directory: Path,
        count: int = 3,
        auth: str = "token",
        env: dict[str, str] | None = None,
        extra_args: tuple[str, ...] = (),
        database: str | None = None,
        storage: str = "s3",
    ) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.data = directory / "data"
        name = database or f"replicas_{directory.name}".replace("-", "_")[:60]
        self.database_url = cluster().create_database(name)
        self.secret_file = directory / "server.secret"
        self.secret_file.write_text(base64.b64encode(os.urandom(32)).decode())
        self.env = {
            "MOORAGE_DATABASE_URL": self.database_url,
            "MOORAGE_SECRET_FILE": str(self.secret_file),
            **(env or {}),
        }
        bucket = shared_seaweed().new_bucket() if storage == "s3" else None
        self.servers = [
            MoorageServer(
                self.data,
                directory / f"replica{i}.log",
                extra_args,
                auth=auth,
                env=self.env,
                storage=storage,
                bucket=bucket,
            )
            for i in range(count)
        ]
        self.proxy = HaProxy(directory / "haproxy", [s.port for s in self.servers])

    def start(self) -> Replicas:
        try:
            for server in self.servers:
                server.start()
            self.proxy.start()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        self.proxy.stop()
        for server in self.servers:
            server.stop()
