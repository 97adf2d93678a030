"""A UDP port belongs to one context: a second server on a port in use is refused, not silently shared."""

from __future__ import annotations

import pytest

from tests.harness import running_server


async def test_second_server_on_the_same_port_is_refused(tmp_path):
    async with running_server(tmp_path / "a") as first:
        with pytest.raises(OSError):
            async with running_server(tmp_path / "b", coap_port=first.coap_port):
                pass
