"""A small client of the management API for tests, and real-client helpers."""

from __future__ import annotations

import base64
import json
import subprocess
from pathlib import Path
from typing import Any

import requests

from tests.oci_layout import OCI_MANIFEST, Image, sha256
from tests.server import MoorageServer, table_rows

ADMIN_KEY = "moorage-test-administrator-key-0123456789abcdef"


class Api:
    def __init__(
        self,
        registry: MoorageServer,
        key: str,
        domain: str = "localhost",
        user: str = "iamapikey",
        account: str | None = None,
    ) -> None:
        self.server = registry
        self.base = f"http://{registry.host_for(domain)}/api/v1"
        self.auth = (user, key)
        self.headers = {"X-Moorage-Account": account} if account else {}

    def request(self, method: str, path: str, body: Any = None, **params: str) -> requests.Response:
        return requests.request(
            method,
            self.base + path,
            json=body,
            params=params or None,
            auth=self.auth,
            headers=self.headers,
            timeout=30,
        )

    def call(self, method: str, path: str, body: Any = None, expect: int | None = None) -> Any:
        r = self.request(method, path, body)
        if expect is not None:
            assert r.status_code == expect, f"{method} {path}: {r.status_code} {r.text}"
        return r.json() if r.content else None

    def namespace(self, region: str, name: str) -> None:
        self.call("POST", f"/cr/{region}/namespaces", {"name": name}, expect=201)

    def service_key(self, name: str, roles: str, **scope: str) -> str:
        """A service ID with one policy on the registry, and a fresh API key for it."""
        self.call("POST", "/iam/service-ids", {"name": name, "description": "test"}, expect=201)
        policy = {"roles": roles, "service_name": "container-registry", **scope}
        self.call("POST", f"/iam/service-ids/{name}/policies", policy, expect=201)
        created = self.call(
            "POST", f"/iam/service-ids/{name}/api-keys", {"name": f"{name}-key"}, expect=201
        )
        return str(created["apikey"])


def dockerconfigjson(path: Path, host: str, username: str, password: str) -> Path:
    """An auth file in the body format of a kubernetes.io/dockerconfigjson secret."""
    auth = base64.b64encode(f"{username}:{password}".encode()).decode()
    path.write_text(
        json.dumps({"auths": {host: {"username": username, "password": password, "auth": auth}}})
    )
    return path


def skopeo(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["skopeo", *args], capture_output=True, text=True, timeout=300)


def bearer(
    registry: MoorageServer, domain: str, secret: str, scope: str, user: str = "iamapikey"
) -> dict[str, str]:
    """An Authorization header with a registry token for ``scope``, from the token flow."""
    reply = requests.get(
        f"http://{registry.host_for(domain)}/oauth/token",
        params={"service": domain, "scope": scope},
        auth=(user, secret),
        timeout=10,
    )
    assert reply.status_code == 200, reply.text
    return {"Authorization": f"Bearer {reply.json()['token']}"}


def push_image_with(
    registry: MoorageServer, domain: str, repo: str, tag: str, image: Image, headers: dict[str, str]
) -> requests.Response:
    """Push an image's blobs and manifest over HTTP with the given token; the
    manifest PUT's response."""
    base = f"http://{registry.host_for(domain)}/v2/{repo}"
    for blob in [image.config, *image.layers]:
        r = requests.post(
            f"{base}/blobs/uploads/",
            params={"digest": sha256(blob)},
            data=blob,
            headers=headers,
            timeout=30,
        )
        if r.status_code != 201:
            return r
    return requests.put(
        f"{base}/manifests/{tag}",
        data=image.manifest,
        headers={**headers, "Content-Type": OCI_MANIFEST},
        timeout=30,
    )


def all_rows(registry: MoorageServer) -> dict[str, list[tuple[object, ...]]]:
    """Every row of every table: for checking that a refused request changed
    nothing. Failed sign-ins are counted in a table of their own on a shared
    database (that is what throttling is), so that one is left out, and so are
    the Advisor's index tables, which its worker fills in the background (its
    exemptions, which requests change, stay in)."""
    rows = table_rows(registry.database_url)
    for background in (
        "signin_failures",
        "va_queue",
        "va_layers",
        "va_reports",
        "va_report_packages",
        "va_events",
    ):
        rows.pop(background, None)
    return rows
