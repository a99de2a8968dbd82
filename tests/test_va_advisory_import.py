"""Advisory feeds imported as snapshots: every format the Advisor takes (a
directory, one file, an osv.dev all.zip, a URL, Alpine secdb, a bundle),
records checked against the OSV schema, all or nothing, and snapshots that
share what they did not re-import."""

from __future__ import annotations

import http.server
import json
import os
import shutil
import subprocess
import threading
import zipfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from moorage.metadata.advisory_store import AdvisoryStore
from moorage.va.feeds import FeedError, FeedFile, import_locations, spool_files, write_bundle
from tests.postgres import use_postgres
from tests.server import MOORAGE
from tests.va_feeds_helpers import (
    FEEDS,
    database_url,
    make_store,
    osv_zip,
    row_counts,
)

_NOW = datetime(2026, 1, 1, tzinfo=UTC)
ALL = ["go", "rustsec", "almalinux", "pypa", "alpine-secdb"]


@pytest.fixture
def store(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[AdvisoryStore]:
    yield from make_store(tmp_path, request.node.nodeid)


def _all_keys(s: AdvisoryStore, snapshot_id: str) -> set[tuple[str, str]]:
    return s.touched(None, snapshot_id)


def test_every_feed_format_imports_with_source_modified_and_aliases(
    store: AdvisoryStore, tmp_path: Path
) -> None:
    crates = osv_zip(FEEDS / "rustsec", tmp_path / "osv" / "crates.io" / "all.zip")
    single = FEEDS / "go" / "GO-2024-2701.json"
    snapshot = import_locations(
        store, [str(FEEDS / "go"), str(crates), str(FEEDS / "pypa"), str(FEEDS / "alpine-secdb")]
    )
    snapshot = import_locations(store, [str(single)], name="one-go-record")
    by_name = {s.name: s for s in snapshot.sources}
    assert sorted(by_name) == ["alpine-secdb", "crates.io", "go", "one-go-record", "pypa"]
    assert (by_name["go"].records, by_name["crates.io"].records, by_name["pypa"].records) == (
        12,
        10,
        10,
    )
    assert by_name["alpine-secdb"].kind == "alpine-secdb" and by_name["go"].kind == "osv"
    assert by_name["crates.io"].newest_modified == max(
        json.loads(p.read_text())["modified"] for p in (FEEDS / "rustsec").glob("*.json")
    )
    lookup = store.lookup(snapshot.id)
    [django] = [a for a in lookup.for_package("PyPI", "Django") if a.id == "PYSEC-2008-1"]
    assert django.source == "pypa:PYSEC-2008-1.yaml"
    assert django.modified and "1.0.2" in django.affected[0].versions
    rust = json.loads((FEEDS / "rustsec" / "RUSTSEC-2024-0001.json").read_text())
    [ferris] = lookup.for_package("crates.io", rust["affected"][0]["package"]["name"])
    assert ferris.source == "crates.io:RUSTSEC-2024-0001.json"
    assert set(rust.get("aliases", [])) <= set(ferris.aliases)


def test_alpine_secdb_becomes_fixed_events_in_its_branch(store: AdvisoryStore) -> None:
    snapshot = import_locations(store, [str(FEEDS / "alpine-secdb")])
    advisories = store.lookup(snapshot.id).for_package("Alpine:v3.11", "busybox")
    by_alias = {a.aliases[0]: a for a in advisories}
    busybox = by_alias["CVE-2019-5747"]
    assert busybox.id == "ALPINE-CVE-2019-5747"
    [entry] = busybox.affected
    assert entry.ecosystem == "Alpine:v3.11" and entry.name == "busybox"
    events = [(e.kind, e.version) for e in entry.ranges[0].events]
    assert events == [("introduced", "0"), ("fixed", "1.30.1-r2")]
    assert busybox.source == "alpine-secdb:v3.11/main.yaml"


def test_almalinux_ids_recurring_per_release_are_both_kept(store: AdvisoryStore) -> None:
    snapshot = import_locations(store, [str(FEEDS / "almalinux")])
    [source] = snapshot.sources
    assert source.records == len(list((FEEDS / "almalinux").rglob("*.json")))
    found = [
        a
        for a in store.lookup(snapshot.id).for_package("AlmaLinux:9", "java-1.8.0-openjdk")
        if a.id == "ALSA-2024:0265"
    ]
    assert sorted(a.source for a in found) == [
        "almalinux:almalinux8/ALSA-2024:0265.json",
        "almalinux:almalinux9/ALSA-2024:0265.json",
    ]
    # An erratum's related CVEs are the names people know it by.
    less = store.lookup(snapshot.id).for_package("AlmaLinux:9", "less")
    assert any("CVE-2024-32487" in a.aliases for a in less)


class _Files(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def http_root(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    root = tmp_path / "www"
    root.mkdir()
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), lambda *a: _Files(*a, directory=str(root))
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_an_url_is_streamed_and_bounded(store: AdvisoryStore, http_root: tuple[Path, str]) -> None:
    root, base = http_root
    osv_zip(FEEDS / "go", root / "Go" / "all.zip")
    snapshot = import_locations(store, [f"{base}/Go/all.zip"])
    assert [(s.name, s.records) for s in snapshot.sources] == [("Go", 12)]
    with pytest.raises(FeedError, match="larger than 1000 bytes"):
        import_locations(store, [f"{base}/Go/all.zip"], max_download=1000)
    with pytest.raises(FeedError, match="HTTP 404"):
        import_locations(store, [f"{base}/nothing/all.zip"])
    assert store.current() == snapshot


def test_each_import_replaces_only_its_own_sources_and_old_snapshots_go(
    store: AdvisoryStore, tmp_path: Path
) -> None:
    first = import_locations(store, [str(FEEDS / "go"), str(FEEDS / "pypa")])
    second = import_locations(store, [str(FEEDS / "rustsec")])
    assert [s.name for s in second.sources] == ["go", "pypa", "rustsec"]
    assert store.touched(first.id, second.id) == {
        k for k in _all_keys(store, second.id) if k[0] == "crates.io"
    }
    # A new version of one go record: only its packages are touched.
    changed = tmp_path / "go"
    shutil.copytree(FEEDS / "go", changed)
    record = json.loads((changed / "GO-2024-2701.json").read_text())
    record["modified"] = "2026-01-01T00:00:00Z"
    record["affected"][0]["ranges"][0]["events"].append({"introduced": "99.0.0"})
    (changed / "GO-2024-2701.json").write_text(json.dumps(record))
    third = import_locations(store, [str(changed)])
    assert store.touched(second.id, third.id) == {
        ("Go", a["package"]["name"]) for a in record["affected"]
    }
    assert {s.name: s.newest_modified for s in third.sources}["go"] == "2026-01-01T00:00:00Z"
    # The two newest snapshots stay; the first is gone with its replaced feed.
    assert store.snapshot(first.id) is None and store.snapshot(second.id) is not None
    counts = row_counts(store)
    assert counts["advisory_snapshots"] == 2
    assert counts["advisory_feeds"] == 4  # go (old, new), pypa, rustsec
    assert counts["advisory_records"] == 12 + 12 + 10 + 10


def test_an_invalid_record_fails_the_whole_import_and_changes_nothing(
    store: AdvisoryStore, tmp_path: Path
) -> None:
    before = import_locations(store, [str(FEEDS / "go")])
    counts = row_counts(store)
    bad = tmp_path / "bad"
    shutil.copytree(FEEDS / "rustsec", bad)
    record = json.loads((bad / "RUSTSEC-2024-0005.json").read_text())
    record["affected"][0]["ranges"][0]["type"] = "CALENDAR"
    (bad / "RUSTSEC-2024-0005.json").write_text(json.dumps(record))
    with pytest.raises(FeedError) as failure:
        import_locations(store, [str(FEEDS / "pypa"), str(bad)])
    message = str(failure.value)
    assert "RUSTSEC-2024-0005.json" in message and "affected/0/ranges/0/type" in message
    assert store.current() == before and row_counts(store) == counts
    (bad / "RUSTSEC-2024-0005.json").write_text("{not json")
    with pytest.raises(FeedError, match=r"RUSTSEC-2024-0005\.json: not valid JSON"):
        import_locations(store, [str(bad)])
    with pytest.raises(FeedError, match="no such file"):
        import_locations(store, [str(tmp_path / "missing")])
    assert store.current() == before and row_counts(store) == counts


def test_yaml_aliases_are_refused() -> None:
    bomb = b"a: &a [x, x]\nb: &b [*a, *a]\nc: [*b, *b]\n"
    with pytest.raises(FeedError, match="aliases are not allowed"):
        spool_files("f", iter([FeedFile("x.yaml", bomb, _NOW)]))


def test_an_exported_bundle_imports_back_identically(store: AdvisoryStore, tmp_path: Path) -> None:
    original = import_locations(store, [str(FEEDS / f) for f in ALL])
    bundle = tmp_path / "advisories.zip"
    assert write_bundle(store, bundle) == sum(s.records for s in original.sources)
    for other in make_store(tmp_path, "elsewhere"):
        carried = import_locations(other, [str(bundle)])
        assert carried.sources == original.sources
        keys = _all_keys(store, original.id)
        assert keys == _all_keys(other, carried.id)
        here, there = store.lookup(original.id), other.lookup(carried.id)
        for key in sorted(keys):
            assert here.for_package(*key) == there.for_package(*key)
        again = tmp_path / "again.zip"
        write_bundle(other, again)
        with zipfile.ZipFile(bundle) as a, zipfile.ZipFile(again) as b:
            members = [n for n in a.namelist() if n.startswith("sources/")]
            assert all(a.read(n) == b.read(n) for n in members)
    # A bundle altered in transit is refused.
    tampered = tmp_path / "tampered.zip"
    with zipfile.ZipFile(bundle) as src, zipfile.ZipFile(tampered, "w") as dst:
        for item in src.infolist():
            data = src.read(item)
            if item.filename == "sources/0000.jsonl":
                data = data.replace(b"\n", b" \n", 1)  # still valid JSON lines
            dst.writestr(item, data)
    with pytest.raises(FeedError, match="sha256"):
        import_locations(store, [str(tampered)])


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
_REAL = json.loads((FEEDS / "go" / "GO-2024-2701.json").read_text())


@st.composite
def _mutated(draw: st.DrawFn) -> bytes:
    """A real record with one value somewhere replaced by arbitrary JSON."""
    record = json.loads(json.dumps(_REAL))
    node = record
    for _ in range(draw(st.integers(0, 4))):
        if isinstance(node, dict) and node:
            key = draw(st.sampled_from(sorted(node)))
            if not isinstance(node[key], dict | list) or draw(st.booleans()):
                node[key] = draw(_json)
                break
            node = node[key]
        elif isinstance(node, list) and node:
            i = draw(st.integers(0, len(node) - 1))
            if not isinstance(node[i], dict | list) or draw(st.booleans()):
                node[i] = draw(_json)
                break
            node = node[i]
    return json.dumps(record).encode()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.one_of(
        _mutated(),
        _json.map(lambda v: json.dumps(v).encode()),
        st.binary(max_size=64),
    ),
    st.sampled_from(["r.json", "r.yaml"]),
)
def test_the_record_parser_never_fails_but_with_a_feed_error(data: bytes, name: str) -> None:
    try:
        spool = spool_files("fuzz", iter([FeedFile(name, data, _NOW)]))
    except FeedError as exc:
        assert str(exc).startswith(("fuzz", name)) and "\n" not in str(exc)
    else:
        spool.file.close()


def _cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The real ``moorage`` command on a data directory (and, in the
    PostgreSQL run, on a database of its own)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MOORAGE_")}
    env["MOORAGE_DATA"] = str(tmp_path / "data")
    if use_postgres():
        env["MOORAGE_DATABASE_URL"] = database_url(tmp_path, f"cli-{tmp_path.name}")
    return subprocess.run(
        [str(MOORAGE), *args], capture_output=True, text=True, timeout=300, env=env
    )


def test_the_va_db_commands_import_show_and_export(tmp_path: Path) -> None:
    empty = _cli(tmp_path, "va", "db", "status")
    assert empty.returncode == 0 and "No advisory data" in empty.stdout
    done = _cli(tmp_path, "va", "db", "import", str(FEEDS / "go"), str(FEEDS / "alpine-secdb"))
    assert done.returncode == 0, done.stderr
    assert "go (12 records)" in done.stdout
    status = _cli(tmp_path, "va", "db", "status")
    lines = status.stdout.splitlines()
    assert [line.split()[0] for line in lines[2:]] == ["alpine-secdb", "go"]
    assert lines[1].split()[:5] == ["SOURCE", "KIND", "RECORDS", "NEWEST", "AGE"]
    bundle = tmp_path / "carry.zip"
    exported = _cli(tmp_path, "va", "db", "export", str(bundle))
    assert exported.returncode == 0 and bundle.is_file(), exported.stderr
    other = tmp_path / "site"
    other.mkdir()
    carried = _cli(other, "va", "db", "import", str(bundle))
    assert carried.returncode == 0, carried.stderr
    assert _cli(other, "va", "db", "status").stdout.splitlines()[2:] == lines[2:]


def test_bad_input_at_the_cli_is_one_error_line_and_changes_nothing(tmp_path: Path) -> None:
    assert _cli(tmp_path, "va", "db", "import", str(FEEDS / "go")).returncode == 0
    before = _cli(tmp_path, "va", "db", "status").stdout
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"id": "GO-2099-1", "modified": "yesterday"}))
    errors = []
    for args in (
        [str(bad)],
        [str(tmp_path / "missing")],
        [str(FEEDS / "go"), "--name", "x", str(bad)],
    ):
        result = _cli(tmp_path, "va", "db", "import", *args)
        assert result.returncode == 2
        assert result.stderr.startswith("error: ") and len(result.stderr.splitlines()) == 1
        errors.append(result.stderr)
    assert "bad.json" in errors[0] and "field modified" in errors[0]
    assert "no such file" in errors[1] and "--name needs exactly one" in errors[2]
    assert _cli(tmp_path, "va", "db", "status").stdout == before
