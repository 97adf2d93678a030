"""LwM2M CBOR (content format 11544), LwM2M Core 1.2 section 7.4.6.

The payload is a CBOR map rooted at ``/``: each key is a path id, or an array of ids that compresses several
levels, and each value is either a nested map (the level below) or a leaf value. Leaves are CBOR-typed: String
and Corelnk a text string, Integer/Unsigned Integer/Time an integer (Time also as tag 1 on decode), Float a float,
Boolean a simple value, Opaque a byte string, Objlnk the text ``"O:I"``, an executable resource (type NONE) null.
An empty map is an empty object, instance or multiple resource, so unlike SenML this format keeps empty
containers. Read-/Observe-Composite request bodies are maps whose leaves are null (:func:`encode_paths`).

The encoder merges all nodes into one tree and compresses every chain of single-entry maps into one array key
(``{[3, 0]: {0: "x", 1: "y"}}``); the decoder accepts any legal mix of nesting and array keys.

Invariants: ``decode(encode(n, p), p) == n`` for every node the model agrees with (empty containers included);
decoding any bytes returns a node or raises :class:`CodecError`; nesting is bounded (at most 4 path levels,
CBOR depth capped by :data:`~lwm2m_server.core.codec.senml.MAX_CBOR_DEPTH`), so cyclic or hostile structures
cannot recurse.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import pairwise
from typing import Any

from lwm2m_server.core.codec.senml import (
    Ids,
    Leaf,
    assemble,
    cbor_kind,
    cbor_load,
    dump_cbor,
    leaf_nodes,
    typed_value,
)
from lwm2m_server.core.errors import CodecError, MalformedPayloadError
from lwm2m_server.core.model.definitions import ObjectModel
from lwm2m_server.core.nodes import (
    Instance,
    MultipleResource,
    Node,
    Obj,
    ObjectLink,
    ResourceType,
    Value,
)
from lwm2m_server.core.paths import LwM2mPath

_RESERVED = 0xFFFF
_EMPTY: Any = object()  # marks an explicitly empty map (container) in the walk's output


# --- encoding ----------------------------------------------------------------------------------------------------


def _leaf(rtype: ResourceType, value: Value) -> Any:
    if rtype is ResourceType.OBJLNK:
        assert isinstance(value, ObjectLink)
        return str(value)
    return value  # every other type is already the Python value cbor2 writes as the right CBOR type


def _tree(node: Node) -> Any:
    if isinstance(node, Obj):
        return {iid: _tree(inst) for iid, inst in node.instances.items()}
    if isinstance(node, Instance):
        return {rid: _tree(r) for rid, r in node.resources.items()}
    if isinstance(node, MultipleResource):
        t = node.type
        if t is ResourceType.OBJLNK:
            return {ri: str(v) for ri, v in node.instances.items()}
        return dict(node.instances)
    return _leaf(node.type, node.value)


def _join(a: Any, b: Any) -> tuple[int, ...]:
    return (a if isinstance(a, tuple) else (a,)) + (b if isinstance(b, tuple) else (b,))


def _compress(m: dict[Any, Any]) -> dict[Any, Any]:
    """Fold every chain of single-entry maps into one array key."""
    out: dict[Any, Any] = {}
    for k, v in m.items():
        if type(v) is dict and v:
            v = _compress(v)
            if len(v) == 1:
                ((k2, v2),) = v.items()
                k, v = _join(k, k2), v2
        out[k] = v
    return out


def _check_disjoint(paths: Sequence[LwM2mPath]) -> None:
    ordered = sorted(p.ids for p in paths)
    for a, b in pairwise(ordered):
        if b[: len(a)] == a:
            raise CodecError(f"composite paths overlap: /{'/'.join(map(str, a))} covers /{'/'.join(map(str, b))}")


def encode_composite(nodes: Mapping[LwM2mPath, Node]) -> bytes:
    """One tree holding every node at its path; the paths must not overlap."""
    if len(nodes) > 1:
        _check_disjoint(list(nodes))
    root: dict[Any, Any] = {}
    for path, node in nodes.items():
        ids = path.ids
        if not ids:
            raise CodecError("LwM2M CBOR cannot place a node at the root path")
        m = root
        for i in ids[:-1]:
            m = m.setdefault(i, {})
        m[ids[-1]] = _tree(node)
    return dump_cbor(_compress(root))


def encode(node: Node, path: LwM2mPath) -> bytes:
    return encode_composite({path: node})


def encode_paths(paths: Sequence[LwM2mPath]) -> bytes:
    """A Read-/Observe-Composite request body: ``{[O, I, R]: null, O2: null, ...}``, one key per path."""
    root: dict[Any, None] = {}
    for p in paths:
        ids = p.ids
        if not ids:
            raise CodecError("LwM2M CBOR cannot name the root path")
        root[ids[0] if len(ids) == 1 else ids] = None
    return dump_cbor(root)


# --- decoding ----------------------------------------------------------------------------------------------------


def _key_ids(prefix: Ids, key: Any) -> Ids:
    if type(key) is int:
        ids: Ids = (*prefix, key)
    elif type(key) is tuple and key and all(type(i) is int for i in key):
        ids = prefix + key
    else:
        raise MalformedPayloadError(f"an LwM2M CBOR key is an id or an array of ids, not {key!r:.60}")
    if len(ids) > 4:
        raise MalformedPayloadError("an LwM2M path has at most 4 levels")
    for level in range(len(prefix), len(ids)):
        i = ids[level]
        if not 0 <= i <= _RESERVED or (i == _RESERVED and level in (1, 3)):
            raise MalformedPayloadError(f"path id {i} out of range")
    return ids


def _walk(m: dict[Any, Any], prefix: Ids, out: list[tuple[Ids, Any]]) -> None:
    """Collect (ids, raw value) leaves and explicitly empty containers (value :data:`_EMPTY`) in payload order;
    each level adds at least one id, so the recursion stops after 4 levels whatever the structure (even a
    cyclic one)."""
    for key, value in m.items():
        ids = _key_ids(prefix, key)
        if type(value) is dict:
            if len(ids) == 4:
                raise MalformedPayloadError("a map below a resource instance")
            if value:
                _walk(value, ids, out)
            else:
                out.append((ids, _EMPTY))
        else:
            out.append((ids, value))


def _walk_payload(payload: bytes) -> list[tuple[Ids, Any]]:
    data = cbor_load(payload)
    if type(data) is not dict:
        raise MalformedPayloadError("an LwM2M CBOR payload is a map")
    out: list[tuple[Ids, Any]] = []
    _walk(data, (), out)
    return out


def _collect(payload: bytes) -> tuple[list[tuple[Ids, Any]], list[Ids]]:
    items = _walk_payload(payload)
    return [it for it in items if it[1] is not _EMPTY], [ids for ids, v in items if v is _EMPTY]


def _typed(raw_leaves: list[tuple[Ids, Any]], model: ObjectModel) -> list[Leaf]:
    out: list[Leaf] = []
    for ids, raw in raw_leaves:
        if len(ids) < 3:
            raise MalformedPayloadError(f"a value at /{'/'.join(map(str, ids))}, which is not a resource")
        defn = model.resource(ids[0], ids[2])
        rtype, value = typed_value(defn.type if defn is not None else None, cbor_kind(raw), raw)
        out.append((ids, rtype, value))
    return out


def decode(payload: bytes, path: LwM2mPath, model: ObjectModel) -> Node:
    leaves, containers = _collect(payload)
    return assemble(path, _typed(leaves, model), model, containers)


def decode_composite(payload: bytes, model: ObjectModel) -> dict[LwM2mPath, Node]:
    leaves, containers = _collect(payload)
    return leaf_nodes(_typed(leaves, model), model, containers)


def decode_paths(payload: bytes) -> list[LwM2mPath]:
    """The paths of a composite request body, in order: every leaf (null, normally) and every empty map."""
    return [LwM2mPath(ids) for ids, _ in _walk_payload(payload)]
