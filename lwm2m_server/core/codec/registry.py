"""The one dispatch point for LwM2M content formats: encode and decode nodes, composites and composite paths.

``path`` is where a node lives: an :class:`Obj` at /O, an :class:`Instance` at /O/I, a :class:`SingleResource`
or :class:`MultipleResource` at /O/I/R, a :class:`ResourceInstance` at /O/I/R/RI.

Encoding: the model governs. A resource the model knows must have its multiplicity, and values valid for its
type (a node typed differently whose values fit, e.g. an Integer node for an Unsigned Integer resource, is
re-typed to the model's type); otherwise :class:`CodecError`. A resource the model does not know is written
with the node's own type. Instance ids and resource instance ids of 65535 are reserved and refused.

Decoding: types come from the model; a resource the model does not know is decoded with the type the payload
implies (TLV and octet-stream: Opaque; text: String; SenML, OMA JSON, LwM2M CBOR: by value field / CBOR type).

Errors: a format number we do not know, or a format that cannot do the operation at all (composite in TLV,
encoding OMA JSON): :class:`UnsupportedContentFormatError`. A format that cannot carry this node (text for an
instance, octet-stream for a string): :class:`CodecError`. A payload that is not what it should be:
:class:`MalformedPayloadError`. Decoders raise nothing but these, whatever the bytes.

Composite decoding returns one node per value in the payload, at its own path (a :class:`SingleResource` at
/O/I/R, a :class:`ResourceInstance` at /O/I/R/RI; plus empty containers LwM2M CBOR spells out): the payload
does not say how the values group, the caller knows which paths it asked for.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import Final, TypeAlias, TypeVar

from lwm2m_server.core.codec import lwm2m_cbor, oma_json, opaque, senml, text, tlv
from lwm2m_server.core.codec.formats import ContentFormat
from lwm2m_server.core.errors import CodecError, ModelError, UnsupportedContentFormatError
from lwm2m_server.core.model.definitions import ObjectModel
from lwm2m_server.core.nodes import (
    Instance,
    MultipleResource,
    Node,
    Obj,
    Resource,
    ResourceInstance,
    ResourceType,
    SingleResource,
)
from lwm2m_server.core.paths import LwM2mPath

NodeKind: TypeAlias = (
    type[Obj] | type[Instance] | type[SingleResource] | type[MultipleResource] | type[ResourceInstance]
)

_ALL: Final[frozenset[NodeKind]] = frozenset({Obj, Instance, SingleResource, MultipleResource, ResourceInstance})
_VALUES: Final[frozenset[NodeKind]] = frozenset({SingleResource, ResourceInstance})
_F = ContentFormat

ENCODERS: Final[Mapping[ContentFormat, frozenset[NodeKind]]] = MappingProxyType(
    {
        _F.TEXT: _VALUES,
        _F.OPAQUE: _VALUES,  # Opaque values only
        _F.TLV: _ALL,
        _F.TLV_OLD: _ALL,
        _F.SENML_JSON: _ALL,
        _F.SENML_CBOR: _ALL,
        _F.LWM2M_CBOR: _ALL,
    }
)
"""The node kinds each format can encode."""

DECODERS: Final[Mapping[ContentFormat, frozenset[NodeKind]]] = MappingProxyType(
    {**ENCODERS, _F.OMA_JSON: _ALL, _F.JSON_OLD: _ALL}
)
"""The node kinds each format can decode into."""

_Encode = Callable[[Node, LwM2mPath], bytes]
_Decode = Callable[[bytes, LwM2mPath, ObjectModel], Node]

_ENCODE: Final[Mapping[ContentFormat, _Encode]] = {
    _F.TEXT: lambda node, path: text.encode(node),
    _F.OPAQUE: lambda node, path: opaque.encode(node),
    _F.TLV: lambda node, path: tlv.encode(node),
    _F.TLV_OLD: lambda node, path: tlv.encode(node),
    _F.SENML_JSON: senml.encode_json,
    _F.SENML_CBOR: senml.encode_cbor,
    _F.LWM2M_CBOR: lwm2m_cbor.encode,
}
_DECODE: Final[Mapping[ContentFormat, _Decode]] = {
    _F.TEXT: text.decode,
    _F.OPAQUE: opaque.decode,
    _F.TLV: tlv.decode,
    _F.TLV_OLD: tlv.decode,
    _F.SENML_JSON: senml.decode_json,
    _F.SENML_CBOR: senml.decode_cbor,
    _F.LWM2M_CBOR: lwm2m_cbor.decode,
    _F.OMA_JSON: oma_json.decode,
    _F.JSON_OLD: oma_json.decode,
}
_ENCODE_COMPOSITE: Final[Mapping[ContentFormat, Callable[[Mapping[LwM2mPath, Node]], bytes]]] = {
    _F.SENML_JSON: senml.encode_composite_json,
    _F.SENML_CBOR: senml.encode_composite_cbor,
    _F.LWM2M_CBOR: lwm2m_cbor.encode_composite,
}
_DECODE_COMPOSITE: Final[Mapping[ContentFormat, Callable[[bytes, ObjectModel], dict[LwM2mPath, Node]]]] = {
    _F.SENML_JSON: senml.decode_composite_json,
    _F.SENML_CBOR: senml.decode_composite_cbor,
    _F.LWM2M_CBOR: lwm2m_cbor.decode_composite,
}
_ENCODE_PATHS: Final[Mapping[ContentFormat, Callable[[Sequence[LwM2mPath]], bytes]]] = {
    _F.SENML_JSON: senml.encode_paths_json,
    _F.SENML_CBOR: senml.encode_paths_cbor,
    _F.LWM2M_CBOR: lwm2m_cbor.encode_paths,
}
_DECODE_PATHS: Final[Mapping[ContentFormat, Callable[[bytes], list[LwM2mPath]]]] = {
    _F.SENML_JSON: senml.decode_paths_json,
    _F.SENML_CBOR: senml.decode_paths_cbor,
    _F.LWM2M_CBOR: lwm2m_cbor.decode_paths,
}
_DEPTH: Final[Mapping[type, int]] = {
    Obj: 1,
    Instance: 2,
    SingleResource: 3,
    MultipleResource: 3,
    ResourceInstance: 4,
}
_RESERVED = 0xFFFF
_T = TypeVar("_T")


def _lookup(table: Mapping[ContentFormat, _T], fmt: int, what: str) -> tuple[ContentFormat, _T]:
    try:
        f = ContentFormat(fmt)
    except ValueError:
        raise UnsupportedContentFormatError(f"unsupported content format {fmt!r}") from None
    fn = table.get(f)
    if fn is None:
        raise UnsupportedContentFormatError(f"content format {f.label} ({int(f)}) cannot {what}")
    return f, fn


# --- encode-side checks ------------------------------------------------------------------------------------------


def _check_placement(node: Node, path: LwM2mPath) -> None:
    depth = _DEPTH.get(type(node))
    if depth is None:
        raise CodecError(f"not an LwM2M node: {type(node).__name__}")
    if path.depth != depth or path.ids[-1] != node.id:
        raise CodecError(f"a {type(node).__name__} with id {node.id} cannot live at {path}")


def _retype_error(where: str, e: ModelError) -> CodecError:
    return CodecError(f"{where}: value does not match the model: {e}")


def _conform_resource(oid: int, iid: int, r: Resource, model: ObjectModel) -> Resource:
    where = f"/{oid}/{iid}/{r.id}"
    if isinstance(r, MultipleResource) and _RESERVED in r.instances:
        raise CodecError(f"{where}: resource instance id 65535 is reserved")
    defn = model.resource(oid, r.id)
    if defn is None:
        return r
    if defn.multiple != isinstance(r, MultipleResource):
        kind = "multiple" if defn.multiple else "single"
        raise CodecError(f"{where}: the model says this resource is {kind}, the node is a {type(r).__name__}")
    if r.type is defn.type:
        return r
    try:
        if isinstance(r, SingleResource):
            return SingleResource(r.id, defn.type, r.value)
        return MultipleResource(r.id, defn.type, r.instances)
    except ModelError as e:
        raise _retype_error(where, e) from None


def _conform_instance(oid: int, inst: Instance, model: ObjectModel) -> Instance:
    resources = {rid: _conform_resource(oid, inst.id, r, model) for rid, r in inst.resources.items()}
    if all(resources[rid] is r for rid, r in inst.resources.items()):
        return inst
    return Instance(inst.id, resources)


def _conform(node: Node, path: LwM2mPath, model: ObjectModel) -> Node:
    """``node`` itself when it agrees with the model, a re-typed copy when only its declared types differ;
    :class:`CodecError` when a value or a multiplicity disagrees."""
    ids = path.ids
    oid = ids[0]
    if isinstance(node, Obj):
        if _RESERVED in node.instances:
            raise CodecError(f"{path}: object instance id 65535 is reserved")
        instances = {iid: _conform_instance(oid, inst, model) for iid, inst in node.instances.items()}
        if all(instances[iid] is inst for iid, inst in node.instances.items()):
            return node
        return Obj(node.id, instances)
    if isinstance(node, Instance):
        return _conform_instance(oid, node, model)
    if isinstance(node, SingleResource | MultipleResource):
        return _conform_resource(oid, ids[1], node, model)
    defn = model.resource(oid, ids[2])
    if defn is None:
        return node
    if not defn.multiple:
        raise CodecError(f"{path}: resource {ids[2]} is single-instance, it has no resource instances")
    if defn.type is node.type:
        return node
    try:
        return ResourceInstance(node.id, defn.type, node.value)
    except ModelError as e:
        raise _retype_error(str(path), e) from None


def _prepare(node: Node, path: LwM2mPath, fmt: ContentFormat, model: ObjectModel) -> Node:
    _check_placement(node, path)
    if type(node) not in ENCODERS[fmt]:
        raise CodecError(f"{fmt.label} cannot carry a {type(node).__name__} ({path}): it carries single values")
    node = _conform(node, path, model)
    if fmt is _F.OPAQUE:
        rtype = node.type if isinstance(node, SingleResource | ResourceInstance) else None
        if rtype is not ResourceType.OPAQUE:
            shown = rtype.value if rtype is not None else type(node).__name__
            raise CodecError(f"{fmt.label} carries only Opaque values; {path} is {shown}")
    return node


# --- public API --------------------------------------------------------------------------------------------------


def encode(node: Node, path: LwM2mPath, fmt: ContentFormat, model: ObjectModel) -> bytes:
    """The payload of ``node`` (which lives at ``path``) in format ``fmt``."""
    f, fn = _lookup(_ENCODE, fmt, "be encoded")
    return fn(_prepare(node, path, f, model), path)


def decode(payload: bytes, fmt: ContentFormat, path: LwM2mPath, model: ObjectModel) -> Node:
    """The node at ``path`` (depth 1 to 4) that ``payload`` describes; a MultipleResource or SingleResource at
    /O/I/R as the model says (or, for a resource it does not know, as the payload says)."""
    _, fn = _lookup(_DECODE, fmt, "be decoded")
    if not 1 <= path.depth <= 4:
        raise CodecError(f"a payload describes an object, instance, resource or resource instance, not {path}")
    return fn(payload if isinstance(payload, bytes) else bytes(payload), path, model)


def encode_composite(nodes: Mapping[LwM2mPath, Node], fmt: ContentFormat, model: ObjectModel) -> bytes:
    """Several nodes, each at its path, in one payload (SenML JSON, SenML CBOR, LwM2M CBOR)."""
    _, fn = _lookup(_ENCODE_COMPOSITE, fmt, "carry a composite")
    prepared: dict[LwM2mPath, Node] = {}
    for path, node in nodes.items():
        _check_placement(node, path)
        prepared[path] = _conform(node, path, model)
    return fn(prepared)


def decode_composite(payload: bytes, fmt: ContentFormat, model: ObjectModel) -> dict[LwM2mPath, Node]:
    """One node per value the payload holds, at its own path, in payload order (see the module docstring)."""
    _, fn = _lookup(_DECODE_COMPOSITE, fmt, "carry a composite")
    return fn(payload if isinstance(payload, bytes) else bytes(payload), model)


def encode_paths(paths: Sequence[LwM2mPath], fmt: ContentFormat) -> bytes:
    """A Read-Composite / Observe-Composite request body naming ``paths``."""
    _, fn = _lookup(_ENCODE_PATHS, fmt, "carry composite paths")
    return fn(paths)


def decode_paths(payload: bytes, fmt: ContentFormat) -> list[LwM2mPath]:
    """The paths a Read-Composite / Observe-Composite request body names, in order."""
    _, fn = _lookup(_DECODE_PATHS, fmt, "carry composite paths")
    return fn(payload if isinstance(payload, bytes) else bytes(payload))


def can_encode(fmt: ContentFormat, node: Node, path: LwM2mPath, model: ObjectModel) -> bool:
    """True when ``encode(node, path, fmt, model)`` is possible as far as the format, the node's shape and the
    model are concerned (text and octet-stream only for single values, octet-stream only for Opaque; the node
    agreeing with the model). A value a format cannot spell (a non-finite float in SenML JSON) still fails."""
    try:
        f = ContentFormat(fmt)
    except ValueError:
        return False
    if f not in _ENCODE:
        return False
    try:
        _prepare(node, path, f, model)
    except CodecError:
        return False
    return True
