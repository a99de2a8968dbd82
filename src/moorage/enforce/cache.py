"""Verified digests, remembered for a while so that the next pod of the same
image is admitted from memory. Only admissions are kept: an image signed
after it was denied is admitted on the next try. Each entry is keyed by the
digest and by everything the verdict depended on (the policy's requirements,
the keys' identities, the tag for identity rules), so a changed policy or
rotated key never meets an old verdict. What the registry held when a
verdict was reached is the caller's to record and compare (``verify.py``
keeps the signatures' evidence beside each verdict and drops one whose
evidence changed, ``discard()``). ``clear()`` (a new cache generation,
``moorage enforce cache-flush``) revokes every entry at once."""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class VerdictCache(Generic[T]):
    def __init__(self, ttl: float, size: int = 10000) -> None:
        self.ttl = ttl
        self.size = size
        self._entries: OrderedDict[str, tuple[float, T]] = OrderedDict()
        self._running: dict[str, asyncio.Future[T]] = {}
        self.generation = 0  # bumped by clear(): work started before it is not kept

    def get(self, key: str) -> T | None:
        found = self._entries.get(key)
        if found is None:
            return None
        if found[0] <= time.monotonic():
            del self._entries[key]
            return None
        return found[1]

    def put(self, key: str, value: T) -> None:
        if self.ttl <= 0:
            return
        self._entries[key] = (time.monotonic() + self.ttl, value)
        self._entries.move_to_end(key)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)

    def discard(self, key: str) -> None:
        self._entries.pop(key, None)

    def clear(self) -> None:
        self._entries.clear()
        self.generation += 1

    def __len__(self) -> int:
        return len(self._entries)

    async def once(
        self, key: str, work: Callable[[], Awaitable[T]], keep: Callable[[T], bool]
    ) -> T:
        """Run ``work`` for ``key`` once however many admissions ask at the same
        moment; keep its result when ``keep`` says so and no clear() came between."""
        running = self._running.get(key)
        if running is not None:
            return await asyncio.shield(running)
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._running[key] = future
        started = self.generation
        try:
            value = await work()
        except BaseException as exc:
            if isinstance(exc, asyncio.CancelledError):
                future.cancel()
            else:
                future.set_exception(exc)
                future.exception()  # retrieved: waiting callers re-raise it themselves
            raise
        finally:
            self._running.pop(key, None)
        if keep(value) and self.generation == started:
            self.put(key, value)
        future.set_result(value)
        return value
