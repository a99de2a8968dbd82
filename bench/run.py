#!/usr/bin/env python3
"""`make bench`: Moorage beside CNCF Distribution (and nginx for raw file
serving), on loopback, in the same run, alternating, several rounds. Writes
medians and Moorage/Distribution ratios to docs/benchmarks.md.

Every figure is a throughput or a rate, so a ratio above 1.0 always means
Moorage did better."""

from __future__ import annotations

import argparse
import base64
import hashlib
import http.client
import importlib
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.oci_layout import make_image, sha256, write_layout  # noqa: E402
from tests.server import ensure_region_hosts, free_port  # noqa: E402

GIB = 1 << 30
MIB = 1 << 20
CHUNK = 16 * MIB
CACHE = Path(os.environ.get("MOORAGE_BENCH_CACHE", "/var/tmp/moorage-bench"))
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


# -- servers -----------------------------------------------------------------


def tree_rss(pid: int) -> int:
    """Resident bytes of a process and all its descendants."""
    total, stack = 0, [pid]
    while stack:
        current = stack.pop()
        try:
            status = Path(f"/proc/{current}/status").read_text()
            children = Path(f"/proc/{current}/task/{current}/children").read_text().split()
        except OSError:
            continue
        match = re.search(r"VmRSS:\s+(\d+) kB", status)
        total += int(match.group(1)) * 1024 if match else 0
        stack.extend(int(c) for c in children)
    return total


class RssSampler:
    def __init__(self, pid: int) -> None:
        self.pid, self.peak, self._stop = pid, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, tree_rss(self.pid))
            self._stop.wait(0.02)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, tree_rss(self.pid))


@dataclass
class Server:
    name: str
    port: int
    workdir: Path
    process: subprocess.Popen[bytes] | None = None
    env: dict[str, str] = field(default_factory=dict)

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        raise NotImplementedError

    def prepare(self) -> None:
        pass

    def start(self) -> None:
        shutil.rmtree(self.workdir, ignore_errors=True)
        self.workdir.mkdir(parents=True)
        self.prepare()
        log = (self.workdir / "server.log").open("wb")
        self.process = subprocess.Popen(
            self.command(),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, **self.env},
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                conn = http.client.HTTPConnection(self.host, timeout=1)
                conn.request("GET", "/v2/")
                if conn.getresponse().status in (200, 401, 404):
                    return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"{self.name} did not start; see {self.workdir / 'server.log'}")

    def stop(self) -> None:
        if self.process is not None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
            self.process = None


class Moorage(Server):
    auth = "none"

    def command(self) -> list[str]:
        return [
            str(Path(sys.executable).with_name("moorage")),
            "serve",
            "--auth",
            self.auth,
            "--port",
            str(self.port),
            "--data",
            str(self.workdir / "data"),
        ]


class MoorageWithTokens(Moorage):
    """Moorage on its default token authentication, with a large IAM: 1,000
    service IDs holding 10,000 policies in one account."""

    auth = "token"
    key = "bench-administrator-key-0123456789abcdef0123"

    def prepare(self) -> None:
        self.env = {"MOORAGE_BOOTSTRAP_APIKEY": self.key, "MOORAGE_TOKEN_LIFETIME": "3600"}


class DistributionWithHtpasswd(Server):
    """Distribution with its htpasswd (bcrypt) authentication."""

    user, password = "bench", "bench-password"

    def prepare(self) -> None:
        subprocess.run(
            ["htpasswd", "-Bbc", str(self.workdir / "htpasswd"), self.user, self.password],
            check=True,
            capture_output=True,
        )
        (self.workdir / "config.yml").write_text(
            "version: 0.1\n"
            "log:\n  level: error\n"
            f"storage:\n  filesystem:\n    rootdirectory: {self.workdir / 'data'}\n"
            "  delete:\n    enabled: true\n"
            f"http:\n  addr: {self.host}\n"
            "auth:\n  htpasswd:\n    realm: bench\n"
            f"    path: {self.workdir / 'htpasswd'}\n"
        )

    def command(self) -> list[str]:
        return ["docker-registry", "serve", str(self.workdir / "config.yml")]


class Distribution(Server):
    def prepare(self) -> None:
        (self.workdir / "config.yml").write_text(
            "version: 0.1\n"
            "log:\n  level: error\n"
            f"storage:\n  filesystem:\n    rootdirectory: {self.workdir / 'data'}\n"
            "  delete:\n    enabled: true\n"
            f"http:\n  addr: {self.host}\n"
        )

    def command(self) -> list[str]:
        return ["docker-registry", "serve", str(self.workdir / "config.yml")]


class Nginx(Server):
    """nginx serving one file with sendfile: the practical ceiling for blob GET."""

    def __init__(self, name: str, port: int, workdir: Path, blob: Path) -> None:
        super().__init__(name, port, workdir)
        self.blob = blob

    def prepare(self) -> None:
        (self.workdir / "v2").mkdir()
        os.symlink(self.blob, self.workdir / "v2" / "blob")
        (self.workdir / "nginx.conf").write_text(
            "user root; daemon off; worker_processes 1; error_log stderr error; pid nginx.pid;\n"
            "events { worker_connections 64; }\n"
            "http { access_log off; sendfile on; tcp_nopush on;\n"
            f"  server {{ listen {self.host}; root {self.workdir};\n"
            "    location = /v2/ { return 200 '{}'; } } }\n"
        )

    def command(self) -> list[str]:
        return ["nginx", "-p", str(self.workdir), "-c", str(self.workdir / "nginx.conf")]


# -- clients -----------------------------------------------------------------


def curl_get(host: str, path: str, range_header: str | None = None) -> float:
    """MB/s of a GET as curl measures it: the median of five, as one GET is noisy here."""
    return statistics.median(_curl_get(host, path, range_header) for _ in range(5))


def _curl_get(host: str, path: str, range_header: str | None) -> float:
    args = ["curl", "-sS", "-o", "/dev/null", "-w", "%{speed_download} %{http_code}", "--fail"]
    if range_header:
        args += ["-H", f"Range: {range_header}"]
    out = subprocess.run(
        [*args, f"http://{host}{path}"], capture_output=True, text=True, check=True
    )
    speed, _ = out.stdout.split()
    return float(speed) / 1e6


def _request(
    conn: http.client.HTTPConnection,
    method: str,
    path: str,
    body: object = None,
    headers: dict[str, str] | None = None,
) -> http.client.HTTPResponse:
    conn.request(method, path, body=body, headers=headers or {})
    response = conn.getresponse()
    response.read()
    if response.status >= 300:
        raise RuntimeError(f"{method} {path} -> {response.status}")
    return response


def upload_monolithic(host: str, repo: str, path: Path, digest: str) -> float:
    conn = http.client.HTTPConnection(host, timeout=600, blocksize=MIB)
    started = time.perf_counter()
    location = _request(conn, "POST", f"/v2/{repo}/blobs/uploads/").getheader("Location") or ""
    location = location.split(host, 1)[-1]
    sep = "&" if "?" in location else "?"
    size = path.stat().st_size
    with path.open("rb") as f:
        _request(
            conn,
            "PUT",
            f"{location}{sep}digest={digest}",
            body=f,
            headers={"Content-Length": str(size), "Content-Type": "application/octet-stream"},
        )
    return size / 1e6 / (time.perf_counter() - started)


def upload_chunked(host: str, repo: str, path: Path, digest: str) -> float:
    conn = http.client.HTTPConnection(host, timeout=600, blocksize=MIB)
    size = path.stat().st_size
    started = time.perf_counter()
    location = _request(conn, "POST", f"/v2/{repo}/blobs/uploads/").getheader("Location") or ""
    with path.open("rb") as f:
        offset = 0
        while offset < size:
            chunk = f.read(CHUNK)
            response = _request(
                conn,
                "PATCH",
                location.split(host, 1)[-1],
                body=chunk,
                headers={
                    "Content-Range": f"{offset}-{offset + len(chunk) - 1}",
                    "Content-Length": str(len(chunk)),
                    "Content-Type": "application/octet-stream",
                },
            )
            location = response.getheader("Location") or location
            offset += len(chunk)
    location = location.split(host, 1)[-1]
    sep = "&" if "?" in location else "?"
    _request(conn, "PUT", f"{location}{sep}digest={digest}", headers={"Content-Length": "0"})
    return size / 1e6 / (time.perf_counter() - started)


def skopeo_push(host: str, repo: str, layout: Path, size: int) -> float:
    for cache in Path("/var/lib/containers/cache").glob("blob-info-cache*"):
        cache.unlink()  # no remembered locations: every run uploads every blob
    started = time.perf_counter()
    subprocess.run(
        [
            "skopeo",
            "copy",
            "-q",
            "--dest-tls-verify=false",
            f"oci:{layout}:latest",
            f"docker://{host}/{repo}:v1",
        ],
        check=True,
        capture_output=True,
    )
    return size / 1e6 / (time.perf_counter() - started)


def skopeo_pull(host: str, repo: str, size: int, scratch: Path) -> float:
    out = scratch / "pull"
    shutil.rmtree(out, ignore_errors=True)
    started = time.perf_counter()
    subprocess.run(
        [
            "skopeo",
            "copy",
            "-q",
            "--src-tls-verify=false",
            f"docker://{host}/{repo}:v1",
            f"dir:{out}",
        ],
        check=True,
        capture_output=True,
    )
    elapsed = time.perf_counter() - started
    shutil.rmtree(out, ignore_errors=True)
    return size / 1e6 / elapsed


def _load_rate(tool: str, args: list[str], rate: str, failures: str) -> float:
    """Run a load generator; its requests per second, refusing runs with failed replies."""
    out = subprocess.run([tool, *args], capture_output=True, text=True, check=True).stdout
    failed = re.search(failures, out)
    if failed:
        raise RuntimeError(f"{tool} saw {failed.group(1)} failed responses: {args[-1]}")
    found = re.search(rate, out)
    if found is None:
        raise RuntimeError(f"{tool} printed no rate:\n{out}")
    return float(found.group(1))


def wrk_get(host: str, path: str, seconds: int, authorization: str | None = None) -> float:
    args = ["-t2", "-c8", f"-d{seconds}s", "-H", f"Accept: {OCI_MANIFEST}"]
    if authorization:
        args += ["-H", f"Authorization: {authorization}"]
    args.append(f"http://{host}{path}")
    return _load_rate("wrk", args, r"Requests/sec:\s+([\d.]+)", r"Non-2xx or 3xx responses: (\d+)")


def ab_head(host: str, path: str, requests: int) -> float:
    args = [
        "-q",
        "-k",
        "-i",
        "-c8",
        f"-n{requests}",
        "-H",
        f"Accept: {OCI_MANIFEST}",
        f"http://{host}{path}",
    ]
    return _load_rate("ab", args, r"Requests per second:\s+([\d.]+)", r"Non-2xx responses:\s+(\d+)")


# -- fixtures ----------------------------------------------------------------


def big_file(size: int) -> tuple[Path, str]:
    CACHE.mkdir(parents=True, exist_ok=True)
    path = CACHE / f"random-{size}.bin"
    if not path.exists() or path.stat().st_size != size:
        with path.open("wb") as f:
            for _ in range(size // (64 * MIB)):
                f.write(os.urandom(64 * MIB))
    digest_path = path.with_suffix(".sha256")
    if not digest_path.exists():
        h = hashlib.sha256()
        with path.open("rb") as f:
            while block := f.read(16 * MIB):
                h.update(block)
        digest_path.write_text("sha256:" + h.hexdigest())
    return path, digest_path.read_text()


def big_layout(blob: Path) -> tuple[Path, int]:
    """A one-layer OCI layout whose layer is the 1 GiB random file, tarred, gzip level 0."""
    layout = CACHE / "layout-1gib"
    marker = layout / "done"
    if not marker.exists():
        shutil.rmtree(layout, ignore_errors=True)
        (layout / "blobs" / "sha256").mkdir(parents=True)
        tmp = layout / "layer.tmp"
        subprocess.run(
            f"tar -C {blob.parent} -cf - {blob.name} | gzip -1 -c > {tmp}", shell=True, check=True
        )
        h = hashlib.sha256()
        with tmp.open("rb") as f:
            while block := f.read(16 * MIB):
                h.update(block)
        layer_digest = "sha256:" + h.hexdigest()
        size = tmp.stat().st_size
        tmp.rename(layout / "blobs" / "sha256" / layer_digest[7:])
        config = json.dumps(
            {
                "architecture": "amd64",
                "os": "linux",
                "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
            }
        ).encode()
        manifest = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": {
                    "mediaType": "application/vnd.oci.image.config.v1+json",
                    "digest": sha256(config),
                    "size": len(config),
                },
                "layers": [
                    {
                        "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                        "digest": layer_digest,
                        "size": size,
                    }
                ],
            }
        ).encode()
        for data in (config, manifest):
            (layout / "blobs" / "sha256" / sha256(data)[7:]).write_bytes(data)
        (layout / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
        (layout / "index.json").write_text(
            json.dumps(
                {
                    "schemaVersion": 2,
                    "manifests": [
                        {
                            "mediaType": OCI_MANIFEST,
                            "digest": sha256(manifest),
                            "size": len(manifest),
                            "annotations": {"org.opencontainers.image.ref.name": "latest"},
                        }
                    ],
                }
            )
        )
        marker.write_text("ok")
    size = sum(p.stat().st_size for p in (layout / "blobs" / "sha256").iterdir())
    return layout, size


def many_layer_layout() -> tuple[Path, int]:
    layout = CACHE / "layout-20"
    if not (layout / "index.json").exists():
        image = make_image(layer_count=20, layer_bytes=4 * MIB, seed="bench20")
        write_layout(image, layout)
    size = sum(p.stat().st_size for p in (layout / "blobs" / "sha256").iterdir())
    return layout, size


def seed_manifest(host: str, headers: dict[str, str] | None = None, repo: str = "bench/rps") -> str:
    """Push a small image and return its manifest path."""
    image = make_image(layer_count=3, layer_bytes=1024, seed="rps")
    auth = headers or {}
    conn = http.client.HTTPConnection(host, timeout=30)
    for blob in [image.config, *image.layers]:
        start = _request(conn, "POST", f"/v2/{repo}/blobs/uploads/", headers=auth)
        location = (start.getheader("Location") or "").split(host, 1)[-1]
        sep = "&" if "?" in location else "?"
        _request(
            conn,
            "PUT",
            f"{location}{sep}digest={sha256(blob)}",
            body=blob,
            headers={"Content-Type": "application/octet-stream", **auth},
        )
    _request(
        conn,
        "PUT",
        f"/v2/{repo}/manifests/v1",
        body=image.manifest,
        headers={"Content-Type": OCI_MANIFEST, **auth},
    )
    return f"/v2/{repo}/manifests/v1"


# -- authenticated runs --------------------------------------------------------


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def populate_iam(server: MoorageWithTokens) -> str:
    """1,000 service IDs and 10,000 policies in the bootstrap account, written
    straight into the server's database; returns an API key of one of them."""
    from moorage.iam.secrets import SecretKeeper, load_or_create_key
    from moorage.iam.service import SERVICE_ID, IamService
    from moorage.metadata import create_metadata_engine, sqlite_url
    from moorage.metadata.iam_store import IamStore, PolicyRecord, ServiceIdRecord

    data = server.workdir / "data"
    engine = create_metadata_engine(sqlite_url(data))
    keeper = SecretKeeper(load_or_create_key(data / "secrets" / "server.key"))
    store = IamStore(engine)
    iam = IamService(store, keeper, ("us-south", "eu-de", "global"))
    account = iam.default_account()
    now = datetime.now(UTC)
    with store.write() as tx:
        for i in range(1000):
            sid = f"ServiceId-bench-{i:04d}"
            tx.insert_service_id(ServiceIdRecord(sid, account, f"bench-{i:04d}", "", now))
            for j in range(10):
                tx.insert_policy(
                    PolicyRecord(
                        f"Policy-bench-{i:04d}-{j}",
                        account,
                        SERVICE_ID,
                        sid,
                        ("Reader",),
                        "container-registry",
                        "us-south",
                        "namespace",
                        "bench" if j == 0 else f"other{j:02d}",
                        now,
                    )
                )
    _, created = iam.create_api_key(account, SERVICE_ID, "ServiceId-bench-0500", "bench", None)
    engine.dispose()
    return created.secret


def token_latencies(host: str, key: str, count: int) -> list[float]:
    """Seconds per token request, one after another on a kept-alive connection."""
    conn = http.client.HTTPConnection(host, timeout=30)
    path = "/oauth/token?service=us.localhost&scope=repository:bench/rps:pull"
    latencies = []
    for _ in range(count):
        started = time.perf_counter()
        _request(conn, "GET", path, headers={"Authorization": basic("iamapikey", key)})
        latencies.append(time.perf_counter() - started)
    return latencies


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def run_authenticated(
    rounds: int, seconds: int, scratch: Path, metric: Metric, latencies: dict[str, list[float]]
) -> None:
    ensure_region_hosts()
    servers: list[Server] = [
        MoorageWithTokens("Moorage", free_port(), scratch / "moorage-auth"),
        DistributionWithHtpasswd("Distribution", free_port(), scratch / "distribution-auth"),
    ]
    for r in range(rounds):
        order = servers if r % 2 == 0 else list(reversed(servers))
        for server in order:
            server.start()
            try:
                if isinstance(server, MoorageWithTokens):
                    host = f"us.localhost:{server.port}"
                    admin = {"Authorization": basic("iamapikey", server.key)}
                    conn = http.client.HTTPConnection(host, timeout=30)
                    _request(
                        conn,
                        "POST",
                        "/api/v1/cr/us-south/namespaces",
                        body=json.dumps({"name": "bench"}),
                        headers=admin,
                    )
                    grant = json.loads(
                        _get(
                            conn,
                            "/oauth/token?service=us.localhost&scope="
                            "repository:bench/rps:pull,push",
                            admin,
                        )
                    )
                    bearer = {"Authorization": f"Bearer {grant['token']}"}
                    manifest = seed_manifest(host, bearer)
                    reader_key = populate_iam(server)
                    latencies.setdefault("Moorage", []).extend(
                        token_latencies(host, reader_key, 2000)
                    )
                    pull = json.loads(
                        _get(
                            conn,
                            "/oauth/token?service=us.localhost&scope=repository:bench/rps:pull",
                            {"Authorization": basic("iamapikey", reader_key)},
                        )
                    )
                    authorization = f"Bearer {pull['token']}"
                else:
                    host = server.host
                    authorization = basic(
                        DistributionWithHtpasswd.user, DistributionWithHtpasswd.password
                    )
                    manifest = seed_manifest(host, {"Authorization": authorization})
                measure(metric, server, wrk_get, host, manifest, seconds, authorization)
            finally:
                server.stop()


def _get(conn: http.client.HTTPConnection, path: str, headers: dict[str, str]) -> bytes:
    conn.request("GET", path, headers=headers)
    response = conn.getresponse()
    body = response.read()
    if response.status != 200:
        raise RuntimeError(f"GET {path} -> {response.status}")
    return body


# -- the run -----------------------------------------------------------------


@dataclass
class Metric:
    name: str
    unit: str
    target: str
    values: dict[str, list[float]] = field(default_factory=dict)
    rss: dict[str, list[int]] = field(default_factory=dict)

    def add(self, server: str, value: float, rss: int) -> None:
        self.values.setdefault(server, []).append(value)
        self.rss.setdefault(server, []).append(rss)

    def median(self, server: str) -> float | None:
        values = self.values.get(server)
        return statistics.median(values) if values else None

    def peak_rss(self, server: str) -> int | None:
        values = self.rss.get(server)
        return max(values) if values else None


def measure(metric: Metric, server: Server, action: Callable[..., float], *args: object) -> None:
    assert server.process is not None
    with RssSampler(server.process.pid) as sampler:
        value = action(*args)
    metric.add(server.name, value, sampler.peak)
    print(
        f"  {metric.name:<38} {server.name:<13} {value:14.1f} {metric.unit:<6} "
        f"peak RSS {sampler.peak / MIB:7.1f} MiB",
        flush=True,
    )


def run(
    rounds: int, seconds: int, small: bool, parts: set[str]
) -> tuple[list[Metric], dict[str, list[float]]]:
    blob_size = 256 * MIB if small else GIB
    blob, blob_digest = big_file(blob_size)
    small_blob, small_digest = big_file(64 * MIB)
    layout_big, layout_big_size = big_layout(blob)
    layout_many, layout_many_size = many_layer_layout()
    scratch = Path(tempfile.mkdtemp(prefix="moorage-bench-"))
    label = "1 GiB" if not small else "256 MiB"

    metrics = {
        "get": Metric(f"blob GET, {label}", "MB/s", ">= 1.0x; within 10% of nginx"),
        "range": Metric(f"ranged GET, middle 256 MiB of {label}", "MB/s", ">= 1.0x"),
        "mono": Metric(f"blob upload, monolithic {label}", "MB/s", ">= 1.0x"),
        "chunk": Metric(f"blob upload, chunked {label} (16 MiB chunks)", "MB/s", ">= 1.0x"),
        "small": Metric("blob upload, monolithic 64 MiB", "MB/s", "RSS flat"),
        "push1": Metric(f"skopeo push, 1-layer {label} image", "MB/s", ">= 1.0x"),
        "pull1": Metric(f"skopeo pull, 1-layer {label} image", "MB/s", ">= 1.0x"),
        "push20": Metric("skopeo push, 20-layer image", "MB/s", ">= 1.0x"),
        "pull20": Metric("skopeo pull, 20-layer image", "MB/s", ">= 1.0x"),
        "mget": Metric("manifest GET, 8 connections (wrk)", "req/s", ">= 2.0x"),
        "mhead": Metric("manifest HEAD, 8 connections (ab -k)", "req/s", ">= 2.0x"),
    }
    ports = {n: free_port() for n in ("Moorage", "Distribution", "nginx")}
    servers: list[Server] = [
        Moorage("Moorage", ports["Moorage"], scratch / "moorage"),
        Distribution("Distribution", ports["Distribution"], scratch / "distribution"),
    ]
    nginx = Nginx("nginx", ports["nginx"], scratch / "nginx", blob)
    mid = blob_size // 2
    range_header = f"bytes={mid - 128 * MIB}-{mid + 128 * MIB - 1}"

    auth_metric = Metric("manifest GET with auth, 8 connections (wrk)", "req/s", ">= 2.0x")
    latencies: dict[str, list[float]] = {}
    if "auth" in parts:
        print("authenticated runs: Moorage with tokens, Distribution with htpasswd", flush=True)
        run_authenticated(rounds, seconds, scratch, auth_metric, latencies)
    for r in range(rounds if "core" in parts else 0):
        order = servers if r % 2 == 0 else list(reversed(servers))
        print(f"round {r + 1}/{rounds}: {', '.join(s.name for s in order)}", flush=True)
        for server in order:
            server.start()
            try:
                host = server.host
                path = f"/v2/bench/mono/blobs/{blob_digest}"
                steps: list[tuple[str, Callable[..., float], tuple[object, ...]]] = [
                    ("mono", upload_monolithic, (host, "bench/mono", blob, blob_digest)),
                    ("chunk", upload_chunked, (host, "bench/chunk", blob, blob_digest)),
                    ("small", upload_monolithic, (host, "bench/small", small_blob, small_digest)),
                    ("get", curl_get, (host, path)),
                    ("range", curl_get, (host, path, range_header)),
                    ("push1", skopeo_push, (host, "bench/big", layout_big, layout_big_size)),
                    ("pull1", skopeo_pull, (host, "bench/big", layout_big_size, scratch)),
                    ("push20", skopeo_push, (host, "bench/many", layout_many, layout_many_size)),
                    ("pull20", skopeo_pull, (host, "bench/many", layout_many_size, scratch)),
                ]
                for key, action, args in steps:
                    measure(metrics[key], server, action, *args)
                manifest = seed_manifest(host)
                measure(metrics["mget"], server, wrk_get, host, manifest, seconds)
                measure(metrics["mhead"], server, ab_head, host, manifest, 20000 * seconds // 5)
            finally:
                server.stop()
        nginx.start()
        try:
            measure(metrics["get"], nginx, curl_get, nginx.host, "/v2/blob")
        finally:
            nginx.stop()
    shutil.rmtree(scratch, ignore_errors=True)
    chosen = list(metrics.values()) if "core" in parts else []
    return ([*chosen, auth_metric] if "auth" in parts else chosen), latencies


def versions() -> dict[str, str]:
    def first_line(*cmd: str) -> str:
        try:
            out = subprocess.run(cmd, capture_output=True, text=True)
            return (out.stdout or out.stderr).strip().splitlines()[0]
        except (OSError, IndexError):
            return "unknown"

    return {
        "Distribution": first_line("docker-registry", "--version"),
        "skopeo": first_line("skopeo", "--version"),
        "nginx": first_line("nginx", "-v"),
        "wrk": first_line("wrk", "--version"),
        "Python": platform.python_version(),
    }


def render(
    metrics: list[Metric], latencies: dict[str, list[float]], rounds: int, seconds: int
) -> str:
    lines = [
        "## Latest run",
        "",
        "Produced by `make bench` (`bench/run.py`) on "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} cores, loopback. "
        f"Moorage and CNCF Distribution run in the same session, one at a time, in alternating "
        f"order over {rounds} rounds; each figure is the median of the rounds. Both use the "
        "local filesystem; Moorage runs on its embedded defaults (SQLite, one worker) with its "
        "access log on. Every figure is a throughput or a rate, so a ratio above 1.0 means "
        f"Moorage did better. Manifest rates are {seconds}-second runs.",
        "",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in versions().items()) + ".",
        "",
        "| benchmark | unit | Moorage | Distribution | ratio | target | met |",
        "|---|---|---:|---:|---:|---|---|",
    ]
    for m in metrics:
        mo, di = m.median("Moorage"), m.median("Distribution")
        ratio = mo / di if mo and di else None
        need = 2.0 if "2.0x" in m.target else 1.0
        met = "yes" if ratio is not None and ratio >= need else "**no**"
        if m.target == "RSS flat":
            met = "see RSS"
        lines.append(
            f"| {m.name} | {m.unit} | {mo:,.0f} | {di:,.0f} | {ratio:.2f} | {m.target} | {met} |"
        )
    get = metrics[0]
    ng, mo = get.median("nginx"), get.median("Moorage")
    issued = latencies.get("Moorage")
    if issued:
        p50, p99 = percentile(issued, 0.50) * 1000, percentile(issued, 0.99) * 1000
        lines += [
            "",
            f"Token issuance (GET /oauth/token, one scope, {len(issued):,} requests one after "
            "another, 1,000 service IDs and 10,000 policies in the account): "
            f"p50 {p50:.2f} ms, p99 {p99:.2f} ms; target p99 under 10 ms: "
            f"{'met' if p99 < 10 else '**not met**'}.",
        ]
    if ng and mo:
        lines += [
            "",
            f"Blob GET against nginx (sendfile, one worker) serving the same file: nginx "
            f"{ng:,.0f} MB/s, Moorage {mo:,.0f} MB/s, ratio {mo / ng:.2f} "
            f"({'within' if mo / ng >= 0.9 else '**not within**'} 10%).",
        ]
    lines += [
        "",
        "## Peak RSS during each benchmark (MiB, whole process tree, max over rounds)",
        "",
        "| benchmark | Moorage | Distribution |",
        "|---|---:|---:|",
    ]
    for m in metrics:
        mo_rss, di_rss = m.peak_rss("Moorage"), m.peak_rss("Distribution")
        lines.append(f"| {m.name} | {(mo_rss or 0) / MIB:,.1f} | {(di_rss or 0) / MIB:,.1f} |")
    lines += ["", "## Raw rounds", "", "```"]
    for m in metrics:
        for server, values in m.values.items():
            lines.append(f"{m.name} / {server}: " + ", ".join(f"{v:,.1f}" for v in values))
    lines += ["```", ""]
    return "\n".join(lines)


# Parts measured by a module of their own (run() and render()), each writing its
# own block of docs/benchmarks.md, so one can be re-run alone.
MODULE_PARTS = {
    "kube": ("bench.kube", "kubernetes: apply, copy to 500 namespaces, controller, diagnose"),
    "flood": ("bench.flood", "a failed sign-in flood from one address, a client elsewhere"),
    "enforce": ("bench.enforce", "image enforcement: admission latency, cache hits and misses"),
    "s3": ("bench.s3", "on S3 (SeaweedFS): Moorage beside Distribution 2.8 and 3.1.2's S3 drivers"),
    "offloop": (
        "bench.offloop",
        "manifest GET latency while a 1 GiB push commits and sign-ins run",
    ),
    "workers": ("bench.workers", "manifest GET: --workers 1 and 2 against Distribution v3.1.2"),
    "replicas": ("bench.replicas", "1, 2 and 3 replicas behind HAProxy over PostgreSQL"),
    "va": (
        "bench.va",
        "vulnerability advisor: index a Debian image and a 1 GiB layer, assess, re-assess 10,000",
    ),
    "va-service": (
        "bench.va_service",
        "vulnerability advisor in the service: re-assess 10,000 reports, GETs while indexing",
    ),
    "mixed": (
        "bench.mixed",
        "eight parallel pushes of about 1 GB, then Zipf-skewed GETs, beside Distribution v3.1.2",
    ),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=int, default=10, help="length of each manifest-rate run")
    parser.add_argument(
        "--small", action="store_true", help="256 MiB instead of 1 GiB (a quick look)"
    )
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "benchmarks.md")
    parser.add_argument(
        "--only",
        choices=["core", "auth", *MODULE_PARTS],
        help="run one part of the benchmark",
    )
    args = parser.parse_args()
    parts = {args.only} if args.only else {"core", "auth", *MODULE_PARTS}
    if parts & {"core", "auth"}:
        metrics, latencies = run(args.rounds, args.seconds, args.small, parts)
        text = (
            render(metrics, latencies, args.rounds, args.seconds) if metrics else "## Latest run\n"
        )
        write_results(args.output, text)
    for part, (module_name, title) in MODULE_PARTS.items():
        if part in parts:
            module = importlib.import_module(module_name)
            print(f"{part}: {title}", flush=True)
            text = "\n".join(module.render(module.run()))
            write_results(args.output, text, *markers(part))
    print(f"\nwrote {args.output}")


BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"


def markers(part: str) -> tuple[str, str]:
    return f"<!-- bench:{part}:begin -->", f"<!-- bench:{part}:end -->"


def write_results(path: Path, results: str, begin: str = BEGIN, end: str = END) -> None:
    """Replace one generated block of the document (the registry's, the
    Kubernetes one or the enforcement one), keeping the prose and the other
    blocks; a missing block is added at the end."""
    block = f"{begin}\n{results}\n{end}"
    text = path.read_text() if path.exists() else ""
    if begin in text and end in text:
        head, _, rest = text.partition(begin)
        _, _, tail = rest.partition(end)
        path.write_text(head + block + tail)
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + ("\n" if text else "") + block + "\n")


if __name__ == "__main__":
    main()
