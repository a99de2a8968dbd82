"""The data directory holds password hashes, signing keys, sealed registry
tokens and every image: only the user that runs Moorage may read it.

``serve`` and ``gc`` run with umask 077, so everything they create (SQLite's
database, WAL and shared-memory files, blobs, uploads, keys) is 0600 in 0700
directories. An existing directory others can read is tightened; one others
can write to, or that another user owns, is refused: its contents could have
been replaced by someone else."""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

from moorage.config import ConfigError

log = logging.getLogger("moorage")

PRIVATE_UMASK = 0o077


class DataDirError(ConfigError):
    pass


def restrict_umask() -> None:
    """New files and directories of this process: owner only."""
    os.umask(PRIVATE_UMASK)


def prepare_data_dir(path: Path) -> None:
    """Create ``path`` 0700, or check and tighten an existing one."""
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = path.stat()
    except OSError as exc:
        raise DataDirError(f"cannot create data directory {path}: {exc.strerror}") from None
    if not stat.S_ISDIR(info.st_mode):
        raise DataDirError(f"data directory {path} is not a directory")
    mode = stat.S_IMODE(info.st_mode)
    if info.st_uid != os.geteuid():
        raise DataDirError(
            f"data directory {path} belongs to uid {info.st_uid}, not to uid {os.geteuid()} "
            "that runs moorage"
        )
    if mode & 0o022:
        raise DataDirError(
            f"data directory {path} is writable by other users (mode {mode:04o}); "
            f"check its contents, then: chmod 700 {path}"
        )
    if mode & 0o077:
        os.chmod(path, 0o700)
        log.warning(
            "data directory %s was readable by other users (mode %04o): now 0700", path, mode
        )
    # The directory alone keeps others out; its direct entries are tightened
    # too, so that loosening the directory later does not expose them.
    for entry in os.scandir(path):
        if entry.is_symlink():
            continue
        entry_info = entry.stat(follow_symlinks=False)
        entry_mode = stat.S_IMODE(entry_info.st_mode)
        if entry_info.st_uid == os.geteuid() and entry_mode & 0o077:
            os.chmod(entry.path, entry_mode & 0o700)
            log.warning(
                "%s was open to other users (mode %04o): now owner only", entry.path, entry_mode
            )
