"""``moorage serve --workers N``: N processes serving one port.

The supervisor prepares the installation once (schema, secret check, first
account, crash leftovers), then forks the workers before it has opened a
database connection or started a thread of its own. Each worker binds the
port with SO_REUSEPORT, so the kernel spreads connections over them, and
runs its own event loop, connections and caches (kept honest across the
workers by the change feed). SIGTERM, SIGINT and SIGHUP are passed on; a
worker that dies is started again; the supervisor exits when all have
stopped after a SIGTERM."""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import socket
import sys
import time
import traceback
from collections.abc import Callable

from moorage.config import ConfigError, Settings

log = logging.getLogger("moorage")

_PR_SET_PDEATHSIG = 1
RESTART_BACKOFF = (0.5, 1.0, 2.0, 5.0)


def _die_with_parent() -> None:
    """Linux: a worker gets SIGTERM if its supervisor dies (even by SIGKILL)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # pragma: no cover - not Linux
        pass


class Supervisor:
    def __init__(self, settings: Settings, worker: Callable[[Settings], None]) -> None:
        self.settings = settings
        self.worker = worker
        self.children: dict[int, int] = {}  # pid -> worker number
        self.stopping = False
        self._restarts: dict[int, int] = {}

    def _spawn(self, number: int) -> None:
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:  # the worker
            code = 0
            try:
                _die_with_parent()
                if os.getppid() != parent:  # the supervisor died before prctl
                    os._exit(1)
                for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                    signal.signal(sig, signal.SIG_DFL)
                self.worker(self.settings)
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
            except BaseException:
                traceback.print_exc()
                code = 1
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        self.children[pid] = number
        log.info("worker %d started (pid %d)", number, pid)

    def _forward(self, signum: int, _frame: object) -> None:
        if signum in (signal.SIGTERM, signal.SIGINT):
            self.stopping = True
        for pid in list(self.children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM if signum == signal.SIGINT else signum)

    def _check_port(self) -> None:
        """Workers share the port through SO_REUSEPORT, which would as gladly share
        it with another server already there: make sure none is."""
        host = self.settings.host or "0.0.0.0"
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((host, self.settings.port))
            except OSError as exc:
                raise ConfigError(f"cannot listen on {host}:{self.settings.port}: {exc}") from exc

    def run(self) -> int:
        self._check_port()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self._forward)
        for number in range(self.settings.workers):
            self._spawn(number)
        log.info("moorage supervisor (pid %d): %d workers", os.getpid(), self.settings.workers)
        status = 0
        while self.children:
            try:
                pid, wait_status = os.wait()
            except ChildProcessError:
                break
            except InterruptedError:  # pragma: no cover - PEP 475 retries
                continue
            if pid not in self.children:
                continue
            number = self.children.pop(pid)
            code = os.waitstatus_to_exitcode(wait_status)
            if self.stopping:
                status = status or (code if code > 0 else 0)
                continue
            count = self._restarts.get(number, 0)
            self._restarts[number] = count + 1
            if code == 2 and count == 0:
                # A configuration error: every worker would fail the same way.
                log.error("worker %d refused to start (exit 2); stopping", number)
                self._forward(signal.SIGTERM, None)
                status = 2
                continue
            delay = RESTART_BACKOFF[min(count, len(RESTART_BACKOFF) - 1)]
            log.error("worker %d (pid %d) exited with %d; starting it again", number, pid, code)
            time.sleep(delay)
            if not self.stopping:
                self._spawn(number)
        log.info("stopped")
        return status
