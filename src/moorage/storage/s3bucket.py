"""One S3 bucket through boto3: the calls the S3 driver makes, each run on
threads of the bucket's own, so none blocks the event loop or takes the
loop's default executor.

The client is set up as the measurement that chose it (docs/benchmarks.md,
"How the S3 client was chosen"): bodies are sent as ``UNSIGNED-PAYLOAD``
(the driver checks content by its own digest, so a SHA-256 of every body for
the signature, which botocore computes over plain HTTP, only costs CPU), and
no CRC32 of every part is computed or checked unless an operation requires
one. Signing, retries and the wire format are botocore's.

What this module adds: errors as :class:`S3Error` (a StorageError with the
HTTP status), the store's last failure remembered for /health, and GETs read
in pieces off the loop."""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, HTTPClientError
from botocore.exceptions import ConnectionError as BotoConnectionError

from moorage.storage.base import StorageError

T = TypeVar("T")

# Tries of one call (the first and three more) on a connection failure, a
# 5xx or throttling; botocore's "standard" mode spaces them 50 ms * 2^n, with
# jitter, and stops retrying while the store keeps failing (its retry quota).
ATTEMPTS = 4
READ_PIECE = 1 << 20


class S3Error(StorageError):
    """An S3 request failed: the HTTP status (0: no reply), S3's error code and message."""

    def __init__(self, status: int, code: str, message: str, key: str = "") -> None:
        super().__init__(f"S3 {code or status}: {message}" + (f" ({key})" if key else ""))
        self.status = status
        self.code = code
        self.key = key


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    etag: str
    modified: datetime | None = None


@dataclass(frozen=True)
class MultipartInfo:
    key: str
    upload_id: str
    initiated: datetime | None


def client_config(path_style: bool, connections: int, timeout: float) -> Config:
    """botocore's settings for Moorage's use of S3 (the measurement's "tuned")."""
    return Config(
        signature_version="s3v4",
        s3={
            "addressing_style": "path" if path_style else "virtual",
            # UNSIGNED-PAYLOAD even over plain HTTP: no SHA-256 of every body.
            "payload_signing_enabled": False,
        },
        # No CRC32 of every part sent, none checked on GETs, unless required.
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        max_pool_connections=connections,
        connect_timeout=10,
        read_timeout=timeout,
        retries={"mode": "standard", "total_max_attempts": ATTEMPTS},
    )


class S3Bucket:
    """One bucket of one S3 endpoint. ``path_style`` puts the bucket in the
    path (``http://host/bucket/key``), as local stores such as SeaweedFS and
    MinIO expect; otherwise in the host name (``http://bucket.host/key``).
    ``ca_bundle`` is a PEM file of the CAs an https endpoint may chain to;
    without it, botocore's default (``AWS_CA_BUNDLE``, else certifi's CAs).

    Every call runs on one of ``connections`` threads of this bucket's own;
    as many connections are kept open to the store."""

    def __init__(
        self,
        endpoint: str,
        region: str,
        bucket: str,
        access_key: str,
        secret_key: str,
        session_token: str | None = None,
        *,
        path_style: bool = True,
        ca_bundle: str | None = None,
        connections: int = 64,
        timeout: float = 60.0,
    ) -> None:
        self.name = bucket
        self.endpoint = endpoint
        # The last failure of the store itself (unreachable, refused, 5xx) and
        # when it happened (monotonic), cleared by the next success.
        self.last_error: str | None = None
        self.last_error_at = 0.0
        # A session of its own: boto3's default session is not thread-safe.
        session = boto3.session.Session()
        # botocore is untyped (no stubs are installed for it): this class is
        # the typed surface, and every value taken from a reply is converted.
        self.s3: Any = session.client(
            "s3",
            endpoint_url=endpoint,
            region_name=region,
            aws_access_key_id=access_key,
            aws_secret_access_key=secret_key,
            aws_session_token=session_token,
            config=client_config(path_style, connections, timeout),
            verify=ca_bundle or None,  # "" would turn verification off
        )
        self._threads = ThreadPoolExecutor(connections, thread_name_prefix="s3")

    # -- health ------------------------------------------------------------

    def _failed(self, reason: str) -> None:
        self.last_error = reason
        self.last_error_at = time.monotonic()

    def recent_error(self, window: float) -> str | None:
        """The last failure if no request has succeeded since and it is less
        than ``window`` seconds old. Older ones expire: a registry that
        reports itself unhealthy gets no traffic that could clear it."""
        if self.last_error is not None and time.monotonic() - self.last_error_at < window:
            return self.last_error
        return None

    async def close(self) -> None:
        self._threads.shutdown(wait=False, cancel_futures=True)
        self.s3.close()

    # -- calls -------------------------------------------------------------

    async def _call(self, key: str, call: Callable[..., T], /, **params: Any) -> T:
        """``call(**params)`` on the bucket's threads, its errors as S3Error."""
        work = self._threads.submit(functools.partial(call, **params))
        return await self._outcome(key, work)

    async def _outcome(self, key: str, work: Future[T]) -> T:
        try:
            result = await asyncio.wrap_future(work)
        except ClientError as exc:
            raise self._refused(exc, key) from exc
        except BotoCoreError as exc:
            raise self._broken(exc, key) from exc
        self.last_error = None
        return result

    def _refused(self, exc: ClientError, key: str) -> S3Error:
        """The store answered with an error."""
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))
        error = exc.response.get("Error", {})
        code, message = str(error.get("Code", "")), str(error.get("Message", ""))
        if not code or code.isdigit():  # a HEAD has no body to say why
            code = {404: "NoSuchKey" if key else "NoSuchBucket", 403: "AccessDenied"}.get(
                status, ""
            )
            message = ""
        if not message:
            message = {
                "NoSuchBucket": "the bucket does not exist",
                "AccessDenied": "access denied (wrong keys, or no right to this bucket)",
            }.get(code, f"HTTP {status}")
        if status >= 500 or status == 403:
            self._failed(code or str(status))
        return S3Error(status, code, message, key)

    def _broken(self, exc: BotoCoreError, key: str) -> S3Error:
        """No (whole) answer: the store is unreachable, or the reply broke off."""
        reason = str(exc) or type(exc).__name__
        if isinstance(exc, BotoConnectionError | HTTPClientError):
            self._failed(f"unreachable: {reason}")
            return S3Error(0, "Unreachable", reason, key)
        return S3Error(0, type(exc).__name__, reason, key)

    async def head_bucket(self) -> None:
        """Succeeds when the bucket exists and these credentials may use it."""
        await self._call("", self.s3.head_bucket, Bucket=self.name)

    async def create_bucket(self) -> None:
        """Create the bucket (S3Error with code BucketAlreadyOwnedByYou when it exists)."""
        await self._call("", self.s3.create_bucket, Bucket=self.name)

    # -- objects -----------------------------------------------------------

    async def head_object(self, key: str) -> ObjectInfo | None:
        try:
            reply = await self._call(key, self.s3.head_object, Bucket=self.name, Key=key)
        except S3Error as exc:
            if exc.status == 404:
                return None
            raise
        return ObjectInfo(key, int(reply.get("ContentLength", 0)), str(reply.get("ETag", "")))

    def _get_params(self, key: str, start: int, end: int | None) -> dict[str, Any]:
        params: dict[str, Any] = {"Bucket": self.name, "Key": key}
        if start or end is not None:
            params["Range"] = f"bytes={start}-{'' if end is None else end}"
        return params

    async def get_object(
        self, key: str, start: int = 0, end: int | None = None, piece: int = READ_PIECE
    ) -> AsyncGenerator[bytes, None]:
        """The object's bytes ``start`` to ``end`` inclusive (to its end when
        None), in pieces of ``piece`` bytes read on the bucket's threads, the
        next while the caller handles this one. A missing object raises
        S3Error with status 404. Close the generator (``aclose``) when
        stopping early: the connection is then dropped rather than drained."""
        reply = await self._call(key, self.s3.get_object, **self._get_params(key, start, end))
        body = reply["Body"]
        reading = self._threads.submit(body.read, piece)
        try:
            while block := await self._outcome(key, reading):
                reading = self._threads.submit(body.read, piece)
                yield block
        finally:
            # Not while a read is under way in a thread: once it is done. A
            # body read to its end has gone back to the pool already.
            reading.add_done_callback(lambda _: body.close())

    async def get_bytes(self, key: str, start: int = 0, end: int | None = None) -> bytes:
        """A whole (small) object, or the span of it, in one call."""

        def fetch(**params: Any) -> bytes:
            body = self.s3.get_object(**params)["Body"]
            try:
                return bytes(body.read())
            finally:
                body.close()

        return await self._call(key, fetch, **self._get_params(key, start, end))

    async def put_object(self, key: str, data: bytes) -> str:
        reply = await self._call(
            key,
            self.s3.put_object,
            Bucket=self.name,
            Key=key,
            Body=data,
            ContentType="application/octet-stream",
        )
        return str(reply.get("ETag", ""))

    async def copy_object(self, source: str, key: str) -> None:
        await self._call(
            key,
            self.s3.copy_object,
            Bucket=self.name,
            Key=key,
            CopySource={"Bucket": self.name, "Key": source},
        )

    async def delete_object(self, key: str) -> None:
        """Deleting an absent object succeeds, as in S3."""
        try:
            await self._call(key, self.s3.delete_object, Bucket=self.name, Key=key)
        except S3Error as exc:
            if exc.status != 404:
                raise

    async def list_objects(self, prefix: str) -> AsyncIterator[ObjectInfo]:
        params: dict[str, Any] = {"Bucket": self.name, "Prefix": prefix, "MaxKeys": 1000}
        while True:
            page = await self._call("", self.s3.list_objects_v2, **params)
            for item in page.get("Contents", []):
                yield ObjectInfo(
                    str(item.get("Key", "")),
                    int(item.get("Size", 0)),
                    str(item.get("ETag", "")),
                    item.get("LastModified"),
                )
            token = page.get("NextContinuationToken")
            if not page.get("IsTruncated") or not token:
                return
            params["ContinuationToken"] = token

    # -- multipart uploads -------------------------------------------------

    async def create_multipart_upload(self, key: str) -> str:
        reply = await self._call(
            key,
            self.s3.create_multipart_upload,
            Bucket=self.name,
            Key=key,
            ContentType="application/octet-stream",
        )
        upload_id = reply.get("UploadId")
        if not upload_id:
            raise S3Error(200, "InvalidResponse", "no UploadId in the reply", key)
        return str(upload_id)

    async def upload_part(self, key: str, upload_id: str, number: int, data: bytes) -> str:
        reply = await self._call(
            key,
            self.s3.upload_part,
            Bucket=self.name,
            Key=key,
            UploadId=upload_id,
            PartNumber=number,
            Body=data,
        )
        return str(reply.get("ETag", ""))

    async def upload_part_copy(
        self,
        key: str,
        upload_id: str,
        number: int,
        source: str,
        start: int | None = None,
        end: int | None = None,
    ) -> str:
        params: dict[str, Any] = {}
        if start is not None and end is not None:
            params["CopySourceRange"] = f"bytes={start}-{end}"
        reply = await self._call(
            key,
            self.s3.upload_part_copy,
            Bucket=self.name,
            Key=key,
            UploadId=upload_id,
            PartNumber=number,
            CopySource={"Bucket": self.name, "Key": source},
            **params,
        )
        return str(reply.get("CopyPartResult", {}).get("ETag", ""))

    async def complete_multipart_upload(
        self, key: str, upload_id: str, parts: Sequence[tuple[int, str]]
    ) -> None:
        await self._call(
            key,
            self.s3.complete_multipart_upload,
            Bucket=self.name,
            Key=key,
            UploadId=upload_id,
            MultipartUpload={"Parts": [{"PartNumber": n, "ETag": etag} for n, etag in parts]},
        )

    async def abort_multipart_upload(self, key: str, upload_id: str) -> None:
        """Aborting an upload that is already gone succeeds."""
        try:
            await self._call(
                key, self.s3.abort_multipart_upload, Bucket=self.name, Key=key, UploadId=upload_id
            )
        except S3Error as exc:
            if exc.status != 404:
                raise

    async def list_multipart_uploads(self, prefix: str) -> AsyncIterator[MultipartInfo]:
        params: dict[str, Any] = {"Bucket": self.name, "Prefix": prefix}
        while True:
            page = await self._call("", self.s3.list_multipart_uploads, **params)
            for item in page.get("Uploads", []):
                yield MultipartInfo(
                    str(item.get("Key", "")), str(item.get("UploadId", "")), item.get("Initiated")
                )
            key_marker = page.get("NextKeyMarker")
            if not page.get("IsTruncated") or not key_marker:
                return
            params["KeyMarker"] = key_marker
            params["UploadIdMarker"] = page.get("NextUploadIdMarker", "")

    # -- presigned URLs ----------------------------------------------------

    def presign_get(self, key: str, expires: int) -> str:
        """A URL anyone may GET the object with for ``expires`` seconds (no
        round trip: a signature computed here)."""
        return str(
            self.s3.generate_presigned_url(
                "get_object", Params={"Bucket": self.name, "Key": key}, ExpiresIn=expires
            )
        )
