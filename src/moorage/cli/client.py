"""The CLI's connection to a Moorage server: where it is, which key signs in,
and which region is targeted. Flags beat ``MOORAGE_SERVER``/``MOORAGE_APIKEY``,
which beat the login profile."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx


class CliError(Exception):
    """A failure the user can act on: ``moorage`` prints it as one line on stderr
    and exits non-zero (see cli.main.main); callers may catch it first."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code


def config_dir() -> Path:
    base = os.environ.get("MOORAGE_CONFIG_DIR")
    return Path(base) if base else Path.home() / ".moorage"


def profile_path() -> Path:
    return config_dir() / "profile.json"


def load_profile() -> dict[str, Any]:
    try:
        data = json.loads(profile_path().read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def write_private_json(path: Path, data: dict[str, Any]) -> None:
    """Replace a file holding credentials atomically, readable by its owner only."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=2)
    os.replace(tmp, path)


def save_profile(profile: dict[str, Any]) -> None:
    write_private_json(profile_path(), profile)


@dataclass
class Connection:
    server: str
    apikey: str
    region: str

    @classmethod
    def resolve(cls, server: str | None = None, apikey: str | None = None) -> Connection:
        profile = load_profile()
        server = server or os.environ.get("MOORAGE_SERVER") or profile.get("server")
        apikey = apikey or os.environ.get("MOORAGE_APIKEY") or profile.get("apikey")
        if not server:
            raise CliError("no server: pass --server, set MOORAGE_SERVER or run `moorage login`")
        if not apikey:
            raise CliError("no API key: pass --apikey, set MOORAGE_APIKEY or run `moorage login`")
        region = os.environ.get("MOORAGE_REGION") or profile.get("region") or "us-south"
        return cls(server.rstrip("/"), apikey, region)

    @property
    def port_suffix(self) -> str:
        port = urlsplit(self.server).port
        return f":{port}" if port else ""

    def request(self, method: str, path: str, body: Any = None, **params: str) -> Any:
        try:
            response = httpx.request(
                method,
                f"{self.server}/api/v1{path}",
                json=body,
                params={k: v for k, v in params.items() if v is not None} or None,
                auth=("iamapikey", self.apikey),
                timeout=60,
            )
        except httpx.HTTPError as exc:
            raise CliError(f"cannot reach {self.server}: {type(exc).__name__}") from None
        if response.status_code >= 400:
            try:
                message = response.json()["error"]["message"]
            except (ValueError, KeyError, TypeError):
                message = f"HTTP {response.status_code}"
            raise CliError(str(message))
        return response.json() if response.content else None

    def region_domain(self, region: str | None = None) -> str:
        """The address clients use for a region: its domain and the server's port."""
        wanted = region or self.region
        for entry in self.request("GET", "/cr/regions"):
            if entry["name"] == wanted:
                return f"{entry['domain']}{self.port_suffix}"
        raise CliError(f"unknown region {wanted!r}")
