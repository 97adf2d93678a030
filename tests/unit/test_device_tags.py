"""The device tag service on real SQLite (a file in a temporary folder, opened the way the server opens its database):
idempotent add/remove, tenants kept apart, validation before any write, and a model-based property test."""

from __future__ import annotations

import inspect
import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lwm2m_server.core.errors import InvalidRequestError
from lwm2m_server.registry.tags import DeviceTags, InvalidTagError, validate_tag
from lwm2m_server.storage.database import Database
from lwm2m_server.storage.tag_store import MemoryTagStore, SqlTagStore


@pytest.fixture
def tags(tmp_path: Path) -> Iterator[DeviceTags]:
    with Database.for_data_dir(tmp_path / "data") as db:
        yield DeviceTags(SqlTagStore(db))


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DeviceTags]:
    with Database.for_data_dir(tmp_path_factory.mktemp("tags") / "data") as db:
        yield DeviceTags(SqlTagStore(db))


def test_add_and_remove_are_idempotent(tags: DeviceTags) -> None:
    assert tags.of("dev-1", tenant_id="default") == []
    assert tags.add("dev-1", ["site:lyon", "beta"], tenant_id="default") == ["beta", "site:lyon"]
    assert tags.add("dev-1", ["beta"], tenant_id="default") == ["beta", "site:lyon"]  # already there: no duplicate
    assert tags.add("dev-1", "canary", tenant_id="default") == ["beta", "canary", "site:lyon"]  # one tag as a string
    assert tags.remove("dev-1", ["beta", "never-there"], tenant_id="default") == ["canary", "site:lyon"]
    assert tags.remove("dev-1", ["beta"], tenant_id="default") == ["canary", "site:lyon"]
    assert tags.of("dev-1", tenant_id="default") == ["canary", "site:lyon"]
    assert tags.endpoints_with("canary", tenant_id="default") == {"dev-1"}
    assert tags.endpoints_with("beta", tenant_id="default") == set()


def test_change_adds_and_removes_in_one_go(tags: DeviceTags) -> None:
    tags.add("dev-1", ["a", "b"], tenant_id="default")
    assert tags.change("dev-1", add=["c"], remove=["a"], tenant_id="default") == ["b", "c"]
    with pytest.raises(InvalidTagError, match="both added and removed"):
        tags.change("dev-1", add=["x"], remove=["x"], tenant_id="default")
    assert tags.of("dev-1", tenant_id="default") == ["b", "c"]


def test_unregistered_devices_can_be_tagged_and_all_lists_them(tags: DeviceTags) -> None:
    tags.add("warehouse-7", ["stock"], tenant_id="default")
    tags.add("a-device", ["stock", "z"], tenant_id="default")
    assert tags.all(tenant_id="default") == {"a-device": ["stock", "z"], "warehouse-7": ["stock"]}
    assert list(tags.all(tenant_id="default")) == ["a-device", "warehouse-7"]  # sorted by endpoint
    assert tags.endpoints_with("stock", tenant_id="default") == {"a-device", "warehouse-7"}


def test_tenants_never_see_each_other(tags: DeviceTags) -> None:
    tags.add("dev-1", ["beta"], tenant_id="oem-a")
    tags.add("dev-1", ["prod"], tenant_id="oem-b")
    assert tags.of("dev-1", tenant_id="oem-a") == ["beta"]
    assert tags.of("dev-1", tenant_id="oem-b") == ["prod"]
    assert tags.of("dev-1", tenant_id="default") == []  # the default tenant
    assert tags.endpoints_with("beta", tenant_id="oem-b") == set()
    assert tags.all(tenant_id="oem-a") == {"dev-1": ["beta"]}
    assert tags.all(tenant_id="default") == {}
    tags.remove("dev-1", ["beta"], tenant_id="oem-b")  # another tenant's tag is not removed
    assert tags.of("dev-1", tenant_id="oem-a") == ["beta"]


@pytest.mark.parametrize("bad", ["", "has space", "x" * 65, "slash/no", "é", "semi;colon", "new\nline", "tag\n"])
def test_invalid_tags_are_refused_before_any_write(tags: DeviceTags, bad: str) -> None:
    with pytest.raises(InvalidTagError, match="a tag is 1 to 64 characters") as info:
        tags.add("dev-1", ["good", bad], tenant_id="default")
    assert isinstance(info.value, InvalidRequestError)
    assert tags.of("dev-1", tenant_id="default") == []  # the valid one was not stored either
    with pytest.raises(InvalidTagError):
        tags.remove("dev-1", [bad], tenant_id="default")
    with pytest.raises(InvalidTagError):
        tags.endpoints_with(bad, tenant_id="default")


def test_valid_tag_limits(tags: DeviceTags) -> None:
    longest = "A" * 64
    assert validate_tag(longest) == longest
    assert tags.add("dev-1", [longest, "a.b_c:d-e", "0"], tenant_id="default") == ["0", longest, "a.b_c:d-e"]


@pytest.mark.parametrize("endpoint", ["", "e" * 256])
def test_invalid_endpoints_are_refused(tags: DeviceTags, endpoint: str) -> None:
    with pytest.raises(InvalidTagError, match="invalid endpoint"):
        tags.add(endpoint, ["beta"], tenant_id="default")


def test_error_message_does_not_echo_a_huge_input(tags: DeviceTags) -> None:
    with pytest.raises(InvalidTagError) as info:
        tags.add("dev-1", ["!" * 10_000], tenant_id="default")
    assert len(str(info.value)) < 200


def test_tags_persist_across_reopening(tmp_path: Path) -> None:
    with Database.for_data_dir(tmp_path / "data") as db:
        DeviceTags(SqlTagStore(db)).add("dev-1", ["beta"], tenant_id="default")
    with Database.for_data_dir(tmp_path / "data") as db:
        assert DeviceTags(SqlTagStore(db)).of("dev-1", tenant_id="default") == ["beta"]
        assert "dev-1" not in repr(DeviceTags(SqlTagStore(db)))


_fresh = itertools.count()
TAG = st.sampled_from(["a", "b", "c", "site:x", "v1.0", "Z-9"])
OPS = st.lists(st.tuples(st.sampled_from(["add", "remove"]), st.lists(TAG, max_size=4)), max_size=12)


@settings(max_examples=60, deadline=None)
@given(ops=OPS)
def test_add_remove_sequences_match_a_model_set(shared: DeviceTags, ops: list[tuple[str, list[str]]]) -> None:
    endpoint, other = f"ep-{next(_fresh)}", f"other-{next(_fresh)}"
    shared.add(other, ["a", "b"], tenant_id="default")  # a neighbour whose tags must not move
    model: set[str] = set()
    for op, batch in ops:
        if op == "add":
            model |= set(batch)
            after = shared.add(endpoint, batch, tenant_id="default")
        else:
            model -= set(batch)
            after = shared.remove(endpoint, batch, tenant_id="default")
        assert after == sorted(model)
    assert shared.of(endpoint, tenant_id="default") == sorted(model)
    for tag in ("a", "site:x"):
        assert (endpoint in shared.endpoints_with(tag, tenant_id="default")) == (tag in model)
    assert shared.all(tenant_id="default").get(endpoint, []) == sorted(model)
    assert shared.of(other, tenant_id="default") == ["a", "b"]


def test_tenant_is_a_required_keyword_of_every_public_method() -> None:
    for name in ("add", "remove", "change", "of", "endpoints_with", "all"):
        parameter = inspect.signature(getattr(DeviceTags, name)).parameters["tenant_id"]
        assert (parameter.kind, parameter.default) == (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.empty), name


def test_the_service_runs_over_the_memory_store_too() -> None:
    tags = DeviceTags(MemoryTagStore())
    with pytest.raises(InvalidTagError):
        tags.add("dev-1", ["ok", "not ok"], tenant_id="acme")
    assert tags.add("dev-1", ["b", "a"], tenant_id="acme") == ["a", "b"]
    assert tags.all(tenant_id="acme") == {"dev-1": ["a", "b"]} and tags.all(tenant_id="default") == {}
