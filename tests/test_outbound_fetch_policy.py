"""Where Moorage's own fetches may go when an attacker names the host: the
webhook's registry reader, ``ks diagnose``'s registry check and the egress
policy under both, against a hostile registry on loopback
(tests/attacker_registry.py) that redirects blobs to an "instance metadata"
server and points its Bearer realm at another host. Loopback stands in for
every private range: the tests allow only the registry's own host:port, as an
operator would allow an in-cluster registry, and check nothing else is reached."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Iterator

import httpx
import pytest

from moorage.egress import Egress, Refused, credential_for
from moorage.enforce.matching import Reference
from moorage.enforce.registry import Access, ReadError, RegistryReader
from moorage.kube.keyring import Credential, Keyring
from moorage.kube.registry_check import ImageRef, RegistryCheck
from tests.attacker_registry import AttackerRegistry

SECRET = "robot-password-for-the-attacker"


def credential_for_host(key: str) -> Credential:
    ring = Keyring()
    auth = base64.b64encode(f"robot:{SECRET}".encode()).decode()
    ring.add_config({key: {"auth": auth}}, "ns/secret")
    ((_, (found,)),) = ring.entries.items()
    return found


@pytest.fixture
def redirecting() -> Iterator[AttackerRegistry]:
    attacker = AttackerRegistry("redirect").start()
    yield attacker
    attacker.stop()


@pytest.fixture
def foreign_realm() -> Iterator[AttackerRegistry]:
    attacker = AttackerRegistry("realm").start()
    yield attacker
    attacker.stop()


def read_signatures(attacker: AttackerRegistry, egress: Egress) -> str:
    """What the webhook's reader makes of the attacker's image: its error, or "read"."""

    async def run() -> str:
        reader = RegistryReader(Access(egress, timeout=5))
        try:
            session = reader.session(
                Reference.parse(attacker.image()), [credential_for_host(attacker.host)]
            )
            digest = await reader.resolve(session)
            await reader.cosign_signatures(session, digest)
            return "read"
        except ReadError as exc:
            return str(exc)
        finally:
            await reader.close()

    return asyncio.run(run())


def only_this_registry(attacker: AttackerRegistry) -> Egress:
    return Egress.parse([attacker.host], [attacker.host, attacker.metadata.host])


def test_a_blob_redirect_to_another_loopback_port_is_refused(
    redirecting: AttackerRegistry,
) -> None:
    # The allowance names the registry's own host:port only; its metadata
    # neighbour on another port of the same address stays out of reach, even
    # listed as insecure.
    outcome = read_signatures(redirecting, only_this_registry(redirecting))
    assert "redirected a blob" in outcome and "loopback" in outcome, outcome
    assert redirecting.metadata.heard == []
    assert any("/blobs/" in h.path for h in redirecting.registry.heard)  # it was asked


def test_a_registry_on_loopback_is_not_contacted_without_an_allowance(
    redirecting: AttackerRegistry,
) -> None:
    outcome = read_signatures(redirecting, Egress.parse([], [redirecting.host]))
    assert "loopback" in outcome and "--allow-private" in outcome, outcome
    assert redirecting.registry.heard == []


def test_a_name_that_resolves_to_loopback_is_refused(redirecting: AttackerRegistry) -> None:
    port = redirecting.registry.port
    for host in (f"localhost:{port}", f"[::ffff:127.0.0.1]:{port}", f"[::1]:{port}"):
        policy = Egress.parse([], [host])

        async def get(url: str, policy: Egress = policy) -> None:
            async with policy.async_client() as http:
                await http.get(url)

        with pytest.raises(Refused, match="address"):
            asyncio.run(get(f"http://{host}/v2/"))
    assert redirecting.registry.heard == []


def test_a_foreign_realm_gets_no_credential_and_an_unallowed_one_no_request(
    foreign_realm: AttackerRegistry,
) -> None:
    # The token service's host is not allowed: it hears nothing at all.
    outcome = read_signatures(foreign_realm, only_this_registry(foreign_realm))
    assert "refused" in outcome or "refused the pod's pull secrets" in outcome, outcome
    assert foreign_realm.token.heard == []
    # Allowed as an address, it is still not this credential's host: asked anonymously.
    allowed = Egress.parse(
        [foreign_realm.host, foreign_realm.token.host],
        [foreign_realm.host, foreign_realm.token.host],
    )
    read_signatures(foreign_realm, allowed)
    assert foreign_realm.token.heard, "the anonymous token request"
    assert {h.authorization for h in foreign_realm.token.heard} == {None}
    assert all(SECRET not in _decoded(h.authorization) for h in foreign_realm.registry.heard)


def test_a_configured_token_service_may_receive_the_credential(
    foreign_realm: AttackerRegistry,
) -> None:
    hosts = [foreign_realm.host, foreign_realm.token.host]
    egress = Egress.parse(hosts, hosts, [f"{foreign_realm.host}={foreign_realm.token.host}"])
    outcome = read_signatures(foreign_realm, egress)
    assert "redirected a blob" in outcome, outcome  # signed in, then stopped at the blob
    assert any(SECRET in _decoded(h.authorization) for h in foreign_realm.token.heard)


def test_diagnose_does_not_follow_the_realm_or_reach_unallowed_addresses(
    foreign_realm: AttackerRegistry,
) -> None:
    image = ImageRef.parse(foreign_realm.image())
    credential = credential_for_host(foreign_realm.host)
    unallowed = RegistryCheck(insecure=(foreign_realm.host,))(image, credential)
    assert unallowed.verdict == "unknown" and "loopback" in unallowed.cause
    assert foreign_realm.registry.heard == []
    allowed = RegistryCheck(
        insecure=(foreign_realm.host, foreign_realm.token.host),
        allow_private=(foreign_realm.host, foreign_realm.token.host),
    )(image, credential)
    assert allowed.verdict == "unknown" and "not contacted" in allowed.cause
    assert foreign_realm.token.heard == []


def test_a_credential_goes_only_to_its_own_host_and_plain_http_only_where_listed() -> None:
    policy = Egress.parse(["127.0.0.1"], ["127.0.0.1:1"])
    signed = {"Authorization": "Basic eDp5"}
    with policy.client() as http:
        for url, extensions, why in (
            ("http://127.0.0.1:1/", {}, "credential of another host"),
            ("http://127.0.0.1:1/", credential_for("127.0.0.1:2"), "credential of 127.0.0.1:2"),
            ("http://127.0.0.1:2/", {}, "plain HTTP"),
            ("ftp://127.0.0.1:1/", {}, "'ftp'"),
        ):
            headers = signed if "credential" in why else {}
            with pytest.raises(Refused, match=why):
                http.get(url, headers=headers, extensions=extensions)


def test_plain_http_never_goes_to_a_public_address() -> None:
    policy = Egress.parse([], ["example.com"])
    with pytest.raises(Refused, match="public address"):
        policy.check_address("example.com", 80, _address("93.184.215.14"), plain=True)
    policy.check_address("example.com", 443, _address("93.184.215.14"), plain=False)
    for private in ("10.0.0.1", "169.254.169.254", "100.64.0.1", "fd00::1", "::ffff:10.0.0.1"):
        with pytest.raises(Refused, match="address"):
            policy.check_address("example.com", 443, _address(private), plain=False)
    allowed = Egress.parse(["10.96.0.0/12"])
    allowed.check_address("registry.svc", 5000, _address("10.96.0.10"), plain=True)


def _address(text: str) -> object:
    import ipaddress

    return ipaddress.ip_address(text)


def _decoded(header: str | None) -> str:
    if not header or not header.startswith("Basic "):
        return header or ""
    return base64.b64decode(header[6:]).decode(errors="replace")


def test_malformed_allowances_are_refused_with_the_option_named() -> None:
    for entry in ("http://x", "a/b", ""):
        with pytest.raises(ValueError, match="--allow-private"):
            Egress.parse([entry])
    with pytest.raises(ValueError, match="REGISTRY=HOST"):
        Egress.parse(token_services=["no-equals"])
    assert isinstance(Refused("x"), httpx.TransportError)
