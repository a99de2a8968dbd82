"""The event loop never waits on the database: manifest GET latency while a
1 GiB blob push commits, and while 50 password sign-ins run, against the same
measurement with neither.

One client GETs a manifest by tag over a kept-alive connection, one request
after another, and records each latency. Two configurations: the default
(the manifest cache answers from memory) and the manifest cache turned off,
where every GET reads the database on a database thread. In each, three
phases alternate over the rounds: quiet; a monolithic 1 GiB upload (body,
hash, fsync, rename and the metadata commit) in flight; 50 password sign-ins
in flight at once (scrypt on sign-in's threads, their database reads on the
database threads)."""

from __future__ import annotations

import base64
import http.client
import json
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench.run import GIB, MoorageWithTokens, _request, big_file, percentile, seed_manifest
from tests.server import ensure_region_hosts, free_port

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
PASSWORD = "bench-password-123"
SIGNINS = 50
SAMPLES = 1500  # GETs per phase and round


def _basic(user: str, secret: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{secret}".encode()).decode()


class Configured(MoorageWithTokens):
    """Moorage with tokens and a configuration file, from this tree or another
    build (``binary``)."""

    config: Path | None = None
    binary: str | None = None

    def command(self) -> list[str]:
        extra = ["--config", str(self.config)] if self.config else []
        command = [*super().command(), *extra]
        if self.binary:
            command[0] = self.binary
        return command


class Phase:
    """Background load for one phase: started, then joined when the GETs are done."""

    def __init__(self, target: Any) -> None:
        self.thread = threading.Thread(target=target, daemon=True)

    def finished(self) -> bool:
        return not self.thread.is_alive()

    def __enter__(self) -> Phase:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.thread.join()


def manifest_latencies(
    host: str, path: str, bearer: str, count: int, until: Any = None
) -> list[float]:
    conn = http.client.HTTPConnection(host, timeout=60)
    headers = {"Authorization": bearer, "Accept": OCI_MANIFEST}
    latencies = []
    for i in range(count):
        if until is not None and i >= 200 and until():
            break
        started = time.perf_counter()
        _request(conn, "GET", path, headers=headers)
        latencies.append(time.perf_counter() - started)
    conn.close()
    return latencies


def run_config(
    name: str, cache_bytes: int, rounds: int, scratch: Path, binary: str | None = None
) -> dict[str, list[float]]:
    ensure_region_hosts()
    server = Configured("Moorage", free_port(), scratch / name)
    server.binary = binary
    server.config = scratch / f"{name}.toml"
    server.config.write_text(f"[registry]\nmanifest_cache_bytes = {cache_bytes}\n")
    blob, digest = big_file(GIB)
    phases: dict[str, list[float]] = {"quiet": [], "push": [], "signin": []}
    server.start()
    try:
        host = f"us.localhost:{server.port}"
        admin = {"Authorization": _basic("iamapikey", server.key)}
        conn = http.client.HTTPConnection(host, timeout=60)
        _request(
            conn, "POST", "/api/v1/cr/us-south/namespaces", json.dumps({"name": "bench"}), admin
        )
        # One identity per sign-in: parallel sign-ins of one identity are counted
        # against its ceiling before they are checked (the throttle's rule).
        for i in range(SIGNINS):
            _request(
                conn,
                "POST",
                "/api/v1/iam/users",
                json.dumps({"email": f"person{i}@bench.test", "password": PASSWORD}),
                admin,
            )

        def token(scope: str) -> str:
            conn.request("GET", f"/oauth/token?service=us.localhost&scope={scope}", headers=admin)
            reply = conn.getresponse()
            return f"Bearer {json.loads(reply.read())['token']}"

        push_bearer = token("repository:bench/rps:pull,push")
        path = seed_manifest(host, {"Authorization": push_bearer})
        pull_bearer = token("repository:bench/rps:pull")

        def push() -> None:
            up = http.client.HTTPConnection(host, timeout=600, blocksize=1 << 20)
            bearer = {"Authorization": token("repository:bench/big:pull,push")}
            start = _request(up, "POST", "/v2/bench/big/blobs/uploads/", headers=bearer)
            location = (start.getheader("Location") or "").split(host, 1)[-1]
            with blob.open("rb") as f:
                _request(
                    up,
                    "PUT",
                    f"{location}?digest={digest}",
                    body=f,
                    headers={
                        **bearer,
                        "Content-Length": str(blob.stat().st_size),
                        "Content-Type": "application/octet-stream",
                    },
                )

        def signins() -> None:
            def one(i: int) -> None:
                c = http.client.HTTPConnection(host, timeout=120)
                _request(
                    c,
                    "GET",
                    "/oauth/token?service=us.localhost&scope=repository:bench/rps:pull",
                    headers={"Authorization": _basic(f"person{i}@bench.test", PASSWORD)},
                )

            threads = [threading.Thread(target=one, args=(i,)) for i in range(SIGNINS)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()

        for r in range(rounds):
            order = ["quiet", "push", "signin"] if r % 2 == 0 else ["signin", "push", "quiet"]
            for phase in order:
                if phase == "quiet":
                    phases[phase] += manifest_latencies(host, path, pull_bearer, SAMPLES)
                    continue
                load = Phase(push if phase == "push" else signins)
                with load:
                    phases[phase] += manifest_latencies(
                        host, path, pull_bearer, 100_000, until=load.finished
                    )
            print(
                f"  {name} round {r + 1}: "
                + ", ".join(
                    f"{p} p99 {percentile(v, 0.99) * 1000:.2f} ms" for p, v in phases.items() if v
                ),
                flush=True,
            )
    finally:
        server.stop()
    return phases


def run(rounds: int = 3) -> dict[str, Any]:
    """``MOORAGE_BENCH_BASELINE``: the ``moorage`` of an earlier build (e.g. the
    commit before this work) to measure the same way, for comparison."""
    scratch = Path(tempfile.mkdtemp(prefix="moorage-offloop-"))
    baseline = os.environ.get("MOORAGE_BENCH_BASELINE")
    before = (
        {
            f"before: {baseline_label()} (database calls on the loop)": run_config(
                "baseline", 0, rounds, scratch, baseline
            )
        }
        if baseline
        else {}
    )
    return {
        **before,
        "manifest cache on (default)": run_config("cached", 32 << 20, rounds, scratch),
        "manifest cache off (every GET reads the database)": run_config(
            "uncached", 0, rounds, scratch
        ),
    }


def baseline_label() -> str:
    return os.environ.get("MOORAGE_BENCH_BASELINE_LABEL", "the earlier build")


def render(results: dict[str, Any]) -> list[str]:
    lines = [
        "",
        "### The event loop and the database",
        "",
        "Manifest GET by tag, one client, one request after another on a kept-alive "
        "connection, token auth, SQLite. Phases alternate over the rounds: quiet; a monolithic "
        "1 GiB upload in flight (body, hash, fsync, rename, metadata commit); "
        f"{SIGNINS} password sign-ins in flight at once (`bench/offloop.py`).",
        "",
        "| configuration | phase | GETs | p50 | p99 | max |",
        "|---|---|---:|---:|---:|---:|",
    ]
    names = {"quiet": "quiet", "push": "1 GiB push committing", "signin": f"{SIGNINS} sign-ins"}
    for config, phases in results.items():
        for phase, values in phases.items():
            if not values:
                continue
            lines.append(
                f"| {config} | {names[phase]} | {len(values):,} | "
                f"{statistics.median(values) * 1000:.2f} ms | "
                f"{percentile(values, 0.99) * 1000:.2f} ms | {max(values) * 1000:.1f} ms |"
            )
    return lines


if __name__ == "__main__":
    print("\n".join(render(run())))
