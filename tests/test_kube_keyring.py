"""The kubelet's credential matching, as machine-facts records it and the
kubelet's keyring implements it."""

from __future__ import annotations

import base64
import json

import pytest

from moorage.kube.keyring import (
    DOCKERCONFIGJSON,
    Keyring,
    KeyringError,
    decode_auth,
    key_matches,
    normalize_key,
    repository_of,
)


def secret_data(auths: dict[str, dict[str, str]]) -> dict[str, str]:
    body = json.dumps({"auths": auths}).encode()
    return {".dockerconfigjson": base64.b64encode(body).decode()}


@pytest.mark.parametrize(
    ("key", "image", "matches"),
    [
        ("us.icr.io", "us.icr.io/ns/app", True),
        ("https://us.icr.io", "us.icr.io/ns/app", True),
        ("*.icr.io", "us.icr.io/ns/app", True),
        ("*.icr.io", "icr.io/ns/app", False),
        ("*.icr.io", "a.b.icr.io/ns/app", False),
        ("us.icr.io:5000", "us.icr.io/ns/app", False),
        ("us.icr.io", "us.icr.io:5000/ns/app", False),
        ("us.localhost:5000", "us.localhost:5000/ns/app", True),
        ("us.icr.io/ns", "us.icr.io/ns/app", True),
        ("us.icr.io/other", "us.icr.io/ns/app", False),
        ("https://us.icr.io/v2/", "us.icr.io/ns/app", True),
        ("de.icr.io", "us.icr.io/ns/app", False),
    ],
)
def test_key_matching(key: str, image: str, matches: bool) -> None:
    assert key_matches(normalize_key(key), image) is matches


def test_auth_padded_or_unpadded_and_overriding() -> None:
    padded = base64.b64encode(b"iamapikey:secret1").decode()
    assert padded.endswith("=")
    assert decode_auth(padded) == ("iamapikey", "secret1")
    assert decode_auth(padded.rstrip("=")) == ("iamapikey", "secret1")
    for bad in ("@@@", base64.b64encode(b"no-colon").decode()):
        with pytest.raises(KeyringError):
            decode_auth(bad)

    ring = Keyring()
    ring.add_secret(
        DOCKERCONFIGJSON,
        secret_data({"us.icr.io": {"username": "ignored", "password": "ignored", "auth": padded}}),
        "default/s",
    )
    (cred,) = ring.lookup("us.icr.io/ns/app")
    assert (cred.username, cred.password) == ("iamapikey", "secret1")
    assert "secret1" not in repr(cred)


def test_most_specific_first_and_all_tried() -> None:
    ring = Keyring()
    ring.add_secret(
        DOCKERCONFIGJSON, secret_data({"us.icr.io": {"username": "host", "password": "p"}}), "ns/a"
    )
    ring.add_secret(
        DOCKERCONFIGJSON,
        secret_data({"us.icr.io/team": {"username": "path", "password": "p"}}),
        "ns/b",
    )
    ring.add_secret(
        DOCKERCONFIGJSON, secret_data({"*.icr.io": {"username": "glob", "password": "p"}}), "ns/c"
    )
    assert [c.username for c in ring.lookup("us.icr.io/team/app")] == ["path", "host", "glob"]
    assert [c.username for c in ring.lookup("us.icr.io/other/app")] == ["host", "glob"]


def test_docker_hub_images_find_the_docker_hub_key_however_written() -> None:
    """The kubelet counts docker.io and index.docker.io as Docker Hub too."""
    ring = Keyring()
    ring.add_secret(
        DOCKERCONFIGJSON,
        secret_data({"https://index.docker.io/v1/": {"username": "hub", "password": "p"}}),
        "ns/hub",
    )
    for image in ("library/nginx", "nginx", "docker.io/library/nginx", "index.docker.io/x/y"):
        assert [c.username for c in ring.lookup(image)] == ["hub"], image
    assert ring.lookup("quay.io/x/y") == []


def test_bad_secrets_are_reported() -> None:
    ring = Keyring()
    with pytest.raises(KeyringError):
        ring.add_secret(
            DOCKERCONFIGJSON, {".dockerconfigjson": base64.b64encode(b"{no").decode()}, "ns/broken"
        )
    ring.add_secret("Opaque", {}, "ns/opaque")
    ring.add_secret(DOCKERCONFIGJSON, {}, "ns/empty")
    assert len(ring.problems) == 2


def test_repository_of() -> None:
    assert repository_of("us.icr.io:5000/ns/app:1.0") == "us.icr.io:5000/ns/app"
    assert repository_of("us.icr.io/ns/app@sha256:" + "a" * 64) == "us.icr.io/ns/app"
    assert repository_of("localhost:5000/ns/app") == "localhost:5000/ns/app"
