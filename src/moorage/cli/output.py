"""Tables for people, JSON for programs (``--output json``)."""

from __future__ import annotations

import inspect
import json
import re
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


_LITERAL = re.compile(r"``([^`]+)``")


def plain_help(text: str | None) -> str | None:
    """A docstring as help reads it: each paragraph one flowing sentence run (the
    terminal wraps it), reStructuredText literals shown plainly."""
    if not text:
        return text
    paragraphs = [" ".join(p.split()) for p in inspect.cleandoc(text).split("\n\n")]
    return "\n\n".join(_LITERAL.sub(r"\1", p) for p in paragraphs if p)


def flow_help(app: typer.Typer) -> None:
    """Give every command and group of ``app`` (and below) plain help text."""
    for command in app.registered_commands:
        command.help = plain_help(command.help or inspect.getdoc(command.callback))
    for group in app.registered_groups:
        if group.typer_instance is not None:
            info = group.typer_instance.info
            info.help = plain_help(info.help if isinstance(info.help, str) else None)
            flow_help(group.typer_instance)
