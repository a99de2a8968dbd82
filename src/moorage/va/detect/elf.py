"""ELF reading shared by the Go and Rust detectors: both look for a section
their toolchain writes into executables (``.go.buildinfo``, cargo
auditable's ``.dep-v0``), and Go's older build info points into the data
segments by virtual address.

pyelftools parses the headers; section and segment contents are sliced from
the bytes already in memory, never decompressed or read through pyelftools'
streams, so a crafted header can neither allocate more than the file holds
nor decompress a bomb. Any error a malformed file makes pyelftools raise
means "not an executable we can read": callers get ``None``."""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass

from elftools.elf.elffile import ELFFile

# Go binaries of 100 MiB are common (kubectl, terraform providers): wanting
# them up to this leaves the decision to the layer reader's per-file budget,
# which marks the layer PARTIAL rather than skip one silently.
MAX_EXECUTABLE_BYTES = 256 * 1024 * 1024
MAGIC = b"\x7fELF"


def wants_executable(mode: int, size: int) -> bool:
    """Decide from a tar header alone: any executable regular file under the cap
    may be an ELF binary (``parse`` checks the magic before anything else)."""
    return bool(mode & 0o111) and 0 < size <= MAX_EXECUTABLE_BYTES


def section_names(data: bytes) -> bytes:
    """The section name table, read straight from the headers (microseconds,
    where pyelftools takes milliseconds): the detectors ask it first whether
    the section they need is there at all. Empty when the file has none or
    its headers are out of bounds."""
    if (
        len(data) < 64
        or not data.startswith(MAGIC)
        or data[4] not in (1, 2)
        or data[5] not in (1, 2)
    ):
        return b""
    order = "<" if data[5] == 1 else ">"
    wide = data[4] == 2
    try:
        shoff = struct.unpack_from(order + ("Q" if wide else "I"), data, 0x28 if wide else 0x20)[0]
        entsize, count, shstrndx = struct.unpack_from(order + "HHH", data, 0x3A if wide else 0x2E)
        if not shoff or not shstrndx or shstrndx >= count:
            return b""  # no section headers (sstrip), or no name table
        entry = shoff + shstrndx * entsize
        offset, size = struct.unpack_from(
            order + ("QQ" if wide else "II"), data, entry + (0x18 if wide else 0x10)
        )
    except (struct.error, OverflowError):
        return b""
    # Offsets are attacker-chosen 64-bit numbers: clamp before slicing.
    return data[offset : offset + size] if offset + size <= len(data) else b""


@dataclass(frozen=True)
class _Span:
    start: int  # virtual address (segments) or 0 (sections)
    offset: int
    size: int


class Elf:
    """An ELF file held in memory, with the few reads the detectors need."""

    def __init__(
        self, data: bytes, little_endian: bool, sections: dict[str, _Span], loads: list[_Span]
    ):
        self._data = data
        self.little_endian = little_endian
        self._sections = sections
        self._loads = loads

    @classmethod
    def open(cls, data: bytes) -> Elf | None:
        if not data.startswith(MAGIC):
            return None
        try:
            elf = ELFFile(io.BytesIO(data))
            sections: dict[str, _Span] = {}
            for section in elf.iter_sections():
                header = section.header
                if header["sh_type"] == "SHT_NOBITS":
                    continue
                sections.setdefault(section.name, _Span(0, header["sh_offset"], header["sh_size"]))
            loads = [
                _Span(seg.header["p_vaddr"], seg.header["p_offset"], seg.header["p_filesz"])
                for seg in elf.iter_segments()
                if seg.header["p_type"] == "PT_LOAD"
            ]
            little = elf.little_endian
        except Exception:  # pyelftools raises many types on malformed input
            return None
        return cls(data, bool(little), sections, loads)

    def section(self, name: str) -> bytes | None:
        """The raw bytes of the first section called ``name``, or ``None``;
        cut short where the file ends."""
        span = self._sections.get(name)
        if span is None or span.offset >= len(self._data):
            return None
        return self._data[span.offset : span.offset + min(span.size, len(self._data))]

    def read(self, address: int, size: int) -> bytes | None:
        """``size`` bytes at a virtual address of a loaded segment, or ``None``
        when they are not all in the file."""
        if size < 0:
            return None
        for span in self._loads:
            if span.start <= address and address + size <= span.start + span.size:
                offset = span.offset + (address - span.start)
                if offset + size > len(self._data):
                    return None
                return self._data[offset : offset + size]
        return None

    @property
    def data(self) -> bytes:
        return self._data
