"""``moorage va db``: the Vulnerability Advisor's advisory data, an operator
command on the server's database (as ``moorage gc`` is): import feeds, show
their age, export a bundle to carry into an air-gapped site."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, TypeVar

import typer

from moorage.config import ConfigError, Settings, load_settings

app = typer.Typer(no_args_is_help=True, help="The Vulnerability Advisor.")
db = typer.Typer(no_args_is_help=True, help="Advisory data: import, status, export.")
app.add_typer(db, name="db")

T = TypeVar("T")
DataOption = Annotated[Path | None, typer.Option("--data", envvar="MOORAGE_DATA")]
ConfigOption = Annotated[Path | None, typer.Option("--config", help="TOML configuration file")]


def _run(data: Path | None, config: Path | None, work: Callable[[Settings], T]) -> T:
    from moorage.va.feeds import FeedError

    try:
        return work(load_settings(config, data_dir=str(data) if data else None))
    except (ConfigError, FeedError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc


@db.command("import")
def import_(
    locations: Annotated[list[str], typer.Argument(help="Directories, files, zips or URLs")],
    name: Annotated[
        str | None, typer.Option("--name", help="The source's name (one PATH only)")
    ] = None,
    data: DataOption = None,
    config: ConfigOption = None,
) -> None:
    """Import OSV records, Alpine secdb files or a bundle as a new snapshot (all or nothing)."""
    from moorage.va.feeds import import_locations, open_store

    def work(settings: Settings) -> str:
        with open_store(settings) as store:
            snapshot = import_locations(store, locations, name)
        return f"snapshot {snapshot.id}: " + ", ".join(
            f"{s.name} ({s.records} records)" for s in snapshot.sources
        )

    typer.echo(_run(data, config, work))


@db.command("status")
def status(data: DataOption = None, config: ConfigOption = None) -> None:
    """Every source of the current snapshot and the age of its newest record."""
    from moorage.va.feeds import age, open_store

    def work(settings: Settings) -> list[str]:
        with open_store(settings) as store:
            snapshot = store.current()
        if snapshot is None:
            return ["No advisory data: run `moorage va db import`."]
        now = datetime.now(UTC)
        lines = [f"snapshot {snapshot.id} ({snapshot.created_at:%Y-%m-%d %H:%M:%S}Z)"]
        lines.append(f"{'SOURCE':30} {'KIND':14} {'RECORDS':>8} {'NEWEST':20} {'AGE':>5} IMPORTED")
        for s in snapshot.sources:
            lines.append(
                f"{s.name:30} {s.kind:14} {s.records:>8} {s.newest_modified:20} "
                f"{age(s, now):>5} {s.imported_at:%Y-%m-%d %H:%M:%S}Z"
            )
        return lines

    for line in _run(data, config, work):
        typer.echo(line)


@db.command("export")
def export(
    path: Annotated[Path, typer.Argument(help="The bundle (zip) to write")],
    data: DataOption = None,
    config: ConfigOption = None,
) -> None:
    """Write the current snapshot as a bundle `moorage va db import` takes back."""
    from moorage.va.feeds import open_store, write_bundle

    def work(settings: Settings) -> int:
        with open_store(settings) as store:
            return write_bundle(store, path)

    count = _run(data, config, work)
    typer.echo(f"wrote {count} records to {path}")
