"""The pure rules of enforcement, one by one: image references, repository
patterns and which one wins, signed identities, the policy schema and the
CRD schema made from it, converting Portieris policies, where each kind keeps
its images, the install configuration and what it refuses, and the cache."""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given
from hypothesis import strategies as st

from moorage.enforce import admission, install, portieris
from moorage.enforce.cache import VerdictCache
from moorage.enforce.keys import KeyError_, cosign_keys, gpg_keys
from moorage.enforce.matching import Pattern, Reference, ReferenceError_, identity_matches
from moorage.enforce.policy import (
    CLUSTER_IMAGE_POLICY,
    IMAGE_POLICY,
    Policy,
    PolicyError,
    SignedIdentity,
    crd,
    parse_spec,
)
from moorage.enforce.state import Entry, PolicySet
from moorage.enforce.verify import best_entry
from moorage.kube.workloads import KINDS
from tests.enforce_env import workload

# -- references and patterns --------------------------------------------------------


def test_references_are_read_as_the_kubelet_reads_them() -> None:
    assert str(Reference.parse("nginx")) == "docker.io/library/nginx"
    assert Reference.parse("nginx").reference == "latest"
    ref = Reference.parse("US.localhost:5000/team/app:v1@sha256:" + "a" * 64)
    assert (ref.host, ref.path, ref.tag) == ("us.localhost:5000", "team/app", "v1")
    assert ref.reference == "sha256:" + "a" * 64
    assert ref.pinned("sha256:" + "b" * 64) == "us.localhost:5000/team/app@sha256:" + "b" * 64
    for bad in ("", " nginx", "Team/App", "a/b:bad tag", "a/b@sha256:short", "a//b", "x" * 2000):
        with pytest.raises(ReferenceError_):
            Reference.parse(bad)


@given(st.text(max_size=300))
def test_any_string_is_a_reference_or_a_clear_refusal(text: str) -> None:
    try:
        Reference.parse(text)
    except ReferenceError_ as exc:
        assert str(exc)


def matches(pattern: str, image: str) -> bool:
    return Pattern.parse(pattern).matches(Reference.parse(image))


def test_host_and_path_are_matched_separately() -> None:
    assert matches("*.example.com/*", "us.example.com/team/app:v1")
    assert not matches("*.example.com/*", "evil.test/x.example.com/app:v1")
    assert matches("*", "evil.test/x.example.com/app:v1")
    assert matches("icr.io", "icr.io/a/b/c:v1")  # no path: the whole host
    assert not matches("icr.io", "us.icr.io/a:v1")
    assert matches("localhost:5000/team/*", "localhost:5000/team/a/b:v1")  # * spans /
    assert not matches("localhost:5000/team/*", "localhost:5001/team/a:v1")
    assert not matches("localhost/team/*", "localhost:5000/team/a:v1")  # the port is the host's
    assert matches("us.localhost:*/team/*", "us.localhost:5000/team/a:v1")
    assert matches("nginx", "docker.io/library/nginx:1.25")
    assert matches("nginx:1.*", "nginx:1.25") and not matches("nginx:1.*", "nginx:2.0")
    assert matches("myorg/app", "myorg/app:v2")
    digest = "sha256:" + "c" * 64
    assert matches(f"reg.io/app@{digest}", f"reg.io/app@{digest}")
    assert not matches(f"reg.io/app@{digest}", "reg.io/app:v1")


def _entries(*names: str) -> PolicySet:
    return PolicySet(
        "test",
        tuple(Entry(f"P {n}", "ns", Pattern.parse(n), Policy(), i) for i, n in enumerate(names)),
    )


def test_the_most_specific_pattern_wins() -> None:
    policies = _entries("*", "reg.io/*", "reg.io/team/*", "reg.io/team/app", "*/team/app:v1")
    chosen = best_entry(policies, Reference.parse("reg.io/team/app:v1"))
    assert chosen is not None and chosen.pattern.text == "reg.io/team/app"
    chosen = best_entry(policies, Reference.parse("reg.io/team/other:v1"))
    assert chosen is not None and chosen.pattern.text == "reg.io/team/*"
    chosen = best_entry(policies, Reference.parse("elsewhere.io/x:v1"))
    assert chosen is not None and chosen.pattern.text == "*"
    assert best_entry(_entries("reg.io/*"), Reference.parse("other.io/x")) is None


def test_a_tag_pattern_applies_to_a_digest_only_through_its_tag() -> None:
    """The kubelet pulls the digest and ignores the tag: ``busybox:1.36@<any>`` is not
    ``busybox:1.36`` until the registry says the tag names that digest."""
    digest = "sha256:" + "e" * 64
    exempt = Pattern.parse("docker.io/library/busybox:1.36")
    both = Reference.parse(f"busybox:1.36@{digest}")
    assert exempt.tag_scoped and exempt.matches(Reference.parse("busybox:1.36"))
    assert not exempt.matches(both)
    assert exempt.matches(both, tag_confirmed=True)
    assert not Pattern.parse("busybox:1.*").matches(both)
    assert not Pattern.parse(f"busybox@{digest}").tag_scoped
    assert Pattern.parse(f"busybox@{digest}").matches(both)  # a digest entry names what is pulled
    policies = _entries("*", "docker.io/library/busybox:1.36")
    chosen = best_entry(policies, both)
    assert chosen is not None and chosen.pattern.text == "*"
    chosen = best_entry(policies, both, tag_confirmed=True)
    assert chosen is not None and chosen.pattern.text == "docker.io/library/busybox:1.36"
    assert best_entry(_entries("docker.io/library/busybox:1.36"), both) is None


def test_spellings_the_kubelet_pulls_alike_match_alike() -> None:
    """``nginx`` is ``nginx:latest``; ``index.docker.io/x`` and ``docker.io/x`` are
    ``docker.io/library/x``: a policy for one spelling holds for every other."""
    for spelling in (
        "busybox:1.36",
        "docker.io/busybox:1.36",
        "index.docker.io/library/busybox:1.36",
        "INDEX.docker.io/busybox:1.36",
    ):
        ref = Reference.parse(spelling)
        assert (ref.repository, ref.tag) == ("docker.io/library/busybox", "1.36"), spelling
        assert matches("docker.io/library/busybox:1.36", spelling)
        assert matches("docker.io/busybox:1.36", spelling)
        assert matches("index.docker.io/library/busybox:1.36", spelling)
    assert matches("nginx:latest", "nginx") and not matches("nginx:1.25", "nginx")
    assert not matches("nginx:latest", "nginx@sha256:" + "f" * 64)  # no tag is pulled
    assert matches("docker.io/*", "index.docker.io/team/app:v1")
    assert identity_matches(None, Reference.parse("nginx"), "docker.io/library/nginx:latest")
    assert identity_matches(None, Reference.parse("nginx:latest"), "docker.io/library/nginx")
    exact = SignedIdentity(type="matchExact")
    assert identity_matches(exact, Reference.parse("nginx"), "docker.io/library/nginx:latest")


def test_signed_identities_follow_containers_policy() -> None:
    tagged = Reference.parse("reg.io/team/app:v1")
    pinned = Reference.parse("reg.io/team/app@sha256:" + "d" * 64)
    assert identity_matches(None, tagged, "reg.io/team/app:v1")
    assert not identity_matches(None, tagged, "reg.io/team/app:v2")
    assert identity_matches(None, pinned, "reg.io/team/app:v9")  # digest: the repository
    assert not identity_matches(None, pinned, "reg.io/team/other:v1")
    assert not identity_matches(None, tagged, None)
    repo = SignedIdentity(type="matchRepository")
    assert identity_matches(repo, tagged, "reg.io/team/app:v2")
    exact = SignedIdentity(type="matchExactRepository", docker_repository="mirror.io/app")
    assert identity_matches(exact, tagged, "mirror.io/app:x")
    assert not identity_matches(exact, tagged, "reg.io/team/app:v1")
    remap = SignedIdentity(type="remapIdentity", prefix="reg.io/team", signed_prefix="src.io/t")
    assert identity_matches(remap, tagged, "src.io/t/app:v1")
    assert not identity_matches(remap, tagged, "reg.io/team/app:v1")
    reference = SignedIdentity(type="matchExactReference", docker_reference="a.io/b:c")
    assert identity_matches(reference, tagged, "a.io/b:c")


# -- the schema -------------------------------------------------------------------------


def test_policies_are_validated_with_a_reason() -> None:
    spec = parse_spec({"repositories": [{"name": "*", "policy": None}]})
    assert spec.repositories[0].policy is None
    policy = (
        parse_spec({"repositories": [{"name": "x", "policy": {"require": "any", "cosign": {}}}]})
        .repositories[0]
        .policy
    )
    assert policy is not None and policy.mutate_image and policy.requirements() == []
    for bad, reason in (
        (
            {
                "repositories": [
                    {"name": "x", "policy": {"simple": {"requirements": [{"type": "signedBy"}]}}}
                ]
            },
            "needs keySecret",
        ),
        (
            {
                "repositories": [
                    {"name": "x", "policy": {"cosign": {"requirements": [{"type": "maybe"}]}}}
                ]
            },
            "type",
        ),
        (
            {
                "repositories": [
                    {
                        "name": "x",
                        "policy": {
                            "simple": {
                                "requirements": [
                                    {
                                        "type": "signedBy",
                                        "keySecret": "k",
                                        "signedIdentity": {"type": "remapIdentity"},
                                    }
                                ]
                            }
                        },
                    }
                ]
            },
            "needs prefix, signedPrefix",
        ),
        ({"repositories": [{"name": ""}]}, "repositories.0.name"),
        ({"repositories": [{"name": "x", "policy": {"trust": {"enabled": True}}}]}, "trust"),
        ({"repositories": "x"}, "repositories"),
    ):
        with pytest.raises(PolicyError, match=reason):
            parse_spec(bad)


def _walk(schema: Any) -> list[str]:
    found = []
    if isinstance(schema, dict):
        for key, value in schema.items():
            if key in ("$ref", "$defs", "anyOf", "allOf", "title", "default"):
                found.append(key)
            if key == "additionalProperties":
                found.append(key)
            found += _walk(value)
    elif isinstance(schema, list):
        for value in schema:
            found += _walk(value)
    return found


def test_the_crd_schemas_are_structural_and_made_from_the_models() -> None:
    for kind, scope in ((IMAGE_POLICY, "Namespaced"), (CLUSTER_IMAGE_POLICY, "Cluster")):
        definition = crd(kind)
        assert definition["spec"]["scope"] == scope
        schema = definition["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
        assert _walk(schema) == []
        policy = schema["properties"]["spec"]["properties"]["repositories"]["items"]
        fields = policy["properties"]["policy"]["properties"]
        assert set(fields) == {"mutateImage", "require", "simple", "cosign", "vulnerability"}
        assert (
            fields["vulnerability"]["properties"]["ICCRVA"]["x-kubernetes-preserve-unknown-fields"]
            is True
        )
        requirement = fields["simple"]["properties"]["requirements"]["items"]
        assert requirement["properties"]["type"]["enum"] == [
            "signedBy",
            "attestedBy",
            "reject",
            "insecureAcceptAnything",
        ]
        assert "predicateType" in requirement["properties"]


def test_an_attestation_requirement_names_its_key_and_predicate_type() -> None:
    good = {
        "type": "attestedBy",
        "keySecret": "k",
        "predicateType": "https://slsa.dev/provenance/v1",
    }
    spec = parse_spec(
        {"repositories": [{"name": "x", "policy": {"cosign": {"requirements": [good]}}}]}
    )
    policy = spec.repositories[0].policy
    assert policy is not None
    assert policy.requirements()[0][1].predicate_type == "https://slsa.dev/provenance/v1"
    for kind, requirement, reason in (
        ("cosign", {"type": "attestedBy", "keySecret": "k"}, "predicateType goes with"),
        ("cosign", {"type": "attestedBy", "predicateType": "https://x/y"}, "needs keySecret"),
        ("cosign", {**good, "type": "signedBy"}, "predicateType goes with"),
        ("cosign", {**good, "predicateType": "not a uri"}, "predicateType"),
        ("cosign", {**good, "signedIdentity": {"type": "matchExact"}}, "signedIdentity"),
        ("simple", good, "attestedBy is a cosign requirement"),
    ):
        bad = {"repositories": [{"name": "x", "policy": {kind: {"requirements": [requirement]}}}]}
        with pytest.raises(PolicyError, match=reason):
            parse_spec(bad)


# -- Portieris ------------------------------------------------------------------------


def test_portieris_policies_convert_and_say_what_does_not() -> None:
    converted = portieris.convert(
        CLUSTER_IMAGE_POLICY,
        {
            "metadata": {"name": "default"},
            "spec": {
                "repositories": [
                    {"name": "*", "policy": None},
                    {"name": "icr.io/*", "policy": {"trust": {"enabled": True}}},
                    {
                        "name": "us.icr.io/team/*",
                        "policy": {
                            "mutateImage": False,
                            "simple": {
                                "storeURL": "https://sigs.example.com",
                                "requirements": [{"type": "signedBy", "keySecret": "team-key"}],
                            },
                            "vulnerability": {"ICCRVA": {"enabled": True}},
                        },
                    },
                    {"policy": {}},
                ]
            },
        },
    )
    assert converted.object is not None
    repositories = converted.object["spec"]["repositories"]
    assert repositories[0] == {"name": "*"}
    assert repositories[1]["policy"] == {"simple": {"requirements": [{"type": "reject"}]}}
    assert repositories[2]["policy"]["mutateImage"] is False
    assert repositories[2]["policy"]["simple"] == {
        "requirements": [{"type": "signedBy", "keySecret": "team-key"}]
    }
    notes = " | ".join(converted.notes)
    assert "trust (Notary v1" in notes and "rejects every image" in notes
    assert "storeURL" in notes and "vulnerability is kept and enforced as Portieris does" in notes
    assert "key secret team-key is read from the webhook's namespace" in notes
    assert "repositories[3] has no name" in notes
    assert converted.object["metadata"]["annotations"][portieris.IMPORTED_FROM].endswith(
        "ClusterImagePolicy default"
    )


# -- where images live ---------------------------------------------------------------


@pytest.mark.parametrize("kind", [k.kind for k in KINDS])
def test_every_kind_names_its_images_with_a_pointer_to_patch(kind: str) -> None:
    obj = workload(kind, "x", "reg.io/app:v1")
    spec = next(k for k in KINDS if k.kind == kind).pod_spec(obj)
    spec["initContainers"] = [{"name": "init", "image": "reg.io/init:v1"}]
    sites = admission.images(next(k for k in KINDS if k.kind == kind), obj)
    assert [s.image for s in sites] == ["reg.io/init:v1", "reg.io/app:v1"]
    for site in sites:  # each pointer leads to the image it names
        node: Any = obj
        for step in site.pointer.strip("/").split("/"):
            node = node[int(step)] if isinstance(node, list) else node[step]
        assert node == site.image


def test_ephemeral_containers_are_images_too() -> None:
    obj = workload("Pod", "x", "reg.io/app:v1")
    obj["spec"]["ephemeralContainers"] = [{"name": "debug", "image": "reg.io/debug:v1"}]
    pod = next(k for k in KINDS if k.kind == "Pod")
    assert admission.images(pod, obj)[-1].pointer == "/spec/ephemeralContainers/0/image"


def test_reviews_that_cannot_be_answered_say_why() -> None:
    with pytest.raises(admission.ReviewError, match="not JSON"):
        admission.parse(b"\xff")
    with pytest.raises(admission.ReviewError) as denied:
        admission.parse(
            json.dumps(
                {
                    "apiVersion": "admission.k8s.io/v1",
                    "kind": "AdmissionReview",
                    "request": {"uid": "u", "kind": {"kind": "Pod"}, "operation": "CREATE"},
                }
            ).encode()
        )
    assert denied.value.uid == "u" and "carries no object" in denied.value.message
    with pytest.raises(admission.ReviewError, match="is not one of CREATE"):
        admission.parse(
            json.dumps(
                {
                    "apiVersion": "admission.k8s.io/v1",
                    "kind": "AdmissionReview",
                    "request": {"uid": "u", "kind": {"kind": "Pod"}, "object": {}},
                }
            ).encode()
        )


# -- install ------------------------------------------------------------------------------

PEM = b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"


def test_install_refuses_to_lock_the_webhook_out_of_its_own_namespace() -> None:
    options = install.InstallOptions(namespace="webhooks", ca_bundle=PEM)
    install.check(options, None)  # install creates it: exempt as the webhook's own
    assert "webhooks" in options.exempt
    install.check(options, {"app.kubernetes.io/managed-by": "moorage"})  # made by install
    with pytest.raises(install.InstallError, match="namespace webhooks is not exempt"):
        install.check(options, {"team": "x"})
    with pytest.raises(install.InstallError, match="pass --exempt-namespace webhooks"):
        install.check(options, {"moorage.io/enforce": "disabled"})  # a label is not an exemption
    exempt = install.InstallOptions(
        namespace="webhooks", ca_bundle=PEM, exempt_namespaces=("webhooks",)
    )
    install.check(exempt, {})
    for bad in (
        install.InstallOptions(ca_bundle=PEM, exempt_namespaces=("team-*",)),
        install.InstallOptions(ca_bundle=PEM, exempt_namespaces=("Bad_Name",)),
        install.InstallOptions(ca_bundle=PEM, opt_out_namespaces=("a,b",)),
    ):
        with pytest.raises(install.InstallError, match="is not a namespace name"):
            install.check(bad, None)
    with pytest.raises(install.InstallError, match="HTTPS"):
        install.check(install.InstallOptions(url="http://127.0.0.1:1", ca_bundle=PEM), None)
    with pytest.raises(install.InstallError, match="not a PEM certificate"):
        install.check(install.InstallOptions(ca_bundle=b"junk"), None)


def test_the_webhook_configurations_fail_closed_and_cover_every_kind() -> None:
    objects = install.objects(
        install.InstallOptions(
            ca_bundle=PEM, exempt_namespaces=("a",), opt_out_namespaces=("dev-*", "sandbox")
        )
    )
    configurations = [o for o in objects if o["kind"].endswith("WebhookConfiguration")]
    assert objects[-2:] == configurations  # applied last, once what they call exists
    resources = set()
    for configuration in configurations:
        (hook,) = configuration["webhooks"]
        assert hook["failurePolicy"] == "Fail" and hook["sideEffects"] == "None"
        # Exempt by name only: no label a tenant may set keeps the webhook from being called.
        assert hook["namespaceSelector"] == {
            "matchExpressions": [
                {
                    "key": "kubernetes.io/metadata.name",
                    "operator": "NotIn",
                    "values": ["a", "kube-system", "moorage-enforce"],
                }
            ]
        }
        assert hook["clientConfig"]["service"]["name"] == install.NAME
        assert base64.b64decode(hook["clientConfig"]["caBundle"]) == PEM
        for rule in hook["rules"]:
            resources |= set(rule["resources"])
    assert resources == {k.kind.lower() + "s" for k in KINDS} | {"pods/ephemeralcontainers"}
    (namespace,) = [o for o in objects if o["kind"] == "Namespace"]
    assert "moorage.io/enforce" not in namespace["metadata"]["labels"]
    (configmap,) = [o for o in objects if o["kind"] == "ConfigMap"]
    assert configmap["data"] == {
        "exempt-namespaces": "a,kube-system,moorage-enforce",
        "opt-out-namespaces": "dev-*,sandbox",
    }
    default = next(o for o in objects if o["kind"] == CLUSTER_IMAGE_POLICY)
    parse_spec(default["spec"])


# -- keys and the cache ---------------------------------------------------------------------


def _pem() -> bytes:
    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def test_key_secrets_are_read_or_refused_with_a_reason() -> None:
    two = base64.b64encode(_pem() + _pem()).decode()
    assert len(cosign_keys({"cosign.pub": two}, "ns/k")) == 2
    assert len(cosign_keys({"key": two}, "ns/k")) == 2
    for data, reason in (
        ({}, "has no cosign.pub or key item"),
        ({"key": "!!"}, "not base64"),
        ({"key": base64.b64encode(b"-----BEGIN PGP PUBLIC KEY BLOCK-----").decode()}, "no PEM"),
    ):
        with pytest.raises(KeyError_, match=reason):
            cosign_keys(data, "ns/k")
    with pytest.raises(KeyError_, match="ASCII-armored"):
        gpg_keys({"key": base64.b64encode(b"\x99\x01binary").decode()}, "ns/k")


def test_the_cache_runs_work_once_and_a_clear_wins_over_work_in_flight() -> None:
    async def scenario() -> None:
        cache: VerdictCache[str] = VerdictCache(ttl=3600)
        started = asyncio.Event()
        release = asyncio.Event()
        runs = []

        async def work() -> str:
            runs.append(1)
            started.set()
            await release.wait()
            return "ok"

        first = asyncio.create_task(cache.once("k", work, keep=lambda v: True))
        await started.wait()
        second = asyncio.create_task(cache.once("k", work, keep=lambda v: True))
        cache.clear()  # a flush while the verification is running
        release.set()
        assert await first == "ok" and await second == "ok"
        assert runs == [1] and cache.get("k") is None  # not kept: the flush came after it began
        assert await cache.once("k", work, keep=lambda v: True) == "ok"
        assert cache.get("k") == "ok"
        assert await cache.once("n", work, keep=lambda v: False) == "ok"
        assert cache.get("n") is None
        cache.discard("k")  # a verdict whose evidence changed
        assert cache.get("k") is None
        unkept: VerdictCache[str] = VerdictCache(ttl=0)
        unkept.put("k", "v")
        assert unkept.get("k") is None

    asyncio.run(scenario())
