"""The pull-secret controller: keeps the registry pull secrets of the
``default`` namespace copied and attached in every namespace that matches a
label selector (minus those that opt out), and rotates the cluster's API key
on a schedule without breaking pulls: new key everywhere first, old key last.

It is a controller in the Kubernetes sense. Four informers (namespaces, the
source secrets, the copies it owns, ``default`` service accounts) list once
and then watch; each change queues the namespaces it concerns, and a single
worker compares the desired copies and attachments with the cached objects and
writes only what differs. Once settled it makes no API calls beyond its
watches, and a copy deleted or edited by hand, a detached secret or a changed
source is repaired as soon as its watch event arrives."""

from __future__ import annotations

import copy
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

from moorage.client import ClientError
from moorage.kube.informer import Informer
from moorage.kube.keyring import DOCKERCONFIGJSON
from moorage.kube.pullsecrets import KEY_ANNOTATION, MANAGED_BY, secret_name
from moorage.kube.workflows import SOURCE_NAMESPACE, ClusterKeys, write_sources

log = logging.getLogger("moorage.controller")
OPT_OUT_LABEL = "moorage.io/pull-secrets"
OPT_OUT_VALUE = "disabled"
SOURCE = SOURCE_NAMESPACE
EVERY = "\x00every namespace"  # queue key: a source changed
USER_AGENT = "moorage-controller"
RETRY_SECONDS = 2.0


class WorkQueue:
    """Keys waiting for the worker, each at most once, plus delayed retries."""

    def __init__(self) -> None:
        self._ready: dict[str, None] = {}
        self._later: dict[str, float] = {}
        self._cond = threading.Condition()
        self.busy = False

    def add(self, key: str, delay: float = 0.0) -> None:
        with self._cond:
            if delay:
                self._later[key] = min(self._later.get(key, float("inf")), time.monotonic() + delay)
            else:
                self._ready[key] = None
            self._cond.notify()

    def take(self, timeout: float) -> str | None:
        with self._cond:
            deadline = time.monotonic() + timeout
            while True:
                now = time.monotonic()
                for key, at in list(self._later.items()):
                    if at <= now:
                        del self._later[key]
                        self._ready[key] = None
                if self._ready:
                    key = next(iter(self._ready))
                    del self._ready[key]
                    self.busy = True
                    return key
                wait = min([deadline, *self._later.values()]) - now
                if wait <= 0:
                    return None
                self._cond.wait(wait)

    def done(self) -> None:
        with self._cond:
            self.busy = False

    def empty(self) -> bool:
        with self._cond:
            return not self._ready and not self._later and not self.busy


def _differs(live: Any, data: dict[str, str], annotations: dict[str, str]) -> bool:
    if live is None or live.type != DOCKERCONFIGJSON or (live.data or {}) != data:
        return True
    have = live.metadata.annotations or {}
    labels = live.metadata.labels or {}
    return any(have.get(k) != v for k, v in annotations.items()) or any(
        labels.get(k) != v for k, v in MANAGED_BY.items()
    )


@dataclass
class Controller:
    api_client: Any
    hosts: list[str]  # registry domains the source secrets are for
    keys: ClusterKeys | None = None  # makes and retires the cluster's keys
    selector: str = ""
    rotate_every: float = 0.0  # seconds; 0: never
    watch_seconds: tuple[int, int] = (300, 600)
    writes: int = 0  # API writes made (for tests and the benchmark)
    retiring: str | None = None  # a new key, while older ones wait to be retired
    started: bool = False  # synced, sources checked, first pass queued
    queue: WorkQueue = field(default_factory=WorkQueue)
    _stop: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.api_client.user_agent = USER_AGENT
        core = self.core = k8s.CoreV1Api(self.api_client)
        watched = self.watch_seconds
        self.namespaces = Informer(
            "namespaces",
            core.list_namespace,
            self._namespace_changed,
            watched,
            label_selector=self.selector,
        )
        self.sources = Informer(
            "sources",
            core.list_namespaced_secret,
            self._source_changed,
            watched,
            namespace=SOURCE,
        )
        self.copies = Informer(
            "copies",
            core.list_secret_for_all_namespaces,
            self._namespaced_changed,
            watched,
            label_selector=",".join(f"{k}={v}" for k, v in MANAGED_BY.items()),
        )
        self.accounts = Informer(
            "service accounts",
            core.list_service_account_for_all_namespaces,
            self._namespaced_changed,
            watched,
            field_selector="metadata.name=default",
        )
        self.informers = [self.namespaces, self.sources, self.copies, self.accounts]

    # -- what to reconcile --------------------------------------------------------

    @staticmethod
    def wanted(namespace: Any) -> bool:
        labels = namespace.metadata.labels or {}
        name = namespace.metadata.name
        return (
            name != SOURCE
            and not name.startswith("kube-")
            and labels.get(OPT_OUT_LABEL) != OPT_OUT_VALUE
            and namespace.metadata.deletion_timestamp is None
            and (namespace.status is None or namespace.status.phase != "Terminating")
        )

    def _namespace_changed(self, old: Any | None, new: Any | None) -> None:
        if new is not None:
            self.queue.add(new.metadata.name)

    def _source_changed(self, old: Any | None, new: Any | None) -> None:
        def shape(s: Any | None) -> Any:
            if s is None or s.type != DOCKERCONFIGJSON:
                return None
            if not s.metadata.name.startswith(f"{SOURCE}-"):
                return None
            return (s.data, (s.metadata.annotations or {}).get(KEY_ANNOTATION))

        if shape(old) != shape(new):
            self.queue.add(EVERY)

    def _namespaced_changed(self, old: Any | None, new: Any | None) -> None:
        changed: Any = new if new is not None else old
        namespace = changed.metadata.namespace
        if namespace != SOURCE:
            self.queue.add(namespace)

    def desired(self, namespace: str) -> dict[str, tuple[dict[str, str], dict[str, str]]]:
        """The copies a namespace should hold: name -> (data, annotations)."""
        wanted = {}
        prefix = f"{SOURCE}-"
        for source in self.sources.items():
            name = source.metadata.name
            if source.type == DOCKERCONFIGJSON and name.startswith(prefix):
                wanted[f"{namespace}-{name[len(prefix) :]}"] = (
                    dict(source.data or {}),
                    dict(source.metadata.annotations or {}),
                )
        return wanted

    # -- reconciling ------------------------------------------------------------------

    def reconcile(self, namespace: str) -> None:
        """Make a namespace's copies and attachment what they should be, from the
        caches; an API call only for what differs."""
        found = self.namespaces.get("", namespace)
        if found is None or not self.wanted(found):
            return
        desired = self.desired(namespace)
        if not desired:
            return  # nothing to copy yet; a source event brings us back
        for name, (data, notes) in desired.items():
            live = self.copies.get(namespace, name)
            if _differs(live, data, notes):
                self._write_copy(namespace, name, data, notes, live)
        account = self.accounts.get(namespace, "default")
        if account is None:
            return  # its ADDED event brings us back
        current = [ref.name for ref in account.image_pull_secrets or []]
        missing = [n for n in desired if n not in current]
        if missing:
            account = copy.deepcopy(account)  # never change the cached object
            account.image_pull_secrets = [
                k8s.V1LocalObjectReference(name=n) for n in current + missing
            ]
            self.writes += 1
            written = self.core.replace_namespaced_service_account("default", namespace, account)
            self.accounts.update(written)
            log.info("namespace %s: attached %s", namespace, ", ".join(missing))

    def _write_copy(
        self,
        namespace: str,
        name: str,
        data: dict[str, str],
        annotations: dict[str, str],
        live: Any | None,
    ) -> None:
        payload: dict[str, bytes | str] = dict(data)
        body = k8s.V1Secret(
            metadata=k8s.V1ObjectMeta(
                name=name,
                namespace=namespace,
                labels=dict(MANAGED_BY),
                annotations=annotations,
                resource_version=live.metadata.resource_version if live is not None else None,
            ),
            type=DOCKERCONFIGJSON,
            data=payload,
        )
        self.writes += 1
        try:
            if live is None:
                written = self.core.create_namespaced_secret(namespace, body)
            else:
                written = self.core.replace_namespaced_secret(name, namespace, body)
        except ApiException as exc:
            if exc.status != 409 or live is not None:
                raise
            # It exists without our label (edited by hand): not in the cache, so replace.
            self.writes += 1
            written = self.core.replace_namespaced_secret(name, namespace, body)
        self.copies.update(written)
        log.info("namespace %s: wrote %s", namespace, name)

    def _process(self, key: str) -> None:
        names = [n.metadata.name for n in self.namespaces.items()] if key == EVERY else [key]
        for name in names:
            try:
                self.reconcile(name)
            except ApiException as exc:
                if exc.status == 409:  # a newer version is on its way through the watch
                    self.queue.add(name, RETRY_SECONDS)
                else:
                    log.warning(
                        "namespace %s: Kubernetes API said %s %s", name, exc.status, exc.reason
                    )
                    self.queue.add(name, RETRY_SECONDS)
            except (HTTPError, OSError) as exc:
                log.warning("namespace %s: %s; retrying", name, type(exc).__name__)
                self.queue.add(name, RETRY_SECONDS)

    # -- keys ------------------------------------------------------------------------

    def sources_present(self) -> bool:
        return all(self.sources.get(SOURCE, secret_name(SOURCE, h)) is not None for h in self.hosts)

    def rotate(self) -> None:
        """A new key in the sources; the copies follow through the watch."""
        if self.keys is None:
            return
        key = self.keys.issue(f"image pull secrets of cluster {self.keys.cluster} (rotated)")
        write_sources(self.api_client, self.hosts, key)
        self.writes += len(self.hosts) + 1
        self.retiring = key.id
        log.info("rotated: new key %s written to the sources", key.id)

    def everywhere(self, key_id: str) -> bool:
        """Whether every source and every copy in every managed namespace holds the key."""
        sources = [s for s in self.sources.items() if s.metadata.name.startswith(f"{SOURCE}-")]
        if not sources or any(
            (s.metadata.annotations or {}).get(KEY_ANNOTATION) != key_id for s in sources
        ):
            return False
        for namespace in self.namespaces.items():
            if not self.wanted(namespace):
                continue
            for name in self.desired(namespace.metadata.name):
                live = self.copies.get(namespace.metadata.name, name)
                if live is None or (live.metadata.annotations or {}).get(KEY_ANNOTATION) != key_id:
                    return False
        return True

    def _keys_step(self, next_rotation: float) -> float:
        if self.keys is None:
            return float("inf")
        # One rotation at a time: the next waits until the last one's old keys are gone.
        if self.rotate_every and time.monotonic() >= next_rotation and self.retiring is None:
            self.rotate()
            next_rotation = time.monotonic() + self.rotate_every
        if self.retiring and self.queue.empty() and self.everywhere(self.retiring):
            retired = self.keys.retire(keep=self.retiring)
            log.info("every copy holds key %s; retired %s", self.retiring, retired or "nothing")
            self.retiring = None
        return next_rotation

    # -- running -----------------------------------------------------------------------

    @property
    def settled(self) -> bool:
        """Synced, nothing queued, no key waiting to be retired."""
        return (
            self.started
            and all(i.synced.is_set() for i in self.informers)
            and self.queue.empty()
            and self.retiring is None
        )

    def run(self, stop: threading.Event | None = None) -> None:
        stop = stop or self._stop
        threads = [
            threading.Thread(target=i.run, args=(stop,), name=f"informer {i.name}", daemon=True)
            for i in self.informers
        ]
        for thread in threads:
            thread.start()
        while not all(i.synced.wait(0.2) for i in self.informers):
            if stop.is_set():
                return
        if self.keys is not None and not self.sources_present():
            self.rotate()  # first start: the sources do not exist yet
        self.queue.add(EVERY)
        self.started = True
        next_rotation = time.monotonic() + (self.rotate_every or float("inf"))
        try:
            while not stop.is_set():
                key = self.queue.take(timeout=min(1.0, max(next_rotation - time.monotonic(), 0)))
                if key is not None:
                    try:
                        self._process(key)
                    finally:
                        self.queue.done()
                try:
                    next_rotation = self._keys_step(next_rotation)
                except (ClientError, ApiException, HTTPError, OSError) as exc:
                    log.warning("key rotation: %s; retrying", exc)
                    next_rotation = time.monotonic() + RETRY_SECONDS
        finally:
            for informer in self.informers:
                informer.stop()

    def stop(self) -> None:
        self._stop.set()
