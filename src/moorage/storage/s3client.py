"""A small S3 client on aiohttp: the calls the S3 blob driver makes, signed
with AWS Signature Version 4, nothing more.

Bodies go out as ``UNSIGNED-PAYLOAD``: the driver verifies content by its
own digest, so hashing every byte a second time for the signature would only
cost CPU (botocore does that on plain HTTP). Chosen over boto3 and
aiobotocore by measurement; see docs/benchmarks.md."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import time
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import quote

import aiohttp
from yarl import URL

from moorage.storage.base import StorageError

log = logging.getLogger("moorage.storage.s3")

UNSIGNED = "UNSIGNED-PAYLOAD"
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
_NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"
# Replies worth another try: the store was busy or a node was away.
_RETRY_STATUSES = frozenset({500, 502, 503, 504})
_ATTEMPTS = 4


class S3Error(StorageError):
    """An S3 request failed: the HTTP status (0: no reply), S3's error code and message."""

    def __init__(self, status: int, code: str, message: str, key: str = "") -> None:
        super().__init__(f"S3 {code or status}: {message}" + (f" ({key})" if key else ""))
        self.status = status
        self.code = code
        self.key = key


@dataclass(frozen=True)
class S3Credentials:
    access_key: str
    secret_key: str
    session_token: str | None = None


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


def _quote_path(path: str) -> str:
    return quote(path, safe="/~")


def _quote_param(value: str) -> str:
    return quote(value, safe="-_.~")


def _hmac(key: bytes, message: str) -> bytes:
    return hmac.new(key, message.encode(), hashlib.sha256).digest()


class SigV4:
    """AWS Signature Version 4 for one service and region."""

    def __init__(self, credentials: S3Credentials, region: str, service: str = "s3") -> None:
        self.credentials = credentials
        self.region = region
        self.service = service
        self._keys: dict[str, bytes] = {}

    def _signing_key(self, day: str) -> bytes:
        key = self._keys.get(day)
        if key is None:
            key = _hmac(("AWS4" + self.credentials.secret_key).encode(), day)
            for part in (self.region, self.service, "aws4_request"):
                key = _hmac(key, part)
            self._keys = {day: key}
        return key

    def _scope(self, day: str) -> str:
        return f"{day}/{self.region}/{self.service}/aws4_request"

    def _signature(
        self,
        method: str,
        path: str,
        query: Sequence[tuple[str, str]],
        headers: Mapping[str, str],
        payload: str,
        stamp: str,
    ) -> str:
        canonical_query = "&".join(
            f"{k}={v}" for k, v in sorted((_quote_param(k), _quote_param(v)) for k, v in query)
        )
        names = sorted(headers)
        canonical_headers = "".join(f"{n}:{' '.join(headers[n].split())}\n" for n in names)
        request = "\n".join(
            [method, path, canonical_query, canonical_headers, ";".join(names), payload]
        )
        to_sign = "\n".join(
            [
                "AWS4-HMAC-SHA256",
                stamp,
                self._scope(stamp[:8]),
                hashlib.sha256(request.encode()).hexdigest(),
            ]
        )
        return hmac.new(self._signing_key(stamp[:8]), to_sign.encode(), hashlib.sha256).hexdigest()

    def sign(
        self,
        method: str,
        path: str,
        query: Sequence[tuple[str, str]],
        host: str,
        extra: Mapping[str, str] | None = None,
        payload: str = UNSIGNED,
        now: datetime | None = None,
    ) -> dict[str, str]:
        """The headers that authenticate one request (``path`` already quoted),
        signing every ``x-amz-*`` header of ``extra`` too, as S3 requires."""
        stamp = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%SZ")
        headers = {k.lower(): v for k, v in (extra or {}).items() if k.lower().startswith("x-amz-")}
        headers.update({"host": host, "x-amz-content-sha256": payload, "x-amz-date": stamp})
        if self.credentials.session_token:
            headers["x-amz-security-token"] = self.credentials.session_token
        signature = self._signature(method, path, query, headers, payload, stamp)
        headers["authorization"] = (
            f"AWS4-HMAC-SHA256 Credential={self.credentials.access_key}/{self._scope(stamp[:8])}, "
            f"SignedHeaders={';'.join(sorted(headers))}, Signature={signature}"
        )
        return headers

    def presign(
        self,
        method: str,
        path: str,
        host: str,
        expires: int,
        now: datetime | None = None,
    ) -> list[tuple[str, str]]:
        """Query parameters that let anyone holding them make this one request
        until ``expires`` seconds from now."""
        stamp = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%SZ")
        query = [
            ("X-Amz-Algorithm", "AWS4-HMAC-SHA256"),
            ("X-Amz-Credential", f"{self.credentials.access_key}/{self._scope(stamp[:8])}"),
            ("X-Amz-Date", stamp),
            ("X-Amz-Expires", str(expires)),
            ("X-Amz-SignedHeaders", "host"),
        ]
        if self.credentials.session_token:
            query.append(("X-Amz-Security-Token", self.credentials.session_token))
        signature = self._signature(method, path, query, {"host": host}, UNSIGNED, stamp)
        return [*query, ("X-Amz-Signature", signature)]


def _text(element: ET.Element | None, name: str) -> str:
    found = None if element is None else element.find(_NS + name)
    if found is None and element is not None:
        found = element.find(name)  # some stores answer without the namespace
    return (found.text or "") if found is not None else ""


def _all(element: ET.Element, name: str) -> list[ET.Element]:
    return element.findall(_NS + name) or element.findall(name)


def _error(status: int, body: bytes, key: str) -> S3Error:
    try:
        root = ET.fromstring(body) if body else None
    except ET.ParseError:
        root = None
    code = _text(root, "Code") if root is not None else ""
    message = _text(root, "Message") if root is not None else ""
    if not code:  # a HEAD has no body to say why
        code = {404: "NoSuchKey" if key else "NoSuchBucket", 403: "AccessDenied"}.get(status, "")
    if not message:
        message = {
            "NoSuchBucket": "the bucket does not exist",
            "AccessDenied": "access denied (wrong keys, or no right to this bucket)",
        }.get(code, f"HTTP {status}")
    return S3Error(status, code, message, key)


class S3Client:
    """One bucket of one S3 endpoint. ``path_style`` puts the bucket in the
    path (``http://host/bucket/key``), as local stores such as SeaweedFS and
    MinIO expect; otherwise in the host name (``http://bucket.host/key``)."""

    def __init__(
        self,
        endpoint: str,
        region: str,
        bucket: str,
        credentials: S3Credentials,
        path_style: bool = True,
        connections: int = 64,
        timeout: float = 60.0,
    ) -> None:
        base = URL(endpoint)
        if path_style:
            self._base = base.with_path(f"/{bucket}")
        else:
            self._base = base.with_host(f"{bucket}.{base.raw_host}").with_path("/")
        self._prefix = self._base.raw_path.rstrip("/")
        port = self._base.port
        default = 443 if self._base.scheme == "https" else 80
        self._host = self._base.raw_host or ""
        if port is not None and port != default:
            self._host += f":{port}"
        self.bucket = bucket
        self.endpoint = str(base)
        # The last failure of the store itself (unreachable, refused, 5xx) and
        # when it happened (monotonic), cleared by the next success.
        self.last_error: str | None = None
        self.last_error_at = 0.0
        self._signer = SigV4(credentials, region)
        self._connections = connections
        self._timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=timeout)
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(limit=self._connections, ttl_dns_cache=60)
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=self._timeout,
                auto_decompress=False,
                skip_auto_headers=("Content-Type",),
            )
        return self._session

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
        if self._session is not None:
            await self._session.close()
            self._session = None

    # -- requests ----------------------------------------------------------

    def _path(self, key: str) -> str:
        return f"{self._prefix}/{_quote_path(key)}" if key else f"{self._prefix}/"

    def _url(self, path: str, query: Sequence[tuple[str, str]]) -> URL:
        return URL.build(
            scheme=self._base.scheme,
            host=self._base.raw_host or "",
            port=self._base.port,
            path=path,
            query_string="&".join(f"{_quote_param(k)}={_quote_param(v)}" for k, v in query),
            encoded=True,
        )

    @asynccontextmanager
    async def _request(
        self,
        method: str,
        key: str,
        query: Sequence[tuple[str, str]] = (),
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        ok: tuple[int, ...] = (200,),
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """One signed request, retried on a busy or failing store while its body
        can be sent again; yields the reply with its status among ``ok``."""
        path = self._path(key)
        url = self._url(path, query)
        attempt = 0
        while True:
            attempt += 1
            send = {k: v for k, v in (headers or {}).items() if not k.lower().startswith("x-amz-")}
            send.update(self._signer.sign(method, path, query, self._host, headers))
            try:
                response = await self._client().request(
                    method, url, data=body, headers=send, allow_redirects=False
                )
            except (TimeoutError, aiohttp.ClientConnectionError) as exc:
                if attempt >= _ATTEMPTS:
                    reason = str(exc) or type(exc).__name__
                    self._failed(f"unreachable: {reason}")
                    raise S3Error(0, "Unreachable", reason, key) from exc
                await asyncio.sleep(0.05 * 2**attempt)
                continue
            try:
                if response.status in ok:
                    self.last_error = None
                    yield response
                    return
                payload = await response.read()
                if response.status in _RETRY_STATUSES and attempt < _ATTEMPTS:
                    log.warning("S3 %s %s: %s, trying again", method, key, response.status)
                    await asyncio.sleep(0.05 * 2**attempt)
                    continue
                error = _error(response.status, payload if method != "HEAD" else b"", key)
                if response.status >= 500 or response.status == 403:
                    self._failed(f"{error.code or response.status}")
                raise error
            finally:
                response.release()

    async def _xml(
        self,
        method: str,
        key: str,
        query: Sequence[tuple[str, str]] = (),
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> ET.Element:
        async with self._request(method, key, query, body, headers) as response:
            payload = await response.read()
        root = ET.fromstring(payload)
        # CompleteMultipartUpload and CopyObject may fail after their 200 line.
        if root.tag in ("Error", _NS + "Error"):
            raise S3Error(200, _text(root, "Code"), _text(root, "Message"), key)
        return root

    async def head_bucket(self) -> None:
        """Succeeds when the bucket exists and these credentials may use it."""
        async with self._request("HEAD", ""):
            pass

    async def create_bucket(self) -> None:
        """Create the bucket (S3Error with code BucketAlreadyOwnedByYou when it exists)."""
        async with self._request("PUT", ""):
            pass

    # -- objects -----------------------------------------------------------

    async def head_object(self, key: str) -> ObjectInfo | None:
        try:
            async with self._request("HEAD", key) as response:
                return ObjectInfo(
                    key,
                    int(response.headers.get("Content-Length", "0")),
                    response.headers.get("ETag", ""),
                )
        except S3Error as exc:
            if exc.status == 404:
                return None
            raise

    @asynccontextmanager
    async def get_object(
        self, key: str, start: int = 0, end: int | None = None
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """The object's bytes ``start`` to ``end`` inclusive (to its end when
        None): read them from the yielded reply's ``content``. A missing object
        raises S3Error with status 404."""
        headers = {}
        if start or end is not None:
            headers["Range"] = f"bytes={start}-{'' if end is None else end}"
        async with self._request("GET", key, headers=headers, ok=(200, 206)) as response:
            yield response

    async def get_bytes(self, key: str, start: int = 0, end: int | None = None) -> bytes:
        async with self.get_object(key, start, end) as response:
            return await response.read()

    async def put_object(self, key: str, data: bytes) -> str:
        async with self._request(
            "PUT", key, body=data, headers={"Content-Type": "application/octet-stream"}
        ) as response:
            return response.headers.get("ETag", "")

    async def copy_object(self, source: str, key: str) -> None:
        await self._xml(
            "PUT",
            key,
            headers={"x-amz-copy-source": f"/{self.bucket}/{_quote_path(source)}"},
        )

    async def delete_object(self, key: str) -> None:
        """Deleting an absent object succeeds, as in S3."""
        try:
            async with self._request("DELETE", key, ok=(200, 204)):
                pass
        except S3Error as exc:
            if exc.status != 404:
                raise

    async def list_objects(self, prefix: str) -> AsyncIterator[ObjectInfo]:
        token: str | None = None
        while True:
            query = [("list-type", "2"), ("prefix", prefix), ("max-keys", "1000")]
            if token:
                query.append(("continuation-token", token))
            root = await self._xml("GET", "", query)
            for item in _all(root, "Contents"):
                modified = _text(item, "LastModified")
                yield ObjectInfo(
                    _text(item, "Key"),
                    int(_text(item, "Size") or 0),
                    _text(item, "ETag"),
                    _parse_time(modified) if modified else None,
                )
            token = _text(root, "NextContinuationToken")
            if _text(root, "IsTruncated") != "true" or not token:
                return

    # -- multipart uploads -------------------------------------------------

    async def create_multipart_upload(self, key: str) -> str:
        root = await self._xml(
            "POST", key, [("uploads", "")], headers={"Content-Type": "application/octet-stream"}
        )
        upload_id = _text(root, "UploadId")
        if not upload_id:
            raise S3Error(200, "InvalidResponse", "no UploadId in the reply", key)
        return upload_id

    async def upload_part(self, key: str, upload_id: str, number: int, data: bytes) -> str:
        query = [("partNumber", str(number)), ("uploadId", upload_id)]
        async with self._request("PUT", key, query, body=data) as response:
            return response.headers.get("ETag", "")

    async def upload_part_copy(
        self,
        key: str,
        upload_id: str,
        number: int,
        source: str,
        start: int | None = None,
        end: int | None = None,
    ) -> str:
        headers = {"x-amz-copy-source": f"/{self.bucket}/{_quote_path(source)}"}
        if start is not None and end is not None:
            headers["x-amz-copy-source-range"] = f"bytes={start}-{end}"
        query = [("partNumber", str(number)), ("uploadId", upload_id)]
        root = await self._xml("PUT", key, query, headers=headers)
        return _text(root, "ETag")

    async def complete_multipart_upload(
        self, key: str, upload_id: str, parts: Sequence[tuple[int, str]]
    ) -> None:
        body = "".join(
            f"<Part><PartNumber>{n}</PartNumber><ETag>{_xml_escape(etag)}</ETag></Part>"
            for n, etag in parts
        )
        document = f'<CompleteMultipartUpload xmlns="{_NS[1:-1]}">{body}</CompleteMultipartUpload>'
        await self._xml(
            "POST",
            key,
            [("uploadId", upload_id)],
            body=document.encode(),
            headers={"Content-Type": "application/xml"},
        )

    async def abort_multipart_upload(self, key: str, upload_id: str) -> None:
        """Aborting an upload that is already gone succeeds."""
        try:
            async with self._request("DELETE", key, [("uploadId", upload_id)], ok=(200, 204)):
                pass
        except S3Error as exc:
            if exc.status != 404:
                raise

    async def list_multipart_uploads(self, prefix: str) -> AsyncIterator[MultipartInfo]:
        key_marker = upload_marker = ""
        while True:
            query = [("uploads", ""), ("prefix", prefix)]
            if key_marker:
                query += [("key-marker", key_marker), ("upload-id-marker", upload_marker)]
            root = await self._xml("GET", "", query)
            for item in _all(root, "Upload"):
                initiated = _text(item, "Initiated")
                yield MultipartInfo(
                    _text(item, "Key"),
                    _text(item, "UploadId"),
                    _parse_time(initiated) if initiated else None,
                )
            key_marker = _text(root, "NextKeyMarker")
            upload_marker = _text(root, "NextUploadIdMarker")
            if _text(root, "IsTruncated") != "true" or not key_marker:
                return

    # -- presigned URLs ----------------------------------------------------

    def presign_get(self, key: str, expires: int, now: datetime | None = None) -> str:
        path = self._path(key)
        query = self._signer.presign("GET", path, self._host, expires, now)
        return str(self._url(path, query))


def _xml_escape(value: str) -> str:
    return value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _parse_time(value: str) -> datetime | None:
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
