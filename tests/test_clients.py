"""Real clients push and pull through Moorage, and every digest is checked."""

from __future__ import annotations

import hashlib
import json
import subprocess
import tempfile
from pathlib import Path

import requests

from tests.conftest import require_tool
from tests.helpers import wait_for
from tests.oci_layout import make_image, read_layout_blobs, sha256, write_layout
from tests.server import MoorageServer


def run(*args: str, timeout: int = 600) -> str:
    result = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{args[0]} failed: {result.stderr[-2000:]}"
    return result.stdout


def fetch_blob(registry: MoorageServer, repo: str, digest: str) -> bytes:
    response = requests.get(f"{registry.url}/v2/{repo}/blobs/{digest}", timeout=60)
    assert response.status_code == 200, response.text
    assert response.headers["Docker-Content-Digest"] == digest
    assert sha256(response.content) == digest
    return response.content


def assert_served_whole(registry: MoorageServer, repo: str, reference: str) -> str:
    """Fetch a manifest and every blob it names, checking each digest; returns its digest."""
    response = requests.get(
        f"{registry.url}/v2/{repo}/manifests/{reference}",
        headers={
            "Accept": "application/vnd.oci.image.manifest.v1+json, "
            "application/vnd.docker.distribution.manifest.v2+json"
        },
        timeout=30,
    )
    assert response.status_code == 200, response.text
    digest = response.headers["Docker-Content-Digest"]
    assert sha256(response.content) == digest
    manifest = json.loads(response.content)
    for desc in [manifest["config"], *manifest["layers"]]:
        assert len(fetch_blob(registry, repo, desc["digest"])) == desc["size"]
    return digest


def test_skopeo_round_trip_keeps_every_digest(registry: MoorageServer, tmp_path: Path) -> None:
    skopeo = require_tool("skopeo")
    image = make_image(layer_count=4, layer_bytes=256 * 1024, seed="skopeo")
    layout = write_layout(image, tmp_path / "src")
    run(
        skopeo,
        "copy",
        "--dest-tls-verify=false",
        f"oci:{layout}:latest",
        f"docker://{registry.host}/team/skopeo:v1",
    )

    assert assert_served_whole(registry, "team/skopeo", "v1") == image.manifest_digest
    out = tmp_path / "pulled"
    run(
        skopeo,
        "copy",
        "--src-tls-verify=false",
        f"docker://{registry.host}/team/skopeo:v1",
        f"oci:{out}:latest",
    )
    pulled = read_layout_blobs(out)
    for digest in [*image.blob_digests, image.manifest_digest]:
        assert digest in pulled
    raw = run(
        skopeo, "inspect", "--tls-verify=false", "--raw", f"docker://{registry.host}/team/skopeo:v1"
    )
    assert raw.encode() == image.manifest


def test_podman_push_and_pull(registry: MoorageServer, tmp_path: Path) -> None:
    podman = require_tool("podman")
    image = make_image(layer_count=3, layer_bytes=128 * 1024, seed="podman")
    layout = write_layout(image, tmp_path / "src")

    # podman refuses a runroot path longer than 50 characters.
    runroot = Path(tempfile.mkdtemp(prefix="podrun", dir="/tmp"))

    def pod(root: str, *args: str) -> str:
        return run(
            podman,
            "--root",
            str(tmp_path / root),
            "--runroot",
            str(runroot / root),
            "--storage-driver=vfs",
            *args,
        )

    pod("a", "pull", f"oci:{layout}:latest")
    image_id = pod("a", "images", "--format", "{{.ID}}", "--noheading").split()[0]
    target = f"{registry.host}/team/podman:v1"
    digest_file = tmp_path / "digest"
    pod("a", "push", "--tls-verify=false", "--digestfile", str(digest_file), image_id, target)
    pushed = digest_file.read_text().strip()
    assert assert_served_whole(registry, "team/podman", "v1") == pushed

    pod("b", "pull", "--tls-verify=false", target)
    listed = pod("b", "images", "--digests", "--format", "{{.Repository}}:{{.Tag}} {{.Digest}}")
    assert f"{registry.host}/team/podman:v1 {pushed}" in listed


def test_crane_push_copy_pull_and_delete(registry: MoorageServer, tmp_path: Path) -> None:
    crane = require_tool("crane")
    image = make_image(layer_count=5, layer_bytes=64 * 1024, seed="crane")
    layout = write_layout(image, tmp_path / "src")
    src, dst = f"{registry.host}/team/crane:v1", f"{registry.host}/other/crane-copy:v1"
    run(crane, "push", "--insecure", str(layout), src)
    assert run(crane, "digest", "--insecure", src).strip() == image.manifest_digest

    # A copy to another repository mounts the blobs instead of uploading them again.
    run(crane, "copy", "--insecure", src, dst)

    def copy_requests() -> list[dict[str, object]]:
        return [e for e in registry.access_log() if e["repository"] == "other/crane-copy"]

    def mounts() -> list[dict[str, object]]:
        return [e for e in copy_requests() if e["method"] == "POST" and e["status"] == 201]

    # The log line of a request is written after its reply: wait for the last one.
    wait_for(lambda: len(mounts()) >= len(image.blob_digests), 10, "the mounts in the log")
    assert len(mounts()) == len(image.blob_digests)
    assert not [
        e
        for e in copy_requests()
        if e["method"] in ("PATCH", "PUT") and "/blobs/" in str(e["path"])
    ]
    assert assert_served_whole(registry, "other/crane-copy", "v1") == image.manifest_digest

    run(crane, "tag", "--insecure", src, "v2")
    assert run(crane, "ls", "--insecure", f"{registry.host}/team/crane").split() == ["v1", "v2"]
    assert "team/crane" in run(crane, "catalog", "--insecure", registry.host).split()

    out = tmp_path / "pulled"
    run(crane, "pull", "--insecure", "--format=oci", src, str(out))
    pulled = read_layout_blobs(out)
    assert set(image.blob_digests) <= set(pulled)

    run(crane, "delete", "--insecure", f"{registry.host}/team/crane@{image.manifest_digest}")
    gone = requests.get(f"{registry.url}/v2/team/crane/manifests/v1", timeout=10)
    assert gone.status_code == 404
    assert gone.json()["errors"][0]["code"] == "MANIFEST_UNKNOWN"


def test_oras_artifact_push_and_pull(registry: MoorageServer, tmp_path: Path) -> None:
    import oras.client

    files = []
    for i in range(3):
        path = tmp_path / f"part{i}.bin"
        path.write_bytes(hashlib.sha256(str(i).encode()).digest() * 4096)
        files.append(path)
    client = oras.client.OrasClient(hostname=registry.host, insecure=True)
    target = f"{registry.host}/team/artifact:v1"
    response = client.push(
        target=target, files=[str(f) for f in files], disable_path_validation=True
    )
    assert response.status_code == 201

    manifest = client.get_manifest(target)
    assert len(manifest["layers"]) == 3
    out = tmp_path / "out"
    pulled = client.pull(target=target, outdir=str(out))
    by_name = {Path(p).name: Path(p).read_bytes() for p in pulled}
    for f in files:
        assert by_name[f.name] == f.read_bytes()
