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

import asyncio
import base64
import binascii
import hashlib
import json
import re
import ssl
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode, urljoin, urlsplit

import httpx
from cryptography import x509

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
# What reading one image's signed documents may cost at most: registry
# requests, bytes read, and documents taken for checking. An attacker who may
# push can make the webhook do this much work, and no more; past it the image
# is denied, saying why, never judged from a part of what is there.
MAX_REQUESTS = 4000
MAX_BYTES = 32 << 20
MAX_DOCUMENTS = 5000
MAX_EXTENSION_LISTING = 16 << 20  # the signature extension answers with every one at once
MAX_REPLY = MAX_EXTENSION_LISTING  # the largest reply any read here may use
MAX_VA_REPORT = 8 << 20  # a report of every platform, thousands of findings each
VA_EXTENSION = "_moorage/va"  # Moorage's vulnerability reports, read with pull rights
FETCHES_AT_ONCE = 16
REFERRER_BATCH = 64  # referrers read before asking whether what was read is enough
MAX_REFERRER_PAGES = 10  # compared as a verdict's evidence; more: verified afresh
_CHALLENGE = re.compile(r'(\w+)="([^"]*)"')


class ReadError(Exception):
    """The registry could not be read; the message says why, for the admission reply."""


@dataclass
class Budget:
    """The work one image's signatures may cost (see MAX_REQUESTS)."""

    requests: int = MAX_REQUESTS
    bytes: int = MAX_BYTES
    checks: int = MAX_DOCUMENTS

    def _spent(self, what: str) -> None:
        raise ReadError(
            f"its signatures and attestations are more than one admission may read ({what}); "
            "someone may have flooded them: a Manager can delete what is not genuine"
        )

    def request(self) -> None:
        self.requests -= 1
        if self.requests < 0:
            self._spent(f"{MAX_REQUESTS} registry requests")

    def read(self, size: int) -> None:
        self.bytes -= size
        if self.bytes < 0:
            self._spent(f"{MAX_BYTES >> 20} MiB")

    def documents(self, count: int) -> None:
        self.checks -= count
        if self.checks < 0:
            self._spent(f"{MAX_DOCUMENTS} signed documents")


@dataclass(frozen=True)
class Wanted:
    """What a policy's cosign requirements could be met by: signatures, and
    attestations of some predicate types, by some keys. Only what could meet
    them is fetched; the unsigned hints used here only ever rule out."""

    signatures: bool = False
    predicate_types: frozenset[str] = frozenset()
    key_ids: frozenset[str] = frozenset()  # sha256:<hex> of the policy's keys

    def artifact_types(self) -> list[tuple[str, str]]:
        """(referrer artifact type, form) to list."""
        found = []
        if self.signatures:
            found.append((cosign.SIGNATURE_ARTIFACT, "referrer"))
        if self.signatures or self.predicate_types:
            found.append((cosign.BUNDLE, "bundle"))
        if self.predicate_types:
            found.append((cosign.INTOTO, "dsse"))
        return found

    def _predicates(self) -> set[str]:
        return {*self.predicate_types, *([cosign.SIGN_PREDICATE] if self.signatures else [])}

    def may_hold(self, annotations: Any, media_type: Any = None) -> bool:
        """Whether a referrer (its descriptor's annotations) or a layer may hold
        a document wanted: cosign writes the predicate type beside bundles and
        attestation layers; one that declares another is not fetched."""
        if media_type is not None and media_type not in (
            cosign.SIMPLE_SIGNING,
            cosign.BUNDLE,
            cosign.DSSE,
        ):
            return False
        notes = annotations if isinstance(annotations, dict) else {}
        declared = notes.get(cosign.BUNDLE_PREDICATE_ANNOTATION, notes.get("predicateType"))
        if media_type == cosign.SIMPLE_SIGNING:
            return self.signatures and self._certificate_allowed(notes)
        return not isinstance(declared, str) or declared in self._predicates()

    def _certificate_allowed(self, annotations: dict[str, Any]) -> bool:
        """A layer carrying a certificate was made with the certificate's key:
        unless that is one of the policy's keys, it cannot verify."""
        pem = annotations.get(cosign.CERTIFICATE_ANNOTATION)
        if not isinstance(pem, str) or not self.key_ids:
            return True
        try:
            key = x509.load_pem_x509_certificate(pem.encode()).public_key()
            return cosign.key_id(key) in self.key_ids  # type: ignore[arg-type]
        except (ValueError, TypeError):
            return False

    def may_verify(self, document: cosign.CosignSignature) -> bool:
        """A bundle that names its key is checked only with that key."""
        named = document.named_key
        return named is None or not self.key_ids or named in self.key_ids


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
        bound = credential_for(self.endpoint)  # whatever signs these in belongs here
        if self._auth is not None:
            reply = await self._bounded(method, url, {**headers, **self._auth}, bound)
            if reply.status_code != 401:
                return reply
        else:
            reply = await self._bounded(method, url, headers, None)
            if reply.status_code != 401:
                self._auth = {}
                return reply
        scheme, params = _challenge(reply.headers.get("www-authenticate", ""))
        for credential in [*self.credentials, None]:
            auth = await self._sign_in(scheme, params, credential)
            if auth is None:
                continue
            retry = await self._bounded(method, url, {**headers, **auth}, bound)
            if retry.status_code != 401 and retry.status_code != 403:
                self._auth, self._chosen = auth, credential
                return retry
            self._tried.append(credential.source if credential else "anonymous")
        return reply

    async def _bounded(
        self, method: str, url: str, headers: dict[str, str], bound: dict[str, Any] | None
    ) -> httpx.Response:
        return await read_bounded(self.reader.http, method, url, headers, bound)

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

    async def resolve(self, session: Session, tag: str | None = None) -> str:
        """The digest the image's tag (or digest) names now; with ``tag``, the
        digest that tag of the repository names (a reference may carry both)."""
        ref = session.ref
        reference = tag or ref.reference
        what = f"{ref.repository}:{tag}" if tag else str(ref)
        path = f"/v2/{ref.path}/manifests/{reference}"
        try:
            reply = await session.get(path, MANIFEST_TYPES, method="HEAD")
            if reply.status_code == 200 and not reply.headers.get("docker-content-digest"):
                reply = await session.get(path, MANIFEST_TYPES)
                if reply.status_code == 200:
                    return "sha256:" + hashlib.sha256(reply.content).hexdigest()
        except httpx.HTTPError as exc:
            raise ReadError(f"cannot reach {ref.host} ({type(exc).__name__})") from None
        if reply.status_code in (401, 403):
            raise ReadError(f"cannot read {what}: {session.refused()}")
        if reply.status_code == 404:
            raise ReadError(f"{what} does not exist in its registry")
        if reply.status_code != 200:
            raise ReadError(f"{ref.host} answered HTTP {reply.status_code} for {what}")
        digest = reply.headers["docker-content-digest"]
        if tag is None and ref.digest and digest != ref.digest:
            raise ReadError(f"{ref.host} answered {digest} for {ref}")
        return str(digest)

    async def evidence(self, session: Session, digest: str, cosigned: bool, simple: bool) -> str:
        """A hash of where the signatures of ``digest`` are kept: what the
        ``sha256-<hex>.sig`` and ``.att`` tags name, which referrers the digest has, and the
        signature extension's list. A remembered verdict stands while this is
        unchanged; a signature deleted, replaced or added changes it. These are
        small reads (a HEAD and listings, no signature content), and Moorage
        answers the HEAD from its manifest cache."""
        path = session.ref.path

        async def tag(name: str) -> list[Any]:
            head = await session.get(f"/v2/{path}/manifests/{name}", MANIFEST_TYPES, method="HEAD")
            return [head.status_code, head.headers.get("docker-content-digest")]

        async def referrers() -> list[Any]:
            found: list[Any] = []
            page: str | None = f"/v2/{path}/referrers/{digest}"
            for _ in range(MAX_REFERRER_PAGES):
                if page is None:
                    break
                listed = await session.get(page, "application/vnd.oci.image.index.v1+json")
                found.append([listed.status_code, _listed_digests(listed.content)])
                page = _next_page(session, listed.headers.get("link", ""))
            if page is not None:  # too many to compare: never equal, verified afresh
                found.append(["more pages", time.monotonic()])
            return found

        async def extension() -> list[Any]:
            name = f"/extensions/v2/{path}/signatures/{digest}"
            listed = await session.get(name, "application/json")
            return [listed.status_code, hashlib.sha256(listed.content).hexdigest()]

        tags = cosign.signature_tags(digest)  # .sig and .att
        reads = [*(tag(t) for t in tags), referrers()] if cosigned else []
        reads += [extension()] if simple else []
        parts = await asyncio.gather(*reads, return_exceptions=True)  # one round trip, not 3
        for part in parts:
            if isinstance(part, httpx.HTTPError):
                raise ReadError(
                    f"cannot read the signatures of {session.ref} ({type(part).__name__})"
                ) from None
            if isinstance(part, BaseException):
                raise part
        return hashlib.sha256(json.dumps(parts).encode()).hexdigest()

    async def vulnerability_report(self, session: Session, digest: str) -> Any:
        """The Vulnerability Advisor's report on ``digest`` (every platform of an
        index) from Moorage's registry extension, as JSON. A registry
        without the extension (404) cannot say whether the image is vulnerable:
        that is a ReadError, for a denial, like any other failure to read it."""
        ref = session.ref
        path = f"/v2/{ref.path}/{VA_EXTENSION}/{digest}"
        try:
            reply = await session.get(path, "application/json")
        except httpx.HTTPError as exc:
            raise ReadError(
                f"cannot read the vulnerability report of {ref} ({type(exc).__name__})"
            ) from None
        except TooLarge:
            raise ReadError(
                f"its vulnerability report is larger than {MAX_REPLY >> 20} MiB"
            ) from None
        if reply.status_code == 404:
            raise ReadError(
                f"{ref.host} has no vulnerability report for it (GET /v2/{ref.path}/"
                f"{VA_EXTENSION}/{digest} answered 404): the policy's vulnerability rule needs "
                "a Moorage registry with the Vulnerability Advisor"
            )
        if reply.status_code in (401, 403):
            raise ReadError(f"cannot read its vulnerability report: {session.refused()}")
        if reply.status_code != 200:
            raise ReadError(
                f"{ref.host} answered HTTP {reply.status_code} for its vulnerability report"
            )
        if len(reply.content) > MAX_VA_REPORT:
            raise ReadError(f"its vulnerability report is larger than {MAX_VA_REPORT >> 20} MiB")
        try:
            document = json.loads(reply.content)
        except (ValueError, RecursionError):
            raise ReadError(
                f"{ref.host} answered a vulnerability report that is not JSON"
            ) from None
        return document

    async def _json(
        self, session: Session, path: str, accept: str, limit: int = MAX_MANIFEST
    ) -> dict[str, Any] | None:
        reply = await session.get(path, accept)
        if reply.status_code != 200 or len(reply.content) > limit:
            return None
        try:
            document = json.loads(reply.content)
        except (ValueError, RecursionError):
            return None
        return document if isinstance(document, dict) else None

    async def _blob(self, session: Session, digest: str, limit: int) -> bytes | None:
        """A blob's bytes, checked against its digest. A redirect (to storage) is
        followed once, without credentials when it leaves the registry's origin."""
        try:
            reply = await session.get(f"/v2/{session.ref.path}/blobs/{digest}")
            if reply.status_code in (301, 302, 303, 307, 308) and reply.headers.get("location"):
                target = urljoin(f"{session.base}/", reply.headers["location"])
                same = urlsplit(target).netloc.lower() == session.endpoint
                if same:
                    reply = await session.get(urlsplit(target).path + _query(target))
                else:
                    try:  # no credentials, and checked by the egress policy like any request
                        reply = await read_bounded(self.http, "GET", target)
                    except Refused as exc:
                        raise ReadError(f"{session.ref.host} redirected a blob: {exc}") from None
        except TooLarge:
            return None  # over every limit here: skipped like any blob too large
        if reply.status_code != 200 or len(reply.content) > limit:
            return None
        algorithm, _, expected = digest.partition(":")
        if algorithm != "sha256" or hashlib.sha256(reply.content).hexdigest() != expected:
            return None
        return reply.content

    async def _referrers(
        self, session: Session, digest: str, artifact_type: str, budget: Budget
    ) -> AsyncIterator[dict[str, Any]]:
        """The descriptors of ``digest``'s referrers of one artifact type, every
        page of them (``Link: <...>; rel="next"``, on the registry's own origin
        only). The type is asked of the registry and checked again here, for a
        registry that ignores the filter."""
        path: str | None = f"/v2/{session.ref.path}/referrers/{digest}?" + urlencode(
            {"artifactType": artifact_type}
        )
        seen: set[str] = set()
        while path is not None and path not in seen:
            seen.add(path)
            budget.request()
            reply = await session.get(path, "application/vnd.oci.image.index.v1+json")
            if reply.status_code != 200:
                return
            budget.read(len(reply.content))
            try:
                index = json.loads(reply.content)
            except (ValueError, RecursionError):
                return
            for entry in (index.get("manifests") if isinstance(index, dict) else None) or []:
                if isinstance(entry, dict) and entry.get("artifactType") == artifact_type:
                    yield entry
            path = _next_page(session, reply.headers.get("link", ""))

    async def cosign_documents(
        self,
        session: Session,
        digest: str,
        wanted: Wanted,
        enough: Callable[[list[cosign.CosignSignature]], bool] = lambda _: False,
    ) -> list[cosign.CosignSignature]:
        """The signed cosign documents of ``digest`` that could meet ``wanted``:
        from the ``sha256-<hex>.sig``/``.att`` tags and every OCI 1.1 referrer of
        the artifact types that hold them. What the unsigned annotations or a
        certificate rule out is not fetched; a blob several layers share is
        fetched once; fetches run ``FETCHES_AT_ONCE`` at a time, the tags first,
        then the referrers in batches, until ``enough`` (given each batch's new
        documents) says what was read meets the policy. The work is
        bounded by a ``Budget`` (requests, bytes, documents); when it runs out
        the check fails closed and says so, rather than judging from the first N
        an attacker chose."""
        budget = Budget()
        accept = "application/vnd.oci.image.manifest.v1+json, " + MANIFEST_TYPES
        path = session.ref.path
        signature_tag, attestation_tag = cosign.signature_tags(digest)
        wanted_tags = [(signature_tag, "tag")] if wanted.signatures else []
        wanted_tags += [(attestation_tag, "dsse")] if wanted.predicate_types else []
        gate = asyncio.Semaphore(FETCHES_AT_ONCE)

        async def manifest(reference: str) -> dict[str, Any] | None:
            budget.request()
            async with gate:
                return await self._json(session, f"/v2/{path}/manifests/{reference}", accept)

        async def blob(value: str) -> tuple[str, bytes | None]:
            budget.request()
            async with gate:
                body = await self._blob(session, value, cosign.MAX_PAYLOAD)
            budget.read(len(body or b""))
            return value, body

        blobs: dict[str, bytes | None] = {}

        async def read(sources: list[tuple[dict[str, Any], str]]) -> list[cosign.CosignSignature]:
            layers = [(self._wanted_layers(found, wanted, budget), form) for found, form in sources]
            missing = {x["digest"] for group, _ in layers for x in group} - set(blobs)
            blobs.update(await asyncio.gather(*(blob(d) for d in missing)))
            documents = []
            for group, form in layers:
                documents += cosign.from_manifest({"layers": group}, form, blobs.get)
            return [d for d in documents if wanted.may_verify(d)]

        documents: list[cosign.CosignSignature] = []
        try:
            # The tags first, one at a time: the first request also signs in.
            tagged = []
            for reference, form in wanted_tags:
                found = await manifest(reference)
                if found is not None:
                    tagged.append((found, form))
            documents += await read(tagged)
            if enough(documents):
                return documents
            listed: dict[str, str] = {}  # referrer digest -> form
            for artifact_type, form in wanted.artifact_types():
                async for entry in self._referrers(session, digest, artifact_type, budget):
                    if wanted.may_hold(entry.get("annotations")):
                        listed.setdefault(str(entry.get("digest")), form)
            pending = list(listed.items())
            for start in range(0, len(pending), REFERRER_BATCH):
                batch = pending[start : start + REFERRER_BATCH]
                fetched = await asyncio.gather(*(manifest(d) for d, _ in batch))
                sources = []
                for found, (_, form) in zip(fetched, batch, strict=True):
                    subject = (found or {}).get("subject")
                    if found and isinstance(subject, dict) and subject.get("digest") == digest:
                        sources.append((found, form))
                new = await read(sources)
                documents += new
                if enough(new):
                    break
        except httpx.HTTPError as exc:
            raise ReadError(
                f"cannot read the signatures of {session.ref} ({type(exc).__name__})"
            ) from None
        return documents

    @staticmethod
    def _wanted_layers(
        manifest: dict[str, Any], wanted: Wanted, budget: Budget
    ) -> list[dict[str, Any]]:
        listed = manifest.get("layers")
        layers = [
            layer
            for layer in (listed if isinstance(listed, list) else [])
            if isinstance(layer, dict)
            and isinstance(layer.get("digest"), str)
            and wanted.may_hold(layer.get("annotations"), layer.get("mediaType"))
        ]
        budget.documents(len(layers))
        return layers

    async def simple_signatures(self, session: Session, digest: str) -> list[bytes]:
        """OpenPGP signatures kept through the registry's signature extension."""
        path = f"/extensions/v2/{session.ref.path}/signatures/{digest}"
        try:
            document = await self._json(session, path, "application/json", MAX_EXTENSION_LISTING)
        except httpx.HTTPError as exc:
            raise ReadError(
                f"cannot read the signatures of {session.ref} ({type(exc).__name__})"
            ) from None
        found = []
        for entry in (document or {}).get("signatures") or []:
            if not isinstance(entry, dict) or not isinstance(entry.get("content"), str):
                continue
            try:
                content = base64.b64decode(entry["content"], validate=True)
            except (binascii.Error, ValueError):
                continue
            if len(content) <= simplesigning.MAX_SIGNATURE:
                found.append(content)
        return found


def _listed_digests(body: bytes) -> list[str] | str:
    """The digests a referrers index lists, in order; its hash when it is not one."""
    try:
        document = json.loads(body)
        return sorted(str(m["digest"]) for m in document["manifests"])
    except (ValueError, RecursionError, KeyError, TypeError):
        return hashlib.sha256(body).hexdigest()


class TooLarge(ReadError):
    """A reply longer than ``MAX_REPLY``: given up while it was being read."""


async def read_bounded(
    http: httpx.AsyncClient,
    method: str,
    url: str,
    headers: dict[str, str] | None = None,
    extensions: dict[str, Any] | None = None,
) -> httpx.Response:
    """The reply read as a stream and given up past ``MAX_REPLY`` bytes: the
    callers' own limits (a manifest, a payload, the budget) are checked on what
    was read, so without this a hostile registry's endless body would sit in
    memory first."""
    request = http.build_request(method, url, headers=headers, extensions=extensions)
    reply = await http.send(request, stream=True)
    body = bytearray()
    try:
        async for chunk in reply.aiter_bytes():
            body += chunk
            if len(body) > MAX_REPLY:
                raise TooLarge(f"{url} answered with more than {MAX_REPLY >> 20} MiB")
    finally:
        await reply.aclose()
    reply._content = bytes(body)  # what aread() would have set
    return reply


def _next_page(session: Session, link: str) -> str | None:
    """The path of the next page a ``Link`` header names, if on the registry's origin."""
    for part in link.split(","):
        target, _, params = part.partition(";")
        if 'rel="next"' not in params.replace(" ", "") or not target.strip().startswith("<"):
            continue
        url = urljoin(f"{session.base}/", target.strip()[1:-1])
        split = urlsplit(url)
        if f"{split.scheme}://{split.netloc.lower()}" != session.base:
            return None
        return split.path + _query(url)
    return None


def _query(url: str) -> str:
    query = urlsplit(url).query
    return f"?{query}" if query else ""
