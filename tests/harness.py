"""Test harness: a real server and real simulated devices on 127.0.0.1 with ephemeral ports.

Everything started here is stopped by the context managers, also when a test fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiocoap
from aiocoap import Message

from lwm2m_server.server import Lwm2mServer, ServerSettings

_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None
_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """``preexec_fn`` for a child process that must die with the test process (PR_SET_PDEATHSIG), e.g. when pytest
    is killed. Runs between fork and exec: no imports, no allocation to speak of."""
    if _LIBC is not None:
        _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


@contextlib.asynccontextmanager
async def running_server(data_dir: Path, **settings: Any) -> AsyncIterator[Lwm2mServer]:
    settings.setdefault("coap_port", 0)
    credentials = settings.pop("credentials", None)
    vault = settings.pop("vault", None)
    s = ServerSettings(data_dir=data_dir, api_port=settings.pop("api_port", None), **settings)
    srv = Lwm2mServer(s, credentials=credentials, vault=vault)
    try:
        await srv.start()
    except BaseException:
        await srv.stop()
        raise
    try:
        yield srv
    finally:
        await srv.stop()


@contextlib.asynccontextmanager
async def coap_client() -> AsyncIterator[aiocoap.Context]:
    ctx = await aiocoap.Context.create_client_context(transports=["udp6"])
    try:
        yield ctx
    finally:
        await ctx.shutdown()


async def request(ctx: aiocoap.Context, msg: Message, timeout: float = 10.0) -> Message:
    return await asyncio.wait_for(ctx.request(msg).response, timeout)


async def eventually(predicate: Any, timeout: float = 10.0, interval: float = 0.02) -> None:
    """Wait until ``predicate()`` is true; fail the test after ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"condition not met within {timeout} s: {predicate}")
        await asyncio.sleep(interval)
