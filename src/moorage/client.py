"""A client of Moorage's management API (``/api/v1``), shared by the CLI, the
Kubernetes workflows and the controller: one place that knows how to sign in
and how the API reports errors."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from functools import cached_property
from typing import Any
from urllib.parse import quote, urlsplit

import httpx

from moorage.egress import Refused


def segment(value: str) -> str:
    """One path segment of an API route: whatever a name holds ("/", "?", "..")
    cannot reach another route."""
    return quote(value, safe="")


class ClientError(Exception):
    """A failure the user can act on, in one line. ``status`` is the HTTP status
    the API answered with (None when it could not be reached)."""

    def __init__(self, message: str, exit_code: int = 1, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code
        self.status = status


def tls_verification(ca_file: str | bool) -> ssl.SSLContext | bool:
    """httpx's ``verify`` for a CA file, which then replaces the system's
    trusted roots (a private CA), or for True/False."""
    if not isinstance(ca_file, str):
        return ca_file
    try:
        return ssl.create_default_context(cafile=ca_file)
    except (OSError, ssl.SSLError) as exc:
        reason = getattr(exc, "strerror", None) or getattr(exc, "reason", None) or exc
        raise ClientError(f"cannot use the CA file {ca_file}: {reason}") from None


def unreachable(where: str, exc: httpx.HTTPError) -> str:
    """One line on why ``where`` could not be reached, naming the fix for an
    untrusted certificate."""
    if isinstance(exc, Refused):
        return str(exc)
    if "CERTIFICATE_VERIFY_FAILED" in str(exc):
        return (
            f"cannot verify the TLS certificate of {where}: pass --ca-file (or set "
            "MOORAGE_CA_FILE) with the CA that issued it"
        )
    return f"cannot reach {where}: {type(exc).__name__}"


@dataclass
class ManagementClient:
    server: str
    apikey: str
    region: str = "us-south"
    verify: bool | str = True  # a CA bundle path for a private CA
    account: str | None = None  # for a person in several accounts: the one to act in

    @property
    def port_suffix(self) -> str:
        port = urlsplit(self.server).port
        return f":{port}" if port else ""

    @cached_property
    def _verify(self) -> ssl.SSLContext | bool:
        return tls_verification(self.verify)

    def request(self, method: str, path: str, body: Any = None, **params: str | None) -> Any:
        try:
            response = httpx.request(
                method,
                f"{self.server}/api/v1{path}",
                json=body,
                params={k: v for k, v in params.items() if v is not None} or None,
                auth=("iamapikey", self.apikey),
                headers={"X-Moorage-Account": self.account} if self.account else None,
                timeout=60,
                verify=self._verify,
            )
        except httpx.HTTPError as exc:
            raise ClientError(unreachable(self.server, exc)) from None
        if response.status_code >= 400:
            try:
                message = response.json()["error"]["message"]
            except (ValueError, KeyError, TypeError):
                message = f"HTTP {response.status_code}"
            raise ClientError(str(message), status=response.status_code)
        return response.json() if response.content else None

    def regions(self) -> list[dict[str, Any]]:
        return list(self.request("GET", "/cr/regions"))

    def region_domain(self, region: str | None = None) -> str:
        """The address clients use for a region: its domain and the server's port."""
        wanted = region or self.region
        for entry in self.regions():
            if entry["name"] == wanted:
                return f"{entry['domain']}{self.port_suffix}"
        raise ClientError(f"unknown region {wanted!r}")

    def registry_hosts(self) -> list[str]:
        """Every regional domain with the server's port: where images are pulled from."""
        return [f"{r['domain']}{self.port_suffix}" for r in self.regions()]

    # -- the Vulnerability Advisor ---------------------------------------------

    def va_report(self, image: str) -> dict[str, Any]:
        """The Advisor's report of ``namespace/repo:tag`` or ``...@digest``."""
        return dict(self.request("GET", f"/cr/{self.region}/va/{image_path(image)}"))

    def images(self, include_va: bool = False) -> list[dict[str, Any]]:
        return list(
            self.request("GET", f"/cr/{self.region}/images", include_va="1" if include_va else None)
        )

    def exemption_add(
        self,
        scope: str,
        issue_type: str,
        issue_id: str,
        expires: str | None = None,
        reason: str = "",
    ) -> dict[str, Any]:
        body = {
            "scope": scope,
            "issue_type": issue_type,
            "issue_id": issue_id,
            "expires": expires,
            "reason": reason,
        }
        return dict(self.request("POST", f"/cr/{self.region}/exemptions", body))

    def exemptions(self) -> list[dict[str, Any]]:
        return list(self.request("GET", f"/cr/{self.region}/exemptions"))

    def exemption_rm(self, exemption_id: str) -> None:
        self.request("DELETE", f"/cr/{self.region}/exemptions/{segment(exemption_id)}")

    def exemption_types(self) -> list[dict[str, Any]]:
        return list(self.request("GET", "/cr/exemption-types"))


def image_path(image: str) -> str:
    """An image reference as the path of the report endpoint: a registry
    domain in front dropped, each character that is not part of a name,
    tag or digest quoted."""
    first, _, rest = image.partition("/")
    if rest and ("." in first or ":" in first or first == "localhost"):
        image = rest
    return quote(image, safe="/:@")
