"""A mixed workload shaped like a production registry: Moorage beside CNCF
Distribution v3.1.2, each alone on loopback, in alternating order over the
rounds, medians.

Phase A, parallel pushes: eight images pushed at once, one client thread
each (Python ``http.client``, one kept-alive connection per image), about
1 GB of layers in all. Layer sizes follow what production registries hold:
most layers are under 1 MB, most bytes sit in a few layers over 10 MB. Two
base stacks are shared by four images each; the image that owns a base
pushes it first, the others push it last and ask to mount it from the
owner's repository (uploading it when it is not there yet). Each layer is a
HEAD, then a POST and a PUT carrying the whole body and its digest (or a
mount); then the config and the manifest. Digests are computed before the
clock starts, so the figure is the registries' and the wire's.

Phase B, concurrent GETs on the same server straight after: two wrk
processes at once for 20 seconds, eight connections fetching manifests by
tag and eight fetching blobs, each picking an image with Zipf popularity
(the k-th most popular is fetched 1/k as often as the first) and, for
blobs, one of that image's blobs at random. Each reports its own rate and
latency percentiles.

Moorage runs on its embedded defaults (SQLite, filesystem, access log on)
with ``--auth none``, with one worker and with two; Distribution v3.1.2 on
the filesystem with its access log on (``bench/workers.py``)."""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.replicas import _tree, cpu_seconds
from bench.run import MIB, OCI_MANIFEST, Metric, RssSampler, Server
from bench.workers import DistributionV3, MoorageWorkers
from tests.server import free_port

SEED = "moorage-mixed-1"
SECONDS = 20
CONNECTIONS = 8  # per wrk: 8 on manifests and 8 on blobs
LAYER_TYPE = "application/vnd.oci.image.layer.v1.tar"
CONFIG_TYPE = "application/vnd.oci.image.config.v1+json"
DISTRIBUTION = "Distribution v3.1.2"
TARGET = 1.0  # pushes: at most Distribution v3's time

# MiB of each image's own large layers (20-112 MiB, about 110 MiB an image so
# the eight pushes end together), and of the two shared bases' large layer.
OWN_BIG_MIB = ((112,), (90, 20), (72, 36), (60, 28, 22), (56, 50), (76, 30), (46, 40, 24), (66, 42))
BASE_BIG_MIB = (32, 24)
SMALL_PER_IMAGE, SMALL_PER_BASE = 25, 8  # 10 KiB-900 KiB, log-uniform


# -- the image set -------------------------------------------------------------


@dataclass
class Blob:
    digest: str
    data: bytes
    owner: str  # the repository that pushes it first


@dataclass
class Image:
    repo: str
    config: Blob
    layers: list[Blob]  # in manifest order: base first
    push_order: list[Blob]
    manifest: bytes = b""


@dataclass
class ImageSet:
    images: list[Image]
    unique_bytes: int = 0
    layer_count: int = 0
    sizes: list[int] = field(default_factory=list)


def _blob(data: bytes, owner: str) -> Blob:
    return Blob("sha256:" + hashlib.sha256(data).hexdigest(), data, owner)


def make_images() -> ImageSet:
    """Eight images over about 1 GB of distinct layers. Sizes come from a fixed
    seed; content is fresh random bytes (different in every layer)."""
    rng = random.Random(SEED)

    def small() -> int:
        return int(10 * 1024 * (90 ** rng.random()))  # log-uniform 10 KiB-900 KiB

    def medium() -> int:
        return rng.randrange(1 * MIB, 10 * MIB)

    def big(mib: int) -> int:
        return mib * MIB + rng.randrange(0, 64 * 1024)

    repos = [f"mixed/app{i}" for i in range(len(OWN_BIG_MIB))]
    bases: list[list[Blob]] = []
    for b, mib in enumerate(BASE_BIG_MIB):
        owner = repos[4 * b]
        sizes = [big(mib), medium(), *(small() for _ in range(SMALL_PER_BASE))]
        bases.append([_blob(os.urandom(n), owner) for n in sizes])
    images = []
    for i, repo in enumerate(repos):
        sizes = [*(big(m) for m in OWN_BIG_MIB[i]), medium()]
        sizes += [small() for _ in range(SMALL_PER_IMAGE)]
        rng.shuffle(sizes)
        own = [_blob(os.urandom(n), repo) for n in sizes]
        base = bases[i // 4]
        layers = [*base, *own]
        push_order = layers if base[0].owner == repo else [*own, *base]
        config_body = json.dumps(
            {
                "architecture": "amd64",
                "os": "linux",
                "config": {"Labels": {"bench": repo}},
                "rootfs": {"type": "layers", "diff_ids": [b.digest for b in layers]},
            }
        ).encode()
        config = _blob(config_body, repo)
        image = Image(repo, config, layers, push_order)
        image.manifest = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": {
                    "mediaType": CONFIG_TYPE,
                    "digest": config.digest,
                    "size": len(config_body),
                },
                "layers": [
                    {"mediaType": LAYER_TYPE, "digest": b.digest, "size": len(b.data)}
                    for b in layers
                ],
            }
        ).encode()
        images.append(image)
    distinct = {b.digest: len(b.data) for im in images for b in im.layers}
    return ImageSet(images, sum(distinct.values()), len(distinct), sorted(distinct.values()))


# -- phase A: parallel pushes ----------------------------------------------------


class Pusher:
    """One client pushing one image over one kept-alive connection."""

    def __init__(self, host: str) -> None:
        self.host = host
        self.conn = http.client.HTTPConnection(host, timeout=600)
        self.sent = 0  # layer and config bytes actually uploaded
        self.mounted = 0

    def call(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> http.client.HTTPResponse:
        self.conn.request(method, path, body=body, headers=headers or {})
        response = self.conn.getresponse()
        response.read()
        return response

    def _path(self, response: http.client.HTTPResponse) -> str:
        return (response.getheader("Location") or "").split(self.host, 1)[-1]

    def blob(self, repo: str, blob: Blob) -> None:
        if self.call("HEAD", f"/v2/{repo}/blobs/{blob.digest}").status == 200:
            return
        start = f"/v2/{repo}/blobs/uploads/"
        if blob.owner != repo:
            start += f"?mount={blob.digest}&from={blob.owner}"
        response = self.call("POST", start, headers={"Content-Length": "0"})
        if response.status == 201:
            self.mounted += 1
            return
        if response.status != 202:
            raise RuntimeError(f"POST {start} -> {response.status}")
        location = self._path(response)
        sep = "&" if "?" in location else "?"
        response = self.call(
            "PUT",
            f"{location}{sep}digest={blob.digest}",
            body=blob.data,
            headers={"Content-Type": "application/octet-stream"},
        )
        if response.status != 201:
            raise RuntimeError(f"PUT {repo} blob {blob.digest} -> {response.status}")
        self.sent += len(blob.data)

    def push(self, image: Image) -> None:
        for blob in [*image.push_order, image.config]:
            self.blob(image.repo, blob)
        response = self.call(
            "PUT",
            f"/v2/{image.repo}/manifests/v1",
            body=image.manifest,
            headers={"Content-Type": OCI_MANIFEST},
        )
        if response.status != 201:
            raise RuntimeError(f"PUT {image.repo} manifest -> {response.status}")
        self.conn.close()


def push_all(host: str, images: list[Image]) -> dict[str, float]:
    """Push every image at once, one thread each; wall seconds and bytes sent."""
    pushers = [Pusher(host) for _ in images]
    errors: list[BaseException] = []
    gate = threading.Barrier(len(images) + 1)

    def work(pusher: Pusher, image: Image) -> None:
        gate.wait()
        try:
            pusher.push(image)
        except BaseException as exc:  # reported by the caller
            errors.append(exc)

    threads = [
        threading.Thread(target=work, args=(p, im), daemon=True)
        for p, im in zip(pushers, images, strict=True)
    ]
    for thread in threads:
        thread.start()
    gate.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    if errors:
        raise errors[0]
    return {
        "seconds": elapsed,
        "sent": float(sum(p.sent for p in pushers)),
        "mounted": float(sum(p.mounted for p in pushers)),
    }


# -- phase B: concurrent GETs -----------------------------------------------------

LUA = """
local paths = {%(paths)s}
local cumulative = {%(cumulative)s}
wrk.headers["Accept"] = "%(accept)s"
math.randomseed(%(seed)d)

request = function()
  local u = math.random()
  local lo, hi = 1, #cumulative
  while lo < hi do
    local mid = math.floor((lo + hi) / 2)
    if cumulative[mid] < u then lo = mid + 1 else hi = mid end
  end
  return wrk.format("GET", paths[lo])
end

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests": %%.0f, "bytes": %%.0f, "duration_us": %%.0f, "p50_us": %%.0f, ' ..
    '"p99_us": %%.0f, "max_us": %%.0f, "errors": %%.0f}\\n',
    summary.requests, summary.bytes, summary.duration, latency:percentile(50),
    latency:percentile(99), latency.max,
    e.connect + e.read + e.write + e.status + e.timeout))
end
"""


def zipf_weights(count: int) -> list[float]:
    weights = [1 / (k + 1) for k in range(count)]
    total = sum(weights)
    return [w / total for w in weights]


def lua_script(path: Path, targets: list[tuple[str, float]], accept: str, seed: int) -> Path:
    cumulative, running = [], 0.0
    for _, weight in targets:
        running += weight
        cumulative.append(running)
    cumulative[-1] = 1.0
    path.write_text(
        LUA
        % {
            "paths": ", ".join(f'"{p}"' for p, _ in targets),
            "cumulative": ", ".join(f"{c:.12f}" for c in cumulative),
            "accept": accept,
            "seed": seed,
        }
    )
    return path


def get_scripts(scratch: Path, images: list[Image]) -> tuple[Path, Path]:
    popularity = zipf_weights(len(images))
    manifests = [
        (f"/v2/{im.repo}/manifests/v1", p) for im, p in zip(images, popularity, strict=True)
    ]
    blobs = []
    for image, p in zip(images, popularity, strict=True):
        every = [image.config, *image.layers]
        blobs += [(f"/v2/{image.repo}/blobs/{b.digest}", p / len(every)) for b in every]
    accept = f"{OCI_MANIFEST}, application/vnd.docker.distribution.manifest.v2+json"
    return (
        lua_script(scratch / "manifests.lua", manifests, accept, 1),
        lua_script(scratch / "blobs.lua", blobs, "*/*", 2),
    )


def concurrent_gets(host: str, scripts: tuple[Path, Path], seconds: int) -> dict[str, Any]:
    """Both wrk at once; each one's figures from its done()."""
    processes = {
        kind: subprocess.Popen(
            [
                "wrk",
                "-t1",
                f"-c{CONNECTIONS}",
                f"-d{seconds}s",
                "--timeout",
                "60s",
                "-s",
                str(script),
                f"http://{host}",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for kind, script in zip(("manifest", "blob"), scripts, strict=True)
    }
    results = {}
    for kind, process in processes.items():
        out, err = process.communicate()
        if process.returncode != 0:
            raise RuntimeError(f"wrk ({kind}) failed: {err}")
        figures = json.loads(out.strip().splitlines()[-1])
        if figures["errors"]:
            raise RuntimeError(f"wrk ({kind}) saw {figures['errors']:.0f} errors:\n{out}")
        results[kind] = figures
    return results


# -- the run ----------------------------------------------------------------------

METRICS = {
    "push_s": ("parallel pushes, wall time", "s", "lower"),
    "push_mbs": ("parallel pushes, throughput", "MB/s", "higher"),
    "push_cpu": ("parallel pushes, server CPU time", "s", "lower"),
    "mget_rate": ("manifest GETs", "req/s", "higher"),
    "mget_p99": ("manifest GET p99", "ms", "lower"),
    "bget_rate": ("blob GETs", "req/s", "higher"),
    "bget_mbs": ("blob GETs, throughput", "MB/s", "higher"),
    "bget_p50": ("blob GET p50", "ms", "lower"),
    "bget_p99": ("blob GET p99", "ms", "lower"),
}


def run(rounds: int = 3, seconds: int = SECONDS, workers2: bool = True) -> dict[str, Any]:
    made = time.perf_counter()
    image_set = make_images()
    print(
        f"  {len(image_set.images)} images, {image_set.layer_count} distinct layers, "
        f"{image_set.unique_bytes / 1e6:,.0f} MB, made in {time.perf_counter() - made:.1f} s",
        flush=True,
    )
    scratch = Path(tempfile.mkdtemp(prefix="moorage-mixed-"))
    scripts = get_scripts(scratch, image_set.images)
    servers: list[Server] = [MoorageWorkers("Moorage", free_port(), scratch / "m1")]
    if workers2:
        two = MoorageWorkers("Moorage, 2 workers", free_port(), scratch / "m2")
        two.workers = 2
        servers.append(two)
    servers.append(DistributionV3(DISTRIBUTION, free_port(), scratch / "d"))
    metrics = {key: Metric(name, unit, better) for key, (name, unit, better) in METRICS.items()}
    extra: dict[str, list[dict[str, float]]] = {}
    try:
        for r in range(rounds):
            order = servers if r % 2 == 0 else list(reversed(servers))
            print(f"round {r + 1}/{rounds}: {', '.join(s.name for s in order)}", flush=True)
            for server in order:
                os.sync()  # the previous server's writes are not flushed on this one's time
                server.start()
                try:
                    assert server.process is not None
                    with RssSampler(server.process.pid) as sampler:
                        cpu = cpu_seconds(_tree(server.process.pid))
                        pushed = push_all(server.host, image_set.images)
                        cpu = cpu_seconds(_tree(server.process.pid)) - cpu
                    push_rss = sampler.peak
                    with RssSampler(server.process.pid) as sampler:
                        got = concurrent_gets(server.host, scripts, seconds)
                    get_rss = sampler.peak
                finally:
                    server.stop()
                m, b = got["manifest"], got["blob"]
                values = {
                    "push_s": pushed["seconds"],
                    "push_mbs": pushed["sent"] / 1e6 / pushed["seconds"],
                    "push_cpu": cpu,
                    "mget_rate": m["requests"] / (m["duration_us"] / 1e6),
                    "mget_p99": m["p99_us"] / 1000,
                    "bget_rate": b["requests"] / (b["duration_us"] / 1e6),
                    "bget_mbs": b["bytes"] / 1e6 / (b["duration_us"] / 1e6),
                    "bget_p50": b["p50_us"] / 1000,
                    "bget_p99": b["p99_us"] / 1000,
                }
                for key, value in values.items():
                    metrics[key].add(
                        server.name, value, push_rss if key.startswith("push") else get_rss
                    )
                extra.setdefault(server.name, []).append(
                    {
                        "sent": pushed["sent"],
                        "mounted": pushed["mounted"],
                        "mget_p50": m["p50_us"] / 1000,
                    }
                )
                print(
                    f"  {server.name:<20} push {pushed['seconds']:6.2f} s "
                    f"({values['push_mbs']:5.0f} MB/s, {pushed['sent'] / 1e6:,.0f} MB sent, "
                    f"server CPU {cpu:.2f} s, "
                    f"{pushed['mounted']:.0f} mounts, peak RSS {push_rss / MIB:.0f} MiB); "
                    f"manifests {values['mget_rate']:,.0f}/s p99 {values['mget_p99']:.1f} ms; "
                    f"blobs {values['bget_rate']:,.0f}/s {values['bget_mbs']:,.0f} MB/s "
                    f"p99 {values['bget_p99']:.0f} ms",
                    flush=True,
                )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return {
        "metrics": metrics,
        "extra": extra,
        "names": [s.name for s in servers],
        "rounds": rounds,
        "seconds": seconds,
        "unique_bytes": image_set.unique_bytes,
        "layers": image_set.layer_count,
        "sizes": image_set.sizes,
        "images": len(image_set.images),
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


def render(results: dict[str, Any]) -> list[str]:
    metrics: dict[str, Metric] = results["metrics"]
    names: list[str] = results["names"]
    sizes: list[int] = results["sizes"]
    total = sum(sizes)
    under_1mb = sum(1 for s in sizes if s < 1_000_000)
    over_10mb = sum(s for s in sizes if s > 10_000_000)
    moorages = [n for n in names if n != DISTRIBUTION]
    lines = [
        "",
        "### Mixed workload: parallel pushes, then concurrent GETs",
        "",
        f"Produced by `make bench BENCH_ARGS='--only mixed'` on {results['when']} "
        f"(`bench/mixed.py`). {results['images']} images over {results['layers']} distinct "
        f"layers, {total / 1e6:,.0f} MB: {under_1mb} layers ({under_1mb / len(sizes):.0%}) "
        f"under 1 MB, {over_10mb / total:.0%} of the bytes in layers over 10 MB (largest "
        f"{sizes[-1] / 1e6:,.0f} MB); two base stacks shared by four images each. Phase A "
        "pushes the eight images at once (one Python thread and connection each: HEAD, POST "
        "and PUT with digest per layer, a mount for a shared base layer); phase B runs "
        f"straight after for {results['seconds']} s: wrk with {CONNECTIONS} connections on "
        f"manifests by tag and wrk with {CONNECTIONS} on blobs, at once, images picked by "
        "Zipf popularity (1/k). Moorage: SQLite, filesystem, access log on, no "
        "authentication; Distribution v3.1.2: filesystem, access log on. "
        f"{results['rounds']} rounds in alternating order, medians; the client shares the two "
        "cores. The last columns put each Moorage against Distribution so that above "
        "1.0 means Moorage did better: Distribution's time over Moorage's for times "
        "and latencies, Moorage's rate over Distribution's for rates.",
        "",
        "| figure | unit | "
        + " | ".join(names)
        + "".join(f" | {n} vs Distribution" for n in moorages)
        + " |",
        "|---|---|" + "---:|" * (len(names) + len(moorages)),
    ]
    for metric in metrics.values():
        medians = [metric.median(n) for n in names]
        fmt = "{:,.2f}" if metric.unit == "s" else "{:,.1f}" if metric.unit == "ms" else "{:,.0f}"
        cells = [fmt.format(m) if m is not None else "-" for m in medians]
        di = metric.median(DISTRIBUTION)
        for name in moorages:
            mo = metric.median(name)
            if mo and di:
                cells.append(f"{(di / mo if metric.target == 'lower' else mo / di):.2f}")
            else:
                cells.append("-")
        lines.append(f"| {metric.name} | {metric.unit} | " + " | ".join(cells) + " |")
    push = metrics["push_s"]
    best = min(push.median(n) or float("inf") for n in moorages)
    di = push.median(DISTRIBUTION) or 0.0
    met = "met" if best <= di * TARGET else "**not met**"
    lines += [
        "",
        f"Target for the pushes, at most {TARGET:.1f}x Distribution v3's wall time: {met} "
        f"(best Moorage {best:.2f} s, Distribution {di:.2f} s, "
        f"{best / di if di else 0:.2f}x its time).",
        "",
        "Raw rounds (bytes uploaded by the clients include shared layers sent again when "
        "their mount found nothing yet):",
        "",
        "```",
    ]
    for metric in metrics.values():
        for server in names:
            values = metric.values.get(server, [])
            lines.append(f"{metric.name} / {server}: " + ", ".join(f"{v:,.2f}" for v in values))
    for server in names:
        rows = results["extra"].get(server, [])
        lines.append(
            f"uploaded MB / mounts / manifest p50 ms, {server}: "
            + "; ".join(
                f"{r['sent'] / 1e6:,.0f} / {r['mounted']:.0f} / {r['mget_p50']:.2f}" for r in rows
            )
        )
    for server in names:
        push_rss = max(metrics["push_s"].rss.get(server, [0])) / MIB
        get_rss = max(metrics["mget_rate"].rss.get(server, [0])) / MIB
        lines.append(f"peak RSS, {server}: pushes {push_rss:.0f} MiB, GETs {get_rss:.0f} MiB")
    lines.append("```")
    return lines


def _user_system(pid: int) -> tuple[float, float]:
    """User and system CPU seconds of a process tree so far."""
    user = system = 0
    for each in _tree(pid):
        try:
            fields = Path(f"/proc/{each}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        user, system = user + int(fields[11]), system + int(fields[12])
    ticks = os.sysconf("SC_CLK_TCK")
    return user / ticks, system / ticks


def split(rounds: int = 3) -> None:
    """Where the push time goes: the layers over 1 MB alone, then those under
    1 MB alone (blobs only, eight threads as in phase A, a fresh server for
    each), on Moorage and Distribution v3 in alternating order; medians of
    wall time and of the server's user and system CPU."""
    images = make_images().images
    scratch = Path(tempfile.mkdtemp(prefix="moorage-mixed-split-"))
    found: dict[tuple[str, str], list[tuple[float, float, float]]] = {}
    try:
        for r in range(rounds):
            for name in ("Moorage", DISTRIBUTION)[:: 1 if r % 2 == 0 else -1]:
                for kind in ("under 1 MB", "over 1 MB"):
                    jobs = [
                        (
                            im.repo,
                            [
                                b
                                for b in im.push_order
                                if (len(b.data) < 1e6) == kind.startswith("under")
                            ],
                        )
                        for im in images
                    ]
                    server: Server = (
                        MoorageWorkers(name, free_port(), scratch / "m")
                        if name == "Moorage"
                        else DistributionV3(name, free_port(), scratch / "d")
                    )
                    os.sync()
                    server.start()
                    try:
                        assert server.process is not None
                        user, system = _user_system(server.process.pid)
                        pushers = [Pusher(server.host) for _ in jobs]
                        threads = [
                            threading.Thread(
                                target=lambda p=p, j=j: [p.blob(j[0], b) for b in j[1]]
                            )
                            for p, j in zip(pushers, jobs, strict=True)
                        ]
                        started = time.perf_counter()
                        for thread in threads:
                            thread.start()
                        for thread in threads:
                            thread.join()
                        elapsed = time.perf_counter() - started
                        user2, system2 = _user_system(server.process.pid)
                    finally:
                        server.stop()
                    found.setdefault((name, kind), []).append(
                        (elapsed, user2 - user, system2 - system)
                    )
                    count = sum(len(j[1]) for j in jobs)
                    print(
                        f"{name:<20} {kind}: {count} blobs {elapsed:.2f} s, "
                        f"user {user2 - user:.2f} s, system {system2 - system:.2f} s",
                        flush=True,
                    )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print("\n| server | layers | wall s | user CPU s | system CPU s |\n|---|---|---:|---:|---:|")
    for (name, kind), runs in found.items():
        medians = [statistics.median(run[i] for run in runs) for i in range(3)]
        print(f"| {name} | {kind} | " + " | ".join(f"{m:.2f}" for m in medians) + " |")


def profile(output: Path, workers: int = 1) -> None:
    """One push phase against Moorage with py-spy recording the server (all
    its processes, native frames off): ``python bench/mixed.py --profile out``
    writes out.svg (flame graph) and out.txt (collapsed stacks)."""
    image_set = make_images()
    scratch = Path(tempfile.mkdtemp(prefix="moorage-mixed-prof-"))
    server = MoorageWorkers("Moorage", free_port(), scratch / "m")
    server.workers = workers
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    os.sync()
    server.start()
    try:
        assert server.process is not None
        recorders = []
        for fmt, suffix in (("flamegraph", ".svg"), ("raw", ".txt")):
            recorders.append(
                subprocess.Popen(
                    [
                        spy,
                        "record",
                        "--pid",
                        str(server.process.pid),
                        "--subprocesses",
                        "--idle",
                        "--threads",
                        "--rate",
                        "200",
                        "--format",
                        fmt,
                        "--output",
                        str(output.with_suffix(suffix)),
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        time.sleep(1.5)
        pushed = push_all(server.host, image_set.images)
        print(f"push {pushed['seconds']:.2f} s, {pushed['sent'] / 1e6:,.0f} MB sent", flush=True)
        for recorder in recorders:
            recorder.send_signal(2)
        for recorder in recorders:
            recorder.wait(60)
    finally:
        server.stop()
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--profile", type=Path, help="py-spy the server during one push phase")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument(
        "--split", action="store_true", help="small and large layers pushed apart, with CPU"
    )
    args = parser.parse_args()
    if args.split:
        split(args.rounds)
    elif args.profile:
        profile(args.profile, args.workers)
    else:
        print("\n".join(render(run(rounds=args.rounds, seconds=args.seconds))))
