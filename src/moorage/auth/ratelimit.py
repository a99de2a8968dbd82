"""Throttling of failed sign-ins, per client address and per identity, so
that guessing API keys or passwords is slow from any one place.

``FailureLimiter`` is the rule, in one process's memory. The throttles
below keep its reserve/forgive contract where the count lives: in memory
(one process, the embedded SQLite default), in the metadata database
(processes and replicas sharing it), or in Redis (``[auth] redis_url``)."""

from __future__ import annotations

import time
import uuid
from collections import deque
from dataclasses import dataclass
from typing import Any, Protocol

DEFAULT_LIMITS = {
    "ip": 100,  # one address may hold many clients (NAT, CI runners)
    "cred": 10,  # one secret guessed at
    "user": 10,  # one identity's password guessed at
}


class FailureLimiter:
    """Counts failures per key (``"ip:..."``, ``"cred:..."``, ``"user:..."``) over a
    sliding window; each kind of key has its own ceiling.

    An attempt is counted as a failure before its credential is checked
    (``reserve``) and forgiven when it succeeds (``forgive``), so attempts made
    in parallel cannot all slip under the ceiling before the first one fails."""

    def __init__(self, limits: dict[str, int] | None = None, window: float = 60.0) -> None:
        self.limits = limits or DEFAULT_LIMITS
        self.window = window
        self._failures: dict[str, deque[float]] = {}

    def _limit(self, key: str) -> int:
        return self.limits.get(key.split(":", 1)[0], min(self.limits.values()))

    def _recent(self, key: str, now: float) -> deque[float]:
        entries = self._failures.get(key)
        if entries is None:
            entries = self._failures[key] = deque()
        while entries and entries[0] <= now - self.window:
            entries.popleft()
        return entries

    def retry_after(self, *keys: str) -> float:
        """Seconds until every one of ``keys`` may try again; 0 when none is blocked."""
        now = time.monotonic()
        wait = 0.0
        for key in keys:
            entries = self._recent(key, now)
            if len(entries) >= self._limit(key):
                wait = max(wait, entries[-self._limit(key)] + self.window - now)
        return wait

    def reserve(self, *keys: str) -> float:
        """Count an attempt as failed on every key, unless one is already at its
        ceiling: then count nothing and return the seconds to wait."""
        wait = self.retry_after(*keys)
        if wait > 0:
            return wait
        self.failed(*keys)
        return 0.0

    def forgive(self, *keys: str) -> None:
        """Take back the failure ``reserve`` counted, for an attempt that succeeded."""
        for key in keys:
            entries = self._failures.get(key)
            if entries:
                entries.pop()

    def failed(self, *keys: str) -> None:
        now = time.monotonic()
        for key in keys:
            self._recent(key, now).append(now)
        if len(self._failures) > 100_000:  # bound memory under a spray of addresses
            stale = now - self.window
            for key in [k for k, v in self._failures.items() if not v or v[-1] <= stale]:
                del self._failures[key]


@dataclass(frozen=True)
class Reservation:
    """An attempt counted against its keys (``wait`` 0), or refused because a key
    is at its ceiling (``wait``: seconds until it may try again; nothing was
    counted). ``ids`` is what ``forgive`` takes back, in the throttle's terms."""

    keys: tuple[str, ...]
    wait: float
    ids: tuple[Any, ...] = ()


class Throttle(Protocol):
    """Counts failed sign-ins per key, with the reserve/forgive contract of
    ``FailureLimiter``: an attempt is counted before it is checked, atomically
    with the ceiling check, and taken back if it succeeds."""

    async def reserve(self, *keys: str) -> Reservation: ...

    async def forgive(self, reservation: Reservation) -> None: ...


class MemoryThrottle:
    """One process's own count (the embedded SQLite default)."""

    def __init__(self, limiter: FailureLimiter | None = None) -> None:
        self.limiter = limiter or FailureLimiter()

    async def reserve(self, *keys: str) -> Reservation:
        return Reservation(keys, self.limiter.reserve(*keys))

    async def forgive(self, reservation: Reservation) -> None:
        self.limiter.forgive(*reservation.keys)


class _Refusals:
    """Keys this process saw at their ceiling, until when: asked again before
    then, the answer is the same without asking the shared store. A count only
    falls as failures age out, so the answer stays right (at worst a forgiven
    success makes it early by one attempt's worth)."""

    def __init__(self) -> None:
        self._until: dict[str, float] = {}

    def wait(self, keys: tuple[str, ...], now: float) -> float:
        return max((self._until.get(k, 0.0) - now for k in keys), default=0.0)

    def refused(self, blocked: dict[str, float], now: float) -> None:
        """``blocked``: the keys at their ceiling, and the seconds each must wait."""
        if len(self._until) > 100_000:
            self._until = {k: t for k, t in self._until.items() if t > now}
        for key, wait in blocked.items():
            self._until[key] = max(self._until.get(key, 0.0), now + wait)


class DatabaseThrottle:
    """The count in the metadata database (table ``signin_failures``), shared by
    every process and replica: the check and the count are one transaction,
    under an advisory lock per key on PostgreSQL (the write lock on SQLite).
    Failures older than the window are pruned every ``prune_every`` seconds."""

    def __init__(
        self,
        store: Any,  # moorage.metadata.shared_store.FailureStore
        run: Any,  # DatabaseThreads.run
        limits: dict[str, int] | None = None,
        window: float = 60.0,
        prune_every: float = 30.0,
    ) -> None:
        self.store = store
        self.run = run
        self.shape = FailureLimiter(limits, window)
        self.window = window
        self.prune_every = prune_every
        self._pruned = 0.0
        self._refusals = _Refusals()

    def _reserve(self, keys: tuple[str, ...]) -> Reservation:
        now = time.time()
        if now - self._pruned > self.prune_every:
            self._pruned = now
            self.store.prune(now - self.window)
        ids, blocked = self.store.reserve(
            [(k, self.shape._limit(k)) for k in keys], now, self.window
        )
        if blocked:
            self._refusals.refused(blocked, now)
            return Reservation(keys, max(blocked.values()))
        return Reservation(keys, 0.0, tuple(ids))

    async def reserve(self, *keys: str) -> Reservation:
        wait = self._refusals.wait(keys, time.time())
        if wait > 0:
            return Reservation(keys, wait)
        result: Reservation = await self.run(self._reserve, keys)
        return result

    async def forgive(self, reservation: Reservation) -> None:
        if reservation.ids:
            await self.run(self.store.forgive, list(reservation.ids))


_RESERVE_SCRIPT = """
local now = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local waits = {}
local refused = false
for i, key in ipairs(KEYS) do
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
  local ceiling = tonumber(ARGV[3 + i])
  waits[i] = '0'
  if redis.call('ZCARD', key) >= ceiling then
    local entry = redis.call('ZREVRANGE', key, ceiling - 1, ceiling - 1, 'WITHSCORES')
    waits[i] = tostring(tonumber(entry[2]) + window - now)
    refused = true
  end
end
if refused then return waits end
for i, key in ipairs(KEYS) do
  redis.call('ZADD', key, now, ARGV[3])
  redis.call('EXPIRE', key, math.ceil(window) + 1)
end
return waits
"""


class RedisThrottle:
    """The count in Redis (``[auth] redis_url``): a sorted set of failure
    times per key, checked and counted by one Lua script, which Redis runs
    atomically. Keys share one hash tag, so a Redis Cluster keeps them in one
    slot."""

    PREFIX = "moorage:{signin}:"

    def __init__(
        self, url: str, limits: dict[str, int] | None = None, window: float = 60.0
    ) -> None:
        import redis.asyncio

        self.client = redis.asyncio.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
        self.shape = FailureLimiter(limits, window)
        self.window = window
        self._script = self.client.register_script(_RESERVE_SCRIPT)
        self._refusals = _Refusals()

    async def reserve(self, *keys: str) -> Reservation:
        now = time.time()
        wait = self._refusals.wait(keys, now)
        if wait > 0:
            return Reservation(keys, wait)
        member = uuid.uuid4().hex
        answer = await self._script(
            keys=[self.PREFIX + k for k in keys],
            args=[repr(now), repr(self.window), member, *(self.shape._limit(k) for k in keys)],
        )
        blocked = {k: float(w) for k, w in zip(keys, answer, strict=True) if float(w) > 0}
        if blocked:
            self._refusals.refused(blocked, now)
            return Reservation(keys, max(blocked.values()))
        return Reservation(keys, 0.0, (member,))

    async def forgive(self, reservation: Reservation) -> None:
        if reservation.ids:
            async with self.client.pipeline(transaction=False) as pipe:
                for key in reservation.keys:
                    pipe.zrem(self.PREFIX + key, reservation.ids[0])
                await pipe.execute()

    async def ping(self) -> bool:
        return bool(await self.client.ping())
