"""Property tests for every content-format codec, through the registry.

1. Round trips: for every format and every node shape it supports, ``decode(encode(x)) == x`` on random object
   definitions (random ids, types, multiplicity) and conforming random nodes, edge values included. Equality is
   checked strictly (``-0.0`` is not ``0.0``). SenML cannot express empty containers nested in a node, so its
   expectation drops them (see the senml module docstring).
2. Fuzz: arbitrary bytes, arbitrary CBOR items, arbitrary JSON, SenML/LwM2M-CBOR shaped structures and
   mutated valid payloads, into every decoder at every path depth: a node of the right kind or a CodecError,
   never anything else.

Does not depend on ``lwm2m_server.core.model.builtin``: the models are built here.
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Callable
from typing import Any

import cbor2
import pytest
from hypothesis import HealthCheck, given, reject, settings
from hypothesis import strategies as st

from lwm2m_server.core.codec import registry
from lwm2m_server.core.codec.formats import ContentFormat
from lwm2m_server.core.errors import CodecError
from lwm2m_server.core.model.definitions import ObjectDefinition, ObjectModel, ResourceDefinition
from lwm2m_server.core.nodes import (
    INT64_MAX,
    INT64_MIN,
    UINT64_MAX,
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

F = ContentFormat
T = ResourceType
PROPS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])

ALL_TYPES = list(ResourceType)
TREE_FORMATS = [F.TLV, F.TLV_OLD, F.SENML_JSON, F.SENML_CBOR, F.LWM2M_CBOR]
COMPOSITE_FORMATS = [F.SENML_JSON, F.SENML_CBOR, F.LWM2M_CBOR]
SHAPES = ["obj", "instance", "single", "multiple", "ri"]

# --- values ------------------------------------------------------------------------------------------------------

EDGE_INTS = [0, -1, 1, 127, 128, -128, -129, 255, 256, 32767, 32768, -32768, -32769, 2**31 - 1, 2**31, -(2**31),
             -(2**31) - 1, 2**32 - 1, 2**32, INT64_MIN, INT64_MAX, INT64_MIN + 1, INT64_MAX - 1]  # fmt: skip
EDGE_UINTS = [0, 1, 255, 256, 65535, 65536, 2**32 - 1, 2**32, INT64_MAX, 2**63, UINT64_MAX - 1, UINT64_MAX]
EDGE_FLOATS = [0.0, -0.0, 1.0, -1.5, 0.1, 1 / 3, 1e300, -1e-300, 5e-324, 2.0**-149, 16777217.0, 16777216.0,
               3.4028234663852886e38, 3.4028235677973366e38, 1e16, -2.5e-10]  # fmt: skip


def values(rtype: ResourceType, finite: bool = False) -> st.SearchStrategy[Value]:
    """Valid values of ``rtype``, edges favoured; NaN never, infinities unless ``finite``."""
    if rtype in (T.STRING, T.CORELNK):
        return st.one_of(st.just(""), st.text(max_size=24), st.sampled_from(["é", "日本語", "\x00", 'a"b\\c', "🙂"]))
    if rtype in (T.INTEGER, T.TIME):
        return st.one_of(st.sampled_from(EDGE_INTS), st.integers(INT64_MIN, INT64_MAX))
    if rtype is T.UNSIGNED_INTEGER:
        return st.one_of(st.sampled_from(EDGE_UINTS), st.integers(0, UINT64_MAX))
    if rtype is T.FLOAT:
        edges = EDGE_FLOATS if finite else [*EDGE_FLOATS, math.inf, -math.inf]
        return st.one_of(st.sampled_from(edges), st.floats(allow_nan=False, allow_infinity=not finite),
                         st.floats(width=32, allow_nan=False, allow_infinity=not finite))  # fmt: skip
    if rtype is T.BOOLEAN:
        return st.booleans()
    if rtype is T.OPAQUE:
        return st.one_of(st.just(b""), st.binary(max_size=40), st.just(b"\xfb\xff\xfe"))
    if rtype is T.OBJLNK:
        return st.builds(ObjectLink, st.integers(0, 65535), st.integers(0, 65535))
    return st.none()


object_ids = st.one_of(st.integers(0, 20), st.integers(0, 65535))
resource_ids = st.one_of(st.integers(0, 20), st.integers(0, 65535))  # > 255: 16-bit TLV identifiers
instance_ids = st.one_of(st.integers(0, 5), st.integers(0, 65534))  # 65535 is reserved


@st.composite
def resource_definitions(draw: st.DrawFn, types: list[ResourceType]) -> dict[int, ResourceDefinition]:
    rids = draw(st.lists(resource_ids, max_size=6, unique=True))
    return {
        rid: ResourceDefinition(rid, f"r{rid}", "RW", draw(st.booleans()), False, draw(st.sampled_from(types)))
        for rid in rids
    }


def object_definition(oid: int, resources: dict[int, ResourceDefinition]) -> ObjectDefinition:
    return ObjectDefinition(oid, f"o{oid}", "1.0", "1.1", True, False, f"urn:oma:lwm2m:x:{oid}", resources)


def resource_node(defn: ResourceDefinition, finite: bool) -> st.SearchStrategy[SingleResource | MultipleResource]:
    if defn.multiple:
        return st.dictionaries(instance_ids, values(defn.type, finite), max_size=4).map(
            lambda d: MultipleResource(defn.id, defn.type, d)
        )
    return values(defn.type, finite).map(lambda v: SingleResource(defn.id, defn.type, v))


@st.composite
def instance_node(draw: st.DrawFn, odef: ObjectDefinition, iid: int, finite: bool) -> Instance:
    defs = list(odef.resources.values())
    chosen = draw(st.lists(st.sampled_from(defs), unique_by=lambda d: d.id, max_size=len(defs))) if defs else []
    return Instance.of(iid, [draw(resource_node(d, finite)) for d in chosen])


@st.composite
def obj_node(draw: st.DrawFn, odef: ObjectDefinition, finite: bool) -> Obj:
    iids = draw(st.lists(instance_ids, unique=True, max_size=3))
    return Obj.of(odef.id, [draw(instance_node(odef, iid, finite)) for iid in iids])


Placed = tuple[ObjectModel, LwM2mPath, Node]


@st.composite
def placed_nodes(
    draw: st.DrawFn, shapes: list[str] = SHAPES, types: list[ResourceType] = ALL_TYPES, finite: bool = False
) -> Placed:
    """A random model (one object), a node of one of ``shapes`` conforming to it and the path it lives at."""
    oid = draw(object_ids)
    resources = draw(resource_definitions(types))
    shape = draw(st.sampled_from(shapes))
    if shape in ("single", "multiple", "ri"):  # make sure the object has a resource of the needed multiplicity
        rid = draw(resource_ids)
        resources[rid] = ResourceDefinition(
            rid, f"r{rid}", "RW", shape != "single", False, draw(st.sampled_from(types))
        )
    odef = object_definition(oid, resources)
    model = ObjectModel([odef])
    if shape == "obj":
        return model, LwM2mPath.of(oid), draw(obj_node(odef, finite))
    iid = draw(instance_ids)
    if shape == "instance":
        return model, LwM2mPath.of(oid, iid), draw(instance_node(odef, iid, finite))
    defn = resources[rid]
    if shape in ("single", "multiple"):
        return model, LwM2mPath.of(oid, iid, rid), draw(resource_node(defn, finite))
    ri = draw(instance_ids)
    return model, LwM2mPath.of(oid, iid, rid, ri), ResourceInstance(ri, defn.type, draw(values(defn.type, finite)))


# --- strict comparison and expectations --------------------------------------------------------------------------


def _v(v: Value) -> Any:
    return ("float", repr(v)) if isinstance(v, float) else (type(v).__name__, v)


def strict(node: Node) -> Any:
    """A comparable form of a node that tells -0.0 from 0.0 and a bool from an int, order-insensitive."""
    if isinstance(node, Obj):
        return ("obj", node.id, sorted((k, strict(i)) for k, i in node.instances.items()))
    if isinstance(node, Instance):
        return ("inst", node.id, sorted((k, strict(r)) for k, r in node.resources.items()))
    if isinstance(node, MultipleResource):
        return ("multi", node.id, node.type, sorted((k, _v(v)) for k, v in node.instances.items()))
    return (type(node).__name__, node.id, node.type, _v(node.value))


def assert_same(actual: Node, expected: Node) -> None:
    assert actual == expected
    assert strict(actual) == strict(expected)


def without_nested_empties(node: Node) -> Node:
    """What SenML can say about ``node``: nested empty multiple resources and empty instances vanish."""
    if isinstance(node, Obj):
        insts = [_prune_instance(i) for i in node.instances.values()]
        return Obj.of(node.id, [i for i in insts if i.resources])
    if isinstance(node, Instance):
        return _prune_instance(node)
    return node


def _prune_instance(inst: Instance) -> Instance:
    return Instance.of(
        inst.id, [r for r in inst.resources.values() if not (isinstance(r, MultipleResource) and not r.instances)]
    )


def leaf_level(nodes: dict[LwM2mPath, Node], keep_empty: bool) -> dict[LwM2mPath, Node]:
    """What a composite decode returns: one node per value, plus (LwM2M CBOR) explicitly empty containers."""
    out: dict[LwM2mPath, Node] = {}

    def walk(path: LwM2mPath, node: Node) -> None:
        if isinstance(node, SingleResource | ResourceInstance):
            out[path] = node
        elif isinstance(node, MultipleResource):
            for ri, v in node.instances.items():
                out[path.child(ri)] = ResourceInstance(ri, node.type, v)
            if not node.instances and keep_empty:
                out[path] = node
        else:
            children = node.instances if isinstance(node, Obj) else node.resources
            for cid, child in children.items():
                walk(path.child(cid), child)
            if not children and keep_empty:
                out[path] = node

    for p, n in nodes.items():
        walk(p, n)
    return out


# --- 1. round trips ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", [F.TLV, F.TLV_OLD, F.SENML_CBOR, F.LWM2M_CBOR])
@PROPS
@given(data=st.data())
def test_roundtrip_tree_formats(fmt: ContentFormat, data: st.DataObject) -> None:
    model, path, node = data.draw(placed_nodes())
    payload = registry.encode(node, path, fmt, model)
    expected = without_nested_empties(node) if fmt is F.SENML_CBOR else node
    assert_same(registry.decode(payload, fmt, path, model), expected)


@PROPS
@given(placed=placed_nodes(finite=True))
def test_roundtrip_senml_json(placed: Placed) -> None:
    model, path, node = placed
    payload = registry.encode(node, path, F.SENML_JSON, model)
    json.loads(payload)  # plain, standard JSON
    assert_same(registry.decode(payload, F.SENML_JSON, path, model), without_nested_empties(node))


@PROPS
@given(placed=placed_nodes(shapes=["single", "ri"]))
def test_roundtrip_text(placed: Placed) -> None:
    model, path, node = placed
    assert registry.can_encode(F.TEXT, node, path, model)
    payload = registry.encode(node, path, F.TEXT, model)
    payload.decode("utf-8")
    assert_same(registry.decode(payload, F.TEXT, path, model), node)


@PROPS
@given(placed=placed_nodes(shapes=["single", "ri"], types=[T.OPAQUE]))
def test_roundtrip_opaque(placed: Placed) -> None:
    model, path, node = placed
    assert registry.can_encode(F.OPAQUE, node, path, model)
    payload = registry.encode(node, path, F.OPAQUE, model)
    assert payload == node.value  # type: ignore[union-attr]
    assert_same(registry.decode(payload, F.OPAQUE, path, model), node)


@PROPS
@given(placed=placed_nodes())
def test_can_encode_agrees_with_encode(placed: Placed) -> None:
    model, path, node = placed
    for fmt in registry.ENCODERS:
        ok = registry.can_encode(fmt, node, path, model)
        try:
            registry.encode(node, path, fmt, model)
        except CodecError:
            # the only thing can_encode does not look at: a value the format cannot spell
            assert not ok or (fmt is F.SENML_JSON and _has_infinity(node))
        else:
            assert ok


def _has_infinity(node: Node) -> bool:
    leaves: list[Any] = []
    if isinstance(node, Obj):
        for i in node.instances.values():
            leaves.extend(_values_of_instance(i))
    elif isinstance(node, Instance):
        leaves.extend(_values_of_instance(node))
    elif isinstance(node, MultipleResource):
        leaves.extend(node.instances.values())
    else:
        leaves.append(node.value)
    return any(isinstance(v, float) and math.isinf(v) for v in leaves)


def _values_of_instance(inst: Instance) -> list[Any]:
    out: list[Any] = []
    for r in inst.resources.values():
        out.extend(r.instances.values() if isinstance(r, MultipleResource) else [r.value])
    return out


SELF_DESCRIBING = [T.STRING, T.INTEGER, T.FLOAT, T.BOOLEAN, T.OPAQUE]


@pytest.mark.parametrize("fmt", [F.SENML_CBOR, F.LWM2M_CBOR])
@PROPS
@given(placed=placed_nodes(shapes=["single", "multiple", "ri"], types=SELF_DESCRIBING))
def test_unknown_model_keeps_self_describing_values(fmt: ContentFormat, placed: Placed) -> None:
    """Without a model, SenML and LwM2M CBOR values come back with the type the payload implies."""
    model, path, node = placed
    payload = registry.encode(node, path, fmt, model)
    if isinstance(node, MultipleResource) and not node.instances:
        if fmt is F.SENML_CBOR:
            with pytest.raises(CodecError):
                registry.decode(payload, fmt, path, ObjectModel())
            return
        node = MultipleResource(node.id, T.OPAQUE, {})
    assert_same(registry.decode(payload, fmt, path, ObjectModel()), node)


@st.composite
def composites(draw: st.DrawFn, finite: bool = False) -> tuple[ObjectModel, dict[LwM2mPath, Node]]:
    """Disjoint nodes from up to three objects: each object is split into random sub-nodes (whole instances,
    single resources, whole multiple resources or their resource instances), so paths share prefixes."""
    oids = draw(st.lists(object_ids, min_size=1, max_size=3, unique=True))
    defs = [object_definition(oid, draw(resource_definitions(ALL_TYPES))) for oid in oids]
    nodes: dict[LwM2mPath, Node] = {}
    for odef in defs:
        obj = draw(obj_node(odef, finite))
        base = LwM2mPath.of(odef.id)
        if draw(st.booleans()):
            nodes[base] = obj
            continue
        for iid, inst in obj.instances.items():
            ipath = base.child(iid)
            if draw(st.booleans()):
                nodes[ipath] = inst
                continue
            for rid, r in inst.resources.items():
                rpath = ipath.child(rid)
                if isinstance(r, MultipleResource) and draw(st.booleans()):
                    for ri, v in r.instances.items():
                        nodes[rpath.child(ri)] = ResourceInstance(ri, r.type, v)
                else:
                    nodes[rpath] = r
    return ObjectModel(defs), nodes


@pytest.mark.parametrize("fmt", COMPOSITE_FORMATS)
@PROPS
@given(data=st.data())
def test_roundtrip_composite(fmt: ContentFormat, data: st.DataObject) -> None:
    model, nodes = data.draw(composites(finite=fmt is F.SENML_JSON))
    payload = registry.encode_composite(nodes, fmt, model)
    decoded = registry.decode_composite(payload, fmt, model)
    expected = leaf_level(nodes, keep_empty=fmt is F.LWM2M_CBOR)
    assert decoded.keys() == expected.keys()
    for p, n in expected.items():
        assert_same(decoded[p], n)


any_paths = st.lists(instance_ids, max_size=4).map(lambda ids: LwM2mPath(tuple(ids)))


@pytest.mark.parametrize("fmt", COMPOSITE_FORMATS)
@PROPS
@given(paths=st.lists(any_paths, max_size=6, unique=True))
def test_roundtrip_paths(fmt: ContentFormat, paths: list[LwM2mPath]) -> None:
    if fmt is F.LWM2M_CBOR:
        paths = [p for p in paths if not p.is_root]  # LwM2M CBOR cannot name the root
    assert registry.decode_paths(registry.encode_paths(paths, fmt), fmt) == paths


def oma_json_of(node: Node, path: LwM2mPath) -> bytes:
    """A reference OMA JSON writer (LwM2M 1.0, 6.4.4) used to check the decoder, independent of our encoders."""
    entries = []
    leaves: list[tuple[tuple[int, ...], ResourceType, Value]] = []

    def walk(ids: tuple[int, ...], n: Node) -> None:
        if isinstance(n, SingleResource | ResourceInstance):
            leaves.append((ids, n.type, n.value))
        elif isinstance(n, MultipleResource):
            leaves.extend(((*ids, ri), n.type, v) for ri, v in n.instances.items())
        else:
            for cid, c in (n.instances if isinstance(n, Obj) else n.resources).items():
                walk((*ids, cid), c)

    walk(path.ids, node)
    leaf = isinstance(node, SingleResource | ResourceInstance)
    bn = str(path) if leaf else str(path) + "/"
    for ids, t, v in leaves:
        e: dict[str, Any] = {"n": "/".join(map(str, ids[path.depth :]))}
        if t in (T.STRING, T.CORELNK):
            e["sv"] = v
        elif t is T.OPAQUE:
            assert isinstance(v, bytes)
            e["sv"] = base64.b64encode(v).decode()
        elif t is T.BOOLEAN:
            e["bv"] = v
        elif t is T.OBJLNK:
            e["ov"] = str(v)
        elif t is not T.NONE:
            e["v"] = v
        entries.append(e)
    return json.dumps({"bn": bn, "e": entries}).encode()


@pytest.mark.parametrize("fmt", [F.OMA_JSON, F.JSON_OLD])
@PROPS
@given(placed=placed_nodes(finite=True))
def test_oma_json_decodes_reference_writer(fmt: ContentFormat, placed: Placed) -> None:
    model, path, node = placed
    assert_same(registry.decode(oma_json_of(node, path), fmt, path, model), without_nested_empties(node))


# --- 2. fuzz -----------------------------------------------------------------------------------------------------


def _fuzz_model() -> ObjectModel:
    """Object 3 (Device-like) and object 77 with every type as single (rid k) and multiple (rid 20 + k)."""
    res = {}
    for k, t in enumerate(ALL_TYPES):
        res[k] = ResourceDefinition(k, f"s{k}", "RW", False, False, t)
        res[20 + k] = ResourceDefinition(20 + k, f"m{k}", "RW", True, False, t)
    dev = {i: ResourceDefinition(i, f"d{i}", "R", i in (6, 7, 8, 11), False, T.STRING if i < 4 else T.INTEGER)
           for i in range(17)}  # fmt: skip
    return ObjectModel([object_definition(77, res), object_definition(3, dev)])


FUZZ_MODEL = _fuzz_model()
MODELS = st.sampled_from([FUZZ_MODEL, ObjectModel()])
FUZZ_IDS = st.sampled_from([0, 1, 2, 3, 5, 6, 7, 9, 20, 21, 23, 25, 26, 27, 28, 77, 300])
fuzz_paths = st.lists(FUZZ_IDS, min_size=1, max_size=4).map(lambda ids: LwM2mPath(tuple(ids)))  # root: see below
KIND_AT_DEPTH: dict[int, tuple[type, ...]] = {
    1: (Obj,),
    2: (Instance,),
    3: (SingleResource, MultipleResource),
    4: (ResourceInstance,),
}


def decode_or_codec_error(payload: bytes, fmt: ContentFormat, path: LwM2mPath, model: ObjectModel) -> None:
    """The fuzz contract: a node of the kind the path calls for, or a CodecError. Anything else fails."""
    try:
        node = registry.decode(payload, fmt, path, model)
    except CodecError:
        return
    assert isinstance(node, KIND_AT_DEPTH[path.depth]), (fmt, path, node)
    assert node.id == path.ids[-1]


def composite_or_codec_error(payload: bytes, fmt: ContentFormat, model: ObjectModel) -> None:
    try:
        nodes = registry.decode_composite(payload, fmt, model)
    except CodecError:
        pass
    else:
        for p, n in nodes.items():
            assert isinstance(n, KIND_AT_DEPTH[p.depth])
    try:
        paths = registry.decode_paths(payload, fmt)
    except CodecError:
        pass
    else:
        assert all(isinstance(p, LwM2mPath) for p in paths)


def every_decoder(payload: bytes, path: LwM2mPath, model: ObjectModel, formats: list[ContentFormat]) -> None:
    for fmt in formats:
        decode_or_codec_error(payload, fmt, path, model)
        if fmt in COMPOSITE_FORMATS:
            composite_or_codec_error(payload, fmt, model)


ALL_DECODERS = list(registry.DECODERS)
JSON_DECODERS = [F.SENML_JSON, F.OMA_JSON, F.TEXT]
CBOR_DECODERS = [F.SENML_CBOR, F.LWM2M_CBOR, F.TLV]


@pytest.mark.parametrize("fmt", ALL_DECODERS)
def test_root_path_is_refused(fmt: ContentFormat) -> None:
    with pytest.raises(CodecError):
        registry.decode(b"", fmt, LwM2mPath(()), FUZZ_MODEL)


@FUZZ
@given(payload=st.binary(max_size=300), path=fuzz_paths, model=MODELS)
def test_fuzz_arbitrary_bytes(payload: bytes, path: LwM2mPath, model: ObjectModel) -> None:
    every_decoder(payload, path, model, ALL_DECODERS)


def _tlv(kind: int, ident: int, value: bytes) -> bytes:
    """Test-side TLV writer: always the longest forms (16-bit id, 24-bit length), unlike our encoder."""
    return bytes([kind << 6 | 0x20 | 0x18]) + ident.to_bytes(2, "big") + len(value).to_bytes(3, "big") + value


tlv_values = st.one_of(st.binary(max_size=9), st.sampled_from([b"", b"\x01", b"\x00\x05", b"\x3f\x80\x00\x00"]))
tlv_trees = st.recursive(
    st.tuples(st.integers(0, 3), st.sampled_from([0, 1, 3, 6, 7, 9, 20, 21, 25, 65535]), tlv_values).map(
        lambda t: _tlv(*t)
    ),
    lambda inner: st.tuples(st.integers(0, 3), st.sampled_from([0, 1, 6, 20, 21]), st.lists(inner, max_size=4)).map(
        lambda t: _tlv(t[0], t[1], b"".join(t[2]))
    ),
    max_leaves=12,
)


@FUZZ
@given(parts=st.lists(tlv_trees, max_size=4), path=fuzz_paths, model=MODELS)
def test_fuzz_structured_tlv(parts: list[bytes], path: LwM2mPath, model: ObjectModel) -> None:
    every_decoder(b"".join(parts), path, model, [F.TLV])


cbor_leaves = st.one_of(
    st.integers(-(2**70), 2**70),
    st.floats(),
    st.text(max_size=8),
    st.binary(max_size=8),
    st.booleans(),
    st.none(),
    st.sampled_from(["/3/0/1", "1:2", "/77/0/", "0", "6/0", "/77/0/21/3", "65535:0", "99999:1"]),
)
cbor_keys = st.one_of(
    st.integers(-8, 70000),
    st.sampled_from([-2, 0, 2, 3, 4, 8, "vlo", "bn", "n", "v_", 3, 77, 0, 20, 21]),
    st.lists(st.sampled_from([0, 1, 3, 6, 20, 77, 65535, -1, 70000]), max_size=5).map(tuple),
    st.text(max_size=3),
)
TAGS = [0, 1, 2, 3, 4, 5, 25, 28, 29, 30, 35, 36, 37, 100, 256, 258, 260, 261, 1004, 55799, 12345]
cbor_items = st.recursive(
    cbor_leaves,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(cbor_keys, children, max_size=4),
        st.builds(cbor2.CBORTag, st.sampled_from(TAGS), children),
    ),
    max_leaves=24,
)


def _cbor(item: Any) -> bytes:
    try:
        return bytes(cbor2.dumps(item))
    except Exception:
        reject()


@FUZZ
@given(item=cbor_items, path=fuzz_paths, model=MODELS)
def test_fuzz_arbitrary_cbor(item: Any, path: LwM2mPath, model: ObjectModel) -> None:
    every_decoder(_cbor(item), path, model, CBOR_DECODERS)


json_leaves = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=8),
    st.sampled_from(["/3/0/1", "1:2", "/77/0/", "0", "6/0", "AQID", "-_8", "===", "/3/0/", "20/1"]),
)  # fmt: skip
json_keys = st.one_of(
    st.sampled_from(["bn", "n", "v", "vs", "vb", "vd", "vlo", "bv", "bt", "t", "e", "sv", "ov", "x_", "bver"]),
    st.text(max_size=3),
)
json_items = st.recursive(
    json_leaves,
    lambda children: st.one_of(st.lists(children, max_size=4), st.dictionaries(json_keys, children, max_size=5)),
    max_leaves=24,
)


@FUZZ
@given(item=json_items, path=fuzz_paths, model=MODELS)
def test_fuzz_arbitrary_json(item: Any, path: LwM2mPath, model: ObjectModel) -> None:
    every_decoder(json.dumps(item).encode(), path, model, JSON_DECODERS)


NAMES = ["/", "", "/3/0/", "/3/0/1", "1", "6/0", "/77/0/", "20/1", "21", "/77/0/2", "/3/0/6/", "/65535/0/0",
         "/3/65535/0", "/3/0/1/2/3", "x", "/01/0/0", "3/0/0", "/77/0/23/0", "/77/0/3", "/77/1/7", "0/5"]  # fmt: skip
valid_names = st.builds(
    lambda o, i, r, ri: f"/{o}/{i}/{r}" + (f"/{ri}" if ri is not None else ""),
    st.sampled_from([3, 77]), st.sampled_from([0, 1]), FUZZ_IDS, st.none() | st.sampled_from([0, 1, 7]),
)  # fmt: skip
senml_names = st.sampled_from(NAMES) | valid_names
senml_values: dict[str, st.SearchStrategy[Any]] = {
    "bn": senml_names,
    "n": senml_names,
    "v": st.one_of(st.integers(-(2**65), 2**65), st.floats(allow_nan=False, allow_infinity=False), st.just(1.5)),
    "vs": st.one_of(st.text(max_size=6), st.sampled_from(["1:2", "abc"])),
    "vb": st.booleans(),
    "vd": st.sampled_from(["AQID", "-_8", "AQ", "A", "!!", ""]),
    "vlo": st.sampled_from(["1:2", "65535:65535", "70000:1", "x", "1:2:3"]),
    "bv": st.one_of(st.integers(-5, 5), st.floats(allow_nan=False, allow_infinity=False)),
    "t": st.integers(-10, 10),
    "x_": st.integers(),
}
senml_packs = st.lists(st.fixed_dictionaries({}, optional=senml_values) | json_items, max_size=6)
CBOR_LABEL = {"bn": -2, "n": 0, "v": 2, "vs": 3, "vb": 4, "t": 6, "bv": -5}


def _as_senml_cbor(pack: list[Any]) -> Any:
    out = []
    for rec in pack:
        if isinstance(rec, dict):
            d = {}
            for k, v in rec.items():
                if k == "vd" and isinstance(v, str):
                    d[8] = v.encode()  # CBOR carries opaque values as byte strings
                else:
                    d[CBOR_LABEL.get(k, k)] = v
            out.append(d)
        else:
            out.append(rec)
    return out


@FUZZ
@given(pack=senml_packs, path=fuzz_paths, model=MODELS)
def test_fuzz_senml_shaped(pack: list[Any], path: LwM2mPath, model: ObjectModel) -> None:
    every_decoder(json.dumps(pack).encode(), path, model, [F.SENML_JSON])
    every_decoder(_cbor(_as_senml_cbor(pack)), path, model, [F.SENML_CBOR])
    every_decoder(json.dumps({"bn": "/77/0/", "e": pack}).encode(), path, model, [F.OMA_JSON])
    every_decoder(json.dumps({"e": pack}).encode(), path, model, [F.OMA_JSON])


lwm2m_cbor_keys = st.one_of(
    st.sampled_from([0, 1, 3, 6, 7, 20, 21, 23, 77, 65535, -1]),
    st.lists(st.sampled_from([0, 1, 3, 6, 20, 21, 23, 77, 65535]), min_size=0, max_size=5).map(tuple),
)
lwm2m_cbor_trees = st.recursive(
    cbor_leaves | st.just({}),
    lambda children: st.dictionaries(lwm2m_cbor_keys, children, max_size=4),
    max_leaves=16,
)


@FUZZ
@given(tree=lwm2m_cbor_trees, path=fuzz_paths, model=MODELS)
def test_fuzz_lwm2m_cbor_shaped(tree: Any, path: LwM2mPath, model: ObjectModel) -> None:
    every_decoder(_cbor(tree), path, model, [F.LWM2M_CBOR])


Mutation = Callable[[bytes], bytes]


@st.composite
def mutations(draw: st.DrawFn, payload: bytes) -> bytes:
    n = len(payload)
    op = draw(st.sampled_from(["truncate", "flip", "insert", "delete", "dup"]))
    if n == 0 or op == "insert":
        i = draw(st.integers(0, n))
        return payload[:i] + draw(st.binary(min_size=1, max_size=4)) + payload[i:]
    i = draw(st.integers(0, n - 1))
    if op == "truncate":
        return payload[:i]
    if op == "flip":
        return payload[:i] + bytes([payload[i] ^ draw(st.integers(1, 255))]) + payload[i + 1 :]
    if op == "delete":
        return payload[:i] + payload[i + 1 :]
    return payload + payload[i:]


@pytest.mark.parametrize("fmt", [F.TLV, F.SENML_JSON, F.SENML_CBOR, F.LWM2M_CBOR, F.TEXT])
@FUZZ
@given(data=st.data())
def test_fuzz_mutated_valid_payloads(fmt: ContentFormat, data: st.DataObject) -> None:
    shapes = ["single", "ri"] if fmt is F.TEXT else SHAPES
    model, path, node = data.draw(placed_nodes(shapes=shapes, finite=True))
    payload = registry.encode(node, path, fmt, model)
    for _ in range(3):
        payload = data.draw(mutations(payload))
        decode_or_codec_error(payload, fmt, path, model)
        decode_or_codec_error(payload, fmt, path, ObjectModel())
        if fmt in COMPOSITE_FORMATS:
            composite_or_codec_error(payload, fmt, model)
    other = data.draw(fuzz_paths)
    decode_or_codec_error(payload, fmt, other, model)
