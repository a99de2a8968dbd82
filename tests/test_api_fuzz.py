"""schemathesis against the management API's own OpenAPI document: requests
generated from its schemas, valid and not, signed in as an administrator. No
answer is a 500, and a refused request changes nothing in the database."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.generation.modes import GenerationMode

from tests.iam_helpers import ADMIN_KEY, Api, all_rows
from tests.server import MoorageServer


@pytest.fixture(scope="module")
def api_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MoorageServer]:
    tmp = tmp_path_factory.mktemp("fuzz-api")
    server = MoorageServer(
        tmp / "data", tmp / "server.log", auth="token", env={"MOORAGE_BOOTSTRAP_APIKEY": ADMIN_KEY}
    ).start()
    admin = Api(server, ADMIN_KEY)
    admin.namespace("us-south", "fuzzed")
    admin.service_key("fuzz-sid", "Reader")
    yield server
    server.stop()


def test_management_api_fuzzed(api_server: MoorageServer) -> None:
    """Each operation in turn (schemathesis's pytest plugin cannot yet run under
    this pytest, so the operations' strategies are driven directly)."""
    schema = schemathesis.openapi.from_url(f"{api_server.url}/api/v1/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) > 30

    modes = (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
    for operation, mode in itertools.product(operations, modes):

        @given(case=operation.as_strategy(mode))
        @settings(
            max_examples=20,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            database=None,
        )
        def fuzz(case: schemathesis.Case) -> None:
            before = all_rows(api_server)
            response = case.call(base_url=api_server.url, auth=("iamapikey", ADMIN_KEY), timeout=30)
            where = f"{case.method} {case.formatted_path}"
            assert response.status_code < 500, f"{where}: {response.text}"
            if 400 <= response.status_code < 500:
                assert response.json()["error"]["message"], where
                assert all_rows(api_server) == before, where

        fuzz()


def test_paths_no_operation_matches_answer_in_the_api_error_shape(
    api_server: MoorageServer,
) -> None:
    """A path under /api/ that no operation's pattern matches (a newline in an
    image name, an unknown path, a method the path does not take) is refused as
    the management API refuses, never in the registry's OCI shape."""
    auth = ("iamapikey", ADMIN_KEY)
    for path in ("/api/v1/cr/us-south/va/%0A", "/api/v1/cr/0/sbom/%0A", "/api/unknown"):
        r = requests.get(api_server.url + path, auth=auth, timeout=10)
        assert r.status_code == 404, path
        assert r.json()["error"]["code"] == "not_found", path
    r = requests.put(f"{api_server.url}/api/v1/cr/us-south/namespaces", auth=auth, timeout=10)
    assert r.status_code == 405
    assert r.json()["error"]["code"] == "method_not_allowed"
    assert set(r.headers["Allow"].split(", ")) >= {"GET", "POST"}
