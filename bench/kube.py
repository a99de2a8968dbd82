"""The Kubernetes figures of `make bench` (issue 4), on a real kube-apiserver:
cluster-pull-secret-apply plus copying to 500 namespaces (time and API calls),
the controller's reaction to new namespaces (p50, p99), and ks diagnose over a
namespace of 200 pods."""

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

from kubernetes import client, config  # noqa: E402

from moorage.kube.pullsecrets import ApiCounter, PullSecrets  # noqa: E402
from tests.iam_helpers import ADMIN_KEY  # noqa: E402
from tests.kube import KubeCluster  # noqa: E402
from tests.server import MOORAGE, MoorageServer, ensure_region_hosts  # noqa: E402


def _cli(config_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("MOORAGE_")},
        "MOORAGE_CONFIG_DIR": str(config_dir),
    }
    return subprocess.run(
        [str(MOORAGE), *args], capture_output=True, text=True, env=env, timeout=900
    )


def _namespace(core: client.CoreV1Api, name: str, labels: dict[str, str] | None = None) -> None:
    core.create_namespace(
        client.V1Namespace(metadata=client.V1ObjectMeta(name=name, labels=labels))
    )
    core.create_namespaced_service_account(
        name, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name="default"))
    )


def run(namespaces: int = 500, new_namespaces: int = 30, pods: int = 200) -> dict[str, Any]:
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
        core = client.CoreV1Api(
            config.new_client_from_config(  # type: ignore[no-untyped-call]
                config_file=str(cluster.kubeconfig)
            )
        )
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
        for i in range(namespaces):
            _namespace(core, f"ns-{i:04d}")

        started = time.perf_counter()
        applied = _cli(settings, "ks", "cluster-pull-secret-apply", "--cluster", "bench")
        assert applied.returncode == 0, applied.stderr
        apply_seconds = time.perf_counter() - started
        counter = ApiCounter()
        secrets = PullSecrets(core, counter)
        started = time.perf_counter()
        secrets.copy_many("default", [f"ns-{i:04d}" for i in range(namespaces)], attach=True)
        copy_seconds = time.perf_counter() - started
        results["apply_seconds"] = apply_seconds
        results["copy_seconds"] = copy_seconds
        results["copy_api_calls"] = counter.calls
        results["namespaces"] = namespaces

        log = (work / "controller.log").open("w")
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("MOORAGE_")},
            "MOORAGE_CONFIG_DIR": str(settings),
        }
        controller = subprocess.Popen(
            [str(MOORAGE), "ks", "controller", "--cluster", "bench", "--selector", "bench=watched"],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        try:
            time.sleep(3)  # its first resync
            reactions = []
            for i in range(new_namespaces):
                name = f"new-{i:03d}"
                began = time.perf_counter()
                _namespace(core, name, {"bench": "watched"})
                while True:
                    account: Any = core.read_namespaced_service_account("default", name)
                    if account.image_pull_secrets:
                        break
                    if time.perf_counter() - began > 30:
                        raise RuntimeError(f"the controller never reached {name}")
                    time.sleep(0.02)
                reactions.append(time.perf_counter() - began)
        finally:
            controller.terminate()
            controller.wait(30)
        ordered = sorted(reactions)
        results["controller_p50"] = statistics.median(ordered)
        results["controller_p99"] = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]
        results["controller_samples"] = len(ordered)

        _namespace(core, "many-pods")
        secrets.copy("default", "many-pods")
        secrets.attach("many-pods", [f"many-pods-{h}" for h in ("us-localhost",)])
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
    met = "met" if results["controller_p99"] < 2 else "**not met**"
    return [
        "",
        "## Kubernetes",
        "",
        "| benchmark | result |",
        "|---|---|",
        f"| `ks cluster-pull-secret-apply` (service ID, key, 6 secrets, service account) | "
        f"{results['apply_seconds']:.2f} s |",
        f"| copying the pull secrets to {results['namespaces']} namespaces and attaching them | "
        f"{results['copy_seconds']:.1f} s, {results['copy_api_calls']:,} API calls "
        f"({results['copy_api_calls'] / results['namespaces']:.0f} per namespace) |",
        f"| controller reaction to a new namespace ({results['controller_samples']} samples) | "
        f"p50 {results['controller_p50']:.2f} s, p99 {results['controller_p99']:.2f} s "
        f"(target p99 under 2 s: {met}) |",
        f"| `ks diagnose --all-pods` over {results['diagnose_pods']} pods | "
        f"{results['diagnose_seconds']:.1f} s |",
    ]
