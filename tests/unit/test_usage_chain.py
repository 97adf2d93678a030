"""The pure usage core: counting events into a day, the hash chain of days, and the CSV/JSON files.

Properties (hypothesis): a sealed chain verifies; any edit of any field of any day is reported at that day; any
swap or removal of days inside a file is detected (and at the ends of a JSON file, by its header); export then
parse gives back the same days, in CSV and in JSON.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import replace
from datetime import date, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lwm2m_server.metering.usage import (
    COUNTERS,
    FIELDS,
    GENESIS_HASH,
    DayCounts,
    Tally,
    UsageDay,
    UsageFormatError,
    day_of,
    day_start,
    fold,
    next_day,
    parse_day,
    parse_export,
    record_hash,
    seal,
    to_csv,
    to_json,
    verify,
    verify_export,
)

tenants = st.text(st.characters(codec="utf-8"), min_size=1, max_size=12)
counts = st.builds(DayCounts, *(st.integers(0, 2**40) for _ in COUNTERS))
days_from = st.dates(date(2000, 1, 1), date(2090, 1, 1))


@st.composite
def chains(draw: st.DrawFn, min_size: int = 1) -> list[UsageDay]:
    """A sealed chain of one tenant: some active days, possibly with quiet days between them."""
    tenant = draw(tenants)
    start = draw(days_from)
    gaps = draw(st.lists(st.integers(1, 3), min_size=min_size, max_size=8))
    opened, day = [], start
    for gap in gaps:
        opened.append(UsageDay.of(tenant, day.isoformat(), draw(counts)))
        day += timedelta(days=gap)
    return seal(opened)


def edited(d: UsageDay, name: str, data: st.DataObject) -> UsageDay:
    """``d`` with field ``name`` changed to some other valid value."""
    old = getattr(d, name)
    if name in COUNTERS:
        new: object = data.draw(st.integers(0, 2**40).filter(lambda v: v != old))
    elif name == "day":
        new = data.draw(days_from.map(date.isoformat).filter(lambda v: v != old))
    elif name in ("prev_hash", "hash"):
        new = data.draw(st.text("0123456789abcdef", min_size=64, max_size=64).filter(lambda v: v != old))
    else:
        new = data.draw(tenants.filter(lambda v: v != old))
    changes: dict[str, Any] = {name: new}
    return replace(d, **changes)


# ------------------------------------------------------------------------------------------------- the chain


@given(chains())
def test_a_sealed_chain_verifies_is_dense_and_starts_at_genesis(days: list[UsageDay]) -> None:
    assert verify(days) == []
    assert days[0].prev_hash == GENESIS_HASH
    assert all(b.day == next_day(a.day) and b.prev_hash == a.hash for a, b in itertools.pairwise(days))
    assert all(d.hash == record_hash(d) for d in days)


@given(chains(), st.sampled_from(FIELDS), st.data())
def test_any_edit_of_any_field_of_any_day_is_reported_at_that_day(days: list[UsageDay], name: str,
                                                                   data: st.DataObject) -> None:
    i = data.draw(st.integers(0, len(days) - 1))
    tampered = [*days[:i], edited(days[i], name, data), *days[i + 1:]]
    problems = verify(tampered)
    assert problems, f"an edit of {name} on day {i} went unnoticed"
    assert problems[0].index == i and problems[0].day == tampered[i].day
    # the files say the same
    for text in (to_csv(tampered), to_json(tampered, tenant_id=days[0].tenant_id)):
        found = verify_export(parse_export(text))
        assert found and found[0].index == i


@given(chains(min_size=2), st.data())
def test_any_swap_of_two_days_is_detected(days: list[UsageDay], data: st.DataObject) -> None:
    i = data.draw(st.integers(0, len(days) - 2))
    j = data.draw(st.integers(i + 1, len(days) - 1))
    swapped = list(days)
    swapped[i], swapped[j] = swapped[j], swapped[i]
    assert verify(swapped)
    assert verify_export(parse_export(to_csv(swapped)))


@given(chains(min_size=3), st.data())
def test_any_removal_inside_a_file_is_detected(days: list[UsageDay], data: st.DataObject) -> None:
    i = data.draw(st.integers(1, len(days) - 2))
    j = data.draw(st.integers(i, len(days) - 2))
    cut = days[:i] + days[j + 1:]
    problems = verify(cut)
    assert problems and problems[0].index == i
    assert "missing" in str(problems[0]) and "broken link" in " ".join(str(p) for p in problems)
    assert verify_export(parse_export(to_csv(cut)))


@given(chains(min_size=2), st.booleans(), st.data())
def test_a_day_cut_off_either_end_of_a_json_file_is_detected_by_its_header(days: list[UsageDay], head: bool,
                                                                          data: st.DataObject) -> None:
    doc = json.loads(to_json(days, tenant_id=days[0].tenant_id))
    n = data.draw(st.integers(1, len(days) - 1))
    doc["records"] = doc["records"][:-n] if head else doc["records"][n:]
    problems = verify_export(parse_export(json.dumps(doc)))
    assert problems and all(str(p).count("header") == 1 for p in problems)


def test_cutting_the_ends_of_a_csv_file_is_not_detected_by_the_rows_alone() -> None:
    """The documented limit: nothing in a CSV anchors its ends; the head hash printed at export does."""
    days = seal([UsageDay.of("t", d, DayCounts(deliveries_started=1)) for d in ("2024-01-01", "2024-01-02",
                                                                                   "2024-01-03")])
    short = parse_export(to_csv(days[:-1]))
    assert verify_export(short) == [] and short.head != days[-1].hash


def test_a_second_tenant_an_unsealed_day_and_a_json_header_lie_are_named() -> None:
    days = seal([UsageDay.of("a", "2024-02-28", DayCounts()), UsageDay.of("a", "2024-03-01", DayCounts())])
    assert [d.day for d in days] == ["2024-02-28", "2024-02-29", "2024-03-01"]  # a leap day, quiet
    other = seal([UsageDay.of("b", "2024-03-02", DayCounts())], after=replace(days[-1], tenant_id="b"))
    assert "tenant 'b'" in str(verify([*days, *other])[0])
    assert str(verify([UsageDay("a", "2024-01-01")])[0]) == "2024-01-01 (record 1): not sealed (no hash)"
    doc = json.loads(to_json(days, tenant_id="a"))
    doc["tenant"] = "z"
    assert "the header says 'z'" in str(verify_export(parse_export(json.dumps(doc)))[0])


def test_seal_continues_a_chain_and_refuses_what_is_not_a_chain() -> None:
    first = seal([UsageDay.of("t", "2024-01-01", DayCounts(bytes_delivered=5))])
    more = seal([UsageDay.of("t", "2024-01-03", DayCounts())], after=first[-1])
    assert [d.day for d in more] == ["2024-01-02", "2024-01-03"] and more[0].prev_hash == first[0].hash
    assert verify(first + more) == []
    with pytest.raises(ValueError, match="does not come after"):
        seal([UsageDay.of("t", "2024-01-01", DayCounts())], after=first[-1])
    with pytest.raises(ValueError, match="two tenants"):
        seal([UsageDay.of("u", "2024-01-02", DayCounts())], after=first[-1])
    with pytest.raises(ValueError, match="sealed already"):
        seal(first)


# ------------------------------------------------------------------------------------------------- the files


@given(chains())
def test_export_then_parse_gives_the_same_days_in_csv_and_json(days: list[UsageDay]) -> None:
    tenant = days[0].tenant_id
    for text, fmt in ((to_csv(days), "csv"), (to_json(days, tenant_id=tenant), "json")):
        export = parse_export(text)
        assert export.format == fmt and export.days == tuple(days)
        assert (export.tenant, export.first, export.last, export.head, export.count) == (
            tenant, days[0].day, days[-1].day, days[-1].hash, len(days))
        assert verify_export(export) == []


def test_an_empty_export_parses_and_verifies() -> None:
    for text in (to_csv([]), to_json([], tenant_id="t")):
        export = parse_export(text)
        assert export.days == () and verify_export(export) == []


GOOD = seal([UsageDay.of("t", "2024-05-01", DayCounts(deliveries_started=2))])


@pytest.mark.parametrize(("text", "message"), [
    ("", "line 1: not a usage CSV header"),
    ("tenant_id,day\n", "line 1: not a usage CSV header"),
    (to_csv(GOOD) + "t,2024-05-02\n", "line 3: 2 fields, expected 11"),
    (to_csv(GOOD).replace(",2,", ",-2,"), "line 2: deliveries_started is not a non-negative integer: '-2'"),
    (to_csv(GOOD).replace(",2,", ",2.0,"), "line 2: deliveries_started is not a non-negative integer"),
    (to_csv(GOOD).replace("2024-05-01", "2024-02-30"), "line 2: day: not a date YYYY-MM-DD: '2024-02-30'"),
    (to_csv(GOOD).replace(GOOD[0].hash, GOOD[0].hash.upper()), "line 2: hash is not 64 lowercase hex digits"),
    ("{", "not JSON"),
    ("{}", "its format is not 'scratch-usage/1'"),
    (json.dumps({**json.loads(to_json(GOOD, tenant_id="t")), "days": "1"}), "header: days is missing"),
    (json.dumps({**json.loads(to_json(GOOD, tenant_id="t")), "records": [1]}), "record 1: not an object"),
    (to_json(GOOD, tenant_id="t").replace('"bytes_delivered": 0', '"bytes_delivered": "0"'),
     "record 1: bytes_delivered is not a non-negative integer: '0'"),
    (to_json(GOOD, tenant_id="t").replace('"bytes_delivered": 0', '"bytes_delivered": true'),
     "record 1: bytes_delivered is not a non-negative integer: True"),
    (to_json(GOOD, tenant_id="t").replace('"bytes_delivered"', '"bytes"'),
     "record 1: missing bytes_delivered; unknown bytes"),
])
def test_a_malformed_file_is_refused_naming_the_line_or_record(text: str, message: str) -> None:
    with pytest.raises(UsageFormatError) as e:
        parse_export(text)
    assert message in str(e.value)


# --------------------------------------------------------------------------------------------- counting events


def test_fold_counts_every_metered_kind_and_each_endpoint_once_a_day() -> None:
    at = day_start("2024-06-01") + 3600
    tally = Tally("t", "2024-06-01")
    events: list[tuple[str, dict[str, object], str | None]] = [
        ("registration.registered", {}, "a"), ("registration.registered", {}, "a"),
        ("registration.registered", {}, "b"), ("registration.updated", {}, "c"),
        ("campaign.started", {"campaign": "x"}, None),
        ("firmware.started", {"bytes": 10}, "a"), ("firmware.started", {"bytes": 10}, "b"),
        ("firmware.delivered", {"bytes": 10}, "a"), ("firmware.delivered", {"bytes": "ten"}, "b"),
        ("firmware.finished", {"success": True, "bytes": 10}, "a"),
        ("firmware.finished", {"success": False, "bytes": 10}, "b"),
        ("campaign.finished", {"summary": {}}, None), ("campaign.device.succeeded", {}, "a"),
    ]
    for kind, data, ep in events:
        tally = fold(tally, kind, data, at=at, endpoint=ep)
    assert tally.counts == DayCounts(devices_registered=2, deliveries_started=2, deliveries_succeeded=1,
                                     deliveries_failed=1, bytes_delivered=10, campaigns_started=1,
                                     campaigns_finished=1)
    assert tally.endpoints == {"a", "b"}
    with pytest.raises(ValueError, match="added to t/2024-06-01"):
        fold(tally, "campaign.started", {}, at=at + 86400, endpoint=None)


def test_days_are_utc_dates() -> None:
    assert day_of(day_start("2024-12-31")) == "2024-12-31"
    assert day_of(day_start("2025-01-01") - 0.001) == "2024-12-31"
    assert next_day("2024-02-28") == "2024-02-29"
    assert parse_day("2024-02-29") == "2024-02-29"
    for bad in ("2023-02-29", "2024-1-01", "20240101", " 2024-01-01"):
        with pytest.raises(UsageFormatError):
            parse_day(bad)


def test_counts_are_never_negative() -> None:
    with pytest.raises(UsageFormatError, match="bytes_delivered"):
        DayCounts(bytes_delivered=-1)


def test_a_row_of_gathered_registrations_counts_each_endpoint_once_with_the_single_ones() -> None:
    from lwm2m_server.metering.store import tallies_of
    from lwm2m_server.metering.usage import REGISTRATIONS_SEEN
    from lwm2m_server.storage.outbox_store import OutboxEvent

    at = day_start("2024-06-01") + 3600

    def row(kind: str, data: dict[str, object], endpoint: str | None = None, tenant: str = "t",
            when: float = at) -> OutboxEvent:
        return OutboxEvent(f"id-{kind}-{endpoint}-{len(str(data))}", kind, when, tenant, endpoint, data, "n")

    tallies = tallies_of([
        row(REGISTRATIONS_SEEN, {"endpoints": ["a", "b", "c"]}),
        row(REGISTRATIONS_SEEN, {"endpoints": ["c", "d", "", 7]}),  # odd entries ignored, never an error
        row("registration.registered", {}, "a"),
        row(REGISTRATIONS_SEEN, {"endpoints": ["a"]}, when=at + 86_400),  # the next day: counted again
        row(REGISTRATIONS_SEEN, {"endpoints": "not a list"}, tenant="u"),
        row("firmware.started", {}, "a"),
    ])
    by_day = {(t.tenant_id, t.day): t for t in tallies}
    assert by_day[("t", "2024-06-01")].counts == DayCounts(devices_registered=4, deliveries_started=1)
    assert by_day[("t", "2024-06-01")].endpoints == {"a", "b", "c", "d"}
    assert by_day[("t", "2024-06-02")].counts == DayCounts(devices_registered=1)
    assert ("u", "2024-06-01") not in by_day
