"""Pieces the drivers share: upload ids, what a process remembers of uploads
in flight, telling a failed body from a failed backend, and saves that must
finish even when their request is cancelled."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterable, AsyncIterator, Coroutine
from typing import Any

from moorage.oci.digest import Hasher, new_hasher
from moorage.storage.base import UploadMissing

UPLOAD_ID = re.compile(r"^[0-9a-f]{32}\Z")
# Running hashes of uploads are SHA-256, the digest nearly every client uses;
# a commit under another algorithm hashes the staged bytes again.
STAGING_ALGORITHM = "sha256"


class UploadMemory:
    """What a store keeps in this process about uploads in flight: a lock per
    upload (its appends and commits here go one at a time) and its running
    hash as of a ledger version, good only while the row is still at that
    version (an append on another replica moves it on)."""

    def __init__(self) -> None:
        self._hashers: dict[str, tuple[Hasher, int]] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    def lock(self, upload_id: str) -> asyncio.Lock:
        lock = self._locks.get(upload_id)
        if lock is None:
            lock = self._locks[upload_id] = asyncio.Lock()
        return lock

    def start(self, upload_id: str) -> None:
        self._hashers[upload_id] = (new_hasher(STAGING_ALGORITHM), 0)

    def hasher(self, upload_id: str, version: int) -> Hasher | None:
        cached = self._hashers.get(upload_id)
        return cached[0] if cached is not None and cached[1] == version else None

    def saved(self, upload_id: str, hasher: Hasher | None, version: int) -> None:
        """The ledger moved to ``version``; ``hasher`` has seen every byte (or
        None: this process has not)."""
        if hasher is None:
            self._hashers.pop(upload_id, None)
        else:
            self._hashers[upload_id] = (hasher, version)

    def forget(self, upload_id: str) -> None:
        self._hashers.pop(upload_id, None)
        lock = self._locks.get(upload_id)
        if lock is not None and not lock.locked():
            del self._locks[upload_id]


def check_upload_id(upload_id: str) -> str:
    if not UPLOAD_ID.match(upload_id):
        raise UploadMissing(upload_id)
    return upload_id


class BodyFailed(Exception):
    """Wraps an error raised by the request body being read, as opposed to one
    of the store's own: the body's error is what the caller re-raises."""


async def body_of(chunks: AsyncIterable[bytes]) -> AsyncIterator[bytes]:
    """``chunks``, with the body's own errors wrapped in BodyFailed."""
    iterator = aiter(chunks)
    while True:
        try:
            chunk = await anext(iterator)
        except StopAsyncIteration:
            return
        except Exception as exc:
            raise BodyFailed() from exc
        yield chunk


def unwrap(exc: BaseException) -> BaseException:
    """The body's own error for a BodyFailed, else the error itself."""
    if isinstance(exc, BodyFailed) and exc.__cause__ is not None:
        return exc.__cause__
    return exc


def is_cut(exc: BaseException) -> bool:
    """The request stopped arriving (client gone, server stopping), as opposed
    to a store failure or a body of the wrong length."""
    return isinstance(exc, BodyFailed | asyncio.CancelledError)


class Settler:
    """Runs saves to completion even when the request that started them is
    cancelled meanwhile, and lets ``close`` wait for the last of them."""

    def __init__(self) -> None:
        self.pending: set[asyncio.Task[Any]] = set()

    async def settle(self, work: Coroutine[Any, Any, Any], reraise: bool = False) -> Any:
        """Await ``work`` to its end whatever cancellations arrive meanwhile
        (the caller holds locks the work needs). Returns its result; when it
        failed, raises its error with ``reraise``, else returns None."""
        task: asyncio.Task[Any] = asyncio.ensure_future(work)
        self.pending.add(task)
        task.add_done_callback(self.pending.discard)
        while not task.done():
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(task)
        if task.cancelled() or task.exception() is not None:
            if reraise:
                return task.result()  # raises
            return None
        return task.result()

    async def drain(self) -> None:
        while self.pending:
            await asyncio.gather(*self.pending, return_exceptions=True)
