"""Software bills of materials for one platform of an image: CycloneDX 1.6
JSON (``cyclonedx-python-lib``) and SPDX 2.3 JSON (``spdx-tools``).

Both are functions of what was found and of the image alone, never of the
clock or of chance: the same contents give the same bytes, so an SBOM
attached again is the same referrer, and its signature stays valid. The
documents' times are the image's ``created`` (from its config); an image
that does not say when it was made gets the Unix epoch. CycloneDX's serial
number and SPDX's document namespace are derived from the image digest and
a hash of the contents.

Each package records the layer that brought it: in CycloneDX as the
``moorage:layer:digest`` property (beside ``moorage:path``, the file that
declared it), in SPDX in the package's ``sourceInfo``."""

from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cyclonedx.model import Property
from cyclonedx.model.bom import Bom, BomMetaData
from cyclonedx.model.component import Component, ComponentType
from cyclonedx.model.dependency import Dependency
from cyclonedx.output.json import JsonV1Dot6
from packageurl import PackageURL
from spdx_tools.spdx.jsonschema.document_converter import DocumentConverter
from spdx_tools.spdx.model.actor import Actor, ActorType
from spdx_tools.spdx.model.document import CreationInfo, Document
from spdx_tools.spdx.model.package import (
    ExternalPackageRef,
    ExternalPackageRefCategory,
    Package,
    PackagePurpose,
)
from spdx_tools.spdx.model.relationship import Relationship, RelationshipType
from spdx_tools.spdx.model.spdx_no_assertion import SpdxNoAssertion

from moorage import __version__
from moorage.va.model import ImageContents
from moorage.va.model import Package as FoundPackage

CYCLONEDX = "application/vnd.cyclonedx+json"
SPDX = "application/spdx+json"
FORMATS = {"cyclonedx": CYCLONEDX, "spdx": SPDX}
LAYER_PROPERTY = "moorage:layer:digest"
PATH_PROPERTY = "moorage:path"
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_SERIAL_NAMESPACE = uuid.UUID("5b0a3f1e-6c8e-4d53-9f43-6d6f6f726167")  # "moorag" in the tail


@dataclass(frozen=True)
class ImageRef:
    """Which image an SBOM describes. ``repository`` is ``namespace/name``,
    ``registry`` the host clients pull it from (empty: unknown), ``digest``
    the platform's image manifest, ``created`` the config's RFC 3339 time."""

    repository: str
    digest: str
    registry: str = ""
    created: str = ""
    platform: str = ""

    @property
    def purl(self) -> str:
        """``pkg:oci/<name>@<digest>?repository_url=...`` as the purl spec writes images."""
        qualifiers = (
            {"repository_url": f"{self.registry}/{self.repository}"} if self.registry else {}
        )
        if self.platform:
            qualifiers["arch"] = self.platform.split("/")[1] if "/" in self.platform else ""
        name = self.repository.rsplit("/", 1)[-1]
        return PackageURL(
            "oci", None, name, self.digest, {k: v for k, v in qualifiers.items() if v}
        ).to_string()

    @property
    def when(self) -> datetime:
        try:
            moment = datetime.fromisoformat(self.created.replace("Z", "+00:00"))
        except ValueError:
            return EPOCH
        return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _ordered(contents: ImageContents) -> list[FoundPackage]:
    return sorted(contents.packages, key=lambda p: (p.purl, p.found.path, p.layer))


def _fingerprint(image: ImageRef, contents: ImageContents) -> str:
    """A hash of everything an SBOM says: what its identifiers are made from."""
    parts: list[Any] = [image.repository, image.digest, image.registry, image.created]
    parts.append([contents.os.id, contents.os.version_id] if contents.os else None)
    parts += [[p.purl, p.found.path, p.layer] for p in _ordered(contents)]
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()


def cyclonedx(contents: ImageContents, image: ImageRef) -> bytes:
    """A CycloneDX 1.6 JSON BOM: the image as ``metadata.component``, the OS
    as an operating-system component, each package a library with its purl."""
    root = Component(
        name=image.repository,
        version=image.digest,
        type=ComponentType.CONTAINER,
        bom_ref=image.purl,
        purl=PackageURL.from_string(image.purl),
    )
    components: list[Component] = []
    if contents.os is not None:
        components.append(
            Component(
                name=contents.os.id,
                version=contents.os.version_id,
                type=ComponentType.OPERATING_SYSTEM,
                description=contents.os.pretty_name or None,
                bom_ref=f"os:{contents.os.id}@{contents.os.version_id}",
            )
        )
    seen: set[str] = set()
    for package in _ordered(contents):
        ref = package.purl if package.purl not in seen else f"{package.purl}#{package.found.path}"
        seen.add(ref)
        components.append(
            Component(
                name=package.name,
                version=package.version,
                group=package.found.namespace,
                type=ComponentType.LIBRARY,
                purl=PackageURL.from_string(package.purl),
                bom_ref=ref,
                properties=[
                    Property(name=LAYER_PROPERTY, value=package.layer),
                    Property(name=PATH_PROPERTY, value=package.found.path),
                ],
            )
        )
    # The image depends on everything in it, each of those on nothing known.
    # (Built whole: Bom.register_dependency searches the list on every call.)
    dependencies = [Dependency(c.bom_ref) for c in components]
    bom = Bom(
        serial_number=uuid.uuid5(_SERIAL_NAMESPACE, _fingerprint(image, contents)),
        metadata=BomMetaData(component=root, timestamp=image.when),
        components=components,
        dependencies=[Dependency(root.bom_ref, dependencies), *dependencies],
    )
    return JsonV1Dot6(bom).output_as_string(indent=2).encode()


def _spdx_id(n: int) -> str:
    return f"SPDXRef-Package-{n}"


def spdx_document(contents: ImageContents, image: ImageRef) -> Document:
    """The SPDX 2.3 document (``spdx-tools``' model): the image package the
    document describes, which contains the OS and every package; each
    package names its purl as a package-manager external reference."""
    fingerprint = _fingerprint(image, contents)
    host = image.registry or "moorage.invalid"
    info = CreationInfo(
        spdx_version="SPDX-2.3",
        spdx_id="SPDXRef-DOCUMENT",
        name=f"{image.repository}@{image.digest}",
        document_namespace=f"https://{host}/spdx/{image.repository}/{fingerprint}",
        creators=[Actor(ActorType.TOOL, f"moorage-{__version__}")],
        created=image.when,
    )

    def purl_ref(purl: str) -> list[ExternalPackageRef]:
        return [ExternalPackageRef(ExternalPackageRefCategory.PACKAGE_MANAGER, "purl", purl)]

    packages = [
        Package(
            "SPDXRef-Image",
            image.repository,
            SpdxNoAssertion(),
            version=image.digest,
            files_analyzed=False,
            external_references=purl_ref(image.purl),
            primary_package_purpose=PackagePurpose.CONTAINER,
        )
    ]
    relationships = [Relationship("SPDXRef-DOCUMENT", RelationshipType.DESCRIBES, "SPDXRef-Image")]
    if contents.os is not None:
        packages.append(
            Package(
                "SPDXRef-OperatingSystem",
                contents.os.id,
                SpdxNoAssertion(),
                version=contents.os.version_id,
                files_analyzed=False,
                description=contents.os.pretty_name or None,
                primary_package_purpose=PackagePurpose.OPERATING_SYSTEM,
            )
        )
        relationships.append(
            Relationship("SPDXRef-Image", RelationshipType.CONTAINS, "SPDXRef-OperatingSystem")
        )
    for n, package in enumerate(_ordered(contents), 1):
        packages.append(
            Package(
                _spdx_id(n),
                package.name,
                SpdxNoAssertion(),
                version=package.version,
                files_analyzed=False,
                source_info=f"layer {package.layer}, {package.found.path}",
                external_references=purl_ref(package.purl),
                primary_package_purpose=PackagePurpose.LIBRARY,
            )
        )
        relationships.append(Relationship("SPDXRef-Image", RelationshipType.CONTAINS, _spdx_id(n)))
    return Document(info, packages=packages, relationships=relationships)


def spdx(contents: ImageContents, image: ImageRef) -> bytes:
    """The SPDX 2.3 document as JSON."""
    converted = DocumentConverter().convert(  # type: ignore[no-untyped-call]
        spdx_document(contents, image)
    )
    return json.dumps(converted, indent=2).encode()


def render(contents: ImageContents, image: ImageRef, format: str) -> bytes:
    """``format`` "cyclonedx" or "spdx"; ValueError for anything else."""
    if format == "cyclonedx":
        return cyclonedx(contents, image)
    if format == "spdx":
        return spdx(contents, image)
    raise ValueError(f"unknown SBOM format {format!r}: use cyclonedx or spdx")


__all__ = [
    "CYCLONEDX",
    "FORMATS",
    "SPDX",
    "ImageRef",
    "cyclonedx",
    "render",
    "spdx",
    "spdx_document",
]
