"""A small client of the management API for tests, and real-client helpers."""

from __future__ import annotations

import base64
import json
import subprocess
from pathlib import Path
from typing import Any

import requests

from tests.server import MoorageServer

ADMIN_KEY = "moorage-test-administrator-key-0123456789abcdef"


class Api:
    def __init__(self, registry: MoorageServer, key: str, domain: str = "localhost") -> None:
        self.base = f"http://{registry.host_for(domain)}/api/v1"
        self.auth = ("iamapikey", key)

    def call(self, method: str, path: str, body: Any = None, expect: int | None = None) -> Any:
        r = requests.request(method, self.base + path, json=body, auth=self.auth, timeout=30)
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
