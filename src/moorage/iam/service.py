"""Accounts, identities, service IDs, API keys, policies, namespaces and
registry tokens: the rules, over the IAM store.

A person is one identity (an email) that can be a member of several accounts;
policies and API keys belong to one account and never reach beyond it. Every
write is one transaction; every secret leaves this module only once, as the
return value of the call that created it. The methods block (database, scrypt):
callers on an event loop run them in a worker thread."""

from __future__ import annotations

import re
import unicodedata
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from functools import cache

from moorage.iam.errors import Conflict, Forbidden, Invalid, LimitReached, NotFound
from moorage.iam.roles import (
    IAM_IDENTITY,
    MANAGE_IDENTITIES,
    MANAGE_POLICIES,
    REGISTRY,
    RESOURCE_SERVICES,
    SERVICE_ROLES,
    SERVICES,
    Grant,
    RoleError,
    allowed_actions,
    parse_roles,
)
from moorage.iam.secrets import (
    SecretKeeper,
    derive,
    hash_password,
    matches,
    new_salt,
    new_secret,
)
from moorage.metadata.iam_store import (
    ApiKeyRecord,
    Duplicate,
    IamStore,
    IamTx,
    NamespaceRecord,
    PolicyRecord,
    RegistryTokenRecord,
    ServiceIdRecord,
    SubjectKind,
    UserRecord,
)

USER = SubjectKind.USER
SERVICE_ID = SubjectKind.SERVICE_ID
REGISTRY_TOKEN = SubjectKind.REGISTRY_TOKEN
NAMESPACE_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]{2,28}[a-z0-9]\Z")
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._@-]{0,99}\Z")
EMAIL_PATTERN = re.compile(r"^[^@\s]{1,64}@[^@\s]{1,189}\Z")
DEFAULT_SERVICE_ID_LIMIT = 2000
REGISTRY_TOKEN_LIFETIME = timedelta(days=365)
NO_PASSWORD = "!"  # a membership that signs in with API keys only


def _now() -> datetime:
    return datetime.now(UTC)


@cache
def _decoy_salt() -> str:
    """The salt an unknown identity is checked under, so that every password
    sign-in costs one scrypt whether the identity exists or not."""
    return new_salt()


@dataclass(frozen=True)
class Principal:
    """Who a credential speaks for, and in which accounts. An API key or a
    registry token acts in its own account; a password sign-in in every account
    the identity is a member of."""

    kind: SubjectKind
    id: str
    accounts: frozenset[str]
    credential_id: str | None = None  # the API key or registry token used
    readwrite: bool = False  # registry tokens only
    region: str | None = None  # registry tokens only

    @property
    def account_id(self) -> str:
        """The one account a management call acts in."""
        if len(self.accounts) != 1:
            raise Forbidden("choose the account to act in")
        return next(iter(self.accounts))

    def acting_in(self, account_id: str) -> Principal:
        if account_id not in self.accounts:
            raise Forbidden("you are not a member of that account")
        return replace(self, accounts=frozenset({account_id}))


@dataclass(frozen=True)
class Created:
    """A new API key or registry token, with its secret shown this one time."""

    id: str
    secret: str


def normalize_identity(value: str) -> str:
    """The one spelling of an email or user name, wherever one comes in: NFKC,
    no surrounding blanks, lower case."""
    return unicodedata.normalize("NFKC", value).strip().lower()


def _validate_email(value: str) -> str:
    email = normalize_identity(value)
    if not EMAIL_PATTERN.match(email):
        raise Invalid("email must look like name@domain")
    return email


ID_PREFIXES = ("ApiKey-", "ServiceId-", "User-", "Policy-", "acct-")


def _validate_name(value: str, what: str) -> str:
    value = value.strip()
    if not NAME_PATTERN.match(value):
        raise Invalid(f"{what} must be 1 to 100 letters, digits, spaces or ._@- characters")
    if value.startswith(ID_PREFIXES):
        raise Invalid(f"{what} must not look like an ID ({', '.join(ID_PREFIXES)}...)")
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


def _password(password: str) -> str:
    if len(password) < 12:
        raise Invalid("password must be at least 12 characters")
    if len(password) > 1024:
        raise Invalid("password must be at most 1024 characters")
    return password


def _member(tx: IamTx, account_id: str, ref: str) -> UserRecord | None:
    """A member by user ID, or by email however it is spelled."""
    return tx.member(account_id, ref) or tx.member(account_id, normalize_identity(ref))


class IamService:
    def __init__(
        self,
        store: IamStore,
        keeper: SecretKeeper,
        regions: tuple[str, ...],
        service_id_limit: int = DEFAULT_SERVICE_ID_LIMIT,
    ) -> None:
        self.store = store
        self.keeper = keeper
        self.regions = regions
        self.service_id_limit = service_id_limit

    # -- accounts ------------------------------------------------------------

    def _add_account(self, tx: IamTx, name: str, admin_email: str, secret: str) -> tuple[str, str]:
        """An account, its administrator (an existing identity joins; a new one has
        no password and signs in with the key), Administrator on every service
        (iam-identity included, so it administers the account as a whole) and
        Manager on the registry and Kubernetes, and an API key."""
        account_id = f"acct-{uuid.uuid4().hex}"
        tx.insert_account(account_id, name, _now())
        user_id, _ = tx.ensure_identity(f"User-{uuid.uuid4()}", admin_email, new_salt(), _now())
        tx.add_member(account_id, user_id, NO_PASSWORD, _now())
        for service in SERVICES:
            roles = (
                ("Manager", "Administrator") if service in RESOURCE_SERVICES else ("Administrator",)
            )
            tx.insert_policy(self._policy(account_id, USER, user_id, roles, service, None, None))
        key_id = self._insert_key(tx, account_id, USER, user_id, "administrator", "", secret)
        return account_id, key_id

    def bootstrap(self, admin_email: str, api_key: str | None) -> Created | None:
        """On a fresh installation: an account, its administrator and an API key.
        Returns the key (generated unless given) the first time, None afterwards."""
        with self.store.write() as tx:
            if tx.account_count():
                return None
            secret = api_key or new_secret()
            _, key_id = self._add_account(tx, "default", _validate_email(admin_email), secret)
            return Created(key_id, secret)

    def create_account(self, name: str, admin_email: str) -> tuple[str, Created]:
        """Another account with its administrator (user and API key, shown once)."""
        name = _validate_name(name, "account name")
        email = _validate_email(admin_email)
        secret = new_secret()
        with self.store.write() as tx:
            account_id, key_id = self._add_account(tx, name, email, secret)
        return account_id, Created(key_id, secret)

    def default_account(self) -> str:
        with self.store.read() as tx:
            account = tx.first_account()
        if account is None:
            raise NotFound("no account exists yet")
        return account

    # -- identities ----------------------------------------------------------

    def invite_user(self, account_id: str, email: str, password: str) -> UserRecord:
        """Make a person a member of the account, with the password this account
        chose for them. An identity that already exists (in another account)
        keeps its passwords there: this one opens this account only, so the
        answer is the same whether the identity existed or not, and no account
        can sign in as its people elsewhere."""
        email = _validate_email(email)
        _password(password)
        with self.store.read() as tx:
            found = tx.identity_by_email(email)
        salt = found[1] if found is not None else new_salt()
        for _ in range(3):
            password_hash = hash_password(password, salt)  # scrypt, before the transaction
            with self.store.write() as tx:
                # Created unless it exists, also when another account (another
                # replica) invites the same person at this moment.
                user_id, actual_salt = tx.ensure_identity(
                    f"User-{uuid.uuid4()}", email, salt, _now()
                )
                if actual_salt == salt:
                    try:
                        tx.add_member(account_id, user_id, password_hash, _now())
                    except Duplicate:
                        raise Conflict(f"{email} is already a member of this account") from None
                    member = tx.member(account_id, user_id)
                    assert member is not None
                    return member
            # The identity appeared under another salt since we looked: hash again.
            salt = actual_salt
        raise Conflict(f"{email} is changing at this moment; try again")  # pragma: no cover

    def users(self, account_id: str) -> list[UserRecord]:
        with self.store.read() as tx:
            return tx.members(account_id)

    def user(self, account_id: str, ref: str) -> UserRecord:
        """A member of the account by ID or email."""
        with self.store.read() as tx:
            user = tx.member(
                account_id, ref if ref.startswith("User-") else normalize_identity(ref)
            )
        if user is None:
            raise NotFound(f"user {ref[:100]} not found")
        return user

    def remove_user(self, account_id: str, ref: str) -> None:
        """The membership goes with the user's keys and policies in this account; the
        identity goes with its last membership."""
        with self.store.write() as tx:
            user = tx.member(
                account_id, ref if ref.startswith("User-") else normalize_identity(ref)
            )
            if user is None:
                raise NotFound(f"user {ref[:100]} not found")
            tx.delete_subject_in(account_id, USER, user.id)
            tx.remove_member(account_id, user.id)
            if not tx.accounts_of(user.id):
                tx.delete_identity(user.id)

    # -- service IDs ---------------------------------------------------------

    def create_service_id(
        self, account_id: str, name: str, description: str | None
    ) -> ServiceIdRecord:
        record = ServiceIdRecord(
            f"ServiceId-{uuid.uuid4()}",
            account_id,
            _validate_name(name, "service ID name"),
            _validate_description(description),
            _now(),
        )
        with self.store.write() as tx:
            if tx.service_id_count(account_id) >= self.service_id_limit:
                raise LimitReached(
                    f"the account has reached its limit of {self.service_id_limit} service IDs"
                )
            if tx.service_id(account_id, record.name) is not None:
                raise Conflict(f"a service ID named {record.name!r} already exists")
            try:
                tx.insert_service_id(record)
            except Duplicate:
                raise Conflict(f"a service ID named {record.name!r} already exists") from None
        return record

    def service_ids(self, account_id: str) -> list[ServiceIdRecord]:
        with self.store.read() as tx:
            return tx.service_ids(account_id)

    def service_id(self, account_id: str, ref: str) -> ServiceIdRecord:
        """A service ID by ID or name, as the seed's commands accept either."""
        with self.store.read() as tx:
            found = tx.service_id(account_id, ref)
        if found is None:
            raise NotFound(f"service ID {ref[:100]} not found")
        return found

    def delete_service_id(self, account_id: str, ref: str) -> None:
        with self.store.write() as tx:
            found = tx.service_id(account_id, ref)
            if found is None:
                raise NotFound(f"service ID {ref[:100]} not found")
            tx.delete_subject_in(account_id, SERVICE_ID, found.id)
            tx.delete_service_id(found.id)

    # -- API keys ------------------------------------------------------------

    def _insert_key(
        self,
        tx: IamTx,
        account_id: str,
        kind: SubjectKind,
        owner_id: str,
        name: str,
        description: str | None,
        secret: str,
    ) -> str:
        record = ApiKeyRecord(
            f"ApiKey-{uuid.uuid4()}",
            account_id,
            kind,
            owner_id,
            _validate_name(name, "API key name"),
            _validate_description(description),
            False,
            None,
            _now(),
        )
        try:
            tx.insert_api_key(record, self.keeper.digest(secret))
        except Duplicate:  # pragma: no cover - 264 random bits
            raise Conflict("that API key already exists") from None
        return record.id

    def create_api_key(
        self,
        account_id: str,
        kind: SubjectKind,
        owner_id: str,
        name: str,
        description: str | None,
    ) -> tuple[ApiKeyRecord, Created]:
        secret = new_secret()
        with self.store.write() as tx:
            key_id = self._insert_key(tx, account_id, kind, owner_id, name, description, secret)
            record = tx.api_key_by_id(key_id)
        assert record is not None
        return record, Created(key_id, secret)

    def api_keys(self, account_id: str, kind: SubjectKind, owner_id: str) -> list[ApiKeyRecord]:
        with self.store.read() as tx:
            return tx.api_keys(account_id, kind, owner_id)

    def api_key(
        self, account_id: str, ref: str, owner: tuple[SubjectKind, str] | None = None
    ) -> ApiKeyRecord:
        """One key by ID or name (an ID always names its key); a name two keys share
        must be given as an ID."""
        with self.store.read() as tx:
            found = tx.api_key(account_id, ref, owner)
        by_id = [k for k in found if k.id == ref]
        if by_id:
            return by_id[0]
        if not found:
            raise NotFound(f"API key {ref[:100]} not found")
        if len(found) > 1:
            raise Conflict(f"{len(found)} API keys are named {ref[:100]!r}; give the key's ID")
        return found[0]

    def set_api_key_lock(
        self, account_id: str, key_id: str, locked: bool, actor: Principal, as_admin: bool
    ) -> ApiKeyRecord:
        """Lock or unlock. A lock set by someone other than the key's owner (an
        administrator) can be undone only by someone allowed to lock keys for
        others, never by the owner alone."""
        with self.store.write() as tx:
            key = tx.api_key_by_id(key_id)
            if key is None or key.account_id != account_id:
                raise NotFound(f"API key {key_id[:100]} not found")
            admin_lock = key.locked and key.locked_by not in (None, key.owner_id)
            if not locked and admin_lock and not as_admin:
                raise Forbidden(
                    "an administrator locked this API key; only an administrator can unlock it"
                )
            # Locking again keeps an administrator's mark, unless an administrator locks.
            by = key.locked_by if locked and admin_lock and not as_admin else actor.id
            tx.set_api_key_lock(key.id, locked, by if locked else None)
            updated = tx.api_key_by_id(key.id)
        assert updated is not None
        return updated

    def update_api_key(
        self, account_id: str, key_id: str, name: str | None, description: str | None
    ) -> ApiKeyRecord:
        with self.store.write() as tx:
            key = tx.api_key_by_id(key_id)
            if key is None or key.account_id != account_id:
                raise NotFound(f"API key {key_id[:100]} not found")
            tx.update_api_key(
                key.id,
                _validate_name(name, "API key name") if name is not None else key.name,
                _validate_description(description) if description is not None else key.description,
            )
            updated = tx.api_key_by_id(key.id)
        assert updated is not None
        return updated

    def delete_api_key(self, account_id: str, key_id: str) -> None:
        with self.store.write() as tx:
            key = tx.api_key_by_id(key_id)
            if key is None or key.account_id != account_id:
                raise NotFound(f"API key {key_id[:100]} not found")
            tx.delete_api_key(key.id)

    # -- authentication ------------------------------------------------------

    def authenticate_api_key(self, secret: str) -> Principal | None:
        """The key's owner in the key's account, or None for an unknown, locked or
        orphaned key. The look-up is by keyed HMAC, so timing reveals nothing."""
        if not secret or len(secret) > 512:
            return None
        with self.store.read() as tx:
            key = tx.api_key_by_digest(self.keeper.digest(secret))
            if key is None or key.locked or not tx.subject_exists(key.owner_kind, key.owner_id):
                return None
            if key.owner_kind == USER and key.account_id not in tx.accounts_of(key.owner_id):
                return None
        return Principal(
            key.owner_kind, key.owner_id, frozenset({key.account_id}), credential_id=key.id
        )

    def describe_api_key(self, secret: str) -> ApiKeyRecord | None:
        """The key a secret belongs to, locked or not: for diagnosis, never for sign-in."""
        if not secret or len(secret) > 512:
            return None
        with self.store.read() as tx:
            return tx.api_key_by_digest(self.keeper.digest(secret))

    def authenticate_password(self, email: str, password: str) -> Principal | None:
        """The identity, acting in each account whose membership this password
        opens. One scrypt whatever happens: the identity's salt serves every
        membership, and an unknown identity is checked under a decoy salt."""
        with self.store.read() as tx:
            found = tx.identity_by_email(normalize_identity(email))
            stored = tx.passwords(found[0].id) if found is not None else []
        salt = found[1] if found is not None else _decoy_salt()
        derived = derive(password[:1024], salt)
        accounts = [account for account, hashed in stored if matches(derived, salt, hashed)]
        if found is None or not accounts:
            return None
        return Principal(USER, found[0].id, frozenset(accounts))

    def authenticate_registry_token(self, value: str, region: str) -> Principal | None:
        if not value or len(value) > 512:
            return None
        with self.store.read() as tx:
            token = tx.token_by_digest(self.keeper.digest(value))
        if token is None or token.region != region:
            return None
        if token.expires_at is not None and token.expires_at <= _now():
            return None
        return Principal(
            REGISTRY_TOKEN,
            token.id,
            frozenset({token.account_id}),
            credential_id=token.id,
            readwrite=token.readwrite,
            region=token.region,
        )

    def credential_active(self, principal: Principal) -> bool:
        """Whether the credential behind a principal still works (on refresh, and
        when an upload outlives its token)."""
        with self.store.read() as tx:
            if principal.kind == REGISTRY_TOKEN:
                token = tx.token_by_id(principal.credential_id or "")
                return token is not None and (token.expires_at is None or token.expires_at > _now())
            if not tx.subject_exists(principal.kind, principal.id):
                return False
            if principal.kind == USER:
                member_of = set(tx.accounts_of(principal.id))
                if not principal.accounts <= member_of:
                    return False
            if principal.credential_id is None:
                return True  # a password sign-in
            key = tx.api_key_by_id(principal.credential_id)
            return key is not None and not key.locked

    # -- policies ------------------------------------------------------------

    @staticmethod
    def _policy(
        account_id: str,
        kind: SubjectKind,
        subject_id: str,
        roles: tuple[str, ...],
        service_name: str,
        region: str | None,
        resource: str | None,
    ) -> PolicyRecord:
        return PolicyRecord(
            f"Policy-{uuid.uuid4()}",
            account_id,
            kind,
            subject_id,
            roles,
            service_name,
            region,
            "namespace" if resource is not None else None,
            resource,
            _now(),
        )

    def check_policy(
        self,
        actor: Principal,
        roles: str | Iterable[str],
        service_name: str,
        region: str | None = None,
        resource_type: str | None = None,
        resource: str | None = None,
    ) -> tuple[str, ...]:
        """A policy's fields checked (400 when wrong), then whether ``actor`` may
        give it (403): Administrator on that very service, over all of the
        policy's scope. Returns the roles in canonical order."""
        try:
            parsed = parse_roles(roles)
        except RoleError as exc:
            raise Invalid(str(exc)) from exc
        if service_name not in SERVICES:
            raise Invalid(f"unknown service {service_name!r}; valid: {', '.join(SERVICES)}")
        if service_name not in RESOURCE_SERVICES:
            if region is not None or resource_type is not None or resource is not None:
                raise Invalid(f"{service_name} has no regions or namespaces: give neither")
            service_roles = [r for r in parsed if r in SERVICE_ROLES]
            if service_roles:
                raise Invalid(
                    f"{service_name} takes platform roles only (Viewer, Operator, Editor, "
                    f"Administrator), not {', '.join(service_roles)}"
                )
        if region is not None and region not in self.regions:
            raise Invalid(f"unknown region {region!r}; valid: {', '.join(self.regions)}")
        if (resource_type is None) != (resource is None):
            raise Invalid("--resource-type and --resource go together")
        if resource_type is not None:
            if resource_type != "namespace":
                raise Invalid("the only resource type is 'namespace'")
            validate_namespace(resource or "")
        if not self.administers(actor, service_name, region, resource):
            where = "".join(
                f" {what} {value}" for what, value in (("in", region), ("on", resource)) if value
            )
            raise Forbidden(
                f"you may not give access to {service_name}{where}: that takes Administrator "
                "on that service, over at least that scope"
            )
        return parsed

    def create_policy(
        self,
        actor: Principal,
        kind: SubjectKind,
        subject_id: str,
        roles: str | Iterable[str],
        service_name: str,
        region: str | None = None,
        resource_type: str | None = None,
        resource: str | None = None,
    ) -> PolicyRecord:
        """A policy in the actor's account, if the actor may give it (``check_policy``)."""
        parsed = self.check_policy(actor, roles, service_name, region, resource_type, resource)
        account_id = actor.account_id
        policy = self._policy(account_id, kind, subject_id, parsed, service_name, region, resource)
        with self.store.write() as tx:
            duplicate = tx.identical_policy(policy)
            if duplicate:
                raise Conflict(f"an identical policy already exists: {duplicate}")
            try:
                tx.insert_policy(policy)
            except Duplicate:  # created at this moment by another writer
                raise Conflict("an identical policy already exists") from None
        return policy

    def policies(self, account_id: str, kind: SubjectKind, subject_id: str) -> list[PolicyRecord]:
        with self.store.read() as tx:
            return tx.policies([account_id], kind, subject_id)

    def delete_policy(self, actor: Principal, policy_id: str) -> None:
        """Taking access away takes what giving it takes: Administrator on the
        policy's service over all of its scope."""
        account_id = actor.account_id
        with self.store.read() as tx:
            found = tx.policy(account_id, policy_id)
        if found is None:
            raise NotFound(f"policy {policy_id[:100]} not found")
        if not self.administers(actor, found.service_name, found.region, found.resource):
            raise Forbidden(
                f"you may not remove access to {found.service_name}: that takes Administrator "
                "on that service, over at least the policy's scope"
            )
        with self.store.write() as tx:
            if tx.policy(account_id, policy_id) is None:
                raise NotFound(f"policy {policy_id[:100]} not found")
            tx.delete_policy(policy_id)

    def grants(self, principal: Principal) -> list[Grant]:
        """What a principal may do, in its accounts only, as pure data."""
        if principal.kind == REGISTRY_TOKEN:
            roles = ("Writer",) if principal.readwrite else ("Reader",)
            return [
                Grant.of(roles, REGISTRY, principal.region, None, account)
                for account in principal.accounts
            ]
        with self.store.read() as tx:
            policies = tx.policies(principal.accounts, principal.kind, principal.id)
        return [
            Grant.of(p.roles, p.service_name, p.region, p.resource, p.account_id) for p in policies
        ]

    # -- the decision --------------------------------------------------------

    def registry_actions(
        self,
        principal: Principal,
        region: str,
        namespace: str,
        owner: str | None,
        grants: list[Grant] | None = None,
    ) -> frozenset[str]:
        """What a principal may do in a namespace: nothing unless one of its accounts
        owns the namespace, then what that account's policies allow there."""
        if owner is None or owner not in principal.accounts:
            return frozenset()
        return allowed_actions(
            self.grants(principal) if grants is None else grants, REGISTRY, region, namespace, owner
        )

    def allows(
        self,
        principal: Principal,
        action: str,
        region: str | None = None,
        namespace: str | None = None,
        services: tuple[str, ...] = (REGISTRY,),
    ) -> bool:
        """A management decision, in the one account the principal acts in."""
        grants = self.grants(principal)
        account = principal.account_id
        return any(
            action in allowed_actions(grants, service, region, namespace, account)
            for service in services
        )

    def require(
        self,
        principal: Principal,
        action: str,
        region: str | None = None,
        namespace: str | None = None,
        services: tuple[str, ...] = (REGISTRY,),
    ) -> None:
        if not self.allows(principal, action, region, namespace, services):
            where = f" in {region}" if region else ""
            raise Forbidden(f"you are not allowed to {action}{where}")

    def administers(
        self,
        principal: Principal,
        service: str,
        region: str | None,
        namespace: str | None,
        grants: list[Grant] | None = None,
    ) -> bool:
        """Administrator on ``service`` covering the whole scope (a grant limited
        to a region or namespace covers only policies limited to it as well)."""
        return MANAGE_POLICIES in allowed_actions(
            self.grants(principal) if grants is None else grants,
            service,
            region,
            namespace,
            principal.account_id,
        )

    def manages_identities(self, principal: Principal) -> bool:
        """Editor or Administrator on iam-identity: members, service IDs, keys."""
        return self.allows(principal, MANAGE_IDENTITIES, services=(IAM_IDENTITY,))

    def require_identities(self, principal: Principal) -> None:
        if not self.manages_identities(principal):
            raise Forbidden(
                "you are not allowed to manage identities: that takes Editor or Administrator "
                f"on {IAM_IDENTITY}"
            )

    def may_act_for(self, principal: Principal, kind: SubjectKind, subject_id: str) -> bool:
        """Whether ``principal`` may change another identity or its credentials
        (make, lock or delete its keys, remove it). Whoever holds an identity's
        key acts as it, so this takes, besides identity management, Administrator
        over every policy that identity holds: no one reaches through another
        identity what they could not have given themselves."""
        if not self.manages_identities(principal):
            return False
        if (kind, subject_id) == (principal.kind, principal.id):
            return True
        grants = self.grants(principal)
        return all(
            self.administers(principal, p.service_name, p.region, p.resource, grants)
            for p in self.policies(principal.account_id, kind, subject_id)
        )

    def require_act_for(self, principal: Principal, kind: SubjectKind, subject_id: str) -> None:
        self.require_identities(principal)
        if not self.may_act_for(principal, kind, subject_id):
            raise Forbidden(
                "that identity holds access you do not administer; only someone who "
                "administers all of it may change it or its API keys"
            )

    # -- namespaces ----------------------------------------------------------

    def add_namespace(self, account_id: str, region: str, name: str) -> NamespaceRecord:
        record = NamespaceRecord(region, validate_namespace(name), account_id, _now())
        try:
            with self.store.write() as tx:
                tx.insert_namespace(record)
        except Duplicate:
            raise Conflict(f"namespace {name!r} already exists in {region}") from None
        return record

    def namespaces(self, account_id: str, region: str) -> list[NamespaceRecord]:
        with self.store.read() as tx:
            return tx.namespaces(account_id, region)

    def namespace_owner(self, region: str, name: str) -> str | None:
        with self.store.read() as tx:
            found = tx.namespace(region, name)
        return None if found is None else found.account_id

    def namespaces_allowing(
        self, principal: Principal, region: str, action: str
    ) -> list[NamespaceRecord]:
        """The namespaces of a region, in the principal's accounts, where it may ``action``."""
        grants = self.grants(principal)
        with self.store.read() as tx:
            owned = [n for account in principal.accounts for n in tx.namespaces(account, region)]
        return sorted(
            (
                n
                for n in owned
                if action in self.registry_actions(principal, region, n.name, n.account_id, grants)
            ),
            key=lambda n: n.name,
        )

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
        record = RegistryTokenRecord(
            str(uuid.uuid4()),
            account_id,
            region,
            _validate_description(description),
            readwrite,
            None if non_expiring else _now() + REGISTRY_TOKEN_LIFETIME,
            _now(),
        )
        with self.store.write() as tx:
            tx.insert_token(record, self.keeper.digest(value), self.keeper.seal(value))
        return Created(record.id, value)

    def registry_tokens(self, account_id: str, region: str) -> list[RegistryTokenRecord]:
        with self.store.read() as tx:
            return tx.tokens(account_id, region)

    def _token(self, tx: IamTx, account_id: str, region: str, token_id: str) -> bytes:
        found = tx.token(account_id, region, token_id)
        if found is None:
            raise NotFound(f"registry token {token_id[:100]} not found in {region}")
        return found[1]

    def registry_token_value(self, account_id: str, region: str, token_id: str) -> str:
        with self.store.read() as tx:
            sealed = self._token(tx, account_id, region, token_id)
        return self.keeper.unseal(sealed)

    def remove_registry_token(self, account_id: str, region: str, token_id: str) -> None:
        with self.store.write() as tx:
            self._token(tx, account_id, region, token_id)
            tx.delete_token(token_id)
