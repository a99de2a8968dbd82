"""A failed sign-in flood from one address, and a legitimate client elsewhere.

wrk hammers the token endpoint (or the management API) from 127.0.0.1 with a
wrong API key; a client bound to 127.0.0.2 signs in with a right one, one
request after another. Rounds alternate quiet and flooded, and the legitimate
client's median and p99 latencies are compared (target: not slowed by more
than 10 %)."""

from __future__ import annotations

import base64
import http.client
import re
import signal
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.run import MoorageWithTokens, percentile
from tests.server import ensure_region_hosts, free_port

LEGIT_ADDRESS = "127.0.0.2"
REQUESTS = 400


def _basic(user: str, secret: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{secret}".encode()).decode()


TARGETS = {
    "token endpoint": "/oauth/token?service=us.localhost&scope=repository:bench/app:pull",
    "management API": "/api/v1/iam/me",
}


def legit_latencies(port: int, path: str, key: str) -> list[float]:
    conn = http.client.HTTPConnection(
        "127.0.0.1", port, timeout=30, source_address=(LEGIT_ADDRESS, 0)
    )
    headers = {"Host": f"us.localhost:{port}", "Authorization": _basic("iamapikey", key)}
    latencies = []
    for _ in range(REQUESTS):
        started = time.perf_counter()
        conn.request("GET", path, headers=headers)
        response = conn.getresponse()
        response.read()
        if response.status != 200:
            raise RuntimeError(f"the legitimate client got {response.status} on {path}")
        latencies.append(time.perf_counter() - started)
    conn.close()
    return latencies


def start_flood(port: int, path: str, seconds: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            "wrk",
            "-t2",
            "-c32",
            f"-d{seconds}s",
            "-H",
            f"Authorization: {_basic('iamapikey', 'a-wrong-key-guessed-again-and-again')}",
            f"http://us.localhost:{port}{path}",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def run(rounds: int = 8) -> dict[str, Any]:
    ensure_region_hosts()
    scratch = Path(tempfile.mkdtemp(prefix="moorage-flood-"))
    server = MoorageWithTokens("Moorage", free_port(), scratch / "moorage")
    server.start()
    results: dict[str, Any] = {}
    try:
        for name, path in TARGETS.items():
            quiet: list[float] = []
            flooded: list[float] = []
            flood_rates: list[float] = []
            for r in range(rounds):
                for phase in ("quiet", "flood") if r % 2 == 0 else ("flood", "quiet"):
                    if phase == "quiet":
                        quiet += legit_latencies(server.port, path, server.key)
                        continue
                    flood = start_flood(server.port, path, 20)
                    time.sleep(2)  # let the flood pass the ceiling before measuring
                    flooded += legit_latencies(server.port, path, server.key)
                    flood.send_signal(signal.SIGINT)  # wrk prints its summary and stops
                    output = flood.communicate()[0]
                    match = re.search(r"Requests/sec:\s+([\d.]+)", output)
                    if match:
                        flood_rates.append(float(match.group(1)))
            results[name] = {
                "quiet_p50_ms": statistics.median(quiet) * 1000,
                "quiet_p99_ms": percentile(quiet, 0.99) * 1000,
                "flood_p50_ms": statistics.median(flooded) * 1000,
                "flood_p99_ms": percentile(flooded, 0.99) * 1000,
                "flood_rate": statistics.median(flood_rates) if flood_rates else 0.0,
            }
            print(f"  {name}: {results[name]}", flush=True)
    finally:
        server.stop()
    return results


def render(results: dict[str, Any]) -> list[str]:
    lines = [
        "",
        "### A failed sign-in flood from one address",
        "",
        f"wrk, 32 connections, a wrong API key from 127.0.0.1; a legitimate client on "
        f"{LEGIT_ADDRESS}, {REQUESTS} sequential requests per phase, quiet and flooded "
        "phases alternating. Target: the legitimate median no more than 10 % slower.",
        "",
        "| way in | quiet p50 | flooded p50 | ratio | quiet p99 | flooded p99 | flood req/s |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in results.items():
        ratio = r["flood_p50_ms"] / r["quiet_p50_ms"]
        lines.append(
            f"| {name} | {r['quiet_p50_ms']:.2f} ms | {r['flood_p50_ms']:.2f} ms | "
            f"{ratio:.2f}x | {r['quiet_p99_ms']:.2f} ms | {r['flood_p99_ms']:.2f} ms | "
            f"{r['flood_rate']:.0f} |"
        )
    return lines


if __name__ == "__main__":
    print("\n".join(render(run())))
