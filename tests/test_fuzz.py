"""Property-based fuzzing of every parser that reads what a client sends:
manifests, digests, names and tags, token scopes, Content-Range, pull-secret
auth entries. Each either accepts or raises its own error type, never anything
else; over HTTP, no input gets a 500 and a refused one changes nothing."""

from __future__ import annotations

import contextlib
import json
from typing import Any
from urllib.parse import quote

import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from moorage.auth.tokens import Scope, parse_scopes
from moorage.kube.keyring import Keyring, KeyringError, decode_auth, key_matches, normalize_key
from moorage.oci.digest import DigestError, parse_digest
from moorage.oci.manifest import (
    DOCKER_LIST,
    DOCKER_MANIFEST,
    OCI_INDEX,
    OCI_MANIFEST,
    ManifestError,
    parse_manifest,
)
from moorage.oci.names import NameError_, validate_name, validate_tag
from moorage.registry.blobs import BlobService
from moorage.registry.errors import RangeInvalid, SizeInvalid
from tests.helpers import push_blob
from tests.server import MoorageServer

MEDIA_TYPES = [OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST]
HEX = "0123456789abcdef"

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)
digests = st.one_of(
    st.text(HEX, min_size=64, max_size=64).map(lambda h: "sha256:" + h),
    st.text(HEX, min_size=128, max_size=128).map(lambda h: "sha512:" + h),
    st.text(max_size=80),
)
descriptors = st.fixed_dictionaries(
    {},
    optional={
        "mediaType": st.sampled_from([*MEDIA_TYPES, "application/octet-stream"]) | st.text(),
        "digest": digests,
        "size": st.integers(-1, 2**63) | st.floats() | st.text(),
        "annotations": st.dictionaries(st.text(), st.text() | json_values, max_size=3),
        "artifactType": st.text(max_size=40) | json_values,
        "urls": st.lists(st.text(max_size=20)) | json_values,
    },
)
manifests = st.fixed_dictionaries(
    {"schemaVersion": st.sampled_from([2, 2, 2, 1, "2", None, 3])},
    optional={
        "mediaType": st.sampled_from(MEDIA_TYPES) | st.text(max_size=40),
        "config": descriptors | json_values,
        "layers": st.lists(descriptors, max_size=3) | json_values,
        "manifests": st.lists(descriptors, max_size=3) | json_values,
        "subject": descriptors | json_values,
        "artifactType": st.text(max_size=40) | json_values,
        "annotations": st.dictionaries(st.text(), st.text(), max_size=3) | json_values,
        "blobs": st.lists(descriptors, max_size=2),
    },
)
content_types = st.none() | st.sampled_from(MEDIA_TYPES) | st.text(max_size=60)


@settings(max_examples=400)
@given(manifests, content_types)
def test_manifest_parser_accepts_or_says_why(doc: dict[str, Any], content_type: str | None) -> None:
    try:
        parsed = parse_manifest(json.dumps(doc).encode(), content_type)
    except ManifestError as exc:
        assert str(exc)
        return
    assert parsed.media_type in MEDIA_TYPES
    for blob in parsed.required_blobs:
        parse_digest(blob.digest)
        assert isinstance(blob.size, int) and blob.size >= 0


@settings(max_examples=300)
@given(st.binary(max_size=300) | st.text(max_size=300).map(lambda t: t.encode("utf-8", "replace")))
def test_manifest_parser_on_raw_bytes(body: bytes) -> None:
    with contextlib.suppress(ManifestError):
        parse_manifest(body, None)


@settings(max_examples=500)
@given(digests)
def test_digest_parser(value: str) -> None:
    try:
        digest = parse_digest(value)
    except DigestError:
        return
    assert str(digest) == value and len(digest.hex) in (64, 128)


@settings(max_examples=500)
@given(st.text(max_size=300) | st.from_regex(r"[a-z0-9]{1,8}(/[a-z0-9._-]{1,8}){1,3}\n?"))
def test_names_and_tags(value: str) -> None:
    try:
        namespace = validate_name(value)
    except NameError_:
        pass
    else:
        assert "\n" not in value and value.startswith(namespace + "/")
    try:
        validate_tag(value)
    except NameError_:
        pass
    else:
        assert "\n" not in value and 0 < len(value) <= 128


@settings(max_examples=500)
@given(st.text(max_size=120))
def test_scopes(value: str) -> None:
    scope = Scope.parse(value)
    if scope is not None:
        assert scope.type and scope.name
    assert all(isinstance(s, Scope) for s in parse_scopes([value, value]))


@settings(max_examples=500)
@given(st.text(max_size=40), st.integers(0, 10**12), st.none() | st.integers(0, 10**12))
def test_content_range(value: str, size: int, length: int | None) -> None:
    try:
        chunk, offset = BlobService._check_range(None, size, value, length)  # type: ignore[arg-type]
    except (RangeInvalid, SizeInvalid):
        return
    if value:
        assert offset == size and chunk is not None and chunk > 0


@settings(max_examples=500)
@given(st.text(max_size=80), st.text(max_size=80))
def test_pull_secret_entries(auth: str, key: str) -> None:
    try:
        username, _ = decode_auth(auth)
    except KeyringError:
        pass
    else:
        assert isinstance(username, str)
    try:
        normalized = normalize_key(key)
    except ValueError:
        normalized = key  # the keyring reports such a key as a problem, below
    key_matches(normalized, "us.localhost:5000/team/app")
    key_matches("us.localhost:5000", key)
    ring = Keyring()
    ring.add_config({key: {"auth": auth, "username": key}}, "ns/secret")
    ring.lookup("us.localhost:5000/team/app")


# -- over HTTP -----------------------------------------------------------------


@settings(
    max_examples=80,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(doc=manifests, content_type=st.sampled_from(MEDIA_TYPES), tag=st.text(max_size=20))
def test_fuzzed_manifest_puts_never_fail_the_server(
    shared_registry: MoorageServer, doc: dict[str, Any], content_type: str, tag: str
) -> None:
    repo = "fuzz/manifests"
    config = b'{"architecture":"amd64","os":"linux"}'
    push_blob(shared_registry, repo, config)
    before = shared_registry.snapshot()
    r = requests.put(
        f"{shared_registry.url}/v2/{repo}/manifests/{quote(tag, safe='') or 'x'}",
        data=json.dumps(doc).encode(),
        headers={"Content-Type": content_type},
        timeout=30,
    )
    assert r.status_code < 500, r.text
    if r.status_code >= 400:
        assert r.json()["errors"][0]["code"]
        assert shared_registry.snapshot() == before


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    name=st.text(max_size=40),
    reference=st.text(max_size=80) | digests,
    method=st.sampled_from(["GET", "HEAD", "DELETE"]),
    kind=st.sampled_from(["manifests", "blobs", "referrers", "tags/list"]),
)
def test_fuzzed_names_and_references_never_fail_the_server(
    shared_registry: MoorageServer, name: str, reference: str, method: str, kind: str
) -> None:
    before = shared_registry.snapshot()
    path = f"/v2/{quote(name, safe='/')}/{kind}"
    if kind != "tags/list":
        path += "/" + quote(reference, safe=":")
    r = requests.request(method, shared_registry.url + path, timeout=30)
    assert r.status_code < 500, (path, r.text)
    if r.status_code >= 400:
        assert shared_registry.snapshot() == before
