"""Signatures in the registry, written by the real clients: cosign (the .sig tag,
OCI 1.1 referrers, sigstore bundles), skopeo signing with GPG through the
signature extension, and notation-shaped referrers. Listed with who signed,
checked against a namespace's signers, guarded by roles, and deleted with
their image."""

from __future__ import annotations

import base64
import datetime
import json
import os
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.conftest import require_tool
from tests.iam_helpers import ADMIN_KEY, Api, all_rows, bearer, skopeo
from tests.oci_layout import OCI_MANIFEST, make_image, sha256, write_layout
from tests.server import MoorageServer, ensure_region_hosts

US = "us.localhost"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MoorageServer]:
    ensure_region_hosts()
    tmp = tmp_path_factory.mktemp("signatures")
    started = MoorageServer(
        tmp / "data", tmp / "server.log", auth="token", env={"MOORAGE_BOOTSTRAP_APIKEY": ADMIN_KEY}
    ).start()
    yield started
    started.stop()


class World:
    """An account with a namespace, a writer, a reader, and a signed image."""

    def __init__(self, server: MoorageServer, tmp: Path) -> None:
        self.server, self.tmp = server, tmp
        self.host = server.host_for(US)
        self.admin = Api(server, ADMIN_KEY)
        self.admin.namespace("us-south", "signed")
        self.writer = self.admin.service_key("sig-writer", "Writer", region="us-south")
        self.reader = self.admin.service_key("sig-reader", "Reader", region="us-south")
        self.layout = write_layout(make_image(1, 2048, "signed"), tmp / "layout")
        self.gnupg = tmp / "gnupg"
        self.gnupg.mkdir(mode=0o700)
        self.cosign_dir = tmp / "cosign"
        self.cosign_dir.mkdir()
        self.docker_config = tmp / "docker"
        self.docker_config.mkdir()

    def push(
        self, ref: str, creds: str | None = None, *extra: str
    ) -> subprocess.CompletedProcess[str]:
        return skopeo(
            "copy",
            "--dest-tls-verify=false",
            "--dest-creds",
            creds or f"iamapikey:{self.writer}",
            *extra,
            f"oci:{self.layout}:latest",
            f"docker://{self.host}/{ref}",
        )

    def digest(self, ref: str) -> str:
        out = skopeo(
            "inspect",
            "--tls-verify=false",
            "--creds",
            f"iamapikey:{self.reader}",
            f"docker://{self.host}/{ref}",
        )
        assert out.returncode == 0, out.stderr
        return str(json.loads(out.stdout)["Digest"])

    def cosign(
        self, key: str, *args: str, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """cosign with ``key``'s credentials for this registry (a docker config)."""
        auth = base64.b64encode(f"iamapikey:{key}".encode()).decode()
        (self.docker_config / "config.json").write_text(
            json.dumps({"auths": {self.host: {"auth": auth}}})
        )
        return subprocess.run(
            [require_tool("cosign"), *args],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=self.cosign_dir,
            env={
                **os.environ,
                "DOCKER_CONFIG": str(self.docker_config),
                "COSIGN_PASSWORD": "",
                **(env or {}),
            },
        )

    def sign(
        self, key: str, image: str, *mode: str, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return self.cosign(
            key,
            "sign",
            "-y",
            "--key",
            "cosign.key",
            "--tlog-upload=false",
            "--allow-http-registry",
            "--allow-insecure-registry",
            *mode,
            image,
            env=env,
        )

    def gpg(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["gpg", "--batch", *args],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "GNUPGHOME": str(self.gnupg)},
        )

    def inspect(self, image: str, api: Api | None = None) -> dict[str, Any]:
        result: dict[str, Any] = (api or self.admin).call(
            "GET", f"/cr/us-south/image?image={image}", expect=200
        )
        return result


@pytest.fixture(scope="module")
def world(server: MoorageServer, tmp_path_factory: pytest.TempPathFactory) -> World:
    require_tool("skopeo")
    require_tool("gpg")
    w = World(server, tmp_path_factory.mktemp("world"))
    generated = w.cosign(w.writer, "generate-key-pair")
    assert generated.returncode == 0, generated.stderr
    (w.tmp / "keyparams").write_text(
        "%no-protection\nKey-Type: RSA\nKey-Length: 2048\nName-Real: Release\n"
        "Name-Email: release@example.com\nExpire-Date: 0\n%commit\n"
    )
    assert w.gpg("--gen-key", str(w.tmp / "keyparams")).returncode == 0
    return w


def kinds(listing: dict[str, Any]) -> list[tuple[str, bool | None]]:
    return sorted((s["kind"], s["verified"]) for s in listing["signatures"])


def test_cosign_signatures_in_all_three_forms_are_listed_and_checked(world: World) -> None:
    assert world.push("signed/cosigned:v1").returncode == 0
    digest = world.digest("signed/cosigned:v1")
    image = f"{world.host}/signed/cosigned@{digest}"
    for mode, env in (
        ((), None),
        (("--registry-referrers-mode=oci-1-1",), {"COSIGN_EXPERIMENTAL": "1"}),
        (("--new-bundle-format",), None),
    ):
        signed = world.sign(world.writer, image, *mode, env=env)
        assert signed.returncode == 0, signed.stderr
    listed = world.inspect("signed/cosigned:v1")
    assert listed["digest"] == digest
    assert kinds(listed) == [("cosign", None), ("cosign", None), ("cosign bundle", None)]
    stored = sorted(s["stored_as"].split(" ")[0] for s in listed["signatures"])
    assert stored == ["referrer", "referrer", "tag"]

    # Once the namespace trusts the key, every one of them is checked and named.
    public_key = (world.cosign_dir / "cosign.pub").read_text()
    world.admin.call(
        "POST",
        "/cr/us-south/namespaces/signed/signers",
        {"name": "release-key", "public_key": public_key},
        expect=201,
    )
    listed = world.inspect("signed/cosigned:v1")
    assert kinds(listed) == [("cosign", True), ("cosign", True), ("cosign bundle", True)]
    assert {s["signer"] for s in listed["signatures"]} == {"release-key"}
    bundle = next(s for s in listed["signatures"] if s["kind"] == "cosign bundle")
    assert bundle["identity"].startswith("key sha256:")


def test_a_signature_moved_to_another_image_does_not_count(world: World) -> None:
    assert world.push("signed/original:v1").returncode == 0
    digest = world.digest("signed/original:v1")
    assert world.sign(world.writer, f"{world.host}/signed/original@{digest}").returncode == 0
    # A second image in the same repository, given the first one's .sig manifest.
    other = make_image(1, 1024, "other")
    headers = bearer(world.server, US, world.writer, "repository:signed/original:pull,push")
    base = f"http://{world.host}/v2/signed/original"
    for blob in (other.config, *other.layers):
        requests.post(
            f"{base}/blobs/uploads/",
            params={"digest": sha256(blob)},
            data=blob,
            headers=headers,
            timeout=10,
        )
    put = requests.put(
        f"{base}/manifests/v2",
        data=other.manifest,
        headers={**headers, "Content-Type": OCI_MANIFEST},
        timeout=10,
    )
    assert put.status_code == 201
    sig = requests.get(
        f"{base}/manifests/{digest.replace(':', '-')}.sig",
        headers={**headers, "Accept": OCI_MANIFEST},
        timeout=10,
    )
    moved = requests.put(
        f"{base}/manifests/{other.manifest_digest.replace(':', '-')}.sig",
        data=sig.content,
        headers={**headers, "Content-Type": OCI_MANIFEST},
        timeout=10,
    )
    assert moved.status_code == 201
    listed = world.inspect(f"signed/original@{other.manifest_digest}")
    assert [s["verified"] for s in listed["signatures"]] == [False]
    assert digest in listed["signatures"][0]["problem"]


def test_skopeo_gpg_signatures_go_through_the_extension(world: World, tmp_path: Path) -> None:
    registries = tmp_path / "registries.d"  # no lookaside: only the extension can take it
    registries.mkdir()
    env_gnupg = {"GNUPGHOME": str(world.gnupg)}
    signed = subprocess.run(
        [
            "skopeo",
            "copy",
            "--dest-tls-verify=false",
            "--dest-creds",
            f"iamapikey:{world.writer}",
            "--registries.d",
            str(registries),
            "--sign-by",
            "release@example.com",
            f"oci:{world.layout}:latest",
            f"docker://{world.host}/signed/gpg:v1",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **env_gnupg},
    )
    assert signed.returncode == 0, signed.stderr
    listed = world.inspect("signed/gpg:v1")
    assert [s["kind"] for s in listed["signatures"]] == ["simple signing"]
    fingerprint = world.gpg("--list-keys", "--with-colons", "release@example.com").stdout
    fingerprint = next(
        line.split(":")[9] for line in fingerprint.splitlines() if line.startswith("fpr")
    )
    assert listed["signatures"][0]["identity"] == f"GPG key {fingerprint}"

    armored = world.gpg("--armor", "--export", "release@example.com").stdout
    world.admin.call(
        "POST",
        "/cr/us-south/namespaces/signed/signers",
        {"name": "release-gpg", "public_key": armored},
        expect=201,
    )
    listed = world.inspect("signed/gpg:v1")
    assert (
        listed["signatures"][0]["signer"] == "release-gpg" and listed["signatures"][0]["verified"]
    )

    # And skopeo, reading through the extension, accepts the image under a signedBy policy.
    exported = subprocess.run(
        ["gpg", "--batch", "--export", "release@example.com"],
        capture_output=True,
        env={**os.environ, **env_gnupg},
        timeout=60,
    ).stdout
    (tmp_path / "release.gpg").write_bytes(exported)
    policy = tmp_path / "policy.json"
    policy.write_text(
        json.dumps(
            {
                "default": [{"type": "reject"}],
                "transports": {
                    "docker": {
                        world.host: [
                            {
                                "type": "signedBy",
                                "keyType": "GPGKeys",
                                "keyPath": str(tmp_path / "release.gpg"),
                            }
                        ]
                    }
                },
            }
        )
    )
    with tempfile.TemporaryDirectory() as out:
        pulled = skopeo(
            "--policy",
            str(policy),
            "--registries.d",
            str(registries),
            "copy",
            "--src-tls-verify=false",
            "--src-creds",
            f"iamapikey:{world.reader}",
            f"docker://{world.host}/signed/gpg:v1",
            f"dir:{out}",
        )
    assert pulled.returncode == 0, pulled.stderr
    with tempfile.TemporaryDirectory() as out:
        unsigned = skopeo(
            "--policy",
            str(policy),
            "--registries.d",
            str(registries),
            "copy",
            "--src-tls-verify=false",
            "--src-creds",
            f"iamapikey:{world.reader}",
            f"docker://{world.host}/signed/cosigned:v1",
            f"dir:{out}",
        )
    assert unsigned.returncode != 0 and "signature" in unsigned.stderr.lower()


def _notation_envelope() -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "notation signer")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.RFC822Name("signer@example.com")]), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    from cryptography.hazmat.primitives.serialization import Encoding

    chain = [base64.b64encode(cert.public_bytes(Encoding.DER)).decode()]
    return json.dumps(
        {"payload": "e30", "protected": "e30", "header": {"x5c": chain}, "signature": "AA"}
    ).encode()


def test_notation_signatures_are_stored_and_listed_as_referrers(world: World) -> None:
    assert world.push("signed/notated:v1").returncode == 0
    digest = world.digest("signed/notated:v1")
    headers = bearer(world.server, US, world.writer, "repository:signed/notated:pull,push")
    base = f"http://{world.host}/v2/signed/notated"
    envelope, empty = _notation_envelope(), b"{}"
    for blob in (envelope, empty):
        r = requests.post(
            f"{base}/blobs/uploads/",
            params={"digest": sha256(blob)},
            data=blob,
            headers=headers,
            timeout=10,
        )
        assert r.status_code == 201
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": "application/vnd.cncf.notary.signature",
            "config": {
                "mediaType": "application/vnd.oci.empty.v1+json",
                "digest": sha256(empty),
                "size": 2,
            },
            "layers": [
                {
                    "mediaType": "application/jose+json",
                    "digest": sha256(envelope),
                    "size": len(envelope),
                }
            ],
            "subject": {"mediaType": OCI_MANIFEST, "digest": digest, "size": 1},
        }
    ).encode()
    put = requests.put(
        f"{base}/manifests/{sha256(manifest)}",
        data=manifest,
        headers={**headers, "Content-Type": OCI_MANIFEST},
        timeout=10,
    )
    assert put.status_code == 201, put.text
    listed = world.inspect("signed/notated:v1")
    assert [(s["kind"], s["identity"]) for s in listed["signatures"]] == [
        ("notation", "certificate signer@example.com")
    ]


def test_signatures_need_writer_to_write_reader_to_read_and_manager_to_delete(
    world: World, server: MoorageServer
) -> None:
    assert world.push("signed/guarded:v1").returncode == 0
    digest = world.digest("signed/guarded:v1")
    refused = world.sign(world.reader, f"{world.host}/signed/guarded@{digest}")
    assert refused.returncode != 0
    assert world.inspect("signed/guarded:v1")["signatures"] == []

    signed = subprocess.run(
        ["gpg", "--batch", "--output", "-", "--sign", "--local-user", "release@example.com"],
        input=json.dumps(
            {
                "critical": {
                    "image": {"docker-manifest-digest": digest},
                    "identity": {"docker-reference": "x"},
                    "type": "atomic container signature",
                }
            }
        ).encode(),
        capture_output=True,
        env={**os.environ, "GNUPGHOME": str(world.gnupg)},
        timeout=60,
    ).stdout
    body = {
        "schemaVersion": 2,
        "type": "atomic",
        "name": f"{digest}@{'a' * 32}",
        "content": base64.b64encode(signed).decode(),
    }
    url = f"http://{world.host}/extensions/v2/signed/guarded/signatures/{digest}"
    as_reader = bearer(server, US, world.reader, "repository:signed/guarded:pull,push")
    assert requests.put(url, json=body, headers=as_reader, timeout=10).status_code == 401
    assert requests.get(url, headers=as_reader, timeout=10).json() == {"signatures": []}
    other = world.admin.call(
        "POST", "/iam/accounts", {"name": "sig-other", "admin_email": "x@sig.test"}, 201
    )
    outsider = bearer(server, US, other["apikey"], "repository:signed/guarded:pull,push,delete")
    assert requests.put(url, json=body, headers=outsider, timeout=10).status_code == 401
    assert requests.get(url, headers=outsider, timeout=10).status_code == 401

    as_writer = bearer(server, US, world.writer, "repository:signed/guarded:pull,push,delete")
    before = all_rows(server)
    for bad in (
        b"not json",
        b"[]",
        json.dumps({**body, "schemaVersion": 1}).encode(),
        json.dumps({**body, "name": "sha256:" + "0" * 64 + "@x"}).encode(),
        json.dumps({**body, "name": f"{digest}@../../etc"}).encode(),
        json.dumps({**body, "content": "!!!"}).encode(),
        json.dumps({**body, "content": base64.b64encode(b"\x00" * 64).decode()}).encode(),
    ):
        r = requests.put(url, data=bad, headers=as_writer, timeout=10)
        assert r.status_code == 400, (bad[:60], r.text)
    elsewhere = url.replace(digest, "sha256:" + "1" * 64)
    assert requests.put(elsewhere, json=body, headers=as_writer, timeout=10).status_code in (
        400,
        404,
    )
    assert all_rows(server) == before
    assert requests.put(url, json=body, headers=as_writer, timeout=10).status_code == 201
    assert requests.put(url, json=body, headers=as_writer, timeout=10).status_code == 409
    assert [
        s["name"] for s in requests.get(url, headers=as_reader, timeout=10).json()["signatures"]
    ] == [body["name"]]
    # Deleting needs Manager: the writer's token carries no delete.
    assert (
        requests.delete(
            url, params={"name": body["name"]}, headers=as_writer, timeout=10
        ).status_code
        == 401
    )
    as_admin = bearer(server, US, ADMIN_KEY, "repository:signed/guarded:pull,push,delete")
    assert (
        requests.delete(
            url, params={"name": body["name"]}, headers=as_admin, timeout=10
        ).status_code
        == 202
    )
    assert requests.get(url, headers=as_reader, timeout=10).json() == {"signatures": []}


def test_deleting_an_image_deletes_its_signatures(world: World, server: MoorageServer) -> None:
    assert world.push("signed/doomed:v1").returncode == 0
    digest = world.digest("signed/doomed:v1")
    image = f"{world.host}/signed/doomed@{digest}"
    assert world.sign(world.writer, image).returncode == 0
    assert world.sign(world.writer, image, "--new-bundle-format").returncode == 0
    assert len(world.inspect("signed/doomed:v1")["signatures"]) == 2
    world.admin.call("DELETE", "/cr/us-south/image?image=signed/doomed:v1", expect=200)
    headers = bearer(server, US, ADMIN_KEY, "repository:signed/doomed:pull")
    base = f"http://{world.host}/v2/signed/doomed"
    assert requests.get(f"{base}/tags/list", headers=headers, timeout=10).json()["tags"] == []
    assert (
        requests.get(f"{base}/referrers/{digest}", headers=headers, timeout=10).json()["manifests"]
        == []
    )


def _trust_release_key(world: World) -> None:
    public_key = (world.cosign_dir / "cosign.pub").read_text()
    r = world.admin.request(
        "POST",
        "/cr/us-south/namespaces/signed/signers",
        {"name": "release-key", "public_key": public_key},
    )
    assert r.status_code in (201, 409), r.text


def test_attestations_are_listed_as_attestations_never_as_signatures(world: World) -> None:
    _trust_release_key(world)
    assert world.push("signed/attested:v1").returncode == 0
    digest = world.digest("signed/attested:v1")
    image = f"{world.host}/signed/attested@{digest}"
    (world.cosign_dir / "failed.json").write_text(json.dumps({"result": "FAILED"}))
    for mode in (("--new-bundle-format",), ()):
        attested = world.cosign(
            world.writer,
            "attest",
            "-y",
            "--key",
            "cosign.key",
            "--tlog-upload=false",
            "--allow-http-registry",
            "--allow-insecure-registry",
            "--type",
            "https://example.com/test-result/v1",
            "--predicate",
            "failed.json",
            *mode,
            image,
        )
        assert attested.returncode == 0, attested.stderr
    listed = world.inspect("signed/attested:v1")["signatures"]
    assert sorted((s["kind"], s["verified"], s["predicate_type"]) for s in listed) == [
        ("cosign attestation", True, "https://example.com/test-result/v1"),
        ("cosign attestation", True, "https://example.com/test-result/v1"),
    ]
    assert sorted(s["stored_as"].split(" ")[0] for s in listed) == ["referrer", "tag"]
    # A real signature beside them is listed as one, and only it.
    assert world.sign(world.writer, image, "--new-bundle-format").returncode == 0
    kinds_now = sorted(s["kind"] for s in world.inspect("signed/attested:v1")["signatures"])
    assert kinds_now == ["cosign attestation", "cosign attestation", "cosign bundle"]


def test_only_manager_may_remove_a_signature_by_overwriting_its_tag(
    world: World, server: MoorageServer
) -> None:
    _trust_release_key(world)
    assert world.push("signed/kept:v1").returncode == 0
    digest = world.digest("signed/kept:v1")
    image = f"{world.host}/signed/kept@{digest}"
    assert world.sign(world.writer, image).returncode == 0
    tag = digest.replace(":", "-") + ".sig"
    base = f"http://{world.host}/v2/signed/kept"
    as_writer = bearer(server, US, world.writer, "repository:signed/kept:pull,push,delete")
    signed = requests.get(
        f"{base}/manifests/{tag}", headers={**as_writer, "Accept": OCI_MANIFEST}, timeout=10
    ).content
    document = json.loads(signed)
    before = all_rows(server)
    for changed in (
        {**document, "layers": []},
        {**document, "layers": [{**document["layers"][0], "annotations": {}}]},
    ):
        put = requests.put(
            f"{base}/manifests/{tag}",
            data=json.dumps(changed).encode(),
            headers={**as_writer, "Content-Type": OCI_MANIFEST},
            timeout=10,
        )
        assert put.status_code == 403, put.text
        assert put.json()["errors"][0]["code"] == "DENIED"
    # Nor by moving the tag with the management API (a Writer may tag).
    moved = Api(server, world.writer).request(
        "POST",
        "/cr/us-south/image-tags",
        {"source": "signed/kept:v1", "target": f"signed/kept:{tag}"},
    )
    assert moved.status_code == 403, moved.text
    # Nor by deleting the tag, the manifest it names, or a blob of it: delete is Manager's.
    sig_digest = sha256(signed)
    for target in (f"manifests/{tag}", f"manifests/{sig_digest}"):
        gone = requests.delete(f"{base}/{target}", headers=as_writer, timeout=10)
        assert gone.status_code == 401, gone.text
    payload = document["layers"][0]["digest"]
    assert (
        requests.delete(f"{base}/blobs/{payload}", headers=as_writer, timeout=10).status_code == 401
    )
    assert all_rows(server) == before
    # cosign adds a signature by pushing the manifest again with one more layer: a
    # Writer's right. (With another key: cosign skips a second one by the same key.)
    if not (world.cosign_dir / "second.key").exists():
        made = world.cosign(world.writer, "generate-key-pair", "--output-key-prefix", "second")
        assert made.returncode == 0, made.stderr
    second = world.cosign(
        world.writer,
        "sign",
        "-y",
        "--key",
        "second.key",
        "--tlog-upload=false",
        "--allow-http-registry",
        "--allow-insecure-registry",
        image,
    )
    assert second.returncode == 0, second.stderr
    listed = world.inspect("signed/kept:v1")["signatures"]
    assert [(s["kind"], s["verified"]) for s in listed] == [("cosign", True), ("cosign", None)]
    # A Manager (a token with delete) may replace it.
    as_admin = bearer(server, US, ADMIN_KEY, "repository:signed/kept:pull,push,delete")
    put = requests.put(
        f"{base}/manifests/{tag}",
        data=json.dumps({**document, "layers": []}).encode(),
        headers={**as_admin, "Content-Type": OCI_MANIFEST},
        timeout=10,
    )
    assert put.status_code == 201, put.text
    assert world.inspect("signed/kept:v1")["signatures"] == []
