"""The IAM store: accounts, identities and their memberships, service IDs, API
keys, policies, namespaces and registry tokens, as plain records.

The IAM service composes these calls inside one ``IamStore.write()`` (one
transaction) or ``IamStore.read()``; nothing above this module sees an ORM row
or a SQLAlchemy exception. Secrets appear here only as keyed digests and
sealed bytes, which the service makes and checks."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum

from sqlalchemy import Engine, delete, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from moorage.metadata.database import upsert, writer
from moorage.metadata.iam_models import (
    Account,
    AccountMember,
    ApiKey,
    Namespace,
    Policy,
    RegistryToken,
    ServiceId,
    User,
)


class SubjectKind(StrEnum):
    USER = "user"
    SERVICE_ID = "service_id"
    REGISTRY_TOKEN = "registry_token"


class Duplicate(Exception):
    """A unique name, email, digest or membership already exists."""


def _aware(value: datetime) -> datetime:
    """SQLite returns naive datetimes; every record carries UTC."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


@dataclass(frozen=True)
class UserRecord:
    id: str
    email: str
    created_at: datetime  # when the identity joined the account listed, or was created


@dataclass(frozen=True)
class ServiceIdRecord:
    id: str
    account_id: str
    name: str
    description: str
    created_at: datetime


@dataclass(frozen=True)
class ApiKeyRecord:
    id: str
    account_id: str
    owner_kind: SubjectKind
    owner_id: str
    name: str
    description: str
    locked: bool
    locked_by: str | None
    created_at: datetime


@dataclass(frozen=True)
class PolicyRecord:
    id: str
    account_id: str
    subject_kind: SubjectKind
    subject_id: str
    roles: tuple[str, ...]
    service_name: str
    region: str | None
    resource_type: str | None
    resource: str | None
    created_at: datetime


@dataclass(frozen=True)
class NamespaceRecord:
    region: str
    name: str
    account_id: str
    created_at: datetime


@dataclass(frozen=True)
class RegistryTokenRecord:
    id: str
    account_id: str
    region: str
    description: str
    readwrite: bool
    expires_at: datetime | None
    created_at: datetime


def _user(row: User, joined: datetime | None = None) -> UserRecord:
    return UserRecord(row.id, row.email, _aware(joined or row.created_at))


def _service_id(row: ServiceId) -> ServiceIdRecord:
    return ServiceIdRecord(
        row.id, row.account_id, row.name, row.description, _aware(row.created_at)
    )


def _api_key(row: ApiKey) -> ApiKeyRecord:
    return ApiKeyRecord(
        row.id,
        row.account_id,
        SubjectKind(row.owner_kind),
        row.owner_id,
        row.name,
        row.description,
        bool(row.locked),
        row.locked_by,
        _aware(row.created_at),
    )


def _policy(row: Policy) -> PolicyRecord:
    return PolicyRecord(
        row.id,
        row.account_id,
        SubjectKind(row.subject_kind),
        row.subject_id,
        tuple(row.roles.split(",")),
        row.service_name,
        row.region,
        row.resource_type,
        row.resource,
        _aware(row.created_at),
    )


def _namespace(row: Namespace) -> NamespaceRecord:
    return NamespaceRecord(row.region, row.name, row.account_id, _aware(row.created_at))


def _token(row: RegistryToken) -> RegistryTokenRecord:
    return RegistryTokenRecord(
        row.id,
        row.account_id,
        row.region,
        row.description,
        bool(row.readwrite),
        _aware(row.expires_at) if row.expires_at is not None else None,
        _aware(row.created_at),
    )


class IamTx:
    """The IAM operations of one transaction."""

    def __init__(self, session: Session) -> None:
        self.s = session

    def _insert(self, row: object) -> None:
        try:
            with self.s.begin_nested():
                self.s.add(row)
        except IntegrityError:
            raise Duplicate() from None

    # -- accounts --------------------------------------------------------------

    def account_count(self) -> int:
        return int(self.s.scalar(select(func.count()).select_from(Account)) or 0)

    def first_account(self) -> str | None:
        return self.s.scalar(select(Account.id).order_by(Account.created_at).limit(1))

    def insert_account(self, account_id: str, name: str, at: datetime) -> None:
        self._insert(Account(id=account_id, name=name, created_at=at))

    # -- identities and memberships -------------------------------------------

    def identity_by_email(self, email: str) -> tuple[UserRecord, str] | None:
        """An identity and its password salt."""
        row = self.s.scalar(select(User).where(User.email == email))
        return None if row is None else (_user(row), row.salt)

    def identity(self, user_id: str) -> UserRecord | None:
        row = self.s.get(User, user_id)
        return None if row is None else _user(row)

    def insert_identity(self, user_id: str, email: str, salt: str, at: datetime) -> None:
        self._insert(User(id=user_id, email=email, salt=salt, created_at=at))

    def ensure_identity(self, user_id: str, email: str, salt: str, at: datetime) -> tuple[str, str]:
        """The identity of ``email`` (its ID and salt), created with these values
        unless it exists, also when another writer creates it at this moment."""
        conn = self.s.connection()
        conn.execute(
            upsert(conn, User)
            .values(id=user_id, email=email, salt=salt, created_at=at)
            .on_conflict_do_nothing(index_elements=["email"])
        )
        row = self.s.execute(select(User.id, User.salt).where(User.email == email)).one()
        return str(row[0]), str(row[1])

    def delete_identity(self, user_id: str) -> None:
        self.s.execute(delete(User).where(User.id == user_id))

    def add_member(self, account_id: str, user_id: str, password_hash: str, at: datetime) -> None:
        self._insert(
            AccountMember(
                account_id=account_id, user_id=user_id, password_hash=password_hash, created_at=at
            )
        )

    def passwords(self, user_id: str) -> list[tuple[str, str]]:
        """(account, password hash) of each of an identity's memberships."""
        return [
            (account, stored)
            for account, stored in self.s.execute(
                select(AccountMember.account_id, AccountMember.password_hash).where(
                    AccountMember.user_id == user_id
                )
            )
        ]

    def remove_member(self, account_id: str, user_id: str) -> bool:
        result = self.s.execute(
            delete(AccountMember).where(
                AccountMember.account_id == account_id, AccountMember.user_id == user_id
            )
        )
        return bool(result.rowcount)  # type: ignore[attr-defined]

    def accounts_of(self, user_id: str) -> list[str]:
        return list(
            self.s.scalars(
                select(AccountMember.account_id)
                .where(AccountMember.user_id == user_id)
                .order_by(AccountMember.created_at)
            )
        )

    def members(self, account_id: str) -> list[UserRecord]:
        rows = self.s.execute(
            select(User, AccountMember.created_at)
            .join(AccountMember, AccountMember.user_id == User.id)
            .where(AccountMember.account_id == account_id)
            .order_by(User.email)
        ).all()
        return [_user(user, joined) for user, joined in rows]

    def member(self, account_id: str, ref: str) -> UserRecord | None:
        """A member of the account by user ID or email; nobody else's."""
        row = self.s.execute(
            select(User, AccountMember.created_at)
            .join(AccountMember, AccountMember.user_id == User.id)
            .where(
                AccountMember.account_id == account_id,
                or_(User.id == ref, User.email == ref),
            )
        ).first()
        return None if row is None else _user(row[0], row[1])

    # -- service IDs -----------------------------------------------------------

    def service_id_count(self, account_id: str) -> int:
        return int(
            self.s.scalar(
                select(func.count())
                .select_from(ServiceId)
                .where(ServiceId.account_id == account_id)
            )
            or 0
        )

    def insert_service_id(self, record: ServiceIdRecord) -> None:
        self._insert(
            ServiceId(
                id=record.id,
                account_id=record.account_id,
                name=record.name,
                description=record.description,
                created_at=record.created_at,
            )
        )

    def service_ids(self, account_id: str) -> list[ServiceIdRecord]:
        rows = self.s.scalars(
            select(ServiceId).where(ServiceId.account_id == account_id).order_by(ServiceId.name)
        )
        return [_service_id(r) for r in rows]

    def service_id(self, account_id: str, ref: str) -> ServiceIdRecord | None:
        """By ID or name, within one account."""
        row = self.s.scalar(
            select(ServiceId).where(
                ServiceId.account_id == account_id,
                or_(ServiceId.id == ref, ServiceId.name == ref),
            )
        )
        return None if row is None else _service_id(row)

    def subject_exists(self, kind: SubjectKind, subject_id: str) -> bool:
        if kind == SubjectKind.USER:
            return self.s.get(User, subject_id) is not None
        if kind == SubjectKind.SERVICE_ID:
            return self.s.get(ServiceId, subject_id) is not None
        return self.s.get(RegistryToken, subject_id) is not None

    def delete_service_id(self, service_id: str) -> None:
        self.s.execute(delete(ServiceId).where(ServiceId.id == service_id))

    def delete_subject_in(self, account_id: str, kind: SubjectKind, subject_id: str) -> None:
        """A subject's API keys and policies in one account."""
        for table, kind_col, id_col in (
            (ApiKey, ApiKey.owner_kind, ApiKey.owner_id),
            (Policy, Policy.subject_kind, Policy.subject_id),
        ):
            self.s.execute(
                delete(table).where(
                    table.account_id == account_id, kind_col == kind.value, id_col == subject_id
                )
            )

    # -- API keys --------------------------------------------------------------

    def insert_api_key(self, record: ApiKeyRecord, digest: str) -> None:
        self._insert(
            ApiKey(
                id=record.id,
                account_id=record.account_id,
                owner_kind=record.owner_kind.value,
                owner_id=record.owner_id,
                name=record.name,
                description=record.description,
                locked=record.locked,
                locked_by=record.locked_by,
                digest=digest,
                created_at=record.created_at,
            )
        )

    def api_keys(self, account_id: str, kind: SubjectKind, owner_id: str) -> list[ApiKeyRecord]:
        rows = self.s.scalars(
            select(ApiKey)
            .where(
                ApiKey.account_id == account_id,
                ApiKey.owner_kind == kind.value,
                ApiKey.owner_id == owner_id,
            )
            .order_by(ApiKey.created_at)
        )
        return [_api_key(r) for r in rows]

    def api_key(
        self, account_id: str, ref: str, owner: tuple[SubjectKind, str] | None = None
    ) -> list[ApiKeyRecord]:
        """Keys of an account by ID or name (names need not be unique), optionally
        only those of one owner."""
        stmt = select(ApiKey).where(
            ApiKey.account_id == account_id, or_(ApiKey.id == ref, ApiKey.name == ref)
        )
        if owner is not None:
            stmt = stmt.where(ApiKey.owner_kind == owner[0].value, ApiKey.owner_id == owner[1])
        return [_api_key(r) for r in self.s.scalars(stmt.order_by(ApiKey.created_at))]

    def api_key_by_digest(self, digest: str) -> ApiKeyRecord | None:
        row = self.s.scalar(select(ApiKey).where(ApiKey.digest == digest))
        return None if row is None else _api_key(row)

    def api_key_by_id(self, key_id: str) -> ApiKeyRecord | None:
        row = self.s.get(ApiKey, key_id)
        return None if row is None else _api_key(row)

    def set_api_key_lock(self, key_id: str, locked: bool, by: str | None) -> None:
        self.s.execute(
            update(ApiKey).where(ApiKey.id == key_id).values(locked=locked, locked_by=by)
        )

    def update_api_key(self, key_id: str, name: str, description: str) -> None:
        self.s.execute(
            update(ApiKey).where(ApiKey.id == key_id).values(name=name, description=description)
        )

    def delete_api_key(self, key_id: str) -> None:
        self.s.execute(delete(ApiKey).where(ApiKey.id == key_id))

    # -- policies --------------------------------------------------------------

    def insert_policy(self, record: PolicyRecord) -> None:
        self._insert(
            Policy(
                id=record.id,
                account_id=record.account_id,
                subject_kind=record.subject_kind.value,
                subject_id=record.subject_id,
                roles=",".join(record.roles),
                service_name=record.service_name,
                region=record.region,
                resource_type=record.resource_type,
                resource=record.resource,
                created_at=record.created_at,
            )
        )

    def policies(
        self, accounts: Iterable[str], kind: SubjectKind, subject_id: str
    ) -> list[PolicyRecord]:
        rows = self.s.scalars(
            select(Policy)
            .where(
                Policy.account_id.in_(list(accounts)),
                Policy.subject_kind == kind.value,
                Policy.subject_id == subject_id,
            )
            .order_by(Policy.created_at)
        )
        return [_policy(r) for r in rows]

    def identical_policy(self, record: PolicyRecord) -> str | None:
        return self.s.scalar(
            select(Policy.id).where(
                Policy.account_id == record.account_id,
                Policy.subject_kind == record.subject_kind.value,
                Policy.subject_id == record.subject_id,
                Policy.roles == ",".join(record.roles),
                Policy.service_name == record.service_name,
                Policy.region.is_(None)
                if record.region is None
                else Policy.region == record.region,
                Policy.resource.is_(None)
                if record.resource is None
                else Policy.resource == record.resource,
            )
        )

    def policy(self, account_id: str, policy_id: str) -> PolicyRecord | None:
        row = self.s.scalar(
            select(Policy).where(Policy.account_id == account_id, Policy.id == policy_id)
        )
        return None if row is None else _policy(row)

    def delete_policy(self, policy_id: str) -> None:
        self.s.execute(delete(Policy).where(Policy.id == policy_id))

    # -- namespaces ------------------------------------------------------------

    def insert_namespace(self, record: NamespaceRecord) -> None:
        self._insert(
            Namespace(
                region=record.region,
                name=record.name,
                account_id=record.account_id,
                created_at=record.created_at,
            )
        )

    def namespaces(self, account_id: str, region: str) -> list[NamespaceRecord]:
        rows = self.s.scalars(
            select(Namespace)
            .where(Namespace.account_id == account_id, Namespace.region == region)
            .order_by(Namespace.name)
        )
        return [_namespace(r) for r in rows]

    def namespace(self, region: str, name: str) -> NamespaceRecord | None:
        row = self.s.get(Namespace, (region, name))
        return None if row is None else _namespace(row)

    # -- registry tokens -------------------------------------------------------

    def insert_token(self, record: RegistryTokenRecord, digest: str, sealed: bytes) -> None:
        self._insert(
            RegistryToken(
                id=record.id,
                account_id=record.account_id,
                region=record.region,
                description=record.description,
                readwrite=record.readwrite,
                expires_at=record.expires_at,
                digest=digest,
                sealed=sealed,
                created_at=record.created_at,
            )
        )

    def tokens(self, account_id: str, region: str) -> list[RegistryTokenRecord]:
        rows = self.s.scalars(
            select(RegistryToken)
            .where(RegistryToken.account_id == account_id, RegistryToken.region == region)
            .order_by(RegistryToken.created_at)
        )
        return [_token(r) for r in rows]

    def token(
        self, account_id: str, region: str, token_id: str
    ) -> tuple[RegistryTokenRecord, bytes] | None:
        """One token of an account in one region, with its sealed value."""
        row = self.s.scalar(
            select(RegistryToken).where(
                RegistryToken.account_id == account_id,
                RegistryToken.region == region,
                RegistryToken.id == token_id,
            )
        )
        return None if row is None else (_token(row), row.sealed)

    def token_by_id(self, token_id: str) -> RegistryTokenRecord | None:
        row = self.s.get(RegistryToken, token_id)
        return None if row is None else _token(row)

    def token_by_digest(self, digest: str) -> RegistryTokenRecord | None:
        row = self.s.scalar(select(RegistryToken).where(RegistryToken.digest == digest))
        return None if row is None else _token(row)

    def delete_token(self, token_id: str) -> None:
        self.s.execute(delete(RegistryToken).where(RegistryToken.id == token_id))


class IamStore:
    """Contract: ``write()`` is one transaction, committed when the block ends
    without an exception and rolled back otherwise; ``read()`` sees one
    consistent snapshot. A unique value inserted twice raises ``Duplicate``
    from the insert itself, leaving the transaction usable."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._writer = writer(engine)

    @contextmanager
    def write(self) -> Iterator[IamTx]:
        with Session(self._writer, expire_on_commit=False) as session, session.begin():
            yield IamTx(session)

    @contextmanager
    def read(self) -> Iterator[IamTx]:
        with Session(self.engine) as session:
            yield IamTx(session)
