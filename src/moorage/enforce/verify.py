"""The decision: which policy applies to each image of an object, which
digest the image's tag names now (read with the pod's own pull secrets), and
whether that digest carries the signatures the policy asks for.

A signature counts only when it verifies with one of the policy's keys and
the document it signs names exactly the digest being admitted (for GPG, the
document gpg verified, never the unverified bytes). Everything that cannot be
decided (no policy, an unreadable registry, a missing key Secret, time run
out) is a denial that says why.

A remembered verdict is used only while the registry still holds what it
stood on: each admission resolves the image again (a digest reference too,
so a deleted image stops admitting), and a verdict whose signatures' evidence
(``RegistryReader.evidence``) was last compared more than
``Settings.revalidate_after`` seconds ago is compared again; a signature
deleted or replaced sends the image back to full verification. A key
removed from its Secret or a policy changed makes a different cache key."""

from __future__ import annotations

import asyncio
import fnmatch
import hashlib
import json
import re
import time
from dataclasses import dataclass, field, replace
from typing import Any

from moorage.enforce import admission, vulnerability
from moorage.enforce.admission import ImageSite, Request
from moorage.enforce.cache import VerdictCache
from moorage.enforce.keys import CosignKey, GpgKeys, KeyError_, cosign_keys, gpg_keys
from moorage.enforce.matching import Reference, ReferenceError_, identity_matches
from moorage.enforce.policy import (
    KEYED,
    Policy,
    Require,
    Requirement,
    RequirementType,
    VulnerabilityRule,
)
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
_NAMESPACE_PATTERN = re.compile(r"^[a-z0-9*?](?:[-a-z0-9*?]{0,61}[a-z0-9*?])?\Z")


def namespace_patterns(
    values: list[str] | tuple[str, ...] | frozenset[str], globs: bool = True
) -> frozenset[str]:
    """Namespace names, or (``globs``) patterns of them (``team-*``); ValueError
    names a bad one."""
    for value in values:
        if not _NAMESPACE_PATTERN.match(value) or (not globs and any(c in value for c in "*?")):
            what = "a namespace name or pattern" if globs else "a namespace name"
            raise ValueError(f"{value[:80]!r} is not {what}")
    return frozenset(values)


@dataclass(frozen=True)
class Settings:
    namespace: str = "moorage-enforce"  # the webhook's own; ClusterImagePolicy keys live here
    exempt_namespaces: frozenset[str] = ALWAYS_EXEMPT
    # Where a namespace's own label (moorage.io/enforce=disabled) exempts it: globs of
    # namespace names. None by default: whoever may label a namespace is not the operator.
    opt_out_namespaces: frozenset[str] = frozenset()
    cache_ttl: float = 300.0
    # A remembered verdict's evidence is read again when older than this (0: at every
    # admission); the bound on a removed signature admitting, well under 10 s.
    revalidate_after: float = 2.0
    deadline: float = 8.0  # seconds for one admission, below the configurations' timeout
    max_images: int = admission.MAX_IMAGES


@dataclass(frozen=True)
class Outcome:
    """What the signatures of one digest proved under one policy."""

    allowed: bool
    reason: str
    keys: tuple[str, ...] = ()  # the keys that signed, as "cosign key … in secret ns/name"


@dataclass
class _Remembered:
    """A verdict with the evidence (``RegistryReader.evidence``) it was reached on,
    and when that evidence was last found unchanged (monotonic seconds)."""

    outcome: Outcome
    evidence: str
    checked: float


@dataclass
class _Report:
    """A vulnerability report as read (``document``), or why it could not be."""

    document: Any
    checked: float  # monotonic seconds
    problem: str = ""


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
    vulnerability: dict[str, Any] | None = None  # the report's verdict, per platform

    def as_log(self) -> dict[str, Any]:
        return {
            **({"vulnerability": self.vulnerability} if self.vulnerability else {}),
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


def best_entry(policies: PolicySet, ref: Reference, tag_confirmed: bool = False) -> Entry | None:
    """The most specific matching entry; ties go to the first by object name.
    ``tag_confirmed``: ``ref``'s tag names its digest now, so tag patterns count."""
    matching = [e for e in policies.entries if e.pattern.matches(ref, tag_confirmed)]
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
        self.cache: VerdictCache[_Remembered] = VerdictCache(settings.cache_ttl)
        self.va_cache: VerdictCache[_Report] = VerdictCache(settings.cache_ttl)
        self.hits = 0
        self.misses = 0
        self.stale = 0  # remembered verdicts whose evidence had changed: verified again
        self.loop: asyncio.AbstractEventLoop | None = None  # set by the server

    def flush(self) -> None:
        """Forget every verified digest; safe from any thread (informers call it)."""
        if self.loop is not None and self.loop.is_running():
            self.loop.call_soon_threadsafe(self.cache.clear)
            self.loop.call_soon_threadsafe(self.va_cache.clear)
        else:
            self.cache.clear()
            self.va_cache.clear()

    # -- the object ------------------------------------------------------------------

    def exemption(self, namespace: str) -> str | None:
        """Why ``namespace`` is not checked, or None. Exemptions are the operator's:
        the webhook's options and its ConfigMap; a namespace's own opt-out label
        counts only where they allow it."""
        settings = self.settings
        named = settings.exempt_namespaces | ALWAYS_EXEMPT | self.state.exempt
        if namespace in named | {settings.namespace}:
            return f"namespace {namespace} is exempt from image enforcement"
        labels = self.state.namespace_labels(namespace)
        if labels is None or labels.get(OPT_OUT_LABEL) != OPT_OUT_VALUE:
            return None
        allowed = sorted(settings.opt_out_namespaces | self.state.opt_out)
        pattern = next((p for p in allowed if fnmatch.fnmatchcase(namespace, p)), None)
        if pattern is None:
            return None  # a tenant's label, where the operator did not allow opting out
        return (
            f"namespace {namespace} opted out ({OPT_OUT_LABEL}={OPT_OUT_VALUE}), "
            f"allowed in namespaces {pattern!r}"
        )

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
        session = self.reader.session(ref, ring.lookup(ref.repository))
        entry, note = await self._entry(policies, ref, session)
        if entry is None:
            return ImageVerdict(
                image,
                False,
                f"is not admitted: no policy among {policies.scope} matches it{note}",
            )
        policy = entry.policy
        checks = [self._resolve_keys(kind, r, entry) for kind, r in policy.requirements()]
        rule = policy.vulnerability.rule() if policy.vulnerability else None
        if not checks and rule is None:
            return ImageVerdict(
                image,
                True,
                f"is admitted by {entry.describe()}, which asks for no signature{note}",
                entry.describe(),
                ref.digest,
                credential=session.credential_used,
            )
        try:
            digest = await self.reader.resolve(session)  # a digest too: is the image still there?
        except ReadError as exc:
            problems = f" ({'; '.join(ring.problems)})" if ring.problems else ""
            return ImageVerdict(
                image,
                False,
                f"is not admitted by {entry.describe()}: {exc}{problems}",
                entry.describe(),
            )
        signed, assessed = await asyncio.gather(
            self._signatures(session, ref, digest, policy, checks),
            self._vulnerability(session, digest, rule) if rule else _none(),
        )
        outcome, cached = signed
        allowed = outcome.allowed and (assessed is None or assessed.allowed)
        pinned = ref.pinned(digest) if allowed and policy.mutate_image else None
        judged = [o for o in (outcome, assessed) if o is not None]
        reasons = [o.reason for o in judged if allowed or not o.allowed]  # denied: only why
        said = "; ".join(reasons)
        if allowed:
            reason = f"is admitted by {entry.describe()}: {said}{note}"
        else:
            reason = f"({digest}) is not admitted by {entry.describe()}: {said}{note}"
        return ImageVerdict(
            image,
            allowed,
            reason,
            entry.describe(),
            digest,
            pinned,
            outcome.keys,
            cached,
            session.credential_used,
            assessed.as_log() if assessed is not None else None,
        )

    async def _signatures(
        self, session: Session, ref: Reference, digest: str, policy: Policy, checks: list[_Check]
    ) -> tuple[Outcome, bool]:
        """What the signatures of ``digest`` prove, and whether a remembered
        verdict said so."""
        if not checks:
            return Outcome(True, "asks for no signature"), False
        # The tag matters only to identity rules (GPG's by default); without them a
        # pinned image finds what its tagged form verified.
        tag_matters = any(c.kind == "simple" or c.requirement.signed_identity for c in checks)
        facts: list[Any] = [ref.repository, ref.named_tag if tag_matters else None, digest]
        facts.append(policy.require.value)
        facts.append([c.fingerprint() for c in checks])
        key = hashlib.sha256(json.dumps(facts).encode()).hexdigest()
        cosigned = any(c.kind == "cosign" and c.cosign_keys for c in checks)
        simple = any(c.kind == "simple" and c.gpg for c in checks)
        remembered = self.cache.get(key)
        due = time.monotonic() - self.settings.revalidate_after
        if remembered is not None and remembered.checked <= due:
            checked = time.monotonic()
            try:
                evidence = await self.reader.evidence(session, digest, cosigned, simple)
            except ReadError:
                evidence = None
            if evidence != remembered.evidence:
                self.cache.discard(key)  # what it stood on changed: verify again
                self.stale += 1
                remembered = None
            else:
                remembered.checked = checked
        cached = remembered is not None
        if remembered is not None:
            self.hits += 1
        else:
            self.misses += 1

            async def verified() -> _Remembered:
                checked = time.monotonic()
                try:
                    evidence = await self.reader.evidence(session, digest, cosigned, simple)
                except ReadError as exc:
                    return _Remembered(Outcome(False, str(exc)), "", checked)
                # Read before verifying: a signature that goes meanwhile changes it.
                outcome = await self._verify(session, ref, digest, policy, checks)
                return _Remembered(outcome, evidence, checked)

            remembered = await self.cache.once(key, verified, keep=lambda r: r.outcome.allowed)
        return remembered.outcome, cached

    async def _vulnerability(
        self, session: Session, digest: str, rule: VulnerabilityRule
    ) -> vulnerability.Outcome:
        """The Advisor's report on ``digest`` judged by ``rule``. A report that
        admitted is remembered under the rule, and read again (one GET) once
        ``revalidate_after`` has passed, so an exemption removed or a new
        advisory takes effect as fast as a deleted signature does; it is judged
        afresh at every admission, so a PENDING grace ends on time. A report
        that denied is not kept: an exemption added admits at the next try."""
        key = hashlib.sha256(
            json.dumps(["va", session.ref.repository, digest, rule.fingerprint()]).encode()
        ).hexdigest()
        now = time.monotonic()
        remembered = self.va_cache.get(key)
        if remembered is not None and remembered.checked > now - self.settings.revalidate_after:
            outcome = vulnerability.judge(remembered.document, rule)
            return replace(outcome, cached=True)

        async def read() -> _Report:
            checked = time.monotonic()
            try:
                document = await self.reader.vulnerability_report(session, digest)
            except ReadError as exc:
                return _Report(None, checked, str(exc))
            return _Report(document, checked)

        def admitted(found: _Report) -> bool:
            return found.problem == "" and vulnerability.judge(found.document, rule).allowed

        found = await self.va_cache.once(key, read, keep=admitted)
        if found.problem:
            return vulnerability.Outcome(False, found.problem)
        return vulnerability.judge(found.document, rule)

    async def _entry(
        self, policies: PolicySet, ref: Reference, session: Session
    ) -> tuple[Entry | None, str]:
        """The entry that applies, and a note when a tag-scoped entry did not. The
        kubelet pulls a reference's digest, so an entry for ``repo:tag`` applies to
        ``repo:tag@digest`` only while that tag names that digest (asked of the
        registry with the pod's credentials); otherwise the next-best entry does."""
        entry = best_entry(policies, ref)
        if ref.digest is None or ref.tag is None:
            return entry, ""
        tagged = best_entry(policies, ref, tag_confirmed=True)
        if tagged is None or tagged is entry or not tagged.pattern.tag_scoped:
            return entry, ""
        try:
            named = await self.reader.resolve(session, ref.tag)
        except ReadError as exc:
            return entry, f" ({tagged.describe()} is for the tag, which could not be read: {exc})"
        if named == ref.digest:
            return tagged, ""
        return entry, (
            f" ({tagged.describe()} is for tag {ref.tag}, which names {named}, not this digest)"
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


async def _none() -> None:
    return None


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
