"""The official OCI distribution-spec conformance suite, all four workflows."""

from __future__ import annotations

import os
import shutil
import subprocess
import xml.etree.ElementTree as ET

from tests.conftest import ARTIFACTS, require_tool
from tests.server import MoorageServer


def test_conformance_suite_passes_every_workflow(registry: MoorageServer) -> None:
    binary = require_tool("conformance.test")
    report = ARTIFACTS / "conformance"
    shutil.rmtree(report, ignore_errors=True)
    report.mkdir(parents=True)
    env = {
        **os.environ,
        "OCI_ROOT_URL": registry.url,
        "OCI_NAMESPACE": "conformance/main",
        "OCI_CROSSMOUNT_NAMESPACE": "conformance/crossmount",
        "OCI_TEST_PULL": "1",
        "OCI_TEST_PUSH": "1",
        "OCI_TEST_CONTENT_DISCOVERY": "1",
        "OCI_TEST_CONTENT_MANAGEMENT": "1",
        # Moorage mounts only from a named repository the caller may read.
        "OCI_AUTOMATIC_CROSSMOUNT": "0",
        "OCI_REPORT_DIR": str(report),
    }
    result = subprocess.run(
        [binary], cwd=report, env=env, capture_output=True, text=True, timeout=600
    )
    (report / "output.txt").write_text(result.stdout + result.stderr)

    suite = ET.parse(report / "junit.xml").getroot()
    cases = list(suite.iter("testcase"))
    failed = [
        c.get("name") for c in cases if c.find("failure") is not None or c.find("error") is not None
    ]
    passed = [c for c in cases if c.find("skipped") is None and c.get("name") not in failed]
    assert failed == [], f"conformance failures: {failed}"
    assert result.returncode == 0, result.stdout[-3000:]
    # Every workflow really ran: skips are only the suite's own conditional branches.
    assert len(passed) >= 70, f"only {len(passed)} specs ran"
    for workflow in ("Pull", "Push", "Content Discovery", "Content Management"):
        assert any(f"Tests {workflow} " in (c.get("name") or "") for c in passed), workflow
