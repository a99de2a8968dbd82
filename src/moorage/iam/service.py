"""Accounts, users, service IDs, API keys, policies, namespaces and registry
tokens. Every write is one transaction; every secret leaves this module only
once, as the return value of the call that created it."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine, delete, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from moorage.iam.errors import Conflict, Invalid, LimitReached, NotFound
from moorage.iam.roles import SERVICES, Grant, RoleError, parse_roles
from moorage.iam.secrets import SecretKeeper, hash_password, new_secret, verify_password
from moorage.metadata.iam_models import (
    Account,
    ApiKey,
    Namespace,
    Policy,
    RegistryToken,
    ServiceId,
    User,
)

USER = "user"
SERVICE_ID = "service_id"
NAMESPACE_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]{2,28}[a-z0-9]$")
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._@-]{0,99}$")
EMAIL_PATTERN = re.compile(r"^[^@\s]{1,64}@[^@\s]{1,189}$")
DEFAULT_SERVICE_ID_LIMIT = 2000
REGISTRY_TOKEN_LIFETIME = timedelta(days=365)


def _now() -> datetime:
    return datetime.now(UTC)


def _aware(value: datetime | None) -> datetime | None:
    return value.replace(tzinfo=UTC) if value is not None and value.tzinfo is None else value


@dataclass(frozen=True)
class Principal:
    """Who a credential speaks for."""

    account_id: str
    kind: str  # "user", "service_id" or "registry_token"
    id: str
    credential_id: str | None = None  # the API key or registry token used
    readwrite: bool = False  # registry tokens only
    region: str | None = None  # registry tokens only


@dataclass(frozen=True)
class Created:
    """A new API key or registry token, with its secret shown this one time."""

    id: str
    secret: str


def _validate_name(value: str, what: str) -> str:
    value = value.strip()
    if not NAME_PATTERN.match(value):
        raise Invalid(f"{what} must be 1 to 100 letters, digits, spaces or ._@- characters")
    return value


def _validate_description(value: str | None) -> str:
    value = (value or "").strip()
    if len(value) > 1000:
        raise Invalid("description must be at most 1000 characters")
    return value


def validate_namespace(name: str) -> str:
    if not NAMESPACE_PATTERN.match(name):
        raise Invalid(
            f"invalid namespace {name[:40]!r}: 4 to 30 lowercase letters, digits, - or _, "
            "starting and ending with a letter or digit"
        )
    return name


class IamService:
    def __init__(
        self,
        engine: Engine,
        keeper: SecretKeeper,
        regions: tuple[str, ...],
        service_id_limit: int = DEFAULT_SERVICE_ID_LIMIT,
    ) -> None:
        self.engine = engine
        self.keeper = keeper
        self.regions = regions
        self.service_id_limit = service_id_limit

    @contextmanager
    def _session(self) -> Iterator[Session]:
        with Session(self.engine, expire_on_commit=False) as session, session.begin():
            yield session

    # -- bootstrap -----------------------------------------------------------

    def _add_account(self, s: Session, name: str, admin_email: str, secret: str) -> tuple[str, str]:
        """An account, its administrator (no password: it signs in with the key), the
        administrator's policies on every service, and its API key."""
        account = Account(id=f"acct-{uuid.uuid4().hex}", name=name, created_at=_now())
        s.add(account)
        s.flush()
        user = User(
            id=f"User-{uuid.uuid4()}",
            account_id=account.id,
            email=admin_email,
            password_hash="!",
            created_at=_now(),
        )
        s.add(user)
        for service in SERVICES:
            s.add(
                self._policy(
                    account.id,
                    USER,
                    user.id,
                    ("Administrator", "Manager"),
                    service,
                    None,
                    None,
                    None,
                )
            )
        key = self._api_key(account.id, USER, user.id, "administrator", "administrator key", secret)
        s.add(key)
        return account.id, key.id

    def bootstrap(self, admin_email: str, api_key: str | None) -> Created | None:
        """On a fresh installation: an account, its administrator and an API key.
        Returns the key (generated unless given) the first time, None afterwards."""
        with self._session() as s:
            if s.scalar(select(func.count()).select_from(Account)):
                return None
            secret = api_key or new_secret()
            _, key_id = self._add_account(s, "default", admin_email, secret)
            return Created(key_id, secret)

    def create_account(self, name: str, admin_email: str) -> tuple[str, Created]:
        """Another account with its own administrator (user and API key, shown once)."""
        name = _validate_name(name, "account name")
        email = admin_email.strip().lower()
        if not EMAIL_PATTERN.match(email):
            raise Invalid("admin email must look like name@domain")
        secret = new_secret()
        try:
            with self._session() as s:
                account_id, key_id = self._add_account(s, name, email, secret)
        except IntegrityError:
            raise Conflict(f"a user with email {email} already exists") from None
        return account_id, Created(key_id, secret)

    def default_account(self) -> str:
        with Session(self.engine) as s:
            account = s.scalar(select(Account.id).order_by(Account.created_at).limit(1))
        if account is None:
            raise NotFound("no account exists yet")
        return account

    # -- users ---------------------------------------------------------------

    def create_user(self, account_id: str, email: str, password: str) -> User:
        email = email.strip().lower()
        if not EMAIL_PATTERN.match(email):
            raise Invalid("email must look like name@domain")
        if len(password) < 12:
            raise Invalid("password must be at least 12 characters")
        user = User(
            id=f"User-{uuid.uuid4()}",
            account_id=account_id,
            email=email,
            password_hash=hash_password(password),
            created_at=_now(),
        )
        try:
            with self._session() as s:
                s.add(user)
        except IntegrityError:
            raise Conflict(f"a user with email {email} already exists") from None
        return user

    def users(self, account_id: str) -> list[User]:
        with Session(self.engine) as s:
            return list(
                s.scalars(select(User).where(User.account_id == account_id).order_by(User.email))
            )

    def user(self, account_id: str, ref: str) -> User:
        """A user by ID or email."""
        with Session(self.engine) as s:
            user = s.scalar(
                select(User).where(
                    User.account_id == account_id, (User.id == ref) | (User.email == ref.lower())
                )
            )
        if user is None:
            raise NotFound(f"user {ref} not found")
        return user

    def delete_user(self, account_id: str, ref: str) -> None:
        user = self.user(account_id, ref)
        with self._session() as s:
            self._delete_subject(s, USER, user.id)
            s.execute(delete(User).where(User.id == user.id))

    # -- service IDs ---------------------------------------------------------

    def create_service_id(self, account_id: str, name: str, description: str | None) -> ServiceId:
        name = _validate_name(name, "service ID name")
        with self._session() as s:
            count = s.scalar(
                select(func.count())
                .select_from(ServiceId)
                .where(ServiceId.account_id == account_id)
            )
            if (count or 0) >= self.service_id_limit:
                raise LimitReached(
                    f"the account has reached its limit of {self.service_id_limit} service IDs"
                )
            if s.scalar(
                select(ServiceId.id).where(
                    ServiceId.account_id == account_id, ServiceId.name == name
                )
            ):
                raise Conflict(f"a service ID named {name!r} already exists")
            service_id = ServiceId(
                id=f"ServiceId-{uuid.uuid4()}",
                account_id=account_id,
                name=name,
                description=_validate_description(description),
                created_at=_now(),
            )
            s.add(service_id)
        return service_id

    def service_ids(self, account_id: str) -> list[ServiceId]:
        with Session(self.engine) as s:
            return list(
                s.scalars(
                    select(ServiceId)
                    .where(ServiceId.account_id == account_id)
                    .order_by(ServiceId.name)
                )
            )

    def service_id(self, account_id: str, ref: str) -> ServiceId:
        """A service ID by ID or name, as the seed's commands accept either."""
        with Session(self.engine) as s:
            found = s.scalar(
                select(ServiceId).where(
                    ServiceId.account_id == account_id,
                    (ServiceId.id == ref) | (ServiceId.name == ref),
                )
            )
        if found is None:
            raise NotFound(f"service ID {ref} not found")
        return found

    def delete_service_id(self, account_id: str, ref: str) -> None:
        found = self.service_id(account_id, ref)
        with self._session() as s:
            self._delete_subject(s, SERVICE_ID, found.id)
            s.execute(delete(ServiceId).where(ServiceId.id == found.id))

    @staticmethod
    def _delete_subject(s: Session, kind: str, subject_id: str) -> None:
        s.execute(delete(ApiKey).where(ApiKey.owner_kind == kind, ApiKey.owner_id == subject_id))
        s.execute(
            delete(Policy).where(Policy.subject_kind == kind, Policy.subject_id == subject_id)
        )

    # -- API keys ------------------------------------------------------------

    def _api_key(
        self,
        account_id: str,
        kind: str,
        owner_id: str,
        name: str,
        description: str | None,
        secret: str,
    ) -> ApiKey:
        return ApiKey(
            id=f"ApiKey-{uuid.uuid4()}",
            account_id=account_id,
            owner_kind=kind,
            owner_id=owner_id,
            name=_validate_name(name, "API key name"),
            description=_validate_description(description),
            locked=False,
            digest=self.keeper.digest(secret),
            created_at=_now(),
        )

    def create_api_key(
        self, account_id: str, kind: str, owner_id: str, name: str, description: str | None
    ) -> Created:
        secret = new_secret()
        key = self._api_key(account_id, kind, owner_id, name, description, secret)
        with self._session() as s:
            s.add(key)
        return Created(key.id, secret)

    def api_keys(self, account_id: str, kind: str, owner_id: str) -> list[ApiKey]:
        with Session(self.engine) as s:
            return list(
                s.scalars(
                    select(ApiKey)
                    .where(
                        ApiKey.account_id == account_id,
                        ApiKey.owner_kind == kind,
                        ApiKey.owner_id == owner_id,
                    )
                    .order_by(ApiKey.created_at)
                )
            )

    def api_key(self, account_id: str, ref: str) -> ApiKey:
        with Session(self.engine) as s:
            found = s.scalar(
                select(ApiKey).where(
                    ApiKey.account_id == account_id, (ApiKey.id == ref) | (ApiKey.name == ref)
                )
            )
        if found is None:
            raise NotFound(f"API key {ref} not found")
        return found

    def set_api_key_locked(self, account_id: str, ref: str, locked: bool) -> ApiKey:
        key = self.api_key(account_id, ref)
        with self._session() as s:
            s.get_one(ApiKey, key.id).locked = locked
        key.locked = locked
        return key

    def delete_api_key(self, account_id: str, ref: str) -> None:
        key = self.api_key(account_id, ref)
        with self._session() as s:
            s.execute(delete(ApiKey).where(ApiKey.id == key.id))

    # -- authentication ------------------------------------------------------

    def authenticate_api_key(self, secret: str) -> Principal | None:
        """The key's owner, or None for an unknown, locked or orphaned key. The
        look-up is by keyed HMAC, so timing reveals nothing about the secret."""
        if not secret or len(secret) > 512:
            return None
        with Session(self.engine) as s:
            key = s.scalar(select(ApiKey).where(ApiKey.digest == self.keeper.digest(secret)))
            if key is None or key.locked:
                return None
            return Principal(key.account_id, key.owner_kind, key.owner_id, credential_id=key.id)

    def describe_api_key(self, secret: str) -> ApiKey | None:
        """The key a secret belongs to, locked or not: for diagnosis, never for sign-in."""
        if not secret or len(secret) > 512:
            return None
        with Session(self.engine) as s:
            return s.scalar(select(ApiKey).where(ApiKey.digest == self.keeper.digest(secret)))

    def credential_active(self, principal: Principal) -> bool:
        """Whether the credential behind a principal still works (checked on refresh)."""
        with Session(self.engine) as s:
            if principal.kind == "registry_token":
                token = s.get(RegistryToken, principal.credential_id)
                expires = _aware(token.expires_at) if token else None
                return token is not None and (expires is None or expires > _now())
            if principal.credential_id is None:
                return s.get(User, principal.id) is not None
            key = s.get(ApiKey, principal.credential_id)
            return key is not None and not key.locked

    def authenticate_password(self, email: str, password: str) -> Principal | None:
        with Session(self.engine) as s:
            user = s.scalar(select(User).where(User.email == email.strip().lower()))
        if user is None:
            verify_password(password, hash_password("equalize-timing"))
            return None
        if not verify_password(password, user.password_hash):
            return None
        return Principal(user.account_id, USER, user.id)

    # -- policies ------------------------------------------------------------

    def _policy(
        self,
        account_id: str,
        kind: str,
        subject_id: str,
        roles: tuple[str, ...],
        service_name: str,
        region: str | None,
        resource_type: str | None,
        resource: str | None,
    ) -> Policy:
        return Policy(
            id=f"Policy-{uuid.uuid4()}",
            account_id=account_id,
            subject_kind=kind,
            subject_id=subject_id,
            roles=",".join(roles),
            service_name=service_name,
            region=region,
            resource_type=resource_type,
            resource=resource,
            created_at=_now(),
        )

    def create_policy(
        self,
        account_id: str,
        kind: str,
        subject_id: str,
        roles: str,
        service_name: str,
        region: str | None = None,
        resource_type: str | None = None,
        resource: str | None = None,
    ) -> Policy:
        try:
            parsed = parse_roles(roles)
        except RoleError as exc:
            raise Invalid(str(exc)) from exc
        if service_name not in SERVICES:
            raise Invalid(f"unknown service {service_name!r}; valid: {', '.join(SERVICES)}")
        if region is not None and region not in self.regions:
            raise Invalid(f"unknown region {region!r}; valid: {', '.join(self.regions)}")
        if (resource_type is None) != (resource is None):
            raise Invalid("--resource-type and --resource go together")
        if resource_type is not None:
            if resource_type != "namespace":
                raise Invalid("the only resource type is 'namespace'")
            validate_namespace(resource or "")
        policy = self._policy(
            account_id, kind, subject_id, parsed, service_name, region, resource_type, resource
        )
        with self._session() as s:
            duplicate = s.scalar(
                select(Policy.id).where(
                    Policy.subject_kind == kind,
                    Policy.subject_id == subject_id,
                    Policy.roles == policy.roles,
                    Policy.service_name == service_name,
                    Policy.region.is_(None) if region is None else Policy.region == region,
                    Policy.resource.is_(None) if resource is None else Policy.resource == resource,
                )
            )
            if duplicate:
                raise Conflict(f"an identical policy already exists: {duplicate}")
            s.add(policy)
        return policy

    def policies(self, account_id: str, kind: str, subject_id: str) -> list[Policy]:
        with Session(self.engine) as s:
            return list(
                s.scalars(
                    select(Policy)
                    .where(
                        Policy.account_id == account_id,
                        Policy.subject_kind == kind,
                        Policy.subject_id == subject_id,
                    )
                    .order_by(Policy.created_at)
                )
            )

    def delete_policy(self, account_id: str, policy_id: str) -> None:
        with self._session() as s:
            result = s.execute(
                delete(Policy).where(Policy.account_id == account_id, Policy.id == policy_id)
            )
            if not result.rowcount:  # type: ignore[attr-defined]
                raise NotFound(f"policy {policy_id} not found")

    def grants(self, principal: Principal) -> list[Grant]:
        """What a principal may do, as pure data for in-memory decisions."""
        if principal.kind == "registry_token":
            roles = ("Writer",) if principal.readwrite else ("Reader",)
            return [Grant.of(roles, "container-registry", principal.region, None)]
        with Session(self.engine) as s:
            rows = s.execute(
                select(Policy.roles, Policy.service_name, Policy.region, Policy.resource).where(
                    Policy.subject_kind == principal.kind, Policy.subject_id == principal.id
                )
            ).all()
        return [Grant.of(r.split(","), svc, region, res) for r, svc, region, res in rows]

    # -- namespaces ----------------------------------------------------------

    def add_namespace(self, account_id: str, region: str, name: str) -> Namespace:
        validate_namespace(name)
        namespace = Namespace(region=region, name=name, account_id=account_id, created_at=_now())
        try:
            with self._session() as s:
                s.add(namespace)
        except IntegrityError:
            raise Conflict(f"namespace {name!r} already exists in {region}") from None
        return namespace

    def namespaces(self, account_id: str, region: str) -> list[Namespace]:
        with Session(self.engine) as s:
            return list(
                s.scalars(
                    select(Namespace)
                    .where(Namespace.account_id == account_id, Namespace.region == region)
                    .order_by(Namespace.name)
                )
            )

    def namespace_owner(self, region: str, name: str) -> str | None:
        with Session(self.engine) as s:
            return s.scalar(
                select(Namespace.account_id).where(
                    Namespace.region == region, Namespace.name == name
                )
            )

    def remove_namespace(self, account_id: str, region: str, name: str) -> None:
        with self._session() as s:
            result = s.execute(
                delete(Namespace).where(
                    Namespace.account_id == account_id,
                    Namespace.region == region,
                    Namespace.name == name,
                )
            )
            if not result.rowcount:  # type: ignore[attr-defined]
                raise NotFound(f"namespace {name!r} not found in {region}")

    # -- registry tokens -----------------------------------------------------

    def add_registry_token(
        self,
        account_id: str,
        region: str,
        description: str | None,
        readwrite: bool,
        non_expiring: bool,
    ) -> Created:
        value = new_secret()
        token = RegistryToken(
            id=str(uuid.uuid4()),
            account_id=account_id,
            region=region,
            description=_validate_description(description),
            readwrite=readwrite,
            expires_at=None if non_expiring else _now() + REGISTRY_TOKEN_LIFETIME,
            digest=self.keeper.digest(value),
            sealed=self.keeper.seal(value),
            created_at=_now(),
        )
        with self._session() as s:
            s.add(token)
        return Created(token.id, value)

    def registry_tokens(self, account_id: str, region: str) -> list[RegistryToken]:
        with Session(self.engine) as s:
            return list(
                s.scalars(
                    select(RegistryToken)
                    .where(RegistryToken.account_id == account_id, RegistryToken.region == region)
                    .order_by(RegistryToken.created_at)
                )
            )

    def _registry_token(self, account_id: str, token_id: str) -> RegistryToken:
        with Session(self.engine) as s:
            token = s.scalar(
                select(RegistryToken).where(
                    RegistryToken.account_id == account_id, RegistryToken.id == token_id
                )
            )
        if token is None:
            raise NotFound(f"registry token {token_id} not found")
        return token

    def registry_token_value(self, account_id: str, token_id: str) -> str:
        return self.keeper.unseal(self._registry_token(account_id, token_id).sealed)

    def remove_registry_token(self, account_id: str, token_id: str) -> None:
        token = self._registry_token(account_id, token_id)
        with self._session() as s:
            s.execute(delete(RegistryToken).where(RegistryToken.id == token.id))

    def authenticate_registry_token(self, value: str, region: str) -> Principal | None:
        if not value or len(value) > 512:
            return None
        with Session(self.engine) as s:
            token = s.scalar(
                select(RegistryToken).where(RegistryToken.digest == self.keeper.digest(value))
            )
        if token is None or token.region != region:
            return None
        expires = _aware(token.expires_at)
        if expires is not None and expires <= _now():
            return None
        return Principal(
            token.account_id,
            "registry_token",
            token.id,
            credential_id=token.id,
            readwrite=token.readwrite,
            region=token.region,
        )
