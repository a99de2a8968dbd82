"""``GET /api/v1/cr/<region>/sbom/<namespace>/<repo>@<digest>?format=&platform=``:
an image's SBOM (CycloneDX, the default, or SPDX), as ``moorage cr sbom``
prints it. Authorized as a pull of that repository (``ManagementApi._may``:
another account's namespace is not found). The document is computed from
the Advisor's index of the image when it has one, else it is the referrer
attached to the image (``registry.artifacts.SbomService.sbom``)."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from moorage.http.management import ApiCall, ManagementApi, Operation
from moorage.iam import roles
from moorage.iam.errors import Invalid
from moorage.regions import RegionMap
from moorage.registry import BlobService, ManifestService
from moorage.registry.artifacts import SbomService, registry_hosts
from moorage.va.sbom import FORMATS
from moorage.va.service import VulnerabilityService


class SbomApi:
    def __init__(self, management: ManagementApi, sboms: SbomService) -> None:
        self.management = management
        self.sboms = sboms

    def operations(self) -> list[Operation]:
        return [Operation("GET", "/cr/{region}/sbom/{image:.+}", self.get_sbom)]

    async def get_sbom(self, c: ApiCall) -> Any:
        """An image's SBOM: ?format=cyclonedx (CycloneDX 1.6 JSON, default) or spdx (SPDX 2.3)."""
        api = self.management
        wanted = c.query("format") or "cyclonedx"
        if wanted not in FORMATS:
            raise Invalid(f"format must be one of {', '.join(FORMATS)}, not {wanted[:40]!r}")
        region = api._region(c)
        repo, reference, namespace = api._image(region, c.path("image"))
        await api._may(c.principal, roles.PULL, region, namespace)
        stored = await self.sboms.sbom(repo, reference, FORMATS[wanted], c.query("platform"))
        return web.Response(
            body=stored.document,
            content_type=stored.media_type,
            headers={"X-Moorage-Image": stored.image},
        )


def install(
    management: ManagementApi | None,
    blobs: BlobService,
    manifests: ManifestService,
    regions: RegionMap,
    va: VulnerabilityService | None,
) -> None:
    """Add the SBOM route to the management API (before its routes are built)."""
    if management is None:
        return
    sboms = SbomService(
        blobs, manifests, registry_host=registry_hosts(regions), va=va.va if va else None
    )
    management.operations.extend(SbomApi(management, sboms).operations())
