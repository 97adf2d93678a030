"""LwM2M paths (lwm2m_server.core.paths) and value checks of the node model (lwm2m_server.core.nodes)."""

from __future__ import annotations

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from lwm2m_server.core.errors import InvalidPathError, ModelError
from lwm2m_server.core.nodes import (
    INT64_MAX,
    INT64_MIN,
    PYTHON_TYPES,
    UINT64_MAX,
    Instance,
    MultipleResource,
    Obj,
    ObjectLink,
    ResourceInstance,
    ResourceType,
    SingleResource,
    Value,
    check_value,
)
from lwm2m_server.core.paths import ROOT, LwM2mPath

ID = st.integers(0, 65535)
INSTANCE_ID = st.integers(0, 65534)  # 65535 is reserved for object instances and resource instances


@st.composite
def valid_ids(draw: st.DrawFn) -> tuple[int, ...]:
    depth = draw(st.integers(0, 4))
    levels = (ID, INSTANCE_ID, ID, INSTANCE_ID)
    return tuple(draw(levels[n]) for n in range(depth))


# ---------------------------------------------------------------------------------------------------------------
# paths


@given(valid_ids())
def test_str_parse_round_trip(ids: tuple[int, ...]) -> None:
    path = LwM2mPath(ids)
    text = str(path)
    assert text == "/" + "/".join(map(str, ids)) if ids else text == "/"
    assert LwM2mPath.parse(text) == path
    assert LwM2mPath.from_segments(list(path.segments)) == path
    assert path.depth == len(ids)


@given(valid_ids())
def test_parse_tolerates_missing_leading_and_extra_trailing_slash(ids: tuple[int, ...]) -> None:
    assume(ids)  # the root is exactly "/", tested on its own
    body = "/".join(map(str, ids))
    assert LwM2mPath.parse(body) == LwM2mPath.parse(f"/{body}/") == LwM2mPath(ids)


@given(valid_ids(), ID)
def test_child_parent_covers(ids: tuple[int, ...], extra: int) -> None:
    path = LwM2mPath(ids)
    assert path.covers(path)
    assert ROOT.covers(path)
    if len(ids) < 4 and not (extra == 65535 and len(ids) in (1, 3)):
        child = path.child(extra)
        assert child.parent == path
        assert path.covers(child) and not child.covers(path)


@given(st.lists(valid_ids(), max_size=20))
def test_paths_sort_as_their_id_tuples(idss: list[tuple[int, ...]]) -> None:
    assert [p.ids for p in sorted(LwM2mPath(i) for i in idss)] == sorted(idss)


def test_accessors() -> None:
    p = LwM2mPath.parse("/5/0/3")
    assert (p.object_id, p.instance_id, p.resource_id, p.resource_instance_id) == (5, 0, 3, None)
    assert p.is_resource and not p.is_object_instance
    assert LwM2mPath.parse("/").is_root and LwM2mPath.parse("/3").is_object
    assert LwM2mPath.parse("/3/0").is_object_instance and LwM2mPath.parse("/3/0/6/1").is_resource_instance
    assert LwM2mPath.parse("/3/0/65535").resource_id == 65535  # only instance levels reserve 65535
    with pytest.raises(InvalidPathError):
        _ = ROOT.parent


def test_gateway_prefix_formats_first() -> None:
    p = LwM2mPath((3, 0), "dev7")
    assert str(p) == "/dev7/3/0" and p.segments == ("dev7", "3", "0")
    assert not LwM2mPath((3,)).covers(p)


@pytest.mark.parametrize(
    "text",
    [
        "/a",
        "/1//2",
        "/70000",
        "/65536",
        "/3/65535",
        "/3/0/1/65535",
        "/01",
        "/00",
        "/1/2/3/4/5",
        "/\u0663",  # ARABIC-INDIC DIGIT THREE: str.isdigit() is true, but it is not an LwM2M id
        "/\u00b2",  # SUPERSCRIPT TWO
        "/\uff13",  # FULLWIDTH DIGIT THREE
        "/-1",
        "/+1",
        "/1 /2",
        "/ 1/2",
        "/3/0?x",
        "/1_0",
        "/100000",
    ],
)
def test_invalid_paths_raise(text: str) -> None:
    with pytest.raises(InvalidPathError):
        LwM2mPath.parse(text)


@pytest.mark.parametrize("text", ["", "//"])
def test_empty_and_double_slash_are_not_paths(text: str) -> None:
    with pytest.raises(InvalidPathError):
        LwM2mPath.parse(text)


@pytest.mark.parametrize("ids", [(1, 2, 3, 4, 5), (-1,), (65536,), (3, 65535), (3, 0, 1, 65535), (True,), ("3",)])
def test_invalid_ids_raise(ids: tuple[object, ...]) -> None:
    with pytest.raises(InvalidPathError):
        LwM2mPath(ids)  # type: ignore[arg-type]


def test_non_string_raises() -> None:
    with pytest.raises(InvalidPathError):
        LwM2mPath.parse(3)  # type: ignore[arg-type]


@given(st.text(max_size=30))
def test_parse_raises_only_invalid_path_error(text: str) -> None:
    try:
        path = LwM2mPath.parse(text)
    except InvalidPathError:
        return
    assert LwM2mPath.parse(str(path)) == path


# ---------------------------------------------------------------------------------------------------------------
# check_value

INTEGER_TYPES = (ResourceType.INTEGER, ResourceType.UNSIGNED_INTEGER, ResourceType.TIME)


@pytest.mark.parametrize("rtype", [t for t in ResourceType if t is not ResourceType.BOOLEAN])
@pytest.mark.parametrize("value", [True, False])
def test_bool_is_only_a_boolean(rtype: ResourceType, value: bool) -> None:
    with pytest.raises(ModelError):
        check_value(rtype, value)


@pytest.mark.parametrize("value", [True, False])
def test_boolean_accepts_bool_only(value: bool) -> None:
    check_value(ResourceType.BOOLEAN, value)
    with pytest.raises(ModelError):
        check_value(ResourceType.BOOLEAN, int(value))


@pytest.mark.parametrize("rtype", [ResourceType.INTEGER, ResourceType.TIME])
def test_int64_limits(rtype: ResourceType) -> None:
    check_value(rtype, INT64_MIN)
    check_value(rtype, INT64_MAX)
    for bad in (INT64_MIN - 1, INT64_MAX + 1, UINT64_MAX):
        with pytest.raises(ModelError):
            check_value(rtype, bad)


def test_uint64_limits() -> None:
    check_value(ResourceType.UNSIGNED_INTEGER, 0)
    check_value(ResourceType.UNSIGNED_INTEGER, UINT64_MAX)
    for bad in (-1, UINT64_MAX + 1, INT64_MIN):
        with pytest.raises(ModelError):
            check_value(ResourceType.UNSIGNED_INTEGER, bad)


@given(st.integers(min_value=-(2**70), max_value=2**70))
def test_integer_ranges(value: int) -> None:
    for rtype, lo, hi in (
        (ResourceType.INTEGER, INT64_MIN, INT64_MAX),
        (ResourceType.TIME, INT64_MIN, INT64_MAX),
        (ResourceType.UNSIGNED_INTEGER, 0, UINT64_MAX),
    ):
        if lo <= value <= hi:
            check_value(rtype, value)
        else:
            with pytest.raises(ModelError):
                check_value(rtype, value)


GOOD: list[tuple[ResourceType, Value]] = [
    (ResourceType.STRING, ""),
    (ResourceType.STRING, "h\u00e9llo"),
    (ResourceType.CORELNK, "</3/0>"),
    (ResourceType.FLOAT, 0.0),
    (ResourceType.FLOAT, float("inf")),
    (ResourceType.FLOAT, float("nan")),
    (ResourceType.OPAQUE, b""),
    (ResourceType.OBJLNK, ObjectLink(65535, 65535)),
    (ResourceType.NONE, None),
]

BAD: list[tuple[ResourceType, object]] = [
    (ResourceType.STRING, b"bytes"),
    (ResourceType.STRING, None),
    (ResourceType.INTEGER, 1.0),
    (ResourceType.INTEGER, "1"),
    (ResourceType.UNSIGNED_INTEGER, 1.5),
    (ResourceType.TIME, 1.0),
    (ResourceType.FLOAT, 1),  # a Float wants a float, not an int
    (ResourceType.OPAQUE, bytearray(b"x")),
    (ResourceType.OPAQUE, "text"),
    (ResourceType.OBJLNK, "3:0"),
    (ResourceType.NONE, 0),
    (ResourceType.NONE, ""),
]


@pytest.mark.parametrize(("rtype", "value"), GOOD)
def test_good_values(rtype: ResourceType, value: Value) -> None:
    check_value(rtype, value)


@pytest.mark.parametrize(("rtype", "value"), BAD)
def test_bad_values(rtype: ResourceType, value: object) -> None:
    with pytest.raises(ModelError):
        check_value(rtype, value)  # type: ignore[arg-type]


def test_every_type_has_a_python_type() -> None:
    assert set(PYTHON_TYPES) == set(ResourceType)


# ---------------------------------------------------------------------------------------------------------------
# ObjectLink and node construction


@given(ID, ID)
def test_object_link_round_trip(o: int, i: int) -> None:
    link = ObjectLink(o, i)
    assert ObjectLink.parse(str(link)) == link


@pytest.mark.parametrize("text", ["3", "3:0:1", "a:b", "", ":", "3:", "70000:0", "3:-1"])
def test_bad_object_links(text: str) -> None:
    with pytest.raises(ModelError):
        ObjectLink.parse(text)


@pytest.mark.parametrize("text", ["\u0663:\u0660", "1_0:0", "+3:0", "-0:0", " 3 : 0 "])
def test_object_link_takes_ascii_digits_only(text: str) -> None:
    with pytest.raises(ModelError):
        ObjectLink.parse(text)


@pytest.mark.parametrize("ids", [(True, 0), (0, 65536), (-1, 0)])
def test_bad_object_link_ids(ids: tuple[int, int]) -> None:
    with pytest.raises(ModelError):
        ObjectLink(*ids)


def test_nodes_check_ids_and_values() -> None:
    with pytest.raises(ModelError):
        SingleResource(0, ResourceType.INTEGER, True)
    with pytest.raises(ModelError):
        SingleResource(65536, ResourceType.INTEGER, 1)
    with pytest.raises(ModelError):
        MultipleResource(6, ResourceType.UNSIGNED_INTEGER, {0: 1, 1: -1})
    with pytest.raises(ModelError):
        MultipleResource(6, ResourceType.INTEGER, {True: 1})
    with pytest.raises(ModelError):
        ResourceInstance(0, ResourceType.TIME, INT64_MAX + 1)
    with pytest.raises(ModelError):
        Instance(0, {1: SingleResource(2, ResourceType.STRING, "x")})
    with pytest.raises(ModelError):
        Obj(3, {0: Instance(1)})
    res = MultipleResource(6, ResourceType.INTEGER, {0: 1, 3: 5})
    assert res.instance(3) == ResourceInstance(3, ResourceType.INTEGER, 5)
    inst = Instance.of(0, [SingleResource(0, ResourceType.STRING, "ACME"), res])
    assert Obj.of(3, [inst]).instances[0].resources[6] is res


@given(st.one_of(st.text(max_size=400), st.binary(max_size=400), st.integers()))
def test_device_text_is_storable_and_bounded(value: object) -> None:
    from lwm2m_server.core.nodes import MAX_DEVICE_TEXT, device_text

    shown = device_text(value)  # type: ignore[arg-type]
    assert len(shown) <= MAX_DEVICE_TEXT and "\x00" not in shown
    assert all(ord(c) >= 32 or c == "\t" for c in shown)
    if isinstance(value, str) and value.isprintable():
        assert shown == value[:MAX_DEVICE_TEXT]
