"""The metadata stores on both databases they support: the same Alembic
history with data in it, and writers racing for the same rows (threads here
stand for the processes and replicas of a real deployment: each has its own
connection and transaction)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from moorage.iam.errors import Conflict
from moorage.iam.secrets import SecretKeeper
from moorage.iam.service import SERVICE_ID, IamService
from moorage.metadata import (
    BlobsUnlinked,
    LinkRef,
    MetadataStore,
    NewManifest,
    RepoRef,
    TagMoved,
    TagWas,
    create_metadata_engine,
    upgrade,
)
from moorage.metadata.iam_store import IamStore
from moorage.metadata.shared_store import FailureStore
from tests.postgres import cluster

DATABASES = ["sqlite", "postgres"]


@pytest.fixture(params=DATABASES)
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'metadata.db'}"
    name = "t_" + request.node.name.replace("[", "_").replace("]", "")[:50].lower()
    return cluster().create_database(name)


@pytest.fixture
def engine(url: str) -> Iterator[sa.Engine]:
    created = create_metadata_engine(url)
    yield created
    created.dispose()


def at_once(count: int, fn: Callable[[int], Any]) -> list[Any]:
    """``fn(i)`` for i in range(count), released together; results or exceptions."""
    barrier = threading.Barrier(count)

    def run(i: int) -> Any:
        barrier.wait()
        try:
            return fn(i)
        except Exception as exc:
            return exc

    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(run, range(count)))


def test_every_migration_keeps_the_data_of_the_one_before(engine: sa.Engine) -> None:
    """Upgrade a database at 0002 holding an account, a user with a password, a
    locked API key and two identical policies: 0003 turns the user into an
    identity with a membership (batch operations on SQLite, with foreign keys
    that must not cascade), 0003 marks the locked key an administrator's (a
    boolean on both), 0005 keeps one of the two policies."""
    upgrade(engine, "0002")
    now = datetime.now(UTC)
    with engine.begin() as conn:
        run = conn.execute
        run(sa.text("INSERT INTO accounts VALUES ('a1', 'one', :at)"), {"at": now})
        run(
            sa.text(
                "INSERT INTO users (id, account_id, email, password_hash, created_at) "
                "VALUES ('u1', 'a1', 'e@a.test', 'scrypt$c2FsdA==$aGFzaA==', :at)"
            ),
            {"at": now},
        )
        run(
            sa.text(
                "INSERT INTO api_keys (id, account_id, owner_kind, owner_id, name, description, "
                "locked, digest, created_at) VALUES ('k1', 'a1', 'user', 'u1', 'n', '', :locked, "
                "'d1', :at)"
            ),
            {"locked": True, "at": now},
        )
        for pid in ("p1", "p2"):
            run(
                sa.text(
                    "INSERT INTO policies (id, account_id, subject_kind, subject_id, roles, "
                    "service_name, region, resource_type, resource, created_at) VALUES "
                    "(:id, 'a1', 'user', 'u1', 'Reader', 'container-registry', NULL, NULL, "
                    "NULL, :at)"
                ),
                {"id": pid, "at": now},
            )
    upgrade(engine)
    with engine.connect() as conn:
        members = conn.execute(
            sa.text("SELECT account_id, user_id, password_hash FROM account_members")
        ).all()
        assert [tuple(m) for m in members] == [("a1", "u1", "scrypt$c2FsdA==$aGFzaA==")]
        assert conn.execute(sa.text("SELECT salt FROM users")).scalar() == "c2FsdA=="
        locked = conn.execute(sa.text("SELECT locked, locked_by FROM api_keys")).one()
        assert bool(locked[0]) and locked[1] == "administrator"
        assert conn.execute(sa.text("SELECT id FROM policies")).scalars().all() == ["p1"]
        tables = set(sa.inspect(conn).get_table_names())
        assert {"signing_keys", "signin_failures", "installation"} <= tables


def test_iam_administration_moves_to_iam_identity_without_widening(engine: sa.Engine) -> None:
    """0008: a subject with Administrator on every service (every account's first
    administrator) keeps administering the account through iam-identity; one
    with Administrator on some services keeps managing identities (Editor) but
    no longer policies elsewhere; a scoped Administrator or a Manager gets
    nothing."""
    upgrade(engine, "0007")
    now = datetime.now(UTC)
    held = {
        "owner": [
            ("Manager,Administrator", "container-registry", None),
            ("Manager,Administrator", "containers-kubernetes", None),
        ],
        "kube": [("Administrator", "containers-kubernetes", None)],
        "scoped": [
            ("Administrator", "container-registry", "us-south"),
            ("Administrator", "containers-kubernetes", "us-south"),
        ],
        "manager": [("Manager", "container-registry", None)],
    }
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO accounts VALUES ('a1', 'one', :at)"), {"at": now})
        for n, (subject, policies) in enumerate(held.items()):
            for m, (roles, service, region) in enumerate(policies):
                conn.execute(
                    sa.text(
                        "INSERT INTO policies (id, account_id, subject_kind, subject_id, roles, "
                        "service_name, region, resource_type, resource, created_at) VALUES "
                        "(:id, 'a1', 'service_id', :subject, :roles, :service, :region, NULL, "
                        "NULL, :at)"
                    ),
                    {
                        "id": f"p{n}{m}",
                        "subject": subject,
                        "roles": roles,
                        "service": service,
                        "region": region,
                        "at": now,
                    },
                )
    upgrade(engine)
    with engine.connect() as conn:
        added = conn.execute(
            sa.text(
                "SELECT subject_id, roles, region, resource FROM policies "
                "WHERE service_name = 'iam-identity' ORDER BY subject_id"
            )
        ).all()
    assert [tuple(r) for r in added] == [
        ("kube", "Editor", None, None),
        ("owner", "Administrator", None, None),
    ]


def manifest(digest: str) -> NewManifest:
    return NewManifest(
        digest=digest,
        media_type="application/vnd.oci.image.manifest.v1+json",
        artifact_type=None,
        subject_digest=None,
        annotations={},
        content=b"{}",
        blob_digests=["sha256:" + "a" * 64],
        child_digests=[],
    )


def test_racing_writers_create_each_row_once(engine: sa.Engine) -> None:
    """Sixteen writers at once record the same blob in a new repository, store
    the same manifest and point tags at it: no writer fails, and each
    repository, blob, link, manifest and tag exists once."""
    upgrade(engine)
    store = MetadataStore(engine)
    repo = RepoRef("us-south", "team/race")
    blob = "sha256:" + "a" * 64

    def write(i: int) -> None:
        epoch = store.pin_blob(blob, 10)
        assert epoch is not None
        assert store.record_blob(repo, blob, 10, epoch=epoch)
        store.put_manifest(repo, manifest("sha256:" + "b" * 64), tag="latest")
        store.put_manifest(repo, manifest("sha256:" + "b" * 64), tag=f"t{i % 4}")

    results = at_once(16, write)
    assert [r for r in results if r is not None] == []
    with engine.connect() as conn:
        count = lambda table: conn.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar()  # noqa: E731
        assert count("repositories") == 1
        assert count("blobs") == 1
        assert count("repository_blobs") == 1
        assert count("manifests") == 1
        assert count("manifest_references") == 1
        assert count("tags") == 5  # latest, t0..t3


def test_racing_signature_tag_writes_judged_on_one_state_commit_once(engine: sa.Engine) -> None:
    """Writers that each checked a signature tag in the same state (absent, then
    naming one manifest) race to move it: one commits, the others are told the
    tag moved, so none silently drops a signature pushed meanwhile."""
    upgrade(engine)
    store = MetadataStore(engine)
    repo = RepoRef("us-south", "team/signed")
    blob = "sha256:" + "a" * 64
    epoch = store.pin_blob(blob, 10)
    assert epoch is not None and store.record_blob(repo, blob, 10, epoch=epoch)
    tag = "sha256-" + "f" * 64 + ".sig"
    for was in (None, "created"):
        before = None
        if was is not None:
            current = store.get_manifest(repo, tag, by_digest=False)
            assert current is not None
            before = current.digest
        results = at_once(
            8,
            lambda i, before=before, was=was: store.put_manifest(
                repo,
                manifest("sha256:" + f"{i}{was or ''}".encode().hex().ljust(64, "0")[:64]),
                tag=tag,
                tag_was=TagWas(before),
            ),
        )
        assert sum(1 for r in results if r is None) == 1, results
        assert all(isinstance(r, TagMoved) for r in results if r is not None), results


def test_racing_identical_policies_make_one(engine: sa.Engine) -> None:
    upgrade(engine)
    iam = IamService(IamStore(engine), SecretKeeper(b"k" * 32), ("us-south",))
    created = iam.bootstrap("admin@a.test", None)
    assert created is not None
    admin = iam.authenticate_api_key(created.secret)
    assert admin is not None
    account = iam.default_account()
    sid = iam.create_service_id(account, "racer", None)
    results = at_once(
        12,
        lambda _: iam.create_policy(admin, SERVICE_ID, sid.id, "Reader", "container-registry"),
    )
    assert sum(1 for r in results if not isinstance(r, Exception)) == 1, results
    assert all(isinstance(r, Conflict) for r in results if isinstance(r, Exception)), results
    assert len(iam.policies(account, SERVICE_ID, sid.id)) == 1


def test_one_person_invited_into_many_accounts_at_once_is_one_identity(engine: sa.Engine) -> None:
    upgrade(engine)
    iam = IamService(IamStore(engine), SecretKeeper(b"k" * 32), ("us-south",))
    iam.bootstrap("admin@a.test", None)
    accounts = [iam.create_account(f"acct {i}", f"admin{i}@a.test")[0] for i in range(6)]
    results = at_once(
        6, lambda i: iam.invite_user(accounts[i], "person@a.test", f"password-{i}-long")
    )
    assert not [r for r in results if isinstance(r, Exception)], results
    assert len({r.id for r in results}) == 1
    # Each account's password opens that account only, whoever created the identity.
    for i, account in enumerate(accounts):
        principal = iam.authenticate_password("person@a.test", f"password-{i}-long")
        assert principal is not None and principal.accounts == frozenset({account})


def test_parallel_reservations_never_pass_the_ceiling(engine: sa.Engine) -> None:
    upgrade(engine)
    store = FailureStore(engine)
    now = datetime.now(UTC).timestamp()
    results = at_once(20, lambda _: store.reserve([("ip:x", 100), ("user:eve", 3)], now, 60.0))
    counted = [ids for ids, blocked in results if not blocked]
    assert len(counted) == 3, results
    refused = [blocked for _, blocked in results if blocked]
    assert all(set(b) == {"user:eve"} and 0 < b["user:eve"] <= 60 for b in refused)
    store.forgive(counted[0])  # one of them succeeded
    ids, blocked = store.reserve([("ip:x", 100), ("user:eve", 3)], now, 60.0)
    assert ids and not blocked
    assert store.prune(now + 61) == 2 * 3 + 0  # every row aged out (ip and user per attempt)


def image(digest: str, blob: str) -> NewManifest:
    return NewManifest(
        digest=digest,
        media_type="application/vnd.oci.image.manifest.v1+json",
        artifact_type=None,
        subject_digest=None,
        annotations={},
        content=b"{}",
        blob_digests=[blob],
        child_digests=[],
    )


def digest_of(kind: str, i: int) -> str:
    return "sha256:" + f"{kind}{i:03d}".encode().hex().ljust(64, "0")


def test_the_collector_and_writers_agree_through_the_blob_row(engine: sa.Engine) -> None:
    """One blob through its life: pinned, linked, referenced, its image deleted,
    its link dropped, marked, forgotten, pushed again."""
    upgrade(engine)
    store = MetadataStore(engine)
    repo = RepoRef("us-south", "team/gc")
    blob = digest_of("b", 0)
    hour_ago = datetime.now(UTC) - timedelta(hours=1)

    epoch = store.pin_blob(blob, 5)
    assert epoch is not None
    assert store.gc_mark_deleting(blob, hour_ago) is None, "pinned within the grace period"
    assert store.record_blob(repo, blob, 5, epoch=epoch)
    soon = datetime.now(UTC) + timedelta(seconds=1)  # a grace period that has passed
    assert store.gc_unreferenced_blobs(soon) == []
    assert store.gc_mark_deleting(blob, soon) is None, "linked"

    store.put_manifest(repo, image(digest_of("m", 0), blob), tag="v1")
    assert store.gc_stale_links(soon) == [], "a manifest of the repository references it"
    deleted_at = datetime.now(UTC)
    assert store.delete_manifest(repo, digest_of("m", 0))
    # Its grace period starts now: a client that saw the blob here a moment
    # ago and skips uploading it finds it still linked.
    assert store.gc_stale_links(deleted_at) == []
    [link] = store.gc_stale_links(datetime.now(UTC) + timedelta(seconds=1))
    assert link.digest == blob and link.repository == "team/gc"
    assert not store.gc_drop_link(link, hour_ago), "linked within the grace period"
    soon = datetime.now(UTC) + timedelta(seconds=1)
    assert store.gc_drop_link(link, soon)
    with pytest.raises(BlobsUnlinked):
        store.put_manifest(repo, image(digest_of("m", 1), blob), tag="v2")

    assert store.gc_unreferenced_blobs(soon) == [(blob, 5)]
    mark = store.gc_mark_deleting(blob, soon)
    assert mark is not None
    assert store.pin_blob(blob, 5) is None, "writers wait while the bytes are deleted"
    assert not store.record_blob(repo, blob, 5, epoch=epoch), "the old pin is void"
    store.gc_forget(blob, mark)
    again = store.pin_blob(blob, 5)
    assert again is not None and again != epoch
    assert not store.record_blob(repo, blob, 5, epoch=epoch)
    assert store.record_blob(repo, blob, 5, epoch=again)
    assert store.gc_claim_orphan(blob, 5) is None, "bytes with a row are no orphan"


@pytest.mark.parametrize("rounds", [12])
def test_the_collector_racing_writers_never_both_win(engine: sa.Engine, rounds: int) -> None:
    """The collector and a writer released together, many times over: a mount
    and the mark of its blob, a pinned upload's link and the mark, a manifest
    push and the drop of the link it needs. Either may win each race; never
    both, which is the case that would lose bytes a client was told exist."""
    upgrade(engine)
    store = MetadataStore(engine)
    source, target = RepoRef("us-south", "team/src"), RepoRef("us-south", "team/dst")
    soon = lambda: datetime.now(UTC) + timedelta(seconds=5)  # noqa: E731

    def linked(blob: str, repo: RepoRef) -> None:
        epoch = store.pin_blob(blob, 3)
        assert epoch is not None and store.record_blob(repo, blob, 3, epoch=epoch)

    for i in range(rounds):
        # A mount from a repository whose link the collector is dropping.
        blob = digest_of("mo", i)
        linked(blob, source)
        [link] = [x for x in store.gc_stale_links(soon()) if x.digest == blob]

        def collect(_: int, blob: str = blob, link: LinkRef = link) -> bool:
            return store.gc_drop_link(link, soon()) and bool(store.gc_mark_deleting(blob, soon()))

        def mount(_: int, blob: str = blob) -> bool:
            return store.mount_blob(target, blob, source) is not None

        marked, mounted = at_once(2, lambda j: (collect, mount)[j](j))
        assert not (marked is True and mounted is True), "a mount of a blob being deleted"

        # An upload pinned before the collector looked, linking as it marks.
        blob = digest_of("up", i)
        epoch = store.pin_blob(blob, 3)
        assert epoch is not None

        def mark(_: int, blob: str = blob) -> bool:
            return store.gc_mark_deleting(blob, soon()) is not None

        def record(_: int, blob: str = blob, epoch: str = epoch) -> bool:
            return store.record_blob(target, blob, 3, epoch=epoch)

        marked, recorded = at_once(2, lambda j: (mark, record)[j](j))
        assert not (marked is True and recorded is True), "a link to a blob being deleted"

        # A manifest push needing a link the collector finds stale.
        blob = digest_of("pu", i)
        linked(blob, target)
        [link] = [x for x in store.gc_stale_links(soon()) if x.digest == blob]

        def drop(_: int, link: LinkRef = link) -> bool:
            return store.gc_drop_link(link, soon())

        def push(_: int, blob: str = blob, i: int = i) -> bool:
            try:
                store.put_manifest(target, image(digest_of("pm", i), blob), tag=f"t{i}")
            except BlobsUnlinked:
                return False
            return True

        dropped, pushed = at_once(2, lambda j: (drop, push)[j](j))
        assert not (dropped is True and pushed is True), "a manifest whose link was dropped"
        assert isinstance(dropped, bool) and isinstance(pushed, bool), (dropped, pushed)
    # Whoever won each race, nothing links a blob that is being deleted or gone.
    with engine.connect() as conn:
        states = conn.execute(
            sa.text(
                "SELECT l.digest, b.state FROM repository_blobs l "
                "LEFT JOIN blobs b ON b.digest = l.digest"
            )
        ).all()
    assert states and all(state == "live" for _, state in states), states


def test_one_holder_at_a_time_has_the_collectors_lease(engine: sa.Engine) -> None:
    upgrade(engine)
    store = MetadataStore(engine)
    assert store.take_lease("gc", "a", 60)
    assert not store.take_lease("gc", "b", 60)
    assert store.take_lease("gc", "a", 60), "the holder renews it"
    store.release_lease("gc", "a")
    assert store.take_lease("gc", "b", 0.0)
    assert store.take_lease("gc", "a", 60), "an expired lease is taken over"
