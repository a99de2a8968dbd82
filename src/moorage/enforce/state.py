"""What the webhook knows of the cluster, kept by list-then-watch informers
(``moorage.kube.informer``) so that an admission never waits on the API
server: ImagePolicies and ClusterImagePolicies (parsed once per change),
registry and key Secrets, service accounts, namespaces (for the opt-out
label), and the ConfigMap whose ``generation`` revokes cached verdicts in
every replica at once."""

from __future__ import annotations

import inspect
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

from moorage.enforce.matching import Pattern
from moorage.enforce.policy import (
    CLUSTER_IMAGE_POLICY,
    GROUP,
    IMAGE_POLICY,
    PLURALS,
    VERSION,
    Policy,
    PolicyError,
    parse_spec,
)
from moorage.kube.informer import Informer
from moorage.kube.keyring import DOCKERCFG, DOCKERCONFIGJSON

log = logging.getLogger("moorage.enforce")
CONFIGMAP = "moorage-enforce"  # data: generation, exempt-namespaces, opt-out-namespaces
KEY_SECRET_TYPE = "Opaque"


class Resource:
    """A custom object as the informer handles it: its dict, plus the
    ``metadata`` attributes the informer reads. The watch builds one per event
    through ``from_dict`` (the client's deserializer calls it)."""

    def __init__(self, raw: dict[str, Any]) -> None:
        self.raw = raw
        meta = raw.get("metadata") or {}
        self.metadata = SimpleNamespace(
            name=meta.get("name"),
            namespace=meta.get("namespace"),
            resource_version=meta.get("resourceVersion"),
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Resource:
        return cls(data)


class CustomLister:
    """``list_cluster_custom_object`` for one resource, shaped like a typed
    list method: pages of ``Resource`` for a list, the raw stream for a watch
    (whose events the client turns into ``Resource`` by the return annotation)."""

    def __init__(self, api_client: Any, plural: str, group: str = GROUP) -> None:
        from kubernetes import client

        self.api = client.CustomObjectsApi(api_client)
        self.plural, self.group = plural, group
        self.__signature__ = inspect.Signature(return_annotation=Resource)

    def __call__(self, **kwargs: Any) -> Any:
        result: Any = self.api.list_cluster_custom_object(
            self.group, VERSION, self.plural, **kwargs
        )
        if kwargs.get("watch"):
            return result
        meta = result.get("metadata") or {}
        return SimpleNamespace(
            items=[Resource(item) for item in result.get("items") or []],
            metadata=SimpleNamespace(
                _continue=meta.get("continue"), resource_version=meta.get("resourceVersion")
            ),
        )


@dataclass(frozen=True)
class Entry:
    """One repository entry of one policy object."""

    source: str  # "ImagePolicy team/strict" or "ClusterImagePolicy default"
    key_namespace: str  # where its key Secrets live
    pattern: Pattern
    policy: Policy  # an entry without a policy gets the empty one: no checks
    index: int

    def describe(self) -> str:
        return f"{self.source} (repository {self.pattern.text!r})"


@dataclass(frozen=True)
class PolicySet:
    """The entries that apply in one namespace, or the policies that break it."""

    scope: str  # "the ImagePolicies of namespace x" or "the ClusterImagePolicies"
    entries: tuple[Entry, ...]
    broken: tuple[str, ...] = ()


def parse_object(kind: str, raw: dict[str, Any], enforce_namespace: str) -> list[Entry]:
    meta = raw.get("metadata") or {}
    namespace = meta.get("namespace") or ""
    source = f"{kind} {namespace + '/' if namespace else ''}{meta.get('name')}"
    try:
        spec = parse_spec(raw.get("spec"))
    except PolicyError as exc:
        raise PolicyError(f"{source} is invalid: {exc}") from None
    keys = namespace if kind == IMAGE_POLICY else enforce_namespace
    return [
        Entry(source, keys, Pattern.parse(r.name), r.policy or Policy(), i)
        for i, r in enumerate(spec.repositories)
    ]


def _names(value: Any) -> frozenset[str]:
    """A ConfigMap's comma-separated list of namespace names or globs."""
    return frozenset(n.strip() for n in str(value or "").split(",") if n.strip())


class ClusterState:
    def __init__(
        self,
        api_client: Any,
        namespace: str,
        on_generation: Callable[[str], None] | None = None,
        watch_seconds: tuple[int, int] = (300, 600),
    ) -> None:
        from kubernetes import client

        self.namespace = namespace
        self.on_generation = on_generation or (lambda _: None)
        self._lock = threading.Lock()
        self._policies: dict[tuple[str, str, str], list[Entry] | PolicyError] = {}
        self.generation: str | None = None
        self.exempt: frozenset[str] = frozenset()  # the ConfigMap's exempt-namespaces
        self.opt_out: frozenset[str] = frozenset()  # its opt-out-namespaces (globs)
        core = client.CoreV1Api(api_client)
        w = watch_seconds
        self.informers = [
            Informer(
                "imagepolicies",
                CustomLister(api_client, PLURALS[IMAGE_POLICY]),
                self._policy_changed(IMAGE_POLICY),
                w,
            ),
            Informer(
                "clusterimagepolicies",
                CustomLister(api_client, PLURALS[CLUSTER_IMAGE_POLICY]),
                self._policy_changed(CLUSTER_IMAGE_POLICY),
                w,
            ),
            Informer("namespaces", core.list_namespace, lambda *_: None, w),
            Informer(
                "serviceaccounts",
                core.list_service_account_for_all_namespaces,
                lambda *_: None,
                w,
            ),
            Informer(
                "configmap",
                core.list_namespaced_config_map,
                self._configmap_changed,
                w,
                namespace=namespace,
                field_selector=f"metadata.name={CONFIGMAP}",
            ),
        ]
        self.namespaces, self.service_accounts = self.informers[2], self.informers[3]
        self.secret_informers = [
            Informer(
                f"secrets ({kind})",
                core.list_secret_for_all_namespaces,
                lambda *_: None,
                w,
                field_selector=f"type={kind}",
            )
            for kind in (DOCKERCONFIGJSON, DOCKERCFG, KEY_SECRET_TYPE)
        ]
        self.informers += self.secret_informers
        self._threads: list[threading.Thread] = []

    # -- running ------------------------------------------------------------------

    def start(self, stop: threading.Event) -> None:
        for informer in self.informers:
            thread = threading.Thread(
                target=informer.run, args=(stop,), name=f"informer {informer.name}", daemon=True
            )
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        for informer in self.informers:
            informer.stop()

    def synced(self) -> bool:
        return all(i.synced.is_set() for i in self.informers)

    def unsynced(self) -> list[str]:
        return [i.name for i in self.informers if not i.synced.is_set()]

    # -- callbacks (informer threads) ------------------------------------------------

    def _policy_changed(self, kind: str) -> Callable[[Any, Any], None]:
        def changed(old: Resource | None, new: Resource | None) -> None:
            obj = new or old
            if obj is None:
                return
            key = (kind, obj.metadata.namespace or "", obj.metadata.name)
            with self._lock:
                if new is None:
                    self._policies.pop(key, None)
                    return
                try:
                    self._policies[key] = parse_object(kind, new.raw, self.namespace)
                except PolicyError as exc:
                    log.warning("%s", exc)
                    self._policies[key] = exc

        return changed

    def _configmap_changed(self, old: Any, new: Any) -> None:
        data = (new.data or {}) if new is not None else {}
        self.exempt = _names(data.get("exempt-namespaces"))
        self.opt_out = _names(data.get("opt-out-namespaces"))
        value = str(data.get("generation", ""))
        if value != self.generation:
            first = self.generation is None and old is None
            self.generation = value
            if not first:
                self.on_generation(value)

    # -- reading (any thread) ---------------------------------------------------------

    def policies_for(self, namespace: str) -> PolicySet:
        """A namespace's ImagePolicies when it has any (used exclusively, as in
        Portieris), else the ClusterImagePolicies."""
        with self._lock:
            own = {k: v for k, v in self._policies.items() if k[:2] == (IMAGE_POLICY, namespace)}
            if own:
                scope = f"the ImagePolicies of namespace {namespace}"
                chosen = own
            else:
                scope = "the ClusterImagePolicies"
                chosen = {k: v for k, v in self._policies.items() if k[0] == CLUSTER_IMAGE_POLICY}
        entries: list[Entry] = []
        broken: list[str] = []
        for key in sorted(chosen):
            value = chosen[key]
            if isinstance(value, PolicyError):
                broken.append(str(value))
            else:
                entries += value
        return PolicySet(scope, tuple(entries), tuple(broken))

    def secret(self, namespace: str, name: str) -> Any | None:
        for informer in self.secret_informers:
            found = informer.get(namespace, name)
            if found is not None:
                return found
        return None

    def service_account(self, namespace: str, name: str) -> Any | None:
        return self.service_accounts.get(namespace, name)

    def namespace_labels(self, name: str) -> dict[str, str] | None:
        """A namespace's labels; None when the cache has not seen it."""
        found = self.namespaces.get("", name)
        return None if found is None else dict(found.metadata.labels or {})
