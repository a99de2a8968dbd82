"""The pure OCI rules: digests, names, tags and manifest validation."""

from __future__ import annotations

import json

import pytest

from moorage.oci import (
    DigestError,
    ManifestError,
    NameError_,
    parse_digest,
    parse_manifest,
    validate_name,
    validate_tag,
)
from moorage.oci.manifest import DOCKER_LIST, OCI_INDEX, OCI_MANIFEST

HEX = "a" * 64
GOOD_CONFIG = {
    "mediaType": "application/vnd.oci.image.config.v1+json",
    "digest": f"sha256:{HEX}",
    "size": 2,
}


@pytest.mark.parametrize("value", [f"sha256:{HEX}", "sha512:" + "b" * 128])
def test_digests_accepted(value: str) -> None:
    assert str(parse_digest(value)) == value


@pytest.mark.parametrize(
    ("value", "unsupported"),
    [
        ("sha256:" + "A" * 64, False),
        ("sha256:abc", False),
        ("sha256", False),
        ("", False),
        ("md5:" + "0" * 32, True),
        ("sha256:" + HEX + "0", False),
        ("SHA256:" + HEX, False),
    ],
)
def test_digests_refused(value: str, unsupported: bool) -> None:
    with pytest.raises(DigestError) as info:
        parse_digest(value)
    assert info.value.unsupported is unsupported


@pytest.mark.parametrize(
    "name", ["ns/img", "a0/b-c/d__e", "my.org/x.y", "n/a--b", "x/" + "y" * 200]
)
def test_names_accepted(name: str) -> None:
    assert validate_name(name) == name.split("/")[0]


@pytest.mark.parametrize(
    "name",
    [
        "img",
        "NS/img",
        "ns/../img",
        "ns//img",
        "/ns/img",
        "ns/img/",
        "ns/-img",
        "ns/img.",
        "ns/im g",
        "ns/" + "a" * 260,
        "ns/a___b",
    ],
)
def test_names_refused(name: str) -> None:
    with pytest.raises(NameError_):
        validate_name(name)


def test_tags() -> None:
    validate_tag("v1.0_rc-1")
    validate_tag("_x")
    validate_tag("a" * 128)
    for bad in ("-x", ".x", "a" * 129, "a/b", "a:b", ""):
        with pytest.raises(NameError_):
            validate_tag(bad)


def test_image_manifest_fields() -> None:
    doc = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": GOOD_CONFIG,
        "layers": [
            {
                "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                "digest": f"sha256:{'c' * 64}",
                "size": 5,
            },
            {
                "mediaType": "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
                "digest": f"sha256:{'d' * 64}",
                "size": 9,
                "urls": ["https://example/x"],
            },
        ],
        "subject": {"mediaType": OCI_MANIFEST, "digest": f"sha256:{'e' * 64}", "size": 7},
    }
    parsed = parse_manifest(json.dumps(doc).encode(), OCI_MANIFEST)
    assert parsed.media_type == OCI_MANIFEST
    assert parsed.subject is not None and parsed.subject.digest == f"sha256:{'e' * 64}"
    # Foreign layers live elsewhere; the registry need not hold them.
    assert [b.digest for b in parsed.required_blobs] == [f"sha256:{HEX}", f"sha256:{'c' * 64}"]
    assert parsed.referrer_artifact_type == GOOD_CONFIG["mediaType"]


def test_media_type_comes_from_body_header_or_shape() -> None:
    index = json.dumps({"schemaVersion": 2, "manifests": []}).encode()
    assert parse_manifest(index, None).media_type == OCI_INDEX
    assert parse_manifest(index, DOCKER_LIST).media_type == DOCKER_LIST
    image = json.dumps({"schemaVersion": 2, "config": GOOD_CONFIG, "layers": []}).encode()
    assert parse_manifest(image, "application/octet-stream").media_type == OCI_MANIFEST


@pytest.mark.parametrize(
    "doc",
    [
        {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [], "config": GOOD_CONFIG},
        {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "layers": []},
        {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": {**GOOD_CONFIG, "size": True}},
        {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": GOOD_CONFIG, "artifactType": 3},
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": GOOD_CONFIG,
            "layers": [{**GOOD_CONFIG, "urls": "not-a-list"}],
        },
        {"schemaVersion": "2", "config": GOOD_CONFIG},
    ],
)
def test_invalid_manifests(doc: dict[str, object]) -> None:
    with pytest.raises(ManifestError):
        parse_manifest(json.dumps(doc).encode(), None)
