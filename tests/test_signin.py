"""Signing in: one spelling per identity, throttled on every way in, and the
same work whether the identity exists or not."""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from moorage.auth.ratelimit import FailureLimiter
from moorage.auth.signin import SignIn, SignInFailed, Way, address_key
from moorage.iam.secrets import SecretKeeper
from moorage.iam.service import IamService, normalize_identity
from moorage.metadata import create_metadata_engine, sqlite_url, upgrade
from moorage.metadata.iam_store import IamStore
from tests.iam_helpers import ADMIN_KEY, Api
from tests.server import MoorageServer, ensure_region_hosts

US = "us.localhost"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[MoorageServer]:
    """A server of its own: the address-wide ceiling would block other tests."""
    ensure_region_hosts()
    started = MoorageServer(
        tmp_path / "data",
        tmp_path / "server.log",
        auth="token",
        env={"MOORAGE_BOOTSTRAP_APIKEY": ADMIN_KEY},
    ).start()
    yield started
    started.stop()


def test_identities_have_one_spelling() -> None:
    assert normalize_identity(" ALICE@a.test\t") == "alice@a.test"
    assert normalize_identity("\uff21lice@a.test") == "alice@a.test"  # fullwidth A, NFKC
    assert address_key("2001:db8::1") == address_key("2001:db8::ffff")  # one /64
    assert address_key("2001:db8:0:1::1") != address_key("2001:db8::1")
    assert address_key("::ffff:10.0.0.1") == address_key("10.0.0.1")


def test_throttling_counts_one_identity_however_it_is_spelled_and_wherever(
    server: MoorageServer,
) -> None:
    admin = Api(server, ADMIN_KEY)
    for email in ("alice@a.test", "bob@a.test", "carol@a.test"):
        admin.call("POST", "/iam/users", {"email": email, "password": "right-password-1"}, 201)
    token_url = f"http://{server.host_for(US)}/oauth/token"

    def token(user: str, password: str) -> int:
        return requests.get(
            token_url, params={"service": US}, auth=(user, password), timeout=10
        ).status_code

    def api(user: str, password: str) -> int:
        return Api(server, password, user=user).request("GET", "/iam/me").status_code

    variants = ["alice@a.test ", "ALICE@a.test\t", " Alice@A.Test", "alice@a.test"] * 3
    assert [token(v, "wrong-password") for v in variants[:10]] == [401] * 10
    # Ten failures against alice, however spelled: now even her right password waits.
    assert token("alice@a.test", "right-password-1") == 429
    assert api("ALICE@a.test", "right-password-1") == 429
    # The management API counts per identity too, and shares the count.
    assert [api("bob@a.test", "wrong-password") for _ in range(10)] == [401] * 10
    assert api("bob@a.test", "right-password-1") == 429
    assert token("Bob@a.test", "right-password-1") == 429
    # Someone else from the same address is not blocked by them.
    assert token("carol@a.test", "right-password-1") == 200
    assert api("carol@a.test", "right-password-1") == 200


def test_parallel_guesses_cannot_slip_under_the_ceiling() -> None:
    limiter = FailureLimiter({"ip": 100, "user": 3, "cred": 3})
    reserved = [limiter.reserve("ip:x", "user:eve") for _ in range(10)]
    assert reserved[:3] == [0.0, 0.0, 0.0] and all(wait > 0 for wait in reserved[3:])
    limiter.forgive("ip:x", "user:eve")  # one of them succeeded
    assert limiter.reserve("ip:x", "user:eve") == 0.0


def test_a_failed_password_sign_in_costs_the_same_whoever_it_names(tmp_path: Path) -> None:
    """Unknown email, known email with a wrong password, and an administrator who
    has no password at all: one scrypt each, so their medians match."""
    engine = create_metadata_engine(sqlite_url(tmp_path))
    upgrade(engine)
    iam = IamService(IamStore(engine), SecretKeeper(b"k" * 32), ("us-south",))
    iam.bootstrap("admin@moorage.local", None)  # an identity without a password
    iam.invite_user(iam.default_account(), "known@a.test", "known-password-1")
    signin = SignIn(iam, FailureLimiter({"ip": 10_000, "user": 10_000, "cred": 10_000}))
    cases = {
        "unknown": "nobody@a.test",
        "known, wrong password": "known@a.test",
        "no password": "admin@moorage.local",
    }
    timings: dict[str, list[float]] = {name: [] for name in cases}

    async def attempt(email: str) -> float:
        start = time.perf_counter()
        with pytest.raises(SignInFailed):
            await signin.authenticate("10.0.0.1", email, "not-the-password", Way.MANAGEMENT)
        return time.perf_counter() - start

    async def run() -> None:
        for _ in range(15):  # interleaved, so load on the machine hits every case alike
            for name, email in cases.items():
                timings[name].append(await attempt(email))

    asyncio.run(run())
    medians = {name: statistics.median(values) for name, values in timings.items()}
    assert max(medians.values()) / min(medians.values()) < 1.6, medians
    assert min(medians.values()) > 0.005, medians  # a real scrypt, not a short cut
