"""Typed failures of the Kubernetes workflows, so that the CLI, the controller
and the webhook each decide how to report them."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


class KubeError(Exception):
    """A workflow failure the user can act on, in one line."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class KubeApiError(KubeError):
    """The Kubernetes API answered with an error status."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"Kubernetes API said {status} {reason}")
        self.status = status
        self.reason = reason


class KubeUnreachable(KubeError):
    """The API server could not be reached (or the connection broke)."""


class PreconditionFailed(KubeError):
    """The cluster is not in the state the workflow needs (e.g. no source secrets)."""


@contextmanager
def kube_errors() -> Iterator[None]:
    """Kubernetes client exceptions as typed errors, raised once at the boundary."""
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    try:
        yield
    except ApiException as exc:
        raise KubeApiError(int(exc.status or 0), str(exc.reason)) from None
    except HTTPError as exc:
        raise KubeUnreachable(f"cannot reach the API server ({type(exc).__name__})") from None
