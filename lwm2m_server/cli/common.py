"""What every ``scratch`` command group shares: the error console, the error exit, quiet library logging, and
the plain one-line usage errors.

Invariant: every error a command ends with is one line ``error: <message>`` on stderr, whatever the terminal's
width (usage errors from click/typer included, exit code 2); ``--help`` keeps typer's formatting.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Sequence
from typing import Any

import typer
from rich.console import Console
from typer._click.exceptions import ClickException, NoArgsIsHelpError  # what typer raises (its own click)
from typer.core import TyperGroup

err_console = Console(stderr=True, soft_wrap=True)


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print :func:`plain_error_line` of ``message`` on stderr (one line, no markup: a message may quote anything);
    the exit to raise with ``code``."""
    print(plain_error_line(message), file=sys.stderr, flush=True)
    return typer.Exit(code)


def quiet_logs() -> None:
    """Library warnings (e.g. "created a new vault key file") as one plain stderr line each; no info chatter."""
    logging.basicConfig(level=logging.WARNING, format="warning: %(message)s")


def plain_error_line(message: str) -> str:
    """``error: <message>`` on one line (line breaks and runs of spaces folded into one space)."""
    return "error: " + " ".join(message.split())


class PlainErrorsGroup(TyperGroup):
    """A typer command group whose usage errors (unknown option, bad value, missing argument...) and aborts print
    :func:`plain_error_line` on stderr (exit code 2 for usage errors, 1 for an abort), not typer's Rich panel
    whose wrapping follows the terminal's width. Only the outermost group's :meth:`main` runs."""

    def main(self, args: Sequence[str] | None = None, prog_name: str | None = None,  # type: ignore[override]
             complete_var: str | None = None, standalone_mode: bool = True, **extra: Any) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except NoArgsIsHelpError as e:  # no_args_is_help: the help is the message (typer's rich help: printed)
            if e.format_message().strip():
                print(e.format_message(), file=sys.stderr, flush=True)
            sys.exit(e.exit_code)
        except ClickException as e:
            print(plain_error_line(e.format_message()), file=sys.stderr, flush=True)
            sys.exit(e.exit_code)
        except typer.Abort:
            print(plain_error_line("aborted"), file=sys.stderr, flush=True)
            sys.exit(1)
        # not standalone, typer returns an Exit's code (commands themselves return None)
        sys.exit(rv if isinstance(rv, int) else 0)


def new_app(**kwargs: Any) -> typer.Typer:
    """A ``typer.Typer`` for a ``scratch`` command group: plain one-line usage errors (:class:`PlainErrorsGroup`)
    and no pretty tracebacks (typer's would print every local variable of every frame, keys included)."""
    kwargs.setdefault("no_args_is_help", True)
    return typer.Typer(cls=PlainErrorsGroup, pretty_exceptions_enable=False, **kwargs)


async def wait_for_signal() -> None:
    """Return at the first SIGINT or SIGTERM (Ctrl-C, or a service manager stopping us)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
