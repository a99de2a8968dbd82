"""Images for the Advisor's service tests: real package databases in real
layers (tests/data/va/os, tests/va_layers.py), configs with a User, and
multi-platform indexes, as OCI layouts skopeo pushes or as bytes for HTTP."""

from __future__ import annotations

import gzip
import hashlib
import json
from pathlib import Path

from tests.oci_layout import (
    OCI_CONFIG,
    OCI_INDEX,
    OCI_LAYER,
    OCI_MANIFEST,
    Image,
    descriptor,
    sha256,
)
from tests.va_layers import DATA, M, gz, tar

# Alpine 3.20.3's own minirootfs, cut to its package database and os-release
# (tests/data/va/os/README.md): openssl 3.3.2-r0 (libcrypto3, libssl3), which
# Alpine fixed in 3.3.2-r1 for CVE-2024-9143.
ALPINE_LAYER = (DATA / "alpine-minirootfs-3.20.3-x86_64-db.tar.gz").read_bytes()

# An OSV record as Alpine's are published on osv.dev (written here: the ID,
# ecosystem, package and fixed version are Alpine's; the CVSS vector is the
# one NVD gives CVE-2024-9143).
ALPINE_ADVISORY = {
    "schema_version": "1.6.0",
    "id": "ALPINE-CVE-2024-9143",
    "modified": "2024-10-20T00:00:00Z",
    "published": "2024-10-16T17:15:18Z",
    "aliases": ["CVE-2024-9143"],
    "summary": "Out-of-bounds memory access with low-level GF(2^m) elliptic curve APIs",
    "severity": [{"type": "CVSS_V3", "score": "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:L/I:L/A:N"}],
    "affected": [
        {
            "package": {"ecosystem": "Alpine:v3.20", "name": "openssl"},
            "ranges": [
                {"type": "ECOSYSTEM", "events": [{"introduced": "0"}, {"fixed": "3.3.2-r1"}]}
            ],
        }
    ],
}


def write_advisories(directory: Path, *records: dict[str, object]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for record in records or (ALPINE_ADVISORY,):
        (directory / f"{record['id']}.json").write_text(json.dumps(record))
    return directory


def layer(*members: M) -> bytes:
    return gz(tar(*members))


def image(layers: list[bytes], user: str = "", arch: str = "amd64") -> Image:
    diff_ids = ["sha256:" + hashlib.sha256(gzip.decompress(data)).hexdigest() for data in layers]
    runtime: dict[str, object] = {"Cmd": ["/bin/sh"]}
    if user:
        runtime["User"] = user
    config = json.dumps(
        {
            "architecture": arch,
            "os": "linux",
            "config": runtime,
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        },
        sort_keys=True,
    ).encode()
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": descriptor(OCI_CONFIG, config),
            "layers": [descriptor(OCI_LAYER, data) for data in layers],
        }
    ).encode()
    return Image(layers, config, manifest)


def index(platforms: dict[str, Image]) -> bytes:
    """An image index of ``{"linux/amd64": image, ...}``."""
    entries = []
    for platform, img in platforms.items():
        os_, arch = platform.split("/")[:2]
        entries.append(
            {
                **descriptor(OCI_MANIFEST, img.manifest),
                "platform": {"os": os_, "architecture": arch},
            }
        )
    return json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}).encode()


def write_index_layout(platforms: dict[str, Image], directory: Path, tag: str = "latest") -> Path:
    """An OCI layout whose tag names a multi-platform index."""
    blobs = directory / "blobs" / "sha256"
    blobs.mkdir(parents=True, exist_ok=True)
    body = index(platforms)
    for img in platforms.values():
        for data in [img.config, *img.layers, img.manifest]:
            (blobs / sha256(data).split(":", 1)[1]).write_bytes(data)
    (blobs / sha256(body).split(":", 1)[1]).write_bytes(body)
    (directory / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    top = {
        **descriptor(OCI_INDEX, body),
        "annotations": {"org.opencontainers.image.ref.name": tag},
    }
    (directory / "index.json").write_text(
        json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [top]})
    )
    return directory
