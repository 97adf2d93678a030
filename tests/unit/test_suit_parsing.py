"""The strict CBOR decoder and the manifest parser: what they accept, what they refuse, and their work limits."""

from __future__ import annotations

import contextlib
import time
import uuid

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from firmware_object.errors import SuitDecodeError
from firmware_object.suit import cbor
from firmware_object.suit.manifest import MAX_STATES, parse_manifest

# --- strict CBOR ---------------------------------------------------------------------------------------------------

_leaves = st.one_of(
    st.integers(min_value=-(2**64), max_value=2**64 - 1),
    st.binary(max_size=300),
    st.text(max_size=40),
    st.booleans(),
    st.none(),
)
_keys = st.integers(min_value=-(2**64), max_value=2**64 - 1) | st.text(max_size=8) | st.binary(max_size=8)
_values = st.recursive(
    _leaves,
    lambda children: (
        st.lists(children, max_size=6)
        | st.dictionaries(_keys, children, max_size=6)
        | st.builds(
            cbor2.CBORTag, st.integers(min_value=6, max_value=2**64 - 1).filter(lambda t: t not in _KNOWN), children
        )
    ),
    max_leaves=40,
)
_KNOWN = {25, 28, 29, 30, 35, 36, 37, 100, 256, 258, 260, 261, 1004, 43000, 55799}  # cbor2 interprets these


def _normalise(value: object) -> object:
    """What :func:`cbor.decode` returns for what cbor2 encodes: tags as :class:`cbor.Tagged`."""
    if isinstance(value, cbor2.CBORTag):
        return cbor.Tagged(value.tag, _normalise(value.value))  # type: ignore[arg-type]
    if isinstance(value, list):
        return [_normalise(v) for v in value]
    if isinstance(value, dict):
        return {k: _normalise(v) for k, v in value.items()}
    return value


@settings(deadline=None)
@given(_values)
def test_decode_inverts_cbor2(value: object) -> None:
    encoded = cbor2.dumps(value, canonical=True)
    assert cbor.decode(encoded) == _normalise(value)
    assert cbor.encode(value) == encoded


@settings(deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_decode_or_raise_suit_decode_error(data: bytes) -> None:
    with contextlib.suppress(SuitDecodeError):
        cbor.decode(data)


@pytest.mark.parametrize(
    ("hex_data", "reason"),
    [
        ("", "end of the data"),
        ("0000", "trailing"),
        ("1817", "shortest"),  # 23 in two bytes
        ("190017", "shortest"),
        ("1a000000ff", "shortest"),
        ("1b00000000ffffffff", "shortest"),
        ("5801ff", "shortest"),  # a one-byte bstr with a one-byte length argument
        ("5f41ff", "indefinite"),
        ("9f00ff", "indefinite"),
        ("f93c00", "floats"),
        ("fb3ff0000000000000", "floats"),
        ("f7", "floats"),  # undefined
        ("f0", "floats"),  # simple value 16
        ("a2010201030104", "duplicate"),
        ("a1f500", "map key"),  # true as a key
        ("a1a00000", "map key"),  # a map as a key
        ("62c328", "UTF-8"),
        ("5a7fffffff", "past the end"),  # a 2 GiB bstr announced, nothing sent
        ("9b00000001000000000000", "more items"),
        ("81" * 20 + "00", "deeper"),
    ],
)
def test_decode_refuses(hex_data: str, reason: str) -> None:
    with pytest.raises(SuitDecodeError, match=reason):
        cbor.decode(bytes.fromhex(hex_data))


def test_decode_keeps_tags_uninterpreted_and_array_keys_as_tuples() -> None:
    assert cbor.decode(bytes.fromhex("c11a514b67b0")) == cbor.Tagged(1, 1363896240)  # no datetime
    assert cbor.decode(bytes.fromhex("d81c80")) == cbor.Tagged(28, [])  # no shared references
    assert cbor.decode(cbor2.dumps({(b"\x00",): 1})) == {(b"\x00",): 1}


# --- manifest evaluation limits and forms -------------------------------------------------------------------------


def _manifest(shared: list[object], **members: object) -> bytes:
    common = {2: [[b"\x00"]], 4: cbor2.dumps(shared)}
    return cbor2.dumps({1: 1, 2: 0, 3: cbor2.dumps(common), **{int(k[1:]): v for k, v in members.items()}})


_FORK = [15, [cbor2.dumps([20, {5: 0}]), cbor2.dumps([20, {5: 1}])]]


def test_alternatives_are_bounded() -> None:
    parse_manifest(_manifest(_FORK * 6))  # 64 alternatives
    assert MAX_STATES == 64
    with pytest.raises(SuitDecodeError, match="alternatives"):
        parse_manifest(_manifest(_FORK * 7))


def test_nested_forks_cannot_make_work_explode() -> None:
    """Branches that fork, recurse, then fail a slot condition: few alternatives survive, but work grows as 64^depth
    without the step budget."""

    def heavy(depth: int) -> list[object]:
        inner = [15, [cbor2.dumps(heavy(depth - 1)), cbor2.dumps(heavy(depth - 1)), None]] if depth else []
        return [*(_FORK * 5), *inner, 20, {5: 1}, 5, 5]  # slot 1 contradicts the slot 0 pinned first

    encoded = _manifest([20, {5: 0}, 5, 5, 15, [cbor2.dumps(heavy(4)), None]])
    assert len(encoded) < 4096
    started = time.monotonic()
    with pytest.raises(SuitDecodeError, match="steps"):
        parse_manifest(encoded)
    assert time.monotonic() - started < 5


def test_nesting_is_bounded() -> None:
    sequence: list[object] = [3, 15]
    for _ in range(10):
        sequence = [32, cbor2.dumps(sequence)]
    with pytest.raises(SuitDecodeError, match="nest"):
        parse_manifest(_manifest(sequence))


def test_untagged_text_map_of_older_drafts() -> None:
    text = cbor2.dumps({1: "a manifest", (b"\x00",): {6: "0.9"}})
    view = parse_manifest(_manifest([3, 15], _23=text))
    assert view.version == "0.9"
    assert view.text[0].language == "" and view.text[0].manifest == {1: "a manifest"}


def test_pen_vendor_identifier() -> None:
    view = parse_manifest(_manifest([20, {1: cbor2.CBORTag(112, b"\x82\x37")}, 1, 15]))
    assert view.checked_vendor_ids == (b"\x82\x37",)
    assert view.describe()["checked_vendor_ids"] == ["pen:8237"]


@pytest.mark.parametrize(
    "shared",
    [
        [20, {2: b"short"}],  # class id not 16 bytes
        [20, {3: b"\x80"}],  # image digest not a SUIT_Digest
        [20, {14: -1}],  # negative size
        [20, {21: b"uri"}],  # uri not text
        [20, {}],  # empty parameters
        [12, 2**70],  # an index beyond uint64 never decodes, but a huge one would be refused here too
        [12, [-1]],
        [3],  # odd length
        ["x", 15],  # label not an integer
        [15, [b"\x80", 7]],  # try-each branch not a bstr
        [1, -1],  # reporting policy not a uint
    ],
)
def test_malformed_sequences(shared: list[object]) -> None:
    try:
        encoded = _manifest(shared)
    except (OverflowError, ValueError):
        return
    with pytest.raises(SuitDecodeError):
        parse_manifest(encoded)


@pytest.mark.parametrize(
    "members",
    [
        {1: 2, 2: 0, 3: b"\xa0"},  # manifest-version 2
        {1: 1, 3: b"\xa0"},  # no sequence number
        {1: 1, 2: -1, 3: b"\xa0"},
        {1: 1, 2: 0},  # no common
        {1: 1, 2: 0, 3: b"\x80"},  # common not a map
        {1: 1, 2: 0, 3: b"\xa0", 4: 7},  # reference-uri not text
        {1: 1, 2: 0, 3: b"\xa0", 20: 5},  # install neither bstr nor digest
        {1: 1, 2: 0, 3: b"\xa0", "x": 1},  # text key in the manifest
    ],
)
def test_malformed_manifests(members: dict[object, object]) -> None:
    with pytest.raises(SuitDecodeError):
        parse_manifest(cbor2.dumps(members))


def test_minimal_manifest_without_components() -> None:
    view = parse_manifest(cbor2.dumps({1: 1, 2: 3, 3: b"\xa0"}))
    assert view.sequence_number == 3 and view.components == ()
    assert view.version is None


def test_identifiers_set_but_not_checked_are_declared_only() -> None:
    vendor = uuid.uuid4()
    view = parse_manifest(_manifest([20, {1: vendor.bytes}]))
    assert view.vendor_ids == (vendor,) and view.checked_vendor_ids == ()
