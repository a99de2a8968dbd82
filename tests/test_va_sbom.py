"""SBOMs: CycloneDX 1.6 and SPDX 2.3 documents that their own libraries'
validators accept, attached to images as OCI referrers that the real ``oras``
CLI discovers and pulls, signed so that the real ``cosign verify`` accepts
them, and served by ``moorage cr sbom`` to whoever may pull the image.

The image contents are built here from values (package names and versions
as Debian 12 and PyPI ship them); the detectors and the overlay that find
them in real layers are tested in their own files."""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from packageurl import PackageURL
from spdx_tools.spdx.parser.json import json_parser
from spdx_tools.spdx.validation.document_validator import validate_full_spdx_document

from moorage.config import Settings
from moorage.metadata import RepoRef
from moorage.registry.artifacts import SbomService, load_signing_keys
from moorage.registry.errors import ManifestUnknown
from moorage.server import open_registry
from moorage.va.layers import layer_from_json
from moorage.va.model import (
    INDEXER_VERSION,
    FoundPackage,
    ImageContents,
    OSRelease,
    Package,
    PackageType,
)
from moorage.va.overlay import overlay
from moorage.va.overlay import purl as overlay_purl
from moorage.va.sbom import CYCLONEDX, SPDX, ImageRef, cyclonedx, spdx
from tests import va_images
from tests.conftest import require_tool
from tests.helpers import push_image, wait_for
from tests.iam_helpers import ADMIN_KEY, Api, push_image_with
from tests.oci_layout import (
    OCI_CONFIG,
    OCI_INDEX,
    OCI_LAYER,
    OCI_MANIFEST,
    Image,
    descriptor,
    sha256,
    tar_layer,
)
from tests.server import MOORAGE, MoorageServer, local_server

BASE = "sha256:" + "1" * 64
APP = "sha256:" + "2" * 64
CREATED = "2024-05-01T10:00:00Z"


def contents(extra: tuple[Package, ...] = ()) -> ImageContents:
    def deb(name: str, version: str, source: str) -> Package:
        purl = PackageURL(
            "deb", "debian", name, version, {"arch": "amd64", "distro": "debian-12"}
        ).to_string()
        found = FoundPackage(
            PackageType.DEB, name, version, "var/lib/dpkg/status", source_name=source, arch="amd64"
        )
        return Package(purl, found, BASE)

    requests_path = "usr/lib/python3/dist-packages/requests-2.28.1.dist-info/METADATA"
    return ImageContents(
        os=OSRelease("debian", "12", "Debian GNU/Linux 12 (bookworm)", (), "bookworm"),
        packages=(
            deb("libc6", "2.36-9+deb12u4", "glibc"),
            deb("libssl3", "3.0.11-1~deb12u2", "openssl"),
            Package(
                "pkg:pypi/requests@2.28.1",
                FoundPackage(PackageType.PYPI, "requests", "2.28.1", requests_path),
                APP,
            ),
            *extra,
        ),
        entries=(),
    )


IMAGE = ImageRef("team/app", "sha256:" + "a" * 64, "us.localhost:5000", CREATED)


def valid_cyclonedx(document: bytes) -> dict[str, Any]:
    errors = JsonStrictValidator(SchemaVersion.V1_6).validate_str(document.decode())
    assert errors is None, errors
    parsed: dict[str, Any] = json.loads(document)
    return parsed


def valid_spdx(document: bytes, tmp_path: Path) -> dict[str, Any]:
    path = tmp_path / "sbom.spdx.json"
    path.write_bytes(document)
    messages = validate_full_spdx_document(json_parser.parse_from_file(str(path)))
    assert messages == [], [m.validation_message for m in messages]
    parsed: dict[str, Any] = json.loads(document)
    return parsed


def test_cyclonedx_names_the_image_the_os_and_each_layer() -> None:
    bom = valid_cyclonedx(cyclonedx(contents(), IMAGE))
    assert bom["specVersion"] == "1.6"
    root = bom["metadata"]["component"]
    assert root["type"] == "container" and root["version"] == IMAGE.digest
    assert root["purl"].startswith("pkg:oci/app@sha256:" + "a" * 64)
    assert bom["metadata"]["timestamp"].startswith("2024-05-01T10:00:00")
    by_name = {c["name"]: c for c in bom["components"]}
    assert by_name["debian"]["type"] == "operating-system" and by_name["debian"]["version"] == "12"
    libc = by_name["libc6"]
    assert libc["purl"] == "pkg:deb/debian/libc6@2.36-9%2Bdeb12u4?arch=amd64&distro=debian-12"
    properties = {p["name"]: p["value"] for p in libc["properties"]}
    assert properties == {"moorage:layer:digest": BASE, "moorage:path": "var/lib/dpkg/status"}
    requests_layer = {p["name"]: p["value"] for p in by_name["requests"]["properties"]}
    assert requests_layer["moorage:layer:digest"] == APP
    image_deps = next(d for d in bom["dependencies"] if d["ref"] == root["bom-ref"])
    assert len(image_deps["dependsOn"]) == 4  # the OS and three packages


def test_spdx_has_purls_and_relationships(tmp_path: Path) -> None:
    document = valid_spdx(spdx(contents(), IMAGE), tmp_path)
    assert document["spdxVersion"] == "SPDX-2.3"
    assert document["creationInfo"]["created"] == CREATED
    packages = {p["SPDXID"]: p for p in document["packages"]}
    purls = {
        ref["referenceLocator"]
        for p in packages.values()
        for ref in p.get("externalRefs", [])
        if ref["referenceType"] == "purl"
    }
    assert "pkg:pypi/requests@2.28.1" in purls
    relations = {(r["spdxElementId"], r["relationshipType"], r["relatedSpdxElement"]) for r in
                 document["relationships"]}  # fmt: skip
    assert ("SPDXRef-DOCUMENT", "DESCRIBES", "SPDXRef-Image") in relations
    assert ("SPDXRef-Image", "CONTAINS", "SPDXRef-OperatingSystem") in relations
    contained = {r[2] for r in relations if r[:2] == ("SPDXRef-Image", "CONTAINS")}
    assert len(contained) == 4
    assert packages["SPDXRef-OperatingSystem"]["primaryPackagePurpose"] == "OPERATING_SYSTEM"


def test_same_contents_give_the_same_bytes() -> None:
    """No clock and no chance: serial number, namespace and times come from
    the image; an image without ``created`` is dated at the epoch."""
    for render in (cyclonedx, spdx):
        assert render(contents(), IMAGE) == render(contents(), IMAGE)
        reordered = ImageContents(contents().os, contents().packages[::-1], ())
        assert render(reordered, IMAGE) == render(contents(), IMAGE)
    undated = ImageRef("team/app", IMAGE.digest)
    assert json.loads(cyclonedx(contents(), undated))["metadata"]["timestamp"].startswith("1970")
    assert json.loads(spdx(contents(), undated))["creationInfo"]["created"].startswith("1970")
    other = ImageContents(contents().os, contents().packages[:2], ())
    first, second = json.loads(cyclonedx(contents(), IMAGE)), json.loads(cyclonedx(other, IMAGE))
    assert first["serialNumber"] != second["serialNumber"]


# A layer is attacker input: whatever names and versions its package databases
# declare, both documents stay valid.
names = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=40)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(name=names, version=names, path=names)
def test_hostile_package_names_still_validate(
    name: str, version: str, path: str, tmp_path: Path
) -> None:
    try:
        purl = overlay_purl(FoundPackage(PackageType.NPM, name, version, path), None)
    except ValueError:
        return  # no purl, so the overlay leaves the package out of every document
    odd = Package(purl, FoundPackage(PackageType.NPM, name, version, path), APP)
    twice = Package(purl, FoundPackage(PackageType.NPM, name, version, path + "/x"), APP)
    image = contents((odd, twice))
    bom = valid_cyclonedx(cyclonedx(image, IMAGE))
    assert len({c["bom-ref"] for c in bom["components"]}) == len(bom["components"])
    valid_spdx(spdx(image, IMAGE), tmp_path)


# -- attached to a real registry ------------------------------------------------


def image_with_created(seed: str) -> Image:
    layer = tar_layer({f"etc/{seed}": seed.encode()})
    config = json.dumps(
        {"architecture": "amd64", "os": "linux", "created": CREATED, "rootfs": {"type": "layers"}}
    ).encode()
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": descriptor(OCI_CONFIG, config),
            "layers": [descriptor(OCI_LAYER, layer)],
        }
    ).encode()
    return Image([layer], config, manifest)


def run(*args: str) -> str:
    result = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"{args}: {result.stdout}{result.stderr}"
    return result.stdout


def attach(server: MoorageServer, repo: str, digest: str, **service: Any) -> Any:
    """``SbomService.attach_sbom`` in this process, on the server's own database
    and blob store, as the indexer of a replica would call it."""
    parts = open_registry(
        Settings(data_dir=str(server.data_dir)), prepare=False, processes_share_sqlite=True
    )
    sboms = SbomService(parts.blobs, parts.manifests, **service)
    try:
        return asyncio.run(sboms.attach_sbom(RepoRef("global", repo), digest, contents()))
    finally:
        parts.db.shutdown()
        parts.metadata.engine.dispose()


@pytest.fixture(scope="module")
def open_registry_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MoorageServer]:
    tmp = tmp_path_factory.mktemp("sbom")
    server = local_server(tmp).start()
    yield server
    server.stop()


def test_oras_discovers_and_pulls_the_attached_sbom(
    open_registry_server: MoorageServer, tmp_path: Path
) -> None:
    server = open_registry_server
    oras = require_tool("oras")
    digest = push_image(server, "team/oras", "v1", image_with_created("oras"))
    attached = attach(server, "team/oras", digest)
    assert set(attached.referrers) == {CYCLONEDX, SPDX} and attached.signatures == ()
    assert attach(server, "team/oras", digest) == attached  # the same contents: the same referrers

    ref = f"{server.host}/team/oras@{digest}"
    listed = json.loads(
        run(oras, "discover", "--plain-http", "--format", "json", "--artifact-type", CYCLONEDX, ref)
    )
    found = [m["digest"] for m in listed.get("referrers", listed.get("manifests", []))]
    assert found == [attached.referrers[CYCLONEDX]]

    out = tmp_path / "pulled"
    run(oras, "pull", "--plain-http", "-o", str(out),
        f"{server.host}/team/oras@{attached.referrers[CYCLONEDX]}")  # fmt: skip
    pulled = (out / "sbom.cdx.json").read_bytes()
    image = ImageRef("team/oras", digest, created=CREATED)
    assert pulled == cyclonedx(contents(), image)
    assert valid_cyclonedx(pulled)["metadata"]["timestamp"].startswith("2024-05-01")


def test_attaching_to_an_unknown_image_writes_nothing(open_registry_server: MoorageServer) -> None:
    server = open_registry_server
    before = server.snapshot()
    with pytest.raises(ManifestUnknown):
        attach(server, "team/none", "sha256:" + "b" * 64)
    assert server.snapshot() == before


def test_signed_sbom_verifies_with_cosign(
    open_registry_server: MoorageServer, tmp_path: Path
) -> None:
    server = open_registry_server
    cosign = require_tool("cosign")
    key = ec.generate_private_key(ec.SECP256R1())
    key_file, public = tmp_path / "key.pem", tmp_path / "pub.pem"
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    digest = push_image(server, "signed/app", "v1", image_with_created("signed"))
    keys = load_signing_keys({"signed": str(key_file)})
    attached = attach(server, "signed/app", digest, signing_keys=keys)
    assert len(attached.signatures) == 2
    again = attach(server, "signed/app", digest, signing_keys=keys)
    assert again == attached  # deterministic ECDSA: signing again adds no layer

    for manifest in attached.referrers.values():
        out = run(
            cosign, "verify", "--key", str(public), "--insecure-ignore-tlog",
            "--allow-http-registry", "--allow-insecure-registry",
            f"{server.host}/signed/app@{manifest}",
        )  # fmt: skip
        assert json.loads(out)[0]["critical"]["image"]["docker-manifest-digest"] == manifest
    # Another key does not verify it; the image itself is not what was signed.
    other = tmp_path / "other.pub"
    other.write_bytes(
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    for key_path, target in ((other, attached.referrers[CYCLONEDX]), (public, digest)):
        refused = subprocess.run(
            [cosign, "verify", "--key", str(key_path), "--insecure-ignore-tlog",
             "--allow-http-registry", "--allow-insecure-registry",
             f"{server.host}/signed/app@{target}"],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert refused.returncode != 0


def test_a_namespace_without_a_key_is_not_signed_with_another_ones(
    open_registry_server: MoorageServer, tmp_path: Path
) -> None:
    server = open_registry_server
    key_file = tmp_path / "key.pem"
    key_file.write_bytes(
        ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    digest = push_image(server, "plain/app", "v1", image_with_created("plain"))
    keys = load_signing_keys({"us-south/plain": str(key_file), "elsewhere": str(key_file)})
    assert attach(server, "plain/app", digest, signing_keys=keys).signatures == ()


def test_a_signing_key_that_is_not_p256_is_refused(tmp_path: Path) -> None:
    key_file = tmp_path / "p384.pem"
    key_file.write_bytes(
        ec.generate_private_key(ec.SECP384R1()).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    with pytest.raises(ValueError, match="P-256"):
        load_signing_keys({"team": str(key_file)})
    with pytest.raises(ValueError, match="cannot read"):
        load_signing_keys({"team": str(tmp_path / "missing.pem")})


# -- moorage cr sbom, through the management API -----------------------------


@pytest.fixture(scope="module")
def token_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MoorageServer]:
    tmp = tmp_path_factory.mktemp("sbom-api")
    env = {"MOORAGE_BOOTSTRAP_APIKEY": ADMIN_KEY, "MOORAGE_VA_INDEX": "0"}
    server = local_server(tmp, auth="token", env=env).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def indexing_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MoorageServer]:
    tmp = tmp_path_factory.mktemp("sbom-index")
    env = {"MOORAGE_BOOTSTRAP_APIKEY": ADMIN_KEY}
    server = local_server(tmp, auth="token", env=env).start()
    yield server
    server.stop()


def push_as_admin(server: MoorageServer, repo: str, image: Image) -> None:
    token = requests.get(
        f"http://{server.host_for('us.localhost')}/oauth/token",
        params={"service": "us.localhost", "scope": f"repository:{repo}:pull,push"},
        auth=("iamapikey", ADMIN_KEY),
        timeout=10,
    ).json()["token"]
    headers = {"Authorization": f"Bearer {token}"}
    pushed = push_image_with(server, "us.localhost", repo, "v1", image, headers)
    assert pushed.status_code == 201, pushed.text


def cli(server: MoorageServer, key: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {"MOORAGE_SERVER": f"http://{server.host_for('localhost')}", "MOORAGE_APIKEY": key,
           "MOORAGE_REGION": "us-south", "PATH": "/usr/bin:/bin"}  # fmt: skip
    return subprocess.run(
        [str(MOORAGE), "cr", *args], capture_output=True, text=True, timeout=60, env=env
    )


def test_cr_sbom_prints_the_attached_document_to_who_may_pull(
    token_server: MoorageServer, tmp_path: Path
) -> None:
    """On a server that does not index (``[va] index = false``), the attached
    referrer is what there is."""
    server = token_server
    admin = Api(server, ADMIN_KEY)
    admin.namespace("us-south", "shop")
    account = admin.call("GET", "/iam/me")["account_id"]
    image = image_with_created("web")
    push_as_admin(server, "shop/web", image)
    digest = image.manifest_digest
    parts = open_registry(
        Settings(data_dir=str(server.data_dir), database_url=server.database_url),
        prepare=False,
        processes_share_sqlite=True,
    )
    try:
        sboms = SbomService(
            parts.blobs, parts.manifests, registry_host={"us-south": "us.localhost"}
        )
        asyncio.run(sboms.attach_sbom(RepoRef("us-south", "shop/web"), digest, contents(), account))
    finally:
        parts.db.shutdown()
        parts.metadata.engine.dispose()
    expected = ImageRef("shop/web", digest, "us.localhost", CREATED)

    out = tmp_path / "web.spdx.json"
    done = cli(server, ADMIN_KEY, "sbom", "us.localhost/shop/web:v1", "--format", "spdx",
               "--output", str(out))  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert out.read_bytes() == spdx(contents(), expected)
    printed = cli(server, ADMIN_KEY, "sbom", f"shop/web@{digest}")
    assert printed.returncode == 0, printed.stderr
    assert json.loads(printed.stdout) == json.loads(cyclonedx(contents(), expected))

    bad = cli(server, ADMIN_KEY, "sbom", "shop/web:v1", "--format", "swid")
    assert bad.returncode == 2 and "cyclonedx or spdx" in bad.stderr

    # Pull on another namespace only, or another account's administrator: neither sees it.
    admin.namespace("us-south", "other")
    reader = admin.service_key(
        "reader", "Reader", region="us-south", resource_type="namespace", resource="other"
    )
    rival = admin.call(
        "POST", "/iam/accounts", {"name": "rival", "admin_email": "admin@rival.test"}, expect=201
    )["apikey"]
    for key in (reader, rival):
        denied = cli(server, key, "sbom", "shop/web:v1")
        assert denied.returncode != 0 and "sbom" not in denied.stdout.lower(), denied
    assert "not found" in cli(server, rival, "sbom", "shop/web:v1").stderr

    r = admin.request("GET", "/cr/us-south/sbom/shop/web:nope")
    assert r.status_code == 404 and "error" in r.json()


def test_cr_sbom_is_computed_from_the_index_not_from_what_a_client_attached(
    indexing_server: MoorageServer,
) -> None:
    """Alpine 3.20.3's real package database (tests/data/va/os, va-os's
    fixture), indexed by the server on push: the SBOM names its packages with
    the layer that brought them. A referrer a writer pushed claiming to be the
    image's SBOM does not replace it."""
    server = indexing_server
    admin = Api(server, ADMIN_KEY)
    admin.namespace("us-south", "alpn")
    image = va_images.image([va_images.ALPINE_LAYER])
    push_as_admin(server, "alpn/base", image)
    digest = image.manifest_digest

    def indexed() -> bool:
        report = admin.call("GET", f"/cr/us-south/va/alpn/base@{digest}")
        return all(p["status"] != "PENDING" for p in report["platforms"])

    wait_for(indexed, 60, "the image to be indexed")
    forged = json.dumps({"bomFormat": "CycloneDX", "specVersion": "1.6", "components": []})
    token = requests.get(
        f"http://{server.host_for('us.localhost')}/oauth/token",
        params={"service": "us.localhost", "scope": "repository:alpn/base:pull,push"},
        auth=("iamapikey", ADMIN_KEY),
        timeout=10,
    ).json()["token"]
    base = f"http://{server.host_for('us.localhost')}/v2/alpn/base"
    headers = {"Authorization": f"Bearer {token}"}
    for blob in (forged.encode(), b"{}"):
        r = requests.post(f"{base}/blobs/uploads/", params={"digest": sha256(blob)}, data=blob,
                          headers=headers, timeout=10)  # fmt: skip
        assert r.status_code == 201
    referrer = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": CYCLONEDX,
        "config": descriptor("application/vnd.oci.empty.v1+json", b"{}"),
        "layers": [descriptor(CYCLONEDX, forged.encode())],
        "subject": {"mediaType": OCI_MANIFEST, "digest": digest, "size": len(image.manifest)},
        "annotations": {"dev.moorage.sbom.generator": "moorage"},
    }
    r = requests.put(f"{base}/manifests/{sha256(json.dumps(referrer).encode())}",
                     data=json.dumps(referrer).encode(),
                     headers={**headers, "Content-Type": OCI_MANIFEST}, timeout=10)  # fmt: skip
    assert r.status_code == 201, r.text

    printed = cli(server, ADMIN_KEY, "sbom", "alpn/base:v1")
    assert printed.returncode == 0, printed.stderr
    bom = valid_cyclonedx(printed.stdout.strip().encode())
    by_name = {c["name"]: c for c in bom["components"]}
    assert by_name["alpine"]["type"] == "operating-system"
    assert by_name["alpine"]["version"] == "3.20.3"
    layer = descriptor(OCI_LAYER, va_images.ALPINE_LAYER)["digest"]
    openssl = by_name["libssl3"]
    assert openssl["purl"].startswith("pkg:apk/alpine/libssl3@3.3.2-r0")
    assert {p["name"]: p["value"] for p in openssl["properties"]}["moorage:layer:digest"] == layer

    # The indexer's attachment of the same contents is the same document, byte for byte.
    settings = Settings(data_dir=str(server.data_dir), database_url=server.database_url)
    parts = open_registry(settings, prepare=False, processes_share_sqlite=True)
    try:
        [stored] = parts.va.stored_reports("us-south", "alpn/base", digest)
        layers = [layer_from_json(parts.va.layer(d, INDEXER_VERSION) or {}) for d in stored.layers]
        sboms = SbomService.configured(settings, parts.blobs, parts.manifests, parts.regions)
        account = admin.call("GET", "/iam/me")["account_id"]
        repo = RepoRef("us-south", "alpn/base")
        coro = sboms.attach_sbom(repo, digest, overlay(layers), account, stored.platform)
        attached = asyncio.run(coro)
    finally:
        parts.db.shutdown()
        parts.metadata.engine.dispose()
    sbom_manifest = requests.get(
        f"{base}/manifests/{attached.referrers[CYCLONEDX]}", headers=headers, timeout=10
    ).json()
    blob = requests.get(
        f"{base}/blobs/{sbom_manifest['layers'][0]['digest']}", headers=headers, timeout=10
    )
    assert printed.stdout == blob.text + "\n"

    spdx_doc = cli(server, ADMIN_KEY, "sbom", f"alpn/base@{digest}", "--format", "spdx")
    assert spdx_doc.returncode == 0, spdx_doc.stderr
    names = {p["name"] for p in json.loads(spdx_doc.stdout)["packages"]}
    assert {"alpine", "libssl3", "libcrypto3", "alpn/base"} <= names


def test_each_platform_of_an_index_has_its_own_sbom(token_server: MoorageServer) -> None:
    """Attached per platform manifest; ``--platform`` picks one through the index."""
    server = token_server
    admin = Api(server, ADMIN_KEY)
    admin.namespace("us-south", "multi")
    account = admin.call("GET", "/iam/me")["account_id"]
    amd64, arm64 = image_with_created("amd64"), image_with_created("arm64")
    push_as_admin(server, "multi/app", amd64)
    push_as_admin(server, "multi/app", arm64)
    token = requests.get(
        f"http://{server.host_for('us.localhost')}/oauth/token",
        params={"service": "us.localhost", "scope": "repository:multi/app:pull,push"},
        auth=("iamapikey", ADMIN_KEY),
        timeout=10,
    ).json()["token"]
    index = va_images.index({"linux/amd64": amd64, "linux/arm64": arm64})
    r = requests.put(
        f"http://{server.host_for('us.localhost')}/v2/multi/app/manifests/v1",
        data=index,
        headers={"Authorization": f"Bearer {token}", "Content-Type": OCI_INDEX},
        timeout=10,
    )
    assert r.status_code == 201, r.text
    parts = open_registry(
        Settings(data_dir=str(server.data_dir), database_url=server.database_url),
        prepare=False,
        processes_share_sqlite=True,
    )
    arm_contents = ImageContents(None, contents().packages[2:], ())
    try:
        sboms = SbomService(parts.blobs, parts.manifests)
        repo = RepoRef("us-south", "multi/app")
        for img, found, arch in ((amd64, contents(), "amd64"), (arm64, arm_contents, "arm64")):
            coro = sboms.attach_sbom(repo, img.manifest_digest, found, account, f"linux/{arch}")
            asyncio.run(coro)
    finally:
        parts.db.shutdown()
        parts.metadata.engine.dispose()

    arm = cli(server, ADMIN_KEY, "sbom", "multi/app:v1", "--platform", "linux/arm64")
    assert arm.returncode == 0, arm.stderr
    bom = json.loads(arm.stdout)
    assert bom["metadata"]["component"]["version"] == arm64.manifest_digest
    assert "arch=arm64" in bom["metadata"]["component"]["purl"]
    assert [c["name"] for c in bom["components"]] == ["requests"]
    unnamed = cli(server, ADMIN_KEY, "sbom", "multi/app:v1")
    assert unnamed.returncode != 0 and "linux/amd64, linux/arm64" in unnamed.stderr
