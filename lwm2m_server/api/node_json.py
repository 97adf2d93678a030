"""JSON views of LwM2M nodes for the REST API, and typed values from user text.

Opaque values are hex in JSON; object links are "O:I"; times are integer seconds since the epoch.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from lwm2m_server.core.codec.link import Link, format_link
from lwm2m_server.core.errors import InvalidRequestError
from lwm2m_server.core.nodes import (
    Instance,
    MultipleResource,
    Node,
    Obj,
    ObjectLink,
    ResourceInstance,
    ResourceType,
    SingleResource,
    Value,
)
from lwm2m_server.core.paths import LwM2mPath


def value_to_json(value: Value) -> Any:
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, ObjectLink):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def node_to_json(node: Node) -> dict[str, Any]:
    if isinstance(node, SingleResource):
        return {"kind": "resource", "id": node.id, "type": node.type.value, "value": value_to_json(node.value)}
    if isinstance(node, MultipleResource):
        return {"kind": "multiple", "id": node.id, "type": node.type.value,
                "values": {str(k): value_to_json(v) for k, v in sorted(node.instances.items())}}
    if isinstance(node, ResourceInstance):
        return {"kind": "resource-instance", "id": node.id, "type": node.type.value, "value": value_to_json(node.value)}
    if isinstance(node, Instance):
        return {"kind": "instance", "id": node.id,
                "resources": [node_to_json(r) for _, r in sorted(node.resources.items())]}
    if isinstance(node, Obj):
        return {"kind": "object", "id": node.id,
                "instances": [node_to_json(i) for _, i in sorted(node.instances.items())]}
    raise TypeError(f"not a node: {node!r}")


def composite_to_json(nodes: Mapping[LwM2mPath, Node]) -> dict[str, Any]:
    return {str(p): node_to_json(n) for p, n in sorted(nodes.items())}


def links_to_json(links: tuple[Link, ...]) -> list[dict[str, Any]]:
    return [{"target": link.target, "attributes": dict(link.attributes), "text": format_link(link)} for link in links]


_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def value_from_text(text: str, rtype: ResourceType) -> Value:
    """Read a value a person typed: numbers in decimal, booleans as true/false/1/0, opaque as hex, links O:I."""
    try:
        if rtype in (ResourceType.STRING, ResourceType.CORELNK):
            return text
        if rtype in (ResourceType.INTEGER, ResourceType.UNSIGNED_INTEGER, ResourceType.TIME):
            return int(text, 10)
        if rtype is ResourceType.FLOAT:
            return float(text)
        if rtype is ResourceType.BOOLEAN:
            low = text.strip().lower()
            if low in _TRUE:
                return True
            if low in _FALSE:
                return False
            raise ValueError("expected true or false")
        if rtype is ResourceType.OPAQUE:
            return bytes.fromhex(text.removeprefix("0x"))
        if rtype is ResourceType.OBJLNK:
            return ObjectLink.parse(text)
    except ValueError as e:
        raise InvalidRequestError(f"{text!r} is not a valid {rtype.value} value: {e}") from None
    raise InvalidRequestError(f"resources of type {rtype.value} take no value")


def value_from_json(value: Any, rtype: ResourceType) -> Value:
    if isinstance(value, str):
        return value_from_text(value, rtype)
    if rtype is ResourceType.FLOAT and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if rtype is ResourceType.BOOLEAN and isinstance(value, bool):
        return value
    if rtype in (ResourceType.INTEGER, ResourceType.UNSIGNED_INTEGER, ResourceType.TIME) and isinstance(value, int) \
            and not isinstance(value, bool):
        return value
    if rtype is ResourceType.FLOAT and isinstance(value, float):
        return value
    raise InvalidRequestError(f"{value!r} is not a valid {rtype.value} value")
