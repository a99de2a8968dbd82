"""The policy objects: ``moorage.io/v1`` ImagePolicy (namespaced) and
ClusterImagePolicy (cluster-wide), in Portieris' schema so that anyone who
wrote Portieris policies can read and write these.

The pydantic models below are the one definition: the webhook validates
each object with them, and the CRDs' OpenAPI schemas are generated from them
(``crd()``), so what the API server accepts and what the webhook understands
cannot drift apart. Beyond Portieris: ``cosign`` requirements beside
``simple`` (GPG) ones, and ``require: any | all`` over all of a policy's
requirements (Portieris only has "all")."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic.alias_generators import to_camel

GROUP = "moorage.io"
VERSION = "v1"
API_VERSION = f"{GROUP}/{VERSION}"
IMAGE_POLICY = "ImagePolicy"
CLUSTER_IMAGE_POLICY = "ClusterImagePolicy"
PLURALS = {IMAGE_POLICY: "imagepolicies", CLUSTER_IMAGE_POLICY: "clusterimagepolicies"}
MAX_REPOSITORIES = 1000
MAX_REQUIREMENTS = 32


class _Model(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True
    )


class IdentityType(StrEnum):
    """How the reference a GPG signature names must relate to the image
    (containers-policy.json's ``signedIdentity``)."""

    DEFAULT = ""  # matchRepoDigestOrExact
    MATCH_REPO_DIGEST_OR_EXACT = "matchRepoDigestOrExact"
    MATCH_EXACT = "matchExact"
    MATCH_REPOSITORY = "matchRepository"
    MATCH_EXACT_REPOSITORY = "matchExactRepository"
    MATCH_EXACT_REFERENCE = "matchExactReference"
    REMAP_IDENTITY = "remapIdentity"


class SignedIdentity(_Model):
    type: IdentityType = IdentityType.DEFAULT
    docker_repository: str | None = Field(None, max_length=512)
    docker_reference: str | None = Field(None, max_length=512)
    prefix: str | None = Field(None, max_length=512)
    signed_prefix: str | None = Field(None, max_length=512)

    @model_validator(mode="after")
    def _complete(self) -> SignedIdentity:
        needs = {
            IdentityType.MATCH_EXACT_REPOSITORY: ("docker_repository",),
            IdentityType.MATCH_EXACT_REFERENCE: ("docker_reference",),
            IdentityType.REMAP_IDENTITY: ("prefix", "signed_prefix"),
        }.get(self.type, ())
        missing = [to_camel(n) for n in needs if not getattr(self, n)]
        if missing:
            raise ValueError(f"signedIdentity {self.type.value} needs {', '.join(missing)}")
        return self


class RequirementType(StrEnum):
    SIGNED_BY = "signedBy"
    ATTESTED_BY = "attestedBy"  # cosign only: an in-toto attestation of predicateType
    REJECT = "reject"
    INSECURE_ACCEPT_ANYTHING = "insecureAcceptAnything"


KEYED = (RequirementType.SIGNED_BY, RequirementType.ATTESTED_BY)


class Requirement(_Model):
    """One requirement. ``signedBy``: a signature by one of the keys in the
    Secret ``keySecret`` (data ``key``, or ``cosign.pub`` for cosign keys).
    ``attestedBy`` (cosign only): an attestation (``cosign attest``) whose
    signed in-toto statement has ``predicateType`` (a URI, as in the
    statement), made by one of those keys; an attestation never counts as a
    signature, nor a signature as an attestation."""

    type: RequirementType
    key_secret: str | None = Field(None, min_length=1, max_length=253)
    signed_identity: SignedIdentity | None = None
    predicate_type: str | None = Field(None, min_length=1, max_length=512, pattern=r"^\S+:\S+$")

    @model_validator(mode="after")
    def _key(self) -> Requirement:
        if self.type in KEYED and not self.key_secret:
            raise ValueError(f"a {self.type.value} requirement needs keySecret")
        if (self.type == RequirementType.ATTESTED_BY) != (self.predicate_type is not None):
            raise ValueError("predicateType goes with type attestedBy, and only with it")
        if self.type == RequirementType.ATTESTED_BY and self.signed_identity is not None:
            raise ValueError("signedIdentity applies to signatures, not to attestedBy")
        return self


class Requirements(_Model):
    requirements: list[Requirement] | None = Field(None, max_length=MAX_REQUIREMENTS)


class Scanner(_Model):
    model_config = ConfigDict(extra="allow")
    enabled: bool = False
    account: str | None = None


class Gate(StrEnum):
    DENY = "deny"
    ALLOW = "allow"


class DenyStatus(StrEnum):
    FAIL = "FAIL"  # an open finding with a fix (configuration issues alone are WARN)
    NONE = "None"  # the status alone denies nothing; ``maxSeverity`` may


class Severity(StrEnum):
    CRITICAL = "Critical"
    HIGH = "High"
    MEDIUM = "Medium"
    LOW = "Low"


MAX_GRACE = 7 * 86400


@dataclass(frozen=True)
class VulnerabilityRule:
    """What a ``vulnerability`` block asks, defaults applied: the one form
    ``moorage.enforce.vulnerability.judge`` reads."""

    deny: DenyStatus = DenyStatus.FAIL
    max_severity: Severity | None = None
    pending: Gate = Gate.DENY
    pending_grace_seconds: int = 0
    unsupported: Gate = Gate.DENY
    partial: Gate = Gate.DENY
    source: str = "vulnerability"  # or "vulnerability.ICCRVA" for Portieris' form

    def fingerprint(self) -> list[Any]:
        return [
            self.deny.value,
            self.max_severity.value if self.max_severity else None,
            self.pending.value,
            self.pending_grace_seconds,
            self.unsupported.value,
            self.partial.value,
        ]


# Portieris' ICCRVA/IBMVA: "OK, WARN or UNSUPPORTED is allowed; any other
# status, or any error, is denied" (so not yet scanned is denied too).
PORTIERIS_RULE = VulnerabilityRule(unsupported=Gate.ALLOW, source="vulnerability.ICCRVA")


class Vulnerability(_Model):
    """The Vulnerability Advisor's verdict an image must have: its report is
    read from the registry (``GET /v2/<name>/_moorage/va/<digest>``) with the
    pod's pull credentials. Portieris' ``ICCRVA``/``IBMVA`` forms are read as
    Portieris meant them (``PORTIERIS_RULE``); any of Moorage's fields, or an
    empty block, asks for Moorage's rule (``deny: FAIL`` by default)."""

    deny: DenyStatus = DenyStatus.FAIL
    max_severity: Severity | None = None
    pending: Gate = Gate.DENY
    pending_grace_seconds: int | None = Field(None, ge=1, le=MAX_GRACE)
    unsupported: Gate = Gate.DENY
    partial: Gate = Gate.DENY
    iccrva: Scanner | None = Field(None, alias="ICCRVA")
    ibmva: Scanner | None = Field(None, alias="IBMVA")

    @model_validator(mode="after")
    def _grace(self) -> Vulnerability:
        if self.pending_grace_seconds is not None and self.pending != Gate.ALLOW:
            raise ValueError("pendingGraceSeconds goes with pending: allow")
        return self

    @property
    def enabled(self) -> bool:
        return self.rule() is not None

    def rule(self) -> VulnerabilityRule | None:
        """The rule to enforce, or None: a Portieris block with its scanners off."""
        own = self.model_fields_set - {"iccrva", "ibmva"}
        portieris = self.model_fields_set & {"iccrva", "ibmva"}
        if portieris and not own:
            scanners = (self.iccrva, self.ibmva)
            return PORTIERIS_RULE if any(s is not None and s.enabled for s in scanners) else None
        return VulnerabilityRule(
            self.deny,
            self.max_severity,
            self.pending,
            self.pending_grace_seconds or 0,
            self.unsupported,
            self.partial,
        )


class Require(StrEnum):
    ALL = "all"
    ANY = "any"


class Policy(_Model):
    mutate_image: bool = True
    require: Require = Require.ALL
    simple: Requirements | None = None  # Red Hat simple signing with GPG keys (Portieris)
    cosign: Requirements | None = None  # cosign key-pair signatures
    vulnerability: Vulnerability | None = None

    def requirements(self) -> list[tuple[str, Requirement]]:
        """("simple" | "cosign", requirement) for every requirement, in order."""
        found: list[tuple[str, Requirement]] = []
        for kind, block in (("cosign", self.cosign), ("simple", self.simple)):
            found += [(kind, r) for r in (block.requirements if block else None) or []]
        return found

    @model_validator(mode="after")
    def _attestations_are_cosign(self) -> Policy:
        for r in (self.simple.requirements if self.simple else None) or []:
            if r.type == RequirementType.ATTESTED_BY:
                raise ValueError("attestedBy is a cosign requirement, not a simple (GPG) one")
        return self


class Repository(_Model):
    name: str = Field(min_length=1, max_length=512)
    policy: Policy | None = None


class ImagePolicySpec(_Model):
    repositories: list[Repository] = Field(default_factory=list, max_length=MAX_REPOSITORIES)


class PolicyError(ValueError):
    """An ImagePolicy or ClusterImagePolicy the webhook cannot use."""


def parse_spec(spec: Any) -> ImagePolicySpec:
    """A policy object's ``spec``, validated; PolicyError says what is wrong."""
    try:
        return ImagePolicySpec.model_validate(spec if spec is not None else {})
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "spec"
        raise PolicyError(f"spec.{where}: {first['msg']}") from None


# -- the CRDs ---------------------------------------------------------------


def _structural(schema: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    """pydantic's JSON schema as a Kubernetes structural schema: references
    inlined, ``anyOf [X, null]`` as ``nullable``, extra fields as
    ``x-kubernetes-preserve-unknown-fields``, no titles or defaults (the
    webhook applies defaults, so stored objects stay as written)."""
    if "$ref" in schema:
        resolved = copy.deepcopy(defs[schema["$ref"].rsplit("/", 1)[1]])
        schema = {**resolved, **{k: v for k, v in schema.items() if k != "$ref"}}
    nullable = False
    if "anyOf" in schema:
        options = [o for o in schema["anyOf"] if o.get("type") != "null"]
        nullable = len(options) != len(schema["anyOf"])
        rest = {k: v for k, v in schema.items() if k != "anyOf"}
        schema = {**_structural(options[0], defs), **rest} if len(options) == 1 else schema
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key in ("title", "default", "$defs", "anyOf"):
            continue
        if key == "properties":
            out[key] = {name: _structural(sub, defs) for name, sub in value.items()}
        elif key == "items":
            out[key] = _structural(value, defs)
        elif key == "additionalProperties":
            if value is not False:
                out["x-kubernetes-preserve-unknown-fields"] = True
        else:
            out[key] = value
    if "enum" in out:
        out["type"] = "string"
    if nullable:
        out["nullable"] = True
    return out


def spec_schema() -> dict[str, Any]:
    raw = ImagePolicySpec.model_json_schema(by_alias=True)
    return _structural(raw, raw.get("$defs", {}))


def crd(kind: str) -> dict[str, Any]:
    plural = PLURALS[kind]
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{plural}.{GROUP}",
            "labels": {"app.kubernetes.io/managed-by": "moorage"},
        },
        "spec": {
            "group": GROUP,
            "scope": "Namespaced" if kind == IMAGE_POLICY else "Cluster",
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": plural,
                "singular": kind.lower(),
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "required": ["spec"],
                            "properties": {"spec": spec_schema()},
                        }
                    },
                }
            ],
        },
    }
