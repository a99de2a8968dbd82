"""Repository names and tags, as the distribution spec's grammar allows them,
plus Moorage's rule that every repository lives in a registry namespace
(``<namespace>/<image>``)."""

from __future__ import annotations

import re

_COMPONENT = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
NAME_PATTERN = re.compile(rf"^{_COMPONENT}(?:/{_COMPONENT})*\Z")
TAG_PATTERN = re.compile(r"^[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}\Z")
MAX_NAME_LENGTH = 255


class NameError_(ValueError):
    """A repository name or tag that the spec's grammar rejects."""


def validate_name(name: str) -> str:
    """Return the registry namespace of a valid repository name."""
    if len(name) > MAX_NAME_LENGTH:
        raise NameError_(f"repository name longer than {MAX_NAME_LENGTH} characters")
    if not NAME_PATTERN.match(name):
        raise NameError_(f"invalid repository name {name[:100]!r}")
    namespace, sep, _ = name.partition("/")
    if not sep:
        raise NameError_(
            f"repository name {name!r} must be <namespace>/<image>: "
            "every image lives in a registry namespace"
        )
    return namespace


def validate_tag(tag: str) -> None:
    if not TAG_PATTERN.match(tag):
        raise NameError_(f"invalid tag {tag[:140]!r}")


def is_digest(reference: str) -> bool:
    return ":" in reference
