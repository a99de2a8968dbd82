"""Bad input gets the spec's error and changes nothing: files and database are
compared before and after each request."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterator

import pytest
import requests

from tests.helpers import error_code, push_blob, put_manifest, raw_request, simple_manifest
from tests.oci_layout import OCI_CONFIG, OCI_LAYER, OCI_MANIFEST, descriptor, sha256
from tests.server import MoorageServer


@contextlib.contextmanager
def unchanged(registry: MoorageServer) -> Iterator[None]:
    before = registry.snapshot()
    yield
    assert registry.snapshot() == before


def new_upload(registry: MoorageServer, repo: str) -> str:
    return str(
        requests.post(f"{registry.url}/v2/{repo}/blobs/uploads/", timeout=5).headers["Location"]
    )


def test_monolithic_digest_mismatch(registry: MoorageServer) -> None:
    wrong = sha256(b"something else")
    with unchanged(registry):
        r = requests.post(
            f"{registry.url}/v2/bad/blob/blobs/uploads/",
            params={"digest": wrong},
            data=os.urandom(10_000),
            timeout=5,
        )
        assert r.status_code == 400 and error_code(r) == "DIGEST_INVALID"


def test_put_digest_mismatch_keeps_the_session(registry: MoorageServer) -> None:
    location = new_upload(registry, "bad/blob")
    assert requests.patch(f"{registry.url}{location}", data=b"x" * 1000, timeout=5).ok
    # The refused finish changes nothing: the client may still finish the upload.
    for last in (None, b"z" * 10):
        with unchanged(registry):
            r = requests.put(
                f"{registry.url}{location}",
                params={"digest": sha256(b"y" * 1000)},
                data=last,
                headers={"Content-Range": "1000-1009"} if last else {},
                timeout=5,
            )
            assert r.status_code == 400 and error_code(r) == "DIGEST_INVALID"
    status = requests.get(f"{registry.url}{location}", timeout=5)
    assert status.status_code == 204 and status.headers["Range"] == "0-999"
    r = requests.put(f"{registry.url}{location}", params={"digest": sha256(b"x" * 1000)}, timeout=5)
    assert r.status_code == 201
    assert registry.upload_files() == set() and registry.db_rows()["uploads"] == []


@pytest.mark.parametrize(
    "digest", ["sha256:abc", "sha256:" + "Z" * 64, "nodigest", "md5:" + "0" * 32]
)
def test_malformed_digests(registry: MoorageServer, digest: str) -> None:
    with unchanged(registry):
        r = requests.post(
            f"{registry.url}/v2/bad/blob/blobs/uploads/",
            params={"digest": digest},
            data=b"abc",
            timeout=5,
        )
        assert r.status_code == 400
        assert error_code(r) in ("DIGEST_INVALID", "UNSUPPORTED")
        r = requests.get(f"{registry.url}/v2/bad/blob/blobs/{digest}", timeout=5)
        assert r.status_code in (400, 404)


def test_manifest_naming_missing_blob(registry: MoorageServer) -> None:
    config = b"{}"
    push_blob(registry, "bad/manifest", config)
    body = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": descriptor(OCI_CONFIG, config),
            "layers": [descriptor(OCI_LAYER, b"never pushed")],
        }
    ).encode()
    with unchanged(registry):
        r = put_manifest(registry, "bad/manifest", "v1", body)
        assert r.status_code == 400 and error_code(r) == "MANIFEST_BLOB_UNKNOWN"
        assert sha256(b"never pushed") in json.dumps(r.json())


def test_index_naming_missing_manifest(registry: MoorageServer) -> None:
    body = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [descriptor(OCI_MANIFEST, b"{}")],
        }
    ).encode()
    with unchanged(registry):
        r = put_manifest(
            registry, "bad/manifest", "idx", body, "application/vnd.oci.image.index.v1+json"
        )
        assert r.status_code == 400 and error_code(r) == "MANIFEST_BLOB_UNKNOWN"


def _invalid_manifests(good: dict[str, object]) -> dict[str, bytes]:
    def variant(**changes: object) -> bytes:
        return json.dumps({**good, **changes}).encode()

    return {
        "not json": b"{not json",
        "not an object": b"[1,2,3]",
        "schema version 3": variant(schemaVersion=3),
        "missing config": json.dumps({k: v for k, v in good.items() if k != "config"}).encode(),
        "layers not a list": variant(layers={"a": 1}),
        "bad layer digest": variant(
            layers=[{"mediaType": OCI_LAYER, "digest": "sha256:1", "size": 1}]
        ),
        "negative size": variant(config={**good["config"], "size": -1}),  # type: ignore[dict-item]
        "unknown media type": variant(mediaType="application/x-nope"),
        "config and manifests": variant(manifests=[]),
        "wrong blob size": variant(config={**good["config"], "size": 3}),  # type: ignore[dict-item]
        "bad annotations": variant(annotations={"a": 1}),
    }


def test_invalid_manifests(registry: MoorageServer) -> None:
    good = json.loads(simple_manifest(registry, "bad/schema"))
    for reason, body in _invalid_manifests(good).items():
        with unchanged(registry):
            r = put_manifest(registry, "bad/schema", "v1", body)
            assert r.status_code == 400, reason
            assert error_code(r) in ("MANIFEST_INVALID", "UNSUPPORTED"), reason


def test_content_type_must_match_media_type(registry: MoorageServer) -> None:
    body = simple_manifest(registry, "bad/ctype")
    with unchanged(registry):
        r = put_manifest(
            registry,
            "bad/ctype",
            "v1",
            body,
            "application/vnd.docker.distribution.manifest.v2+json",
        )
        assert r.status_code == 400 and error_code(r) == "MANIFEST_INVALID"


def test_schema1_is_unsupported(registry: MoorageServer) -> None:
    body = json.dumps({"schemaVersion": 1, "name": "bad/s1", "tag": "v1", "fsLayers": []}).encode()
    with unchanged(registry):
        r = put_manifest(
            registry,
            "bad/s1",
            "v1",
            body,
            "application/vnd.docker.distribution.manifest.v1+prettyjws",
        )
        assert r.status_code == 400 and error_code(r) == "UNSUPPORTED"


def test_manifest_digest_reference_mismatch(registry: MoorageServer) -> None:
    body = simple_manifest(registry, "bad/ref")
    with unchanged(registry):
        r = put_manifest(registry, "bad/ref", sha256(body + b" "), body)
        assert r.status_code == 400 and error_code(r) == "DIGEST_INVALID"
        r = put_manifest(registry, "bad/ref", "-badtag", body)
        assert r.status_code == 400 and error_code(r) == "MANIFEST_INVALID"


def test_oversized_manifest_is_413(registry: MoorageServer) -> None:
    good = json.loads(simple_manifest(registry, "bad/huge"))
    good["annotations"] = {"pad": ""}
    overhead = len(json.dumps(good).encode())
    good["annotations"]["pad"] = "x" * (4 * 1024 * 1024 - overhead + 1)
    body = json.dumps(good).encode()
    assert len(body) == 4 * 1024 * 1024 + 1
    with unchanged(registry):
        r = put_manifest(registry, "bad/huge", "v1", body)
        assert r.status_code == 413 and error_code(r) == "SIZE_INVALID"

        def chunked() -> Iterator[bytes]:  # no Content-Length: the limit still holds
            yield body[:1000]
            yield body[1000:]

        r = requests.put(
            f"{registry.url}/v2/bad/huge/manifests/v2",
            data=chunked(),
            headers={"Content-Type": OCI_MANIFEST},
            timeout=10,
        )
        assert r.status_code == 413


@pytest.mark.parametrize(
    "path",
    [
        "/v2/UPPER/case/manifests/v1",
        "/v2/single/../../etc/manifests/v1",
        "/v2/ns/%2e%2e/img/manifests/v1",
        "/v2/onlyone/manifests/v1",
        "/v2/ns//img/manifests/v1",
        "/v2/ns/-img/manifests/v1",
        "/v2/ns/img./manifests/v1",
        "/v2/" + "a/" * 130 + "img/manifests/v1",
    ],
)
def test_bad_names(registry: MoorageServer, path: str) -> None:
    with unchanged(registry):
        for method in (b"GET", b"PUT", b"POST"):
            target = path.replace("/manifests/v1", "/blobs/uploads/") if method == b"POST" else path
            reply = raw_request(
                registry,
                method
                + b" "
                + target.encode()
                + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            )
            status_line, _, rest = reply.partition(b"\r\n")
            assert b" 400 " in status_line, (method, path, reply[:300])
            assert b"NAME_INVALID" in rest


def test_out_of_order_and_malformed_content_range(registry: MoorageServer) -> None:
    location = new_upload(registry, "bad/range")
    requests.patch(
        f"{registry.url}{location}", data=b"a" * 100, headers={"Content-Range": "0-99"}, timeout=5
    )
    with unchanged(registry):
        for header in ("200-299", "50-149", "0-99", "abc", "100-50"):
            r = requests.patch(
                f"{registry.url}{location}",
                data=b"b" * 100,
                headers={"Content-Range": header},
                timeout=5,
            )
            assert r.status_code == 416, header
            assert r.headers["Range"] == "0-99"
        r = requests.patch(
            f"{registry.url}{location}",
            data=b"b" * 100,
            headers={"Content-Range": "100-149"},
            timeout=5,
        )
        assert r.status_code == 400 and error_code(r) == "SIZE_INVALID"
    assert requests.get(f"{registry.url}{location}", timeout=5).headers["Range"] == "0-99"


def test_truncated_bodies_leave_nothing(registry: MoorageServer) -> None:
    location = new_upload(registry, "bad/trunc")
    requests.patch(f"{registry.url}{location}", data=b"a" * 100, timeout=5)
    digest = sha256(b"z" * 1000)
    with unchanged(registry):
        # The client announces 1000 bytes, sends 400 and hangs up.
        for request in (
            f"PATCH {location} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            "Content-Length: 1000\r\n\r\n".encode(),
            f"PUT {location}?digest={digest} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            "Content-Length: 1000\r\n\r\n".encode(),
            f"POST /v2/bad/trunc/blobs/uploads/?digest={digest} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            "Content-Length: 1000\r\n\r\n".encode(),
        ):
            raw_request(registry, request + b"z" * 400, close_early=True)
            status = requests.get(f"{registry.url}{location}", timeout=5)
            assert status.status_code == 204 and status.headers["Range"] == "0-99"


def test_unknown_upload_ids(registry: MoorageServer) -> None:
    other = new_upload(registry, "bad/owner")
    foreign_id = other.rsplit("/", 1)[1]
    with unchanged(registry):
        for upload_id in ("0" * 32, "not-a-uuid", "%2e%2e", foreign_id):
            url = f"{registry.url}/v2/bad/thief/blobs/uploads/{upload_id}"
            for method in ("GET", "PATCH", "PUT", "DELETE"):
                params = {"digest": sha256(b"x")} if method == "PUT" else None
                r = requests.request(method, url, data=b"x", params=params, timeout=5)
                assert r.status_code in (400, 404), (method, upload_id)
                assert error_code(r) in ("BLOB_UPLOAD_UNKNOWN", "NAME_INVALID"), (method, upload_id)


def test_unknown_blob_and_manifest(registry: MoorageServer) -> None:
    digest = "sha256:" + hashlib.sha256(b"nothing").hexdigest()
    with unchanged(registry):
        r = requests.get(f"{registry.url}/v2/bad/none/blobs/{digest}", timeout=5)
        assert r.status_code == 404 and error_code(r) == "BLOB_UNKNOWN"
        assert (
            requests.delete(f"{registry.url}/v2/bad/none/blobs/{digest}", timeout=5).status_code
            == 404
        )
        r = requests.get(f"{registry.url}/v2/bad/none/manifests/latest", timeout=5)
        assert r.status_code == 404 and error_code(r) == "MANIFEST_UNKNOWN"
        r = requests.request("PATCH", f"{registry.url}/v2/bad/none/manifests/latest", timeout=5)
        assert r.status_code == 405 and error_code(r) == "UNSUPPORTED"
        r = requests.get(f"{registry.url}/v2/bad/none/tags/list", params={"n": "-1"}, timeout=5)
        assert r.status_code == 400
