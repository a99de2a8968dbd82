"""Image security enforcement end to end: a real kube-apiserver calls the
``moorage enforce serve`` webhook over HTTPS for every object that makes
pods; the webhook reads a real Moorage registry (token authentication) with
the pods' own pull secrets and checks signatures made by real cosign and by
skopeo with GPG. Objects are submitted as server-side dry runs, which run
every admission webhook and return the object as it would be stored."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from kubernetes import client

from moorage.kube.workloads import KINDS
from tests.conftest import require_tool
from tests.enforce_env import (
    NAMESPACE,
    US,
    Images,
    Signer,
    WebhookProcess,
    apply_policy,
    denial,
    image_of,
    key_secret,
    make_pull_secret,
    moorage,
    register_cluster,
    registry_world,
    service_account_kubeconfig,
    submit,
    workload,
)
from tests.iam_helpers import ADMIN_KEY, Api, bearer
from tests.kube import KubeCluster, api_client, make_namespace, wait_for
from tests.server import MoorageServer, ensure_region_hosts, free_port


@dataclass
class World:
    cluster: KubeCluster
    server: MoorageServer
    api: Any
    core: Any
    webhook: WebhookProcess
    images: Images
    signer: Signer
    reader: str
    config: Path
    digests: dict[str, str]

    @property
    def host(self) -> str:
        return self.server.host_for(US)


def _policy(host: str) -> dict[str, Any]:
    cosign = {"requirements": [{"type": "signedBy", "keySecret": "cosign-release"}]}
    simple = {"requirements": [{"type": "signedBy", "keySecret": "gpg-release"}]}
    repo = f"{host}/enforce"
    return {
        "apiVersion": "moorage.io/v1",
        "kind": "ClusterImagePolicy",
        "metadata": {"name": "enforce"},
        "spec": {
            "repositories": [
                {"name": f"{repo}/*", "policy": {"cosign": cosign}},
                {"name": f"{repo}/gpg-*", "policy": {"simple": simple}},
                {"name": f"{repo}/open-*"},  # more specific than enforce/*: no checks
                {"name": f"{repo}/both-all", "policy": {"cosign": cosign, "simple": simple}},
                {
                    "name": f"{repo}/both-any",
                    "policy": {"require": "any", "cosign": cosign, "simple": simple},
                },
                {"name": f"{repo}/kept:*", "policy": {"cosign": cosign, "mutateImage": False}},
                {"name": f"{repo}/exempt-tag:v1"},  # this tag only: no checks
                {
                    "name": f"{repo}/revoke-att",
                    "policy": {
                        "cosign": {
                            "requirements": [
                                {
                                    "type": "attestedBy",
                                    "keySecret": "cosign-release",
                                    "predicateType": "https://example.com/test-result/v1",
                                }
                            ]
                        }
                    },
                },
                {
                    "name": f"{repo}/rotating-*",
                    "policy": {
                        "cosign": {
                            "requirements": [{"type": "signedBy", "keySecret": "cosign-rotating"}]
                        }
                    },
                },
            ]
        },
    }


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    for tool in ("kube-apiserver", "etcd", "kubectl", "skopeo", "gpg", "cosign"):
        require_tool(tool)
    ensure_region_hosts()
    tmp = tmp_path_factory.mktemp("enforce")
    server = MoorageServer(
        tmp / "data", tmp / "server.log", auth="token", env={"MOORAGE_BOOTSTRAP_APIKEY": ADMIN_KEY}
    ).start()
    cluster = KubeCluster(tmp / "cluster").start()
    webhook: WebhookProcess | None = None
    try:
        _, writer, reader = registry_world(server)
        host = server.host_for(US)
        config = tmp / "config"
        register_cluster(config, cluster, host)
        tls = tmp / "tls"
        made = moorage(config, "enforce", "certs", "--dir", str(tls))
        assert made.returncode == 0, made.stderr
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
            "--exempt-namespace",
            "tolerated",
        )
        assert installed.returncode == 0, installed.stderr
        api = api_client(cluster)
        core = client.CoreV1Api(api)
        signer = Signer(server, writer, tmp / "signing")
        key_secret(core, NAMESPACE, "cosign-release", {"cosign.pub": signer.public_key("release")})
        key_secret(core, NAMESPACE, "gpg-release", {"key": signer.gpg_public.encode()})
        key_secret(core, NAMESPACE, "cosign-rotating", {"cosign.pub": signer.public_key("release")})
        apply_policy(cluster, _policy(host))
        # apps: the registry secret is attached to the service account only.
        make_namespace(core, "apps")
        make_pull_secret(core, "apps", "registry", host, reader)
        core.patch_namespaced_service_account(
            "default", "apps", {"imagePullSecrets": [{"name": "registry"}]}
        )
        make_namespace(core, "nosecret")
        make_namespace(core, "optout", {"moorage.io/enforce": "disabled"})  # a tenant's label
        make_namespace(core, "sandbox-1", {"moorage.io/enforce": "disabled"})  # allowed there
        make_namespace(core, "tolerated")
        core.create_namespaced_service_account(
            "kube-system", client.V1ServiceAccount(metadata=client.V1ObjectMeta(name="default"))
        )
        images = Images(server, writer, tmp)
        digests: dict[str, str] = {}
        for repo in ("unsigned", "open-app", "cosign-tag", "cosign-ref", "cosign-bundle"):
            digests[repo] = images.push(repo)
        for repo in ("untrusted", "tampered", "changed", "both-all", "both-any", "flush", "kept"):
            digests[repo] = images.push(repo)
        revoked = ("revoke-tag", "revoke-ref", "revoke-image", "rotating-app")
        for repo in revoked:
            digests[repo] = images.push(repo)
        digests["revoke-att"] = images.push("revoke-att")
        digests["exempt-tag"] = images.push("exempt-tag")  # v1: what the entry exempts
        digests["exempt-tag-side"] = images.push("exempt-tag", "side")  # unsigned, elsewhere
        for form in ("tag", "ref", "bundle"):
            repo = f"cosign-{form}"
            signer.sign(images.pinned(repo, digests[repo]), form=form.replace("ref", "referrer"))
        for repo in ("tampered", "changed", "both-all", "both-any", "flush", "kept", *revoked):
            form = "referrer" if repo == "revoke-ref" else "tag"
            signer.sign(images.pinned(repo, digests[repo]), form=form)
        signer.sign(images.pinned("untrusted", digests["untrusted"]), key="stranger")
        signer.skopeo_sign(images.layout("gpg"), "enforce/gpg-app:v1")
        signer.skopeo_sign(images.layout("gpg-revoke"), "enforce/gpg-revoke:v1")
        # The webhook signs in as the service account install made: its RBAC must do.
        own = service_account_kubeconfig(cluster, NAMESPACE, "moorage-enforce")
        register_cluster(config, cluster, host, name="webhook", kubeconfig=own)
        webhook = WebhookProcess(
            config,
            tls,
            port,
            tmp / "webhook.log",
            "--exempt-namespace",
            "tolerated",
            "--allow-opt-out",
            "sandbox-*",
            "--cache-ttl",
            "3600",
            cluster="webhook",
        ).start()
        yield World(cluster, server, api, core, webhook, images, signer, reader, config, digests)
    finally:
        if webhook is not None:
            webhook.stop()
        cluster.stop()
        server.stop()


def pod(world: World, name: str, image: str, namespace: str = "apps") -> str | None:
    return denial(world.api, namespace, workload("Pod", name, image))


# -- verdicts ---------------------------------------------------------------------


def test_an_unsigned_image_is_denied_saying_which_image_policy_and_signature(world: World) -> None:
    image = world.images.ref("unsigned")
    message = pod(world, "unsigned", image)
    assert message is not None
    assert f"image {image} ({world.digests['unsigned']})" in message
    assert "ClusterImagePolicy enforce (repository" in message
    assert "a cosign signature by the keys in secret cosign-release" in message
    assert "the image has no such signatures" in message


@pytest.mark.parametrize("form", ["tag", "ref", "bundle"])
def test_a_cosign_signed_image_is_admitted_and_pinned_to_its_digest(
    world: World, form: str
) -> None:
    repo = f"cosign-{form}"
    stored = submit(world.api, "apps", workload("Deployment", repo, world.images.ref(repo)))
    assert image_of("Deployment", stored) == world.images.pinned(repo, world.digests[repo])


def test_a_gpg_signed_image_from_skopeo_is_admitted_and_pinned(world: World) -> None:
    ref = world.images.ref("gpg-app")
    stored = submit(world.api, "apps", workload("CronJob", "gpg-app", ref))
    pinned = image_of("CronJob", stored)
    assert pinned.startswith(f"{world.host}/enforce/gpg-app@sha256:")
    decision = next(d for d in reversed(world.webhook.decisions()) if d.get("name") == "gpg-app")
    assert decision["verdict"] == "allowed"
    (verdict,) = decision["images"]
    assert (
        verdict["policy"] == f"ClusterImagePolicy enforce (repository '{world.host}/enforce/gpg-*')"
    )
    fingerprint = next(
        line.split(":")[9]
        for line in world.signer.gpg("--list-keys", "--with-colons").stdout.splitlines()
        if line.startswith("fpr")
    )
    assert verdict["keys"] == [f"GPG key {fingerprint} in secret {NAMESPACE}/gpg-release"]
    assert verdict["credential"] == "apps/registry"


def test_a_signature_by_an_untrusted_key_is_denied(world: World) -> None:
    message = pod(world, "untrusted", world.images.ref("untrusted"))
    assert message is not None and "1 signature(s): 1 made by another key or altered" in message


def test_a_tampered_signature_is_denied(world: World) -> None:
    tag = "sha256-" + world.digests["tampered"].split(":", 1)[1] + ".sig"
    manifest = json.loads(world.images.manifest("tampered", tag).content)
    annotations = manifest["layers"][0]["annotations"]
    signature = annotations["dev.cosignproject.cosign/signature"]
    flipped = "A" if signature[10] != "A" else "B"
    annotations["dev.cosignproject.cosign/signature"] = signature[:10] + flipped + signature[11:]
    assert (
        world.images.put_manifest("tampered", tag, json.dumps(manifest).encode()).status_code == 201
    )
    message = pod(world, "tampered", world.images.ref("tampered"))
    assert message is not None and "made by another key or altered" in message


def test_an_image_changed_after_signing_is_denied(world: World) -> None:
    assert pod(world, "changed-before", world.images.ref("changed")) is None
    new = world.images.push("changed")  # same tag, new content
    assert new != world.digests["changed"]
    message = pod(world, "changed-after", world.images.ref("changed"))
    assert message is not None and f"({new})" in message
    assert "the image has no such signatures" in message
    # Whoever moved the tag copies the old signature next to the new digest: it names the old one.
    old_tag = "sha256-" + world.digests["changed"].split(":", 1)[1] + ".sig"
    new_tag = "sha256-" + new.split(":", 1)[1] + ".sig"
    copied = world.images.manifest("changed", old_tag).content
    assert world.images.put_manifest("changed", new_tag, copied).status_code == 201
    message = pod(world, "changed-copied", world.images.ref("changed"))
    assert message is not None and "(1 signature(s): 1 for another digest)" in message


@pytest.mark.parametrize("kind", [k.kind for k in KINDS])
def test_every_kind_that_makes_pods_is_checked_and_pinned(world: World, kind: str) -> None:
    """Pull credentials come from the service account only (namespace apps)."""
    name = f"k-{kind.lower()}"
    signed = submit(world.api, "apps", workload(kind, name, world.images.ref("cosign-tag")))
    assert image_of(kind, signed) == world.images.pinned("cosign-tag", world.digests["cosign-tag"])
    message = denial(world.api, "apps", workload(kind, name, world.images.ref("unsigned")))
    assert message is not None and "is not admitted by ClusterImagePolicy enforce" in message


def test_a_bare_pod_really_created_is_stored_pinned(world: World) -> None:
    obj = workload("Pod", "real-pod", world.images.ref("cosign-bundle"))
    submit(world.api, "apps", obj, dry_run=False)
    stored = world.core.read_namespaced_pod("real-pod", "apps")
    assert stored.spec.containers[0].image == world.images.pinned(
        "cosign-bundle", world.digests["cosign-bundle"]
    )
    assert [s.name for s in stored.spec.image_pull_secrets] == ["registry"]  # from the account


def test_without_a_pull_secret_the_registry_cannot_be_read_and_the_image_is_denied(
    world: World,
) -> None:
    message = pod(world, "nosecret", world.images.ref("cosign-tag"), namespace="nosecret")
    assert message is not None
    assert "no pull secret of the pod has an entry for this registry" in message


def test_pull_secret_keys_match_as_the_kubelet_matches_them(world: World) -> None:
    """A key with a scheme and a path prefix: Portieris looks keys up by exact host."""
    make_namespace(world.core, "pathkey")
    make_pull_secret(world.core, "pathkey", "scoped", f"http://{world.host}/enforce", world.reader)
    obj = workload("Pod", "scoped", world.images.ref("cosign-tag"), pull_secrets=["scoped"])
    stored = submit(world.api, "pathkey", obj)
    assert image_of("Pod", stored) == world.images.pinned("cosign-tag", world.digests["cosign-tag"])
    wrong = "wrong"
    make_pull_secret(world.core, "pathkey", wrong, f"{world.host}/elsewhere", world.reader)
    obj = workload("Pod", "wrong", world.images.ref("cosign-tag"), pull_secrets=[wrong])
    message = denial(world.api, "pathkey", obj)
    assert message is not None and "no pull secret of the pod has an entry" in message


# -- policies -------------------------------------------------------------------------


def test_the_most_specific_match_wins(world: World) -> None:
    stored = submit(world.api, "apps", workload("Pod", "open", world.images.ref("open-app")))
    assert image_of("Pod", stored) == world.images.ref("open-app")  # no checks, no pinning
    kept = submit(world.api, "apps", workload("Pod", "kept", world.images.ref("kept")))
    assert image_of("Pod", kept) == world.images.ref("kept")  # verified, mutateImage false


def test_require_all_needs_every_key_and_require_any_one(world: World) -> None:
    message = pod(world, "both-all", world.images.ref("both-all"))
    assert message is not None
    assert "a GPG (simple signing) signature by the keys in secret gpg-release" in message
    assert "cosign" not in message.split("is not admitted", 1)[1].split(":", 1)[1]
    stored = submit(world.api, "apps", workload("Pod", "both-any", world.images.ref("both-any")))
    assert image_of("Pod", stored) == world.images.pinned("both-any", world.digests["both-any"])


def test_an_image_no_policy_matches_is_denied(world: World) -> None:
    message = pod(world, "stray", "docker.io/library/busybox:1.36")
    assert message is not None
    assert "docker.io/library/busybox:1.36 is not admitted: no policy among the " in message


def test_a_namespace_image_policy_is_used_exclusively(world: World) -> None:
    make_namespace(world.core, "strict")
    apply_policy(
        world.cluster,
        {
            "apiVersion": "moorage.io/v1",
            "kind": "ImagePolicy",
            "metadata": {"name": "only-gpg", "namespace": "strict"},
            "spec": {"repositories": [{"name": f"{world.host}/enforce/gpg-*"}]},
        },
    )
    image = world.images.ref("open-app")  # the ClusterImagePolicy would admit it

    def refused() -> str | None:
        return pod(world, "open", image, namespace="strict")

    message = wait_for(refused)
    assert message is not None
    assert "no policy among the ImagePolicies of namespace strict matches it" in message
    assert pod(world, "open", image) is None  # elsewhere the cluster policy still applies


def test_a_broken_policy_denies_in_its_scope_and_says_so(world: World) -> None:
    """The CRD schema lets through what only the webhook's model refuses."""
    make_namespace(world.core, "broken")
    apply_policy(
        world.cluster,
        {
            "apiVersion": "moorage.io/v1",
            "kind": "ImagePolicy",
            "metadata": {"name": "nokey", "namespace": "broken"},
            "spec": {
                "repositories": [
                    {"name": "*", "policy": {"cosign": {"requirements": [{"type": "signedBy"}]}}}
                ]
            },
        },
    )
    message = wait_for(lambda: pod(world, "any", world.images.ref("open-app"), namespace="broken"))
    assert message is not None and "ImagePolicy broken/nokey is invalid" in message
    assert "needs keySecret" in message


# -- exemptions -------------------------------------------------------------------------


def test_exemptions_are_the_operators_and_each_is_logged(world: World) -> None:
    """Anyone who may create a namespace may label it: the label exempts only where the
    webhook's options allow (``--allow-opt-out sandbox-*``); the exempt list and
    kube-system always do."""
    unsigned = world.images.ref("unsigned")
    message = denial(world.api, "optout", workload("Pod", "free", unsigned))
    assert message is not None and f"image {unsigned}" in message  # the label is ignored
    for namespace in ("sandbox-1", "tolerated"):
        stored = submit(world.api, namespace, workload("Pod", "free", unsigned))
        assert image_of("Pod", stored) == unsigned
    opted = [d for d in world.webhook.decisions() if d.get("namespace") == "sandbox-1"]
    assert opted and opted[-1]["verdict"] == "allowed"
    assert (
        "opted out (moorage.io/enforce=disabled), allowed in namespaces 'sandbox-*'"
        in (opted[-1]["exempt"])
    )
    # The webhook checks too, should the API server call it anyway.
    for namespace, allowed in (
        ("optout", False),
        ("sandbox-1", True),
        ("tolerated", True),
        ("kube-system", True),
    ):
        review = _review("Pod", namespace, workload("Pod", "free", unsigned))
        answer = world.webhook.post("/validate", json.dumps(review).encode()).json()
        assert answer["response"]["allowed"] is allowed, namespace


# -- bad input --------------------------------------------------------------------------


def _review(kind: str, namespace: str, obj: dict[str, Any], uid: str = "u-1") -> dict[str, Any]:
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": {"group": "", "version": "v1", "kind": kind},
            "namespace": namespace,
            "operation": "CREATE",
            "object": obj,
        },
    }


def test_malformed_reviews_unknown_kinds_and_huge_objects_get_clear_answers(world: World) -> None:
    hook = world.webhook
    for body, status, text in (
        (b"not json", 400, "not JSON"),
        (b"[]", 400, "not a JSON object"),
        (
            json.dumps(
                {"apiVersion": "admission.k8s.io/v1beta1", "kind": "AdmissionReview"}
            ).encode(),
            400,
            "expected an AdmissionReview of admission.k8s.io/v1",
        ),
        (
            json.dumps(
                {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {}}
            ).encode(),
            400,
            "no uid",
        ),
        (b"{" * 100000, 400, "not JSON"),
        (b"x" * (9 << 20), 413, "larger than"),
    ):
        answer = hook.post("/mutate", body)
        assert answer.status_code == status, body[:40]
        assert text in answer.json()["error"]
    review = _review("ConfigMap", "apps", {"metadata": {"name": "c"}, "data": {}})
    answer = hook.post("/validate", json.dumps(review).encode()).json()["response"]
    assert answer["allowed"] is False and answer["uid"] == "u-1"
    assert "does not handle ConfigMap objects" in answer["status"]["message"]
    broken = _review("Pod", "apps", {"metadata": {"name": "p"}, "spec": {"containers": "x"}})
    answer = hook.post("/validate", json.dumps(broken).encode()).json()["response"]
    assert (
        answer["allowed"] is False
        and "/spec/containers is not a list" in answer["status"]["message"]
    )
    many = workload("Pod", "many", "x")
    many["spec"]["containers"] = [
        {"name": f"c{i}", "image": f"{world.host}/enforce/unsigned:t{i}"} for i in range(5000)
    ]
    answer = hook.post("/validate", json.dumps(_review("Pod", "apps", many)).encode()).json()
    assert "names 5000 images; at most 100 are checked" in answer["response"]["status"]["message"]
    # Through the API server: an object near its size limit is judged like any other.
    big = workload("Deployment", "big", world.images.ref("cosign-tag"))
    container = big["spec"]["template"]["spec"]["containers"][0]
    container["env"] = [{"name": f"FILLER_{i}", "value": "x" * 4096} for i in range(256)]
    stored = submit(world.api, "apps", big)
    assert image_of("Deployment", stored).endswith(world.digests["cosign-tag"])
    assert hook.get("/healthz").status_code == 200


def test_an_update_is_checked_for_the_images_it_adds(world: World) -> None:
    obj = workload("Deployment", "upd", world.images.ref("cosign-tag"))
    submit(world.api, "apps", obj, dry_run=False)
    apps = client.AppsV1Api(world.api)
    scaled = apps.patch_namespaced_deployment("upd", "apps", {"spec": {"replicas": 2}})
    assert scaled.spec.replicas == 2
    message = None
    try:
        apps.patch_namespaced_deployment(
            "upd",
            "apps",
            {
                "spec": {
                    "template": {
                        "spec": {
                            "containers": [{"name": "app", "image": world.images.ref("unsigned")}]
                        }
                    }
                }
            },
        )
    except client.ApiException as exc:
        message = json.loads(exc.body)["message"]
    assert message is not None and "enforce/unsigned:v1" in message


# -- logs, metrics, cache -----------------------------------------------------------------


def test_decisions_are_logged_and_counted(world: World) -> None:
    pod(world, "logged-deny", world.images.ref("unsigned"))
    submit(world.api, "apps", workload("Pod", "logged-allow", world.images.ref("cosign-tag")))
    lines = world.webhook.decisions()
    denied = next(d for d in lines if d.get("name") == "logged-deny")
    assert denied["verdict"] == "denied" and "cosign-release" in denied["message"]
    allowed = next(
        d for d in lines if d.get("name") == "logged-allow" and d["endpoint"] == "mutate"
    )
    (verdict,) = allowed["images"]
    assert verdict["keys"][0].startswith("cosign key sha256:")
    assert verdict["keys"][0].endswith(f"in secret {NAMESPACE}/cosign-release")
    assert allowed["patched"] == [world.images.pinned("cosign-tag", world.digests["cosign-tag"])]
    hook = world.webhook
    assert hook.metric("moorage_enforce_admissions_total", endpoint="mutate", verdict="denied") > 0
    assert (
        hook.metric("moorage_enforce_admissions_total", endpoint="validate", verdict="allowed") > 0
    )
    assert hook.metric("moorage_enforce_admission_duration_seconds_count", endpoint="mutate") > 0
    assert hook.metric("moorage_enforce_verification_cache_total", result="hit") > 0
    assert hook.metric("moorage_enforce_verification_cache_total", result="miss") > 0


def test_cache_flush_revokes_verified_digests_at_once(world: World) -> None:
    image = world.images.ref("flush")
    assert pod(world, "flush-1", image) is None  # verified and remembered (TTL one hour)
    hits = world.webhook.metric("moorage_enforce_verification_cache_total", result="hit")
    assert pod(world, "flush-2", image) is None
    assert world.webhook.metric("moorage_enforce_verification_cache_total", result="hit") > hits
    flushed = moorage(world.config, "enforce", "cache-flush", "--cluster", "test")
    assert flushed.returncode == 0, flushed.stderr
    attempts = []

    def verified_again() -> bool:
        attempts.append(1)
        assert pod(world, "flush-3", image) is None
        verdict = _last_verdict(world, "flush-3")
        return verdict is not None and verdict["cached"] is False

    assert wait_for(verified_again, seconds=10)
    assert len(attempts) <= 2, "a flush takes effect within a watch event"


def _last_verdict(world: World, name: str) -> dict[str, Any] | None:
    """The verdict on the one image of the last mutating review of object ``name`` (the
    validating one that follows it is answered from the cache the mutating one filled)."""
    found = [
        d
        for d in world.webhook.decisions()
        if d.get("name") == name and d["endpoint"] == "mutate" and d["images"]
    ]
    return found[-1]["images"][0] if found else None


def _revoked_within(world: World, name: str, image: str, revoke: Any, bound: float = 10) -> str:
    """Admit ``image`` twice (the second from the cache), ``revoke()``, then wait for the
    denial; the denial's message. The cache TTL is an hour: only revalidation can deny."""
    assert pod(world, f"{name}-1", image) is None
    assert pod(world, f"{name}-2", image) is None
    remembered = _last_verdict(world, f"{name}-2")
    assert remembered is not None and remembered["cached"] is True
    revoke()
    started = time.monotonic()
    message = wait_for(lambda: pod(world, f"{name}-3", image), seconds=bound)
    assert message is not None, f"{image} was still admitted {bound:g} s after revocation"
    assert time.monotonic() - started < bound
    return message


@pytest.mark.parametrize("form", ["tag", "ref"])
def test_a_deleted_signature_stops_admitting_within_ten_seconds(world: World, form: str) -> None:
    repo = f"revoke-{form}"
    digest = world.digests[repo]
    if form == "tag":
        tag = "sha256-" + digest.split(":", 1)[1] + ".sig"
        signature = world.images.manifest(repo, tag).headers["Docker-Content-Digest"]
    else:
        headers = bearer(world.server, US, ADMIN_KEY, f"repository:enforce/{repo}:pull")
        index = requests.get(
            f"http://{world.host}/v2/enforce/{repo}/referrers/{digest}", headers=headers, timeout=10
        ).json()
        (entry,) = index["manifests"]
        signature = entry["digest"]
    stale = world.webhook.metric("moorage_enforce_verification_cache_total", result="stale")

    def revoke() -> None:
        assert world.images.delete_manifest(repo, signature).status_code == 202

    message = _revoked_within(world, repo, world.images.ref(repo), revoke)
    assert f"({digest})" in message and "the image has no such signatures" in message
    assert world.webhook.metric("moorage_enforce_verification_cache_total", result="stale") > stale


def test_a_deleted_gpg_signature_stops_admitting_within_ten_seconds(world: World) -> None:
    digest = world.images.manifest("gpg-revoke", "v1").headers["Docker-Content-Digest"]
    scope = "repository:enforce/gpg-revoke:pull,push,delete"
    headers = bearer(world.server, US, ADMIN_KEY, scope)
    url = f"http://{world.host}/extensions/v2/enforce/gpg-revoke/signatures/{digest}"
    (signature,) = requests.get(url, headers=headers, timeout=10).json()["signatures"]

    def revoke() -> None:
        deleted = requests.delete(
            url, params={"name": signature["name"]}, headers=headers, timeout=10
        )
        assert deleted.status_code == 202, deleted.text

    message = _revoked_within(world, "gpg-revoke", world.images.ref("gpg-revoke"), revoke)
    assert "a GPG (simple signing) signature by the keys in secret gpg-release" in message
    assert "the image has no such signatures" in message


def test_a_deleted_attestation_stops_admitting_within_ten_seconds(world: World) -> None:
    digest = world.digests["revoke-att"]
    pinned = world.images.pinned("revoke-att", digest)
    world.signer.attest(pinned, {"result": "PASSED"}, TEST_RESULT, bundle=False)  # the .att tag
    tag = "sha256-" + digest.split(":", 1)[1] + ".att"
    attestation = world.images.manifest("revoke-att", tag).headers["Docker-Content-Digest"]

    def revoke() -> None:
        assert world.images.delete_manifest("revoke-att", attestation).status_code == 202

    message = _revoked_within(world, "revoke-att", world.images.ref("revoke-att"), revoke)
    assert "the image has no such attestations" in message


def test_a_deleted_image_stops_admitting_by_digest_within_ten_seconds(world: World) -> None:
    digest = world.digests["revoke-image"]
    image = world.images.pinned("revoke-image", digest)

    def revoke() -> None:
        assert world.images.delete_manifest("revoke-image", digest).status_code == 202

    message = _revoked_within(world, "revoke-image", image, revoke)
    assert "does not exist in its registry" in message


def test_a_signer_removed_from_its_secret_stops_admitting_within_ten_seconds(
    world: World,
) -> None:
    image = world.images.ref("rotating-app")

    def revoke() -> None:
        stranger = base64.b64encode(world.signer.public_key("stranger")).decode()
        world.core.patch_namespaced_secret(
            "cosign-rotating", NAMESPACE, {"data": {"cosign.pub": stranger}}
        )

    message = _revoked_within(world, "rotating", image, revoke)
    assert "1 made by another key or altered" in message


# -- a tag and a digest in one reference ----------------------------------------------------


def test_a_tag_entry_applies_to_a_digest_only_if_the_tag_names_it(world: World) -> None:
    """``exempt-tag:v1`` is exempt from checks; a Writer's unsigned push elsewhere in the
    repository, spelled ``exempt-tag:v1@<its digest>``, is not (the kubelet would pull
    the digest and ignore the tag)."""
    named, side = world.digests["exempt-tag"], world.digests["exempt-tag-side"]
    base = f"{world.host}/enforce/exempt-tag"
    for image in (f"{base}:v1", f"{base}:v1@{named}"):
        stored = submit(world.api, "apps", workload("Pod", "exempt-tag", image))
        assert image_of("Pod", stored) == image  # no checks, no pinning
    smuggled = f"{base}:v1@{side}"
    message = pod(world, "smuggled", smuggled)
    assert message is not None
    assert f"image {smuggled} ({side}) is not admitted by ClusterImagePolicy enforce" in message
    assert f"(repository '{world.host}/enforce/*')" in message
    assert f"is for tag v1, which names {named}, not this digest" in message


# -- signatures, attestations and what a Writer may do to them -----------------

TEST_RESULT = "https://example.com/test-result/v1"
SIG_ARTIFACT = "application/vnd.dev.cosign.artifact.sig.v1+json"
BUNDLE_ARTIFACT = "application/vnd.dev.sigstore.bundle.v0.3+json"


def test_an_attestation_made_with_the_release_key_is_not_a_signature(world: World) -> None:
    digest = world.images.push("failed-attest")
    pinned = world.images.pinned("failed-attest", digest)
    # Both of cosign's attestation forms: a sigstore bundle referrer and the .att tag.
    world.signer.attest(pinned, {"result": "FAILED"}, TEST_RESULT, bundle=True)
    world.signer.attest(pinned, {"result": "FAILED"}, TEST_RESULT, bundle=False)
    message = pod(world, "failed-attest", world.images.ref("failed-attest"))
    assert message is not None, "an attestation was taken for a signature"
    assert "a cosign signature by the keys in secret cosign-release was asked for" in message
    assert "the image has no such signatures" in message


def test_a_policy_can_require_an_attestation_of_a_predicate_type(world: World) -> None:
    attested = {
        "type": "attestedBy",
        "keySecret": "cosign-release",
        "predicateType": TEST_RESULT,
    }
    apply_policy(
        world.cluster,
        {
            "apiVersion": "moorage.io/v1",
            "kind": "ClusterImagePolicy",
            "metadata": {"name": "attestations"},
            "spec": {
                "repositories": [
                    {
                        "name": f"{world.host}/enforce/attested-*",
                        "policy": {"cosign": {"requirements": [attested]}},
                    }
                ]
            },
        },
    )
    pinned = {}
    for repo in ("attested-bundle", "attested-tag", "attested-none", "attested-other"):
        pinned[repo] = world.images.pinned(repo, world.images.push(repo))
    pinned["attested-stranger"] = world.images.pinned(
        "attested-stranger", world.images.push("attested-stranger")
    )
    world.signer.attest(pinned["attested-bundle"], {"result": "PASSED"}, TEST_RESULT)
    world.signer.attest(pinned["attested-tag"], {"result": "PASSED"}, TEST_RESULT, bundle=False)
    world.signer.sign(pinned["attested-none"], form="bundle")  # a signature is no attestation
    world.signer.attest(pinned["attested-other"], {"x": 1}, "https://example.com/other/v1")
    world.signer.attest(
        pinned["attested-stranger"], {"result": "PASSED"}, TEST_RESULT, key="stranger"
    )

    def refused() -> str | None:
        return pod(world, "attested-none", world.images.ref("attested-none"))

    message = wait_for(refused)
    assert message is not None
    assert f"a cosign attestation of {TEST_RESULT} by the keys in secret cosign-release" in message
    assert "the image has no such attestations" in message
    for repo in ("attested-bundle", "attested-tag"):
        stored = submit(world.api, "apps", workload("Pod", repo, world.images.ref(repo)))
        assert image_of("Pod", stored) == pinned[repo]
    other = pod(world, "attested-other", world.images.ref("attested-other"))
    assert other is not None and "no such attestations" in other
    stranger = pod(world, "attested-stranger", world.images.ref("attested-stranger"))
    # (A bundle naming a key the policy does not hold is not even taken for checking.)
    assert stranger is not None and "no such attestations" in stranger


def test_a_writer_can_neither_erase_nor_hide_the_release_signature(world: World) -> None:
    images, writer = world.images, world.images.writer
    # 50 junk referrers of the types signatures have, pushed before the real one (the
    # webhook once read only the first 20), and junk of another type besides.
    flooded = images.push("flooded")
    for n in range(25):
        images.junk_referrer("flooded", flooded, SIG_ARTIFACT, f"sig-{n}")
        images.junk_referrer(
            "flooded",
            flooded,
            BUNDLE_ARTIFACT,
            f"bundle-{n}",
            {"dev.sigstore.bundle.predicateType": "https://sigstore.dev/cosign/sign/v1"},
        )
    for n in range(10):
        images.junk_referrer("flooded", flooded, "application/example", f"other-{n}")
    world.signer.sign(images.pinned("flooded", flooded), form="bundle")
    message = pod(world, "flooded", images.ref("flooded"))
    assert message is None, message

    # A signature in the .sig tag: the Writer tries to replace its manifest with junk,
    # with the layers reordered or the release layer dropped, and to move the tag
    # (cr image-tag) to another manifest.
    guarded = images.push("guarded")
    world.signer.sign(images.pinned("guarded", guarded))
    world.signer.sign(images.pinned("guarded", guarded), key="stranger")  # a Writer may add one
    tag = "sha256-" + guarded.split(":", 1)[1] + ".sig"
    signed = images.manifest("guarded", tag).content
    layers = json.loads(signed)["layers"]
    assert len(layers) == 2
    for changed in (
        {**json.loads(signed), "layers": layers[::-1]},
        {**json.loads(signed), "layers": layers[1:]},
        {**json.loads(signed), "annotations": {"x": "y"}, "layers": []},
    ):
        refused = images.put_manifest("guarded", tag, json.dumps(changed).encode(), key=writer)
        assert refused.status_code == 403, refused.text
        assert "removing a signature needs the delete right" in refused.text
    other = images.push("guarded", tag="other")
    moved = Api(world.server, writer).request(
        "POST",
        "/cr/us-south/image-tags",
        {"source": f"enforce/guarded@{other}", "target": f"enforce/guarded:{tag}"},
    )
    assert moved.status_code == 403, moved.text
    assert images.manifest("guarded", tag).content == signed
    # What a Writer may do, appending as cosign does, cannot spoil the layers before it.
    spoiled = {**layers[0], "annotations": {"dev.cosignproject.cosign/signature": "!!!"}}
    appended = {**json.loads(signed), "layers": [*layers, spoiled]}
    put = images.put_manifest("guarded", tag, json.dumps(appended).encode(), key=writer)
    assert put.status_code == 201, put.text
    message = pod(world, "guarded", images.ref("guarded"))
    assert message is None, message


# -- the webhook down: last, it stops the webhook ------------------------------------------


def test_with_the_webhook_down_admission_fails_closed_except_where_exempt(world: World) -> None:
    world.webhook.stop()
    message = pod(world, "down", world.images.ref("cosign-tag"))
    assert message is not None and "failed calling webhook" in message
    unsigned = world.images.ref("unsigned")
    for namespace in ("kube-system", "tolerated"):
        stored = submit(world.api, namespace, workload("Pod", "down", unsigned))
        assert image_of("Pod", stored) == unsigned
    for namespace in ("optout", "sandbox-1"):  # judged by the webhook: closed without it
        message = denial(world.api, namespace, workload("Pod", "down", unsigned))
        assert message is not None and "failed calling webhook" in message
