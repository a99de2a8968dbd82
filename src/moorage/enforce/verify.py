"""The decision: which policy applies to each image of an object, which
digest the image's tag names now (read with the pod's own pull secrets), and
whether that digest carries the signatures the policy asks for.

A signature counts only when it verifies with one of the policy's keys and
the document it signs names exactly the digest being admitted (for GPG, the
document gpg verified, never the unverified bytes). Everything that cannot be
decided (no policy, an unreadable registry, a missing key Secret, time run
out) is a denial that says why."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from dataclasses import dataclass, field
from typing import Any

from moorage.enforce import admission
from moorage.enforce.admission import ImageSite, Request
from moorage.enforce.cache import VerdictCache
from moorage.enforce.keys import CosignKey, GpgKeys, KeyError_, cosign_keys, gpg_keys
from moorage.enforce.matching import Reference, ReferenceError_, identity_matches
from moorage.enforce.policy import KEYED, Policy, Require, Requirement, RequirementType
from moorage.enforce.registry import ReadError, RegistryReader, Session, Wanted
from moorage.enforce.state import ClusterState, Entry, PolicySet
from moorage.kube.diagnose import effective_pull_secrets
from moorage.kube.keyring import Keyring, KeyringError
from moorage.kube.workloads import KINDS
from moorage.trust import cosign, simplesigning

OPT_OUT_LABEL = "moorage.io/enforce"
OPT_OUT_VALUE = "disabled"
ALWAYS_EXEMPT = frozenset({"kube-system"})
MAX_GPG_RUNS = 32  # per requirement and image: gpg runs only for signatures that could count


@dataclass(frozen=True)
class Settings:
    namespace: str = "moorage-enforce"  # the webhook's own; ClusterImagePolicy keys live here
    exempt_namespaces: frozenset[str] = ALWAYS_EXEMPT
    cache_ttl: float = 300.0
    deadline: float = 8.0  # seconds for one admission, below the configurations' timeout
    max_images: int = admission.MAX_IMAGES


@dataclass(frozen=True)
class Outcome:
    """What the signatures of one digest proved under one policy."""

    allowed: bool
    reason: str
    keys: tuple[str, ...] = ()  # the keys that signed, as "cosign key … in secret ns/name"


@dataclass(frozen=True)
class ImageVerdict:
    image: str
    allowed: bool
    reason: str
    policy: str | None = None
    digest: str | None = None
    pinned: str | None = None  # the image rewritten to its digest, when the policy mutates
    keys: tuple[str, ...] = ()
    cached: bool = False
    credential: str | None = None  # the pull secret the registry was read with

    def as_log(self) -> dict[str, Any]:
        return {
            "image": self.image,
            "allowed": self.allowed,
            "digest": self.digest,
            "policy": self.policy,
            "keys": list(self.keys),
            "cached": self.cached,
            "credential": self.credential,
            "reason": self.reason,
        }


@dataclass(frozen=True)
class Decision:
    allowed: bool
    message: str
    images: tuple[ImageVerdict, ...] = ()
    patch: list[dict[str, Any]] = field(default_factory=list)
    exempt: bool = False


@dataclass(frozen=True)
class _Check:
    """One requirement with its keys resolved (or why they could not be)."""

    kind: str  # "cosign" or "simple"
    requirement: Requirement
    cosign_keys: tuple[CosignKey, ...] = ()
    gpg: GpgKeys | None = None
    problem: str = ""

    @property
    def label(self) -> str:
        r = self.requirement
        if r.type == RequirementType.ATTESTED_BY:
            return (
                f"a cosign attestation of {r.predicate_type} by the keys in secret {r.key_secret}"
            )
        if r.type != RequirementType.SIGNED_BY:
            return f"{self.kind} requirement {r.type.value}"
        what = "cosign signature" if self.kind == "cosign" else "GPG (simple signing) signature"
        return f"a {what} by the keys in secret {r.key_secret}"

    def fingerprint(self) -> list[Any]:
        return [
            self.kind,
            self.requirement.model_dump(mode="json"),
            [k.id for k in self.cosign_keys],
            self.gpg.armored if self.gpg else None,
            self.problem,
        ]


def best_entry(policies: PolicySet, ref: Reference) -> Entry | None:
    """The most specific matching entry; ties go to the first by object name."""
    matching = [e for e in policies.entries if e.pattern.matches(ref)]
    if not matching:
        return None
    top = max(e.pattern.specificity for e in matching)
    return next(e for e in matching if e.pattern.specificity == top)


def _service_account_dict(account: Any) -> dict[str, Any] | None:
    if account is None:
        return None
    refs = account.image_pull_secrets or []
    return {"imagePullSecrets": [{"name": r.name} for r in refs]}


class Enforcer:
    def __init__(self, state: ClusterState, reader: RegistryReader, settings: Settings) -> None:
        self.state = state
        self.reader = reader
        self.settings = settings
        self.cache: VerdictCache[Outcome] = VerdictCache(settings.cache_ttl)
        self.hits = 0
        self.misses = 0
        self.loop: asyncio.AbstractEventLoop | None = None  # set by the server

    def flush(self) -> None:
        """Forget every verified digest; safe from any thread (informers call it)."""
        if self.loop is not None and self.loop.is_running():
            self.loop.call_soon_threadsafe(self.cache.clear)
        else:
            self.cache.clear()

    # -- the object ------------------------------------------------------------------

    def exemption(self, namespace: str) -> str | None:
        if namespace in self.settings.exempt_namespaces | ALWAYS_EXEMPT | self.state.exempt:
            return f"namespace {namespace} is exempt from image enforcement"
        labels = self.state.namespace_labels(namespace)
        if labels is not None and labels.get(OPT_OUT_LABEL) == OPT_OUT_VALUE:
            return f"namespace {namespace} opted out ({OPT_OUT_LABEL}={OPT_OUT_VALUE})"
        return None

    async def decide(self, request: Request, mutate: bool) -> Decision:
        if request.workload is None:
            handled = ", ".join(k.kind for k in KINDS)
            return Decision(
                False,
                f"moorage enforce does not handle {request.kind} objects (it admits {handled}); "
                "check the rules of the webhook configurations",
            )
        if request.operation not in ("CREATE", "UPDATE"):
            return Decision(True, f"{request.operation} is not checked")
        exempt = self.exemption(request.namespace)
        if exempt:
            return Decision(True, exempt, exempt=True)
        try:
            sites = admission.images(request.workload, request.object)
            before = (
                {s.image for s in admission.images(request.workload, request.old_object)}
                if request.operation == "UPDATE" and request.old_object
                else set()
            )
        except ValueError as exc:
            return Decision(False, f"{request.label} is malformed: {exc}")
        sites = [s for s in sites if s.image not in before]  # an UPDATE is checked for what it adds
        distinct = list(dict.fromkeys(s.image for s in sites))
        if len(distinct) > self.settings.max_images:
            return Decision(
                False,
                f"{request.label} names {len(distinct)} images; at most "
                f"{self.settings.max_images} are checked in one object",
            )
        if not distinct:
            return Decision(True, "no new images")
        if not self.state.synced():
            return Decision(
                False,
                "the image policy webhook is still loading "
                f"({', '.join(self.state.unsynced())}); try again",
            )
        policies = self.state.policies_for(request.namespace)
        if policies.broken:
            return Decision(False, "; ".join(policies.broken) + ": fix it to admit images here")
        ring = self._keyring(request)
        try:
            verdicts = await asyncio.wait_for(
                asyncio.gather(
                    *(self.check_image(i, request.namespace, policies, ring) for i in distinct)
                ),
                self.settings.deadline,
            )
        except TimeoutError:
            return Decision(
                False,
                f"verifying the images of {request.label} took longer than "
                f"{self.settings.deadline:g} s; try again",
            )
        by_image = dict(zip(distinct, verdicts, strict=True))
        denied = [v for v in verdicts if not v.allowed]
        if denied:
            message = "; ".join(f"image {v.image} {v.reason}" for v in denied)
            return Decision(False, message, tuple(verdicts))
        patch = self._patch(sites, by_image) if mutate else []
        return Decision(True, "", tuple(verdicts), patch)

    @staticmethod
    def _patch(sites: list[ImageSite], verdicts: dict[str, ImageVerdict]) -> list[dict[str, Any]]:
        patch = []
        for site in sites:
            pinned = verdicts[site.image].pinned
            if pinned and pinned != site.image:
                patch.append({"op": "replace", "path": site.pointer, "value": pinned})
        return patch

    def _keyring(self, request: Request) -> Keyring:
        """The pull secrets the kubelet will use for this object's pods."""
        assert request.workload is not None
        spec = request.workload.pod_spec(request.object)
        account_name = str(spec.get("serviceAccountName") or "default")
        account = self.state.service_account(request.namespace, account_name)
        names, _ = effective_pull_secrets(
            spec, request.workload.kind != "Pod", _service_account_dict(account)
        )
        ring = Keyring()
        for name in names:
            secret = self.state.secret(request.namespace, name)
            if secret is None:
                ring.problems.append(f"pull secret {request.namespace}/{name} does not exist")
                continue
            try:
                ring.add_secret(secret.type or "", secret.data or {}, f"{request.namespace}/{name}")
            except KeyringError as exc:
                ring.problems.append(str(exc))
        return ring

    # -- one image ---------------------------------------------------------------------

    async def check_image(
        self, image: str, namespace: str, policies: PolicySet, ring: Keyring
    ) -> ImageVerdict:
        try:
            ref = Reference.parse(image)
        except ReferenceError_ as exc:
            return ImageVerdict(image, False, f"is not admitted: {exc}")
        entry = best_entry(policies, ref)
        if entry is None:
            return ImageVerdict(
                image, False, f"is not admitted: no policy among {policies.scope} matches it"
            )
        policy = entry.policy
        checks = [self._resolve_keys(kind, r, entry) for kind, r in policy.requirements()]
        if not checks:
            return ImageVerdict(
                image,
                True,
                f"is admitted by {entry.describe()}, which asks for no signature",
                entry.describe(),
            )
        session = self.reader.session(ref, ring.lookup(ref.repository))
        try:
            digest = ref.digest or await self.reader.resolve(session)
        except ReadError as exc:
            problems = f" ({'; '.join(ring.problems)})" if ring.problems else ""
            return ImageVerdict(
                image,
                False,
                f"is not admitted by {entry.describe()}: {exc}{problems}",
                entry.describe(),
            )
        # The tag matters only to identity rules (GPG's by default); without them a
        # pinned image finds what its tagged form verified.
        tag_matters = any(c.kind == "simple" or c.requirement.signed_identity for c in checks)
        facts: list[Any] = [ref.repository, ref.tag if tag_matters else None, digest]
        facts.append(policy.require.value)
        facts.append([c.fingerprint() for c in checks])
        key = hashlib.sha256(json.dumps(facts).encode()).hexdigest()
        cached = self.cache.get(key)
        if cached is not None:
            self.hits += 1
            outcome = cached
        else:
            self.misses += 1
            outcome = await self.cache.once(
                key,
                lambda: self._verify(session, ref, digest, policy, checks),
                keep=lambda o: o.allowed,
            )
        pinned = ref.pinned(digest) if outcome.allowed and policy.mutate_image else None
        if outcome.allowed:
            reason = f"is admitted by {entry.describe()}: {outcome.reason}"
        else:
            reason = f"({digest}) is not admitted by {entry.describe()}: {outcome.reason}"
        return ImageVerdict(
            image,
            outcome.allowed,
            reason,
            entry.describe(),
            digest,
            pinned,
            outcome.keys,
            cached is not None,
            session.credential_used,
        )

    def _resolve_keys(self, kind: str, requirement: Requirement, entry: Entry) -> _Check:
        if requirement.type not in KEYED:
            return _Check(kind, requirement)
        namespace, name = entry.key_namespace, requirement.key_secret or ""
        secret = self.state.secret(namespace, name)
        source = f"{namespace}/{name}"
        if secret is None:
            return _Check(kind, requirement, problem=f"key secret {source} does not exist")
        try:
            if kind == "cosign":
                return _Check(
                    kind, requirement, cosign_keys=tuple(cosign_keys(secret.data, source))
                )
            return _Check(kind, requirement, gpg=gpg_keys(secret.data, source))
        except KeyError_ as exc:
            return _Check(kind, requirement, problem=str(exc))

    async def _verify(
        self, session: Session, ref: Reference, digest: str, policy: Policy, checks: list[_Check]
    ) -> Outcome:
        keyed = [c for c in checks if c.kind == "cosign" and c.cosign_keys]
        wanted = Wanted(
            any(c.requirement.type == RequirementType.SIGNED_BY for c in keyed),
            frozenset(c.requirement.predicate_type for c in keyed if c.requirement.predicate_type),
            frozenset(k.id for c in keyed for k in c.cosign_keys),
        )
        unmet = list(keyed)

        def enough(new: list[cosign.CosignSignature]) -> bool:
            """Whether the cosign requirements are met now: reading more would not
            change the outcome (each document is checked once here)."""
            unmet[:] = [c for c in unmet if _cosign_check(c, new, ref, digest)[0] is None]
            if policy.require == Require.ANY:
                return len(unmet) < len(keyed)
            return not unmet

        try:
            cosigned, simple = await asyncio.gather(
                self.reader.cosign_documents(session, digest, wanted, enough)
                if keyed
                else _nothing(),
                self.reader.simple_signatures(session, digest)
                if any(c.kind == "simple" and c.gpg for c in checks)
                else _nothing(),
            )
        except ReadError as exc:
            return Outcome(False, str(exc))
        results: list[tuple[_Check, str | None, str]] = []  # (check, the key that signed, why not)
        for check in checks:
            if check.requirement.type == RequirementType.REJECT:
                results.append((check, None, "the policy rejects it (type: reject)"))
            elif check.requirement.type == RequirementType.INSECURE_ACCEPT_ANYTHING:
                results.append((check, "insecureAcceptAnything", ""))
            elif check.problem:
                results.append((check, None, f"{check.label} was asked for, but {check.problem}"))
            elif check.kind == "cosign":
                results.append((check, *_cosign_check(check, cosigned, ref, digest)))
            else:
                results.append((check, *(await _simple_check(check, simple, ref, digest))))
        met = [(c, by) for c, by, _ in results if by]
        missing = [why for _, by, why in results if not by]
        keys = tuple(by for _, by in met if by)
        if policy.require == Require.ANY:
            if met:
                return Outcome(True, "signed by " + ", ".join(keys), keys)
            return Outcome(False, "none of its requirements is met: " + "; ".join(missing), ())
        if not missing:
            return Outcome(True, "signed by " + ", ".join(keys), keys)
        return Outcome(False, "; ".join(missing), ())


async def _nothing() -> list[Any]:
    return []


def _cosign_check(
    check: _Check, documents: list[cosign.CosignSignature], ref: Reference, digest: str
) -> tuple[str | None, str]:
    """A signature (``signedBy``) or an attestation of the predicate type asked
    for (``attestedBy``), by one of the check's keys, naming ``digest``. Which
    of the two a document is comes from what is signed, never from where it
    was stored or what its unsigned annotations say."""
    predicate = check.requirement.predicate_type
    if predicate is None:
        candidates = [d for d in documents if d.is_signature]
    else:
        candidates = [d for d in documents if d.is_attestation and d.predicate_type == predicate]
    other, identity, unverified = 0, 0, 0
    ids = {key.id for key in check.cosign_keys}
    for signature in candidates:
        if not signature.names(digest):
            other += 1
            continue
        wanted = check.requirement.signed_identity
        if wanted is not None and not identity_matches(wanted, ref, signature.docker_reference):
            identity += 1
            continue
        if signature.named_key is not None and signature.named_key not in ids:
            unverified += 1  # names another key: no use trying these
            continue
        for key in check.cosign_keys:
            if cosign.verify(signature, key.key):
                return key.describe(), ""
        unverified += 1
    what = "attestation(s)" if predicate else "signature(s)"
    return None, f"{check.label} was asked for and not found" + _tally(
        len(candidates), other, identity, unverified, "made by another key or altered", what
    )


async def _simple_check(
    check: _Check, signatures: list[bytes], ref: Reference, digest: str
) -> tuple[str | None, str]:
    assert check.gpg is not None
    other, identity, unverified, runs = 0, 0, 0, 0
    for content in signatures:
        try:
            claimed = simplesigning.read(content)
        except simplesigning.FormatError:
            unverified += 1
            continue
        if not check.gpg.names(claimed.key_ids):
            unverified += 1
            continue
        if claimed.manifest_digest != digest:  # what it claims, unverified: enough to skip
            other += 1
            continue
        runs += 1
        if runs > MAX_GPG_RUNS:  # each is a gpg process: bounded by cost, failing closed
            return None, (
                f"{check.label} was asked for, but more than {MAX_GPG_RUNS} signatures claim "
                "its key and this digest; someone may have flooded them: a Manager can "
                "delete what is not genuine"
            )
        try:
            document, fingerprint = await asyncio.to_thread(
                simplesigning.verify, content, [check.gpg.armored]
            )
        except (simplesigning.FormatError, OSError, ValueError):
            unverified += 1  # altered, or gpg could not run: it proves nothing
            continue
        signed = simplesigning.SimpleSignature(document, ())
        if signed.manifest_digest != digest:
            other += 1
            continue
        wanted = check.requirement.signed_identity
        if not identity_matches(wanted, ref, signed.docker_reference):
            identity += 1
            continue
        return check.gpg.describe(fingerprint), ""
    return None, f"{check.label} was asked for and not found" + _tally(
        len(signatures), other, identity, unverified, "by another key, altered or unreadable"
    )


def _tally(
    total: int, other: int, identity: int, unverified: int, bad: str, what: str = "signature(s)"
) -> str:
    if not total:
        return f" (the image has no such {what.replace('(s)', 's')})"
    parts = []
    if other:
        parts.append(f"{other} for another digest")
    if identity:
        parts.append(f"{identity} naming another image")
    if unverified:
        parts.append(f"{unverified} {bad}")
    return f" ({total} {what}: {', '.join(parts)})"


def monotonic_ms(started: float) -> float:
    return round((time.monotonic() - started) * 1000, 2)
