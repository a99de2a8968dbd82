"""Throttling of failed sign-ins, per client address and per identity, so
that guessing API keys or passwords is slow from any one place."""

from __future__ import annotations

import time
from collections import deque

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
