"""Facts for the configuration checks the original Advisor made: password
ageing in ``etc/login.defs``, an SSH server installed, and world-writable
files or directories (without the sticky bit) in system paths. The last two
come from tar headers alone, so they cost nothing to find."""

from __future__ import annotations

import stat

from moorage.va.detect import Detector, HeaderDetector, Member
from moorage.va.model import Entry

LOGIN_DEFS = "etc/login.defs"
LOGIN_DEFS_KEYS = ("PASS_MAX_DAYS", "PASS_MIN_DAYS", "PASS_MIN_LEN")
SSHD_PATHS = ("usr/sbin/sshd", "usr/bin/sshd", "sbin/sshd")
SYSTEM_PATHS = ("bin", "sbin", "usr", "lib", "lib64", "etc")
_MAX_BYTES = 1 << 20


def login_defs(text: str) -> tuple[tuple[str, str], ...]:
    """The password-ageing settings, as ``login.defs(5)`` reads them: the
    first word is the key, the next the value; ``#`` starts a comment."""
    found: dict[str, str] = {}
    for line in text.splitlines():
        words = line.split("#", 1)[0].split()
        if len(words) >= 2 and words[0] in LOGIN_DEFS_KEYS:
            found[words[0]] = words[1]
    return tuple(sorted(found.items()))


class LoginDefs:
    kind = "login.defs"

    def wants(self, path: str, mode: int, size: int) -> bool:
        return path == LOGIN_DEFS and size <= _MAX_BYTES

    def parse(self, path: str, data: bytes) -> Entry | None:
        return Entry(path=path, kind=self.kind, facts=login_defs(data.decode("utf-8", "replace")))


class Sshd:
    kind = "sshd"

    def header(self, member: Member) -> Entry | None:
        if member.path in SSHD_PATHS and member.kind != "dir":
            return Entry(path=member.path, kind=self.kind)
        return None


class WorldWritable:
    kind = "world-writable"

    def header(self, member: Member) -> Entry | None:
        if member.kind not in ("file", "dir") or not member.mode & stat.S_IWOTH:
            return None
        if member.kind == "dir" and member.mode & stat.S_ISVTX:
            return None  # /tmp-like: anyone may create, only owners remove
        if member.path.split("/", 1)[0] not in SYSTEM_PATHS:
            return None
        facts = (("mode", f"{member.mode:04o}"), ("type", member.kind))
        return Entry(path=member.path, kind=self.kind, facts=facts)


DETECTORS: list[Detector] = [LoginDefs()]
HEADER_DETECTORS: list[HeaderDetector] = [Sshd(), WorldWritable()]
