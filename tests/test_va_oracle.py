"""The Advisor against its labels and against an independent oracle.

The labelled set (``tests/va_labelled.py``) holds real package databases in
real layers and real advisory records newer than the packages, with every
finding worked out by hand. Moorage's pure path (``index_layer`` ->
``overlay`` -> ``match``) must find exactly the labelled findings: precision
and recall both 1.0. osv-scanner v2.6.0 scans the same images (as docker
archives made by skopeo) offline from ``all.zip`` files of the same records;
every way it differs from Moorage must be one of ``EXPLAINED`` below, each
discussed in docs/vulnerability.md ("Where the oracle differs")."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from moorage.va.ecosystems import index_key, package_name
from moorage.va.layers import index_layer
from moorage.va.match import match
from moorage.va.model import Advisory, ImageContents, Package
from moorage.va.osv import from_osv
from moorage.va.overlay import overlay
from tests.oci_layout import sha256, write_layout
from tests.va_labelled import Labelled, all_records, labelled_images, write_osv_db

OSV_SCANNER = shutil.which("osv-scanner")

# (image, advisory, package) -> why the oracle reports it and Moorage does not
# (or the reverse, marked "moorage only"). Empty today: on this set they agree.
EXPLAINED: dict[tuple[str, str, str], str] = {}


class RecordLookup:
    """The ``AdvisoryLookup`` of a list of advisories, keyed as the store keys them."""

    def __init__(self, advisories: Sequence[Advisory]) -> None:
        self._by_key: dict[tuple[str, str], list[Advisory]] = {}
        for advisory in advisories:
            for entry in advisory.affected:
                key = index_key(entry.ecosystem, entry.name)
                if advisory not in self._by_key.setdefault(key, []):
                    self._by_key[key].append(advisory)

    def for_package(self, ecosystem: str, name: str) -> Sequence[Advisory]:
        return self._by_key.get(index_key(ecosystem, name), [])


@pytest.fixture(scope="module")
def labelled() -> list[Labelled]:
    return labelled_images()


@pytest.fixture(scope="module")
def lookup() -> RecordLookup:
    return RecordLookup([from_osv(record, source) for source, record in all_records()])


def contents(item: Labelled) -> ImageContents:
    layers = [index_layer(io.BytesIO(blob), sha256(blob)) for blob in item.image.layers]
    return overlay(layers)


def _identifiers(advisory_id: str, aliases: Sequence[str]) -> set[str]:
    return {advisory_id, *aliases}


def label_name(package: Package) -> str:
    """OS packages by their binary name (as the labels and the oracle's
    ``os_package_name`` give them), others by their ecosystem's full name."""
    return package.name if package.type.is_os else package_name(package)


def moorage_findings(item: Labelled, lookup: RecordLookup) -> set[tuple[str, str]]:
    """(label ID, package) for every match: the label's ID is the advisory's
    ID or one of its aliases (secdb's CVE behind ``ALPINE-CVE-…``)."""
    wanted = {e.advisory for e in item.expected + item.absent}
    found = set()
    for m in match(contents(item), lookup):
        names = _identifiers(m.advisory.id, m.advisory.aliases)
        label = next(iter(sorted(names & wanted)), m.advisory.id)
        found.add((label, label_name(m.package)))
    return found


def oracle_findings(item: Labelled, tmp: Path, db: Path) -> set[tuple[str, str]]:
    assert OSV_SCANNER is not None
    layout = write_layout(item.image, tmp / item.name)
    archive = tmp / f"{item.name}.tar"
    subprocess.run(
        [
            "skopeo",
            "copy",
            "-q",
            f"oci:{layout}:latest",
            f"docker-archive:{archive}:labelled/{item.name}:latest",
        ],
        check=True,
    )
    run = subprocess.run(
        [
            OSV_SCANNER,
            "scan",
            "image",
            "--archive",
            "--offline",
            "--offline-vulnerabilities",
            "--local-db-path",
            str(db),
            "--format",
            "json",
            str(archive),
        ],
        capture_output=True,
        text=True,
    )
    assert run.returncode in (0, 1), run.stderr  # 1: vulnerabilities were found
    report: dict[str, Any] = json.loads(run.stdout)
    wanted = {e.advisory for e in item.expected + item.absent}
    found = set()
    for result in report.get("results") or []:
        for package in result.get("packages") or []:
            for vuln in package.get("vulnerabilities") or []:
                names = _identifiers(vuln["id"], vuln.get("aliases") or vuln.get("upstream") or [])
                label = next(iter(sorted(names & wanted)), vuln["id"])
                # OS packages are named by source (as matched), the binary beside it
                name = package["package"].get("os_package_name") or package["package"]["name"]
                found.add((label, name))
    return found


def precision_recall(
    found: set[tuple[str, str, str]], expected: set[tuple[str, str, str]]
) -> tuple[float, float]:
    hits = len(found & expected)
    return (hits / len(found) if found else 1.0), (hits / len(expected) if expected else 1.0)


def test_labelled_findings_are_exactly_what_moorage_finds(
    labelled: list[Labelled], lookup: RecordLookup
) -> None:
    found_all: set[tuple[str, str, str]] = set()
    expected_all: set[tuple[str, str, str]] = set()
    for item in labelled:
        found = moorage_findings(item, lookup)
        found_all |= {(item.name, *key) for key in found}
        expected_all |= {(item.name, *key) for key in item.finding_keys()}
        absent = {(e.advisory, e.package) for e in item.absent}
        assert not found & absent, f"{item.name}: reported against its labels: {found & absent}"
    precision, recall = precision_recall(found_all, expected_all)
    assert (precision, recall) == (1.0, 1.0), (
        f"missed {sorted(expected_all - found_all)}, extra {sorted(found_all - expected_all)}"
    )


def test_fixed_versions_are_the_labelled_ones(
    labelled: list[Labelled], lookup: RecordLookup
) -> None:
    for item in labelled:
        fixed = {
            (label, label_name(m.package)): (m.package.version, m.fixed)
            for m in match(contents(item), lookup)
            for label in _identifiers(m.advisory.id, m.advisory.aliases)
        }
        for e in item.expected:
            installed, got = fixed[(e.advisory, e.package)]
            assert installed.removeprefix("v") == e.installed.removeprefix("v"), e
            assert (got or "").removeprefix("v") == (e.fixed or "").removeprefix("v"), e


@pytest.mark.skipif(
    OSV_SCANNER is None, reason="osv-scanner is built by scripts/install-test-deps.sh"
)
def test_moorage_differs_from_osv_scanner_only_as_explained(
    labelled: list[Labelled], lookup: RecordLookup, tmp_path: Path
) -> None:
    db = write_osv_db(tmp_path / "db")
    unexplained = []
    oracle_all: set[tuple[str, str, str]] = set()
    expected_all: set[tuple[str, str, str]] = set()
    for item in labelled:
        ours = moorage_findings(item, lookup)
        theirs = oracle_findings(item, tmp_path, db)
        oracle_all |= {(item.name, *key) for key in theirs}
        expected_all |= {(item.name, *key) for key in item.finding_keys()}
        for advisory, package in ours ^ theirs:
            if (item.name, advisory, package) not in EXPLAINED:
                side = "moorage only" if (advisory, package) in ours else "osv-scanner only"
                unexplained.append((item.name, advisory, package, side))
    assert not unexplained, f"differences not explained in docs/vulnerability.md: {unexplained}"
    # The oracle is scored too: where it agrees with the labels, the labels
    # were not written to fit Moorage.
    precision, recall = precision_recall(oracle_all, expected_all)
    assert recall == 1.0, sorted(expected_all - oracle_all)
    assert precision == 1.0 or EXPLAINED, sorted(oracle_all - expected_all)
