"""Key rotation, role decisions, scopes, regions and settings: the rules under
the token service, checked directly (no server needed)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from moorage.auth.keys import KeyRing
from moorage.auth.tokens import InvalidToken, Scope, parse_scopes
from moorage.config import ConfigError, load_settings
from moorage.iam.roles import Grant, RoleError, allowed_actions, parse_roles
from moorage.regions import MalformedHost, RegionMap, UnknownDomain
from tests.helpers import wait_for


def key_ring(tmp_path: Path, rotate_after: float = 3600, retain: float = 3600) -> KeyRing:
    """A key ring over a database of its own in ``tmp_path`` (the same database
    for every call with the same path: another process's view)."""
    from moorage.iam.secrets import SecretKeeper
    from moorage.metadata import create_metadata_engine, sqlite_url, upgrade
    from moorage.metadata.shared_store import SigningKeyStore

    engine = create_metadata_engine(sqlite_url(tmp_path))
    upgrade(engine)
    return KeyRing(SigningKeyStore(engine), SecretKeeper(b"k" * 32), rotate_after, retain)


def test_key_rotation_keeps_old_keys_for_verification(tmp_path: Path) -> None:
    import jwt

    ring = key_ring(tmp_path)
    first = ring.current()
    token = jwt.encode({"sub": "x"}, first.private, algorithm="ES256", headers={"kid": first.kid})
    assert ring.current() is first  # not due yet

    ring.rotate_after = 0.0
    # Keys are dated to the second: the next one must be of a later second.
    wait_for(lambda: int(time.time()) > first.created, 5, "the next second")
    second = ring.current()
    assert second.kid != first.kid
    assert {k["kid"] for k in ring.jwks()["keys"]} == {first.kid, second.kid}
    assert jwt.decode(token, ring.public_key(first.kid), algorithms=["ES256"])["sub"] == "x"
    # Another process sharing the database learns the new key on first sight.
    other = key_ring(tmp_path)
    assert other.public_key(second.kid) is not None

    ring.retain = 0.0
    wait_for(lambda: int(time.time()) > second.created, 5, "the next second")
    third = ring.current()
    assert ring.public_key(first.kid) is None  # retired: its tokens no longer verify
    assert ring.public_key(third.kid) is not None
    assert all(k["alg"] == "ES256" and k["kty"] == "EC" for k in ring.jwks()["keys"])


def test_roles_parse_and_decide() -> None:
    assert parse_roles("writer, Reader,Reader") == ("Reader", "Writer")
    assert parse_roles(["Administrator", "Manager"]) == ("Manager", "Administrator")
    for bad in ("", "Readr", "Reader,Owner"):
        with pytest.raises(RoleError):
            parse_roles(bad)

    grants = [
        Grant.of(["Reader"], "container-registry", "us-south", "team-a"),
        Grant.of(["Writer"], "container-registry", "eu-de", None),
        Grant.of(["Manager"], "containers-kubernetes", None, None),
    ]
    assert allowed_actions(grants, "container-registry", "us-south", "team-a") == {"pull", "list"}
    assert allowed_actions(grants, "container-registry", "us-south", "team-b") == set()
    assert "push" in allowed_actions(grants, "container-registry", "eu-de", "anything")
    assert "delete" not in allowed_actions(grants, "container-registry", "eu-de", "anything")
    assert allowed_actions(grants, "container-registry", "jp-tok", "team-a") == set()


def test_scopes() -> None:
    scopes = parse_scopes(
        [
            "repository:ns/app:pull,push",
            "repository(plugin):a/b:pull",
            "registry:catalog:* repository:x/y:delete",
            "garbage",
        ]
    )
    assert [str(s) for s in scopes] == [
        "repository:ns/app:pull,push",
        "repository:a/b:pull",
        "registry:catalog:*",
        "repository:x/y:delete",
    ]
    assert Scope.parse("repository:ns/app:") == Scope("repository", "ns/app", ())


def test_regions_by_host() -> None:
    regions = RegionMap.default("example.test")
    assert regions.resolve("us.example.test:5000").region.name == "us-south"
    legacy = regions.resolve("registry.ng.example.test")
    assert legacy.legacy and legacy.service == "registry.ng.example.test"
    assert regions.resolve("example.test").region.is_global
    assert regions.resolve("127.0.0.1:5000").region.is_global
    assert regions.resolve("[::1]:5000").region.is_global
    assert regions.resolve("JP.EXAMPLE.TEST").region.name == "jp-tok"
    assert regions.resolve("us.example.test.").region.name == "us-south"
    for unknown in ("evil.test", "us.example.test.evil", "[::2]:5000", "127.0.0.2"):
        with pytest.raises(UnknownDomain):
            regions.resolve(unknown)
    for malformed in (
        None,
        "",
        "us.example.test:@evil.test",
        "us.example.test:5000@evil.test",
        "user@us.example.test",
        "us.example.test/evil",
        "us.example.test:",
        "us.example.test:0",
        "us.example.test:65536",
        "us.example.test:+80",
        "us.example.test:5000:5000",
        "::1",
        "[::1",
        "us.example.test evil.test",
        "us.example.\u017ftest",  # a non-ASCII letter
    ):
        with pytest.raises(MalformedHost):
            regions.resolve(malformed)


def test_custom_regions_in_the_config_file(tmp_path: Path) -> None:
    config = tmp_path / "moorage.toml"
    config.write_text(
        '[[regions]]\nname = "lab"\ndomain = "registry.lab.test"\nlegacy_domain = "old.lab.test"\n'
    )
    settings = load_settings(config)
    assert settings.regions == (("lab", "registry.lab.test", "old.lab.test"),)
    for bad in (
        '[[regions]]\nname = "x"\n',
        '[[regions]]\nname = "x"\ndomain = "bad domain"\n',
        '[[regions]]\nname = "x"\ndomain = "a.test"\n[[regions]]\nname = "x"\ndomain = "b.test"\n',
    ):
        config.write_text(bad)
        with pytest.raises(ConfigError):
            load_settings(config)


def test_rejected_tokens_never_echo_the_token(tmp_path: Path) -> None:
    import jwt

    from moorage.auth.tokens import TokenService

    ring = key_ring(tmp_path)
    key = ring.current()
    service = TokenService(ring, iam=None)  # type: ignore[arg-type]  # verify needs no IAM
    now = int(time.time())
    expired = jwt.encode(
        {"iss": "moorage", "aud": "us.localhost", "sub": "x", "iat": now - 600, "exp": now - 300},
        key.private,
        algorithm="ES256",
        headers={"kid": key.kid},
    )
    for token, audience in [
        (expired, "us.localhost"),
        (expired[:-4] + "AAAA", "us.localhost"),
        (
            jwt.encode(
                {"iss": "moorage", "aud": "de.localhost", "sub": "x", "iat": now, "exp": now + 60},
                key.private,
                algorithm="ES256",
                headers={"kid": key.kid},
            ),
            "us.localhost",
        ),
    ]:
        with pytest.raises(InvalidToken) as info:
            service.verify(token, audience)
        assert token not in str(info.value) and token[:20] not in str(info.value)
    assert service.verify(expired, "us.localhost", allow_expired=True)["sub"] == "x"
