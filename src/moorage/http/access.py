"""Who may do what. Open access is the only mode until IAM lands; it must be
asked for explicitly (``--auth none``) and it says so in the log."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

PULL = "pull"
PUSH = "push"
DELETE = "delete"


class AccessPolicy(Protocol):
    def check(
        self, headers: Mapping[str, str], repository: str | None, actions: tuple[str, ...]
    ) -> None:
        """Raise a RegistryError (UNAUTHORIZED or DENIED) when the request may not proceed."""


class OpenAccess:
    """Everyone may do everything: for a trusted network or local development only."""

    def check(
        self, headers: Mapping[str, str], repository: str | None, actions: tuple[str, ...]
    ) -> None:
        return None
