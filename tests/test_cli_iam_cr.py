"""The seed's workflows with the ``moorage iam`` and ``moorage cr`` commands,
against a real server, ending in real pulls."""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import require_tool
from tests.iam_helpers import ADMIN_KEY, skopeo
from tests.oci_layout import make_image, write_layout
from tests.server import MOORAGE, MoorageServer, ensure_region_hosts


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MoorageServer]:
    ensure_region_hosts()
    tmp = tmp_path_factory.mktemp("cli")
    config = tmp / "moorage.toml"
    config.write_text("[iam]\nservice_id_limit = 4\n")
    registry = MoorageServer(
        tmp / "data",
        tmp / "server.log",
        ("--config", str(config)),
        auth="token",
        env={"MOORAGE_BOOTSTRAP_APIKEY": ADMIN_KEY},
    )
    registry.start()
    yield registry
    registry.stop()


@pytest.fixture(scope="module")
def profile_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("config")


def cli(profile: Path, *args: str, ok: bool = True, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MOORAGE_")}
    result = subprocess.run(
        [str(MOORAGE), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**clean, "MOORAGE_CONFIG_DIR": str(profile), **env},
    )
    if ok:
        assert result.returncode == 0, f"moorage {' '.join(args)}: {result.stderr}"
    else:
        assert result.returncode != 0, f"moorage {' '.join(args)} should fail"
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("FAILED: "), result.stderr
        assert "Traceback" not in result.stderr
    return result


def as_json(result: subprocess.CompletedProcess[str]) -> object:
    return json.loads(result.stdout)


def test_seed_workflow(server: MoorageServer, profile_dir: Path, tmp_path: Path) -> None:
    url = f"http://localhost:{server.port}"
    cli(profile_dir, "login", "--server", url, "--apikey", ADMIN_KEY)
    profile = profile_dir / "profile.json"
    assert json.loads(profile.read_text())["server"] == url
    assert oct(profile.stat().st_mode & 0o777) == "0o600"

    out = cli(profile_dir, "cr", "region-set", "us-south").stdout
    assert f"us.localhost:{server.port}" in out
    api = as_json(cli(profile_dir, "cr", "api", "--output", "json"))
    assert api["Registry"] == f"us.localhost:{server.port}"  # type: ignore[index]

    cli(profile_dir, "cr", "namespace-add", "team-cli")
    names = as_json(cli(profile_dir, "cr", "namespaces", "--output", "json"))
    assert [n["name"] for n in names] == ["team-cli"]  # type: ignore[union-attr,index]
    assert "team-cli" in cli(profile_dir, "cr", "namespace-list").stdout
    failed = cli(profile_dir, "cr", "namespace-add", "team-cli", ok=False)
    assert "already exists" in failed.stderr

    # The seed's service ID recipe: a service ID, a Reader policy, an API key.
    cli(
        profile_dir,
        "iam",
        "service-id-create",
        "mycluster-default-id",
        "--description",
        "Service ID for the registry in cluster mycluster namespace default",
    )
    cli(
        profile_dir,
        "iam",
        "service-policy-create",
        "mycluster-default-id",
        "--roles",
        "Reader",
        "--service-name",
        "container-registry",
        "--region",
        "us-south",
        "--resource-type",
        "namespace",
        "--resource",
        "team-cli",
    )
    created = cli(
        profile_dir,
        "iam",
        "service-api-key-create",
        "mycluster-default-key",
        "mycluster-default-id",
        "--description",
        "API key for mycluster",
    ).stdout
    assert "Please preserve the API key! It cannot be retrieved after it's created." in created
    reader_key = next(
        line.split()[-1] for line in created.splitlines() if line.startswith("API Key")
    )
    policies = as_json(
        cli(profile_dir, "iam", "service-policies", "mycluster-default-id", "--output", "json")
    )
    assert policies[0]["roles"] == ["Reader"]  # type: ignore[index]
    keys = as_json(
        cli(profile_dir, "iam", "service-api-keys", "mycluster-default-id", "--output", "json")
    )
    assert [k["name"] for k in keys] == ["mycluster-default-key"]  # type: ignore[union-attr,index]
    assert "apikey" not in keys[0]  # type: ignore[operator,index]

    layout = write_layout(make_image(2, 2048, "cli"), tmp_path / "layout")
    host = f"us.localhost:{server.port}"
    pushed = skopeo(
        "copy",
        "--dest-tls-verify=false",
        "--dest-creds",
        f"iamapikey:{ADMIN_KEY}",
        f"oci:{layout}:latest",
        f"docker://{host}/team-cli/app:v1",
    )
    assert pushed.returncode == 0, pushed.stderr
    images = as_json(cli(profile_dir, "cr", "images", "--output", "json"))
    assert [(i["repository"], i["tag"]) for i in images] == [("team-cli/app", "v1")]  # type: ignore[union-attr,index]
    table = cli(profile_dir, "cr", "image-list").stdout
    for column in (
        "REPOSITORY",
        "TAG",
        "DIGEST",
        "NAMESPACE",
        "CREATED",
        "SIZE",
        "SECURITY STATUS",
    ):
        assert column in table
    cli(profile_dir, "cr", "image-tag", "team-cli/app:v1", "team-cli/copy:v2")
    inspect = as_json(cli(profile_dir, "cr", "image-inspect", f"{host}/team-cli/copy:v2"))
    assert inspect["digest"] == images[0]["digest"]  # type: ignore[index]

    # cr login writes the key into an auth file that real clients use.
    authfile = tmp_path / "auth.json"
    cli(profile_dir, "cr", "login", "--authfile", str(authfile), MOORAGE_APIKEY=reader_key)
    assert host in json.loads(authfile.read_text())["auths"]
    with tempfile.TemporaryDirectory() as out:
        pulled = skopeo(
            "copy",
            "--src-tls-verify=false",
            "--authfile",
            str(authfile),
            f"docker://{host}/team-cli/copy:v2",
            f"dir:{out}",
        )
    assert pulled.returncode == 0, pulled.stderr

    cli(profile_dir, "cr", "image-rm", "team-cli/app:v1")
    assert as_json(cli(profile_dir, "cr", "images", "--output", "json")) == [
        i
        for i in as_json(cli(profile_dir, "cr", "images", "--output", "json"))  # type: ignore[union-attr]
        if i["repository"] == "team-cli/copy"
    ]


def test_registry_token_commands(server: MoorageServer, profile_dir: Path) -> None:
    cli(
        profile_dir,
        "login",
        "--server",
        f"http://localhost:{server.port}",
        "--apikey",
        ADMIN_KEY,
        "--region",
        "us-south",
    )
    added = as_json(
        cli(
            profile_dir, "cr", "token-add", "--description", "ci", "--readwrite", "--output", "json"
        )
    )
    listed = as_json(cli(profile_dir, "cr", "token-list", "--output", "json"))
    assert [t["id"] for t in listed] == [added["id"]]  # type: ignore[index,union-attr]
    assert listed[0]["readwrite"] is True  # type: ignore[index]
    value = cli(profile_dir, "cr", "token-get", added["id"]).stdout.strip()  # type: ignore[index]
    assert value == added["token"]  # type: ignore[index]
    cli(profile_dir, "cr", "token-rm", added["id"], "--force")  # type: ignore[index]
    assert as_json(cli(profile_dir, "cr", "token-list", "--output", "json")) == []
    cli(profile_dir, "cr", "token-get", added["id"], ok=False)  # type: ignore[index]


def test_bad_input_is_one_line_and_changes_nothing(
    server: MoorageServer, profile_dir: Path
) -> None:
    cli(profile_dir, "login", "--server", f"http://localhost:{server.port}", "--apikey", ADMIN_KEY)
    before = cli(profile_dir, "iam", "service-ids", "--output", "json").stdout
    cli(profile_dir, "iam", "service-id-create", "bad-roles")
    assert (
        "Readr"
        in cli(
            profile_dir, "iam", "service-policy-create", "bad-roles", "--roles", "Readr", ok=False
        ).stderr
    )
    cli(profile_dir, "iam", "service-policy-create", "no-such-id", "--roles", "Reader", ok=False)
    cli(
        profile_dir,
        "iam",
        "service-policy-create",
        "bad-roles",
        "--roles",
        "Reader",
        "--region",
        "mars-north",
        ok=False,
    )
    cli(
        profile_dir,
        "iam",
        "service-policy-create",
        "bad-roles",
        "--roles",
        "Reader",
        "--resource-type",
        "namespace",
        ok=False,
    )
    cli(profile_dir, "iam", "service-id-create", "x" * 101, ok=False)
    cli(profile_dir, "iam", "service-id-create", "bad-roles", ok=False)  # duplicate
    cli(profile_dir, "cr", "namespace-add", "ab", ok=False)  # too short
    cli(profile_dir, "cr", "namespace-add", "UPPER-case", ok=False)
    cli(profile_dir, "cr", "region-set", "mars-north", ok=False)
    cli(profile_dir, "iam", "api-key-lock", "ApiKey-unknown", ok=False)
    cli(profile_dir, "cr", "image-rm", "team-cli/nothing:here", ok=False)
    assert (
        as_json(cli(profile_dir, "iam", "service-policies", "bad-roles", "--output", "json")) == []
    )
    after = as_json(cli(profile_dir, "iam", "service-ids", "--output", "json"))
    assert [s["name"] for s in after] == sorted(  # type: ignore[union-attr,index]
        [s["name"] for s in json.loads(before)] + ["bad-roles"]
    )
    cli(profile_dir, "cr", "namespaces", ok=False, MOORAGE_APIKEY="not-a-valid-key")
    cli(profile_dir, "cr", "namespaces", ok=False, MOORAGE_SERVER="http://127.0.0.1:1")


def test_service_id_limit_names_the_limit(server: MoorageServer, profile_dir: Path) -> None:
    cli(profile_dir, "login", "--server", f"http://localhost:{server.port}", "--apikey", ADMIN_KEY)
    existing = len(as_json(cli(profile_dir, "iam", "service-ids", "--output", "json")))  # type: ignore[arg-type]
    for i in range(4 - existing):
        cli(profile_dir, "iam", "service-id-create", f"fill-{i}")
    failed = cli(profile_dir, "iam", "service-id-create", "one-too-many", ok=False)
    assert "limit of 4 service IDs" in failed.stderr


def test_user_with_password_signs_in_to_the_registry(
    server: MoorageServer, profile_dir: Path, tmp_path: Path
) -> None:
    require_tool("skopeo")
    cli(profile_dir, "login", "--server", f"http://localhost:{server.port}", "--apikey", ADMIN_KEY)
    cli(profile_dir, "iam", "user-create", "dev@example.com", "--password", "correct horse battery")
    cli(
        profile_dir,
        "iam",
        "user-policy-create",
        "dev@example.com",
        "--service-name",
        "container-registry",
        "--roles",
        "Reader,Writer",
    )
    layout = write_layout(make_image(1, 512, "user"), tmp_path / "layout")
    host = f"us.localhost:{server.port}"
    ok = skopeo(
        "copy",
        "--dest-tls-verify=false",
        "--dest-creds",
        "dev@example.com:correct horse battery",
        f"oci:{layout}:latest",
        f"docker://{host}/team-cli/user:v1",
    )
    assert ok.returncode == 0, ok.stderr
    wrong = skopeo(
        "copy",
        "--dest-tls-verify=false",
        "--dest-creds",
        "dev@example.com:wrong",
        f"oci:{layout}:latest",
        f"docker://{host}/team-cli/user:v2",
    )
    assert wrong.returncode != 0
    assert "correct horse battery" not in server.log_text()
