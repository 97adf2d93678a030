"""A device's Read answer: the node encoded in the format asked for (Accept) or in the device's default.

Shared by the device in normal operation and in bootstrap mode. Invariant: the answer is 2.05 with a payload
in a format that can carry the node, or :class:`FormatNotAcceptableError` (4.06).
"""

from __future__ import annotations

from aiocoap import Message
from aiocoap.numbers.codes import Code

from client_sim.errors import FormatNotAcceptableError
from lwm2m_server.core.codec import registry
from lwm2m_server.core.codec.formats import ContentFormat
from lwm2m_server.core.errors import CodecError
from lwm2m_server.core.model.definitions import ObjectModel
from lwm2m_server.core.nodes import Node, ResourceInstance, ResourceType, SingleResource
from lwm2m_server.core.paths import LwM2mPath


def response_format(node: Node, path: LwM2mPath, accept: int | None, model: ObjectModel,
                    lwm2m_version: str) -> ContentFormat:
    """Accept when it can carry the node; without Accept: text (opaque for opaque values) for one value, TLV for a
    LwM2M 1.0 device, SenML CBOR otherwise."""
    if accept is None:
        if isinstance(node, SingleResource | ResourceInstance):
            return ContentFormat.OPAQUE if node.type is ResourceType.OPAQUE else ContentFormat.TEXT
        return ContentFormat.TLV if lwm2m_version == "1.0" else ContentFormat.SENML_CBOR
    try:
        fmt = ContentFormat(accept)
    except ValueError:
        raise FormatNotAcceptableError(f"content format {accept} is not supported") from None
    if fmt is ContentFormat.LINK or not registry.can_encode(fmt, node, path, model):
        raise FormatNotAcceptableError(f"{path} cannot be represented in {fmt.label}")
    return fmt


def content_response(node: Node, path: LwM2mPath, accept: int | None, model: ObjectModel,
                     lwm2m_version: str) -> Message:
    """The 2.05 Content answer carrying ``node``."""
    fmt = response_format(node, path, accept, model, lwm2m_version)
    try:
        payload = registry.encode(node, path, fmt, model)
    except CodecError as e:
        raise FormatNotAcceptableError(f"{path} cannot be represented in {fmt.label}: {e}") from None
    return Message(code=Code.CONTENT, payload=payload, content_format=int(fmt))
