"""``moorage enforce import``: a cluster's Portieris policies
(``portieris.cloud.ibm.com/v1`` ImagePolicy and ClusterImagePolicy) as
``moorage.io/v1`` ones of the same names, and a note for everything that
does not carry over.

Nothing is silently weakened: a repository entry that asked for Notary
(``trust``) signatures, which Moorage does not check, becomes a ``reject``
until someone says which cosign or GPG keys stand in for it; dropping it
would let a less specific, looser entry decide instead."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from moorage.enforce.policy import (
    API_VERSION,
    CLUSTER_IMAGE_POLICY,
    IMAGE_POLICY,
    PLURALS,
    PolicyError,
    parse_spec,
)
from moorage.kube.errors import kube_errors

PORTIERIS_GROUP = "portieris.cloud.ibm.com"
PORTIERIS_VERSION = "v1"
IMPORTED_FROM = "moorage.io/imported-from"


@dataclass
class Converted:
    source: str  # "ImagePolicy team/strict"
    object: dict[str, Any] | None  # None: nothing could be made of it
    notes: list[str] = field(default_factory=list)


def _convert_policy(policy: Any, where: str, kind: str, notes: list[str]) -> dict[str, Any]:
    if not isinstance(policy, dict):
        return {}
    out: dict[str, Any] = {}
    if "mutateImage" in policy:
        out["mutateImage"] = bool(policy["mutateImage"])
    trust = policy.get("trust") or {}
    simple = policy.get("simple") or {}
    if isinstance(trust, dict) and trust.get("enabled"):
        notes.append(
            f"{where}: trust (Notary v1 / Docker Content Trust) cannot be converted; the entry "
            "rejects every image until you replace it with cosign or simple (GPG) requirements"
        )
        return {**out, "simple": {"requirements": [{"type": "reject"}]}}
    if isinstance(simple, dict):
        if simple.get("storeURL") or simple.get("storeSecret"):
            notes.append(
                f"{where}: simple.storeURL/storeSecret (a signature lookaside) is not "
                "supported; signatures are read from the registry's signature extension"
            )
        requirements = []
        for requirement in simple.get("requirements") or []:
            if not isinstance(requirement, dict):
                continue
            kept = {
                k: requirement[k]
                for k in ("type", "keySecret", "signedIdentity")
                if requirement.get(k) is not None
            }
            requirements.append(kept)
            if kind == CLUSTER_IMAGE_POLICY and kept.get("keySecret"):
                notes.append(
                    f"{where}: key secret {kept['keySecret']} is read from the webhook's "
                    "namespace for a ClusterImagePolicy; copy it there"
                )
        if requirements:
            out["simple"] = {"requirements": requirements}
    vulnerability = policy.get("vulnerability")
    if isinstance(vulnerability, dict) and vulnerability:
        out["vulnerability"] = vulnerability
        notes.append(
            f"{where}: vulnerability is kept and enforced as Portieris does, from the "
            "Vulnerability Advisor's report: OK, WARN and UNSUPPORTED are admitted, anything "
            "else (FAIL, not assessed yet, no report) is denied; the registry's own exemptions "
            "apply (ICCRVA.account is not used)"
        )
    return out


def convert(kind: str, raw: dict[str, Any]) -> Converted:
    meta = raw.get("metadata") or {}
    namespace = meta.get("namespace")
    source = f"{kind} {namespace + '/' if namespace else ''}{meta.get('name')}"
    notes: list[str] = []
    spec = raw.get("spec") if isinstance(raw.get("spec"), dict) else {}
    repositories = []
    for i, entry in enumerate((spec or {}).get("repositories") or []):
        if not isinstance(entry, dict) or not entry.get("name"):
            notes.append(f"{source}: repositories[{i}] has no name; skipped")
            continue
        where = f"{source} repository {entry['name']!r}"
        converted: dict[str, Any] = {"name": str(entry["name"])}
        policy = _convert_policy(entry.get("policy"), where, kind, notes)
        if policy:
            converted["policy"] = policy
        repositories.append(converted)
    obj = {
        "apiVersion": API_VERSION,
        "kind": kind,
        "metadata": {
            "name": meta.get("name"),
            **({"namespace": namespace} if namespace else {}),
            "labels": {"app.kubernetes.io/managed-by": "moorage"},
            "annotations": {IMPORTED_FROM: f"{PORTIERIS_GROUP}/{PORTIERIS_VERSION} {source}"},
        },
        "spec": {"repositories": repositories},
    }
    try:
        parse_spec(obj["spec"])
    except PolicyError as exc:
        notes.append(f"{source}: not imported, {exc}")
        return Converted(source, None, notes)
    return Converted(source, obj, notes)


def _list(api_client: Any, plural: str) -> list[dict[str, Any]] | None:
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    try:
        found: Any = client.CustomObjectsApi(api_client).list_cluster_custom_object(
            PORTIERIS_GROUP, PORTIERIS_VERSION, plural
        )
    except ApiException as exc:
        if exc.status == 404:
            return None  # Portieris' CRDs are not installed
        raise
    return list(found.get("items") or [])


@dataclass
class ImportResult:
    converted: list[Converted] = field(default_factory=list)
    applied: list[str] = field(default_factory=list)
    found_crds: bool = True


def plan(api_client: Any) -> ImportResult:
    result = ImportResult()
    with kube_errors():
        listed = {kind: _list(api_client, PLURALS[kind]) for kind in PLURALS}
    if all(v is None for v in listed.values()):
        result.found_crds = False
        return result
    for kind in (CLUSTER_IMAGE_POLICY, IMAGE_POLICY):
        for raw in sorted(
            listed[kind] or [],
            key=lambda o: ((o.get("metadata") or {}).get("namespace") or "", o["metadata"]["name"]),
        ):
            result.converted.append(convert(kind, raw))
    return result


def apply(api_client: Any, result: ImportResult) -> ImportResult:
    """Create or replace the converted objects (server-side apply)."""
    from moorage.enforce.install import FIELD_MANAGER, dynamic_client, resource_for

    dyn = dynamic_client(api_client)
    with kube_errors():
        for item in result.converted:
            if item.object is None:
                continue
            meta = item.object["metadata"]
            resource_for(dyn, item.object).server_side_apply(
                body=item.object,
                name=meta["name"],
                namespace=meta.get("namespace"),
                field_manager=FIELD_MANAGER,
                force_conflicts=True,
            )
            result.applied.append(item.source)
    return result
