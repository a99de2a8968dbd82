"""A list-then-watch cache of one kind of object, as client-go's informers keep
one: list once (in pages), then watch from the list's resourceVersion, resume
each watch from the last version seen (bookmarks keep it fresh), and list
again only when the API server says that version has expired (410 Gone).
Every change reaches a callback with the old and new object, so a controller
reconciles what changed from memory instead of asking the API server."""

from __future__ import annotations

import contextlib
import logging
import random
import threading
from collections.abc import Callable
from typing import Any

from kubernetes import watch
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

log = logging.getLogger("moorage.informer")

Key = tuple[str, str]  # (namespace, name); namespace "" for cluster-scoped objects
OnChange = Callable[[Any | None, Any | None], None]  # (old, new): None for absent


def _expired(exc: ApiException) -> bool:
    """410 Gone (older than the server keeps, or an old continue token), or a
    version newer than a restarted server has ("Too large resource version"):
    either way only a new list helps."""
    text = f"{exc.reason} {exc.body or ''}".lower()
    return exc.status == 410 or "too large resource version" in text


def key_of(obj: Any) -> Key:
    return (obj.metadata.namespace or "", obj.metadata.name)


class Informer:
    def __init__(
        self,
        name: str,
        list_fn: Callable[..., Any],
        on_change: OnChange,
        watch_seconds: tuple[int, int] = (300, 600),
        page_size: int = 500,
        **selectors: Any,
    ) -> None:
        """``list_fn`` is a client list method (``CoreV1Api.list_namespace``);
        ``selectors`` its fixed arguments (``label_selector=...``). A watch lasts
        a random time in ``watch_seconds``, so many informers do not reconnect
        together."""
        self.name = name
        self._list = list_fn
        self._on_change = on_change
        self._watch_seconds = watch_seconds
        self._page_size = page_size
        self._selectors = selectors
        self._store: dict[Key, Any] = {}
        self._lock = threading.Lock()
        self._watch: Any = None
        self.synced = threading.Event()
        self.resource_version: str | None = None
        self.lists = 0  # how often the informer listed (once, unless versions expired)

    # -- the store ------------------------------------------------------------

    def get(self, namespace: str, name: str) -> Any | None:
        with self._lock:
            return self._store.get((namespace, name))

    def items(self) -> list[Any]:
        with self._lock:
            return list(self._store.values())

    def update(self, obj: Any) -> None:
        """Record an object the controller just wrote (the watch confirms it later),
        so a second event before that does not make it write the same thing again."""
        with self._lock:
            old = self._store.get(key_of(obj))
            if old is None or old.metadata.resource_version != obj.metadata.resource_version:
                self._store[key_of(obj)] = obj

    # -- running ----------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                if self.resource_version is None:
                    self.resource_version = self._relist()
                self.resource_version = self._watch_from(self.resource_version)
            except ApiException as exc:
                if _expired(exc):
                    log.info("%s: resourceVersion expired; listing again", self.name)
                    self.resource_version = None
                    continue
                log.warning("%s: Kubernetes API said %s %s", self.name, exc.status, exc.reason)
                stop.wait(1 + random.random())
            except (HTTPError, OSError, ValueError) as exc:
                if stop.is_set():
                    break
                log.warning("%s: watch broke (%s); resuming", self.name, type(exc).__name__)
                stop.wait(1 + random.random())

    def stop(self) -> None:
        """End the current watch at once (its connection is shut down)."""
        current = self._watch
        if current is not None:
            current.stop()
            response = getattr(current, "_resp", None)  # the client keeps no public handle
            if response is not None and hasattr(response, "shutdown"):
                # The watch may be closing on its own: then there is nothing to shut.
                with contextlib.suppress(OSError, ValueError, RuntimeError):
                    response.shutdown()

    def _relist(self) -> str:
        fresh: dict[Key, Any] = {}
        token: str | None = None
        version = ""
        while True:
            page = self._list(limit=self._page_size, _continue=token, **self._selectors)
            for obj in page.items:
                fresh[key_of(obj)] = obj
            token = page.metadata._continue
            version = page.metadata.resource_version
            if not token:
                break
        self.lists += 1
        with self._lock:
            old, self._store = self._store, fresh
        for key, obj in fresh.items():
            before = old.get(key)
            if before is None or before.metadata.resource_version != obj.metadata.resource_version:
                self._on_change(before, obj)
        for key, gone in old.items():
            if key not in fresh:
                self._on_change(gone, None)
        self.synced.set()
        return str(version)

    def _watch_from(self, version: str) -> str:
        seconds = random.randint(*self._watch_seconds)
        self._watch = watch.Watch()  # type: ignore[no-untyped-call]
        try:
            for event in self._watch.stream(
                self._list,
                resource_version=version,
                allow_watch_bookmarks=True,
                timeout_seconds=seconds,
                _request_timeout=seconds + 30,
                **self._selectors,
            ):
                kind = event["type"]
                if kind == "BOOKMARK":
                    version = event["raw_object"]["metadata"]["resourceVersion"]
                    continue
                obj = event["object"]
                version = obj.metadata.resource_version
                key = key_of(obj)
                with self._lock:
                    old = self._store.get(key)
                    if kind == "DELETED":
                        self._store.pop(key, None)
                    else:
                        self._store[key] = obj
                self._on_change(old, None if kind == "DELETED" else obj)
        finally:
            self._watch = None
        return version
