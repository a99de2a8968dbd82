"""The distribution API, endpoint by endpoint, against the real server."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator

import requests

from tests.helpers import error_code, push_blob, push_image, put_manifest, simple_manifest, wait_for
from tests.oci_layout import OCI_CONFIG, OCI_INDEX, OCI_MANIFEST, descriptor, make_image, sha256
from tests.server import MoorageServer

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"


def test_base_endpoint_and_health(shared_registry: MoorageServer) -> None:
    r = requests.get(f"{shared_registry.url}/v2/", timeout=5)
    assert r.status_code == 200
    assert r.headers["Docker-Distribution-API-Version"] == "registry/2.0"
    health = requests.get(f"{shared_registry.url}/health", timeout=5).json()
    assert health["status"] == "ok" and health["database"] == "ok"


def test_blob_get_head_and_ranges(shared_registry: MoorageServer) -> None:
    data = os.urandom(100_000)
    digest = push_blob(shared_registry, "api/ranges", data)
    url = f"{shared_registry.url}/v2/api/ranges/blobs/{digest}"

    head = requests.head(url, timeout=5)
    assert head.status_code == 200
    assert head.headers["Content-Length"] == str(len(data))
    assert head.headers["Docker-Content-Digest"] == digest
    assert head.content == b""

    assert requests.get(url, timeout=5).content == data
    cases = {
        "bytes=10-19": data[10:20],
        "bytes=-5": data[-5:],
        "bytes=99990-": data[99990:],
        "bytes=50000-999999": data[50000:],
    }
    for header, expected in cases.items():
        r = requests.get(url, headers={"Range": header}, timeout=5)
        assert r.status_code == 206, header
        assert r.content == expected, header
        start = (
            len(data) - len(expected)
            if header.startswith("bytes=-")
            else int(header[6:].split("-")[0])
        )
        assert (
            r.headers["Content-Range"] == f"bytes {start}-{start + len(expected) - 1}/{len(data)}"
        )

    r = requests.get(url, headers={"Range": "bytes=100000-"}, timeout=5)
    assert r.status_code == 416
    assert r.headers["Content-Range"] == f"bytes */{len(data)}"


def test_post_then_put_whole_body(shared_registry: MoorageServer) -> None:
    data = os.urandom(5000)
    start = requests.post(f"{shared_registry.url}/v2/api/postput/blobs/uploads/", timeout=5)
    assert start.status_code == 202
    assert start.headers["Range"] == "0-0"
    location = start.headers["Location"]
    assert location.startswith("/v2/api/postput/blobs/uploads/")
    done = requests.put(
        f"{shared_registry.url}{location}", params={"digest": sha256(data)}, data=data, timeout=5
    )
    assert done.status_code == 201, done.text
    assert done.headers["Location"] == f"/v2/api/postput/blobs/{sha256(data)}"
    assert (
        requests.get(f"{shared_registry.url}{done.headers['Location']}", timeout=5).content == data
    )


def test_chunked_upload_reports_range_and_rejects_out_of_order(
    shared_registry: MoorageServer,
) -> None:
    data = os.urandom(300_000)
    chunks = [data[:100_000], data[100_000:250_000], data[250_000:]]
    location = requests.post(
        f"{shared_registry.url}/v2/api/chunked/blobs/uploads/", timeout=5
    ).headers["Location"]
    offset = 0
    for chunk in chunks:
        r = requests.patch(
            f"{shared_registry.url}{location}",
            data=chunk,
            headers={
                "Content-Range": f"{offset}-{offset + len(chunk) - 1}",
                "Content-Type": "application/octet-stream",
            },
            timeout=5,
        )
        assert r.status_code == 202, r.text
        offset += len(chunk)
        assert r.headers["Range"] == f"0-{offset - 1}"
        location = r.headers["Location"]
        status = requests.get(f"{shared_registry.url}{location}", timeout=5)
        assert status.status_code == 204
        assert status.headers["Range"] == f"0-{offset - 1}"

    # A chunk replayed at an old offset is refused with 416 and the current range.
    replay = requests.patch(
        f"{shared_registry.url}{location}",
        data=chunks[0],
        headers={"Content-Range": f"0-{len(chunks[0]) - 1}"},
        timeout=5,
    )
    assert replay.status_code == 416
    assert replay.headers["Range"] == f"0-{len(data) - 1}"

    done = requests.put(
        f"{shared_registry.url}{location}", params={"digest": sha256(data)}, timeout=5
    )
    assert done.status_code == 201, done.text
    fetched = requests.get(f"{shared_registry.url}/v2/api/chunked/blobs/{sha256(data)}", timeout=5)
    assert fetched.content == data


def test_streamed_patch_without_content_range(shared_registry: MoorageServer) -> None:
    parts = [os.urandom(64 * 1024) for _ in range(20)]

    def body() -> Iterator[bytes]:
        yield from parts  # requests sends a generator with Transfer-Encoding: chunked

    location = requests.post(
        f"{shared_registry.url}/v2/api/streamed/blobs/uploads/", timeout=5
    ).headers["Location"]
    r = requests.patch(f"{shared_registry.url}{location}", data=body(), timeout=30)
    assert r.status_code == 202, r.text
    data = b"".join(parts)
    assert r.headers["Range"] == f"0-{len(data) - 1}"
    done = requests.put(
        f"{shared_registry.url}{r.headers['Location']}", params={"digest": sha256(data)}, timeout=5
    )
    assert done.status_code == 201


def test_cancel_upload(shared_registry: MoorageServer) -> None:
    location = requests.post(
        f"{shared_registry.url}/v2/api/cancel/blobs/uploads/", timeout=5
    ).headers["Location"]
    requests.patch(f"{shared_registry.url}{location}", data=b"abc", timeout=5)
    assert requests.delete(f"{shared_registry.url}{location}", timeout=5).status_code == 204
    status = requests.get(f"{shared_registry.url}{location}", timeout=5)
    assert status.status_code == 404
    assert error_code(status) == "BLOB_UPLOAD_UNKNOWN"
    upload_id = location.rsplit("/", 1)[1]
    assert upload_id not in shared_registry.upload_files()


def test_cross_repository_mount(shared_registry: MoorageServer) -> None:
    data = os.urandom(1000)
    digest = push_blob(shared_registry, "api/mount-src", data)
    url = f"{shared_registry.url}/v2/api/mount-dst/blobs/uploads/"
    mounted = requests.post(url, params={"mount": digest, "from": "api/mount-src"}, timeout=5)
    assert mounted.status_code == 201
    assert mounted.headers["Location"] == f"/v2/api/mount-dst/blobs/{digest}"
    assert (
        requests.get(f"{shared_registry.url}/v2/api/mount-dst/blobs/{digest}", timeout=5).content
        == data
    )

    # Nothing to mount from: a normal upload session starts instead.
    missing = "sha256:" + hashlib.sha256(b"not here").hexdigest()
    fallback = requests.post(url, params={"mount": missing, "from": "api/mount-src"}, timeout=5)
    assert fallback.status_code == 202
    assert fallback.headers["Location"].startswith("/v2/api/mount-dst/blobs/uploads/")
    # A blob that only another repository holds is not mounted without naming it.
    unnamed = requests.post(
        f"{shared_registry.url}/v2/api/mount-other/blobs/uploads/",
        params={"mount": digest},
        timeout=5,
    )
    assert unnamed.status_code == 202


def _docker_image(registry: MoorageServer, repo: str) -> bytes:
    config = b'{"architecture":"arm64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}'
    layer = os.urandom(2048)
    push_blob(registry, repo, config)
    push_blob(registry, repo, layer)
    return json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": DOCKER_MANIFEST,
            "config": descriptor(DOCKER_CONFIG, config),
            "layers": [descriptor(DOCKER_LAYER, layer)],
        },
        indent=3,
    ).encode()


def test_all_four_manifest_kinds_are_stored_byte_exact(shared_registry: MoorageServer) -> None:
    repo = "api/kinds"
    oci = simple_manifest(shared_registry, repo)
    docker = _docker_image(shared_registry, repo)
    assert put_manifest(shared_registry, repo, "oci", oci).status_code == 201
    assert put_manifest(shared_registry, repo, "docker", docker, DOCKER_MANIFEST).status_code == 201
    oci_index = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [
                {
                    **descriptor(OCI_MANIFEST, oci),
                    "platform": {"architecture": "amd64", "os": "linux"},
                }
            ],
        }
    ).encode()
    docker_list = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": DOCKER_LIST,
            "manifests": [
                {
                    **descriptor(DOCKER_MANIFEST, docker),
                    "platform": {"architecture": "arm64", "os": "linux"},
                }
            ],
        }
    ).encode()
    assert put_manifest(shared_registry, repo, "index", oci_index, OCI_INDEX).status_code == 201
    assert put_manifest(shared_registry, repo, "list", docker_list, DOCKER_LIST).status_code == 201

    for tag, body, media_type in [
        ("oci", oci, OCI_MANIFEST),
        ("docker", docker, DOCKER_MANIFEST),
        ("index", oci_index, OCI_INDEX),
        ("list", docker_list, DOCKER_LIST),
    ]:
        for ref in (tag, sha256(body)):
            r = requests.get(
                f"{shared_registry.url}/v2/{repo}/manifests/{ref}",
                headers={"Accept": media_type},
                timeout=5,
            )
            assert r.status_code == 200
            assert r.content == body
            assert r.headers["Content-Type"] == media_type
            assert r.headers["Docker-Content-Digest"] == sha256(body)
            head = requests.head(f"{shared_registry.url}/v2/{repo}/manifests/{ref}", timeout=5)
            assert head.headers["Content-Length"] == str(len(body))
            assert head.headers["Docker-Content-Digest"] == sha256(body)


def test_accept_negotiation(shared_registry: MoorageServer) -> None:
    repo = "api/accept"
    docker = _docker_image(shared_registry, repo)
    put_manifest(shared_registry, repo, "v1", docker, DOCKER_MANIFEST)
    url = f"{shared_registry.url}/v2/{repo}/manifests/v1"
    refused = requests.get(url, headers={"Accept": OCI_MANIFEST}, timeout=5)
    assert refused.status_code == 404
    assert error_code(refused) == "MANIFEST_UNKNOWN"
    for accept in (f"{OCI_MANIFEST}, {DOCKER_MANIFEST};q=0.5", "*/*", ""):
        assert requests.get(url, headers={"Accept": accept}, timeout=5).status_code == 200


def test_four_mebibyte_manifest_is_accepted(shared_registry: MoorageServer) -> None:
    repo = "api/big"
    base = json.loads(simple_manifest(shared_registry, repo))
    base["annotations"] = {"pad": ""}
    overhead = len(json.dumps(base).encode())
    base["annotations"]["pad"] = "x" * (4 * 1024 * 1024 - overhead)
    body = json.dumps(base).encode()
    assert len(body) == 4 * 1024 * 1024
    r = put_manifest(shared_registry, repo, "big", body)
    assert r.status_code == 201, r.text[:300]
    assert (
        requests.get(f"{shared_registry.url}/v2/{repo}/manifests/big", timeout=10).content == body
    )


def test_subject_and_referrers(shared_registry: MoorageServer) -> None:
    repo = "api/referrers"
    subject_body = simple_manifest(shared_registry, repo)
    put_manifest(shared_registry, repo, "app", subject_body)
    subject = {"mediaType": OCI_MANIFEST, "digest": sha256(subject_body), "size": len(subject_body)}
    empty = b"{}"
    push_blob(shared_registry, repo, empty)
    referrers = []
    for artifact_type in ("application/vnd.example.sbom", "application/vnd.example.signature"):
        body = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "artifactType": artifact_type,
                "config": descriptor("application/vnd.oci.empty.v1+json", empty),
                "layers": [descriptor("application/vnd.oci.empty.v1+json", empty)],
                "subject": subject,
                "annotations": {"kind": artifact_type},
            }
        ).encode()
        r = put_manifest(shared_registry, repo, sha256(body), body)
        assert r.status_code == 201, r.text
        assert r.headers["OCI-Subject"] == subject["digest"]
        referrers.append((artifact_type, body))

    url = f"{shared_registry.url}/v2/{repo}/referrers/{subject['digest']}"
    listing = requests.get(url, timeout=5)
    assert listing.status_code == 200
    assert listing.headers["Content-Type"] == OCI_INDEX
    found = listing.json()["manifests"]
    assert [(m["artifactType"], m["digest"], m["size"]) for m in found] == [
        (t, sha256(b), len(b)) for t, b in referrers
    ]
    assert found[0]["annotations"] == {"kind": referrers[0][0]}

    filtered = requests.get(url, params={"artifactType": referrers[1][0]}, timeout=5)
    assert filtered.headers["OCI-Filters-Applied"] == "artifactType"
    assert [m["digest"] for m in filtered.json()["manifests"]] == [sha256(referrers[1][1])]

    # A valid digest nobody refers to, even in an unknown repository: an empty index, not 404.
    nobody = "sha256:" + "0" * 64
    for repo_name in (repo, "api/never-pushed"):
        r = requests.get(f"{shared_registry.url}/v2/{repo_name}/referrers/{nobody}", timeout=5)
        assert r.status_code == 200
        assert r.json()["manifests"] == []
    bad = requests.get(f"{shared_registry.url}/v2/{repo}/referrers/sha256:xyz", timeout=5)
    assert bad.status_code == 400 and error_code(bad) == "DIGEST_INVALID"

    # Deleting the referrer removes it from the listing.
    requests.delete(
        f"{shared_registry.url}/v2/{repo}/manifests/{sha256(referrers[0][1])}", timeout=5
    )
    assert len(requests.get(url, timeout=5).json()["manifests"]) == 1


def test_tag_and_catalog_pagination(shared_registry: MoorageServer) -> None:
    repo = "api/paging"
    body = simple_manifest(shared_registry, repo)
    tags = ["a", "b", "c", "d", "e"]
    for tag in reversed(tags):
        put_manifest(shared_registry, repo, tag, body)
    url = f"{shared_registry.url}/v2/{repo}/tags/list"
    assert requests.get(url, timeout=5).json() == {"name": repo, "tags": tags}

    seen, next_url = [], f"{url}?n=2"
    while next_url:
        r = requests.get(next_url, timeout=5)
        seen.extend(r.json()["tags"])
        link = r.headers.get("Link")
        next_url = f"{shared_registry.url}{link.split(';')[0].strip('<>')}" if link else ""
    assert seen == tags
    assert requests.get(url, params={"last": "c"}, timeout=5).json()["tags"] == ["d", "e"]

    unknown = requests.get(f"{shared_registry.url}/v2/api/nothing-here/tags/list", timeout=5)
    assert unknown.status_code == 404 and error_code(unknown) == "NAME_UNKNOWN"

    for name in ("api/cat-b", "api/cat-a", "api/cat-c"):
        put_manifest(shared_registry, name, "v1", simple_manifest(shared_registry, name))
    catalog = requests.get(f"{shared_registry.url}/v2/_catalog", timeout=5).json()["repositories"]
    assert catalog == sorted(catalog)
    assert {"api/cat-a", "api/cat-b", "api/cat-c"} <= set(catalog)
    page = requests.get(
        f"{shared_registry.url}/v2/_catalog", params={"n": 1, "last": "api/cat-a"}, timeout=5
    )
    assert page.json()["repositories"] == ["api/cat-b"]
    assert page.headers["Link"] == '</v2/_catalog?n=1&last=api/cat-b>; rel="next"'


def test_delete_tag_versus_delete_manifest(shared_registry: MoorageServer) -> None:
    repo = "api/delete"
    body = simple_manifest(shared_registry, repo)
    for tag in ("one", "two"):
        put_manifest(shared_registry, repo, tag, body)
    url = f"{shared_registry.url}/v2/{repo}"
    assert requests.delete(f"{url}/manifests/one", timeout=5).status_code == 202
    assert requests.get(f"{url}/tags/list", timeout=5).json()["tags"] == ["two"]
    assert requests.get(f"{url}/manifests/{sha256(body)}", timeout=5).status_code == 200

    assert requests.delete(f"{url}/manifests/{sha256(body)}", timeout=5).status_code == 202
    assert requests.get(f"{url}/tags/list", timeout=5).json()["tags"] == []
    gone = requests.get(f"{url}/manifests/two", timeout=5)
    assert gone.status_code == 404 and error_code(gone) == "MANIFEST_UNKNOWN"
    again = requests.delete(f"{url}/manifests/{sha256(body)}", timeout=5)
    assert again.status_code == 404


def test_blob_delete_unlinks_one_repository_only(shared_registry: MoorageServer) -> None:
    data = os.urandom(4096)
    digest = push_blob(shared_registry, "api/del-a", data)
    push_blob(shared_registry, "api/del-b", data)
    hex_ = digest.split(":")[1]
    assert [f for f in shared_registry.blob_files() if f.endswith(hex_)] == [f"sha256:{hex_}"]
    r = requests.delete(f"{shared_registry.url}/v2/api/del-a/blobs/{digest}", timeout=5)
    assert r.status_code == 202
    assert (
        requests.get(f"{shared_registry.url}/v2/api/del-a/blobs/{digest}", timeout=5).status_code
        == 404
    )
    assert (
        requests.get(f"{shared_registry.url}/v2/api/del-b/blobs/{digest}", timeout=5).content
        == data
    )


def test_blob_is_invisible_in_repositories_that_do_not_link_it(
    shared_registry: MoorageServer,
) -> None:
    digest = push_blob(shared_registry, "api/owner", os.urandom(100))
    r = requests.get(f"{shared_registry.url}/v2/api/stranger/blobs/{digest}", timeout=5)
    assert r.status_code == 404 and error_code(r) == "BLOB_UNKNOWN"


def test_sha512_blobs_and_manifests(shared_registry: MoorageServer) -> None:
    repo = "api/sha512"
    data = os.urandom(70_000)
    digest = "sha512:" + hashlib.sha512(data).hexdigest()
    r = requests.post(
        f"{shared_registry.url}/v2/{repo}/blobs/uploads/",
        params={"digest": digest},
        data=data,
        timeout=5,
    )
    assert r.status_code == 201, r.text
    got = requests.get(f"{shared_registry.url}/v2/{repo}/blobs/{digest}", timeout=5)
    assert got.content == data and got.headers["Docker-Content-Digest"] == digest

    config = b'{"os":"linux"}'
    config_digest = "sha512:" + hashlib.sha512(config).hexdigest()
    requests.post(
        f"{shared_registry.url}/v2/{repo}/blobs/uploads/",
        params={"digest": config_digest},
        data=config,
        timeout=5,
    )
    body = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": len(config)},
            "layers": [
                {"mediaType": "application/octet-stream", "digest": digest, "size": len(data)}
            ],
        }
    ).encode()
    manifest_digest = "sha512:" + hashlib.sha512(body).hexdigest()
    r = put_manifest(shared_registry, repo, manifest_digest, body)
    assert r.status_code == 201, r.text
    assert r.headers["Docker-Content-Digest"] == manifest_digest
    assert (
        requests.get(
            f"{shared_registry.url}/v2/{repo}/manifests/{manifest_digest}", timeout=5
        ).content
        == body
    )


def test_same_blob_in_many_repositories_is_stored_once(shared_registry: MoorageServer) -> None:
    image = make_image(layer_count=2, seed="dedup")
    for i in range(3):
        push_image(shared_registry, f"dedup/copy{i}", "v1", image)
    files = shared_registry.blob_files()
    for digest in image.blob_digests:
        assert sum(1 for f in files if f == digest) == 1


def test_access_log_is_structured_and_keeps_credentials_out(registry: MoorageServer) -> None:
    secret = "s3cr3t-passw0rd-value"
    requests.get(f"{registry.url}/v2/", auth=("someone", secret), timeout=5)
    requests.get(
        f"{registry.url}/v2/",
        headers={"Authorization": f"Bearer {secret}"},
        params={"token": secret},
        timeout=5,
    )
    push_blob(registry, "log/check", b"hello")
    # A request's log line is written after its reply: wait for the POST's.
    entries = wait_for(
        lambda: (
            [e for e in registry.access_log() if e["method"] == "POST"] and registry.access_log()
        ),
        10,
        "the POST in the access log",
    )
    posts = [e for e in entries if e["method"] == "POST"]
    assert posts and posts[-1]["repository"] == "log/check" and posts[-1]["status"] == 201
    assert posts[-1]["bytes_in"] == 5
    gets = [e for e in entries if e["method"] == "GET" and e["path"] == "/v2/"]
    assert gets and all(e["bytes_out"] == 2 for e in gets)  # the body "{}", not the headers
    assert all(
        {"method", "path", "status", "bytes_out", "duration_ms"} <= e.keys() for e in entries
    )
    assert secret not in registry.log_text()
