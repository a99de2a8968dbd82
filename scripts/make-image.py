#!/usr/bin/env python3
"""Write a tiny OCI image layout (one layer holding a hello.txt) to push while
trying Moorage out, offline: `python3 scripts/make-image.py ./layout` and then
`skopeo copy oci:./layout:latest docker://...`. Standard library only, so it
runs before any virtual environment exists."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import sys
import tarfile
from pathlib import Path


def _blob(directory: Path, data: bytes) -> dict[str, object]:
    digest = hashlib.sha256(data).hexdigest()
    (directory / "blobs" / "sha256" / digest).write_bytes(data)
    return {"digest": f"sha256:{digest}", "size": len(data)}


def main() -> int:
    if len(sys.argv) != 2:
        print("usage: make-image.py DIRECTORY", file=sys.stderr)
        return 2
    out = Path(sys.argv[1])
    (out / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
    content = b"Hello from Moorage's quick start.\n"
    tar_bytes = io.BytesIO()
    with tarfile.open(fileobj=tar_bytes, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("hello.txt")
        info.size, info.mode, info.mtime = len(content), 0o644, 0
        tar.addfile(info, io.BytesIO(content))
    diff = tar_bytes.getvalue()
    layer = gzip.compress(diff, mtime=0)
    diff_id = f"sha256:{hashlib.sha256(diff).hexdigest()}"
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {},
            "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        }
    ).encode()
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                **_blob(out, config),
            },
            "layers": [
                {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", **_blob(out, layer)}
            ],
        }
    ).encode()
    index = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                **_blob(out, manifest),
                "annotations": {"org.opencontainers.image.ref.name": "latest"},
            }
        ],
    }
    (out / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    (out / "index.json").write_text(json.dumps(index))
    print(f"wrote oci:{out}:latest")
    return 0


if __name__ == "__main__":
    sys.exit(main())
