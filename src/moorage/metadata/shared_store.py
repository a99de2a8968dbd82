"""The state replicas share besides registry and IAM data: signing keys,
recent failed sign-ins and the installation's settings.

Every method is one transaction and blocks: call it from a worker thread.
Values cross this boundary as plain records and bytes; what the bytes mean
(sealed keys) is the caller's."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, delete, func, select

from moorage.metadata.changes import KEYS_TOPIC, ChangeFeed, LocalFeed
from moorage.metadata.database import advisory_xact_lock, upsert, writer
from moorage.metadata.shared_models import InstallationSetting, SigninFailure, SigningKeyRow


@dataclass(frozen=True)
class StoredKey:
    kid: str
    created: float  # seconds since the epoch
    sealed: bytes


def _aware(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


_KEY_COLUMNS = (SigningKeyRow.kid, SigningKeyRow.created_at, SigningKeyRow.sealed)


def _key(row: Any) -> StoredKey:
    return StoredKey(str(row[0]), _aware(row[1]).timestamp(), bytes(row[2]))


class SigningKeyStore:
    """Contract: ``rotate`` creates at most one key however many processes ask
    at once: under one lock it looks at the newest key again and calls
    ``make`` only if that key is still older than the rotation period.
    Every change is announced on ``changes`` (topic ``keys``)."""

    def __init__(self, engine: Engine, changes: ChangeFeed | None = None) -> None:
        self.engine = engine
        self.changes: ChangeFeed = changes or LocalFeed()
        self._writer = writer(engine)

    def all(self) -> list[StoredKey]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(*_KEY_COLUMNS).order_by(SigningKeyRow.created_at)).all()
        return [_key(r) for r in rows]

    def find(self, kid: str) -> StoredKey | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(*_KEY_COLUMNS).where(SigningKeyRow.kid == kid)).first()
        return None if row is None else _key(row)

    def rotate(
        self, now: float, rotate_after: float, retain: float, make: Callable[[], StoredKey]
    ) -> bool:
        """Add ``make()`` unless a key younger than ``rotate_after`` exists, and
        drop keys that stopped signing more than ``retain`` seconds ago.
        Returns whether anything changed."""
        changed = False
        with self._writer.begin() as conn:
            advisory_xact_lock(conn, "signing-keys")
            newest = conn.scalar(select(func.max(SigningKeyRow.created_at)))
            newest_at = _aware(newest).timestamp() if newest is not None else None
            if newest_at is None or now - newest_at > rotate_after:
                key = make()
                conn.execute(
                    upsert(conn, SigningKeyRow)
                    .values(
                        kid=key.kid,
                        created_at=datetime.fromtimestamp(key.created, UTC),
                        sealed=key.sealed,
                    )
                    .on_conflict_do_nothing(index_elements=["kid"])
                )
                newest_at, changed = key.created, True
            # A key signs until the next one is made, then verifies for
            # rotate_after + retain seconds after its own creation.
            cutoff = datetime.fromtimestamp(now - rotate_after - retain, UTC)
            retired = conn.execute(
                delete(SigningKeyRow).where(
                    SigningKeyRow.created_at < cutoff,
                    SigningKeyRow.created_at < datetime.fromtimestamp(newest_at, UTC),
                )
            )
            changed = changed or bool(retired.rowcount)
            if changed:
                self.changes.announce(conn, [KEYS_TOPIC])
        if changed:
            self.changes.delivered([KEYS_TOPIC])
        return changed

    def import_keys(self, keys: Sequence[StoredKey]) -> int:
        """Add keys that exist nowhere else yet (from an older data directory)."""
        added = 0
        with self._writer.begin() as conn:
            for key in keys:
                result = conn.execute(
                    upsert(conn, SigningKeyRow)
                    .values(
                        kid=key.kid,
                        created_at=datetime.fromtimestamp(key.created, UTC),
                        sealed=key.sealed,
                    )
                    .on_conflict_do_nothing(index_elements=["kid"])
                )
                added += result.rowcount or 0
            if added:
                self.changes.announce(conn, [KEYS_TOPIC])
        if added:
            self.changes.delivered([KEYS_TOPIC])
        return added


class FailureStore:
    """Failed sign-in attempts per throttle key, for a sliding window.

    Contract: ``reserve`` counts an attempt against every key only if none
    of them is at its ceiling, atomically with the check: attempts racing in
    other threads, processes or replicas are counted before this one or
    after it, never beside it. It returns the ids to ``forgive`` when the
    attempt succeeds, or the seconds until the keys may try again."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._writer = writer(engine)

    def reserve(
        self, keys: Sequence[tuple[str, int]], now: float, window: float
    ) -> tuple[list[int], dict[str, float]]:
        """``keys``: (key, ceiling) pairs. Returns (ids, {}) when counted, or
        ([], {key: seconds to wait}) for the keys at their ceiling."""
        since = now - window
        with self._writer.begin() as conn:
            for key, _ in sorted(keys):  # one order everywhere: no deadlocks
                advisory_xact_lock(conn, "signin:" + key)
            blocked: dict[str, float] = {}
            for key, ceiling in keys:
                recent = list(
                    conn.scalars(
                        select(SigninFailure.at)
                        .where(SigninFailure.key == key, SigninFailure.at > since)
                        .order_by(SigninFailure.at.desc())
                        .limit(ceiling)
                    )
                )
                if len(recent) >= ceiling:
                    # The ceiling-th most recent failure ages out first.
                    blocked[key] = max(recent[ceiling - 1] + window - now, 0.001)
            if blocked:
                return [], blocked
            ids = [
                int(
                    conn.scalar(
                        upsert(conn, SigninFailure)
                        .values(key=key, at=now)
                        .returning(SigninFailure.id)
                    )
                    or 0
                )
                for key, _ in keys
            ]
            return ids, {}

    def forgive(self, ids: Sequence[int]) -> None:
        if not ids:
            return
        with self._writer.begin() as conn:
            conn.execute(delete(SigninFailure).where(SigninFailure.id.in_(list(ids))))

    def prune(self, before: float) -> int:
        with self._writer.begin() as conn:
            result = conn.execute(delete(SigninFailure).where(SigninFailure.at <= before))
            return int(result.rowcount or 0)


class InstallationStore:
    """Settings of the installation as a whole, by name."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._writer = writer(engine)

    def setdefault(self, name: str, value: str) -> str:
        """The stored value of ``name``; ``value`` is stored first if there is none."""
        with self._writer.begin() as conn:
            conn.execute(
                upsert(conn, InstallationSetting)
                .values(name=name, value=value)
                .on_conflict_do_nothing(index_elements=["name"])
            )
            stored = conn.scalar(
                select(InstallationSetting.value).where(InstallationSetting.name == name)
            )
        return str(stored)


__all__ = ["FailureStore", "InstallationStore", "SigningKeyStore", "StoredKey"]
