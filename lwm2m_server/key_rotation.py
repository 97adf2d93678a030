"""Key rotation: have a device bootstrap again (Bootstrap-Request Trigger, /1/x/9) and wait until it registers
with the fresh server credential the bootstrap server issued it.

The old credential is retired by the bootstrap server when it issues the new one; the LwM2M server then drops
the sessions made with it (credential sync). Invariant: :func:`rotate_device_key` reports success only once the
device has registered again under an identity other than the one it had.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from lwm2m_server.core.errors import InvalidPathError, InvalidRequestError, RequestTimeoutError
from lwm2m_server.core.operations import ExecuteRequest
from lwm2m_server.core.paths import LwM2mPath
from lwm2m_server.events import REGISTRATION_REGISTERED, EventBus
from lwm2m_server.management import DeviceManagement

SERVER_OBJECT = 1
BOOTSTRAP_REQUEST_TRIGGER = 9


@dataclass(frozen=True, slots=True)
class KeyRotation:
    endpoint: str
    old_identity: str
    new_identity: str
    seconds: float


def _server_instance(links: tuple[object, ...]) -> int:
    """The device's first Server object instance (from its registration links), 0 when it lists none."""
    for link in links:
        try:
            path = LwM2mPath.parse(getattr(link, "target", ""))
        except InvalidPathError:
            continue
        if path.depth == 2 and path.ids[0] == SERVER_OBJECT:
            return path.ids[1]
    return 0


async def rotate_device_key(management: DeviceManagement, events: EventBus, endpoint: str, *,
                            timeout: float = 60.0, tenant_id: str) -> KeyRotation:
    """Execute /1/x/9 on ``endpoint`` and wait (at most ``timeout`` s) for its registration with a new identity.

    Raises :class:`InvalidRequestError` for a device not registered over DTLS (it has no key to rotate),
    ``ErrorResponseError`` when the device refuses the Execute, :class:`RequestTimeoutError` when it does not
    come back in time."""
    reg = management.reachable(endpoint, tenant_id=tenant_id)
    if not reg.secure or reg.identity is None:
        raise InvalidRequestError(f"{endpoint} is not registered over DTLS: it has no key to rotate")
    old = reg.identity
    loop = asyncio.get_running_loop()
    started = loop.time()
    queue = events.queue(REGISTRATION_REGISTERED, maxsize=256)
    try:
        path = LwM2mPath.of(SERVER_OBJECT, _server_instance(reg.links), BOOTSTRAP_REQUEST_TRIGGER)
        await management.send(endpoint, ExecuteRequest(path), timeout=min(timeout, 30.0), tenant_id=tenant_id)
        deadline = started + timeout
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise RequestTimeoutError(f"{endpoint} did not register with a new key within {timeout:g} s")
            try:
                event = await asyncio.wait_for(queue.get(), remaining)
            except TimeoutError:
                continue
            identity = event.data.get("identity")
            if event.endpoint == endpoint and event.tenant_id == tenant_id and identity and identity != old:
                return KeyRotation(endpoint, old, str(identity), round(loop.time() - started, 3))
    finally:
        queue.close()
