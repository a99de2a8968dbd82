"""A cache that the change feed keeps honest across processes.

Entries are grouped (a repository's manifests, a namespace's owner) so one
change drops its whole group. A reader takes a ``stamp`` before it reads the
database and offers what it read with that stamp: if any change arrived in
between, the offer is refused, so a value read before a commit is never
cached after the commit's change was heard. Entries also expire after
``ttl`` seconds, and nothing is served while the feed is unhealthy."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

G = TypeVar("G", bound=Hashable)
K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class SharedCache(Generic[G, K, V]):
    def __init__(
        self,
        healthy: Callable[[], bool],
        ttl: float,
        max_weight: int,
        group_of_topic: Callable[[str], Callable[[G], bool] | G | None],
    ) -> None:
        """``group_of_topic(topic)`` names the group a change topic drops: a
        group, a predicate over groups (drop every group it accepts), or None
        when the topic is not this cache's."""
        self._healthy = healthy
        self.ttl = ttl
        self.max_weight = max_weight  # entries, or bytes: whatever offers weigh
        self._group_of_topic = group_of_topic
        self._groups: dict[G, dict[K, tuple[V, float, int]]] = {}
        self._weight = 0
        self._generation = 0
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self.max_weight > 0

    def get(self, group: G, key: K) -> V | None:
        if not self._healthy():
            return None
        entries = self._groups.get(group)
        if entries is None:
            return None
        found = entries.get(key)
        if found is None or found[1] < time.monotonic():
            return None
        return found[0]

    def stamp(self) -> int:
        return self._generation

    def offer(self, group: G, key: K, value: V, stamp: int, weight: int = 1) -> None:
        if not self.enabled or weight > self.max_weight or not self._healthy():
            return
        with self._lock:
            if stamp != self._generation:
                return  # a change arrived while the value was being read
            if self._weight + weight > self.max_weight:
                self._groups.clear()  # crude, and rare: the hot set fills it again
                self._weight = 0
            entries = self._groups.setdefault(group, {})
            old = entries.get(key)
            if old is not None:
                self._weight -= old[2]
            entries[key] = (value, time.monotonic() + self.ttl, weight)
            self._weight += weight

    def _pop(self, group: G) -> None:
        entries = self._groups.pop(group, None)
        if entries:
            self._weight -= sum(e[2] for e in entries.values())

    def drop(self, group: G) -> None:
        with self._lock:
            self._generation += 1
            self._pop(group)

    def clear(self) -> None:
        with self._lock:
            self._generation += 1
            self._groups.clear()
            self._weight = 0

    def changed(self, topic: str | None) -> None:
        """A change feed subscriber."""
        if topic is None:
            self.clear()
            return
        target = self._group_of_topic(topic)
        if target is None:
            return
        if callable(target):
            with self._lock:
                self._generation += 1
                for group in [g for g in self._groups if target(g)]:
                    self._pop(group)
            return
        self.drop(target)


def repository_group(topic: str) -> tuple[str, str] | Callable[[tuple[str, str]], bool] | None:
    """For caches grouped by repository (region, name): which groups a change
    drops. One repository, or every repository of a removed namespace."""
    kind, _, rest = topic.partition(":")
    region, _, name = rest.partition(":")
    if kind == "repo":
        return (region, name)
    if kind == "ns":
        return lambda group: (
            group[0] == region and (group[1] == name or group[1].startswith(name + "/"))
        )
    return None
