"""OSV records as the Advisor's values, and back: the one place that knows
the record's shape (https://ossf.github.io/osv-schema/). Pure; the store
reads its canonical records with it, the feeds write them."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from moorage.va.model import Advisory, Affected, AffectedRange, RangeEvent, Severity


def _strings(value: Any) -> tuple[str, ...]:
    return tuple(v for v in value or () if isinstance(v, str))


# Errata list the CVEs they fix as "related"; they are the names people know
# the issue by (and exempt it by), so they count as aliases here.
_ERRATA = ("ALSA-", "ALBA-", "ALEA-", "RLSA-", "RHSA-", "RHBA-", "RHEA-")


def _aliases(record: Mapping[str, Any]) -> tuple[str, ...]:
    """``aliases``, then ``upstream`` (the CVEs a distribution's record derives
    from), then an erratum's ``related``; each once."""
    names = list(_strings(record.get("aliases"))) + list(_strings(record.get("upstream")))
    if str(record.get("id", "")).startswith(_ERRATA):
        names += _strings(record.get("related"))
    return tuple(dict.fromkeys(n for n in names if n != record.get("id")))


def _label(entry: Mapping[str, Any]) -> str:
    for key in ("ecosystem_specific", "database_specific"):
        extra = entry.get(key)
        if isinstance(extra, dict) and isinstance(extra.get("severity"), str):
            return str(extra["severity"])
    return ""


def from_osv(record: Mapping[str, Any], source: str) -> Advisory:
    """An ``Advisory`` from a record already validated (``validate``)."""
    affected: list[Affected] = []
    for entry in record.get("affected") or ():
        package = entry.get("package") or {}
        if not package.get("ecosystem") or not package.get("name"):
            continue  # a GIT-only entry names no package to match
        ranges = tuple(
            AffectedRange(
                r["type"],
                tuple(RangeEvent(k, str(v)) for e in r.get("events", ()) for k, v in e.items()),
            )
            for r in entry.get("ranges") or ()
        )
        affected.append(
            Affected(
                package["ecosystem"],
                package["name"],
                ranges,
                _strings(entry.get("versions")),
                _label(entry),
            )
        )
    return Advisory(
        id=record["id"],
        source=source,
        modified=record["modified"],
        aliases=_aliases(record),
        summary=record.get("summary") or "",
        details=record.get("details") or "",
        published=record.get("published") or "",
        withdrawn=record.get("withdrawn") or "",
        severity=tuple(
            Severity(s["type"], s["score"])
            for s in record.get("severity") or ()
            if isinstance(s, dict) and "type" in s and "score" in s
        ),
        affected=tuple(affected),
        references=tuple(
            r["url"] for r in record.get("references") or () if isinstance(r, dict) and "url" in r
        ),
    )


def to_osv(advisory: Advisory) -> dict[str, Any]:
    """The OSV record the store keeps and bundles carry: what ``from_osv``
    reads back into an equal ``Advisory`` (source aside)."""
    record: dict[str, Any] = {"schema_version": "1.6.0", "id": advisory.id}
    record["modified"] = advisory.modified
    for key in ("published", "withdrawn", "summary", "details"):
        if getattr(advisory, key):
            record[key] = getattr(advisory, key)
    if advisory.aliases:
        record["aliases"] = list(advisory.aliases)
    if advisory.severity:
        record["severity"] = [{"type": s.type, "score": s.score} for s in advisory.severity]
    affected = []
    for a in advisory.affected:
        entry: dict[str, Any] = {"package": {"ecosystem": a.ecosystem, "name": a.name}}
        if a.ranges:
            entry["ranges"] = [
                {"type": r.type, "events": [{e.kind: e.version} for e in r.events]}
                for r in a.ranges
            ]
        if a.versions:
            entry["versions"] = list(a.versions)
        if a.severity:
            entry["ecosystem_specific"] = {"severity": a.severity}
        affected.append(entry)
    if affected:
        record["affected"] = affected
    if advisory.references:
        record["references"] = [{"type": "WEB", "url": u} for u in advisory.references]
    return record
