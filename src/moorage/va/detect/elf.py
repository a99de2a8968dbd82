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
from dataclasses import dataclass

from elftools.elf.elffile import ELFFile

# The layer reader's default per-file budget: an executable bigger than this
# is not buffered (a rare Go or Rust binary over 64 MiB goes unread).
MAX_EXECUTABLE_BYTES = 64 * 1024 * 1024
MAGIC = b"\x7fELF"


def wants_executable(mode: int, size: int) -> bool:
    """Decide from a tar header alone: any executable regular file under the cap
    may be an ELF binary (``parse`` checks the magic before anything else)."""
    return bool(mode & 0o111) and 0 < size <= MAX_EXECUTABLE_BYTES


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
        return self._data[span.offset : span.offset + span.size]

    def read(self, address: int, size: int) -> bytes | None:
        """``size`` bytes at a virtual address of a loaded segment, or ``None``
        when they are not all in the file."""
        if size < 0:
            return None
        for span in self._loads:
            if span.start <= address and address + size <= span.start + span.size:
                offset = span.offset + (address - span.start)
                chunk = self._data[offset : offset + size]
                return chunk if len(chunk) == size else None
        return None

    @property
    def data(self) -> bytes:
        return self._data
