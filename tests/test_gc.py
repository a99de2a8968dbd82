"""Garbage collection while the registry serves, on whichever database and
blob store the run uses: ``moorage gc`` beside a serving registry, and the
scheduled collector looping under concurrent pushes, tag moves and deletes."""

from __future__ import annotations

import json
import os
import random
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path

import requests
import sqlalchemy as sa

from tests.helpers import push_blob, push_image, wait_for
from tests.oci_layout import OCI_MANIFEST, make_image, sha256
from tests.server import MoorageServer
from tests.test_cli import moorage


def forget_row(registry: MoorageServer, digest: str) -> None:
    """Leave a blob's bytes without their row, as a crash between publishing
    and recording would."""
    engine = sa.create_engine(registry.database_url, poolclass=sa.pool.NullPool)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text("DELETE FROM repository_blobs WHERE digest = :d"), {"d": digest})
            conn.execute(sa.text("DELETE FROM blobs WHERE digest = :d"), {"d": digest})
    finally:
        engine.dispose()


def pull_verified(registry: MoorageServer, repo: str, reference: str) -> bytes:
    """The manifest and every blob it names, each checked against its digest."""
    got = requests.get(
        f"{registry.url}/v2/{repo}/manifests/{reference}",
        headers={"Accept": OCI_MANIFEST},
        timeout=30,
    )
    assert got.status_code == 200, (repo, reference, got.status_code)
    document = json.loads(got.content)
    for descriptor in [document["config"], *document["layers"]]:
        blob = requests.get(f"{registry.url}/v2/{repo}/blobs/{descriptor['digest']}", timeout=30)
        assert blob.status_code == 200, (repo, reference, descriptor["digest"])
        assert sha256(blob.content) == descriptor["digest"]
    return got.content


def test_gc_reclaims_deleted_images_while_serving(registry: MoorageServer) -> None:
    kept = make_image(1, 4096, "kept")
    doomed = make_image(2, 4096, "doomed")
    push_image(registry, "gc/app", "kept", kept)
    push_image(registry, "gc/app", "doomed", doomed)
    # The doomed image's first layer is also in another repository's image.
    other = make_image(1, 4096, "other")
    push_blob(registry, "gc/other", doomed.layers[0])
    push_image(registry, "gc/other", "v1", other)
    open_upload = requests.post(f"{registry.url}/v2/gc/app/blobs/uploads/", timeout=5)
    upload_id = open_upload.headers["Location"].rsplit("/", 1)[1]
    orphan = push_blob(registry, "gc/crash", b"published just before a crash")
    forget_row(registry, orphan)

    deleted = requests.delete(
        f"{registry.url}/v2/gc/app/manifests/{doomed.manifest_digest}", timeout=5
    )
    assert deleted.status_code == 202
    args = ("--data", str(registry.data_dir), "--grace-seconds", "0")

    dry = moorage("gc", *args, "--dry-run", env=registry.env)
    assert dry.returncode == 0, dry.stderr
    # gc/other links doomed.layers[0] without a manifest naming it: stale too.
    assert "would drop 4 stale links" in dry.stdout, dry.stdout
    assert orphan in registry.blob_files()

    done = moorage("gc", *args, env=registry.env)  # the registry goes on serving
    assert done.returncode == 0, done.stderr
    assert (
        "dropped 4 stale links; deleted 3 unlinked blobs, 1 unrecorded files and "
        "0 stale uploads" in done.stdout
    ), done.stdout
    files = registry.blob_files()
    assert not set(doomed.blob_digests) & files
    assert orphan not in files
    assert set(kept.blob_digests) | set(other.blob_digests) <= files
    assert pull_verified(registry, "gc/app", "kept") == kept.manifest
    assert pull_verified(registry, "gc/other", "v1") == other.manifest
    gone = requests.get(f"{registry.url}/v2/gc/app/blobs/{sha256(doomed.layers[1])}", timeout=5)
    assert gone.status_code == 404

    sessions = lambda: {row[0] for row in registry.query("SELECT id FROM uploads")}  # noqa: E731
    assert upload_id in sessions(), "a fresh upload session is not stale"
    stale = moorage("gc", *args, "--upload-max-age", "0", env=registry.env)
    assert "0 unrecorded files and 1 stale uploads" in stale.stdout, stale.stdout
    assert upload_id not in sessions() | registry.upload_files()
    # What was deleted can be pushed again, at once.
    push_image(registry, "gc/app", "doomed", doomed)
    assert pull_verified(registry, "gc/app", "doomed") == doomed.manifest


# A push may lose its race with the collector many times over (a blob it
# skipped because the registry had it was collected before its manifest came).
ATTEMPTS = 25


@dataclass
class Ledger:
    """What the registry told the pushers: manifests stored (and not deleted
    since) by repository, with the blobs each names."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    stored: dict[tuple[str, str], list[str]] = field(default_factory=dict)
    deleted: set[tuple[str, str]] = field(default_factory=set)
    retries: int = 0
    failures: list[str] = field(default_factory=list)


def _pool_layers(count: int) -> list[bytes]:
    """Layers shaped like a registry's: mostly small, a few large."""
    rng = random.Random(7)
    sizes = [rng.choice((700, 3_000, 40_000, 300_000, 2_500_000)) for _ in range(count)]
    return [os.urandom(size) for size in sizes]


def _upload(session: requests.Session, base: str, repo: str, data: bytes, chunked: bool) -> int:
    digest = sha256(data)
    if session.head(f"{base}/v2/{repo}/blobs/{digest}", timeout=60).status_code == 200:
        return 201  # the registry has it: clients skip it, which is the race GC must survive
    if not chunked:
        return session.post(
            f"{base}/v2/{repo}/blobs/uploads/", params={"digest": digest}, data=data, timeout=60
        ).status_code
    started = session.post(f"{base}/v2/{repo}/blobs/uploads/", timeout=60)
    if started.status_code != 202:
        return started.status_code
    location = started.headers["Location"]
    half = len(data) // 2
    patched = session.patch(
        f"{base}{location}",
        data=data[:half],
        headers={"Content-Range": f"0-{max(half - 1, 0)}"} if half else {},
        timeout=60,
    )
    if patched.status_code != 202:
        return patched.status_code
    return session.put(
        f"{base}{patched.headers['Location']}",
        params={"digest": digest},
        data=data[half:],
        timeout=60,
    ).status_code


def _pusher(registry: MoorageServer, worker: int, pool: list[bytes], ledger: Ledger) -> None:
    rng = random.Random(worker)
    session = requests.Session()
    base = registry.url
    for round_ in range(10):
        repo = f"stress/r{rng.randrange(3)}"
        tag = f"t{rng.randrange(4)}"
        layers = [*rng.sample(pool, 2), os.urandom(rng.choice((500, 20_000)))]
        config = json.dumps({"worker": worker, "round": round_, "n": rng.random()}).encode()
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
                        "mediaType": "application/vnd.oci.image.layer.v1.tar",
                        "digest": sha256(layer),
                        "size": len(layer),
                    }
                    for layer in layers
                ],
            }
        ).encode()
        digest = sha256(manifest)
        for attempt in range(ATTEMPTS):
            statuses = [
                _upload(session, base, repo, blob, chunked=rng.random() < 0.4)
                for blob in [config, *layers]
            ]
            if any(s not in (201, 503) for s in statuses):
                with ledger.lock:
                    ledger.failures.append(f"{repo} blob upload answered {statuses}")
                return
            if 503 in statuses:  # collected while uploading: upload again
                continue
            put = session.put(
                f"{base}/v2/{repo}/manifests/{tag}",
                data=manifest,
                headers={"Content-Type": OCI_MANIFEST},
                timeout=60,
            )
            if put.status_code == 201:
                with ledger.lock:
                    ledger.stored[(repo, digest)] = [sha256(config), *map(sha256, layers)]
                    ledger.retries += attempt
                break
            if put.status_code != 400 or "MANIFEST_BLOB_UNKNOWN" not in put.text:
                with ledger.lock:
                    ledger.failures.append(f"{repo}:{tag} manifest answered {put.status_code}")
                return
        else:
            with ledger.lock:
                ledger.failures.append(f"{repo}:{tag} never stored after {ATTEMPTS} attempts")
            return
        # Now and then delete an image some worker stored earlier.
        with ledger.lock:
            stored = [key for key in ledger.stored if key not in ledger.deleted]
        if stored and rng.random() < 0.35:
            victim = rng.choice(stored)
            r = session.delete(f"{base}/v2/{victim[0]}/manifests/{victim[1]}", timeout=60)
            with ledger.lock:
                if r.status_code == 202:
                    ledger.deleted.add(victim)
                elif r.status_code != 404:  # another worker deleted it first
                    ledger.failures.append(f"delete {victim} answered {r.status_code}")


def _gc_rounds(registry: MoorageServer) -> list[tuple[int, int]]:
    """The scheduled collector's rounds so far: (links dropped, blobs deleted)."""
    text = registry.log_path.read_text(errors="replace")
    return [
        (int(links), int(blobs))
        for links, blobs in re.findall(r"dropped (\d+) stale links; deleted (\d+) unlinked", text)
    ]


def test_collector_looping_under_concurrent_pushes_loses_nothing(
    server_factory,
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    """Six clients push images sharing layers into three repositories, move
    tags and delete images, while the scheduled collector runs a round every
    50 ms with a 50 ms grace period: links a client made a moment ago are
    dropped and blobs it is uploading are collected under it, so pushes are
    refused and retried, and every race the collector has with uploads,
    mounts and manifest pushes happens many times. Afterwards every manifest a client
    was told is stored (and did not delete) pulls whole, each blob verified;
    and once the collector has run again, the store holds exactly the blobs
    those manifests name: the space of the deleted images is reclaimed."""
    registry: MoorageServer = server_factory(tmp_path / "data")
    registry.stop()
    registry.env.update({"MOORAGE_GC_INTERVAL": "0.05", "MOORAGE_GC_GRACE": "0.05"})
    registry.start()
    pool = _pool_layers(8)
    ledger = Ledger()
    workers = [threading.Thread(target=_pusher, args=(registry, i, pool, ledger)) for i in range(6)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(600)
    assert not ledger.failures, ledger.failures
    alive = {key: blobs for key, blobs in ledger.stored.items() if key not in ledger.deleted}
    assert len(ledger.stored) == 60 and ledger.deleted and alive

    # The collector raced the pushers: it deleted blobs while they ran.
    assert sum(blobs for _, blobs in _gc_rounds(registry)) > 0, "the collector never deleted"
    for repo, digest in alive:
        pull_verified(registry, repo, digest)

    # Two more rounds with nobody pushing: the second sees what the first
    # unlinked; then only what the stored manifests name is left.
    rounds = len(_gc_rounds(registry))
    wait_for(lambda: len(_gc_rounds(registry)) >= rounds + 3, 60, "three more collector rounds")
    named = {blob for blobs in alive.values() for blob in blobs}
    assert registry.blob_files() == named
    for repo, digest in alive:
        pull_verified(registry, repo, digest)
    deleted_only = {blob for key in ledger.deleted for blob in ledger.stored[key]} - named
    assert deleted_only, "some image's blobs were its own"
    print(
        f"stress: {len(ledger.stored)} pushes, {ledger.retries} retried, "
        f"{len(ledger.deleted)} deleted, {len(_gc_rounds(registry))} collector rounds"
    )
