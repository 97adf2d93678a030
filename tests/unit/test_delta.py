"""Deltas (detools sequential + heatshrink): round trips, the size limit read from the header, corrupt input, and
the bytes a small change costs on a 1 MiB image."""

from __future__ import annotations

import contextlib
import random

import pytest
from detools.bsdiff import pack_size  # type: ignore[import-untyped]
from detools.compression.heatshrink import pack_header as heatshrink_header  # type: ignore[import-untyped]
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from firmware_object.delta import DELTA_FORMAT, apply_delta, delta_target_size, make_delta
from firmware_object.errors import DeltaBaseMismatchError, DeltaError, FirmwareError, UpdateResult

SETTINGS = settings(deadline=None, max_examples=60, suppress_health_check=[HealthCheck.too_slow])
MIB = 1 << 20


@st.composite
def edited(draw: st.DrawFn) -> tuple[bytes, bytes]:
    """A random base and a target made from it by a few replacements, insertions and deletions."""
    base = draw(st.binary(max_size=3000))
    target = bytearray(base)
    for _ in range(draw(st.integers(0, 5))):
        position = draw(st.integers(0, len(target)))
        kind = draw(st.sampled_from(["replace", "insert", "delete"]))
        chunk = draw(st.binary(min_size=1, max_size=64))
        if kind == "replace":
            target[position : position + len(chunk)] = chunk
        elif kind == "insert":
            target[position:position] = chunk
        else:
            del target[position : position + len(chunk)]
    return base, bytes(target)


@SETTINGS
@given(edited())
def test_round_trip(pair: tuple[bytes, bytes]) -> None:
    base, target = pair
    delta = make_delta(base, target)
    assert delta_target_size(delta) == len(target)
    assert apply_delta(base, delta, max_size=len(target)) == target
    assert make_delta(base, target) == delta  # deterministic


def test_result_over_the_limit_is_refused() -> None:
    base = bytes(range(256)) * 4
    target = base + b"more"
    delta = make_delta(base, target)
    with pytest.raises(DeltaError, match="limit"):
        apply_delta(base, delta, max_size=len(target) - 1)
    # A header that claims a huge target and carries no data is refused from the header alone.
    huge = delta[:1] + pack_size(1 << 40) + heatshrink_header(8, 7)
    with pytest.raises(DeltaError, match="limit"):
        apply_delta(base, huge, max_size=MIB)


@pytest.mark.parametrize(
    "delta",
    [
        b"",
        b"\x00" + pack_size(4),  # header byte: patch type (3 bits) and compression (4 bits); 0/0 = uncompressed
        b"\x01" + pack_size(4),  # lzma
        b"\x14" + pack_size(4),  # in-place patch
        b"\x04",  # sequential + heatshrink, size missing
        b"\x04" + pack_size(-5),
        b"\x04" + pack_size(4) + b"\x66",  # heatshrink window 10, lookahead 9: more RAM than the device has
        b"\xff" * 10,
    ],
    ids=["empty", "uncompressed", "lzma", "in-place", "truncated", "negative-size", "window", "garbage"],
)
def test_foreign_or_broken_headers(delta: bytes) -> None:
    with pytest.raises(DeltaError):
        apply_delta(b"base", delta, max_size=MIB)


@SETTINGS
@given(edited(), st.data())
def test_corrupt_delta_raises_only_delta_error(pair: tuple[bytes, bytes], data: st.DataObject) -> None:
    base, target = pair
    delta = bytearray(make_delta(base, target))
    if data.draw(st.booleans()):
        del delta[data.draw(st.integers(0, len(delta) - 1)) :]
    else:
        index = data.draw(st.integers(0, len(delta) - 1))
        delta[index] ^= data.draw(st.integers(1, 255))
    try:
        result = apply_delta(base, bytes(delta), max_size=4 * len(target) + 64)
    except DeltaError:
        return
    assert len(result) == delta_target_size(bytes(delta))  # a corrupt delta may still apply: the digest catches it


@SETTINGS
@given(st.binary(max_size=200), st.binary(max_size=200))
def test_arbitrary_bytes_raise_only_delta_error(base: bytes, delta: bytes) -> None:
    with contextlib.suppress(DeltaError):  # anything else escapes and fails the test
        apply_delta(base, delta, max_size=4096)


def test_errors_carry_their_update_result() -> None:
    assert issubclass(DeltaError, FirmwareError) and issubclass(DeltaBaseMismatchError, FirmwareError)
    assert DeltaError.update_result == UpdateResult.INTEGRITY_CHECK_FAILURE
    assert DeltaBaseMismatchError.update_result == UpdateResult.UNSUPPORTED_PACKAGE_TYPE
    assert int(DeltaBaseMismatchError.update_result) == 6
    assert DELTA_FORMAT == "detools-sequential-heatshrink"


def one_mib_pair() -> tuple[bytes, bytes, int]:
    """A 1 MiB image and the same with ~4 KiB changed in four places (a patched function, a table, strings...)."""
    rng = random.Random(17)
    base = bytearray(rng.randbytes(MIB))
    target = bytearray(base)
    changed = 0
    for offset, length in ((4_096, 1_024), (262_144, 1_536), (700_000, 512), (1_000_000, 1_024)):
        target[offset : offset + length] = rng.randbytes(length)
        changed += length
    return bytes(base), bytes(target), changed


def test_small_change_to_a_1_mib_image_costs_under_20_percent() -> None:
    base, target, changed = one_mib_pair()
    delta = make_delta(base, target)
    assert apply_delta(base, delta, max_size=len(target)) == target
    saving = 1 - len(delta) / len(target)
    print(f"\n1 MiB image, {changed} bytes changed: delta {len(delta)} bytes, {saving:.1%} smaller than the image")
    assert saving >= 0.80
