"""Moorage on S3 beside CNCF Distribution's own S3 driver, against one object store.

One SeaweedFS (``weed mini``) on loopback holds every registry's bucket.
Moorage, Distribution 2.8 (Debian's ``docker-registry``) and Distribution
3.1.2 run one at a time, in alternating order, each with a fresh bucket per
start, twice per round: once serving blobs through itself, once answering
blob GETs with a redirect to a presigned URL (curl follows it). Uploads are
Python's ``http.client``, GETs curl, manifest GETs wrk, as in ``make bench``.
Moorage runs twice: on its embedded SQLite, and on PostgreSQL (started as
``bench/replicas.py`` does, a fresh database per start), the metadata
database a deployment on S3 would use."""

from __future__ import annotations

import base64
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.run import (
    MIB,
    Metric,
    Moorage,
    Server,
    big_file,
    curl_get,
    measure,
    seed_manifest,
    upload_chunked,
    upload_monolithic,
    wrk_get,
)
from tests.postgres import BIN as POSTGRES_BIN
from tests.postgres import PostgresServer
from tests.seaweed import ACCESS_KEY, REGION, SECRET_KEY, SeaweedFS
from tests.server import free_port

SIZE = 256 * MIB
DISTRIBUTION_3 = "distribution-v3.1.2"
NAMES = ("Moorage", "Moorage, PostgreSQL", "Distribution 2.8", "Distribution 3.1.2")


class MoorageOnS3(Moorage):
    def __init__(
        self,
        name: str,
        port: int,
        workdir: Path,
        seaweed: SeaweedFS,
        redirect: bool,
        postgres: PostgresServer | None = None,
        secret: Path | None = None,
    ):
        super().__init__(name, port, workdir)
        self.seaweed, self.redirect = seaweed, redirect
        self.postgres, self.secret = postgres, secret

    def prepare(self) -> None:
        self.env = {
            **self.seaweed.settings_env(self.seaweed.new_bucket()),
            "MOORAGE_S3_REDIRECT": "true" if self.redirect else "false",
        }
        if self.postgres is not None:
            # A fresh database per start, as the bucket is.
            url = self.postgres.create_database(f"s3_{self.workdir.name}".replace("-", "_"))
            self.env |= {"MOORAGE_DATABASE_URL": url, "MOORAGE_SECRET_FILE": str(self.secret)}


class DistributionOnS3(Server):
    def __init__(
        self, name: str, port: int, workdir: Path, binary: str, seaweed: SeaweedFS, redirect: bool
    ) -> None:
        super().__init__(name, port, workdir)
        self.binary, self.seaweed, self.redirect = binary, seaweed, redirect

    def prepare(self) -> None:
        (self.workdir / "config.yml").write_text(
            "version: 0.1\n"
            "log:\n  level: error\n"
            "storage:\n"
            "  s3:\n"
            f"    region: {REGION}\n"
            f"    regionendpoint: {self.seaweed.endpoint}\n"
            f"    bucket: {self.seaweed.new_bucket()}\n"
            "    secure: false\n    v4auth: true\n    forcepathstyle: true\n"
            f"    accesskey: {ACCESS_KEY}\n    secretkey: {SECRET_KEY}\n"
            f"  redirect:\n    disable: {'false' if self.redirect else 'true'}\n"
            "  delete:\n    enabled: true\n"
            f"http:\n  addr: {self.host}\n"
        )

    def command(self) -> list[str]:
        # Distribution's S3 driver panics at start while AWS_CA_BUNDLE is set.
        return [
            "env",
            "-u",
            "AWS_CA_BUNDLE",
            self.binary,
            "serve",
            str(self.workdir / "config.yml"),
        ]


def curl_follow(host: str, path: str) -> float:
    """MB/s of a GET that follows the registry's redirect, median of three."""

    def once() -> float:
        out = subprocess.run(
            [
                "curl",
                "-sS",
                "-L",
                "--fail",
                "-o",
                "/dev/null",
                "-w",
                "%{speed_download} %{num_redirects}",
                f"http://{host}{path}",
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        speed, redirects = out.stdout.split()
        if redirects != "1":
            raise RuntimeError(f"expected one redirect on {path}, got {redirects}")
        return float(speed) / 1e6

    return statistics.median(once() for _ in range(3))


def run(rounds: int = 3, seconds: int = 10, postgres: bool = True) -> dict[str, Any]:
    blob, digest = big_file(SIZE)
    scratch = Path(tempfile.mkdtemp(prefix="moorage-bench-s3-"))
    seaweed = SeaweedFS(scratch / "seaweed").start()
    database: PostgresServer | None = None
    secret = scratch / "secret"
    if postgres and (POSTGRES_BIN / "initdb").exists():
        try:
            database = PostgresServer().start()
        except Exception:
            seaweed.stop()
            raise
        secret.write_text(base64.b64encode(os.urandom(32)).decode())
    elif postgres:
        print(f"  no PostgreSQL in {POSTGRES_BIN}: Moorage on SQLite only", flush=True)
    metrics = {
        "mono": Metric("blob upload, monolithic 256 MiB", "MB/s", ""),
        "chunk": Metric("blob upload, chunked 256 MiB (16 MiB chunks)", "MB/s", ""),
        "get": Metric("blob GET, 256 MiB, through the registry", "MB/s", ""),
        "redirect": Metric("blob GET, 256 MiB, redirected to S3 (curl -L)", "MB/s", ""),
        "mget": Metric("manifest GET, 8 connections (wrk)", "req/s", ""),
    }
    third = shutil.which(DISTRIBUTION_3)

    def servers(redirect: bool) -> list[Server]:
        tag = "redirect" if redirect else "proxied"
        found: list[Server] = [
            MoorageOnS3(NAMES[0], free_port(), scratch / f"moorage-{tag}", seaweed, redirect),
        ]
        if database is not None:
            found.append(
                MoorageOnS3(
                    NAMES[1],
                    free_port(),
                    scratch / f"moorage-pg-{tag}",
                    seaweed,
                    redirect,
                    database,
                    secret,
                )
            )
        found.append(
            DistributionOnS3(
                NAMES[2], free_port(), scratch / f"d28-{tag}", "docker-registry", seaweed, redirect
            )
        )
        if third:
            found.append(
                DistributionOnS3(
                    NAMES[3], free_port(), scratch / f"d31-{tag}", third, seaweed, redirect
                )
            )
        return found

    proxied, redirected = servers(False), servers(True)
    path = f"/v2/bench/mono/blobs/{digest}"
    try:
        for r in range(rounds):
            for group in (proxied, redirected):
                order = group if r % 2 == 0 else list(reversed(group))
                print(f"round {r + 1}/{rounds}: {', '.join(s.name for s in order)}", flush=True)
                for server in order:
                    server.start()
                    try:
                        host = server.host
                        if group is proxied:
                            measure(
                                metrics["mono"],
                                server,
                                upload_monolithic,
                                host,
                                "bench/mono",
                                blob,
                                digest,
                            )
                            measure(
                                metrics["chunk"],
                                server,
                                upload_chunked,
                                host,
                                "bench/chunk",
                                blob,
                                digest,
                            )
                            measure(metrics["get"], server, curl_get, host, path)
                            manifest = seed_manifest(host)
                            measure(metrics["mget"], server, wrk_get, host, manifest, seconds)
                        else:
                            upload_monolithic(host, "bench/mono", blob, digest)
                            measure(metrics["redirect"], server, curl_follow, host, path)
                    finally:
                        server.stop()
    finally:
        seaweed.stop()
        if database is not None:
            database.stop()
        shutil.rmtree(scratch, ignore_errors=True)
    return {
        "metrics": list(metrics.values()),
        "rounds": rounds,
        "seconds": seconds,
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "third": bool(third),
        "postgres": database is not None,
        "pg": _first_line([str(POSTGRES_BIN / "postgres"), "--version"]).split(") ")[-1].split()[0],
        "weed": _first_line([seaweed_binary(), "version"]),
    }


def seaweed_binary() -> str:
    return shutil.which("weed") or "weed"


def _first_line(cmd: list[str]) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
        return (out.stdout or out.stderr).strip().splitlines()[0]
    except (OSError, IndexError, subprocess.TimeoutExpired):
        return "unknown"


def render(results: dict[str, Any]) -> list[str]:
    names = [
        n
        for n in NAMES
        if (n != NAMES[1] or results.get("postgres")) and (n != NAMES[3] or results["third"])
    ]
    moorages = [n for n in names if n.startswith("Moorage")]
    lines = [
        "## On S3",
        "",
        f"Produced by `make bench BENCH_ARGS='--only s3'` on {results['when']}: one SeaweedFS "
        f"(`weed {results['weed']}`) on loopback; Moorage (its S3 driver, metadata in SQLite"
        + (
            f" or, in its own column, in PostgreSQL {results['pg']} on loopback with a fresh "
            "database per start"
            if results.get("postgres")
            else ""
        )
        + ") and CNCF Distribution's own S3 driver each on a bucket of their own, one at a time, "
        "alternating, "
        f'{results["rounds"]} rounds, medians. "Through the registry" streams the blob through '
        'it (redirects off); "redirected" answers 307 to a presigned URL and curl fetches from '
        f"SeaweedFS. Manifest rates are {results['seconds']}-second runs. Every figure is a "
        "throughput or a rate: higher is better.",
        "",
        "| benchmark | unit | "
        + " | ".join(names)
        + "".join(f" | {m} / {names[-1]}" for m in moorages)
        + " |",
        "|---|---|" + "---:|" * (len(names) + len(moorages)),
    ]
    for metric in results["metrics"]:
        medians = [metric.median(n) for n in names]
        cells = [f"{m:,.0f}" if m is not None else "-" for m in medians]
        last = medians[-1]
        for m in moorages:
            mine = metric.median(m)
            cells.append(f"{mine / last:.2f}" if mine and last else "-")
        lines.append(f"| {metric.name} | {metric.unit} | " + " | ".join(cells) + " |")
    lines += ["", "Raw rounds:", "", "```"]
    for metric in results["metrics"]:
        for server, values in metric.values.items():
            lines.append(f"{metric.name} / {server}: " + ", ".join(f"{v:,.1f}" for v in values))
    lines += ["```"]
    return lines


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    print("\n".join(render(run(rounds=1, seconds=3))))
