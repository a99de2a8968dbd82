"""An image the Advisor calls FAIL, for the enforcement tests: Alpine
3.20.3's real package database (va-os's fixture) in one layer, and an OSV
record (ALPINE-CVE-2024-9143, fixed by openssl 3.3.2-r1) newer than its
``libcrypto3``/``libssl3`` 3.3.2-r0. See tests/data/va/va-enforce/README.md."""

from __future__ import annotations

import gzip
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.oci_layout import OCI_CONFIG, OCI_LAYER, OCI_MANIFEST, Image, descriptor, write_layout

DATA = Path(__file__).parent / "data" / "va"
ROOTFS_DB = DATA / "os" / "alpine-minirootfs-3.20.3-x86_64-db.tar.gz"
ADVISORIES = DATA / "va-enforce" / "advisories"
ADVISORY = "ALPINE-CVE-2024-9143"
ALIAS = "CVE-2024-9143"
PACKAGE = "libcrypto3"
FIXED = "3.3.2-r1"


@dataclass(frozen=True)
class Vulnerable:
    layout: Path
    manifest_digest: str
    advisories: Path = ADVISORIES


def vulnerable_image(directory: Path) -> Vulnerable:
    """The OCI layout (tag ``latest``) of the image; skips when va-os's data is absent."""
    if not ROOTFS_DB.exists():
        pytest.skip(f"{ROOTFS_DB} is not here (va-os's test data)")
    layer = ROOTFS_DB.read_bytes()
    diff_id = "sha256:" + hashlib.sha256(gzip.decompress(layer)).hexdigest()
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            # Not root, so the only issue is the advisory (no "runs as root" finding).
            "config": {"User": "65534", "Cmd": ["/bin/sh"]},
            "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        },
        sort_keys=True,
    ).encode()
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": descriptor(OCI_CONFIG, config),
            "layers": [descriptor(OCI_LAYER, layer)],
        }
    ).encode()
    image = Image([layer], config, manifest)
    return Vulnerable(write_layout(image, directory), image.manifest_digest)
