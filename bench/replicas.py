"""Throughput with 1, 2 and 3 replicas behind HAProxy over one PostgreSQL
(``tests/postgres.py`` and ``tests/replicas.py`` start them as the tests do),
for a manifest GET and a small-blob GET (1 KiB), and where the CPU went:
each run records the CPU seconds of HAProxy, the replicas, PostgreSQL and
the machine as a whole (the rest is wrk, on the same two cores)."""

from __future__ import annotations

import base64
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.run import OCI_MANIFEST, _request, seed_manifest
from tests.postgres import PostgresServer
from tests.replicas import HaProxy
from tests.server import MOORAGE, free_port

TICKS = os.sysconf("SC_CLK_TCK")


def _tree(pid: int) -> list[int]:
    found, stack = [], [pid]
    while stack:
        current = stack.pop()
        found.append(current)
        try:
            stack += [
                int(c) for c in Path(f"/proc/{current}/task/{current}/children").read_text().split()
            ]
        except OSError:
            continue
    return found


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / TICKS


def machine_busy() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far."""
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]
    return (sum(fields) - idle) / TICKS, sum(fields) / TICKS


def wrk(url: str, seconds: int, accept: str | None = None) -> float:
    args = ["wrk", "-t2", "-c16", f"-d{seconds}s"]
    if accept:
        args += ["-H", f"Accept: {accept}"]
    out = subprocess.run([*args, url], capture_output=True, text=True, check=True).stdout
    if "Non-2xx" in out:
        raise RuntimeError(out)
    return float(out.split("Requests/sec:")[1].split()[0])


class Replica:
    def __init__(self, directory: Path, env: dict[str, str], config: Path) -> None:
        self.port = free_port()
        self.directory = directory
        self.env = env
        self.config = config
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                str(MOORAGE),
                "serve",
                "--auth",
                "none",
                "--port",
                str(self.port),
                "--data",
                str(self.directory / "data"),
                "--config",
                str(self.config),
            ],
            stdout=subprocess.DEVNULL,
            stderr=(self.directory / f"replica-{self.port}.log").open("ab"),
            env={**os.environ, **self.env},
            start_new_session=True,
        )
        import requests

        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if requests.get(f"http://127.0.0.1:{self.port}/health", timeout=1).ok:
                    return
            except requests.ConnectionError:
                time.sleep(0.1)
        raise RuntimeError(f"replica on {self.port} did not start")

    def stop(self) -> None:
        if self.process is not None:
            os.killpg(self.process.pid, 15)
            self.process.wait(30)


def run(rounds: int = 3, seconds: int = 10) -> dict[str, Any]:
    scratch = Path(tempfile.mkdtemp(prefix="moorage-replicas-"))
    postgres = PostgresServer().start()
    url = postgres.create_database("bench")
    secret = scratch / "secret"
    secret.write_text(base64.b64encode(os.urandom(32)).decode())
    config = scratch / "moorage.toml"
    config.write_text("[server]\nmax_connections_per_client = 0\n")
    env = {"MOORAGE_DATABASE_URL": url, "MOORAGE_SECRET_FILE": str(secret)}
    replicas = [Replica(scratch, env, config) for _ in range(3)]
    results: dict[str, Any] = {"rounds": rounds, "seconds": seconds, "runs": []}
    postmaster = int((postgres.data / "postmaster.pid").read_text().split()[0])
    try:
        for replica in replicas:
            replica.start()
        host = f"127.0.0.1:{replicas[0].port}"
        manifest = seed_manifest(host)
        import http.client

        conn = http.client.HTTPConnection(host, timeout=30)
        body = _request(conn, "GET", manifest, headers={"Accept": OCI_MANIFEST}).read()
        conn.close()
        del body
        conn = http.client.HTTPConnection(host, timeout=30)
        conn.request("GET", manifest, headers={"Accept": OCI_MANIFEST})
        layer = json.loads(conn.getresponse().read())["layers"][0]["digest"]
        blob = f"/v2/bench/rps/blobs/{layer}"
        for r in range(rounds):
            counts = [1, 2, 3] if r % 2 == 0 else [3, 2, 1]
            for count in counts:
                proxy = HaProxy(scratch / f"haproxy-{count}", [p.port for p in replicas[:count]])
                proxy.start()
                try:
                    for kind, path, accept in (
                        ("manifest GET", manifest, OCI_MANIFEST),
                        ("1 KiB blob GET", blob, None),
                    ):
                        groups = {
                            "HAProxy": _tree(proxy.process.pid),  # type: ignore[union-attr]
                            "replicas": [p for x in replicas for p in _tree(x.process.pid)],  # type: ignore[union-attr]
                            "PostgreSQL": _tree(postmaster),
                        }
                        before = {k: cpu_seconds(v) for k, v in groups.items()}
                        busy0, total0 = machine_busy()
                        rate = wrk(f"http://{proxy.host}{path}", seconds, accept)
                        busy1, total1 = machine_busy()
                        cores = (total1 - total0) / seconds
                        run_ = {
                            "replicas": count,
                            "kind": kind,
                            "rate": rate,
                            "busy": (busy1 - busy0) / seconds,
                            "cores": cores,
                            "cpu": {
                                k: (cpu_seconds(v) - before[k]) / seconds for k, v in groups.items()
                            },
                        }
                        results["runs"].append(run_)
                        print(
                            f"  {count} replicas, {kind}: {rate:,.0f} req/s {run_['cpu']}",
                            flush=True,
                        )
                finally:
                    proxy.stop()
    finally:
        for replica in replicas:
            replica.stop()
        postgres.stop()
        shutil.rmtree(scratch, ignore_errors=True)
    return results


def render(results: dict[str, Any]) -> list[str]:
    lines = [
        "",
        "### Replicas behind HAProxy",
        "",
        f"1, 2 and 3 replicas (`moorage serve`, one worker each, no authentication) over one "
        f"PostgreSQL 15, filesystem storage on a shared directory, behind HAProxy 2.6 (round "
        f"robin); wrk with 2 threads and 16 connections through HAProxy, {results['seconds']} s "
        f"per run, {results['rounds']} rounds in alternating order, medians. CPU is in cores "
        "(CPU seconds per second) during the run; everything shares the same two cores "
        "(`bench/replicas.py`).",
        "",
        "| request | replicas | req/s | machine busy | replicas | HAProxy | PostgreSQL "
        "| rest (wrk, other) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for kind in ("manifest GET", "1 KiB blob GET"):
        for count in (1, 2, 3):
            runs = [r for r in results["runs"] if r["kind"] == kind and r["replicas"] == count]
            if not runs:
                continue

            def med(key: str, runs: list[dict[str, Any]] = runs) -> float:
                return statistics.median(r["cpu"][key] for r in runs)

            busy = statistics.median(r["busy"] for r in runs)
            rest = busy - med("replicas") - med("HAProxy") - med("PostgreSQL")
            lines.append(
                f"| {kind} | {count} | {statistics.median(r['rate'] for r in runs):,.0f} | "
                f"{busy:.2f} of {runs[0]['cores']:.0f} | {med('replicas'):.2f} | "
                f"{med('HAProxy'):.2f} | {med('PostgreSQL'):.2f} | {rest:.2f} |"
            )
    return lines


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    print("\n".join(render(run())))
