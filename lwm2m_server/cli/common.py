"""What every ``scratch`` command group shares: the error console, the error exit and quiet library logging."""

from __future__ import annotations

import logging

import typer
from rich.console import Console

err_console = Console(stderr=True, soft_wrap=True)


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print ``error: message`` (rich markup allowed) on stderr; the exit to raise with ``code``."""
    err_console.print(f"[red]error:[/red] {message}", highlight=False)
    return typer.Exit(code)


def quiet_logs() -> None:
    """Library warnings (e.g. "created a new vault key file") as one plain stderr line each; no info chatter."""
    logging.basicConfig(level=logging.WARNING, format="warning: %(message)s")
