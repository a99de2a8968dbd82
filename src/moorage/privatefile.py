"""Writing a file that holds a secret (an API key, a token, a private key), so
that nobody else can capture it, even in a directory others can write to.

A planted ``<file>.tmp`` or a symbolic link must not receive the secret, and
an existing file's mode must not decide who can read it. So: the bytes go to
a new file of a random name in the same directory, created exclusively and
without following a link (``O_CREAT|O_EXCL|O_NOFOLLOW``) with its mode set at
creation, fsynced, then renamed over the target in one step (readers see the
old file or the new one, never half of one). A target that is itself a
symbolic link is refused rather than replaced or followed."""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path

_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


class UnsafeTarget(OSError):
    """The target is a symbolic link (or not a regular file); nothing was written."""


def write_private(path: Path, data: bytes, mode: int = 0o600, replace: bool = True) -> None:
    """Put ``data`` at ``path`` with ``mode`` (0600: the owner only). With
    ``replace=False`` an existing file is kept and FileExistsError raised, so two
    processes creating the same key never overwrite each other's."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    if path.is_symlink() or (path.exists() and not path.is_file()):
        raise UnsafeTarget(f"{path} is a symbolic link or not a regular file; not writing to it")
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(tmp, _FLAGS, mode)
    try:
        os.fchmod(fd, mode)  # exactly ``mode``, whatever the umask
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if replace:
            os.replace(tmp, path)
        else:
            os.link(tmp, path, follow_symlinks=False)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    _sync_directory(path.parent)


def _sync_directory(directory: Path) -> None:
    """Make the rename durable (a crash must not bring back the old file)."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
