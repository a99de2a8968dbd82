"""``moorage-credential-provider``: a kubelet image credential provider
(``credentialprovider.kubelet.k8s.io/v1``).

The kubelet runs it with a CredentialProviderRequest on stdin. It exchanges a
long-lived API key (read from a file only root can read) for a short-lived,
pull-only credential bound to the image's registry domain, and answers with a
CredentialProviderResponse the kubelet caches per registry for a little less
than the credential lives. Locking or deleting the key stops new credentials
at once, and the registry re-checks the key whenever an issued one is used.

The kubelet's ``matchImages`` decide only when the provider runs: the key is
sent only to a registry named by ``--registry`` (exactly, port included), and
through ``moorage.egress``, so never to a loopback, link-local, private or
cluster address unless ``--allow-private`` allows it, and over plain HTTP
(``--scheme http``) only to such an allowed address. Anything else is refused
before any request."""

from __future__ import annotations

import argparse
import json
import os
import ssl
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import jwt

from moorage.client import ClientError, tls_verification, unreachable
from moorage.egress import Egress

API_VERSION = "credentialprovider.kubelet.k8s.io/v1"
CREDENTIAL_USER = "iamrefreshtoken"
SAFETY_MARGIN = 60  # seconds the kubelet's cache ends before the credential does


class ProviderError(Exception):
    pass


def _duration(seconds: int) -> str:
    minutes, secs = divmod(max(seconds, 0), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes}m{secs}s"


def exchange(
    host: str,
    api_key: str,
    egress: Egress,
    timeout: float = 10,
    verify: ssl.SSLContext | bool = True,
) -> tuple[str, int]:
    """A pull credential for ``host`` and its expiry (epoch seconds)."""
    try:
        with egress.client(verify, timeout) as http:
            reply = http.post(
                f"{egress.scheme(host)}://{host}/oauth/token",
                data={
                    "grant_type": "password",
                    "username": "iamapikey",
                    "password": api_key,
                    "service": host.split(":", 1)[0],
                    "access_type": "offline",
                    "client_id": "moorage-credential-provider",
                },
            )
    except httpx.HTTPError as exc:
        raise ProviderError(unreachable(host, exc)) from None
    if reply.status_code != 200:
        raise ProviderError(f"{host} refused the API key (HTTP {reply.status_code})")
    credential = reply.json().get("refresh_token")
    if not credential:
        raise ProviderError(f"{host} issued no credential")
    claims = jwt.decode(credential, options={"verify_signature": False})
    return str(credential), int(claims["exp"])


def respond(
    request: dict[str, Any],
    api_key: str,
    registries: frozenset[str],
    egress: Egress,
    verify: ssl.SSLContext | bool = True,
) -> dict[str, Any]:
    """The kubelet's answer for a request, or ProviderError before any request
    when the image's registry is not one ``registries`` names."""
    if (
        request.get("apiVersion") != API_VERSION
        or request.get("kind") != "CredentialProviderRequest"
    ):
        raise ProviderError(f"expected a {API_VERSION} CredentialProviderRequest")
    image = str(request.get("image") or "")
    host = image.split("/", 1)[0]
    if not host or "/" not in image:
        raise ProviderError("the request names no registry image")
    host = host.lower()
    if host not in registries:
        raise ProviderError(
            f"{host} is not a registry this provider serves (--registry): the API key was not sent"
        )
    credential, expires = exchange(host, api_key, egress, verify=verify)
    cache = expires - int(time.time()) - SAFETY_MARGIN
    if cache <= 0:
        raise ProviderError("the registry issued a credential that is already expiring")
    return {
        "apiVersion": API_VERSION,
        "kind": "CredentialProviderResponse",
        "cacheKeyType": "Registry",
        "cacheDuration": _duration(cache),
        "auth": {host: {"username": CREDENTIAL_USER, "password": credential}},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="moorage-credential-provider", description=__doc__)
    parser.add_argument("--apikey-file", type=Path, default=Path("/etc/moorage/apikey"))
    parser.add_argument(
        "--scheme",
        choices=["https", "http"],
        default="https",
        help="how to reach the registry's token endpoint; http only to an --allow-private address",
    )
    parser.add_argument(
        "--registry",
        action="append",
        default=[],
        metavar="HOST[:PORT]",
        help="a registry domain the API key may be sent to (repeatable; the server's "
        "regional domains); every other image is refused",
    )
    parser.add_argument(
        "--allow-private",
        action="append",
        default=[],
        metavar="HOST[:PORT]|CIDR",
        help="a registry on a loopback, link-local, private or cluster address "
        "(repeatable); refused otherwise",
    )
    parser.add_argument(
        "--ca-file",
        default=os.environ.get("MOORAGE_CA_FILE") or None,
        help="CA certificate the registry's certificate must chain to (a private CA); "
        "default: MOORAGE_CA_FILE, else the system's trusted roots",
    )
    args = parser.parse_args(argv)
    try:
        registries = frozenset(h.lower() for h in args.registry)
        if not registries:
            raise ProviderError("no --registry: name the registry domains this provider serves")
        insecure = registries if args.scheme == "http" else ()
        egress = Egress.parse(args.allow_private, insecure, allow_option="--allow-private")
        verify = tls_verification(args.ca_file or True)
        request = json.loads(sys.stdin.read())
        api_key = args.apikey_file.read_text().strip()
        if not api_key:
            raise ProviderError(f"{args.apikey_file} is empty")
        sys.stdout.write(json.dumps(respond(request, api_key, registries, egress, verify)))
    except ClientError as exc:
        sys.stderr.write(f"moorage-credential-provider: {exc.message}\n")
        return 1
    except (ProviderError, OSError, ValueError) as exc:
        sys.stderr.write(f"moorage-credential-provider: {exc}\n")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
