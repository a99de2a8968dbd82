"""An image the Advisor calls FAIL, for the enforcement tests: Alpine
3.20.3's real package database (va-os's fixture) in one layer, and an OSV
record (ALPINE-CVE-2024-9143, fixed by openssl 3.3.2-r1) newer than its
``libcrypto3``/``libssl3`` 3.3.2-r0. See tests/data/va/va-enforce/README.md."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.oci_layout import OCI_CONFIG, OCI_LAYER, OCI_MANIFEST, Image, descriptor, write_layout
from tests.server import MOORAGE, MoorageServer

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


def import_advisories(server: MoorageServer, location: Path = ADVISORIES) -> None:
    """``moorage va db import`` into the server's own installation (its data
    directory and database), as an operator runs it beside the server."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MOORAGE_")}
    env = {**clean, **{k: v for k, v in server.env.items() if k.startswith("MOORAGE_")}}
    env["MOORAGE_DATABASE_URL"] = server.database_url
    imported = subprocess.run(
        [str(MOORAGE), "va", "db", "import", "--data", str(server.data_dir), str(location)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert imported.returncode == 0, imported.stderr


def cr(server: MoorageServer, key: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``moorage cr …`` against the server, signed in with ``key``."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MOORAGE_")}
    done = subprocess.run(
        [
            str(MOORAGE),
            "cr",
            *args,
            "--server",
            f"http://{server.host_for('us.localhost')}",
            "--apikey",
            key,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env={**clean, "MOORAGE_CONFIG_DIR": str(server.data_dir.parent / "cli-config")},
    )
    assert done.returncode == 0, done.stderr + done.stdout
    return done


def exempt(server: MoorageServer, key: str, scope: str, issue: str) -> str:
    """``moorage cr exemption-add`` of ``issue`` (a CVE or any alias) within
    ``scope``; the exemption's ID."""
    cr(
        server,
        key,
        "exemption-add",
        "--scope",
        scope,
        "--issue-type",
        "cve",
        "--issue-id",
        issue,
        "--reason",
        "accepted risk",
    )
    listed = json.loads(cr(server, key, "exemption-list", "--output", "json").stdout)
    return str(next(e["id"] for e in listed if e["scope"] == scope and e["issue_id"] == issue))
