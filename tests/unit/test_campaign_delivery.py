"""choose_delivery: the pure rule by which a campaign sends a device a delta or the full package."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from firmware_object.campaign import choose_delivery

BASES = {"1.0.0": {"app": "aa" * 32, "radio": "bb" * 32}, "1.1.0": {"app": "cc" * 32}}


def test_a_delta_from_the_running_version_is_chosen() -> None:
    assert choose_delivery("1.0.0", BASES, None, delta_failed=False) == "1.0.0"
    assert choose_delivery("1.1.0", BASES, {"app": "CC" * 32, "config": "dd" * 32}, delta_failed=False) == "1.1.0"


def test_the_full_package_without_a_delta_from_the_running_version_or_an_unknown_version() -> None:
    assert choose_delivery("0.9.0", BASES, None, delta_failed=False) is None
    assert choose_delivery(None, BASES, None, delta_failed=False) is None
    assert choose_delivery("1.0.0", {}, None, delta_failed=False) is None


def test_the_full_package_when_an_installed_digest_is_not_the_delta_base() -> None:
    assert choose_delivery("1.0.0", BASES, {"app": "aa" * 32, "radio": "ee" * 32}, delta_failed=False) is None


def test_the_full_package_after_a_failed_delta() -> None:
    assert choose_delivery("1.0.0", BASES, None, delta_failed=True) is None


@given(st.text(max_size=8), st.dictionaries(st.text(max_size=6), st.dictionaries(
    st.sampled_from(["app", "radio", "config"]), st.sampled_from(["aa" * 32, "bb" * 32]))),
    st.none() | st.dictionaries(st.sampled_from(["app", "radio", "config"]), st.sampled_from(["aa" * 32, "bb" * 32])),
    st.booleans())
def test_a_delta_is_chosen_only_from_the_running_version_and_only_on_matching_bases(
        version: str, bases: dict[str, dict[str, str]], installed: dict[str, str] | None, failed: bool) -> None:
    chosen = choose_delivery(version, bases, installed, delta_failed=failed)
    assert chosen in (None, version)
    if chosen is not None:
        assert not failed and version in bases
        assert installed is None or all(installed.get(n, b) == b for n, b in bases[version].items())


def test_a_system_device_is_credited_only_when_it_holds_every_component_of_the_release() -> None:
    from firmware_object.campaign import unverified_components

    expected = {"app": "aa" * 32, "config": "bb" * 32}
    held = [{"name": "app", "digest": "AA" * 32}, {"name": "config", "digest": "bb" * 32},
            {"name": "x", "digest": None}]
    assert unverified_components(expected, held) == ""
    assert unverified_components({}, None) == ""  # not a system release
    assert unverified_components(expected, None) == "no components (object 32700 could not be read)"
    assert unverified_components(expected, held[:1]) == "config missing"
    wrong = [{"name": "app", "digest": "aa" * 32}, {"name": "config", "digest": "cc" * 32}]
    assert unverified_components(expected, wrong) == "config with another digest"
    assert unverified_components(expected, [{"name": "app", "digest": None}]) == (
        "app with another digest; config missing")
