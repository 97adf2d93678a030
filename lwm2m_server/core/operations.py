"""Device Management and Information Reporting operations: one frozen request type per operation.

Each request is validated when it is built (wrong path level, bad arguments and bad attributes raise
:class:`InvalidRequestError`), and knows how it travels as CoAP through :func:`to_coap`, a pure function that
returns a :class:`CoapRequest` description; the transport only copies that description onto a message.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import TypeAlias

from lwm2m_server.core.codec.formats import ContentFormat
from lwm2m_server.core.errors import InvalidRequestError
from lwm2m_server.core.nodes import Instance, MultipleResource, Node, Obj, ResourceInstance, SingleResource
from lwm2m_server.core.paths import LwM2mPath

EncodeFn: TypeAlias = Callable[[Node, LwM2mPath, ContentFormat], bytes]
EncodePathsFn: TypeAlias = Callable[[Sequence[LwM2mPath], ContentFormat], bytes]


class WriteMode(Enum):
    REPLACE = "replace"  # PUT: the target becomes exactly what is sent
    UPDATE = "update"  # POST: partial update, resources not sent are kept


def _require_depth(op: str, path: LwM2mPath, depths: tuple[int, ...]) -> None:
    if path.depth not in depths:
        levels = {0: "the root", 1: "an object", 2: "an object instance", 3: "a resource", 4: "a resource instance"}
        allowed = " or ".join(levels[d] for d in depths)
        raise InvalidRequestError(f"{op} needs {allowed} path, not {path}")


@dataclass(frozen=True, slots=True)
class ReadRequest:
    path: LwM2mPath
    format: ContentFormat | None = None  # None: let the device choose

    def __post_init__(self) -> None:
        _require_depth("Read", self.path, (1, 2, 3, 4))


@dataclass(frozen=True, slots=True)
class DiscoverRequest:
    path: LwM2mPath

    def __post_init__(self) -> None:
        _require_depth("Discover", self.path, (1, 2, 3))


def _node_fits(path: LwM2mPath, node: Node) -> bool:
    if path.depth == 1:
        return isinstance(node, Obj) and node.id == path.object_id
    if path.depth == 2:
        return isinstance(node, Instance) and node.id == path.instance_id
    if path.depth == 3:
        return isinstance(node, SingleResource | MultipleResource) and node.id == path.resource_id
    return isinstance(node, ResourceInstance) and node.id == path.resource_instance_id


@dataclass(frozen=True, slots=True)
class WriteRequest:
    """Write (replace or partial update) of an object instance, a resource or a resource instance."""

    path: LwM2mPath
    node: Node
    mode: WriteMode = WriteMode.REPLACE
    format: ContentFormat | None = None  # None: the sender picks one the device supports

    def __post_init__(self) -> None:
        _require_depth("Write", self.path, (2, 3, 4))
        if not _node_fits(self.path, self.node):
            raise InvalidRequestError(f"a {type(self.node).__name__} with id {getattr(self.node, 'id', '?')} "
                                      f"cannot be written at {self.path}")
        if self.mode is WriteMode.UPDATE and self.path.depth == 4:
            raise InvalidRequestError("a partial update targets an object instance or a multiple resource")
        if self.mode is WriteMode.UPDATE and self.path.depth == 3 and not isinstance(self.node, MultipleResource):
            raise InvalidRequestError("a partial update of a resource is only defined for multiple resources")


_ARG = re.compile(r"^[0-9](='[!#-&(-\[\]-~]*')?$")  # LwM2M 1.1 Core 5.4.2: digit ['=' "'" text "'"]


@dataclass(frozen=True, slots=True)
class ExecuteRequest:
    path: LwM2mPath
    arguments: str = ""

    def __post_init__(self) -> None:
        _require_depth("Execute", self.path, (3,))
        if self.arguments and not all(_ARG.match(a) for a in _split_arguments(self.arguments)):
            raise InvalidRequestError(
                f"invalid Execute arguments {self.arguments!r}: expected a list like 0='text',1 "
                "(digits, with an optional quoted value)")


def _split_arguments(text: str) -> list[str]:
    out: list[str] = []
    cur: list[str] = []
    quoted = False
    for c in text:
        if c == "'":
            quoted = not quoted
        if c == "," and not quoted:
            out.append("".join(cur))
            cur = []
        else:
            cur.append(c)
    out.append("".join(cur))
    return out


NUMERIC_ATTRIBUTES = ("pmin", "pmax", "gt", "lt", "st", "epmin", "epmax", "hqmax")
ALL_ATTRIBUTES = (*NUMERIC_ATTRIBUTES, "edge", "con")
AttributeValue: TypeAlias = int | float | None


@dataclass(frozen=True, slots=True)
class WriteAttributesRequest:
    """Write-Attributes; an attribute given as ``None`` is removed (sent without a value)."""

    path: LwM2mPath
    attributes: Mapping[str, AttributeValue] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _require_depth("Write-Attributes", self.path, (1, 2, 3, 4))
        if not self.attributes:
            raise InvalidRequestError("Write-Attributes needs at least one attribute")
        for name, value in self.attributes.items():
            if name not in ALL_ATTRIBUTES:
                raise InvalidRequestError(f"unknown attribute {name!r}; known: {', '.join(ALL_ATTRIBUTES)}")
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise InvalidRequestError(f"attribute {name} needs a number, not {value!r}")
            if name in ("pmin", "pmax", "epmin", "epmax", "hqmax") and (value < 0 or value != int(value)):
                raise InvalidRequestError(f"attribute {name} needs a non-negative integer, not {value!r}")
            if name in ("edge", "con") and value not in (0, 1):
                raise InvalidRequestError(f"attribute {name} is 0 or 1, not {value!r}")
            if name == "st" and value < 0:
                raise InvalidRequestError("attribute st must not be negative")
        pmin, pmax = self.attributes.get("pmin"), self.attributes.get("pmax")
        if pmin is not None and pmax is not None and pmax < pmin:
            raise InvalidRequestError(f"pmax {pmax} is below pmin {pmin}")
        lt, gt, st = self.attributes.get("lt"), self.attributes.get("gt"), self.attributes.get("st")
        if lt is not None and gt is not None and (lt >= gt or (st is not None and lt + 2 * st >= gt)):
            raise InvalidRequestError("attributes need lt < gt (and lt + 2*st < gt)")

    def query(self) -> tuple[str, ...]:
        out = []
        for name, value in self.attributes.items():
            if value is None:
                out.append(name)
            elif isinstance(value, float) and value.is_integer() and name in NUMERIC_ATTRIBUTES[:2]:
                out.append(f"{name}={int(value)}")
            else:
                out.append(f"{name}={value}")
        return tuple(out)


@dataclass(frozen=True, slots=True)
class CreateRequest:
    """Create one object instance under /O (the instance id travels in the payload)."""

    path: LwM2mPath
    instance: Instance
    format: ContentFormat | None = None

    def __post_init__(self) -> None:
        _require_depth("Create", self.path, (1,))


@dataclass(frozen=True, slots=True)
class DeleteRequest:
    path: LwM2mPath

    def __post_init__(self) -> None:
        _require_depth("Delete", self.path, (2,))


@dataclass(frozen=True, slots=True)
class ObserveRequest:
    path: LwM2mPath
    format: ContentFormat | None = None

    def __post_init__(self) -> None:
        _require_depth("Observe", self.path, (1, 2, 3, 4))


@dataclass(frozen=True, slots=True)
class CancelObservationRequest:
    """Active cancellation: a GET with Observe=1 for a path observed before."""

    path: LwM2mPath
    format: ContentFormat | None = None

    def __post_init__(self) -> None:
        _require_depth("Cancel Observation", self.path, (1, 2, 3, 4))


COMPOSITE_FORMATS = (ContentFormat.SENML_CBOR, ContentFormat.SENML_JSON, ContentFormat.LWM2M_CBOR)


@dataclass(frozen=True, slots=True)
class ReadCompositeRequest:
    """Read-Composite (LwM2M 1.1+): a FETCH whose body lists the paths to read."""

    paths: tuple[LwM2mPath, ...]
    format: ContentFormat = ContentFormat.SENML_CBOR  # of the answer
    request_format: ContentFormat = ContentFormat.SENML_CBOR  # of the path list

    def __post_init__(self) -> None:
        if not self.paths:
            raise InvalidRequestError("Read-Composite needs at least one path")
        for fmt in (self.format, self.request_format):
            if fmt not in COMPOSITE_FORMATS:
                raise InvalidRequestError(f"Read-Composite works with SenML or LwM2M CBOR, not {fmt.label}")


DownlinkRequest: TypeAlias = (
    ReadRequest | DiscoverRequest | WriteRequest | ExecuteRequest | WriteAttributesRequest | CreateRequest
    | DeleteRequest | ObserveRequest | CancelObservationRequest | ReadCompositeRequest
)

OPERATION_NAMES: Mapping[type, str] = {
    ReadRequest: "Read", DiscoverRequest: "Discover", WriteRequest: "Write", ExecuteRequest: "Execute",
    WriteAttributesRequest: "Write-Attributes", CreateRequest: "Create", DeleteRequest: "Delete",
    ObserveRequest: "Observe", CancelObservationRequest: "Cancel Observation", ReadCompositeRequest: "Read-Composite",
}


@dataclass(frozen=True, slots=True)
class CoapRequest:
    """What a request looks like on the wire, before the transport builds the message."""

    method: str  # GET, PUT, POST, DELETE, FETCH
    uri_path: tuple[str, ...]
    uri_query: tuple[str, ...] = ()
    content_format: int | None = None
    accept: int | None = None
    payload: bytes = b""
    observe: int | None = None

    @property
    def expected_codes(self) -> frozenset[int]:
        return _EXPECTED[self.method]


_EXPECTED = {
    "GET": frozenset({0x45}), "FETCH": frozenset({0x45}), "PUT": frozenset({0x44}),
    "POST": frozenset({0x44, 0x41}), "DELETE": frozenset({0x42}),
}


def uri_path(root_path: str, path: LwM2mPath) -> tuple[str, ...]:
    """The Uri-Path segments for ``path`` on a device whose objects live below ``root_path`` (alternate path)."""
    root = tuple(s for s in root_path.split("/") if s)
    return (*root, *path.segments)


def to_coap(request: DownlinkRequest, *, root_path: str = "/",
            encode: EncodeFn | None = None, encode_paths: EncodePathsFn | None = None) -> CoapRequest:
    """Describe ``request`` as CoAP. ``encode(node, path, fmt)`` and ``encode_paths(paths, fmt)`` serialise
    payloads (the caller binds the codec registry and the object model); ``request.format`` must be set for
    requests that carry a node."""
    segs = uri_path(root_path, request.path) if not isinstance(request, ReadCompositeRequest) else ()
    if isinstance(request, ReadRequest):
        return CoapRequest("GET", segs, accept=request.format)
    if isinstance(request, DiscoverRequest):
        return CoapRequest("GET", segs, accept=ContentFormat.LINK)
    if isinstance(request, ObserveRequest):
        return CoapRequest("GET", segs, accept=request.format, observe=0)
    if isinstance(request, CancelObservationRequest):
        return CoapRequest("GET", segs, accept=request.format, observe=1)
    if isinstance(request, ExecuteRequest):
        return CoapRequest("POST", segs, payload=request.arguments.encode(),
                           content_format=ContentFormat.TEXT if request.arguments else None)
    if isinstance(request, WriteAttributesRequest):
        return CoapRequest("PUT", segs, uri_query=request.query())
    if isinstance(request, DeleteRequest):
        return CoapRequest("DELETE", segs)
    if isinstance(request, ReadCompositeRequest):
        if encode_paths is None:
            raise InvalidRequestError("Read-Composite needs a path encoder")
        root = tuple(s for s in root_path.split("/") if s)
        return CoapRequest("FETCH", root, content_format=request.request_format, accept=request.format,
                           payload=encode_paths(request.paths, request.request_format))
    if encode is None or request.format is None:
        raise InvalidRequestError(f"{OPERATION_NAMES[type(request)]} needs a content format and an encoder")
    if isinstance(request, WriteRequest):
        method = "PUT" if request.mode is WriteMode.REPLACE else "POST"
        return CoapRequest(method, segs, content_format=request.format,
                           payload=encode(request.node, request.path, request.format))
    if isinstance(request, CreateRequest):
        # The new instance's id travels in the payload, so the object level is encoded (TLV: one instance TLV).
        obj = Obj(request.path.object_id or 0, {request.instance.id: request.instance})
        return CoapRequest("POST", segs, content_format=request.format,
                           payload=encode(obj, request.path, request.format))
    raise InvalidRequestError(f"unknown request {request!r}")  # pragma: no cover


