"""The kubelet's choice of registry credentials, replayed exactly.

The kubelet builds a keyring from a pod's ``imagePullSecrets`` and looks an
image up in it (``pkg/credentialprovider``): keys lose their scheme and a
leading ``/v1/`` or ``/v2/``; a key matches an image when both have as many
host labels, each label matches as a glob (``*.example.com`` matches
``us.example.com`` but neither ``example.com`` nor ``a.b.example.com``), the
ports are equal and the key's path is a prefix of the image's path. Every
match is tried, most specific (reverse-sorted) first. ``auth`` (padded or
unpadded base64 of ``user:password``) overrides ``username``/``password``.

Diagnosis and the admission webhook both use this module, so what they
explain is what the kubelet does."""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from urllib.parse import urlsplit

DOCKERCONFIGJSON = "kubernetes.io/dockerconfigjson"
DOCKERCFG = "kubernetes.io/dockercfg"
# Docker Hub's key as the keyring holds it: "https://index.docker.io/v1/" loses its
# scheme and /v1/ like every key does.
DEFAULT_REGISTRY_KEY = "index.docker.io"


class KeyringError(ValueError):
    """A pull secret the kubelet could not read; it fails pulls that need it."""


@dataclass(frozen=True)
class Credential:
    username: str
    password: str
    source: str  # "<namespace>/<secret>" it came from
    key: str  # the key as normalized in the keyring

    def __repr__(self) -> str:  # never show the password
        return f"Credential(username={self.username!r}, source={self.source!r}, key={self.key!r})"


def decode_auth(value: str) -> tuple[str, str]:
    """``auth`` as the kubelet decodes it: padded or unpadded standard base64."""
    text = value.strip()
    try:
        if text.endswith("="):
            raw = base64.b64decode(text, validate=True)
        else:
            raw = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
        decoded = raw.decode()
    except (binascii.Error, ValueError) as exc:  # ValueError: not even ASCII
        raise KeyringError("auth is not valid base64") from exc
    username, sep, password = decoded.partition(":")
    if not sep:
        raise KeyringError("auth must decode to username:password")
    return username, password


def normalize_key(key: str) -> str:
    """A keyring key: scheme gone, ``/v1/`` or ``/v2/`` in front of the path gone."""
    value = key if key.startswith(("http://", "https://")) else "https://" + key
    parts = urlsplit(value)
    path = parts.path
    if path.startswith(("/v2/", "/v1/")):
        path = path[3:]
    return parts.netloc + path if path and path != "/" else parts.netloc


def _split(schemeless: str) -> tuple[list[str], str, str]:
    parts = urlsplit("https://" + schemeless)
    host = parts.hostname or ""
    netloc = parts.netloc
    port = netloc.rsplit(":", 1)[1] if ":" in netloc and not netloc.endswith("]") else ""
    return host.split("."), port, parts.path


def key_matches(key: str, image: str) -> bool:
    """Whether a normalized key covers an image (``host[:port]/path``, no tag)."""
    try:
        key_labels, key_port, key_path = _split(key)
        image_labels, image_port, image_path = _split(image)
    except ValueError:  # not a URL at all (an unbalanced "[", a bad port)
        return False
    if key_port != image_port or len(key_labels) != len(image_labels):
        return False
    if not all(fnmatchcase(i, k) for k, i in zip(key_labels, image_labels, strict=True)):
        return False
    return image_path.startswith(key_path)


DOCKER_HUB_HOSTS = ("docker.io", "index.docker.io")


def is_default_registry(image: str) -> bool:
    """Whether an image lives on Docker Hub as the kubelet sees it: no host at all,
    or Docker Hub's own names for itself."""
    first, sep, _ = image.partition("/")
    return not sep or not any(c in first for c in ".:") or first in DOCKER_HUB_HOSTS


@dataclass
class Keyring:
    entries: dict[str, list[Credential]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def add_config(self, config: dict[str, object], source: str) -> None:
        for raw_key, entry in config.items():
            if not isinstance(entry, dict):
                self.problems.append(f"{source}: entry {raw_key!r} is not an object")
                continue
            username = str(entry.get("username") or "")
            password = str(entry.get("password") or "")
            if entry.get("auth"):
                try:
                    username, password = decode_auth(str(entry["auth"]))
                except KeyringError as exc:
                    self.problems.append(f"{source}: {raw_key}: {exc}")
                    continue
            try:
                key = normalize_key(raw_key)
            except ValueError:
                self.problems.append(f"{source}: {raw_key[:100]!r} is not a registry address")
                continue
            self.entries.setdefault(key, []).append(Credential(username, password, source, key))

    def add_secret(self, secret_type: str, data: dict[str, str], source: str) -> None:
        """A Secret's ``type`` and base64 ``data``, as the API returns them."""
        field_name = {DOCKERCONFIGJSON: ".dockerconfigjson", DOCKERCFG: ".dockercfg"}.get(
            secret_type
        )
        if field_name is None:
            self.problems.append(f"{source}: type {secret_type} is not a registry credential")
            return
        if field_name not in data:
            self.problems.append(f"{source}: has no {field_name} key")
            return
        try:
            document = json.loads(base64.b64decode(data[field_name]))
        except (ValueError, binascii.Error, RecursionError) as exc:
            raise KeyringError(f"{source}: {field_name} is not valid JSON") from exc
        if not isinstance(document, dict):
            raise KeyringError(f"{source}: {field_name} is not a JSON object")
        auths = document.get("auths", {}) if secret_type == DOCKERCONFIGJSON else document
        if not isinstance(auths, dict):
            raise KeyringError(f"{source}: auths is not an object")
        self.add_config(auths, source)

    def lookup(self, image: str) -> list[Credential]:
        """Every credential the kubelet tries for an image, in its order."""
        found: list[Credential] = []
        for key in sorted(self.entries, reverse=True):
            if key_matches(key, image):
                found.extend(self.entries[key])
        if not found and DEFAULT_REGISTRY_KEY in self.entries and is_default_registry(image):
            found.extend(self.entries[DEFAULT_REGISTRY_KEY])
        return found


def repository_of(image: str) -> str:
    """An image reference without its tag or digest, as the kubelet looks it up."""
    name = image.split("@", 1)[0]
    last = name.rsplit("/", 1)[-1]
    if ":" in last:
        name = name[: len(name) - len(last)] + last.split(":", 1)[0]
    return name
