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
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from kubernetes import client

from moorage.egress import Egress, Refused, credential_for
from moorage.enforce.matching import Reference
from moorage.enforce.registry import Access, ReadError, RegistryReader, Wanted
from moorage.kube.keyring import Credential, Keyring
from moorage.kube.registry_check import ImageRef, RegistryCheck
from tests.attacker_registry import AttackerRegistry
from tests.conftest import require_tool
from tests.enforce_env import (
    NAMESPACE,
    WebhookProcess,
    apply_policy,
    denial,
    key_secret,
    make_pull_secret,
    moorage,
    register_cluster,
    workload,
)
from tests.kube import KubeCluster, api_client, make_namespace
from tests.server import free_port

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
            await reader.cosign_documents(session, digest, Wanted(signatures=True))
            return "read"
        except ReadError as exc:
            return str(exc)
        finally:
            await reader.close()

    return asyncio.run(run())


def test_an_endless_reply_is_given_up_past_the_readers_limit() -> None:
    # The reader's own limits (a payload, a manifest, the budget) are checked on
    # what was read; the hostile registry must not get to fill memory first.
    endless = AttackerRegistry("endless").start()
    try:
        outcome = read_signatures(endless, only_this_registry(endless))
        assert outcome == "read", outcome  # the blob is skipped, as any too large
        assert endless.sent < AttackerRegistry.ENDLESS // 2, endless.sent
    finally:
        endless.stop()


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


def test_the_connection_goes_to_the_address_that_was_checked(
    redirecting: AttackerRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A fake resolver, because a DNS rebind needs a DNS server the test cannot
    # run: the name first resolves to the allowed 127.0.0.1, then to 127.0.0.2.
    real = socket.getaddrinfo
    lookups: list[str] = []

    def rebinding(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host != "rebind.test":
            return real(host, *args, **kwargs)
        lookups.append(host)
        return real("127.0.0.1" if len(lookups) == 1 else "127.0.0.2", *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", rebinding)
    host = f"rebind.test:{redirecting.registry.port}"
    policy = Egress.parse(["127.0.0.1/32"], [host])
    with policy.client() as http:
        assert http.get(f"http://{host}/v2/app/tool/manifests/v1").status_code == 200
    assert lookups == ["rebind.test"]  # resolved once; the socket went to what was checked
    with policy.client() as http, pytest.raises(Refused, match=r"127\.0\.0\.2"):
        http.get(f"http://{host}/v2/")  # a new connection checks the new answer


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


def test_ipv4_carried_in_nat64_translated_or_compatible_ipv6_is_checked_as_ipv4() -> None:
    """A NAT64 gateway (64:ff9b::/96, 64:ff9b:1::/48) or an SIIT or IPv4-compatible
    form delivers to the IPv4 address inside: the metadata service, loopback."""
    policy = Egress()
    for carried in (
        "64:ff9b::a9fe:a9fe",
        "64:ff9b::7f00:1",
        "64:ff9b:1::a00:1",
        "::ffff:0:7f00:1",
        "::7f00:1",
        "fec0::1",
    ):
        with pytest.raises(Refused, match="address"):
            policy.check_address("example.com", 443, _address(carried), plain=False)
    policy.check_address("example.com", 443, _address("64:ff9b::5db8:d70e"), plain=False)


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


# -- the webhook, called by a real API server, judging the attacker's images --------


@dataclass
class Webhooked:
    api: Any
    redirecting: AttackerRegistry
    foreign_realm: AttackerRegistry
    stranger: AttackerRegistry
    webhook: WebhookProcess


@pytest.fixture(scope="module")
def webhooked(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Webhooked]:
    for tool in ("kube-apiserver", "etcd", "kubectl"):
        require_tool(tool)
    tmp = tmp_path_factory.mktemp("outbound")
    redirecting = AttackerRegistry("redirect").start()
    foreign_realm = AttackerRegistry("realm").start()
    stranger = AttackerRegistry("redirect").start()
    cluster = KubeCluster(tmp / "cluster").start()
    webhook: WebhookProcess | None = None
    try:
        config = tmp / "config"
        # Each registry is allowed by its own host:port only (--insecure-registry
        # and --allow-private), as an operator allows an in-cluster registry.
        register_cluster(config, cluster, redirecting.host, foreign_realm.host)
        tls = tmp / "tls"
        assert moorage(config, "enforce", "certs", "--dir", str(tls)).returncode == 0
        port = free_port()
        installed = moorage(
            config,
            "enforce",
            "install",
            "--cluster",
            "test",
            "--url",
            f"https://127.0.0.1:{port}",
            "--tls-dir",
            str(tls),
            "--default-policy",
            "none",
        )
        assert installed.returncode == 0, installed.stderr
        api = api_client(cluster)
        core = client.CoreV1Api(api)
        public = ec.generate_private_key(ec.SECP256R1()).public_key()
        pem = public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        key_secret(core, NAMESPACE, "cosign-release", {"cosign.pub": pem})
        signed = {"cosign": {"requirements": [{"type": "signedBy", "keySecret": "cosign-release"}]}}
        apply_policy(
            cluster,
            {
                "apiVersion": "moorage.io/v1",
                "kind": "ClusterImagePolicy",
                "metadata": {"name": "attackers"},
                "spec": {
                    "repositories": [
                        {"name": f"{redirecting.host}/*", "policy": signed},
                        {"name": f"{foreign_realm.host}/*", "policy": signed},
                        {"name": f"{stranger.host}/*", "policy": signed},
                    ]
                },
            },
        )
        make_namespace(core, "apps")
        make_pull_secret(core, "apps", "redirecting", redirecting.host, SECRET)
        make_pull_secret(core, "apps", "realm", foreign_realm.host, SECRET)
        make_pull_secret(core, "apps", "stranger", stranger.host, SECRET)
        log = tmp / "webhook.log"
        # The metadata stand-in is listed insecure too: only its address keeps it out.
        insecure = ("--insecure-registry", stranger.host, "--insecure-registry")
        webhook = WebhookProcess(config, tls, port, log, *insecure, redirecting.metadata.host)
        webhook.start()
        yield Webhooked(api, redirecting, foreign_realm, stranger, webhook)
    finally:
        if webhook is not None:
            webhook.stop()
        cluster.stop()
        for attacker in (redirecting, foreign_realm, stranger):
            attacker.stop()


def test_the_webhook_does_not_follow_a_blob_redirect_to_a_metadata_address(
    webhooked: Webhooked,
) -> None:
    attacker = webhooked.redirecting
    pod = workload("Pod", "redirected", attacker.image(), ["redirecting"])
    message = denial(webhooked.api, "apps", pod)
    assert message is not None and "redirected a blob" in message, message
    assert f"refused {attacker.metadata.host}" in message and "loopback" in message
    assert attacker.metadata.heard == []
    assert any("/blobs/" in h.path for h in attacker.registry.heard)  # the webhook did ask


def test_the_webhook_sends_nothing_to_a_realm_on_an_unallowed_host(webhooked: Webhooked) -> None:
    attacker = webhooked.foreign_realm
    pod = workload("Pod", "realm", attacker.image(), ["realm"])
    message = denial(webhooked.api, "apps", pod)
    assert message is not None and "is not admitted" in message, message
    assert attacker.token.heard == []
    assert all(SECRET not in _decoded(h.authorization) for h in attacker.registry.heard)


def test_an_unallowed_registry_is_not_contacted_by_the_webhook(webhooked: Webhooked) -> None:
    # Listed as insecure (plain HTTP) but allowed nowhere: its address is refused.
    stranger = webhooked.stranger
    pod = workload("Pod", "stranger", stranger.image(), ["stranger"])
    message = denial(webhooked.api, "apps", pod)
    assert message is not None and "loopback" in message and "--allow-private" in message, message
    assert stranger.registry.heard == []
