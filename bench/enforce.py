"""The image-enforcement figures of `make bench`: admission latency of the
``moorage enforce serve`` webhook over 1,000 AdmissionReviews each, p50 and
p99, answered from its cache (hits) and by the registry (misses), for a
cosign-signed and a GPG-signed image. The peers are the tests': a real
kube-apiserver (policies, key and pull secrets reach the webhook by watch), a
Moorage registry on token authentication on the same machine, real cosign and
skopeo with GPG. Reviews are posted to the webhook over HTTPS one after
another on a kept-alive connection, as the API server sends them; a miss is
forced by running a second webhook with ``--cache-ttl 0``."""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import requests  # noqa: E402
from kubernetes import client  # noqa: E402

from tests.enforce_env import (  # noqa: E402
    NAMESPACE,
    US,
    Images,
    Signer,
    WebhookProcess,
    apply_policy,
    key_secret,
    make_pull_secret,
    moorage,
    register_cluster,
    registry_world,
    workload,
)
from tests.iam_helpers import ADMIN_KEY  # noqa: E402
from tests.kube import KubeCluster, api_client, make_namespace  # noqa: E402
from tests.server import MoorageServer, ensure_region_hosts, free_port  # noqa: E402

REVIEWS = 1000


def _review(uid: int, image: str) -> bytes:
    obj = workload("Pod", f"bench-{uid}", image, pull_secrets=["registry"])  # as admitted
    return json.dumps(
        {
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": f"bench-{uid}",
                "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "namespace": "bench",
                "operation": "CREATE",
                "object": obj,
            },
        }
    ).encode()


def _latencies(hook: WebhookProcess, image: str, count: int) -> list[float]:
    session = requests.Session()
    url, ca = f"{hook.url}/mutate", str(hook.tls / "ca.crt")
    samples = []
    for i in range(count):
        body = _review(i, image)
        started = time.perf_counter()
        reply = session.post(url, data=body, verify=ca, timeout=30)
        elapsed = time.perf_counter() - started
        answer = reply.json()["response"]
        if not answer["allowed"]:
            raise RuntimeError(f"the webhook denied {image}: {answer['status']['message']}")
        samples.append(elapsed)
    return samples


def _percentiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered), ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]


def run(count: int = REVIEWS) -> dict[str, Any]:
    ensure_region_hosts()
    with tempfile.TemporaryDirectory(prefix="moorage-bench-enforce-") as scratch:
        tmp = Path(scratch)
        server = MoorageServer(
            tmp / "data",
            tmp / "server.log",
            auth="token",
            env={"MOORAGE_BOOTSTRAP_APIKEY": ADMIN_KEY},
        ).start()
        cluster = KubeCluster(tmp / "cluster").start()
        hooks: list[WebhookProcess] = []
        try:
            _, writer, reader = registry_world(server)
            host = server.host_for(US)
            config = tmp / "config"
            register_cluster(config, cluster, host)
            tls = tmp / "tls"
            assert moorage(config, "enforce", "certs", "--dir", str(tls)).returncode == 0
            ports = [free_port(), free_port()]
            installed = moorage(
                config, "enforce", "install", "--cluster", "test",
                "--url", f"https://127.0.0.1:{ports[0]}", "--tls-dir", str(tls),
                "--default-policy", "none",
            )  # fmt: skip
            assert installed.returncode == 0, installed.stderr
            core = client.CoreV1Api(api_client(cluster))
            signer = Signer(server, writer, tmp / "signing")
            key_secret(core, NAMESPACE, "cosign", {"cosign.pub": signer.public_key("release")})
            key_secret(core, NAMESPACE, "gpg", {"key": signer.gpg_public.encode()})
            cosign = {"requirements": [{"type": "signedBy", "keySecret": "cosign"}]}
            simple = {"requirements": [{"type": "signedBy", "keySecret": "gpg"}]}
            apply_policy(
                cluster,
                {
                    "apiVersion": "moorage.io/v1",
                    "kind": "ClusterImagePolicy",
                    "metadata": {"name": "bench"},
                    "spec": {
                        "repositories": [
                            {"name": f"{host}/enforce/cosigned", "policy": {"cosign": cosign}},
                            {"name": f"{host}/enforce/gpg", "policy": {"simple": simple}},
                        ]
                    },
                },
            )
            make_namespace(core, "bench")
            make_pull_secret(core, "bench", "registry", host, reader)
            core.patch_namespaced_service_account(
                "default", "bench", {"imagePullSecrets": [{"name": "registry"}]}
            )
            images = Images(server, writer, tmp)
            digest = images.push("cosigned")
            signer.sign(images.pinned("cosigned", digest))
            signer.skopeo_sign(images.layout("bench-gpg"), "enforce/gpg:v1")
            for port, ttl in zip(ports, ("3600", "0"), strict=True):
                hooks.append(
                    WebhookProcess(
                        config, tls, port, tmp / f"webhook-{ttl}.log", "--cache-ttl", ttl
                    ).start()
                )
            results: dict[str, Any] = {"count": count}
            for name, image in (("cosign", images.ref("cosigned")), ("gpg", images.ref("gpg"))):
                _latencies(hooks[0], image, 20)  # warm: verified once, connections open
                results[f"{name}_hit"] = _percentiles(_latencies(hooks[0], image, count))
                results[f"{name}_miss"] = _percentiles(_latencies(hooks[1], image, count))
            results["hits"] = hooks[0].metric(
                "moorage_enforce_verification_cache_total", result="hit"
            )
            results["misses"] = hooks[1].metric(
                "moorage_enforce_verification_cache_total", result="miss"
            )
            return results
        finally:
            for hook in hooks:
                hook.stop()
            cluster.stop()
            server.stop()


def render(results: dict[str, Any]) -> list[str]:
    def ms(pair: tuple[float, float]) -> tuple[str, str]:
        return f"{pair[0] * 1000:.1f} ms", f"{pair[1] * 1000:.1f} ms"

    def met(pair: tuple[float, float], target: float) -> str:
        return "met" if pair[1] < target else "**not met**"

    rows = []
    for name, label in (("cosign", "cosign key (`.sig` tag)"), ("gpg", "GPG simple signing")):
        hit, miss = results[f"{name}_hit"], results[f"{name}_miss"]
        rows.append(f"| {label}, cache hit | {' | '.join(ms(hit))} | < 20 ms | {met(hit, 0.020)} |")
        rows.append(
            f"| {label}, cache miss | {' | '.join(ms(miss))} | < 250 ms | {met(miss, 0.250)} |"
        )
    return [
        "## Image enforcement",
        "",
        f"Produced by `make bench BENCH_ARGS='--only enforce'` on "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: {results['count']:,} "
        "AdmissionReviews per row, posted one after another over HTTPS (kept alive) to "
        "`moorage enforce serve`, which reads policies and secrets from a real kube-apiserver "
        "by watch and images from a Moorage registry (token authentication) on the same "
        "machine. A hit still resolves the tag with one HEAD (tags are never cached); a miss "
        "(a second webhook with `--cache-ttl 0`) also reads and checks the signatures, for GPG "
        "with two runs of gpg.",
        "",
        "| admission | p50 | p99 | target (p99) | |",
        "|---|---:|---:|---|---|",
        *rows,
        "",
        f"The webhooks' own counters: {results['hits']:,.0f} cache hits on the first, "
        f"{results['misses']:,.0f} misses on the second.",
    ]


if __name__ == "__main__":
    print("\n".join(render(run())))
