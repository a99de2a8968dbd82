"""Tables for people, JSON for programs (``--output json``)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

OutputOption = typer.Option("table", "--output", help="table or json")


def emit(rows: Any, columns: Sequence[tuple[str, str]] | None, output: str) -> None:
    if output == "json":
        typer.echo(json.dumps(rows, indent=2, default=str))
        return
    if output != "table":
        raise typer.BadParameter("--output must be table or json")
    if columns is None:
        for key, value in rows.items():
            typer.echo(f"{key:<16}{value}")
        return
    table = Table(show_edge=False, box=None, header_style="bold")
    for _, title in columns:
        table.add_column(title)
    for row in rows:
        table.add_row(*(_cell(row.get(k)) for k, _ in columns))
    Console(width=200).print(table)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    return str(value)
