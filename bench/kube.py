"""The Kubernetes figures of `make bench`, on a real kube-apiserver:
cluster-pull-secret-apply plus copying to 500 namespaces (time and API calls),
the controller at steady state over 500 labelled namespaces (API calls a
minute, counted by the API server itself in ``apiserver_request_total``), its
reaction to a new namespace and to a deleted copy (p50, p99), and ks diagnose
over a namespace of 200 pods."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kubernetes import client  # noqa: E402

from moorage.kube.pullsecrets import ApiCounter, PullSecrets  # noqa: E402
from tests.iam_helpers import ADMIN_KEY  # noqa: E402
from tests.kube import KubeCluster, api_client, make_namespace  # noqa: E402
from tests.server import MOORAGE, MoorageServer, ensure_region_hosts  # noqa: E402

WATCHED = {"bench": "watched"}
STEADY_WINDOW = 60.0  # seconds of steady state measured


def _cli(config_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("MOORAGE_")},
        "MOORAGE_CONFIG_DIR": str(config_dir),
    }
    return subprocess.run(
        [str(MOORAGE), *args], capture_output=True, text=True, env=env, timeout=900
    )


def _percentiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered), ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]


def _until(check: Any, what: str, seconds: float = 30) -> float:
    """Seconds until ``check()`` holds, polled every 10 ms."""
    began = time.perf_counter()
    while not check():
        if time.perf_counter() - began > seconds:
            raise RuntimeError(f"the controller never {what}")
        time.sleep(0.01)
    return time.perf_counter() - began


def _exists(core: Any, namespace: str, name: str) -> bool:
    try:
        core.read_namespaced_secret(name, namespace)
        return True
    except client.ApiException as exc:
        if exc.status == 404:
            return False
        raise


def _settle(cluster: KubeCluster, quiet: float = 10, limit: float = 300) -> None:
    """Wait until a ``quiet``-second window passes with no calls on the controller's
    resources (nothing else talks to the API server meanwhile)."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        before = cluster.calls()
        time.sleep(quiet)
        if cluster.calls() == before:
            return
    raise RuntimeError("the controller never settled")


def _controller(
    cluster: KubeCluster, core: Any, settings: Path, namespaces: list[str], samples: int
) -> dict[str, Any]:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("MOORAGE_")},
        "MOORAGE_CONFIG_DIR": str(settings),
    }
    log = (settings / "controller.log").open("w")
    process = subprocess.Popen(
        [str(MOORAGE), "ks", "controller", "--cluster", "bench", "--selector", "bench=watched"],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    results: dict[str, Any] = {}
    try:
        started = time.perf_counter()
        _until(
            lambda: (
                len(
                    core.list_secret_for_all_namespaces(
                        label_selector="app.kubernetes.io/managed-by=moorage"
                    ).items
                )
                >= 6 * (len(namespaces) + 1)
            ),
            "supplied every namespace",
            300,
        )
        results["supply_seconds"] = time.perf_counter() - started
        _settle(cluster)
        before = cluster.request_counts()
        time.sleep(STEADY_WINDOW)
        after = cluster.request_counts()
        calls = sum(after.get(v, 0) - before.get(v, 0) for v in after if v != "WATCH")
        results["steady_calls_per_minute"] = calls * 60 / STEADY_WINDOW
        results["steady_verbs"] = {
            v: after.get(v, 0) - before.get(v, 0) for v in sorted(after) if v != "WATCH"
        }

        new = []
        for i in range(samples):
            name = f"new-{i:03d}"
            began = time.perf_counter()
            make_namespace(core, name, WATCHED)
            new.append(
                time.perf_counter()
                - began
                + _until(
                    lambda name=name: (
                        core.read_namespaced_service_account("default", name).image_pull_secrets
                    ),
                    f"reached {name}",
                )
            )
        repaired = []
        for namespace in namespaces[:samples]:
            name = f"{namespace}-us-localhost"
            began = time.perf_counter()
            core.delete_namespaced_secret(name, namespace)
            repaired.append(
                time.perf_counter()
                - began
                + _until(
                    lambda n=namespace, s=name: _exists(core, n, s), f"restored {namespace}/{name}"
                )
            )
        results["new_p50"], results["new_p99"] = _percentiles(new)
        results["repair_p50"], results["repair_p99"] = _percentiles(repaired)
        results["samples"] = samples
    finally:
        process.terminate()
        process.wait(30)
    return results


def run(namespaces: int = 500, samples: int = 30, pods: int = 200) -> dict[str, Any]:
    ensure_region_hosts()
    work = Path(tempfile.mkdtemp(prefix="moorage-kube-bench-"))
    registry = MoorageServer(
        work / "data",
        work / "server.log",
        auth="token",
        env={"MOORAGE_BOOTSTRAP_APIKEY": ADMIN_KEY},
    ).start()
    cluster = KubeCluster(work / "cluster").start()
    results: dict[str, Any] = {}
    try:
        core = client.CoreV1Api(api_client(cluster))
        core.create_namespaced_service_account(
            "default", client.V1ServiceAccount(metadata=client.V1ObjectMeta(name="default"))
        )
        settings = work / "cli"
        _cli(
            settings,
            "login",
            "--server",
            f"http://localhost:{registry.port}",
            "--apikey",
            ADMIN_KEY,
        )
        _cli(settings, "ks", "cluster-register", "bench", "--kubeconfig", str(cluster.kubeconfig))
        names = [f"ns-{i:04d}" for i in range(namespaces)]
        for name in names:
            make_namespace(core, name, WATCHED)

        started = time.perf_counter()
        applied = _cli(settings, "ks", "cluster-pull-secret-apply", "--cluster", "bench")
        assert applied.returncode == 0, applied.stderr
        results["apply_seconds"] = time.perf_counter() - started
        counter = ApiCounter()
        secrets = PullSecrets(core, counter)
        started = time.perf_counter()
        secrets.copy_many("default", names, attach=True)
        results["copy_seconds"] = time.perf_counter() - started
        results["copy_api_calls"] = counter.calls
        results["namespaces"] = namespaces

        # Half the namespaces lose their copies, so the controller has work at start.
        for name in names[::2]:
            for secret in core.list_namespaced_secret(name).items:
                core.delete_namespaced_secret(secret.metadata.name, name)
        results.update(_controller(cluster, core, settings, names, samples))

        make_namespace(core, "many-pods")
        secrets.copy("default", "many-pods")
        secrets.attach("many-pods", ["many-pods-us-localhost"])
        image = f"us.localhost:{registry.port}/team/app:v1"
        for i in range(pods):
            core.create_namespaced_pod(
                "many-pods",
                client.V1Pod(
                    metadata=client.V1ObjectMeta(name=f"pod-{i:03d}"),
                    spec=client.V1PodSpec(containers=[client.V1Container(name="app", image=image)]),
                ),
            )
        started = time.perf_counter()
        diagnosed = _cli(
            settings,
            "ks",
            "diagnose",
            "--cluster",
            "bench",
            "-n",
            "many-pods",
            "--all-pods",
            "--output",
            "json",
        )
        results["diagnose_seconds"] = time.perf_counter() - started
        results["diagnose_pods"] = len(json.loads(diagnosed.stdout or "[]"))
    finally:
        cluster.stop()
        registry.stop()
    return results


def render(results: dict[str, Any]) -> list[str]:
    if not results:
        return []

    def met(ok: bool) -> str:
        return "met" if ok else "**not met**"

    verbs = ", ".join(f"{v} {n:.0f}" for v, n in results["steady_verbs"].items() if n) or "none"
    return [
        "## Kubernetes",
        "",
        f"Produced by `make bench BENCH_ARGS='--only kube'` on "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: a real kube-apiserver and "
        "etcd on loopback, beside a Moorage server. API calls are the API server's own "
        "`apiserver_request_total` for namespaces, secrets and service accounts, all verbs "
        "but WATCH.",
        "",
        "| benchmark | result |",
        "|---|---|",
        f"| `ks cluster-pull-secret-apply` (service ID, key, 6 secrets, service account) | "
        f"{results['apply_seconds']:.2f} s |",
        f"| copying the pull secrets to {results['namespaces']} namespaces and attaching them | "
        f"{results['copy_seconds']:.1f} s, {results['copy_api_calls']:,} API calls "
        f"({results['copy_api_calls'] / results['namespaces']:.0f} per namespace) |",
        f"| controller start: {results['namespaces']} labelled namespaces, half of them "
        f"missing their copies | supplied in {results['supply_seconds']:.1f} s |",
        f"| controller at steady state, {results['namespaces']} labelled namespaces "
        f"({STEADY_WINDOW:.0f} s window) | {results['steady_calls_per_minute']:.1f} API calls "
        f"a minute besides watches ({verbs}) (target under 10: "
        f"{met(results['steady_calls_per_minute'] < 10)}) |",
        f"| controller reaction to a new namespace ({results['samples']} samples) | "
        f"p50 {results['new_p50']:.2f} s, p99 {results['new_p99']:.2f} s "
        f"(target p99 under 2 s: {met(results['new_p99'] < 2)}) |",
        f"| controller repair of a deleted copy ({results['samples']} samples) | "
        f"p50 {results['repair_p50']:.2f} s, p99 {results['repair_p99']:.2f} s "
        f"(target p99 under 2 s: {met(results['repair_p99'] < 2)}) |",
        f"| `ks diagnose --all-pods` over {results['diagnose_pods']} pods | "
        f"{results['diagnose_seconds']:.1f} s |",
    ]
