"""The loop of a write-behind: a step (a flush of what is pending) every interval, backing off while it fails.

Shared by the registrations (:mod:`lwm2m_server.registry.service`), the event outbox (:mod:`lwm2m_server.outbox`)
and the usage meter (:mod:`lwm2m_server.metering.meter`). Invariants: the step runs at most every ``interval``
seconds while it succeeds; after a failure the wait doubles up to ``max_delay`` and comes back to ``interval``
after the next success; a failure is handed to ``failed`` (the caller logs it: it knows what stays pending), never
raised; the loop ends when ``stop`` is set, without a last step (the caller's close does it). Stdlib only.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

__all__ = ["run_write_behind"]


async def run_write_behind(step: Callable[[], Awaitable[object]], stop: asyncio.Event, *, interval: float,
                           max_delay: float, failed: Callable[[Exception, float], None]) -> None:
    """Await ``step()`` every ``interval`` seconds until ``stop`` is set; ``failed(error, next_delay)`` hears of
    each failure (see the module docstring)."""
    delay = interval
    while not stop.is_set():
        try:
            async with asyncio.timeout(delay):
                await stop.wait()
        except TimeoutError:
            pass
        if stop.is_set():
            break
        try:
            await step()
            delay = interval
        except Exception as e:
            delay = min(delay * 2, max_delay)
            failed(e, delay)
