"""Whether a credential lets an image be pulled, asked without leaking it.

Rules (an attacker may own any registry an image names):

- A credential goes only to the registry it was stored for: the keyring entry's
  host must be exactly the image's host (a wildcard or Docker Hub entry is
  reported, not sent), and nothing follows a redirect.
- Moorage's own domains (regional and legacy, from ``/api/v1/cr/regions``) are
  never signed in to: the Moorage management API answers ``pull-check`` and
  explains denials itself.
- Any other registry is reached through ``moorage.egress``: over HTTPS (plain
  HTTP only when the cluster's registration lists it as insecure), never on a
  loopback, link-local, private or cluster address the registration does not
  allow (``--allow-private``), and a Bearer token service is followed only
  when it lives on the registry's own host."""

from __future__ import annotations

import re
import ssl
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

import httpx

from moorage.client import ClientError, ManagementClient
from moorage.egress import Egress, Refused, credential_for
from moorage.kube.keyring import Credential, is_default_registry

MANIFEST_TYPES = ", ".join(
    [
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.docker.distribution.manifest.v2+json",
    ]
)


class Verdict(StrEnum):
    OK = "ok"
    DENIED = "denied"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class CheckResult:
    verdict: Verdict
    cause: str = ""
    fix: str = ""


@dataclass(frozen=True)
class ImageRef:
    host: str  # host[:port], lower case
    path: str  # repository path without the host
    reference: str  # tag or digest

    @property
    def repository(self) -> str:
        return f"{self.host}/{self.path}"

    @classmethod
    def parse(cls, image: str) -> ImageRef:
        name, _, digest = image.partition("@")
        last = name.rsplit("/", 1)[-1]
        tag = ""
        if ":" in last:
            tag = last.split(":", 1)[1]
            name = name[: len(name) - len(last)] + last.split(":", 1)[0]
        if is_default_registry(name):
            host, path = "docker.io", name if "/" in name else f"library/{name}"
        else:
            host, _, path = name.partition("/")
        return cls(host.lower(), path, digest or tag or "latest")


class CredentialCheck(Protocol):
    def __call__(self, image: ImageRef, credential: Credential) -> CheckResult: ...


def _key_host(credential: Credential) -> str:
    return credential.key.split("/", 1)[0].lower()


def moorage_hosts(management: ManagementClient) -> set[str]:
    """Every domain Moorage answers on, regional and legacy, with the server's port."""
    suffix = management.port_suffix
    hosts = set()
    for region in management.regions():
        for domain in (region.get("domain"), region.get("legacy_domain")):
            if domain:
                hosts.add(f"{domain}{suffix}".lower())
    return hosts


class MoorageCheck:
    """Asks the management API (``POST /cr/pull-check``); the registry host is
    never contacted and the server explains every denial."""

    def __init__(self, management: ManagementClient) -> None:
        self.management = management

    def __call__(self, image: ImageRef, credential: Credential) -> CheckResult:
        try:
            answer = self.management.request(
                "POST",
                "/cr/pull-check",
                {
                    "registry": image.host,
                    "repository": image.path,
                    "username": credential.username,
                    "password": credential.password,
                },
            )
        except ClientError as exc:
            if exc.status in (404, 405):
                return CheckResult(
                    Verdict.UNKNOWN,
                    "the Moorage server cannot check pulls (no /api/v1/cr/pull-check)",
                    "upgrade the Moorage server",
                )
            raise
        if not answer.get("moorage_domain"):
            return CheckResult(
                Verdict.UNKNOWN,
                f"Moorage does not serve {image.host}",
                "check the image's registry address",
            )
        if answer.get("authenticated") and answer.get("allowed"):
            return CheckResult(Verdict.OK)
        return CheckResult(
            Verdict.DENIED,
            str(answer.get("cause") or "Moorage refuses this credential"),
            str(answer.get("fix") or ""),
        )


_CHALLENGE = re.compile(r'(\w+)="([^"]*)"')


def _challenge(header: str) -> tuple[str, dict[str, str]]:
    scheme, _, rest = header.strip().partition(" ")
    return scheme.lower(), {k.lower(): v for k, v in _CHALLENGE.findall(rest)}


class RegistryCheck:
    """Signs in at a registry that is not Moorage's, on that host only."""

    def __init__(
        self,
        insecure: tuple[str, ...] = (),
        ca_bundle: str | None = None,
        timeout: float = 10,
        allow_private: tuple[str, ...] = (),
    ) -> None:
        self.egress = Egress.parse(
            allow_private, insecure, allow_option="moorage ks cluster-register --allow-private"
        )
        self.verify: bool | ssl.SSLContext = (
            ssl.create_default_context(cafile=ca_bundle) if ca_bundle else True
        )
        self.timeout = timeout

    def scheme(self, host: str) -> str:
        return self.egress.scheme(host)

    def __call__(self, image: ImageRef, credential: Credential) -> CheckResult:
        if image.host == "docker.io":
            return CheckResult(
                Verdict.UNKNOWN,
                "Docker Hub credentials are not checked (its token service is on another host)",
            )
        if _key_host(credential) != image.host:
            return CheckResult(
                Verdict.UNKNOWN,
                f"the credential was stored for {_key_host(credential)}, not exactly "
                f"{image.host}; it was not sent",
                f"store a secret for {image.host} itself",
            )
        scheme = self.scheme(image.host)
        base = f"{scheme}://{image.host}"
        with self.egress.client(self.verify, self.timeout) as http:
            try:
                return self._check(http, base, image, credential)
            except Refused as exc:
                return CheckResult(
                    Verdict.UNKNOWN,
                    f"{exc}; nothing was sent",
                    "allow only registries you trust on private addresses",
                )
            except httpx.HTTPError as exc:
                fix = (
                    f"if the nodes reach {image.host} over plain HTTP, register it with "
                    f"moorage ks cluster-register ... --insecure-registry {image.host}"
                    if scheme == "https"
                    else f"check that {image.host} is up"
                )
                return CheckResult(
                    Verdict.UNKNOWN,
                    f"cannot reach {image.host} over {scheme} ({type(exc).__name__})",
                    fix,
                )

    def _check(
        self, http: httpx.Client, base: str, image: ImageRef, credential: Credential
    ) -> CheckResult:
        manifest = f"{base}/v2/{image.path}/manifests/{image.reference}"
        headers = {"Accept": MANIFEST_TYPES}
        anonymous = http.head(manifest, headers=headers)
        if anonymous.status_code == 200:
            return CheckResult(Verdict.OK)
        if anonymous.status_code != 401:
            return self._verdict(anonymous, image)
        scheme, params = _challenge(anonymous.headers.get("www-authenticate", ""))
        basic = (credential.username, credential.password)
        bound = credential_for(image.host)
        if scheme == "basic":
            signed_in = http.head(manifest, headers=headers, auth=basic, extensions=bound)
            return self._verdict(signed_in, image)
        if scheme != "bearer" or not params.get("realm"):
            return CheckResult(
                Verdict.UNKNOWN, f"{image.host} asks for an unknown sign-in ({scheme or 'none'})"
            )
        try:
            realm = httpx.URL(params["realm"])
        except httpx.InvalidURL:
            realm = None
        if realm is None or not self.egress.may_send_credential(image.host, realm):
            return CheckResult(
                Verdict.UNKNOWN,
                f"the token service of {image.host} is on another host "
                f"({params['realm']}) and was not contacted",
            )
        query: dict[str, Any] = {"scope": params.get("scope") or f"repository:{image.path}:pull"}
        if params.get("service"):
            query["service"] = params["service"]
        token = http.get(params["realm"], params=query, auth=basic, extensions=bound)
        if token.status_code in (401, 403):
            return CheckResult(
                Verdict.DENIED,
                f"{image.host} refused the credentials (HTTP {token.status_code})",
                "check the secret's username and password",
            )
        if token.status_code != 200:
            return CheckResult(
                Verdict.UNKNOWN, f"the token service of {image.host} said HTTP {token.status_code}"
            )
        try:
            body = token.json()
            bearer = str(body.get("token") or body.get("access_token") or "")
        except (ValueError, AttributeError):
            bearer = ""
        if not bearer:
            return CheckResult(Verdict.UNKNOWN, f"the token service of {image.host} gave no token")
        signed = http.head(
            manifest, headers={**headers, "Authorization": f"Bearer {bearer}"}, extensions=bound
        )
        return self._verdict(signed, image)

    @staticmethod
    def _verdict(reply: httpx.Response, image: ImageRef) -> CheckResult:
        status = reply.status_code
        if status == 200:
            return CheckResult(Verdict.OK)
        if status in (401, 403):
            return CheckResult(
                Verdict.DENIED,
                f"{image.host} refused a pull of {image.path} with these credentials "
                f"(HTTP {status})",
                "check the secret's credentials and what they may pull",
            )
        if status == 404:
            return CheckResult(
                Verdict.DENIED,
                f"{image.host} has no {image.path}:{image.reference}",
                "check the image name and tag",
            )
        return CheckResult(Verdict.UNKNOWN, f"{image.host} answered HTTP {status}")


class CredentialChecker:
    """Sends each credential where it belongs, once per (image, credential)."""

    def __init__(self, management: ManagementClient, registries: RegistryCheck) -> None:
        self.moorage_hosts = moorage_hosts(management)
        self.moorage = MoorageCheck(management)
        self.registries = registries
        self._seen: dict[tuple[str, str, str, str], CheckResult] = {}

    def __call__(self, image: ImageRef, credential: Credential) -> CheckResult:
        key = (image.repository, image.reference, credential.username, credential.password)
        if key not in self._seen:
            check = self.moorage if image.host in self.moorage_hosts else self.registries
            self._seen[key] = check(image, credential)
        return self._seen[key]
