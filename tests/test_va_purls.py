"""Packages are named by purl, as packageurl-python writes them: the
distribution as namespace and ``distro`` qualifier for OS packages, each
language ecosystem's own type and namespace otherwise."""

from __future__ import annotations

import pytest

from moorage.va.model import FoundPackage, OSRelease, PackageType
from moorage.va.overlay import purl

DEBIAN = OSRelease(id="debian", version_id="12")
UBUNTU = OSRelease(id="ubuntu", version_id="22.04")
ALPINE = OSRelease(id="alpine", version_id="3.20.3")
ALMA = OSRelease(id="almalinux", version_id="9.4")


@pytest.mark.parametrize(
    ("found", "os", "expected"),
    [
        (
            FoundPackage(PackageType.DEB, "curl", "7.88.1-10+deb12u5", "p", arch="amd64"),
            DEBIAN,
            "pkg:deb/debian/curl@7.88.1-10%2Bdeb12u5?arch=amd64&distro=debian-12",
        ),
        (
            FoundPackage(PackageType.DEB, "libc6", "2.35-0ubuntu3.8", "p", arch="amd64"),
            UBUNTU,
            "pkg:deb/ubuntu/libc6@2.35-0ubuntu3.8?arch=amd64&distro=ubuntu-22.04",
        ),
        (
            FoundPackage(PackageType.DEB, "curl", "7.88.1-10", "p"),
            None,
            "pkg:deb/debian/curl@7.88.1-10",
        ),
        (
            FoundPackage(PackageType.APK, "musl", "1.2.5-r0", "p", arch="x86_64"),
            ALPINE,
            "pkg:apk/alpine/musl@1.2.5-r0?arch=x86_64&distro=3.20.3",
        ),
        (
            FoundPackage(PackageType.RPM, "openssl", "1:3.0.7-27.el9", "p", arch="x86_64"),
            ALMA,
            "pkg:rpm/almalinux/openssl@3.0.7-27.el9?arch=x86_64&distro=almalinux-9&epoch=1",
        ),
        (
            FoundPackage(PackageType.RPM, "bash", "5.1.8-9.el9", "p", arch="x86_64"),
            ALMA,
            "pkg:rpm/almalinux/bash@5.1.8-9.el9?arch=x86_64&distro=almalinux-9",
        ),
        (FoundPackage(PackageType.PYPI, "Django", "4.2.1", "p"), DEBIAN, "pkg:pypi/django@4.2.1"),
        (
            FoundPackage(PackageType.NPM, "core", "17.0.0", "p", namespace="@angular"),
            None,
            "pkg:npm/%40angular/core@17.0.0",
        ),
        (
            FoundPackage(PackageType.GOLANG, "golang.org/x/net", "v0.17.0", "p"),
            None,
            "pkg:golang/golang.org/x/net@v0.17.0",
        ),
        (
            FoundPackage(
                PackageType.MAVEN, "log4j-core", "2.14.1", "p", namespace="org.apache.logging.log4j"
            ),
            None,
            "pkg:maven/org.apache.logging.log4j/log4j-core@2.14.1",
        ),
        (FoundPackage(PackageType.CARGO, "regex", "1.5.4", "p"), None, "pkg:cargo/regex@1.5.4"),
    ],
)
def test_purls(found: FoundPackage, os: OSRelease | None, expected: str) -> None:
    assert purl(found, os) == expected
