"""The credential checks on their own, against recording registries on loopback
(attacker stand-ins, tests/registry_recorder.py): what is sent, and where."""

from __future__ import annotations

import base64

import pytest

from moorage.kube.keyring import Credential, Keyring
from moorage.kube.registry_check import ImageRef, RegistryCheck
from tests.registry_recorder import Recorder


@pytest.mark.parametrize(
    ("image", "host", "path", "reference"),
    [
        ("us.localhost:5000/team/app:v1", "us.localhost:5000", "team/app", "v1"),
        ("127.0.0.1:5000/a/b", "127.0.0.1:5000", "a/b", "latest"),
        ("Reg.Example.com/a/b@sha256:" + "0" * 64, "reg.example.com", "a/b", "sha256:" + "0" * 64),
        ("nginx", "docker.io", "library/nginx", "latest"),
        ("bitnami/redis:7", "docker.io", "bitnami/redis", "7"),
    ],
)
def test_image_references(image: str, host: str, path: str, reference: str) -> None:
    ref = ImageRef.parse(image)
    assert (ref.host, ref.path, ref.reference) == (host, path, reference)


def credential_for(key: str, user: str = "robot", password: str = "robot-password") -> Credential:
    ring = Keyring()
    auth = base64.b64encode(f"{user}:{password}".encode()).decode()
    ring.add_config({key: {"auth": auth}}, "ns/secret")
    ((_, (found,)),) = ring.entries.items()
    return found


def test_a_wildcard_entry_is_not_sent() -> None:
    recorder = Recorder("basic").start()
    try:
        port = recorder.host.rsplit(":", 1)[1]
        # Stored for a pattern, not for this host: diagnose keeps it to itself.
        wildcard = credential_for(f"*.0.0.1:{port}")
        ring = Keyring(entries={wildcard.key: [wildcard]})
        assert ring.lookup(f"{recorder.host}/vendor/tool") == [wildcard]  # the kubelet sends it
        image = ImageRef.parse(f"{recorder.host}/vendor/tool:1")
        result = RegistryCheck(insecure=(recorder.host,), allow_private=(recorder.host,))(
            image, wildcard
        )
        assert result.verdict == "unknown" and "not sent" in result.cause
        assert recorder.seen == []
    finally:
        recorder.stop()


def test_a_redirect_is_not_followed() -> None:
    elsewhere = Recorder("basic").start()
    hostile = Recorder("redirect", realm=elsewhere.url).start()
    try:
        both = (hostile.host, elsewhere.host)
        check = RegistryCheck(insecure=both, allow_private=both)
        result = check(
            ImageRef.parse(f"{hostile.host}/vendor/tool:1"), credential_for(hostile.host)
        )
        assert result.verdict == "unknown" and "307" in result.cause
        assert elsewhere.seen == []
        assert [s.authorization for s in hostile.seen] == [None]  # asked anonymously, once
    finally:
        elsewhere.stop()
        hostile.stop()


def test_docker_hub_is_not_contacted() -> None:
    result = RegistryCheck()(
        ImageRef.parse("nginx:1"), credential_for("https://index.docker.io/v1/")
    )
    assert result.verdict == "unknown" and "Docker Hub" in result.cause
