"""A device's components as it reports them in object 32700 (:mod:`lwm2m_server.core.model.firmware_component`):
read over LwM2M and turned into JSON-native dicts for campaigns, reports, the API, the CLI and the web interface.

Invariant: every dict has the keys of :data:`COMPONENT_FIELDS`, in install order (instance id order); a digest is
lowercase hex, a state its name (``installed``, ``staged``, ``rolled back``, ``failed``).
"""

from __future__ import annotations

from typing import Any, Final

from lwm2m_server.core.errors import Lwm2mError
from lwm2m_server.core.model.firmware_component import COMPONENT_STATES, FIRMWARE_COMPONENT_ID, ComponentResource
from lwm2m_server.core.nodes import Instance, Obj, SingleResource, device_text
from lwm2m_server.core.operations import ReadRequest
from lwm2m_server.core.paths import LwM2mPath

__all__ = ["COMPONENT_FIELDS", "component_dict", "read_components"]

COMPONENT_FIELDS: Final = ("name", "kind", "version", "digest", "size", "state", "update_result", "pending_version")


def component_dict(instance: Instance) -> dict[str, Any]:
    """One instance of object 32700 as a JSON-native dict (missing resources are None)."""
    values: dict[int, Any] = {r.id: r.value for r in instance.resources.values() if isinstance(r, SingleResource)}

    def text(rid: int) -> str | None:
        return device_text(values[rid]) if rid in values else None

    digest, state = values.get(ComponentResource.DIGEST), values.get(ComponentResource.STATE)
    size, result = values.get(ComponentResource.SIZE), values.get(ComponentResource.UPDATE_RESULT)
    return {"name": text(ComponentResource.NAME), "kind": text(ComponentResource.KIND),
            "version": text(ComponentResource.VERSION),
            "digest": bytes(digest).hex() if isinstance(digest, bytes | bytearray) else None,
            "size": size if isinstance(size, int) else None,
            "state": COMPONENT_STATES.get(state, str(state)) if isinstance(state, int) else None,
            "update_result": result if isinstance(result, int) else None,
            "pending_version": text(ComponentResource.PENDING_VERSION) or None}


async def read_components(management: Any, endpoint: str, *, tenant_id: str,
                          timeout: float | None = None) -> list[dict[str, Any]] | None:
    """Read /32700 of ``endpoint`` (a :class:`~lwm2m_server.management.DeviceManagement`): its components, or None
    when its registration lists no object 32700. Errors of the read (unreachable, 4.04...) are raised."""
    reg = management.registration(endpoint, tenant_id=tenant_id)
    if not reg.supports_object(FIRMWARE_COMPONENT_ID):
        return None
    response = await management.send(endpoint, ReadRequest(LwM2mPath.of(FIRMWARE_COMPONENT_ID)),
                                     tenant_id=tenant_id, timeout=timeout)
    node = response.content
    if not isinstance(node, Obj):
        raise Lwm2mError(f"{endpoint}: /32700 did not read as an object")
    return [component_dict(instance) for instance in sorted(node.instances.values(), key=lambda i: i.id)]
