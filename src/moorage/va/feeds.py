"""Advisory feeds: OSV records (JSON or YAML; a directory, one file, an
osv.dev ``all.zip``, an http(s) URL), Alpine's secdb, and Moorage's own
export bundle, read into ``Advisory`` values and imported as one snapshot.

An import runs in two steps so that nothing changes unless everything is
valid: every record is read and checked against the OSV schema first,
written to a spool file as the canonical OSV JSON the store keeps (so a
feed of any size passes through in bounded memory), and only then does one
database transaction take the spools in.

Each record is keyed by its feed, its path inside the feed and its ID:
AlmaLinux publishes the same ALSA ID once per major release, under different
paths, and both must survive."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import tempfile
import urllib.parse
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import IO, Any

import httpx
import jsonschema
import yaml

from moorage.config import Settings
from moorage.datadir import prepare_data_dir, restrict_umask
from moorage.metadata import create_metadata_engine, sqlite_url, upgrade
from moorage.metadata.advisory_store import AdvisoryStore, SnapshotInfo, SourceInfo
from moorage.metadata.database import installation_lock
from moorage.va.ecosystems import index_key
from moorage.va.osv import from_osv, to_osv

MAX_RECORD_BYTES = 16 * 1024 * 1024  # one record file, or one zip member uncompressed
MAX_DOWNLOAD_BYTES = 2 * 1024 * 1024 * 1024
BUNDLE_MANIFEST = "moorage-advisories.json"
BUNDLE_FORMAT = "moorage-advisory-bundle/1"
_EXTENSIONS = (".json", ".yaml", ".yml")
_EPOCH = (1980, 1, 1, 0, 0, 0)


class FeedError(Exception):
    """A feed that cannot be imported; the message names the file and field."""


# --- records ---------------------------------------------------------------------


def _schema() -> dict[str, Any]:
    text = resources.files("moorage.va").joinpath("data/osv-schema.json").read_text()
    schema: dict[str, Any] = json.loads(text)
    return schema


_VALIDATOR = jsonschema.Draft202012Validator(_schema())


def validate(record: Any, where: str) -> None:
    """Raise ``FeedError`` naming ``where`` and the offending field unless
    ``record`` is a valid OSV record."""
    if not isinstance(record, dict):
        raise FeedError(f"{where}: not an OSV record (a JSON object)")
    error = jsonschema.exceptions.best_match(_VALIDATOR.iter_errors(record))
    if error is None:
        return
    field_path = "/".join(str(p) for p in error.absolute_path) or "(record)"
    message = error.message if len(error.message) <= 200 else error.message[:200] + "..."
    raise FeedError(f"{where}: invalid OSV record: field {field_path}: {message}")


class _NoAliasLoader(yaml.SafeLoader):  # type: ignore[misc]
    """YAML without anchors and aliases: no feed needs them, and an alias bomb
    would expand into gigabytes when the record is written out as JSON."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            raise yaml.YAMLError("aliases are not allowed")
        return super().compose_node(parent, index)


def load_document(path: str, data: bytes) -> Any:
    """A JSON or YAML document (by extension); ``FeedError`` when unreadable."""
    try:
        if path.endswith(".json"):
            return json.loads(data)
        return yaml.load(data, Loader=_NoAliasLoader)
    except (ValueError, yaml.YAMLError, RecursionError) as exc:
        raise FeedError(
            f"{path}: not valid {'JSON' if path.endswith('.json') else 'YAML'}: "
            f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
        ) from None


def _is_secdb(doc: Any) -> bool:
    return isinstance(doc, dict) and "packages" in doc and "distroversion" in doc


def secdb_advisories(doc: Mapping[str, Any], where: str, modified: str) -> list[dict[str, Any]]:
    """Alpine secdb (one branch and repository: ``packages[].pkg.secfixes``,
    fixed version -> identifiers) as OSV records in "Alpine:vX.Y", one per
    identifier, each package fixed at the highest version that lists it.
    Version "0" means the identifier never applied to Alpine's package."""
    branch = doc.get("distroversion")
    if not isinstance(branch, str) or not re.fullmatch(r"v\d+\.\d+", branch):
        raise FeedError(f"{where}: invalid secdb: field distroversion: {branch!r}")
    ecosystem = f"Alpine:{branch}"
    fixes: dict[str, dict[str, str]] = {}
    from moorage.va.versions import VersionError, compare

    packages = doc.get("packages") or []
    if not isinstance(packages, list):
        raise FeedError(f"{where}: invalid secdb: field packages: not a list")
    for i, item in enumerate(packages):
        pkg = item.get("pkg") if isinstance(item, dict) else None
        name = pkg.get("name") if isinstance(pkg, dict) else None
        if not isinstance(name, str) or not name:
            raise FeedError(f"{where}: invalid secdb: field packages/{i}/pkg/name")
        secfixes = pkg.get("secfixes") or {}  # type: ignore[union-attr]
        if not isinstance(secfixes, dict):
            raise FeedError(f"{where}: invalid secdb: field packages/{i}/pkg/secfixes")
        for version, ids in secfixes.items():
            version = str(version)
            if version == "0":
                continue
            if not isinstance(ids, list):
                raise FeedError(
                    f"{where}: invalid secdb: field packages/{i}/pkg/secfixes/{version}"
                )
            for text in ids:
                for ident in str(text).split():
                    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._:-]*", ident):
                        continue  # prose some entries carry beside the identifier
                    known = fixes.setdefault(ident, {})
                    try:
                        if name not in known or compare(ecosystem, version, known[name]) > 0:
                            known[name] = version
                    except VersionError:
                        raise FeedError(
                            f"{where}: invalid secdb: field packages/{i}/pkg/secfixes: "
                            f"{version!r} is not an apk version"
                        ) from None
    records = []
    for ident in sorted(fixes):
        records.append(
            {
                "schema_version": "1.6.0",
                "id": f"ALPINE-{ident}",
                "modified": modified,
                "aliases": [ident],
                "affected": [
                    {
                        "package": {"ecosystem": ecosystem, "name": name},
                        "ranges": [
                            {"type": "ECOSYSTEM", "events": [{"introduced": "0"}, {"fixed": v}]}
                        ],
                    }
                    for name, v in sorted(fixes[ident].items())
                ],
            }
        )
    return records


# --- feeds -------------------------------------------------------------------------


@dataclass(frozen=True)
class FeedFile:
    path: str  # inside the feed, "/"-separated
    data: bytes
    mtime: datetime


def _rfc3339(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _read_bounded(stream: IO[bytes], where: str, limit: int = MAX_RECORD_BYTES) -> bytes:
    data = stream.read(limit + 1)
    if len(data) > limit:
        raise FeedError(f"{where}: larger than {limit} bytes")
    return data


def _dir_files(root: Path) -> Iterator[FeedFile]:
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if not name.endswith(_EXTENSIONS):
                continue
            full = Path(dirpath) / name
            if full.is_symlink():
                continue
            with full.open("rb") as f:
                data = _read_bounded(f, str(full))
            yield FeedFile(
                full.relative_to(root).as_posix(),
                data,
                datetime.fromtimestamp(full.stat().st_mtime, UTC),
            )


def _zip_files(archive: zipfile.ZipFile, where: str) -> Iterator[FeedFile]:
    for info in sorted(archive.infolist(), key=lambda i: i.filename):
        if info.is_dir() or not info.filename.endswith(_EXTENSIONS):
            continue
        member = f"{where}!{info.filename}"
        if info.file_size > MAX_RECORD_BYTES:
            raise FeedError(f"{member}: larger than {MAX_RECORD_BYTES} bytes")
        with archive.open(info) as f:
            data = _read_bounded(f, member)
        yield FeedFile(info.filename, data, datetime(*info.date_time, tzinfo=UTC))


@dataclass
class Spool:
    """One feed read and checked: its records as JSON lines in a temporary
    file, each ``{"path", "id", "modified", "digest", "keys", "record"}``."""

    name: str
    kind: str
    file: IO[str]
    records: int = 0
    newest_modified: str = ""
    imported_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    digest: str = ""  # sha256 over (path, id, record digest) lines, in order

    def add(self, path: str, record: dict[str, Any], hasher: Any) -> None:
        body = json.dumps(record, sort_keys=True, separators=(",", ":"))
        digest = hashlib.sha256(body.encode()).hexdigest()
        keys = sorted(
            {
                index_key(a["package"]["ecosystem"], a["package"]["name"])
                for a in record.get("affected") or ()
                if (a.get("package") or {}).get("ecosystem") and a["package"].get("name")
            }
        )
        line = {"path": path, "id": record["id"], "modified": record["modified"]}
        line |= {"digest": digest, "keys": keys, "record": body}
        self.file.write(json.dumps(line, separators=(",", ":")) + "\n")
        hasher.update(f"{path}\0{record['id']}\0{digest}\n".encode())
        self.records += 1
        self.newest_modified = max(self.newest_modified, record["modified"])

    def lines(self) -> Iterator[dict[str, Any]]:
        self.file.seek(0)
        for line in self.file:
            yield json.loads(line)


def _new_spool(name: str, kind: str) -> Spool:
    return Spool(name, kind, tempfile.TemporaryFile("w+", encoding="utf-8"))


def _canonical(record: dict[str, Any], where: str) -> dict[str, Any]:
    """Validated, then reduced to what the Advisor keeps (and validated again,
    so a bundle built from it imports as well)."""
    validate(record, where)
    canonical = to_osv(from_osv(record, ""))
    validate(canonical, where)
    return canonical


def spool_files(name: str, files: Iterator[FeedFile]) -> Spool:
    """Read every record of a feed's files into a spool, or raise ``FeedError``."""
    kinds: set[str] = set()
    spool = _new_spool(name, "")
    hasher = hashlib.sha256()
    seen: set[tuple[str, str]] = set()
    try:
        for f in files:
            doc = load_document(f.path, f.data)
            where = f"{name}:{f.path}"
            if _is_secdb(doc):
                kinds.add("alpine-secdb")
                records = secdb_advisories(doc, where, _rfc3339(f.mtime))
            else:
                kinds.add("osv")
                records = [doc]
            for record in records:
                canonical = _canonical(record, where)
                if (f.path, canonical["id"]) in seen:
                    raise FeedError(f"{where}: field id: {canonical['id']} appears twice")
                seen.add((f.path, canonical["id"]))
                spool.add(f.path, canonical, hasher)
    except BaseException:
        spool.file.close()
        raise
    if spool.records == 0:
        spool.file.close()
        raise FeedError(f"{name}: no advisory records found")
    spool.kind = "+".join(sorted(kinds))
    spool.digest = hasher.hexdigest()
    return spool


def _default_name(location: str) -> str:
    path = urllib.parse.urlparse(location).path if "://" in location else location
    parts = [p for p in path.rstrip("/").split("/") if p]
    if not parts:
        return location
    if parts[-1] == "all.zip" and len(parts) > 1:
        return parts[-2]  # osv.dev's <Ecosystem>/all.zip
    return re.sub(r"\.(zip|json|ya?ml)$", "", parts[-1])


def _download(url: str, limit: int) -> IO[bytes]:
    """The body of ``url`` in a temporary file, streamed, at most ``limit`` bytes."""
    out = tempfile.TemporaryFile()  # noqa: SIM115
    try:
        with httpx.stream("GET", url, follow_redirects=True, timeout=60) as response:
            if response.status_code != 200:
                raise FeedError(f"{url}: HTTP {response.status_code}")
            size = 0
            for chunk in response.iter_bytes(1 << 20):
                size += len(chunk)
                if size > limit:
                    raise FeedError(f"{url}: larger than {limit} bytes")
                out.write(chunk)
    except httpx.HTTPError as exc:
        out.close()
        raise FeedError(f"{url}: {exc}") from None
    except BaseException:
        out.close()
        raise
    out.seek(0)
    return out


def spool_location(
    location: str, name: str | None = None, max_download: int = MAX_DOWNLOAD_BYTES
) -> list[Spool]:
    """The feeds at ``location`` (a directory, a JSON/YAML file, a zip, an
    http(s) URL of either, or a Moorage bundle) read into spools."""
    with contextlib.ExitStack() as stack:
        if location.startswith(("http://", "https://")):
            stream: IO[bytes] = stack.enter_context(_download(location, max_download))
            if stream.read(4) != b"PK\x03\x04":
                stream.seek(0)
                data = _read_bounded(stream, location)
                file = FeedFile(_default_name(location) + ".json", data, datetime.now(UTC))
                if urllib.parse.urlparse(location).path.endswith((".yaml", ".yml")):
                    file = FeedFile(_default_name(location) + ".yaml", data, file.mtime)
                return [spool_files(name or _default_name(location), iter([file]))]
            stream.seek(0)
            return _spool_zip(stack.enter_context(_open_zip(stream, location)), location, name)
        path = Path(location)
        if path.is_dir():
            return [spool_files(name or _default_name(str(path.resolve())), _dir_files(path))]
        if not path.is_file():
            raise FeedError(f"{location}: no such file or directory")
        if zipfile.is_zipfile(path):
            archive = stack.enter_context(_open_zip(path, location))
            return _spool_zip(archive, location, name)
        if not path.name.endswith(_EXTENSIONS):
            raise FeedError(f"{location}: not a directory, zip, JSON or YAML file")
        with path.open("rb") as f:
            data = _read_bounded(f, location)
        mtime = datetime.fromtimestamp(path.stat().st_mtime, UTC)
        return [
            spool_files(name or _default_name(location), iter([FeedFile(path.name, data, mtime)]))
        ]


def _open_zip(file: str | Path | IO[bytes], where: str) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(file)
    except (zipfile.BadZipFile, OSError) as exc:
        raise FeedError(f"{where}: not a readable zip: {exc}") from None


def _spool_zip(archive: zipfile.ZipFile, where: str, name: str | None) -> list[Spool]:
    try:
        if BUNDLE_MANIFEST in archive.namelist():
            if name is not None:
                raise FeedError(f"{where}: a bundle keeps its sources' names; drop --name")
            return _spool_bundle(archive, where)
        return [spool_files(name or _default_name(where), _zip_files(archive, where))]
    except zipfile.BadZipFile as exc:
        raise FeedError(f"{where}: not a readable zip: {exc}") from None


# --- bundles ---------------------------------------------------------------------------


def _spool_bundle(archive: zipfile.ZipFile, where: str) -> list[Spool]:
    manifest = load_document(
        ".json", _read_bounded(archive.open(BUNDLE_MANIFEST), f"{where}!{BUNDLE_MANIFEST}")
    )
    if not isinstance(manifest, dict) or manifest.get("format") != BUNDLE_FORMAT:
        raise FeedError(f"{where}!{BUNDLE_MANIFEST}: field format: not {BUNDLE_FORMAT}")
    spools: list[Spool] = []
    try:
        for i, source in enumerate(manifest.get("sources") or ()):
            spools.append(_spool_bundled_source(archive, where, i, source))
    except BaseException:
        for s in spools:
            s.file.close()
        raise
    return spools


def _spool_bundled_source(archive: zipfile.ZipFile, where: str, i: int, source: Any) -> Spool:
    field_where = f"{where}!{BUNDLE_MANIFEST}: field sources/{i}"
    try:
        name, kind, member = str(source["name"]), str(source["kind"]), str(source["file"])
        sha256 = str(source["sha256"])
        imported_at = datetime.fromisoformat(str(source["imported_at"]))
    except (TypeError, KeyError, ValueError) as exc:
        raise FeedError(f"{field_where}: {exc}") from None
    spool = _new_spool(name, kind)
    spool.imported_at = imported_at
    hasher = hashlib.sha256()
    content = hashlib.sha256()
    try:
        with archive.open(member) as f:
            for n, raw in enumerate(io.TextIOWrapper(f, encoding="utf-8")):
                content.update(raw.encode())
                line_where = f"{where}!{member}:{n + 1}"
                try:
                    entry = json.loads(raw)
                    path, record = str(entry["path"]), entry["record"]
                except (ValueError, TypeError, KeyError) as exc:
                    raise FeedError(f"{line_where}: field path/record: {exc}") from None
                spool.add(path, _canonical(record, f"{line_where} ({path})"), hasher)
        if content.hexdigest() != sha256:
            raise FeedError(f"{field_where}: sha256 of {member} does not match the manifest")
    except KeyError:
        spool.file.close()
        raise FeedError(f"{field_where}: {member} is not in the bundle") from None
    except BaseException:
        spool.file.close()
        raise
    spool.digest = hasher.hexdigest()
    return spool


def _zip_write(archive: zipfile.ZipFile, name: str, data: bytes) -> None:
    info = zipfile.ZipInfo(name, _EPOCH)
    info.compress_type = zipfile.ZIP_DEFLATED
    archive.writestr(info, data)


def write_bundle(store: AdvisoryStore, destination: Path) -> int:
    """Write the current snapshot as a bundle ``import`` takes back as it was:
    per source a JSON-lines member of ``{"path", "record"}`` (OSV JSON), and a
    manifest naming each source with its kind, age and member's sha256.
    Returns the number of records written."""
    snapshot = store.current()
    if snapshot is None:
        raise FeedError("there is no advisory data to export: run `moorage va db import` first")
    sources = []
    total = 0
    tmp = destination.with_name(destination.name + ".tmp")
    with zipfile.ZipFile(tmp, "w") as archive:
        for i, source in enumerate(snapshot.sources):
            member = f"sources/{i:04d}.jsonl"
            digest = hashlib.sha256()
            with archive.open(zipfile.ZipInfo(member, _EPOCH), "w") as out:
                for path, body in store.records(snapshot.id, source.name):
                    line = (
                        json.dumps(
                            {"path": path, "record": json.loads(body)},
                            sort_keys=True,
                            separators=(",", ":"),
                        )
                        + "\n"
                    ).encode()
                    digest.update(line)
                    out.write(line)
                    total += 1
            sources.append(
                {
                    "name": source.name,
                    "kind": source.kind,
                    "records": source.records,
                    "newest_modified": source.newest_modified,
                    "imported_at": source.imported_at.isoformat(),
                    "file": member,
                    "sha256": digest.hexdigest(),
                }
            )
        manifest = {"format": BUNDLE_FORMAT, "snapshot": snapshot.id, "sources": sources}
        _zip_write(archive, BUNDLE_MANIFEST, json.dumps(manifest, indent=2).encode())
    os.replace(tmp, destination)
    return total


# --- the workflow ------------------------------------------------------------------------


def import_locations(
    store: AdvisoryStore,
    locations: Sequence[str],
    name: str | None = None,
    max_download: int = MAX_DOWNLOAD_BYTES,
) -> SnapshotInfo:
    """Read every location, then import them all as one new snapshot; on any
    error nothing is imported. Returns the new ``SnapshotInfo``."""
    if name is not None and len(locations) != 1:
        raise FeedError("--name needs exactly one PATH or URL")
    spools: list[Spool] = []
    try:
        for location in locations:
            spools.extend(spool_location(location, name, max_download))
        names = [s.name for s in spools]
        for n in names:
            if names.count(n) > 1:
                raise FeedError(
                    f"two feeds are both named {n!r}: import them separately or use --name"
                )
        return store.import_snapshot(spools)
    finally:
        for s in spools:
            s.file.close()


@contextlib.contextmanager
def open_store(settings: Settings) -> Iterator[AdvisoryStore]:
    """The advisory store of the server's database, migrated first (as
    ``moorage gc`` opens it: an operator command beside running replicas)."""
    restrict_umask()
    data = settings.data_path
    prepare_data_dir(data)
    engine = create_metadata_engine(settings.database_url or sqlite_url(data))
    try:
        with installation_lock(engine, data):
            upgrade(engine)
        yield AdvisoryStore(engine)
    finally:
        engine.dispose()


def age(source: SourceInfo, now: datetime) -> str:
    """How old a source's newest record is, for people: "3d", "5h", "12m"."""
    try:
        newest = datetime.fromisoformat(source.newest_modified.replace("Z", "+00:00"))
    except ValueError:
        return "?"
    seconds = max(0, int((now - newest).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"
