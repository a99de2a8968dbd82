"""Settings, from defaults, a TOML file, the environment and the command line,
each overriding the one before."""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
from dataclasses import dataclass, field
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
    # How clients reach the registry, "{domain}" standing for each region's
    # domain, e.g. "https://{domain}:8443" behind a proxy. Default: the scheme
    # this server speaks and its port.
    public_url: str | None = None
    # TLS: one certificate (tls_cert + tls_key), and/or a directory of
    # <name>.crt + <name>.key pairs chosen by SNI.
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_certs_dir: str | None = None
    allow_insecure_http: bool = False  # plain HTTP on an address other than loopback
    # Connection limits (seconds, counts); see docs/transport.md.
    header_timeout: float = 20.0  # first byte of a request (or accept) to the end of its headers
    idle_timeout: float = 60.0  # a keep-alive connection waiting for its next request
    body_timeout: float = 60.0  # a request body that stops arriving
    max_connections: int = 0  # 0: derived from the open-file limit
    max_connections_per_client: int = 256  # 0: no limit (e.g. behind a proxy)
    # Blob storage: "filesystem" (blobs/ and uploads/ in data_dir) or "s3".
    storage_driver: str = "filesystem"
    s3_endpoint: str | None = None  # http(s)://host[:port]
    s3_region: str = "us-east-1"
    s3_bucket: str | None = None
    s3_access_key: str | None = None
    s3_secret_key: str | None = field(default=None, repr=False)
    s3_session_token: str | None = field(default=None, repr=False)
    s3_path_style: bool = True  # bucket in the path (SeaweedFS, MinIO); false: in the host name
    s3_prefix: str = ""  # keys live under this prefix in the bucket
    s3_part_size: int = 10 * 1024 * 1024  # multipart part size; at least 5 MiB
    s3_redirect: bool = False  # blob GETs answered with 307 to a presigned URL
    s3_redirect_expiry: int = 1200  # seconds a presigned URL is good for
    s3_ca_bundle: str | None = None  # PEM file of CAs for an https endpoint (else AWS_CA_BUNDLE)
    # Processes serving one port (SO_REUSEPORT), each with its own event loop.
    workers: int = 1
    # The server secret (API key digests, sealed registry tokens and signing
    # keys): a file, or the value itself (base64 of at least 32 bytes). Required
    # with PostgreSQL, where every replica must have the same one; by default
    # SQLite installations keep theirs in <data>/secrets/server.key.
    secret_file: str | None = None
    secret: str | None = None
    # Sign-in throttling counted in Redis rather than in the database.
    redis_url: str | None = None
    # Garbage collection while serving: a round every gc_interval seconds (0:
    # never; `moorage gc` runs one by hand) on one replica at a time; links and
    # blobs nothing needs go once untouched for gc_grace seconds, the time a
    # client has between pushing a blob and the manifest that names it.
    gc_interval: float = 3600.0
    gc_grace: float = 86400.0
    gc_upload_max_age: int = 7 * 86400
    # Manifests kept in memory (bytes of content); 0 turns the cache off.
    manifest_cache_bytes: int = 32 * 1024 * 1024
    # The Vulnerability Advisor's SBOMs: ("<namespace>" or "<region>/<namespace>",
    # path of an ECDSA P-256 PEM private key) pairs; a namespace with a key gets
    # its SBOM referrers signed (cosign format).
    sbom_signing_keys: tuple[tuple[str, str], ...] = ()
    # Harbor pluggable scanner adapters (their base URLs) whose reports join the
    # Advisor's, and the private destinations they may be at (egress.py rules).
    va_scanners: tuple[str, ...] = ()
    va_scanner_allow: tuple[str, ...] = ()
    # The Vulnerability Advisor's indexer, on every process: off leaves pushed
    # images queued for a process that has it on. An item a worker holds goes
    # to another once va_lease seconds pass without the holder renewing it.
    va_index: bool = True
    va_lease: float = 60.0
    # Refuse manifest GETs of images the Vulnerability Advisor calls FAIL (HEAD
    # requests and automation, service IDs and tokens that may push, excepted).
    va_block_pulls: bool = False
    # Attach the Advisor's SBOMs (CycloneDX, SPDX) to every indexed image as
    # referrers. Off by default: it writes into users' repositories, which an
    # operator opts into, as Harbor's "generate SBOM on push" is.
    va_attach_sboms: bool = False

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir).resolve()

    @property
    def shared_database(self) -> bool:
        """Whether the metadata database is a server other installations' processes
        may share (PostgreSQL), rather than a file in the data directory."""
        return bool(self.database_url) and not str(self.database_url).startswith("sqlite")

    @property
    def tls(self) -> bool:
        return bool(self.tls_cert or self.tls_certs_dir)

    @property
    def public_url_template(self) -> str:
        """``public_url``, or the address this server answers on: https with
        TLS, else http, and the port unless it is the scheme's default."""
        if self.public_url:
            return self.public_url
        scheme, default_port = ("https", 443) if self.tls else ("http", 80)
        port = "" if self.port == default_port else f":{self.port}"
        return f"{scheme}://{{domain}}{port}"


_FILE_KEYS = {
    ("server", "host"): "host",
    ("server", "port"): "port",
    ("server", "auth"): "auth",
    ("server", "shutdown_timeout"): "shutdown_timeout",
    ("server", "base_domain"): "base_domain",
    ("server", "public_url"): "public_url",
    ("server", "tls_cert"): "tls_cert",
    ("server", "tls_key"): "tls_key",
    ("server", "tls_certs_dir"): "tls_certs_dir",
    ("server", "allow_insecure_http"): "allow_insecure_http",
    ("server", "header_timeout"): "header_timeout",
    ("server", "idle_timeout"): "idle_timeout",
    ("server", "body_timeout"): "body_timeout",
    ("server", "max_connections"): "max_connections",
    ("server", "max_connections_per_client"): "max_connections_per_client",
    ("server", "workers"): "workers",
    ("server", "secret_file"): "secret_file",
    ("server", "secret"): "secret",
    ("auth", "redis_url"): "redis_url",
    ("registry", "manifest_cache_bytes"): "manifest_cache_bytes",
    ("auth", "token_lifetime"): "token_lifetime",
    ("auth", "key_rotation"): "key_rotation",
    ("auth", "refresh_lifetime"): "refresh_lifetime",
    ("iam", "service_id_limit"): "service_id_limit",
    ("iam", "admin_email"): "admin_email",
    ("storage", "data"): "data_dir",
    ("storage", "driver"): "storage_driver",
    ("storage.s3", "endpoint"): "s3_endpoint",
    ("storage.s3", "region"): "s3_region",
    ("storage.s3", "bucket"): "s3_bucket",
    ("storage.s3", "access_key"): "s3_access_key",
    ("storage.s3", "secret_key"): "s3_secret_key",
    ("storage.s3", "path_style"): "s3_path_style",
    ("storage.s3", "prefix"): "s3_prefix",
    ("storage.s3", "part_size"): "s3_part_size",
    ("storage.s3", "redirect"): "s3_redirect",
    ("storage.s3", "redirect_expiry"): "s3_redirect_expiry",
    ("storage.s3", "ca_bundle"): "s3_ca_bundle",
    ("database", "url"): "database_url",
    ("gc", "interval"): "gc_interval",
    ("gc", "grace"): "gc_grace",
    ("gc", "upload_max_age"): "gc_upload_max_age",
    ("va", "index"): "va_index",
    ("va", "lease"): "va_lease",
    ("registry", "max_manifest_bytes"): "max_manifest_bytes",
    ("log", "level"): "log_level",
    ("log", "access"): "access_log",
    ("va", "block_pulls"): "va_block_pulls",
    ("va", "attach_sboms"): "va_attach_sboms",
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
    "MOORAGE_PUBLIC_URL": "public_url",
    "MOORAGE_TLS_CERT": "tls_cert",
    "MOORAGE_TLS_KEY": "tls_key",
    "MOORAGE_TLS_CERTS_DIR": "tls_certs_dir",
    "MOORAGE_ALLOW_INSECURE_HTTP": "allow_insecure_http",
    "MOORAGE_STORAGE_DRIVER": "storage_driver",
    "MOORAGE_S3_ENDPOINT": "s3_endpoint",
    "MOORAGE_S3_REGION": "s3_region",
    "MOORAGE_S3_BUCKET": "s3_bucket",
    "MOORAGE_S3_ACCESS_KEY": "s3_access_key",
    "MOORAGE_S3_SECRET_KEY": "s3_secret_key",
    "MOORAGE_S3_PATH_STYLE": "s3_path_style",
    "MOORAGE_S3_PREFIX": "s3_prefix",
    "MOORAGE_S3_REDIRECT": "s3_redirect",
    "MOORAGE_WORKERS": "workers",
    "MOORAGE_SECRET_FILE": "secret_file",
    "MOORAGE_SECRET": "secret",
    "MOORAGE_REDIS_URL": "redis_url",
    "MOORAGE_GC_INTERVAL": "gc_interval",
    "MOORAGE_GC_GRACE": "gc_grace",
    "MOORAGE_VA_INDEX": "va_index",
    "MOORAGE_VA_LEASE": "va_lease",
    "MOORAGE_S3_CA_BUNDLE": "s3_ca_bundle",
    "MOORAGE_VA_BLOCK_PULLS": "va_block_pulls",
    "MOORAGE_VA_ATTACH_SBOMS": "va_attach_sboms",
}
# The AWS tools' own variables, used when nothing above names the credentials.
_AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "s3_access_key",
    "AWS_SECRET_ACCESS_KEY": "s3_secret_key",
    "AWS_SESSION_TOKEN": "s3_session_token",
}


class ConfigError(ValueError):
    pass


def _coerce(field: str, value: Any) -> Any:
    kind = {f.name: f.type for f in dataclasses.fields(Settings)}[field]
    try:
        if kind == "int":
            return int(value)
        if kind == "float":
            return float(value)
        if kind == "bool":
            return value if isinstance(value, bool) else str(value).lower() in ("1", "true", "yes")
    except (TypeError, ValueError) as exc:
        noun = "an integer" if kind == "int" else "a number"
        raise ConfigError(f"{field} must be {noun}, not {value!r}") from exc
    return str(value)


_PUBLIC_URL = re.compile(r"(https?)://\{domain\}(?::([0-9]{1,5}))?/?")


def _public_url(value: str) -> str:
    """``scheme://{domain}[:port]``, normalised: each region's domain takes the
    place of ``{domain}``, so one setting serves every regional domain."""
    match = _PUBLIC_URL.fullmatch(value)
    if match is None:
        raise ConfigError(
            f"public_url must look like https://{{domain}}:8443 ({{domain}} stands for each "
            f"region's domain; no path), not {value!r}"
        )
    scheme, port = match.groups()
    if port is not None and not 0 < int(port) < 65536:
        raise ConfigError(f"the port in public_url must be between 1 and 65535, not {port}")
    default = "443" if scheme == "https" else "80"
    suffix = "" if port is None or str(int(port)) == default else f":{int(port)}"
    return f"{scheme}://{{domain}}{suffix}"


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
        for (section, key), name in _FILE_KEYS.items():
            table: Any = document
            for part in section.split("."):
                table = table.get(part, {}) if isinstance(table, dict) else {}
            if isinstance(table, dict) and key in table:
                values[name] = _coerce(name, table[key])
        if "regions" in document:
            values["regions"] = _regions(document["regions"])
        values.update(_va_sbom(document.get("va")))
    for variable, name in _ENV_KEYS.items():
        if os.environ.get(variable):
            values[name] = _coerce(name, os.environ[variable])
    if not values.get("s3_access_key") and not values.get("s3_secret_key"):
        for variable, name in _AWS_ENV.items():
            if os.environ.get(variable):
                values[name] = os.environ[variable]
    values.update({k: v for k, v in overrides.items() if v is not None})
    if values.get("public_url"):
        values["public_url"] = _public_url(values["public_url"])
    settings = Settings(**values)
    if bool(settings.tls_cert) != bool(settings.tls_key):
        raise ConfigError("tls_cert and tls_key go together: give both or neither")
    for name in ("header_timeout", "idle_timeout", "body_timeout"):
        if not 0 < getattr(settings, name) <= 3600:
            raise ConfigError(f"{name} must be more than 0 and at most 3600 seconds")
    if settings.max_connections < 0 or settings.max_connections_per_client < 0:
        raise ConfigError("max_connections and max_connections_per_client must be 0 or more")
    if settings.auth not in ("token", "none"):
        raise ConfigError(f"unknown auth mode {settings.auth!r}: use 'token' or 'none'")
    if not 300 <= settings.refresh_lifetime <= 7 * 86400:
        raise ConfigError("refresh_lifetime must be between 300 seconds and 7 days")
    if not 5 <= settings.token_lifetime <= 3600:
        raise ConfigError("token_lifetime must be between 5 and 3600 seconds")
    if not 1 <= settings.workers <= 256:
        raise ConfigError("workers must be between 1 and 256")
    if settings.manifest_cache_bytes < 0:
        raise ConfigError("manifest_cache_bytes must be 0 or more")
    if settings.va_lease < 1:
        raise ConfigError("va lease must be at least 1 second")
    if min(settings.gc_interval, settings.gc_grace, settings.gc_upload_max_age) < 0:
        raise ConfigError("gc interval, grace and upload_max_age must be 0 or more seconds")
    if settings.redis_url and not settings.redis_url.startswith(
        ("redis://", "rediss://", "unix://")
    ):
        raise ConfigError("redis_url must be a redis://, rediss:// or unix:// URL")
    if settings.max_manifest_bytes < 4 * 1024 * 1024:
        raise ConfigError("max_manifest_bytes must be at least 4 MiB (4194304)")
    if settings.storage_driver not in ("filesystem", "s3"):
        raise ConfigError(
            f"unknown storage driver {settings.storage_driver!r}: use 'filesystem' or 's3'"
        )
    if settings.storage_driver == "s3":
        settings = _check_s3(settings)
    return settings


def _strings(name: str, value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(f"[va] {name} must be a list of strings")
    return tuple(value)


def _va_sbom(table: Any) -> dict[str, Any]:
    """``[va] sbom_signing_keys`` (a table of namespace = key path), ``scanners``
    and ``scanner_allow`` (lists)."""
    if not isinstance(table, dict):
        return {}
    found: dict[str, Any] = {}
    keys = table.get("sbom_signing_keys")
    if keys is not None:
        if not isinstance(keys, dict) or not all(
            isinstance(k, str) and k and isinstance(v, str) and v for k, v in keys.items()
        ):
            raise ConfigError('[va] sbom_signing_keys must be a table: "<namespace>" = "<key.pem>"')
        found["sbom_signing_keys"] = tuple(sorted(keys.items()))
    if "scanners" in table:
        scanners = _strings("scanners", table["scanners"])
        for url in scanners:
            if not _ENDPOINT.fullmatch(url):
                raise ConfigError(f"[va] scanners: {url!r} is not an http(s)://host[:port] URL")
        found["va_scanners"] = tuple(u.rstrip("/") for u in scanners)
    if "scanner_allow" in table:
        found["va_scanner_allow"] = _strings("scanner_allow", table["scanner_allow"])
    return found


_ENDPOINT = re.compile(r"https?://[^/?#@\s]+/?")
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
MIN_PART_SIZE = 5 * 1024 * 1024
MAX_PART_SIZE = 5 * 1024 * 1024 * 1024


def _check_s3(settings: Settings) -> Settings:
    """What [storage.s3] must hold for driver = "s3", each problem in one line."""
    if not settings.s3_endpoint:
        raise ConfigError(
            'storage driver "s3" needs [storage.s3] endpoint (or MOORAGE_S3_ENDPOINT), '
            "e.g. https://s3.us-east-1.amazonaws.com"
        )
    if not _ENDPOINT.fullmatch(settings.s3_endpoint):
        raise ConfigError(
            f"storage.s3 endpoint must look like http(s)://host[:port], not "
            f"{settings.s3_endpoint!r}"
        )
    if not settings.s3_bucket:
        raise ConfigError('storage driver "s3" needs [storage.s3] bucket (or MOORAGE_S3_BUCKET)')
    if not _BUCKET.fullmatch(settings.s3_bucket):
        raise ConfigError(
            f"storage.s3 bucket {settings.s3_bucket!r} is not a valid bucket name "
            "(3 to 63 lower-case letters, digits, dots and hyphens)"
        )
    if not settings.s3_access_key or not settings.s3_secret_key:
        raise ConfigError(
            "storage.s3 needs access_key and secret_key (or MOORAGE_S3_ACCESS_KEY and "
            "MOORAGE_S3_SECRET_KEY, or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)"
        )
    if not settings.s3_region:
        raise ConfigError("storage.s3 region must not be empty")
    if not MIN_PART_SIZE <= settings.s3_part_size <= MAX_PART_SIZE:
        raise ConfigError("storage.s3 part_size must be between 5 MiB (5242880) and 5 GiB")
    if not 1 <= settings.s3_redirect_expiry <= 7 * 86400:
        raise ConfigError("storage.s3 redirect_expiry must be between 1 second and 7 days")
    if settings.s3_ca_bundle and not os.access(settings.s3_ca_bundle, os.R_OK):
        raise ConfigError(f"storage.s3 ca_bundle {settings.s3_ca_bundle!r} is not a readable file")
    prefix = settings.s3_prefix.strip("/")
    if any(part in ("", ".", "..") for part in prefix.split("/")) and prefix:
        raise ConfigError(f"storage.s3 prefix {settings.s3_prefix!r} is not a clean key prefix")
    return dataclasses.replace(
        settings,
        s3_endpoint=settings.s3_endpoint.rstrip("/"),
        s3_prefix=f"{prefix}/" if prefix else "",
    )
