"""The ``moorage`` command."""

from moorage.cli.main import app, main

__all__ = ["app", "main"]
