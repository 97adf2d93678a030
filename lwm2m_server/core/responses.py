"""Decoding of device answers to downlink requests, sans I/O.

Invariant: :func:`decode_response` either returns a :class:`DownlinkResponse` for a 2.xx answer, or raises
:class:`ErrorResponseError` (4.xx/5.xx answers, carrying the code) or a :class:`CodecError` (a 2.xx answer whose
payload does not decode).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TypeAlias

from lwm2m_server.core.codec import link, registry
from lwm2m_server.core.codec.formats import ContentFormat
from lwm2m_server.core.codec.link import Link
from lwm2m_server.core.errors import ErrorResponseError, MalformedPayloadError
from lwm2m_server.core.model import ObjectModel
from lwm2m_server.core.nodes import Instance, MultipleResource, Node, Obj, SingleResource, assemble
from lwm2m_server.core.operations import (
    CancelObservationRequest,
    DiscoverRequest,
    DownlinkRequest,
    ObserveRequest,
    ReadCompositeRequest,
    ReadRequest,
)
from lwm2m_server.core.paths import LwM2mPath

Content: TypeAlias = Node | Mapping[LwM2mPath, Node] | tuple[Link, ...] | None


@dataclass(frozen=True, slots=True)
class DownlinkResponse:
    code: int
    content_format: int | None = None
    content: Content = None
    location: tuple[str, ...] = ()


def decode_response(request: DownlinkRequest, code: int, content_format: int | None, payload: bytes,
                    model: ObjectModel, location: tuple[str, ...] = ()) -> DownlinkResponse:
    if code >> 5 != 2:
        raise ErrorResponseError(code, payload.decode("utf-8", "replace")[:120] if payload else "")
    content: Content = None
    if isinstance(request, DiscoverRequest):
        content = link.decode(payload)
    elif isinstance(request, ReadCompositeRequest):
        fmt = ContentFormat.of(content_format) if content_format is not None else request.format
        parts = registry.decode_composite(payload, fmt, model)
        assembled = {p: assemble(p, parts) for p in request.paths}
        content = {p: n for p, n in assembled.items() if n is not None}
    elif isinstance(request, ReadRequest | ObserveRequest | CancelObservationRequest):
        content = decode_node(payload, content_format, request.path, model)
    return DownlinkResponse(code, content_format, content, location)


def decode_node(payload: bytes, content_format: int | None, path: LwM2mPath, model: ObjectModel) -> Node:
    """Decode a Read or notification payload; no Content-Format means text/plain (RFC 7252 5.10.3)."""
    fmt = ContentFormat.of(content_format) if content_format is not None else ContentFormat.TEXT
    if not payload and fmt not in (ContentFormat.OPAQUE, ContentFormat.TEXT):
        raise MalformedPayloadError(f"empty {fmt.label} payload for {path}")
    return registry.decode(payload, fmt, path, model)


def default_write_format(node: Node, supported: frozenset[int]) -> ContentFormat:
    """The format to write ``node`` in, given the formats a device supports: text/plain or opaque for single
    values, else TLV, then SenML CBOR, SenML JSON, LwM2M CBOR, in that order of preference."""
    if isinstance(node, SingleResource) or not isinstance(node, Instance | Obj | MultipleResource):
        if node.type.value == "Opaque":
            return ContentFormat.OPAQUE
        return ContentFormat.TEXT
    for fmt in (ContentFormat.TLV, ContentFormat.SENML_CBOR, ContentFormat.SENML_JSON, ContentFormat.LWM2M_CBOR):
        if fmt in supported:
            return fmt
    return ContentFormat.TLV
