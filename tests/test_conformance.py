"""The official OCI distribution-spec conformance suite, all four workflows."""

from __future__ import annotations

import os
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

from tests.conftest import ARTIFACTS, require_tool
from tests.iam_helpers import ADMIN_KEY, Api
from tests.server import MoorageServer, ensure_region_hosts


def run_suite(root_url: str, report: Path, **extra: str) -> None:
    binary = require_tool("conformance.test")
    shutil.rmtree(report, ignore_errors=True)
    report.mkdir(parents=True)
    env = {
        **os.environ,
        **extra,
        "OCI_ROOT_URL": root_url,
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


def test_conformance_suite_passes_every_workflow(registry: MoorageServer) -> None:
    run_suite(registry.url, ARTIFACTS / "conformance")


def test_conformance_suite_through_the_token_flow(tmp_path: Path) -> None:
    """The suite signs in as ``iamapikey`` with an API key on a regional domain."""
    ensure_region_hosts()
    registry = MoorageServer(
        tmp_path / "data",
        tmp_path / "log",
        auth="token",
        env={"MOORAGE_BOOTSTRAP_APIKEY": ADMIN_KEY},
    ).start()
    try:
        admin = Api(registry, ADMIN_KEY)
        admin.namespace("us-south", "conformance")
        key = admin.service_key(
            "conformance",
            "Manager",
            region="us-south",
            resource_type="namespace",
            resource="conformance",
        )
        run_suite(
            f"http://{registry.host_for('us.localhost')}",
            ARTIFACTS / "conformance-token",
            OCI_USERNAME="iamapikey",
            OCI_PASSWORD=key,
        )
        assert key not in registry.log_text()
    finally:
        registry.stop()
