"""[storage] driver = "s3": settings from the file and the environment, each
mistake one clear line and exit status 2 at start-up, before serving."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import requests

from tests.helpers import error_code, push_blob
from tests.seaweed import ACCESS_KEY, SECRET_KEY, SeaweedFS, shared_seaweed
from tests.server import MoorageServer
from tests.test_cli import moorage

NO_S3_ENV = {k: "" for k in os.environ if k.startswith(("MOORAGE_S3_", "AWS_ACCESS", "AWS_SECRET"))}


def one_error(stderr: str) -> str:
    """The one line that says what is wrong (log lines aside), and no traceback."""
    assert "Traceback" not in stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, stderr
    return errors[0]


def serve(tmp_path: Path, config: str, **env: str) -> tuple[int, str]:
    path = tmp_path / "moorage.toml"
    path.write_text(config)
    result = moorage(
        "serve",
        "--config",
        str(path),
        "--data",
        str(tmp_path / "data"),
        "--port",
        "1",
        env={**NO_S3_ENV, "MOORAGE_STORAGE_DRIVER": "", **env},
    )
    return result.returncode, result.stderr


@pytest.mark.parametrize(
    ("s3", "message"),
    [
        ("", 'storage driver "s3" needs [storage.s3] endpoint'),
        ('endpoint = "s3.example.com"\n', "endpoint must look like http(s)://host[:port]"),
        ('endpoint = "http://127.0.0.1:9"\n', 'storage driver "s3" needs [storage.s3] bucket'),
        (
            'endpoint = "http://127.0.0.1:9"\nbucket = "Bad_Name"\n',
            "is not a valid bucket name",
        ),
        (
            'endpoint = "http://127.0.0.1:9"\nbucket = "b01"\naccess_key = "k"\n',
            "storage.s3 needs access_key and secret_key",
        ),
        (
            'endpoint = "http://127.0.0.1:9"\nbucket = "b01"\naccess_key = "k"\n'
            'secret_key = "s"\npart_size = 1024\n',
            "part_size must be between 5 MiB",
        ),
        (
            'endpoint = "https://127.0.0.1:9"\nbucket = "b01"\naccess_key = "k"\n'
            'secret_key = "s"\nca_bundle = "/nonexistent/ca.pem"\n',
            "ca_bundle '/nonexistent/ca.pem' is not a readable file",
        ),
    ],
)
def test_each_mistake_is_one_line(tmp_path: Path, s3: str, message: str) -> None:
    code, stderr = serve(tmp_path, f'[storage]\ndriver = "s3"\n[storage.s3]\n{s3}')
    assert code == 2, stderr
    assert one_error(stderr) and message in one_error(stderr)


def test_unknown_driver(tmp_path: Path) -> None:
    code, stderr = serve(tmp_path, '[storage]\ndriver = "gcs"\n')
    assert code == 2 and "unknown storage driver 'gcs'" in stderr


def test_a_store_that_refuses_is_one_line_at_start_up(tmp_path: Path) -> None:
    seaweed = shared_seaweed()
    bucket = seaweed.new_bucket()
    base = f'[storage]\ndriver = "s3"\n[storage.s3]\nendpoint = "{seaweed.endpoint}"\n'
    code, stderr = serve(
        tmp_path,
        base + f'bucket = "{bucket}"\naccess_key = "{ACCESS_KEY}"\nsecret_key = "not-the-secret"\n',
    )
    assert code == 2 and "error: storage: S3 bucket" in one_error(stderr), stderr
    assert "not-the-secret" not in stderr
    code, stderr = serve(
        tmp_path,
        base + f'bucket = "no-such-bucket-here"\naccess_key = "{ACCESS_KEY}"\n'
        f'secret_key = "{SECRET_KEY}"\n',
    )
    assert code == 2 and "does not exist" in one_error(stderr)
    code, stderr = serve(
        tmp_path,
        '[storage]\ndriver = "s3"\n[storage.s3]\nendpoint = "http://127.0.0.1:9"\n'
        f'bucket = "{bucket}"\naccess_key = "a"\nsecret_key = "b"\n',
    )
    assert code == 2 and "unreachable" in stderr.lower(), stderr


def test_settings_from_the_file_with_keys_from_the_aws_environment(tmp_path: Path) -> None:
    seaweed = shared_seaweed()
    bucket = seaweed.new_bucket()
    config = tmp_path / "moorage.toml"
    config.write_text(
        f'[storage]\ndriver = "s3"\n[storage.s3]\nendpoint = "{seaweed.endpoint}/"\n'
        f'bucket = "{bucket}"\nprefix = "/registry/"\n'
    )
    server = MoorageServer(
        tmp_path / "data",
        tmp_path / "log",
        ("--config", str(config)),
        storage="filesystem",  # the file says s3; the helper adds nothing
        env={
            **NO_S3_ENV,
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        },
    ).start()
    try:
        digest = push_blob(server, "cfg/s3", b"in the bucket")
    finally:
        server.stop()
    hex_ = digest.split(":")[1]
    assert seaweed.read(bucket, f"registry/blobs/sha256/{hex_[:2]}/{hex_}") == b"in the bucket"
    assert not (tmp_path / "data" / "blobs").exists()


def test_a_store_that_goes_away_is_503_and_health_says_so(tmp_path: Path) -> None:
    seaweed = SeaweedFS(tmp_path / "seaweed").start()
    server = None
    try:
        bucket = seaweed.new_bucket()
        server = MoorageServer(
            tmp_path / "data",
            tmp_path / "log",
            storage="filesystem",
            env=seaweed.settings_env(bucket),
        ).start()
        digest = push_blob(server, "away/blob", b"stored on S3")
        url = f"{server.url}/v2/away/blob/blobs/{digest}"
        assert requests.get(f"{server.url}/health", timeout=10).json()["storage_driver"] == "s3"

        seaweed.stop()
        gone = requests.get(url, timeout=30)
        assert gone.status_code == 503 and error_code(gone) == "UNKNOWN", gone.text
        health = requests.get(f"{server.url}/health", timeout=10)
        assert health.status_code == 503
        assert health.json()["storage"].startswith("error: unreachable")

        seaweed.start()  # the same ports and data
        assert requests.get(url, timeout=30).content == b"stored on S3"
        assert requests.get(f"{server.url}/health", timeout=10).status_code == 200
    finally:
        if server is not None:
            server.stop()
        seaweed.stop()
