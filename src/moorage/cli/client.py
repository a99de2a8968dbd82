"""The CLI's side of the management API client: the login profile and where
credentials are kept."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from moorage.client import ClientError, ManagementClient
from moorage.privatefile import write_private

CliError = ClientError  # what ``moorage`` prints as one line and exits non-zero on


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
    """Replace a file holding credentials atomically, readable by its owner only
    (``moorage.privatefile``: nothing planted beside it can capture the key)."""
    try:
        write_private(path, json.dumps(data, indent=2).encode())
    except OSError as exc:
        raise CliError(f"cannot write {path}: {exc.strerror or exc}") from None


def save_profile(profile: dict[str, Any]) -> None:
    write_private_json(profile_path(), profile)


class Connection(ManagementClient):
    """The CLI's connection: flags beat ``MOORAGE_SERVER``/``MOORAGE_APIKEY``/
    ``MOORAGE_CA_FILE``, which beat the login profile. A CA file replaces the
    system's trusted roots for this server (a private CA)."""

    @classmethod
    def resolve(
        cls, server: str | None = None, apikey: str | None = None, ca_file: str | None = None
    ) -> Connection:
        profile = load_profile()
        server = server or os.environ.get("MOORAGE_SERVER") or profile.get("server")
        apikey = apikey or os.environ.get("MOORAGE_APIKEY") or profile.get("apikey")
        if not server:
            raise CliError("no server: pass --server, set MOORAGE_SERVER or run `moorage login`")
        if not apikey:
            raise CliError("no API key: pass --apikey, set MOORAGE_APIKEY or run `moorage login`")
        region = os.environ.get("MOORAGE_REGION") or profile.get("region") or "us-south"
        account = os.environ.get("MOORAGE_ACCOUNT") or profile.get("account")
        ca = ca_file or os.environ.get("MOORAGE_CA_FILE") or profile.get("ca_file")
        return cls(server.rstrip("/"), apikey, region, verify=ca or True, account=account)
