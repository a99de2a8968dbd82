"""Reading an image's digest and signatures from its registry with the pod's
own pull credentials, without blocking the event loop (httpx's async client).

Credentials come from the kubelet's keyring (``moorage.kube.keyring``), in
the kubelet's order, so a secret stored under ``https://host``, a path or a
wildcard works here exactly when it works for the kubelet. A credential goes
only where the kubelet would send it, the image's own registry host:

- every request goes through ``moorage.egress`` (the operator's allowances):
  HTTPS only (plain HTTP for hosts registered as insecure), no loopback,
  link-local, private or cluster address unless allowed, checked when the
  connection is made, and a credential only to the host it belongs to;
- nothing follows a redirect with credentials, and a redirect elsewhere is a
  new request under the same policy;
- a Bearer token service is given the credential only when it lives on the
  registry's host (or is configured as its token service); one elsewhere
  (Docker Hub's) is asked for an anonymous token, which is enough for public
  images;
- tokens are kept until shortly before they expire, per registry, scope and
  credential."""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
import ssl
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urljoin, urlsplit

import httpx

from moorage.egress import Egress, Refused, credential_for
from moorage.enforce.matching import Reference
from moorage.kube.keyring import Credential
from moorage.trust import cosign, simplesigning

MANIFEST_TYPES = ", ".join(
    [
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.docker.distribution.manifest.v2+json",
    ]
)
MAX_MANIFEST = 4 << 20
DOCKER_HUB = "registry-1.docker.io"
MAX_SIGNATURES = 20  # per form: each costs a fetch and a check
_CHALLENGE = re.compile(r'(\w+)="([^"]*)"')


class ReadError(Exception):
    """The registry could not be read; the message says why, for the admission reply."""


@dataclass(frozen=True)
class Access:
    egress: Egress = field(default_factory=Egress)  # where the webhook may connect
    ca_bundle: str | None = None
    timeout: float = 5.0

    def scheme(self, host: str) -> str:
        return self.egress.scheme(host)


def _challenge(header: str) -> tuple[str, dict[str, str]]:
    scheme, _, rest = header.strip().partition(" ")
    return scheme.lower(), {k.lower(): v for k, v in _CHALLENGE.findall(rest)}


@dataclass
class _Token:
    value: str
    expires: float


@dataclass
class Session:
    """One repository, read with the first of the pod's credentials that the
    registry accepts (the kubelet tries them all, in this order)."""

    reader: RegistryReader
    ref: Reference
    credentials: Sequence[Credential]
    _auth: dict[str, str] | None = None  # the Authorization header that worked
    _chosen: Credential | None = None
    _tried: list[str] = field(default_factory=list)

    @property
    def endpoint(self) -> str:
        """Where the registry answers: Docker Hub's API is not on docker.io itself."""
        return DOCKER_HUB if self.ref.host == "docker.io" else self.ref.host

    @property
    def base(self) -> str:
        return f"{self.reader.access.scheme(self.endpoint)}://{self.endpoint}"

    @property
    def credential_used(self) -> str | None:
        """The pull secret the registry accepted; "anonymous"; None: not contacted."""
        if self._auth is None:
            return None
        return self._chosen.source if self._chosen else "anonymous"

    async def get(
        self, path: str, accept: str | None = None, method: str = "GET"
    ) -> httpx.Response:
        """A request on the registry, signed in as needed; redirects are not followed.
        What the egress policy refuses is a ReadError saying why."""
        try:
            return await self._get(path, accept, method)
        except Refused as exc:
            raise ReadError(str(exc)) from None

    async def _get(self, path: str, accept: str | None, method: str) -> httpx.Response:
        url = f"{self.base}{path}"
        headers = {"Accept": accept} if accept else {}
        http = self.reader.http
        bound = credential_for(self.endpoint)  # whatever signs these in belongs here
        if self._auth is not None:
            reply = await http.request(
                method, url, headers={**headers, **self._auth}, extensions=bound
            )
            if reply.status_code != 401:
                return reply
        else:
            reply = await http.request(method, url, headers=headers)
            if reply.status_code != 401:
                self._auth = {}
                return reply
        scheme, params = _challenge(reply.headers.get("www-authenticate", ""))
        for credential in [*self.credentials, None]:
            auth = await self._sign_in(scheme, params, credential)
            if auth is None:
                continue
            retry = await http.request(method, url, headers={**headers, **auth}, extensions=bound)
            if retry.status_code != 401 and retry.status_code != 403:
                self._auth, self._chosen = auth, credential
                return retry
            self._tried.append(credential.source if credential else "anonymous")
        return reply

    async def _sign_in(
        self, scheme: str, params: dict[str, str], credential: Credential | None
    ) -> dict[str, str] | None:
        if scheme == "basic":
            if credential is None:
                return None
            pair = f"{credential.username}:{credential.password}".encode()
            return {"Authorization": "Basic " + base64.b64encode(pair).decode()}
        if scheme != "bearer" or not params.get("realm"):
            return None
        try:
            realm = httpx.URL(params["realm"])
        except httpx.InvalidURL:
            return None
        egress = self.reader.access.egress
        if credential is not None and not egress.may_send_credential(self.endpoint, realm):
            return None  # the token service is elsewhere: the credential stays here
        scope = params.get("scope") or f"repository:{self.ref.path}:pull"
        token = await self.reader.token(
            params["realm"], params.get("service"), scope, credential, self.endpoint
        )
        return {"Authorization": f"Bearer {token}"} if token else None

    def refused(self) -> str:
        if not self.credentials:
            return "no pull secret of the pod has an entry for this registry"
        return (
            "the registry refused the pod's pull secrets ("
            + ", ".join(dict.fromkeys(c.source for c in self.credentials))
            + ")"
        )


class RegistryReader:
    def __init__(self, access: Access, http: httpx.AsyncClient | None = None) -> None:
        self.access = access
        verify: bool | ssl.SSLContext = (
            ssl.create_default_context(cafile=access.ca_bundle) if access.ca_bundle else True
        )
        self.http = http or access.egress.async_client(verify, access.timeout)
        self._tokens: dict[tuple[str, str, str, str], _Token] = {}

    async def close(self) -> None:
        await self.http.aclose()

    def session(self, ref: Reference, credentials: Sequence[Credential]) -> Session:
        return Session(self, ref, credentials)

    async def token(
        self,
        realm: str,
        service: str | None,
        scope: str,
        credential: Credential | None,
        registry: str = "",
    ) -> str | None:
        """A token from ``realm``; ``credential`` is the one stored for ``registry``."""
        who = (
            hashlib.sha256(f"{credential.username}\0{credential.password}".encode()).hexdigest()
            if credential
            else ""
        )
        key = (realm, service or "", scope, who)
        cached = self._tokens.get(key)
        if cached and cached.expires > time.monotonic():
            return cached.value
        query = {"scope": scope, **({"service": service} if service else {})}
        auth = (credential.username, credential.password) if credential else None
        reply = await self.http.get(
            realm, params=query, auth=auth, extensions=credential_for(registry)
        )
        if reply.status_code != 200:
            return None
        try:
            body = reply.json()
            value = str(body.get("token") or body.get("access_token") or "")
            lifetime = float(body.get("expires_in") or 60)
        except (ValueError, AttributeError, TypeError):
            return None
        if not value:
            return None
        if len(self._tokens) > 10000:
            self._tokens.clear()
        self._tokens[key] = _Token(value, time.monotonic() + max(lifetime - 10, 0))
        return value

    # -- what the webhook asks ---------------------------------------------------

    async def resolve(self, session: Session) -> str:
        """The digest the image's tag (or digest) names now."""
        ref = session.ref
        path = f"/v2/{ref.path}/manifests/{ref.reference}"
        try:
            reply = await session.get(path, MANIFEST_TYPES, method="HEAD")
            if reply.status_code == 200 and not reply.headers.get("docker-content-digest"):
                reply = await session.get(path, MANIFEST_TYPES)
                if reply.status_code == 200:
                    return "sha256:" + hashlib.sha256(reply.content).hexdigest()
        except httpx.HTTPError as exc:
            raise ReadError(f"cannot reach {ref.host} ({type(exc).__name__})") from None
        if reply.status_code in (401, 403):
            raise ReadError(f"cannot read {ref}: {session.refused()}")
        if reply.status_code == 404:
            raise ReadError(f"{ref} does not exist in its registry")
        if reply.status_code != 200:
            raise ReadError(f"{ref.host} answered HTTP {reply.status_code} for {ref}")
        digest = reply.headers["docker-content-digest"]
        if ref.digest and digest != ref.digest:
            raise ReadError(f"{ref.host} answered {digest} for {ref}")
        return str(digest)

    async def _json(self, session: Session, path: str, accept: str) -> dict[str, Any] | None:
        reply = await session.get(path, accept)
        if reply.status_code != 200 or len(reply.content) > MAX_MANIFEST:
            return None
        try:
            document = json.loads(reply.content)
        except (ValueError, RecursionError):
            return None
        return document if isinstance(document, dict) else None

    async def _blob(self, session: Session, digest: str, limit: int) -> bytes | None:
        """A blob's bytes, checked against its digest. A redirect (to storage) is
        followed once, without credentials when it leaves the registry's origin."""
        reply = await session.get(f"/v2/{session.ref.path}/blobs/{digest}")
        if reply.status_code in (301, 302, 303, 307, 308) and reply.headers.get("location"):
            target = urljoin(f"{session.base}/", reply.headers["location"])
            same = urlsplit(target).netloc.lower() == session.endpoint
            if same:
                reply = await session.get(urlsplit(target).path + _query(target))
            else:
                try:  # no credentials, and checked by the egress policy like any request
                    reply = await self.http.get(target)
                except Refused as exc:
                    raise ReadError(f"{session.ref.host} redirected a blob: {exc}") from None
        if reply.status_code != 200 or len(reply.content) > limit:
            return None
        algorithm, _, expected = digest.partition(":")
        if algorithm != "sha256" or hashlib.sha256(reply.content).hexdigest() != expected:
            return None
        return reply.content

    async def cosign_signatures(
        self, session: Session, digest: str
    ) -> list[cosign.CosignSignature]:
        """Signatures from the ``sha256-<hex>.sig`` tag and from OCI 1.1
        referrers (cosign's own and sigstore bundles)."""
        path = session.ref.path
        manifests: list[tuple[dict[str, Any], str]] = []
        accept = "application/vnd.oci.image.manifest.v1+json, " + MANIFEST_TYPES
        try:
            tagged = await self._json(
                session, f"/v2/{path}/manifests/{cosign.signature_tag(digest)}", accept
            )
            if tagged is not None:
                manifests.append((tagged, "tag"))
            index = await self._json(
                session, f"/v2/{path}/referrers/{digest}", "application/vnd.oci.image.index.v1+json"
            )
            for entry in ((index or {}).get("manifests") or [])[:MAX_SIGNATURES]:
                if not isinstance(entry, dict):
                    continue
                kind = entry.get("artifactType")
                if kind not in (cosign.SIGNATURE_ARTIFACT, cosign.BUNDLE):
                    continue
                found = await self._json(
                    session, f"/v2/{path}/manifests/{entry.get('digest')}", accept
                )
                if found is not None:
                    manifests.append((found, "bundle" if kind == cosign.BUNDLE else "referrer"))
            signatures: list[cosign.CosignSignature] = []
            for manifest, form in manifests:
                blobs: dict[str, bytes] = {}
                for layer in (manifest.get("layers") or [])[:MAX_SIGNATURES]:
                    if not isinstance(layer, dict) or not isinstance(layer.get("digest"), str):
                        continue
                    if layer.get("mediaType") in (cosign.SIMPLE_SIGNING, cosign.BUNDLE):
                        body = await self._blob(session, layer["digest"], cosign.MAX_PAYLOAD)
                        if body is not None:
                            blobs[layer["digest"]] = body
                try:
                    signatures += cosign.from_manifest(manifest, form, blobs.get)
                except (cosign.FormatError, ValueError, TypeError):
                    continue  # not a signature we can read: it vouches for nothing
        except httpx.HTTPError as exc:
            raise ReadError(
                f"cannot read the signatures of {session.ref} ({type(exc).__name__})"
            ) from None
        return signatures[: MAX_SIGNATURES * 2]

    async def simple_signatures(self, session: Session, digest: str) -> list[bytes]:
        """OpenPGP signatures kept through the registry's signature extension."""
        path = f"/extensions/v2/{session.ref.path}/signatures/{digest}"
        try:
            document = await self._json(session, path, "application/json")
        except httpx.HTTPError as exc:
            raise ReadError(
                f"cannot read the signatures of {session.ref} ({type(exc).__name__})"
            ) from None
        found = []
        for entry in ((document or {}).get("signatures") or [])[:MAX_SIGNATURES]:
            if not isinstance(entry, dict) or not isinstance(entry.get("content"), str):
                continue
            try:
                content = base64.b64decode(entry["content"], validate=True)
            except (binascii.Error, ValueError):
                continue
            if len(content) <= simplesigning.MAX_SIGNATURE:
                found.append(content)
        return found


def _query(url: str) -> str:
    query = urlsplit(url).query
    return f"?{query}" if query else ""
