"""The device tag store on real SQLite (a file in a temporary folder, opened the way the server opens its database):
idempotent add/remove, tenants kept apart, validation before any write, and a model-based property test."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lwm2m_server.core.errors import InvalidRequestError
from lwm2m_server.registry.tags import DeviceTags, InvalidTagError, validate_tag
from lwm2m_server.storage.database import Database


@pytest.fixture
def tags(tmp_path: Path) -> Iterator[DeviceTags]:
    with Database.for_data_dir(tmp_path / "data") as db:
        yield DeviceTags(db)


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DeviceTags]:
    with Database.for_data_dir(tmp_path_factory.mktemp("tags") / "data") as db:
        yield DeviceTags(db)


def test_add_and_remove_are_idempotent(tags: DeviceTags) -> None:
    assert tags.of("dev-1") == []
    assert tags.add("dev-1", ["site:lyon", "beta"]) == ["beta", "site:lyon"]
    assert tags.add("dev-1", ["beta"]) == ["beta", "site:lyon"]  # already there: no error, no duplicate
    assert tags.add("dev-1", "canary") == ["beta", "canary", "site:lyon"]  # one tag as a string
    assert tags.remove("dev-1", ["beta", "never-there"]) == ["canary", "site:lyon"]
    assert tags.remove("dev-1", ["beta"]) == ["canary", "site:lyon"]
    assert tags.of("dev-1") == ["canary", "site:lyon"]
    assert tags.endpoints_with("canary") == {"dev-1"}
    assert tags.endpoints_with("beta") == set()


def test_change_adds_and_removes_in_one_go(tags: DeviceTags) -> None:
    tags.add("dev-1", ["a", "b"])
    assert tags.change("dev-1", add=["c"], remove=["a"]) == ["b", "c"]
    with pytest.raises(InvalidTagError, match="both added and removed"):
        tags.change("dev-1", add=["x"], remove=["x"])
    assert tags.of("dev-1") == ["b", "c"]


def test_unregistered_devices_can_be_tagged_and_all_lists_them(tags: DeviceTags) -> None:
    tags.add("warehouse-7", ["stock"])
    tags.add("a-device", ["stock", "z"])
    assert tags.all() == {"a-device": ["stock", "z"], "warehouse-7": ["stock"]}
    assert list(tags.all()) == ["a-device", "warehouse-7"]  # sorted by endpoint
    assert tags.endpoints_with("stock") == {"a-device", "warehouse-7"}


def test_tenants_never_see_each_other(tags: DeviceTags) -> None:
    tags.add("dev-1", ["beta"], tenant_id="oem-a")
    tags.add("dev-1", ["prod"], tenant_id="oem-b")
    assert tags.of("dev-1", tenant_id="oem-a") == ["beta"]
    assert tags.of("dev-1", tenant_id="oem-b") == ["prod"]
    assert tags.of("dev-1") == []  # the default tenant
    assert tags.endpoints_with("beta", tenant_id="oem-b") == set()
    assert tags.all(tenant_id="oem-a") == {"dev-1": ["beta"]}
    assert tags.all() == {}
    tags.remove("dev-1", ["beta"], tenant_id="oem-b")  # another tenant's tag is not removed
    assert tags.of("dev-1", tenant_id="oem-a") == ["beta"]


@pytest.mark.parametrize("bad", ["", "has space", "x" * 65, "slash/no", "é", "semi;colon", "new\nline", "tag\n"])
def test_invalid_tags_are_refused_before_any_write(tags: DeviceTags, bad: str) -> None:
    with pytest.raises(InvalidTagError, match="a tag is 1 to 64 characters") as info:
        tags.add("dev-1", ["good", bad])
    assert isinstance(info.value, InvalidRequestError)
    assert tags.of("dev-1") == []  # the valid one was not stored either
    with pytest.raises(InvalidTagError):
        tags.remove("dev-1", [bad])
    with pytest.raises(InvalidTagError):
        tags.endpoints_with(bad)


def test_valid_tag_limits(tags: DeviceTags) -> None:
    longest = "A" * 64
    assert validate_tag(longest) == longest
    assert tags.add("dev-1", [longest, "a.b_c:d-e", "0"]) == ["0", longest, "a.b_c:d-e"]


@pytest.mark.parametrize("endpoint", ["", "e" * 256])
def test_invalid_endpoints_are_refused(tags: DeviceTags, endpoint: str) -> None:
    with pytest.raises(InvalidTagError, match="invalid endpoint"):
        tags.add(endpoint, ["beta"])


def test_error_message_does_not_echo_a_huge_input(tags: DeviceTags) -> None:
    with pytest.raises(InvalidTagError) as info:
        tags.add("dev-1", ["!" * 10_000])
    assert len(str(info.value)) < 200


def test_tags_persist_across_reopening(tmp_path: Path) -> None:
    with Database.for_data_dir(tmp_path / "data") as db:
        DeviceTags(db).add("dev-1", ["beta"])
    with Database.for_data_dir(tmp_path / "data") as db:
        assert DeviceTags(db).of("dev-1") == ["beta"]
        assert "dev-1" not in repr(DeviceTags(db))


_fresh = itertools.count()
TAG = st.sampled_from(["a", "b", "c", "site:x", "v1.0", "Z-9"])
OPS = st.lists(st.tuples(st.sampled_from(["add", "remove"]), st.lists(TAG, max_size=4)), max_size=12)


@settings(max_examples=60, deadline=None)
@given(ops=OPS)
def test_add_remove_sequences_match_a_model_set(shared: DeviceTags, ops: list[tuple[str, list[str]]]) -> None:
    endpoint, other = f"ep-{next(_fresh)}", f"other-{next(_fresh)}"
    shared.add(other, ["a", "b"])  # a neighbour whose tags must not move
    model: set[str] = set()
    for op, batch in ops:
        if op == "add":
            model |= set(batch)
            after = shared.add(endpoint, batch)
        else:
            model -= set(batch)
            after = shared.remove(endpoint, batch)
        assert after == sorted(model)
    assert shared.of(endpoint) == sorted(model)
    for tag in ("a", "site:x"):
        assert (endpoint in shared.endpoints_with(tag)) == (tag in model)
    assert shared.all().get(endpoint, []) == sorted(model)
    assert shared.of(other) == ["a", "b"]
