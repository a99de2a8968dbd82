"""A real S3 server for the tests: SeaweedFS (``weed mini``) on free loopback
ports in a temporary directory, with one identity configured so that it
checks every request's signature."""

from __future__ import annotations

import atexit
import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from moorage.storage.s3bucket import S3Bucket

ACCESS_KEY = "moorage-test"
SECRET_KEY = "moorage-test-secret-0123456789"
REGION = "us-east-1"
# Ports SeaweedFS listens on: master, volume, filer, S3 and admin, each with
# its gRPC port. Chosen below the kernel's ephemeral range (32768 and up), so
# an outgoing connection cannot take one between our check and weed's bind.
VOLUME_SIZE_MB = 128
MAX_VOLUMES = 2000
_PORT_FLAGS = (
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "filer.port",
    "filer.port.grpc",
    "s3.port",
    "s3.port.grpc",
    "admin.port",
    "admin.port.grpc",
)


def _free_low_ports(count: int) -> list[int]:
    chosen: list[int] = []
    while len(chosen) < count:
        port = random.randrange(20000, 32000)
        if port in chosen:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        chosen.append(port)
    return chosen


def weed_binary() -> str:
    found = shutil.which("weed")
    if found is None:
        raise RuntimeError("SeaweedFS (weed) is not installed: run `make test`, which builds it")
    return found


class SeaweedFS:
    """``weed mini`` in ``directory``; ``endpoint`` is its S3 gateway."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.ports = dict(zip(_PORT_FLAGS, _free_low_ports(len(_PORT_FLAGS)), strict=True))
        self.endpoint = f"http://127.0.0.1:{self.ports['s3.port']}"
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = directory / "weed.log"
        self._boto: dict[int, Any] = {}  # boto3 clients (untyped)

    def start(self, timeout: float = 60) -> SeaweedFS:
        data = self.directory / "data"
        data.mkdir(parents=True, exist_ok=True)
        args = [
            weed_binary(),
            "mini",
            f"-dir={data}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            "-admin.ui=false",
            "-admin.port.legacy=0",
            "-webdav=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            # Every bucket is a collection with volumes of its own, and by
            # default the volume size and count follow the free disk space
            # (1 GiB volumes, one per GiB free): with 40 GiB free the 38th
            # bucket to be written got a 500 ("no free volumes left"), and a
            # suite on S3 makes hundreds. Volumes are not preallocated, so a
            # high count costs nothing until used.
            f"-master.volumeSizeLimitMB={VOLUME_SIZE_MB}",
            f"-volume.max={MAX_VOLUMES}",
            *(f"-{flag}={port}" for flag, port in self.ports.items()),
        ]
        if len(str(self.directory)) < 80:  # unix socket paths are short
            args += [
                f"-s3.localSocket={self.directory / 's3.sock'}",
                f"-filer.localSocket={self.directory / 'filer.sock'}",
            ]
        env = {
            **os.environ,
            # With an identity, SeaweedFS checks signatures (and refuses others).
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        }
        env.pop("AWS_CA_BUNDLE", None)
        self.process = subprocess.Popen(
            args,
            stdout=self.log_path.open("ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=env,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"weed exited early; see {self.log_path}")
            if self._answers():
                return self
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"SeaweedFS's S3 gateway did not answer; see {self.log_path}")

    def _answers(self) -> bool:
        """The S3 gateway answers a signed request (for a bucket that is not there)."""
        try:
            self.boto(attempts=1).head_bucket(Bucket="probe-" + uuid.uuid4().hex[:8])
        except ClientError as exc:
            return exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 404
        except BotoCoreError:
            return False
        return True

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        self.process = None
        # The admin server's socket has no flag to put it elsewhere.
        admin_socket = Path(f"/tmp/seaweedfs-admin-grpc-{self.ports['admin.port.grpc']}.sock")
        admin_socket.unlink(missing_ok=True)

    def client(self, bucket: str) -> S3Bucket:
        """The driver's own view of ``bucket`` (threads and all: close it)."""
        return S3Bucket(self.endpoint, REGION, bucket, ACCESS_KEY, SECRET_KEY, path_style=True)

    def boto(self, attempts: int = 4) -> Any:
        """A plain boto3 client, for tests to look at buckets apart from the driver."""
        if attempts not in self._boto:
            self._boto[attempts] = boto3.session.Session().client(
                "s3",
                endpoint_url=self.endpoint,
                region_name=REGION,
                aws_access_key_id=ACCESS_KEY,
                aws_secret_access_key=SECRET_KEY,
                config=Config(
                    s3={"addressing_style": "path"},
                    retries={"mode": "standard", "total_max_attempts": attempts},
                ),
            )
        return self._boto[attempts]

    def new_bucket(self, name: str | None = None) -> str:
        bucket = name or f"t-{uuid.uuid4().hex[:20]}"
        self.boto().create_bucket(Bucket=bucket)
        return bucket

    def keys(self, bucket: str, prefix: str = "") -> dict[str, int]:
        """Every object under ``prefix`` with its size."""
        pages = self.boto().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        return {o["Key"]: o["Size"] for page in pages for o in page.get("Contents", [])}

    def multipart_keys(self, bucket: str, prefix: str = "") -> list[str]:
        pages = (
            self.boto()
            .get_paginator("list_multipart_uploads")
            .paginate(Bucket=bucket, Prefix=prefix)
        )
        return [u["Key"] for page in pages for u in page.get("Uploads", [])]

    def read(self, bucket: str, key: str) -> bytes:
        return bytes(self.boto().get_object(Bucket=bucket, Key=key)["Body"].read())

    def settings_env(self, bucket: str) -> dict[str, str]:
        """What ``moorage serve`` needs in its environment to use ``bucket``."""
        return {
            "MOORAGE_STORAGE_DRIVER": "s3",
            "MOORAGE_S3_ENDPOINT": self.endpoint,
            "MOORAGE_S3_REGION": REGION,
            "MOORAGE_S3_BUCKET": bucket,
            "MOORAGE_S3_ACCESS_KEY": ACCESS_KEY,
            "MOORAGE_S3_SECRET_KEY": SECRET_KEY,
        }


_shared: SeaweedFS | None = None
_shared_lock = threading.Lock()


def shared_seaweed() -> SeaweedFS:
    """One SeaweedFS for the whole test session, started on first use and
    stopped when the session ends; each user takes buckets of its own."""
    global _shared
    with _shared_lock:
        if _shared is None or _shared.process is None or _shared.process.poll() is not None:
            directory = Path(tempfile.mkdtemp(prefix="moorage-seaweed-"))
            _shared = SeaweedFS(directory).start()
            atexit.register(_stop_shared, _shared)
        return _shared


def _stop_shared(instance: SeaweedFS) -> None:
    instance.stop()
    shutil.rmtree(instance.directory, ignore_errors=True)
