"""The Vulnerability Advisor's figures of `make bench`, medians of three runs:

- indexing the labelled Debian bookworm image (debootstrap minbase plus a
  dpkg layer): ``index_layer`` over every layer, then ``overlay``;
- indexing a 1 GiB layer beside one sha256 pass over the same bytes (the
  disk-speed yardstick), and the indexer's peak RSS doing it, measured in a
  child process of its own so nothing else counts;
- assessing one image (``match`` against the labelled set's advisories);
- re-assessing 10,000 indexed images: the pure path (contents already
  overlaid, as the store keeps them, matched again) x10,000.

Manifest GET latency while 20 images index needs the server's indexer
(va-index), which this branch does not hold: it is not measured here."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import re
import statistics
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from moorage.va.layers import Budget, index_layer  # noqa: E402
from moorage.va.match import match  # noqa: E402
from moorage.va.osv import from_osv  # noqa: E402
from moorage.va.overlay import overlay  # noqa: E402
from tests.oci_layout import sha256  # noqa: E402
from tests.test_va_oracle import RecordLookup  # noqa: E402
from tests.va_labelled import CACHE, all_records, labelled_images  # noqa: E402

RUNS = 3
GIB = 1 << 30
MIB = 1 << 20
REASSESS = 10_000


def _median(samples: list[float]) -> float:
    return statistics.median(samples)


def _timed(fn: Any) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def big_layer() -> Path:
    """A 1 GiB uncompressed layer: a Debian-like tree of many files (random
    bytes, so nothing compresses away) and one dpkg database, cached."""
    path = CACHE / "bench-1gib-layer.tar"
    if path.exists():
        return path
    CACHE.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    status = (
        Path(os.environ.get("MOORAGE_TOOLS", "/var/cache/moorage-tools"))
        / "debootstrap-bookworm/var/lib/dpkg/status"
    )
    block = os.urandom(4 * MIB)
    with tarfile.open(partial, "w", format=tarfile.PAX_FORMAT) as tar:
        if status.exists():
            data = status.read_bytes()
            info = tarfile.TarInfo("var/lib/dpkg/status")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        written, i = 0, 0
        while written < GIB:
            size = (256 << 10) if i % 8 else (8 * MIB)  # small files and some large ones
            info = tarfile.TarInfo(f"usr/share/bench/{i // 1000}/file-{i}.bin")
            info.size = size
            tar.addfile(info, io.BytesIO((block * 3)[:size]))
            written += size
            i += 1
    partial.rename(path)
    return path


def _child_index(path: str) -> None:
    """Run in a child: index the layer, print seconds and peak RSS bytes."""
    with open(path, "rb") as stream:
        started = time.perf_counter()
        index = index_layer(stream, "sha256:bench", Budget(max_layer_bytes=4 * GIB))
        elapsed = time.perf_counter() - started
    # VmHWM, not ru_maxrss: Linux counts the forking parent's resident set in
    # a child's ru_maxrss, and the parent holds the labelled images.
    status = Path("/proc/self/status").read_text()
    peak = int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1)) * 1024  # type: ignore[union-attr]
    print(f"{elapsed} {peak} {index.state} {index.bytes_read}")


def _sha256_pass(path: Path) -> float:
    def run() -> None:
        digest = hashlib.sha256()
        with path.open("rb") as stream:
            while chunk := stream.read(4 * MIB):
                digest.update(chunk)

    return _timed(run)


def run() -> dict[str, Any]:
    images = {item.name: item for item in labelled_images()}
    debian = images["debian-12"]
    lookup = RecordLookup([from_osv(record, source) for source, record in all_records()])
    results: dict[str, Any] = {}

    index_times, contents = [], None
    for _ in range(RUNS):
        started = time.perf_counter()
        layers = [index_layer(io.BytesIO(b), sha256(b)) for b in debian.image.layers]
        contents = overlay(layers)
        index_times.append(time.perf_counter() - started)
    assert contents is not None
    results["debian_packages"] = len(contents.packages)
    results["debian_bytes"] = sum(len(b) for b in debian.image.layers)
    results["debian_index_s"] = _median(index_times)
    # The yardstick: decompressing the same layers and nothing else (zlib).
    results["debian_gunzip_s"] = _median(
        [_timed(lambda: [gzip.decompress(b) for b in debian.image.layers]) for _ in range(RUNS)]
    )

    layer = big_layer()
    big, peaks, hashes, state = [], [], [], ""
    for _ in range(RUNS):
        out = subprocess.run(
            [sys.executable, __file__, "--child-index", str(layer)],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.split()
        big.append(float(out[0]))
        peaks.append(int(out[1]))
        state = out[2]
        hashes.append(_sha256_pass(layer))
    results["big_bytes"] = layer.stat().st_size
    results["big_index_s"] = _median(big)
    results["big_sha256_s"] = _median(hashes)
    results["big_peak_rss"] = max(peaks)
    results["big_state"] = state

    assess = []
    for _ in range(RUNS):
        samples = [_timed(lambda: match(contents, lookup)) for _ in range(50)]
        assess.append(_median(samples))
    results["assess_ms"] = _median(assess) * 1000
    results["findings"] = len(match(contents, lookup))

    every = [images[name] for name in sorted(images)]
    stored = [
        overlay([index_layer(io.BytesIO(b), sha256(b)) for b in i.image.layers]) for i in every
    ]
    reassess = []
    for _ in range(RUNS):
        reassess.append(
            _timed(lambda: [match(stored[n % len(stored)], lookup) for n in range(REASSESS)])
        )
    results["reassess_s"] = _median(reassess)
    return results


def render(r: dict[str, Any]) -> list[str]:
    def met(ok: bool) -> str:
        return "met" if ok else "**missed**"

    ratio = r["big_index_s"] / r["big_sha256_s"]
    return [
        "## Vulnerability Advisor",
        "",
        f"Medians of {RUNS} runs (`bench/va.py`), on this machine (2 cores shared).",
        "",
        "| figure | result | target |",
        "|---|---:|---|",
        f"| index the Debian bookworm image ({r['debian_packages']} packages, "
        f"{r['debian_bytes'] / MIB:,.0f} MiB in 2 layers) | {r['debian_index_s']:.2f} s | "
        f"< 1 s ({met(r['debian_index_s'] < 1)}) |",
        f"| gunzip the same layers, nothing else | {r['debian_gunzip_s']:.2f} s | the yardstick |",
        f"| index a {r['big_bytes'] / GIB:.2f} GiB layer | {r['big_index_s']:.2f} s "
        f"({r['big_bytes'] / MIB / r['big_index_s']:,.0f} MiB/s) | disk speed |",
        f"| one sha256 pass over the same bytes | {r['big_sha256_s']:.2f} s "
        f"({r['big_bytes'] / MIB / r['big_sha256_s']:,.0f} MiB/s) | the yardstick; "
        f"indexing takes {ratio:.2f}x |",
        f"| peak RSS of the indexing process (1 GiB layer, {r['big_state']}) | "
        f"{r['big_peak_rss'] / MIB:,.0f} MiB | bounded, not proportional |",
        f"| assess one image (match, {r['findings']} findings) | {r['assess_ms']:.2f} ms | "
        f"< 50 ms ({met(r['assess_ms'] < 50)}) |",
        f"| re-assess {REASSESS:,} indexed images (pure match path) | {r['reassess_s']:.1f} s | "
        f"< 60 s ({met(r['reassess_s'] < 60)}) |",
        "",
        "The minbase Debian root has 88 packages, far fewer than 400; the figure "
        "scales with the bytes read (one pass per layer), not the package count, "
        "and on this machine it is bound by zlib: decompressing the layers alone "
        "takes most of it. "
        "Re-assessment is the pure path (overlaid contents matched again, as the "
        "store's re-assessment does after an import) without the store's reads and "
        "writes, and manifest GET latency while 20 images index is not measured: "
        "both need the indexer's store and server (va-index), not on this branch.",
    ]


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--child-index":
        _child_index(sys.argv[2])
    else:
        print("\n".join(render(run())))
