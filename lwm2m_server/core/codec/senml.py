"""SenML JSON (content format 110) and SenML CBOR (112): RFC 8428 as LwM2M Core 1.1 sections 7.4.4/7.4.5 use it.

A payload is an array of records; each record's name is the base name in force (``bn``, carried forward from the
record that set it) concatenated with its ``n``, and must be an LwM2M resource or resource-instance path. Value
fields: ``v`` (Integer, Unsigned Integer, Time, Float), ``vs`` (String, Corelnk), ``vb`` (Boolean), ``vd``
(Opaque: base64url without padding in JSON, a byte string in CBOR), ``vlo`` (Objlnk ``O:I``); an executable
resource (type NONE) has no value field. CBOR labels: bn -2, n 0, v 2, vs 3, vb 4, vd 8 and the text key
``vlo``. ``bv`` is applied; ``bt``, ``t``, ``u``, ``bu``, ``s``, ``bs``, ``ut`` and ``bver`` are ignored; a
must-understand field (name ending in ``_``) is refused. Two records for one path are refused (timestamped
series are not a single node).

Encoding writes one group of records per node: a container (object, instance, multiple resource) as
``{"bn": "/O/I/", "n": "R"}, {"n": "R2"}, ...``, a single value as ``{"bn": "/O/I/R"}`` plus its value.
SenML cannot express an empty container inside another node: an empty multiple resource or an instance without
resources inside a larger node disappears from the payload (at the top level it decodes back, the path says it).

This module also holds the leaf model shared by the path-value formats (SenML, LwM2M CBOR, OMA JSON):
:func:`flatten` turns a node into leaves ``(ids, type, value)`` and :func:`assemble` / :func:`leaf_nodes` turn
typed leaves back into nodes, enforcing the model's multiplicity.

Invariants: decoding any payload returns a node or raises :class:`CodecError`; ``decode(encode(n, p), p) == n``
for every node without nested empty containers (and without non-finite floats in JSON).
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any, Final

import cbor2

from lwm2m_server.core.codec.text import b64decode_lenient, b64url_encode, parse_objlnk
from lwm2m_server.core.errors import CodecError, InvalidPathError, MalformedPayloadError, ModelError
from lwm2m_server.core.model.definitions import ObjectModel
from lwm2m_server.core.nodes import (
    INT64_MAX,
    INT64_MIN,
    UINT64_MAX,
    Instance,
    MultipleResource,
    Node,
    Obj,
    Resource,
    ResourceInstance,
    ResourceType,
    SingleResource,
    Value,
)
from lwm2m_server.core.paths import ROOT, LwM2mPath

Ids = tuple[int, ...]
Leaf = tuple[Ids, ResourceType, Value]
"""A resource (/O/I/R) or resource instance (/O/I/R/RI) value with its type."""

MAX_CBOR_DEPTH: Final = 16  # no LwM2M payload nests deeper; cbor2 refuses anything beyond

# --- raw value kinds: what a payload says a value is, before the model gives it a type ----------------------------
K_NUMBER, K_STRING, K_BOOL, K_BYTES, K_LINK, K_NULL, K_TIME = range(7)
_KIND_NAMES = ("number", "string", "boolean", "byte string", "object link", "null", "date-time")
_ACCEPTS: Final[Mapping[ResourceType, frozenset[int]]] = {
    ResourceType.STRING: frozenset({K_STRING}),
    ResourceType.CORELNK: frozenset({K_STRING}),
    ResourceType.INTEGER: frozenset({K_NUMBER}),
    ResourceType.UNSIGNED_INTEGER: frozenset({K_NUMBER}),
    ResourceType.TIME: frozenset({K_NUMBER, K_TIME}),
    ResourceType.FLOAT: frozenset({K_NUMBER}),
    ResourceType.BOOLEAN: frozenset({K_BOOL}),
    ResourceType.OPAQUE: frozenset({K_BYTES}),
    ResourceType.OBJLNK: frozenset({K_LINK, K_STRING}),
    ResourceType.NONE: frozenset({K_NULL}),
}
_INFERRED: Final = {
    K_STRING: ResourceType.STRING,
    K_BOOL: ResourceType.BOOLEAN,
    K_BYTES: ResourceType.OPAQUE,
    K_LINK: ResourceType.OBJLNK,
    K_NULL: ResourceType.NONE,
    K_TIME: ResourceType.TIME,
}
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)


def _epoch_seconds(dt: datetime) -> int:
    delta = (dt if dt.tzinfo is not None else dt.replace(tzinfo=UTC)) - _EPOCH
    return delta.days * 86400 + delta.seconds


def _as_int(rtype: ResourceType, raw: int | float) -> int:
    if isinstance(raw, float):
        if not raw.is_integer():
            raise MalformedPayloadError(f"{rtype.value} value {raw!r} is not an integer")
        return int(raw)
    return raw


def typed_value(rtype: ResourceType | None, kind: int, raw: Any) -> tuple[ResourceType, Value]:
    """Give a raw payload value its LwM2M type: the model's ``rtype`` when known (the raw kind must fit it),
    else the type the payload implies. The caller guarantees ``raw`` is a Python value of ``kind``."""
    if rtype is None:
        if kind == K_NUMBER:
            if isinstance(raw, float):
                return ResourceType.FLOAT, raw
            if INT64_MIN <= raw <= INT64_MAX:
                return ResourceType.INTEGER, raw
            if 0 <= raw <= UINT64_MAX:
                return ResourceType.UNSIGNED_INTEGER, raw
            raise MalformedPayloadError(f"number {raw} is out of the 64-bit range")
        rtype = _INFERRED[kind]
    elif kind not in _ACCEPTS[rtype]:
        raise MalformedPayloadError(f"a {_KIND_NAMES[kind]} value where a {rtype.value} is expected")
    if rtype is ResourceType.FLOAT:
        try:
            return rtype, float(raw)
        except OverflowError:
            raise MalformedPayloadError(f"number {raw} does not fit a Float") from None
    if rtype is ResourceType.TIME and kind == K_TIME:
        return rtype, _epoch_seconds(raw)
    if kind == K_NUMBER:
        return rtype, _as_int(rtype, raw)
    if rtype is ResourceType.OBJLNK:
        return rtype, parse_objlnk(raw)
    return rtype, raw


def cbor_kind(raw: Any) -> int:
    """The raw kind of a value cbor2 decoded; :class:`MalformedPayloadError` for anything no LwM2M value is."""
    t = type(raw)
    if t is str:
        return K_STRING
    if t is int or t is float:
        return K_NUMBER
    if t is bool:
        return K_BOOL
    if t is bytes:
        return K_BYTES
    if raw is None:
        return K_NULL
    if t is datetime:
        return K_TIME
    raise MalformedPayloadError(f"a CBOR {t.__name__} is not an LwM2M value")


def cbor_load(payload: bytes) -> Any:
    """Decode exactly one CBOR item (trailing bytes refused, nesting bounded); any failure is malformed."""
    fp = io.BytesIO(payload)
    try:
        item = cbor2.CBORDecoder(fp, max_depth=MAX_CBOR_DEPTH).decode()
    except Exception as e:  # cbor2 raises its own errors and whatever its semantic-tag decoders raise
        raise MalformedPayloadError(f"invalid CBOR: {e}") from None
    if fp.tell() != len(payload):
        raise MalformedPayloadError(f"{len(payload) - fp.tell()} bytes after the CBOR item")
    return item


# --- leaves: node <-> (ids, type, value) -------------------------------------------------------------------------


def flatten(node: Node, ids: Ids, out: list[Leaf]) -> None:
    """Append the leaves of ``node`` (which lives at ``ids``) to ``out``, in node order."""
    if isinstance(node, SingleResource | ResourceInstance):
        out.append((ids, node.type, node.value))
    elif isinstance(node, MultipleResource):
        t = node.type
        out.extend([((*ids, ri), t, v) for ri, v in node.instances.items()])
    elif isinstance(node, Instance):
        for r in node.resources.values():
            flatten(r, (*ids, r.id), out)
    else:
        for inst in node.instances.values():
            flatten(inst, (*ids, inst.id), out)


_Entry = tuple[ResourceType, Value] | dict[int, tuple[ResourceType, Value]]
"""A resource being assembled: a single value, or the instances of a multiple resource."""
_Tree = dict[int, dict[int, dict[int, _Entry]]]


def _insert(tree: _Tree, ids: Ids, rtype: ResourceType, value: Value) -> None:
    resources = tree.setdefault(ids[0], {}).setdefault(ids[1], {})
    rid = ids[2]
    if len(ids) == 3:
        if rid in resources:
            raise MalformedPayloadError(f"{_show(ids)} appears twice")
        resources[rid] = (rtype, value)
        return
    entry = resources.setdefault(rid, {})
    if not isinstance(entry, dict):
        raise MalformedPayloadError(f"{_show(ids[:3])} has a value and resource instances")
    if ids[3] in entry:
        raise MalformedPayloadError(f"{_show(ids)} appears twice")
    entry[ids[3]] = (rtype, value)


def _add_container(tree: _Tree, ids: Ids) -> None:
    """Record an explicitly empty object, instance or multiple resource (only LwM2M CBOR can say so)."""
    instances = tree.setdefault(ids[0], {})
    if len(ids) >= 2:
        resources = instances.setdefault(ids[1], {})
        if len(ids) == 3 and not isinstance(resources.setdefault(ids[2], {}), dict):
            raise MalformedPayloadError(f"{_show(ids)} has a value and resource instances")


def _show(ids: Ids) -> str:
    return "/" + "/".join(map(str, ids))


def _unify(rid: int, values: dict[int, tuple[ResourceType, Value]]) -> tuple[ResourceType, dict[int, Value]]:
    """One type for the instances of a multiple resource the model does not know (the payload types them)."""
    types = {t for t, _ in values.values()}
    if len(types) == 1:
        return types.pop(), {ri: v for ri, (_, v) in values.items()}
    if types <= {ResourceType.INTEGER, ResourceType.UNSIGNED_INTEGER} and all(
        isinstance(v, int) and v >= 0 for _, v in values.values()
    ):
        return ResourceType.UNSIGNED_INTEGER, {ri: v for ri, (_, v) in values.items()}
    if types <= {ResourceType.INTEGER, ResourceType.UNSIGNED_INTEGER, ResourceType.FLOAT}:
        return ResourceType.FLOAT, {ri: float(v) if isinstance(v, int) else v for ri, (_, v) in values.items()}
    raise MalformedPayloadError(f"resource {rid}: instances of different types")


def _resource(oid: int, rid: int, entry: _Entry, model: ObjectModel) -> Resource:
    defn = model.resource(oid, rid)
    if isinstance(entry, tuple):
        if defn is not None and defn.multiple:
            raise MalformedPayloadError(f"resource {rid} of object {oid} is multiple, got a single value")
        return SingleResource(rid, entry[0], entry[1])
    if defn is not None:
        if not defn.multiple:
            raise MalformedPayloadError(f"resource {rid} of object {oid} is single, got resource instances")
        return MultipleResource(rid, defn.type, {ri: v for ri, (_, v) in entry.items()})
    if not entry:
        return MultipleResource(rid, ResourceType.OPAQUE, {})
    rtype, values = _unify(rid, entry)
    return MultipleResource(rid, rtype, values)


def _instance(oid: int, iid: int, resources: dict[int, _Entry], model: ObjectModel) -> Instance:
    return Instance(iid, {rid: _resource(oid, rid, e, model) for rid, e in resources.items()})


def assemble(path: LwM2mPath, leaves: Iterable[Leaf], model: ObjectModel, containers: Iterable[Ids] = ()) -> Node:
    """The node at ``path`` (depth 1 to 4) built from typed leaves, all of which must lie at or below ``path``.
    ``containers`` are explicitly empty containers; those above ``path`` are ignored.

    A container path with no leaves gives an empty container; a multiple resource the model knows gives an
    empty one; a single value with no leaf is malformed."""
    ids = path.ids
    depth = len(ids)
    if not 1 <= depth <= 4:
        raise CodecError(f"a payload describes an object, instance, resource or resource instance, not {path}")
    tree: _Tree = {}
    try:
        for leaf_ids, rtype, value in leaves:
            if leaf_ids[:depth] != ids:
                raise MalformedPayloadError(f"{_show(leaf_ids)} lies outside the requested {path}")
            _insert(tree, leaf_ids, rtype, value)
        for c in containers:
            if c[:depth] == ids:
                _add_container(tree, c)
            elif ids[: len(c)] != c:
                raise MalformedPayloadError(f"{_show(c)} lies outside the requested {path}")
        oid = ids[0]
        if depth == 1:
            return Obj(oid, {iid: _instance(oid, iid, r, model) for iid, r in tree.get(oid, {}).items()})
        resources = tree.get(oid, {}).get(ids[1], {})
        if depth == 2:
            return _instance(oid, ids[1], resources, model)
        rid = ids[2]
        defn = model.resource(oid, rid)
        entry = resources.get(rid)
        if depth == 3:
            if entry is None:
                if defn is not None and defn.multiple:
                    return MultipleResource(rid, defn.type, {})
                raise MalformedPayloadError(f"no value for {path}")
            return _resource(oid, rid, entry, model)
        if defn is not None and not defn.multiple:
            raise CodecError(f"{path}: resource {rid} is single-instance, it has no resource instances")
        if not isinstance(entry, dict) or ids[3] not in entry:
            raise MalformedPayloadError(f"no value for {path}")
        rtype, value = entry[ids[3]]
        return ResourceInstance(ids[3], rtype, value)
    except ModelError as e:
        raise MalformedPayloadError(f"{path}: {e}") from None


def leaf_nodes(leaves: Sequence[Leaf], model: ObjectModel, containers: Sequence[Ids] = ()) -> dict[LwM2mPath, Node]:
    """One node per leaf, at the leaf's own path (a composite payload says nothing about grouping):
    a :class:`SingleResource` at /O/I/R, a :class:`ResourceInstance` at /O/I/R/RI; explicitly empty containers
    become empty nodes at their paths. The model's multiplicity is enforced; duplicates are malformed."""
    out: dict[LwM2mPath, Node] = {}
    tree: _Tree = {}
    if containers:  # an explicitly empty container must be empty: nothing else may lie below it
        below = {leaf[0][:n] for leaf in leaves for n in range(1, len(leaf[0]) + 1)}
        below.update(c[:n] for c in containers for n in range(1, len(c)))
        if len(set(containers)) != len(containers) or any(c in below for c in containers):
            raise MalformedPayloadError("an empty container that is not empty, or given twice")
    try:
        for ids, rtype, value in leaves:
            _insert(tree, ids, rtype, value)  # detects duplicates and value/instances conflicts
            defn = model.resource(ids[0], ids[2])
            if len(ids) == 3:
                if defn is not None and defn.multiple:
                    raise MalformedPayloadError(f"{_show(ids)} is a multiple resource, got a single value")
                out[LwM2mPath(ids)] = SingleResource(ids[2], rtype, value)
            else:
                if defn is not None and not defn.multiple:
                    raise MalformedPayloadError(f"{_show(ids)}: resource {ids[2]} is single-instance")
                out[LwM2mPath(ids)] = ResourceInstance(ids[3], rtype, value)
        for c in containers:
            path = LwM2mPath(c)
            if len(c) == 1:
                out[path] = Obj(c[0])
            elif len(c) == 2:
                out[path] = Instance(c[1])
            else:
                defn = model.resource(c[0], c[2])
                if defn is not None and not defn.multiple:
                    raise MalformedPayloadError(f"{path} is a single resource, got an empty multiple resource")
                out[path] = MultipleResource(c[2], defn.type if defn is not None else ResourceType.OPAQUE)
    except (ModelError, InvalidPathError) as e:
        raise MalformedPayloadError(str(e)) from None
    return out


# --- SenML records -----------------------------------------------------------------------------------------------

_BN, _N, _V, _VS, _VB, _VD, _VLO = "bn", "n", "v", "vs", "vb", "vd", "vlo"
_CBOR_LABELS: Final[Mapping[int, str]] = {
    -1: "bver", -2: "bn", -3: "bt", -4: "bu", -5: "bv", -6: "bs",
    0: "n", 1: "u", 2: "v", 3: "vs", 4: "vb", 5: "s", 6: "t", 7: "ut", 8: "vd",
}  # fmt: skip
_CBOR_KEYS: Final = {name: label for label, name in _CBOR_LABELS.items()} | {_VLO: _VLO}
_VALUE_FIELDS: Final = frozenset({_V, _VS, _VB, _VD, _VLO})


class _Labels:
    """The record keys of one SenML flavour (JSON names or CBOR labels) and how it writes opaque values."""

    __slots__ = ("bn", "json", "n", "v", "vb", "vd", "vlo", "vs")

    def __init__(self, keys: Mapping[str, Any], json_: bool) -> None:
        self.bn, self.n, self.v, self.vs = keys[_BN], keys[_N], keys[_V], keys[_VS]
        self.vb, self.vd, self.vlo = keys[_VB], keys[_VD], keys[_VLO]
        self.json = json_


_JSON: Final = _Labels({k: k for k in (_BN, _N, _V, _VS, _VB, _VD, _VLO)}, True)
_CBOR: Final = _Labels(_CBOR_KEYS, False)


def _put_value(rec: dict[Any, Any], lab: _Labels, rtype: ResourceType, value: Value) -> None:
    if rtype is ResourceType.STRING or rtype is ResourceType.CORELNK:
        rec[lab.vs] = value
    elif rtype is ResourceType.BOOLEAN:
        rec[lab.vb] = value
    elif rtype is ResourceType.OPAQUE:
        assert isinstance(value, bytes)
        rec[lab.vd] = b64url_encode(value) if lab.json else value
    elif rtype is ResourceType.OBJLNK:
        rec[lab.vlo] = str(value)
    elif rtype is not ResourceType.NONE:
        rec[lab.v] = value


def _records(items: Iterable[tuple[LwM2mPath, Node]], lab: _Labels) -> list[dict[Any, Any]]:
    """Records for each (path, node): a base name per node, names relative to it."""
    out: list[dict[Any, Any]] = []
    leaves: list[Leaf] = []
    for path, node in items:
        ids = path.ids
        base = _show(ids)
        if isinstance(node, SingleResource | ResourceInstance):
            rec: dict[Any, Any] = {lab.bn: base}
            _put_value(rec, lab, node.type, node.value)
            out.append(rec)
            continue
        leaves.clear()
        flatten(node, ids, leaves)
        base += "/"
        depth = len(ids)
        first = True
        for leaf_ids, rtype, value in leaves:
            name = "/".join(map(str, leaf_ids[depth:]))
            if first:
                rec = {lab.bn: base, lab.n: name}
                first = False
            else:
                rec = {lab.n: name}
            _put_value(rec, lab, rtype, value)
            out.append(rec)
    return out


_JSON_ENCODER: Final = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def _reject_constant(name: str) -> Any:
    raise MalformedPayloadError(f"{name} is not a JSON number")


_JSON_DECODER: Final = json.JSONDecoder(parse_constant=_reject_constant)


def _dump_json(records: list[dict[Any, Any]]) -> bytes:
    try:
        return _JSON_ENCODER.encode(records).encode("utf-8")
    except ValueError as e:  # a non-finite float; UnicodeEncodeError (a lone surrogate) is a ValueError too
        raise CodecError(f"SenML JSON cannot carry this value: {e}") from None


def dump_cbor(obj: Any) -> bytes:
    """Encode with cbor2; a value CBOR cannot carry (a lone surrogate) is a :class:`CodecError`."""
    try:
        return bytes(cbor2.dumps(obj))
    except (cbor2.CBOREncodeError, ValueError) as e:
        raise CodecError(f"CBOR cannot carry this value: {e}") from None


def load_json(payload: bytes) -> Any:
    """Parse a JSON document (UTF-8, no NaN/Infinity); any failure is malformed."""
    try:
        return _JSON_DECODER.decode(payload.decode("utf-8"))
    except (ValueError, RecursionError) as e:  # JSONDecodeError, UnicodeDecodeError, int digit limit
        raise MalformedPayloadError(f"invalid JSON: {e}") from None


@lru_cache(maxsize=4096)  # names repeat across a fleet's payloads; failures are not cached
def _name_ids(name: str, allow_container: bool) -> Ids:
    """The ids of a resolved record name ``/O/I/R[/RI]``; ``allow_container`` also admits ``/``, ``/O``,
    ``/O/I`` and a trailing slash (composite request paths)."""
    if not name.startswith("/"):
        raise MalformedPayloadError(f"record name {name[:60]!r} is not an absolute LwM2M path")
    body = name[1:]
    if allow_container:
        if body.endswith("/"):
            body = body[:-1]
        if not body:
            return ()
    try:
        ids = LwM2mPath.from_segments(body.split("/")).ids
    except InvalidPathError:
        raise MalformedPayloadError(f"record name {name[:60]!r} is not an LwM2M path") from None
    if not allow_container and len(ids) < 3:
        raise MalformedPayloadError(f"record name {name!r} is not a resource or resource instance")
    return ids


def _raw_records(data: Any, lab: _Labels) -> list[tuple[str, int, Any]]:
    """Resolve the records of a SenML pack: (full name, raw kind, raw value) per record."""
    if not isinstance(data, list):
        raise MalformedPayloadError("a SenML pack is an array of records")
    out: list[tuple[str, int, Any]] = []
    bn = ""
    bv: int | float | None = None
    is_json = lab.json
    for rec in data:
        if not isinstance(rec, dict):
            raise MalformedPayloadError("a SenML record is a map")
        name = ""
        kind = K_NULL
        raw: Any = None
        for key, val in rec.items():
            if is_json:
                label = key
            elif type(key) is int:
                label = _CBOR_LABELS.get(key)
                if label is None:
                    continue  # an unknown label without must-understand semantics
            elif type(key) is str:
                label = key
            else:
                raise MalformedPayloadError(f"a SenML CBOR label must be an integer or text, not {type(key).__name__}")
            if label in _VALUE_FIELDS:
                if kind != K_NULL:
                    raise MalformedPayloadError("a SenML record with more than one value")
                kind, raw = _record_value(label, val, is_json)
            elif label == _BN:
                if type(val) is not str:
                    raise MalformedPayloadError("bn must be a string")
                bn = val
            elif label == _N:
                if type(val) is not str:
                    raise MalformedPayloadError("n must be a string")
                name = val
            elif label == "bv":
                if type(val) is not int and type(val) is not float:
                    raise MalformedPayloadError("bv must be a number")
                bv = val
            elif label.endswith("_"):
                raise MalformedPayloadError(f"must-understand SenML field {label[:40]!r} is not supported")
        if bv is not None and kind == K_NUMBER:
            try:
                raw = raw + bv
            except OverflowError:
                raise MalformedPayloadError("v + bv does not fit a number") from None
        out.append((bn + name, kind, raw))
    return out


def _record_value(label: str, val: Any, is_json: bool) -> tuple[int, Any]:
    t = type(val)
    if label == _V:
        if t is int or t is float:
            return K_NUMBER, val
    elif label == _VS:
        if t is str:
            return K_STRING, val
    elif label == _VB:
        if t is bool:
            return K_BOOL, val
    elif label == _VD:
        if is_json and t is str:
            return K_BYTES, b64decode_lenient(val)
        if not is_json and t is bytes:
            return K_BYTES, val
    elif t is str:  # vlo
        return K_LINK, val
    raise MalformedPayloadError(f"SenML {label} cannot be a {t.__name__}")


def _leaves(data: Any, lab: _Labels, model: ObjectModel) -> list[Leaf]:
    out: list[Leaf] = []
    for name, kind, raw in _raw_records(data, lab):
        ids = _name_ids(name, False)
        defn = model.resource(ids[0], ids[2])
        rtype, value = typed_value(defn.type if defn is not None else None, kind, raw)
        out.append((ids, rtype, value))
    return out


# --- public face -------------------------------------------------------------------------------------------------


def encode_json(node: Node, path: LwM2mPath) -> bytes:
    return _dump_json(_records(((path, node),), _JSON))


def encode_cbor(node: Node, path: LwM2mPath) -> bytes:
    return dump_cbor(_records(((path, node),), _CBOR))


def encode_composite_json(nodes: Mapping[LwM2mPath, Node]) -> bytes:
    return _dump_json(_records(nodes.items(), _JSON))


def encode_composite_cbor(nodes: Mapping[LwM2mPath, Node]) -> bytes:
    return dump_cbor(_records(nodes.items(), _CBOR))


def decode_json(payload: bytes, path: LwM2mPath, model: ObjectModel) -> Node:
    return assemble(path, _leaves(load_json(payload), _JSON, model), model)


def decode_cbor(payload: bytes, path: LwM2mPath, model: ObjectModel) -> Node:
    return assemble(path, _leaves(cbor_load(payload), _CBOR, model), model)


def decode_composite_json(payload: bytes, model: ObjectModel) -> dict[LwM2mPath, Node]:
    return leaf_nodes(_leaves(load_json(payload), _JSON, model), model)


def decode_composite_cbor(payload: bytes, model: ObjectModel) -> dict[LwM2mPath, Node]:
    return leaf_nodes(_leaves(cbor_load(payload), _CBOR, model), model)


def _path_name(path: LwM2mPath) -> str:
    return _show(path.ids) if path.ids else "/"


def encode_paths_json(paths: Sequence[LwM2mPath]) -> bytes:
    """A Read-/Observe-Composite request body: one name-only record per path."""
    return _dump_json([{_N: _path_name(p)} for p in paths])


def encode_paths_cbor(paths: Sequence[LwM2mPath]) -> bytes:
    return dump_cbor([{0: _path_name(p)} for p in paths])


def _paths(data: Any, lab: _Labels) -> list[LwM2mPath]:
    """The paths a composite request names, in order (values, if any, are ignored)."""
    try:
        return [
            LwM2mPath(ids) if ids else ROOT for ids in (_name_ids(name, True) for name, _, _ in _raw_records(data, lab))
        ]
    except InvalidPathError as e:
        raise MalformedPayloadError(str(e)) from None


def decode_paths_json(payload: bytes) -> list[LwM2mPath]:
    return _paths(load_json(payload), _JSON)


def decode_paths_cbor(payload: bytes) -> list[LwM2mPath]:
    return _paths(cbor_load(payload), _CBOR)
