"""The metadata stores on both databases they support: the same Alembic
history with data in it, and writers racing for the same rows (threads here
stand for the processes and replicas of a real deployment: each has its own
connection and transaction)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from moorage.iam.errors import Conflict
from moorage.iam.secrets import SecretKeeper
from moorage.iam.service import SERVICE_ID, IamService
from moorage.metadata import MetadataStore, NewManifest, RepoRef, create_metadata_engine, upgrade
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
        store.record_blob(repo, blob, 10)
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


def test_racing_identical_policies_make_one(engine: sa.Engine) -> None:
    upgrade(engine)
    iam = IamService(IamStore(engine), SecretKeeper(b"k" * 32), ("us-south",))
    iam.bootstrap("admin@a.test", None)
    account = iam.default_account()
    sid = iam.create_service_id(account, "racer", None)
    results = at_once(
        12,
        lambda _: iam.create_policy(account, SERVICE_ID, sid.id, "Reader", "container-registry"),
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
