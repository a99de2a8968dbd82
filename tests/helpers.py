"""Small HTTP helpers over requests for protocol-level tests."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable
from typing import Any, TypeVar

import requests

from tests.oci_layout import OCI_CONFIG, OCI_LAYER, OCI_MANIFEST, Image, descriptor, sha256
from tests.server import MoorageServer

T = TypeVar("T")


def push_blob(registry: MoorageServer, repo: str, data: bytes) -> str:
    digest = sha256(data)
    r = requests.post(
        f"{registry.url}/v2/{repo}/blobs/uploads/", params={"digest": digest}, data=data, timeout=60
    )
    assert r.status_code == 201, r.text
    assert r.headers["Docker-Content-Digest"] == digest
    return digest


def put_manifest(
    registry: MoorageServer, repo: str, ref: str, body: bytes, media_type: str = OCI_MANIFEST
) -> requests.Response:
    return requests.put(
        f"{registry.url}/v2/{repo}/manifests/{ref}",
        data=body,
        headers={"Content-Type": media_type},
        timeout=60,
    )


def push_image(registry: MoorageServer, repo: str, tag: str, image: Image) -> str:
    for blob in [image.config, *image.layers]:
        push_blob(registry, repo, blob)
    r = put_manifest(registry, repo, tag, image.manifest)
    assert r.status_code == 201, r.text
    return image.manifest_digest


def simple_manifest(
    registry: MoorageServer,
    repo: str,
    *,
    seed: bytes = b"layer",
    extra: dict[str, Any] | None = None,
) -> bytes:
    config = b'{"architecture":"amd64","os":"linux"}'
    push_blob(registry, repo, config)
    push_blob(registry, repo, seed)
    doc: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": descriptor(OCI_CONFIG, config),
        "layers": [descriptor(OCI_LAYER, seed)],
    }
    doc.update(extra or {})
    return json.dumps(doc).encode()


def error_code(response: requests.Response) -> str:
    return str(response.json()["errors"][0]["code"])


def raw_request(registry: MoorageServer, request: bytes, *, close_early: bool = False) -> bytes:
    """Send bytes verbatim (no client-side path normalization); returns the reply."""
    with socket.create_connection(("127.0.0.1", registry.port), timeout=10) as sock:
        sock.sendall(request)
        if close_early:
            sock.shutdown(socket.SHUT_WR)
        chunks = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except (TimeoutError, ConnectionResetError):
            pass
    return b"".join(chunks)


def wait_for(condition: Callable[[], T | None], timeout: float = 30, what: str = "") -> T:
    """Poll until ``condition`` returns something truthy; fail after ``timeout``
    seconds. Tests wait for what they need, never for a length of time."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or condition}")
        time.sleep(0.05)
