"""The Advisor's figures that need its store and a server (`make bench`,
``--only va-service``), medians of three runs:

- re-assessing 10,000 indexed images after an advisory import, through the
  store as a replica does it (``Indexer.check_snapshot`` and the queue: the
  touched reports found by package, their layer indexes read from the
  database, matched, assessed and written back), never reading a layer;
- manifest GET latency on a real ``moorage serve`` while its indexer works
  through 20 images pushed at once, beside the same GETs once the queue is
  empty (the images are pushed with the indexer off, so the push itself is
  not measured, then the server restarts with it on).

The images hold Alpine 3.20.3's real package database (tests/data/va/os)
and a layer of their own; the advisories are the tests' Alpine record."""

from __future__ import annotations

import asyncio
import hashlib
import http.client
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.run import percentile  # noqa: E402
from moorage.metadata.va_store import INDEX  # noqa: E402
from moorage.va.indexer import package_pairs  # noqa: E402
from moorage.va.layers import layer_from_json  # noqa: E402
from moorage.va.model import INDEXER_VERSION, Status  # noqa: E402
from moorage.va.overlay import overlay  # noqa: E402
from tests.helpers import push_image  # noqa: E402
from tests.server import MoorageServer  # noqa: E402
from tests.test_cli import moorage  # noqa: E402
from tests.test_va_indexer_queue import Installation  # noqa: E402
from tests.va_images import ALPINE_LAYER, image, layer, write_advisories  # noqa: E402
from tests.va_layers import M  # noqa: E402

RUNS = int(os.environ.get("MOORAGE_BENCH_RUNS", "3"))
REASSESS = int(os.environ.get("MOORAGE_BENCH_REASSESS", "10000"))
INDEXING = 20
MIB = 1 << 20


def _server(tmp: Path, index: bool) -> MoorageServer:
    env = {"MOORAGE_VA_INDEX": "true" if index else "false"}
    return MoorageServer(tmp / "data", tmp / "server.log", env=env).start()


def _import(server: MoorageServer, tmp: Path) -> None:
    done = moorage(
        "va",
        "db",
        "import",
        str(write_advisories(tmp / "advisories")),
        "--data",
        str(server.data_dir),
        env=server.env,
    )
    assert done.returncode == 0, done.stderr


def reassess_10000(tmp: Path) -> dict[str, float]:
    """One image indexed for real, its report copied to 10,000 repositories
    (as 10,000 images sharing its layers would leave it), then an import and
    the re-assessment it queues, timed to the queue's end."""
    server = _server(tmp, index=False)
    install = Installation(server)
    try:
        digest = push_image(server, "team/alpine", "3.20", image([ALPINE_LAYER]))
        install.drain(install.indexer())
        (stored,) = install.va.stored_reports("global", "team/alpine", digest)
        indexes = [install.va.layer(d, INDEXER_VERSION) for d in stored.layers]
        pairs = package_pairs(overlay([layer_from_json(doc) for doc in indexes if doc]))
        started = time.perf_counter()
        for n in range(REASSESS - 1):
            fake = "sha256:" + hashlib.sha256(b"%d" % n).hexdigest()
            install.va.put_report(
                "global",
                f"team/copy{n}",
                fake,
                stored.report,
                stored.layers,
                stored.image_config,
                pairs,
            )
        seeded = time.perf_counter() - started
        _import(server, tmp)
        indexer = install.indexer()

        async def work() -> float:
            begun = time.perf_counter()
            await indexer.check_snapshot()
            while await indexer.work_once():
                pass
            return time.perf_counter() - begun

        took = asyncio.run(work())
        (after,) = install.va.report("global", "team/alpine", digest)
        assert after.status is Status.FAIL, after
        return {"reassess_s": took, "reassessed": indexer.stats.reassessed, "seed_s": seeded}
    finally:
        install.close()
        server.stop()


def _gets(port: int, path: str, stop: threading.Event, out: list[float]) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    accept = {"Accept": "application/vnd.oci.image.manifest.v1+json"}
    while not stop.is_set():
        started = time.perf_counter()
        conn.request("GET", path, headers=accept)
        reply = conn.getresponse()
        reply.read()
        assert reply.status == 200, reply.status
        out.append(time.perf_counter() - started)
    conn.close()


def _queue_empty(install: Installation) -> bool:
    return not any(kind == INDEX and state != "done" for _, kind, state, *_ in install.va.queue())


def gets_while_indexing(tmp: Path) -> dict[str, float]:
    server = _server(tmp, index=False)
    _import(server, tmp)
    target = push_image(server, "team/hot", "v1", image([layer(M("hot.txt", b"hot"))]))
    for n in range(INDEXING):
        # A layer of its own per image (about 4 MiB of files), so each is read.
        files = [M(f"usr/share/app{n}/f{i}.bin", os.urandom(16 * 1024)) for i in range(256)]
        push_image(server, f"team/app{n}", "v1", image([ALPINE_LAYER, layer(*files)]))
    server.stop()
    server.env["MOORAGE_VA_INDEX"] = "true"
    install = None
    try:
        path = f"/v2/team/hot/manifests/{target}"
        during: list[float] = []
        stop = threading.Event()
        server.start()
        install = Installation(server)
        client = threading.Thread(target=_gets, args=(server.port, path, stop, during))
        client.start()
        while not _queue_empty(install):
            time.sleep(0.05)
        stop.set()
        client.join()
        quiet: list[float] = []
        stop = threading.Event()
        client = threading.Thread(target=_gets, args=(server.port, path, stop, quiet))
        client.start()
        deadline = time.perf_counter() + max(2.0, sum(during))
        while time.perf_counter() < deadline and len(quiet) < len(during):
            time.sleep(0.05)
        stop.set()
        client.join()
        return {
            "during_p50_ms": statistics.median(during) * 1000,
            "during_p99_ms": percentile(during, 0.99) * 1000,
            "quiet_p50_ms": statistics.median(quiet) * 1000,
            "quiet_p99_ms": percentile(quiet, 0.99) * 1000,
            "during_n": len(during),
        }
    finally:
        if install is not None:
            install.close()
        server.stop()


def run() -> dict[str, Any]:
    runs: dict[str, list[dict[str, float]]] = {"reassess": [], "gets": []}
    for _ in range(RUNS):
        with tempfile.TemporaryDirectory(prefix="va-bench-") as tmp:
            runs["reassess"].append(reassess_10000(Path(tmp)))
        with tempfile.TemporaryDirectory(prefix="va-bench-") as tmp:
            runs["gets"].append(gets_while_indexing(Path(tmp)))
    return {
        part: {key: statistics.median(r[key] for r in samples) for key in samples[0]}
        for part, samples in runs.items()
    }


def render(r: dict[str, Any]) -> list[str]:
    re, gets = r["reassess"], r["gets"]
    slower = gets["during_p50_ms"] / gets["quiet_p50_ms"] - 1
    return [
        "## Vulnerability Advisor on a server",
        "",
        f"Medians of {RUNS} runs (`bench/va_service.py`), SQLite and files, one worker.",
        "",
        "| figure | result | target |",
        "|---|---:|---|",
        f"| re-assess {REASSESS:,} indexed images after an import, through the store "
        f"({re['reassessed']:,.0f} re-assessed) | {re['reassess_s']:.1f} s | < 60 s |",
        f"| manifest GET p50 / p99 while {INDEXING} images index "
        f"({gets['during_n']:,.0f} GETs) | {gets['during_p50_ms']:.2f} / "
        f"{gets['during_p99_ms']:.2f} ms | p50 within 10 % of quiet |",
        f"| the same GETs once the queue is empty | {gets['quiet_p50_ms']:.2f} / "
        f"{gets['quiet_p99_ms']:.2f} ms | ({slower:+.0%} while indexing) |",
    ]


if __name__ == "__main__":
    print("\n".join(render(run())))
