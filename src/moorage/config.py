"""Settings, from defaults, a TOML file, the environment and the command line,
each overriding the one before."""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 5000
    data_dir: str = "moorage-data"
    database_url: str | None = None  # default: SQLite inside data_dir
    auth: str = "token"
    base_domain: str = "localhost"
    token_lifetime: int = 300
    refresh_lifetime: int = 3600  # refresh tokens, and the kubelet credentials built on them
    key_rotation: int = 7 * 86400
    service_id_limit: int = 2000
    admin_email: str = "admin@moorage.local"
    # Custom regional registries: (name, domain, legacy domain or None). Empty:
    # the seed's five regions and the global registry under base_domain.
    regions: tuple[tuple[str, str, str | None], ...] = ()
    max_manifest_bytes: int = 4 * 1024 * 1024
    log_level: str = "info"
    access_log: bool = True
    shutdown_timeout: int = 30

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir).resolve()


_FILE_KEYS = {
    ("server", "host"): "host",
    ("server", "port"): "port",
    ("server", "auth"): "auth",
    ("server", "shutdown_timeout"): "shutdown_timeout",
    ("server", "base_domain"): "base_domain",
    ("auth", "token_lifetime"): "token_lifetime",
    ("auth", "key_rotation"): "key_rotation",
    ("auth", "refresh_lifetime"): "refresh_lifetime",
    ("iam", "service_id_limit"): "service_id_limit",
    ("iam", "admin_email"): "admin_email",
    ("storage", "data"): "data_dir",
    ("database", "url"): "database_url",
    ("registry", "max_manifest_bytes"): "max_manifest_bytes",
    ("log", "level"): "log_level",
    ("log", "access"): "access_log",
}
_ENV_KEYS = {
    "MOORAGE_HOST": "host",
    "MOORAGE_PORT": "port",
    "MOORAGE_DATA": "data_dir",
    "MOORAGE_DATABASE_URL": "database_url",
    "MOORAGE_MAX_MANIFEST_BYTES": "max_manifest_bytes",
    "MOORAGE_LOG_LEVEL": "log_level",
    "MOORAGE_BASE_DOMAIN": "base_domain",
    "MOORAGE_AUTH": "auth",
    "MOORAGE_TOKEN_LIFETIME": "token_lifetime",
}


class ConfigError(ValueError):
    pass


def _coerce(field: str, value: Any) -> Any:
    kind = {f.name: f.type for f in dataclasses.fields(Settings)}[field]
    try:
        if kind == "int":
            return int(value)
        if kind == "bool":
            return value if isinstance(value, bool) else str(value).lower() in ("1", "true", "yes")
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{field} must be an integer, not {value!r}") from exc
    return str(value)


_LABEL = r"[a-z0-9]([a-z0-9-]*[a-z0-9])?"
_HOST = re.compile(rf"^(?=.{{1,253}}$){_LABEL}(\.{_LABEL})*$")


def _regions(entries: Any) -> tuple[tuple[str, str, str | None], ...]:
    if not isinstance(entries, list) or not entries:
        raise ConfigError("[[regions]] must be a non-empty list of tables")
    regions = []
    for entry in entries:
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise ConfigError("each [[regions]] entry needs a name and a domain")
        domain, legacy = entry.get("domain"), entry.get("legacy_domain")
        for host in (domain, legacy):
            if host is not None and (not isinstance(host, str) or not _HOST.match(host)):
                raise ConfigError(f"invalid domain {host!r} in region {entry['name']!r}")
        if domain is None:
            raise ConfigError(f"region {entry['name']!r} needs a domain")
        regions.append((entry["name"], domain, legacy))
    names = [r[0] for r in regions]
    hosts = [h for r in regions for h in r[1:] if h]
    if len(set(names)) != len(names) or len(set(hosts)) != len(hosts):
        raise ConfigError("region names and domains must be unique")
    return tuple(regions)


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    values: dict[str, Any] = {}
    if config_file is not None:
        try:
            document = tomllib.loads(config_file.read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read config file {config_file}: {exc}") from exc
        for (section, key), field in _FILE_KEYS.items():
            if key in document.get(section, {}):
                values[field] = _coerce(field, document[section][key])
        if "regions" in document:
            values["regions"] = _regions(document["regions"])
    for variable, field in _ENV_KEYS.items():
        if os.environ.get(variable):
            values[field] = _coerce(field, os.environ[variable])
    values.update({k: v for k, v in overrides.items() if v is not None})
    settings = Settings(**values)
    if settings.auth not in ("token", "none"):
        raise ConfigError(f"unknown auth mode {settings.auth!r}: use 'token' or 'none'")
    if not 300 <= settings.refresh_lifetime <= 7 * 86400:
        raise ConfigError("refresh_lifetime must be between 300 seconds and 7 days")
    if not 5 <= settings.token_lifetime <= 3600:
        raise ConfigError("token_lifetime must be between 5 and 3600 seconds")
    if settings.max_manifest_bytes < 4 * 1024 * 1024:
        raise ConfigError("max_manifest_bytes must be at least 4 MiB (4194304)")
    return settings
