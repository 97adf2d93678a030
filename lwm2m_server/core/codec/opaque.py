"""application/octet-stream (content format 42): the raw bytes of one Opaque resource or resource instance.

Invariants: only an Opaque :class:`SingleResource` (at /O/I/R) or :class:`ResourceInstance` (at /O/I/R/RI)
travels in this format; ``decode(encode(n)) == n``; any payload decodes (it is just bytes) unless the path or the
model's type rules it out, which raises :class:`CodecError`.
"""

from __future__ import annotations

from lwm2m_server.core.codec.text import make_value_node, single_value_target
from lwm2m_server.core.errors import CodecError
from lwm2m_server.core.model.definitions import ObjectModel
from lwm2m_server.core.nodes import Node, ResourceInstance, ResourceType, SingleResource
from lwm2m_server.core.paths import LwM2mPath

FORMAT_NAME = "application/octet-stream"


def encode(node: Node) -> bytes:
    if not isinstance(node, SingleResource | ResourceInstance) or node.type is not ResourceType.OPAQUE:
        raise CodecError(f"{FORMAT_NAME} carries only an Opaque value")
    assert isinstance(node.value, bytes)
    return node.value


def decode(payload: bytes, path: LwM2mPath, model: ObjectModel) -> SingleResource | ResourceInstance:
    defn = single_value_target(path, model, FORMAT_NAME)
    if defn is not None and defn.type is not ResourceType.OPAQUE:
        raise CodecError(f"{FORMAT_NAME} carries only Opaque values; {path} is {defn.type.value}")
    return make_value_node(path, ResourceType.OPAQUE, bytes(payload))
