"""Which policy applies to an image, and whether a signature names the image.

An image is normalized as the kubelet reads it (``nginx`` is
``docker.io/library/nginx:latest``). A repository pattern (``spec.repositories[].name``)
is a host pattern, optionally followed by ``/`` and a path pattern, optionally
ending in ``:tag`` or ``@digest``. Host and path are matched separately: ``*``
in the host never reaches into the path, so ``*.example.com/*`` cannot match
``evil.test/x.example.com/app``; in the path ``*`` spans ``/``. A pattern with
no path covers every repository on its hosts, and ``*`` alone covers every
image. Of several matches the most specific wins: the one with the most
literal characters, then the fewest wildcards.

The kubelet pulls the digest of a reference that carries one and ignores its
tag, so a tag-scoped pattern (``busybox:1.36``) says nothing about
``busybox:1.36@sha256:…`` by itself: it applies only once the caller has
confirmed that the tag names that digest now (``tag_confirmed``)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache

from moorage.enforce.policy import IdentityType, SignedIdentity

_HOST = re.compile(
    r"^(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)(?:\.[A-Za-z0-9-]+)*(?::\d{1,5})?\Z"
)
_PATH = re.compile(
    r"^[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*)*\Z"
)
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}\Z")
_DIGEST = re.compile(r"^[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]{32,}\Z")
DEFAULT_HOST = "docker.io"
LEGACY_HOSTS = frozenset({"index.docker.io"})  # the kubelet reads them as docker.io
MAX_IMAGE = 1024


class ReferenceError_(ValueError):
    """An image reference the kubelet could not pull either."""


def _looks_like_host(first: str) -> bool:
    return "." in first or ":" in first or first == "localhost"


def _host_only(value: str) -> bool:
    """A pattern without ``/`` names hosts (``*.example.com``, ``localhost:5000``,
    ``icr.io``) unless it reads as a Docker Hub image (``nginx``, ``nginx:1.*``)."""
    name, colon, after = value.partition(":")
    hostish = any(c in name for c in "*?.") or name == "localhost"
    return hostish and (not colon or after.isdigit() or after == "*")


@dataclass(frozen=True)
class Reference:
    host: str  # lower case, with the port if any
    path: str  # repository path without the host
    tag: str | None
    digest: str | None

    @property
    def repository(self) -> str:
        return f"{self.host}/{self.path}"

    @property
    def reference(self) -> str:
        """The tag or digest a registry is asked for (the digest when both are given)."""
        return self.digest or self.tag or "latest"

    @property
    def named_tag(self) -> str | None:
        """The tag the kubelet reads: ``latest`` when neither tag nor digest is given."""
        return self.tag or (None if self.digest else "latest")

    def __str__(self) -> str:
        tag = f":{self.tag}" if self.tag else ""
        return self.repository + tag + (f"@{self.digest}" if self.digest else "")

    def pinned(self, digest: str) -> str:
        """The image as the webhook rewrites it: ``host/path@digest``, no tag."""
        return f"{self.repository}@{digest}"

    @classmethod
    def parse(cls, image: str) -> Reference:
        if not image or len(image) > MAX_IMAGE or image != image.strip():
            raise ReferenceError_(f"{image[:100]!r} is not an image reference")
        name, _, digest = image.partition("@")
        tag = None
        last = name.rsplit("/", 1)[-1]
        if ":" in last:
            name, tag = name[: len(name) - len(last)] + last.split(":", 1)[0], last.split(":", 1)[1]
        first, sep, rest = name.partition("/")
        if sep and _looks_like_host(first):
            host, path = first.lower(), rest
            if host in LEGACY_HOSTS:
                host = DEFAULT_HOST
            if host == DEFAULT_HOST and "/" not in path:
                path = f"library/{path}"  # docker.io/busybox is docker.io/library/busybox
        else:
            host, path = DEFAULT_HOST, name if sep else f"library/{name}"
        if not _HOST.match(host) or not _PATH.match(path):
            raise ReferenceError_(f"{image[:100]!r} is not a valid image reference")
        if tag is not None and not _TAG.match(tag):
            raise ReferenceError_(f"{image[:100]!r} has an invalid tag")
        if digest and not _DIGEST.match(digest):
            raise ReferenceError_(f"{image[:100]!r} has an invalid digest")
        return cls(host, path, tag, digest or None)


@cache
def _glob(pattern: str, star: str) -> re.Pattern[str]:
    parts = [star if c == "*" else "." if c == "?" else re.escape(c) for c in pattern]
    return re.compile("".join(parts) + r"\Z", re.DOTALL)


@dataclass(frozen=True)
class Pattern:
    text: str
    host: str
    path: str | None  # None: any repository on the host
    reference: str | None  # a tag (or @digest) pattern; None: any

    @classmethod
    def parse(cls, text: str) -> Pattern:
        value = text.strip()
        reference = None
        if "@" in value:
            value, _, digest = value.partition("@")
            reference = "@" + digest
        first, sep, rest = value.partition("/")
        if not sep:
            if _host_only(value):
                host = value.lower()
                return cls(text, DEFAULT_HOST if host in LEGACY_HOSTS else host, None, reference)
            first, rest = DEFAULT_HOST, f"library/{value}"
        elif not (_looks_like_host(first) or "*" in first or "?" in first):
            first, rest = DEFAULT_HOST, value
        last = rest.rsplit("/", 1)[-1]
        if ":" in last and reference is None:
            reference = last.split(":", 1)[1]
            rest = rest[: len(rest) - len(last)] + last.split(":", 1)[0]
        host = first.lower()
        if host in LEGACY_HOSTS:
            host = DEFAULT_HOST
        if host == DEFAULT_HOST and "/" not in rest and not any(c in rest for c in "*?"):
            rest = f"library/{rest}"  # as references are read
        return cls(text, host, rest, reference)

    @property
    def tag_scoped(self) -> bool:
        """Whether the pattern names tags (and so applies to a digest only through its tag)."""
        return self.reference is not None and not self.reference.startswith("@")

    def matches(self, ref: Reference, tag_confirmed: bool = False) -> bool:
        """``tag_confirmed``: the caller checked that ``ref``'s tag names its digest now;
        without that, a tag pattern never matches a reference that carries a digest."""
        if not _glob(self.host, "[^/]*").match(ref.host):
            return False
        if self.path is not None and not _glob(self.path, ".*").match(ref.path):
            return False
        if self.reference is None:
            return True
        if self.reference.startswith("@"):
            return ref.digest is not None and bool(
                _glob(self.reference[1:], ".*").match(ref.digest)
            )
        tag = ref.named_tag
        if tag is None or (ref.digest is not None and not tag_confirmed):
            return False
        return bool(_glob(self.reference, ".*").match(tag))

    @property
    def specificity(self) -> tuple[int, int]:
        """(literal characters, minus wildcards) of the normalized pattern: larger wins."""
        whole = f"{self.host}/{self.path or '*'}{self.reference or ''}"
        wildcards = whole.count("*") + whole.count("?")
        return (len(whole) - wildcards, -wildcards)


def identity_matches(identity: SignedIdentity | None, ref: Reference, signed: str | None) -> bool:
    """Whether ``signed`` (a signature's docker-reference) is acceptable for
    ``ref`` under containers-policy.json's ``signedIdentity`` rules."""
    if signed is None:
        return False
    try:
        claimed = Reference.parse(signed)
    except ReferenceError_:
        return False
    kind = identity.type if identity else IdentityType.DEFAULT
    image = ref
    if kind == IdentityType.REMAP_IDENTITY and identity is not None:
        text, prefix = str(ref), identity.prefix or ""
        boundary = len(text) == len(prefix) or prefix.endswith("/") or text[len(prefix)] in "/:@"
        if text.startswith(prefix) and boundary:
            try:
                image = Reference.parse((identity.signed_prefix or "") + text[len(prefix) :])
            except ReferenceError_:
                return False
        kind = IdentityType.DEFAULT
    if kind in (IdentityType.DEFAULT, IdentityType.MATCH_REPO_DIGEST_OR_EXACT):
        if image.tag is None and image.digest is not None:
            return claimed.repository == image.repository
        return claimed.repository == image.repository and claimed.named_tag == image.named_tag
    if kind == IdentityType.MATCH_EXACT:
        return image.named_tag is not None and (claimed.repository, claimed.named_tag) == (
            image.repository,
            image.named_tag,
        )
    if kind == IdentityType.MATCH_REPOSITORY:
        return claimed.repository == image.repository
    assert identity is not None
    if kind == IdentityType.MATCH_EXACT_REPOSITORY:
        return claimed.repository == Reference.parse(identity.docker_repository or "").repository
    if kind == IdentityType.MATCH_EXACT_REFERENCE:
        wanted = Reference.parse(identity.docker_reference or "")
        return (claimed.repository, claimed.named_tag) == (wanted.repository, wanted.named_tag)
    return False
