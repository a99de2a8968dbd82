#!/usr/bin/env python3
"""Warn before `make run` serves when the regional domains do not resolve:
skopeo, podman and docker look names up through the system resolver, which
(unlike curl) does not map *.localhost to loopback, so a push to
us.localhost:5000 would fail with "no such host". Prints the /etc/hosts line
to add. Never fails the run: a custom base_domain may resolve through DNS."""

from __future__ import annotations

import socket
import sys

NAMES = [
    "us.localhost",
    "uk.localhost",
    "de.localhost",
    "au.localhost",
    "jp.localhost",
    "registry.ng.localhost",
    "registry.eu-gb.localhost",
    "registry.eu-de.localhost",
    "registry.au-syd.localhost",
]


def resolves(name: str) -> bool:
    try:
        socket.getaddrinfo(name, None)
    except OSError:
        return False
    return True


def main() -> int:
    missing = [name for name in NAMES if not resolves(name)]
    if missing:
        print(
            f"warning: {', '.join(missing)} do not resolve; registry clients will fail with"
            " 'no such host'. Add this line to /etc/hosts:\n"
            f"127.0.0.1 {' '.join(NAMES)}",
            file=sys.stderr,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
