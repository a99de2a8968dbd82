"""One streaming pass over a layer: decompress (gzip, zstd or none, told by
the magic bytes), walk the tar headers, and hand each regular file a detector
wants to that detector; nothing else is buffered, so memory stays bounded by
``Budget.max_file_bytes`` whatever the layer's size.

A layer is attacker input. Paths are normalised and ``..`` escapes refused,
links are never followed, extended headers are capped, and whatever the
reader could not see (a budget exceeded, a file too large, a corrupt or
truncated stream) makes the layer PARTIAL with the reason, never a silent
skip. Content that is not a tar at all is UNREADABLE."""

from __future__ import annotations

import gzip
import io
import posixpath
import tarfile
import time
import zlib
from dataclasses import dataclass
from typing import IO, Any, BinaryIO, Protocol, Self, cast

import zstandard

from moorage.va.detect import (
    Detector,
    HeaderDetector,
    Member,
    PartialRead,
    detectors,
    header_detectors,
)
from moorage.va.model import (
    INDEXER_VERSION,
    Entry,
    FoundPackage,
    LayerIndex,
    LayerState,
    PackageType,
)

MiB = 1 << 20

WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"

_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_OTHER_MAGIC = {b"BZh": "bzip2", b"\xfd7zXZ\x00": "xz"}

# Extended headers (pax, GNU long names) are read whole by tarfile: cap them so
# a header cannot be a memory bomb. Linux paths stop at 4096 bytes.
_MAX_EXTENDED_HEADER = 1 * MiB
_MAX_GLOBAL_HEADERS = 1 * MiB
_MAX_PATH = 4096
_EXTENDED_TYPES = (
    tarfile.XHDTYPE,
    tarfile.XGLTYPE,
    tarfile.SOLARIS_XHDTYPE,
    tarfile.GNUTYPE_LONGNAME,
    tarfile.GNUTYPE_LONGLINK,
)
_MAX_REASONS = 5
_READ = 64 * 1024


@dataclass(frozen=True)
class Budget:
    """What one layer may cost. ``max_layer_bytes`` counts the uncompressed
    tar stream (a gzip bomb is stopped by it); ``max_entries`` bounds what is
    kept (entries and whiteouts) against a layer of millions of tiny files."""

    max_file_bytes: int = 64 * MiB
    max_layer_bytes: int = 64 * 1024 * MiB
    max_seconds: float = 600.0
    max_entries: int = 200_000


# tarfile's header errors are private (and untyped): a corrupt or truncated
# header after the first is taken for the archive's end unless caught here.
_CORRUPT_HEADER: tuple[type[Exception], ...] = (
    vars(tarfile)["InvalidHeaderError"],
    vars(tarfile)["TruncatedHeaderError"],
)


class _Readable(Protocol):
    def readinto(self, buffer: Any, /) -> int: ...


class _OverBudget(Exception):
    """Raised from inside the read path, so it stops tarfile wherever it is."""


class _Source(io.RawIOBase):
    """The raw blob, counting the bytes taken from it, with the bytes peeked
    for the magic put back in front."""

    def __init__(self, stream: BinaryIO, prefix: bytes) -> None:
        self._stream = stream
        self._prefix = prefix
        self.consumed = len(prefix)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        if self._prefix:
            n = min(len(view), len(self._prefix))
            view[:n] = self._prefix[:n]
            self._prefix = self._prefix[n:]
            return n
        readinto = getattr(self._stream, "readinto", None)
        if readinto is not None:
            n = readinto(view) or 0
        else:
            data = self._stream.read(len(view))
            n = len(data)
            view[:n] = data
        self.consumed += n
        return n


class _Budgeted(io.RawIOBase):
    """The decompressed tar stream, checked against the size and time budget
    on every read, so a stalled or endless stream cannot hold the reader."""

    def __init__(self, inner: _Readable, budget: Budget, deadline: float) -> None:
        self._inner = inner
        self._budget = budget
        self._deadline = deadline
        self.delivered = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if time.monotonic() > self._deadline:
            raise _OverBudget(f"over the time budget of {self._budget.max_seconds:g} s")
        # At most 64 KiB a call: a decompressor that fails mid-call loses what
        # it had decoded, so a broken stream keeps nearly all it delivered.
        n = self._inner.readinto(memoryview(buffer).cast("B")[:_READ])
        self.delivered += n
        if self.delivered > self._budget.max_layer_bytes:
            raise _OverBudget(f"over the size budget of {self._budget.max_layer_bytes} bytes")
        return n


class _Tar(tarfile.TarFile):
    """Remembers a corrupt header after the first, which tarfile would take
    for the end of the archive, and the total of global pax headers."""

    corrupt: str = ""
    global_bytes: int = 0
    members: list[tarfile.TarInfo]  # tarfile's own, which its stubs leave out


class _Info(tarfile.TarInfo):
    """Refuses extended headers too large to hold (tarfile reads them whole)."""

    @classmethod
    def fromtarfile(cls, tarfile_: tarfile.TarFile) -> Self:
        try:
            return super().fromtarfile(tarfile_)
        except _CORRUPT_HEADER as e:
            if tarfile_.offset and isinstance(tarfile_, _Tar):
                tarfile_.corrupt = f"corrupt tar header at offset {tarfile_.offset}: {e}"
            raise

    def _proc_member(self, tarfile_: tarfile.TarFile) -> tarfile.TarInfo:
        if self.type in _EXTENDED_TYPES:
            if self.size > _MAX_EXTENDED_HEADER:
                raise _OverBudget(f"an extended tar header of {self.size} bytes")
            if self.type == tarfile.XGLTYPE and isinstance(tarfile_, _Tar):
                tarfile_.global_bytes += self.size
                if tarfile_.global_bytes > _MAX_GLOBAL_HEADERS:
                    raise _OverBudget("global pax headers over 1 MiB")
        return super()._proc_member(tarfile_)  # type: ignore[misc,no-any-return]


def normalise(name: str) -> str | None:
    """The member's path relative to the root ("" for the root itself), or
    None when it climbs out of it. Undecodable bytes become U+FFFD, so every
    path is valid UTF-8 in the store."""
    name = name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    path = posixpath.normpath("/" + name)
    # normpath keeps a leading "//"; "/.." normalises to "/", so climbing is
    # caught on the raw components instead.
    depth = 0
    for part in name.split("/"):
        if part == "..":
            depth -= 1
            if depth < 0:
                return None
        elif part not in ("", "."):
            depth += 1
    return path.lstrip("/")


def _kind(info: tarfile.TarInfo) -> str:
    if info.isreg():
        return "file"
    if info.isdir():
        return "dir"
    if info.issym():
        return "symlink"
    if info.islnk():
        return "hardlink"
    return "other"


class _Collector:
    """What the pass has found so far, with the reasons it is incomplete."""

    def __init__(self, budget: Budget) -> None:
        self.budget = budget
        self.entries: list[Entry] = []
        self.whiteouts: list[str] = []
        self.opaque: list[str] = []
        self.reasons: list[str] = []
        self.more_reasons = 0

    def incomplete(self, reason: str) -> None:
        if len(self.reasons) < _MAX_REASONS:
            self.reasons.append(reason)
        else:
            self.more_reasons += 1

    def kept(self) -> int:
        return len(self.entries) + len(self.whiteouts) + len(self.opaque)

    def reason(self) -> str:
        text = "; ".join(self.reasons)
        if self.more_reasons:
            text += f"; and {self.more_reasons} more"
        return text


def _member(
    tf: _Tar,
    info: tarfile.TarInfo,
    found: _Collector,
    wanted: list[Detector],
    headers: list[HeaderDetector],
) -> None:
    path = normalise(info.name)
    if path is None:
        found.incomplete(f"member {info.name[:200]!r} climbs out of the root: not read")
        return
    if len(path) > _MAX_PATH:
        found.incomplete(f"a member path of {len(path)} characters: not read")
        return
    if not path:
        return
    directory, base = posixpath.split(path)
    if base == OPAQUE:
        found.opaque.append(directory)
        return
    if base.startswith(WHITEOUT):
        if not base.startswith(WHITEOUT + WHITEOUT):  # ".wh..wh.*" are aufs bookkeeping
            found.whiteouts.append(posixpath.join(directory, base[len(WHITEOUT) :]))
        return
    kind = _kind(info)
    linkname = info.linkname
    if kind == "hardlink":
        linkname = normalise(linkname) or ""
    member = Member(
        path=path, kind=kind, mode=info.mode & 0o7777, size=info.size, linkname=linkname
    )
    recorded = False
    for hook in headers:
        entry = hook.header(member)
        if entry is not None:
            found.entries.append(entry)
            recorded = recorded or entry.path == path
    if kind == "hardlink":
        # A header detector may record the link (os-release does); otherwise a
        # wanted file behind a hard link is a file not seen.
        if not recorded and any(d.wants(path, member.mode, 0) for d in wanted):
            found.incomplete(f"{path} is a hard link to {linkname}: not followed")
        return
    if kind != "file":
        return
    takers = [d for d in wanted if d.wants(path, member.mode, info.size)]
    if not takers:
        return
    if info.size > found.budget.max_file_bytes:
        found.incomplete(
            f"{path} is {info.size} bytes, over the {found.budget.max_file_bytes}"
            " bytes a file may have"
        )
        return
    try:
        fileobj = tf.extractfile(info)
        data = fileobj.read(info.size) if fileobj is not None else b""
    except tarfile.StreamError as e:  # a sparse file, which stream mode cannot read
        found.incomplete(f"{path} could not be read: {e}")
        return
    for detector in takers:
        try:
            entry = detector.parse(path, data)
        except PartialRead as e:
            found.incomplete(f"{path}: {e.reason}"[:300])
            entry = e.entry
        except Exception as e:  # a parser's bug on hostile input must not end the pass
            found.incomplete(f"{path} could not be read as {detector.kind}: {e!r}"[:300])
            continue
        if entry is not None:
            found.entries.append(entry)


def _decompressed(source: _Source, magic: bytes) -> _Readable | str:
    """The tar stream, or why it cannot be had."""
    if magic.startswith(_GZIP_MAGIC):
        return gzip.GzipFile(fileobj=source, mode="rb")
    if magic.startswith(_ZSTD_MAGIC):
        reader: _Readable = zstandard.ZstdDecompressor().stream_reader(
            cast(IO[bytes], source), read_across_frames=True
        )
        return reader
    for prefix, name in _OTHER_MAGIC.items():
        if magic.startswith(prefix):
            return f"{name} compression is not supported"
    return source


def index_layer(stream: BinaryIO, digest: str, budget: Budget = Budget()) -> LayerIndex:
    """Index one layer in one pass. Blocking (run it in a thread); never
    raises on bad content. ``bytes_read`` is how much of the blob was taken,
    which stops at the tar's end (or where the budget stopped the pass)."""
    deadline = time.monotonic() + budget.max_seconds
    magic = stream.read(6)
    source = _Source(stream, magic)
    found = _Collector(budget)

    def result(state: LayerState, reason: str = "") -> LayerIndex:
        return LayerIndex(
            digest=digest,
            indexer_version=INDEXER_VERSION,
            entries=tuple(found.entries),
            whiteouts=tuple(found.whiteouts),
            opaque=tuple(found.opaque),
            state=state,
            reason=reason,
            bytes_read=source.consumed,
        )

    inner = _decompressed(source, magic)
    if isinstance(inner, str):
        return result(LayerState.UNREADABLE, inner)
    budgeted = _Budgeted(inner, budget, deadline)
    # tarfile reads in 10 KiB pieces: buffered here, in C, the budget and the
    # decompressor see 1 MiB reads instead.
    tar_stream = io.BufferedReader(budgeted, buffer_size=MiB)
    wanted = detectors()
    headers = header_detectors()
    tf: _Tar | None = None
    try:
        tf = _Tar.open(fileobj=tar_stream, mode="r|", tarinfo=_Info)
        assert tf is not None
        while (info := tf.next()) is not None:
            tf.members.clear()  # stream mode keeps every header otherwise
            _member(tf, info, found, wanted, headers)
            if found.kept() > budget.max_entries:
                found.incomplete(f"more than {budget.max_entries} entries")
                break
            if time.monotonic() > deadline:
                raise _OverBudget(f"over the time budget of {budget.max_seconds:g} s")
    except _OverBudget as e:
        found.incomplete(str(e))
    except (
        tarfile.TarError,
        EOFError,
        OSError,
        zlib.error,
        zstandard.ZstdError,
        UnicodeError,
        ValueError,
        RecursionError,
    ) as e:
        if tf is None or (tf.offset == 0 and not found.kept()):
            return result(LayerState.UNREADABLE, f"not a tar stream: {e}"[:300])
        found.incomplete(f"the stream broke off at tar offset {tf.offset}: {e}"[:300])
    if tf is not None and tf.corrupt:
        found.incomplete(tf.corrupt)
    if found.reasons:
        return result(LayerState.PARTIAL, found.reason())
    return result(LayerState.COMPLETE)


# --- the store's form ---------------------------------------------------------


def _package_to_json(p: FoundPackage) -> dict[str, Any]:
    return {
        "type": p.type.value,
        "name": p.name,
        "version": p.version,
        "path": p.path,
        "namespace": p.namespace,
        "source_name": p.source_name,
        "source_version": p.source_version,
        "arch": p.arch,
    }


def _package_from_json(d: dict[str, Any]) -> FoundPackage:
    return FoundPackage(
        type=PackageType(d["type"]),
        name=d["name"],
        version=d["version"],
        path=d["path"],
        namespace=d.get("namespace"),
        source_name=d.get("source_name"),
        source_version=d.get("source_version"),
        arch=d.get("arch"),
    )


def entry_to_json(e: Entry) -> dict[str, Any]:
    return {
        "path": e.path,
        "kind": e.kind,
        "packages": [_package_to_json(p) for p in e.packages],
        "facts": [[k, v] for k, v in e.facts],
    }


def entry_from_json(d: dict[str, Any]) -> Entry:
    return Entry(
        path=d["path"],
        kind=d["kind"],
        packages=tuple(_package_from_json(p) for p in d.get("packages", ())),
        facts=tuple((k, v) for k, v in d.get("facts", ())),
    )


def layer_to_json(layer: LayerIndex) -> dict[str, Any]:
    return {
        "digest": layer.digest,
        "indexer_version": layer.indexer_version,
        "entries": [entry_to_json(e) for e in layer.entries],
        "whiteouts": list(layer.whiteouts),
        "opaque": list(layer.opaque),
        "state": layer.state.value,
        "reason": layer.reason,
        "bytes_read": layer.bytes_read,
    }


def layer_from_json(d: dict[str, Any]) -> LayerIndex:
    return LayerIndex(
        digest=d["digest"],
        indexer_version=d["indexer_version"],
        entries=tuple(entry_from_json(e) for e in d["entries"]),
        whiteouts=tuple(d.get("whiteouts", ())),
        opaque=tuple(d.get("opaque", ())),
        state=LayerState(d.get("state", LayerState.COMPLETE.value)),
        reason=d.get("reason", ""),
        bytes_read=d.get("bytes_read", 0),
    )
