"""The Advisor's queue and indexer on the installation a real ``moorage
serve`` keeps (its database, its blob store): images pushed over HTTP are
queued in the push's transaction, and an indexer run here, in this process,
works the queue as a replica would: a shared layer is read once, a poison
item ends failed with its reason, a dead worker's lease passes on, and a new
advisory snapshot re-assesses from stored layer indexes without reading a
layer again. The server runs with its own indexer off, so the one here is
the only worker."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncGenerator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
import requests

from moorage.config import load_settings
from moorage.metadata import DatabaseThreads, MetadataStore, create_metadata_engine
from moorage.metadata.advisory_store import AdvisoryStore
from moorage.metadata.va_store import VaStore
from moorage.oci.digest import Digest, parse_digest
from moorage.server import open_store
from moorage.storage import BlobStore
from moorage.va.indexer import Indexer
from moorage.va.model import Status
from tests.helpers import push_blob, push_image, put_manifest, wait_for
from tests.oci_layout import OCI_INDEX, sha256
from tests.server import MoorageServer
from tests.test_cli import moorage
from tests.va_images import ALPINE_LAYER, image, index, layer, write_advisories
from tests.va_layers import M


class CountingStore:
    """The installation's real blob store, counting the blobs read through it
    (nothing else changes): what proves a shared layer is read once."""

    def __init__(self, inner: BlobStore) -> None:
        self.inner = inner
        self.reads: list[str] = []

    def read(
        self, digest: Digest, offset: int = 0, length: int | None = None
    ) -> AsyncGenerator[bytes, None]:
        self.reads.append(str(digest))
        return self.inner.read(digest, offset, length)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


class Installation:
    def __init__(self, server: MoorageServer) -> None:
        self.server = server
        # The server's own settings (its environment names the S3 bucket in the
        # suite's second pass), as another replica of it would be given them.
        with mock.patch.dict(os.environ, server.env):
            self.settings = load_settings(
                data_dir=str(server.data_dir), database_url=server.database_url
            )
        self.engine = create_metadata_engine(server.database_url)
        self.db = DatabaseThreads()
        self.metadata = MetadataStore(self.engine)
        self.va = VaStore(self.engine)
        self.store = CountingStore(open_store(self.settings, self.metadata, self.db))
        self.advisories = AdvisoryStore(self.engine)

    def indexer(self, **options: Any) -> Indexer:
        return Indexer(
            self.metadata,
            self.va,
            self.store,  # type: ignore[arg-type]
            self.db,
            self.advisories,
            **options,
        )

    def drain(self, indexer: Indexer) -> int:
        """Work the queue until it is empty; how many items were done."""

        async def work() -> int:
            done = 0
            while await indexer.work_once():
                done += 1
            return done

        return asyncio.run(work())

    def close(self) -> None:
        asyncio.run(self.store.inner.close())
        self.db.shutdown()
        self.engine.dispose()


@pytest.fixture
def install(server_factory: Any) -> Iterator[Installation]:
    server = server_factory(None)
    server.stop()
    server.env["MOORAGE_VA_INDEX"] = "false"
    server.start()
    installation = Installation(server)
    yield installation
    installation.close()


def import_advisories(server: MoorageServer, directory: Path) -> None:
    done = moorage(
        "va",
        "db",
        "import",
        str(write_advisories(directory)),
        "--data",
        str(server.data_dir),
        env=server.env,
    )
    assert done.returncode == 0, done.stderr


def app_layer(name: str) -> bytes:
    return layer(M(f"app/{name}.txt", name.encode()))


def test_shared_base_layer_is_read_once(install: Installation, tmp_path: Path) -> None:
    import_advisories(install.server, tmp_path / "advisories")
    pushed = [
        push_image(install.server, f"team/app{i}", "v1", image([ALPINE_LAYER, app_layer(str(i))]))
        for i in range(3)
    ]
    assert [row[2] for row in install.va.queue()] == ["queued"] * 3  # queued with each push

    indexer = install.indexer()
    assert install.drain(indexer) == 3
    reads = install.store.reads
    assert reads.count(sha256(ALPINE_LAYER)) == 1, "the shared layer was read again"
    assert len(reads) == 4 and len(set(reads)) == 4  # and each image's own layer, once
    assert indexer.stats.layers_read == 4 and indexer.stats.layers_reused == 2
    for i, digest in enumerate(pushed):
        (report,) = install.va.report("global", f"team/app{i}", digest)
        assert report.status is Status.FAIL
        assert {f.package for f in report.findings} == {"libcrypto3", "libssl3"}
        assert all(f.layer == sha256(ALPINE_LAYER) for f in report.findings)


def test_artifacts_are_not_queued_and_an_index_is_queued_per_platform(
    install: Installation,
) -> None:
    amd = image([ALPINE_LAYER], arch="amd64")
    arm = image([ALPINE_LAYER, app_layer("arm")], user="1000", arch="arm64")
    for img in (amd, arm):
        push_image(install.server, "team/multi", img.manifest_digest, img)
    body = index({"linux/amd64": amd, "linux/arm64": arm})
    # A buildx attestation entry is not a platform.
    doc = json.loads(body)
    doc["manifests"].append(
        {
            **doc["manifests"][0],
            "platform": {"os": "unknown", "architecture": "unknown"},
            "annotations": {"vnd.docker.reference.type": "attestation-manifest"},
        }
    )
    body = json.dumps(doc).encode()
    assert put_manifest(install.server, "team/multi", "v1", body, OCI_INDEX).status_code == 201
    # A cosign-style signature: an image config type, but its layer is not a tar.
    config = b"{}"
    payload = b'{"critical":{}}'
    push_blob(install.server, "team/multi", config)
    push_blob(install.server, "team/multi", payload)
    signature = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": sha256(config),
                "size": len(config),
            },
            "layers": [
                {
                    "mediaType": "application/vnd.dev.cosign.simplesigning.v1+json",
                    "digest": sha256(payload),
                    "size": len(payload),
                }
            ],
        }
    ).encode()
    assert put_manifest(install.server, "team/multi", "sha256-x.sig", signature).status_code == 201

    platforms = sorted(row[3] for row in install.va.queue())
    assert platforms == ["", "", "linux/amd64", "linux/arm64"]  # two children, then the index
    install.drain(install.indexer())
    reports = install.va.report("global", "team/multi", sha256(body))
    assert [(r.platform, r.digest) for r in reports] == [
        ("linux/amd64", amd.manifest_digest),
        ("linux/arm64", arm.manifest_digest),
    ]
    by_platform = {r.platform: r for r in reports}
    assert "runs_as_root" in {i.id for i in by_platform["linux/amd64"].config_issues}
    assert "runs_as_root" not in {i.id for i in by_platform["linux/arm64"].config_issues}
    listed = requests.get(f"{install.server.url}/v2/team/multi/_moorage/va/v1", timeout=10).json()
    assert [p["platform"] for p in listed["platforms"]] == ["linux/amd64", "linux/arm64"]
    signed = requests.get(
        f"{install.server.url}/v2/team/multi/_moorage/va/sha256-x.sig", timeout=10
    ).json()
    assert signed["status"] == "UNSUPPORTED" and "artifact" in signed["platforms"][0]["reason"]


def test_poison_item_ends_failed_with_its_reason(install: Installation) -> None:
    img = image([app_layer("poison")])
    digest = push_image(install.server, "team/poison", "v1", img)
    # The layer's bytes are gone from the store: every attempt fails the same way.
    asyncio.run(install.store.inner.delete(parse_digest(sha256(img.layers[0]))))
    indexer = install.indexer(max_attempts=3)
    assert install.drain(indexer) == 3  # three attempts, then no more
    ((_key, _, state, _, attempts, reason),) = install.va.queue()
    assert state == "failed" and attempts == 3
    assert reason is not None and "gave up after 3 attempts" in reason and "BlobMissing" in reason
    assert install.drain(indexer) == 0  # not retried forever
    shown = requests.get(f"{install.server.url}/v2/team/poison/_moorage/va/v1", timeout=10).json()
    assert shown["status"] == "PENDING"
    assert "indexing failed" in shown["platforms"][0]["reason"]
    assert shown["digest"] == digest


def test_lease_of_a_dead_worker_passes_to_another(install: Installation) -> None:
    push_image(install.server, "team/lease", "v1", image([app_layer("lease")]))
    dead = install.va.take("dead-worker", 1.0, 5)  # taken, then never finished
    assert dead is not None and dead.attempts == 1
    assert install.va.take("other-worker", 1.0, 5) is None  # held while the lease runs
    taken = wait_for(lambda: install.va.take("other-worker", 60.0, 5), 10, "the lease to expire")
    assert taken.id == dead.id and taken.attempts == 2
    install.va.finish(dead.id, "dead-worker")  # the dead worker's late word changes nothing
    assert install.va.queue()[0][2] == "leased"
    install.va.finish(taken.id, "other-worker")
    assert install.va.queue()[0][2] == "done"


def test_new_snapshot_reassesses_from_stored_layers_only(
    install: Installation, tmp_path: Path
) -> None:
    touched = push_image(install.server, "team/alpine", "3.20", image([ALPINE_LAYER]))
    other = push_image(install.server, "team/plain", "v1", image([app_layer("plain")], user="app"))
    install.drain(install.indexer())
    (before,) = install.va.report("global", "team/alpine", touched)
    assert before.status is Status.WARN and "no advisory data" in before.reason
    (plain_before,) = install.va.report("global", "team/plain", other)

    # The layers' bytes go: a re-assessment that read a layer would fail.
    for data in (ALPINE_LAYER,):
        asyncio.run(install.store.inner.delete(parse_digest(sha256(data))))
    install.store.reads.clear()
    import_advisories(install.server, tmp_path / "advisories")
    indexer = install.indexer()
    asyncio.run(indexer.check_snapshot())
    assert install.drain(indexer) == 1
    assert install.store.reads == []
    (after,) = install.va.report("global", "team/alpine", touched)
    assert after.status is Status.FAIL
    assert indexer.stats.reassessed == 1  # the Alpine image only: its packages were touched
    (plain_after,) = install.va.report("global", "team/plain", other)
    assert plain_after.assessed_at == plain_before.assessed_at
    events = [(e.repository, e.old_status, e.new_status) for e in install.va.events()]
    assert ("team/alpine", "WARN", "FAIL") in events
    asyncio.run(indexer.check_snapshot())  # the same snapshot again: nothing new to do
    assert install.drain(indexer) == 0


def test_a_manifest_pushed_again_after_deletion_starts_pending(install: Installation) -> None:
    img = image([app_layer("again")], user="app")
    digest = push_image(install.server, "team/again", "v1", img)
    install.drain(install.indexer())
    assert [r.status for r in install.va.report("global", "team/again", digest)] == [
        Status.UNSUPPORTED
    ]
    gone = requests.delete(f"{install.server.url}/v2/team/again/manifests/{digest}", timeout=10)
    assert gone.status_code == 202
    push_image(install.server, "team/again", "v1", img)
    # The old verdict went with the push that brought the manifest back.
    assert install.va.report("global", "team/again", digest) == []
    shown = requests.get(f"{install.server.url}/v2/team/again/_moorage/va/v1", timeout=10).json()
    assert shown["status"] == "PENDING"
    # When it was queued, for a policy's grace period: the push, by the database's clock.
    queued = datetime.fromisoformat(shown["platforms"][0]["queued_at"])
    assert abs((datetime.now(UTC) - queued).total_seconds()) < 600
    install.drain(install.indexer())
    assert len(install.va.report("global", "team/again", digest)) == 1
