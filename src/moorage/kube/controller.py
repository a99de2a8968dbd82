"""The pull-secret controller: keeps the registry pull secrets of the
``default`` namespace copied and attached in every namespace that matches a
label selector (minus those that opt out), and rotates the cluster's API key
on a schedule without breaking pulls: new key everywhere first, old key last."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kubernetes import client as k8s
from kubernetes import watch
from kubernetes.client.exceptions import ApiException

from moorage.kube.pullsecrets import PullSecrets, secret_name

log = logging.getLogger("moorage.controller")
OPT_OUT_LABEL = "moorage.io/pull-secrets"
OPT_OUT_VALUE = "disabled"
SOURCE = "default"


@dataclass
class Controller:
    core: k8s.CoreV1Api
    hosts: list[str]
    selector: str = ""
    rotate: Callable[[], None] | None = None  # makes a new key and rewrites the sources
    rotate_every: float = 0.0
    retire: Callable[[], None] | None = None  # deletes the keys the rotation replaced
    pending: set[str] = field(default_factory=set)
    _last_rotation: float = field(default_factory=time.monotonic)

    @property
    def secrets(self) -> PullSecrets:
        return PullSecrets(self.core)

    def wanted(self, namespace: Any) -> bool:
        labels = namespace.metadata.labels or {}
        name = namespace.metadata.name
        return (
            name != SOURCE
            and not name.startswith("kube-")
            and labels.get(OPT_OUT_LABEL) != OPT_OUT_VALUE
            and namespace.status.phase != "Terminating"
        )

    def reconcile(self, namespace: str) -> bool:
        """Copy and attach; False when the namespace is not ready (no default service
        account yet), so it is retried."""
        try:
            copied = self.secrets.copy(SOURCE, namespace)
            names = copied or [secret_name(namespace, h) for h in self.hosts]
            self.secrets.attach(namespace, names)
        except ApiException as exc:
            if exc.status == 404:
                return False
            raise
        log.info("namespace %s: pull secrets %s present and attached", namespace, ", ".join(names))
        return True

    def resync_all(self) -> None:
        listed: Any = self.core.list_namespace(label_selector=self.selector)
        for namespace in listed.items:
            name = str(namespace.metadata.name)
            if self.wanted(namespace) and not self.reconcile(name):
                self.pending.add(name)

    def step(self, seconds: int = 1) -> None:
        """One round: namespace events for up to ``seconds``, retries, rotation."""
        watcher: Any = watch.Watch  # the client's watch module is untyped
        stream = watcher().stream(
            self.core.list_namespace, label_selector=self.selector, timeout_seconds=seconds
        )
        for event in stream:
            namespace = event["object"]
            if event["type"] in ("ADDED", "MODIFIED") and self.wanted(namespace):
                self.pending.add(namespace.metadata.name)
            for name in list(self.pending):
                if self.reconcile(name):
                    self.pending.discard(name)
        for name in list(self.pending):
            if self.reconcile(name):
                self.pending.discard(name)
        if (
            self.rotate
            and self.rotate_every
            and time.monotonic() - self._last_rotation >= self.rotate_every
        ):
            self._last_rotation = time.monotonic()
            self.rotate()
            self.resync_all()  # every copy holds the new key ...
            if self.retire:
                self.retire()  # ... before the old one goes

    def run(self, stop: Callable[[], bool]) -> None:
        self.resync_all()
        while not stop():
            try:
                self.step()
            except ApiException as exc:
                log.warning("Kubernetes API: %s %s; retrying", exc.status, exc.reason)
                time.sleep(1)
