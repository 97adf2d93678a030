"""The event bus: prefix filters, failure isolation, unsubscribe, and the asyncio queue subscription."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading

import pytest

from lwm2m_server.events import Event, EventBus, kind_matches


def ev(kind: str, at: float = 1.0, **data: object) -> Event:
    return Event(kind, at, "default", "ep-1", data)


def test_event_is_frozen_with_defaults() -> None:
    e = Event("registration.registered", 12.5)
    assert (e.tenant_id, e.endpoint, dict(e.data)) == ("default", None, {})
    with pytest.raises(dataclasses.FrozenInstanceError):
        e.kind = "x"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("kind", "filters", "expected"),
    [
        ("registration.registered", None, True),
        ("registration.registered", ("registration",), True),
        ("registration", ("registration",), True),
        ("registration.registered", ("registration.",), True),
        ("registration.registered", ("registration.registered",), True),
        ("registrations.x", ("registration",), False),  # a prefix stops at a dot, not mid-word
        ("security.psk_mismatch", ("registration", "security"), True),
        ("registration.updated", ("registration.registered",), False),
        ("fota.delivery.done", ("fota.del",), False),
    ],
)
def test_kind_matches(kind: str, filters: tuple[str, ...] | None, expected: bool) -> None:
    assert kind_matches(kind, filters) is expected


def test_publish_fans_out_in_subscription_order_with_filters() -> None:
    bus = EventBus()
    seen: list[tuple[str, str]] = []
    bus.subscribe(lambda e: seen.append(("all", e.kind)))
    bus.subscribe(lambda e: seen.append(("reg", e.kind)), "registration")
    bus.subscribe(lambda e: seen.append(("sec", e.kind)), ["security"])
    bus.publish(ev("registration.registered"))
    bus.publish(ev("security.bad_psk"))
    bus.publish(ev("fota.done"))
    assert seen == [
        ("all", "registration.registered"), ("reg", "registration.registered"),
        ("all", "security.bad_psk"), ("sec", "security.bad_psk"),
        ("all", "fota.done"),
    ]


def test_failing_subscriber_is_logged_and_others_still_run(caplog: pytest.LogCaptureFixture) -> None:
    bus = EventBus()
    got: list[Event] = []

    def broken(_e: Event) -> None:
        raise RuntimeError("boom")

    bus.subscribe(broken)
    bus.subscribe(got.append)
    with caplog.at_level(logging.ERROR, logger="lwm2m_server.events"):
        bus.publish(ev("registration.updated"))  # must not raise
    assert len(got) == 1
    assert any("boom" in (r.exc_text or "") or r.exc_info for r in caplog.records)


def test_unsubscribe_is_idempotent_and_takes_effect() -> None:
    bus = EventBus()
    got: list[str] = []
    unsubscribe = bus.subscribe(lambda e: got.append(e.kind))
    bus.publish(ev("a"))
    unsubscribe()
    unsubscribe()
    bus.publish(ev("b"))
    assert got == ["a"]
    assert bus.subscriber_count == 0


def test_subscribing_inside_a_callback_applies_from_the_next_publish() -> None:
    bus = EventBus()
    late: list[str] = []

    def first(_e: Event) -> None:
        bus.subscribe(lambda e: late.append(e.kind))

    unsubscribe = bus.subscribe(first)
    bus.publish(ev("one"))
    assert late == []
    unsubscribe()
    bus.publish(ev("two"))
    assert late == ["two"]


def test_wants_and_emit_skip_work_when_nobody_listens() -> None:
    bus = EventBus()
    assert not bus.wants("registration.registered")
    bus.emit("registration.registered", 1.0, endpoint="x")  # nobody listens: nothing happens
    got: list[Event] = []
    bus.subscribe(got.append, "registration")
    assert bus.wants("registration.registered")
    assert not bus.wants("security.x")
    bus.emit("registration.registered", 2.0, tenant_id="t1", endpoint="x", data={"id": "r"})
    assert got == [Event("registration.registered", 2.0, "t1", "x", {"id": "r"})]


def test_kinds_filter_validation() -> None:
    bus = EventBus()
    with pytest.raises(ValueError):
        bus.subscribe(lambda e: None, [])
    with pytest.raises(ValueError):
        bus.subscribe(lambda e: None, "")


async def test_queue_subscription_delivers_and_closes() -> None:
    bus = EventBus()
    with bus.queue("registration", maxsize=10) as q:
        bus.publish(ev("registration.registered"))
        bus.publish(ev("security.x"))
        bus.publish(ev("registration.expired"))
        assert (await q.get()).kind == "registration.registered"
        assert (await asyncio.wait_for(q.get(), 1)).kind == "registration.expired"
        assert q.qsize() == 0
    assert q.closed
    bus.publish(ev("registration.updated"))
    assert q.qsize() == 0


async def test_queue_drops_oldest_when_full_and_counts() -> None:
    bus = EventBus()
    q = bus.queue(maxsize=3)
    for i in range(5):
        bus.publish(ev("k", at=float(i)))
    assert q.dropped == 2
    assert [q.get_nowait().at for _ in range(3)] == [2.0, 3.0, 4.0]
    with pytest.raises(asyncio.QueueEmpty):
        q.get_nowait()
    q.close()


async def test_queue_async_iteration() -> None:
    bus = EventBus()
    q = bus.queue()
    bus.publish(ev("a"))
    bus.publish(ev("b"))
    kinds = []
    async for e in q:
        kinds.append(e.kind)
        if len(kinds) == 2:
            break
    assert kinds == ["a", "b"]
    q.close()


async def test_queue_accepts_events_published_from_another_thread() -> None:
    bus = EventBus()
    q = bus.queue()
    t = threading.Thread(target=lambda: bus.publish(ev("from.thread")))
    t.start()
    t.join()
    assert (await asyncio.wait_for(q.get(), 2)).kind == "from.thread"
    q.close()


def test_queue_rejects_unbounded_size() -> None:
    with pytest.raises(ValueError):
        EventBus().queue(maxsize=0)
