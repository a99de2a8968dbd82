"""Builds OCI image layouts in Python, so real clients can push test images
without a Docker daemon. Layers are tar files gzipped at level 0, as skopeo
keeps their digests unchanged."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def descriptor(media_type: str, data: bytes) -> dict[str, object]:
    return {"mediaType": media_type, "digest": sha256(data), "size": len(data)}


def tar_layer(files: dict[str, bytes]) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, content in sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.size = len(content)
            info.mtime = 0
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(content))
    return gzip.compress(raw.getvalue(), compresslevel=0, mtime=0)


@dataclass
class Image:
    layers: list[bytes]
    config: bytes
    manifest: bytes

    @property
    def manifest_digest(self) -> str:
        return sha256(self.manifest)

    @property
    def blob_digests(self) -> list[str]:
        return [sha256(self.config), *(sha256(layer) for layer in self.layers)]


def make_image(layer_count: int = 3, layer_bytes: int = 64 * 1024, seed: str = "x") -> Image:
    layers = [
        tar_layer({f"data/{seed}-{i}.bin": os.urandom(layer_bytes), f"id-{i}": seed.encode()})
        for i in range(layer_count)
    ]
    diff_ids = ["sha256:" + hashlib.sha256(gzip.decompress(layer)).hexdigest() for layer in layers]
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {"Cmd": ["/bin/true"], "Labels": {"seed": seed}},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        },
        sort_keys=True,
    ).encode()
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": descriptor(OCI_CONFIG, config),
            "layers": [descriptor(OCI_LAYER, layer) for layer in layers],
        }
    ).encode()
    return Image(layers, config, manifest)


def write_layout(image: Image, directory: Path, tag: str = "latest") -> Path:
    blobs = directory / "blobs" / "sha256"
    blobs.mkdir(parents=True, exist_ok=True)
    for data in [image.config, *image.layers, image.manifest]:
        (blobs / sha256(data).split(":", 1)[1]).write_bytes(data)
    (directory / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    index = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [
            {
                **descriptor(OCI_MANIFEST, image.manifest),
                "annotations": {"org.opencontainers.image.ref.name": tag},
            }
        ],
    }
    (directory / "index.json").write_text(json.dumps(index))
    return directory


def read_layout_blobs(directory: Path) -> dict[str, bytes]:
    """Every blob of a layout (as skopeo writes one), keyed by digest, each re-verified."""
    found = {}
    for path in (directory / "blobs" / "sha256").iterdir():
        data = path.read_bytes()
        assert sha256(data) == f"sha256:{path.name}", f"{path} does not match its name"
        found[f"sha256:{path.name}"] = data
    return found
