"""A registered cluster: how to reach its API server, and what its nodes know
about registries (which ones they reach over plain HTTP, which CA they trust)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from moorage.kube.errors import KubeError


@dataclass(frozen=True)
class Cluster:
    name: str
    kubeconfig: str
    context: str | None = None
    region: str | None = None
    # Registries (host[:port]) the cluster's nodes pull from over plain HTTP; every
    # other registry is reached over HTTPS only.
    insecure_registries: tuple[str, ...] = field(default_factory=tuple)
    ca_bundle: str | None = None  # PEM file of the CA that signs private registries
    # Hosts (host[:port]) and networks (CIDR) on loopback, link-local, private or
    # cluster addresses that fetches for this cluster may reach (moorage.egress).
    allow_private: tuple[str, ...] = field(default_factory=tuple)

    @classmethod
    def from_json(cls, name: str, entry: dict[str, Any]) -> Cluster:
        return cls(
            name=name,
            kubeconfig=str(entry["kubeconfig"]),
            context=entry.get("context"),
            region=entry.get("region"),
            insecure_registries=tuple(entry.get("insecure_registries") or ()),
            ca_bundle=entry.get("ca_bundle"),
            allow_private=tuple(entry.get("allow_private") or ()),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "kubeconfig": self.kubeconfig,
            "context": self.context,
            "region": self.region,
            "insecure_registries": list(self.insecure_registries),
            "ca_bundle": self.ca_bundle,
            "allow_private": list(self.allow_private),
        }

    def api_client(self) -> Any:
        """A ``kubernetes.client.ApiClient`` for this cluster's kubeconfig and context."""
        from kubernetes import config

        try:
            return config.new_client_from_config(  # type: ignore[no-untyped-call]
                config_file=self.kubeconfig, context=self.context
            )
        except Exception as exc:  # the kubeconfig is the user's; say what is wrong in one line
            first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise KubeError(f"cannot use the kubeconfig of {self.name!r}: {first_line}") from None
