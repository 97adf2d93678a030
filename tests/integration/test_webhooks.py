"""Webhook notifications end to end: a real HTTP/1.1 receiver on 127.0.0.1 (asyncio streams), a real SQLite
database (the events go through its outbox), a real vault; the receiver checks every signature. Retries, refusals,
dead ports, tenant scoping, a burst beyond the lease limit (nothing dropped), a bounded stop that leaves the rest
in the outbox, the secret at rest and in logs, and the ``scratch webhook`` commands (CliRunner)."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import socket
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from typer.testing import CliRunner

from bootstrap.vault import Vault
from lwm2m_server.cli.webhook import webhook_app
from lwm2m_server.data_dir import vault_key_location
from lwm2m_server.events import EventBus
from lwm2m_server.fota.webhooks import (
    InvalidWebhookError,
    UnknownWebhookError,
    WebhookNotifier,
    Webhooks,
    delivery_id,
    sign,
    validate_kinds,
    validate_url,
    verify_signature,
)
from lwm2m_server.outbox import OutboxWriter
from lwm2m_server.storage.database import Database
from lwm2m_server.storage.outbox_store import MemoryOutboxStore, OutboxStore, SqlOutboxStore
from lwm2m_server.storage.webhook_store import MemoryWebhookStore, SqlWebhookStore
from tests.secret_scan import SecretSet

FLUSH_S = 20.0
DEVICE_OK = {"campaign": "c1", "endpoint": "dev-1", "state": "succeeded", "update_result": 1, "version": "2.0",
             "reason": None}


# ---------------------------------------------------------------- a tiny HTTP/1.1 receiver


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    signed: bool  # the signature verified under the secret the test registered for this path


@dataclass
class Receiver:
    """Answers each path's scripted statuses in turn (200 once the script is used up; ``None`` means never answer,
    until the client hangs up); one request per connection. ``secrets`` maps a path to the secret to verify with."""

    scripts: dict[str, list[int | None]] = field(default_factory=dict)
    secrets: dict[str, bytes] = field(default_factory=dict)
    requests: list[Received] = field(default_factory=list)
    port: int = 0

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def on(self, path: str) -> list[Received]:
        return [r for r in self.requests if r.path == path]

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(10):
                method, path, _version = (await reader.readline()).decode("latin-1").split(" ", 2)
                headers: dict[str, str] = {}
                while (line := await reader.readline()) not in (b"\r\n", b"\n", b""):
                    name, _, value = line.decode("latin-1").partition(":")
                    headers[name.strip().lower()] = value.strip()
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                assert method == "POST"
                secret = self.secrets.get(path)
                signed = secret is not None and verify_signature(
                    secret, headers.get("x-scratch-signature", ""), body, now=time.time())
                self.requests.append(Received(path, headers, body, signed))
                script = self.scripts.get(path, [])
                status = script.pop(0) if script else 200
                if status is None:
                    await reader.read()  # hold the request until the client gives up
                    return
                extra = "Retry-After: 0\r\n" if status == 429 else ""
                writer.write(f"HTTP/1.1 {status} Scripted\r\nContent-Length: 0\r\n{extra}Connection: close\r\n\r\n"
                             .encode())
                await writer.drain()
        except (TimeoutError, ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()


@contextlib.asynccontextmanager
async def receiving() -> AsyncIterator[Receiver]:
    receiver = Receiver()
    server = await asyncio.start_server(receiver.handle, "127.0.0.1", 0)
    receiver.port = server.sockets[0].getsockname()[1]
    try:
        yield receiver
    finally:
        server.close()
        await server.wait_closed()


@pytest.fixture
def dead_url() -> Iterator[str]:
    """A port bound but not listening: connections are refused, and no one else can take the port meanwhile."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{s.getsockname()[1]}/hook"


@pytest.fixture
def database(tmp_path: Path) -> Iterator[Database]:
    db = Database.for_data_dir(tmp_path / "data")
    yield db
    db.close()


@pytest.fixture
def store(database: Database) -> Webhooks:
    return Webhooks(SqlWebhookStore(database), Vault.generate())


@pytest.fixture
def outbox(database: Database) -> OutboxStore:
    return SqlOutboxStore(database)


@contextlib.asynccontextmanager
async def writing(outbox: OutboxStore, bus: EventBus, node_id: str = "node-1") -> AsyncIterator[OutboxWriter]:
    """A node's outbox writer, running (every 50 ms), closed at the end."""
    writer = OutboxWriter(outbox, bus, node_id=node_id)
    task = asyncio.create_task(writer.run())
    try:
        yield writer
    finally:
        writer.close()
        await asyncio.wait_for(task, 5)


@contextlib.asynccontextmanager
async def notifying(store: Webhooks, bus: EventBus, outbox: OutboxStore | None = None,
                    **options: Any) -> AsyncIterator[WebhookNotifier]:
    """A node: its outbox writer on ``bus`` (into ``outbox``; a new memory outbox when None) and its notifier."""
    settings: dict[str, Any] = {"backoff_base": 0.01, "backoff_max": 0.05, "timeout": 5.0, **options}
    async with writing(MemoryOutboxStore() if outbox is None else outbox, bus) as writer:
        notifier = WebhookNotifier(store, writer, **settings)
        notifier.start()
        try:
            yield notifier
        finally:
            async with asyncio.timeout(15):
                await notifier.stop()


def emit(bus: EventBus, kind: str, tenant: str = "default", endpoint: str | None = "dev-1",
         data: dict[str, object] | None = None) -> None:
    bus.emit(kind, time.time(), tenant_id=tenant, endpoint=endpoint, data=DEVICE_OK if data is None else data)


async def until(condition: object, timeout: float = 10.0) -> None:
    """Wait (bounded) until ``condition()`` holds."""
    async with asyncio.timeout(timeout):
        while not condition():  # type: ignore[operator]
            await asyncio.sleep(0.01)


# ---------------------------------------------------------------- delivery


async def test_retries_server_errors_then_delivers_once(store: Webhooks, outbox: OutboxStore) -> None:
    bus = EventBus()
    async with receiving() as rx:
        hook, secret = store.add(rx.url("/flaky"), tenant_id="default", now=time.time())
        rx.scripts["/flaky"] = [500, 500, 200]
        rx.secrets["/flaky"] = secret
        async with notifying(store, bus, outbox) as notifier:
            emit(bus, "campaign.device.succeeded")
            assert await notifier.flush(FLUSH_S)

    got = rx.on("/flaky")
    assert len(got) == 3
    assert all(r.signed for r in got), "every attempt carries a valid signature"
    assert {r.headers["x-scratch-delivery"] for r in got} == {got[0].headers["x-scratch-delivery"]}
    first = got[0]
    assert first.headers["content-type"] == "application/json"
    assert first.headers["x-scratch-event"] == "campaign.device.succeeded"
    payload = json.loads(first.body)
    assert payload["id"] == first.headers["x-scratch-delivery"]
    assert payload["kind"] == "campaign.device.succeeded"
    assert payload["tenant"] == "default" and payload["endpoint"] == "dev-1"
    assert payload["data"] == DEVICE_OK and isinstance(payload["at"], float)

    log = list(reversed(store.deliveries(tenant_id="default", webhook_id=hook.id)))
    assert [(d.attempt, d.status_code, d.delivered) for d in log] == [(1, 500, False), (2, 500, False),
                                                                        (3, 200, True)]
    assert {d.event_id for d in log} == {payload["id"]}
    assert log[0].error == "HTTP 500" and log[2].error is None
    assert all(d.event_kind == "campaign.device.succeeded" and d.duration >= 0 for d in log)


async def test_gone_is_not_retried_and_429_is(store: Webhooks, outbox: OutboxStore) -> None:
    bus = EventBus()
    async with receiving() as rx:
        gone, secret = store.add(rx.url("/gone"), tenant_id="default", now=time.time())
        busy, _ = store.add(rx.url("/busy"), kinds=["campaign.finished"], tenant_id="default", now=time.time())
        rx.scripts.update({"/gone": [410], "/busy": [429, 200]})
        rx.secrets["/gone"] = secret
        async with notifying(store, bus, outbox) as notifier:
            emit(bus, "campaign.finished", endpoint=None, data={"campaign": "c1", "state": "done"})
            assert await notifier.flush(FLUSH_S)

    assert len(rx.on("/gone")) == 1 and rx.on("/gone")[0].signed
    [only] = store.deliveries(tenant_id="default", webhook_id=gone.id)
    assert (only.attempt, only.status_code, only.delivered) == (1, 410, False)
    assert only.error == "HTTP 410; not retried"
    busy_log = store.deliveries(tenant_id="default", webhook_id=busy.id)
    assert [(d.status_code, d.delivered) for d in reversed(busy_log)] == [(429, False), (200, True)]


async def test_dead_port_retries_then_gives_up(store: Webhooks, outbox: OutboxStore, dead_url: str) -> None:
    bus = EventBus()
    hook, _ = store.add(dead_url, tenant_id="default", now=time.time())
    async with notifying(store, bus, outbox, max_attempts=4) as notifier:
        emit(bus, "campaign.device.failed")
        assert await notifier.flush(FLUSH_S)
    log = list(reversed(store.deliveries(tenant_id="default", webhook_id=hook.id)))
    assert [d.attempt for d in log] == [1, 2, 3, 4]
    assert not any(d.delivered for d in log) and all(d.status_code is None for d in log)
    assert all(d.error and d.error.startswith("connection error:") for d in log)
    assert log[-1].error is not None and log[-1].error.endswith("gave up after 4 attempt(s)")
    assert len({d.event_id for d in log}) == 1


async def test_a_receiver_that_never_answers_times_out_and_is_retried(store: Webhooks, outbox: OutboxStore) -> None:
    bus = EventBus()
    async with receiving() as rx:
        hook, _ = store.add(rx.url("/slow"), tenant_id="default", now=time.time())
        rx.scripts["/slow"] = [None]
        async with notifying(store, bus, outbox, timeout=0.3) as notifier:
            emit(bus, "campaign.device.succeeded")
            assert await notifier.flush(FLUSH_S)
    log = list(reversed(store.deliveries(tenant_id="default", webhook_id=hook.id)))
    assert [d.delivered for d in log] == [False, True]
    assert log[0].error is not None and log[0].error.startswith("timed out")


async def test_events_go_only_to_their_tenant_and_kinds(store: Webhooks, outbox: OutboxStore) -> None:
    bus = EventBus()
    async with receiving() as rx:
        acme, acme_secret = store.add(rx.url("/acme"), tenant_id="acme", now=time.time())
        globex, globex_secret = store.add(rx.url("/globex"), kinds="campaign.device.failed", tenant_id="globex",
                                          now=time.time())
        removed, _ = store.add(rx.url("/removed"), tenant_id="acme", now=time.time())
        store.remove(removed.id, tenant_id="acme")
        rx.secrets.update({"/acme": acme_secret, "/globex": globex_secret})
        async with notifying(store, bus, outbox) as notifier:
            emit(bus, "campaign.finished", tenant="acme")
            emit(bus, "campaign.device.succeeded", tenant="globex")
            emit(bus, "campaign.device.failed", tenant="globex")
            emit(bus, "registration.registered", tenant="acme")
            emit(bus, "campaign.device.failed", tenant="initech")
            assert await notifier.flush(FLUSH_S)

    assert [json.loads(r.body)["kind"] for r in rx.on("/acme")] == ["campaign.finished"]
    assert [json.loads(r.body)["kind"] for r in rx.on("/globex")] == ["campaign.device.failed"]
    assert rx.on("/removed") == [] and len(rx.requests) == 2
    assert all(r.signed and json.loads(r.body)["tenant"] == r.path[1:] for r in rx.requests)
    assert [d.webhook_id for d in store.deliveries(tenant_id="acme")] == [acme.id]
    assert [d.webhook_id for d in store.deliveries(tenant_id="globex")] == [globex.id]


async def test_a_burst_beyond_the_lease_limit_is_all_delivered_without_blocking_the_publisher(
        store: Webhooks, outbox: OutboxStore) -> None:
    bus = EventBus()
    async with receiving() as rx:
        hook, _ = store.add(rx.url("/hook"), tenant_id="default", now=time.time())
        async with notifying(store, bus, outbox, queue_size=1) as notifier:
            for _ in range(3):  # no await in between: the publisher only appends to the writer's buffer
                emit(bus, "campaign.device.succeeded")
            assert await notifier.flush(FLUSH_S)
    assert len(rx.requests) == 3 and len({r.headers["x-scratch-delivery"] for r in rx.requests}) == 3
    log = store.deliveries(tenant_id="default", webhook_id=hook.id)
    assert sorted((d.attempt, d.delivered, d.error) for d in log) == [(1, True, None)] * 3
    assert outbox.lease_for_webhooks(owner="anyone", now=time.time() + 3600, lease=1, limit=10) == []  # all notified


async def test_stop_is_bounded_and_leaves_what_was_not_delivered_in_the_outbox(
        store: Webhooks, outbox: OutboxStore, dead_url: str) -> None:
    bus = EventBus()
    hook, _ = store.add(dead_url, tenant_id="default", now=time.time())
    async with writing(outbox, bus) as writer:
        notifier = WebhookNotifier(store, writer, backoff_base=60.0, backoff_max=60.0, queue_size=1,
                                   drain_timeout=0.2)
        notifier.start()
        try:
            emit(bus, "campaign.device.failed")  # first attempt refused, next one a minute away
            await until(lambda: len(store.deliveries(tenant_id="default", webhook_id=hook.id)) == 1)
            emit(bus, "campaign.device.failed")  # written, not leased: this notifier leases one event at a time
            emit(bus, "campaign.device.failed")
        finally:
            async with asyncio.timeout(10):
                await notifier.stop()
        assert await notifier.flush(0)  # stopped: nothing is left running
        log = list(reversed(store.deliveries(tenant_id="default", webhook_id=hook.id)))
        assert [(d.attempt, d.delivered) for d in log] == [(1, False)] * 2
        assert log[0].error is not None and log[0].error.startswith("connection error:")
        assert log[1].error == ("not delivered yet: the notifier stopped after 1 attempt(s); the event stays in "
                                "the outbox")
        assert log[1].event_id == log[0].event_id
        emit(bus, "campaign.device.failed")  # the notifier stopped: the writer still takes it (another node may)
    waiting = outbox.lease_for_webhooks(owner="next", now=time.time(), lease=60, limit=10)  # released: at once
    assert len(waiting) == 4
    assert delivery_id(waiting[0].event_id, hook.id) == log[0].event_id  # the next notifier sends the same id
    assert len(store.deliveries(tenant_id="default", webhook_id=hook.id)) == 2


async def test_subscriptions_added_later_are_picked_up(store: Webhooks, outbox: OutboxStore) -> None:
    bus = EventBus()
    async with receiving() as rx, notifying(store, bus, outbox, refresh_interval=0.05) as notifier:
        emit(bus, "campaign.device.succeeded")  # nobody subscribed yet
        assert await notifier.flush(FLUSH_S)
        store.add(rx.url("/late"), tenant_id="default", now=time.time())
        await notifier.refresh()
        emit(bus, "campaign.device.succeeded")
        assert await notifier.flush(FLUSH_S)
    assert len(rx.on("/late")) == 1


# ---------------------------------------------------------------- the secret


async def test_secret_is_sealed_at_rest_and_never_logged(store: Webhooks, outbox: OutboxStore,
                                                         database: Database,
                                                         caplog: pytest.LogCaptureFixture, dead_url: str) -> None:
    caplog.set_level(logging.DEBUG, logger="lwm2m_server")
    bus = EventBus()
    found = SecretSet()
    async with receiving() as rx:
        hook, secret = store.add(rx.url("/a"), tenant_id="default", now=time.time())
        dead, dead_secret = store.add(dead_url, tenant_id="default", now=time.time())
        rx.scripts["/a"] = [500]
        found.add(bytes(secret), "webhook secret")
        found.add(bytes(dead_secret), "dead webhook secret")
        assert len(secret) == 32 and secret.hex() not in repr(secret)
        assert store.secret_for(hook.id, tenant_id="default") == secret
        async with notifying(store, bus, outbox, max_attempts=2) as notifier:
            emit(bus, "campaign.device.succeeded")
            assert await notifier.flush(FLUSH_S)
            assert secret.hex() not in repr(notifier) + repr(store) + repr(hook)
    log = store.deliveries(tenant_id="default")
    assert len(log) == 4
    rows_text = json.dumps([d.as_dict() for d in log]).encode()
    assert found.scan_bytes(rows_text, "delivery rows") == []
    assert found.scan_text(caplog.text, "log") == []
    for request in rx.requests:
        assert found.scan_bytes(json.dumps(request.headers).encode() + request.body, "request") == []
    store.remove(dead.id, tenant_id="default")
    with pytest.raises(UnknownWebhookError):
        store.secret_for(dead.id, tenant_id="default")
    database.close()  # checkpoint the WAL: the database file holds everything
    files = [p for p in (Path(database.url.removeprefix("sqlite:///")).parent).iterdir() if p.is_file()]
    for path in files:
        assert found.scan_file(path) == [], path.name


def test_a_sealed_secret_opens_only_for_its_own_webhook(store: Webhooks, database: Database) -> None:
    a, _ = store.add("https://a.example/hook", tenant_id="acme", now=1.0)
    b, _ = store.add("https://b.example/hook", tenant_id="acme", now=1.0)
    with pytest.raises(UnknownWebhookError):
        store.secret_for(a.id, tenant_id="globex")  # another tenant does not see it
    from sqlalchemy import text

    with database.engine.begin() as conn:  # move a's sealed secret onto b: it must not open there
        conn.execute(text("UPDATE webhook SET sealed_secret = (SELECT sealed_secret FROM webhook WHERE id = :a) "
                          "WHERE id = :b"), {"a": a.id, "b": b.id})
    from bootstrap.vault import SealedDataError

    with pytest.raises(SealedDataError):
        store.secret_for(b.id, tenant_id="acme")


# ---------------------------------------------------------------- store and validation


def test_store_list_remove_and_validation(store: Webhooks) -> None:
    a, _ = store.add("https://hooks.example/a", kinds=["campaign.", "security.", "campaign."], tenant_id="acme",
                     now=10.0)
    b, _ = store.add("http://[::1]:8080/b?x=1", tenant_id="acme", now=11.0)
    assert a.kinds == ("campaign.", "security.") and b.kinds == ("campaign.",)
    assert [w.id for w in store.list(tenant_id="acme")] == [a.id, b.id] and store.list(tenant_id="globex") == []
    with pytest.raises(UnknownWebhookError):
        store.remove(a.id, tenant_id="globex")
    assert store.remove(a.id, tenant_id="acme").active is False
    with pytest.raises(UnknownWebhookError):
        store.remove(a.id, tenant_id="acme")
    assert [w.id for w in store.list(tenant_id="acme")] == [b.id]
    assert [(w.id, w.active) for w in store.list(tenant_id="acme", include_removed=True)] == [
        (a.id, False), (b.id, True)]
    assert store.active_kinds() == ("campaign.",)
    for bad, why in [("ftp://h/x", "http or https"), ("http:///x", "no host"), ("hooks.example/x", "http or https"),
                     ("https://user:pw@h/x", "credentials"), ("http://h:70000/", "port"), ("", "empty"),
                     ("http://h/a b", "whitespace"), ("https://h/x#frag", "fragment")]:
        with pytest.raises(InvalidWebhookError, match=why):
            store.add(bad, tenant_id="acme", now=1.0)
    with pytest.raises(InvalidWebhookError, match="credentials") as err:
        validate_url("https://user:hunter2@h/x")
    assert "hunter2" not in str(err.value)
    for bad_kinds in ([], ["a,b"], [""], ["with space"]):
        with pytest.raises(InvalidWebhookError):
            store.add("https://h/x", kinds=bad_kinds, tenant_id="acme", now=1.0)


def test_tenant_is_a_required_keyword_of_every_tenant_scoped_method() -> None:
    for name in ("add", "list", "get", "matching", "remove", "secret_for", "record", "deliveries"):
        parameter = inspect.signature(getattr(Webhooks, name)).parameters["tenant_id"]
        assert (parameter.kind, parameter.default) == (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.empty), name


async def test_the_notifier_delivers_over_the_memory_store_too() -> None:
    webhooks = Webhooks(MemoryWebhookStore(), Vault.generate())
    bus = EventBus()
    async with receiving() as rx:
        hook, secret = webhooks.add(rx.url("/mem"), tenant_id="acme", now=time.time())
        rx.secrets["/mem"] = bytes(secret)
        rx.scripts["/mem"] = [503]
        async with notifying(webhooks, bus) as notifier:
            emit(bus, "campaign.device.succeeded", tenant="acme")
            emit(bus, "campaign.device.succeeded", tenant="globex")  # another tenant's event: not sent
            assert await notifier.flush(FLUSH_S)
    assert [r.signed for r in rx.on("/mem")] == [True, True]
    log = webhooks.deliveries(tenant_id="acme", webhook_id=hook.id)
    assert [(d.attempt, d.status_code, d.delivered) for d in reversed(log)] == [(1, 503, False), (2, 200, True)]
    assert webhooks.deliveries(tenant_id="globex") == []


@given(st.text(max_size=300))
def test_validate_url_fails_only_with_its_own_error(text: str) -> None:
    with contextlib.suppress(InvalidWebhookError):
        assert validate_url(text) == text


@given(st.lists(st.from_regex(r"[a-z][a-z0-9_.-]{0,20}", fullmatch=True), min_size=1, max_size=32))
def test_kinds_survive_their_comma_list(kinds: list[str]) -> None:
    prefixes = validate_kinds(kinds)
    assert tuple(",".join(prefixes).split(",")) == prefixes == tuple(dict.fromkeys(kinds))


# ---------------------------------------------------------------- signatures (properties)


@given(secret=st.binary(min_size=1, max_size=64), body=st.binary(max_size=512), t=st.integers(0, 10**12 - 1),
       skew=st.integers(-300, 300))
def test_signature_round_trip(secret: bytes, body: bytes, t: int, skew: int) -> None:
    assert verify_signature(secret, sign(secret, body, t), body, now=t + skew)


@given(secret=st.binary(min_size=1, max_size=64), other=st.binary(min_size=1, max_size=64),
       body=st.binary(max_size=256), extra=st.binary(min_size=1, max_size=8), t=st.integers(0, 2**32))
def test_signature_rejects_other_secret_body_or_time(secret: bytes, other: bytes, body: bytes, extra: bytes,
                                                     t: int) -> None:
    header = sign(secret, body, t)
    assert not verify_signature(secret, header, body + extra, now=t)
    assert verify_signature(other, header, body, now=t) == (other == secret)
    assert not verify_signature(secret, header, body, now=t + 301)
    assert not verify_signature(secret, header, body, now=t - 301)
    forged_t = header.replace(f"t={t},", f"t={t + 1},")
    assert not verify_signature(secret, forged_t, body, now=t)


@given(header=st.text(max_size=200), body=st.binary(max_size=64))
def test_verify_signature_never_raises(header: str, body: bytes) -> None:
    assert verify_signature(b"k" * 32, header, body, now=1_700_000_000) in (True, False)


def test_signature_accepts_any_of_several_v1_and_ignores_other_schemes() -> None:
    secret, body, t = b"s" * 32, b'{"x":1}', 1_700_000_000
    good = sign(secret, body, t).split(",")[1]
    assert verify_signature(secret, f"t={t},v0=abc,v1={'0' * 64},{good}", body, now=t)
    assert not verify_signature(secret, f"t={t},t={t},{good}", body, now=t)
    assert not verify_signature(secret, f"{good}", body, now=t)


# ---------------------------------------------------------------- the CLI


def cli(*args: str, data_dir: Path) -> tuple[int, str, str]:
    result = CliRunner().invoke(webhook_app, [*args, "--data-dir", str(data_dir)],
                                env={"SCRATCH_VAULT_KEY": "", "COLUMNS": "250"})
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


async def test_cli_add_list_deliveries_remove(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    code, out, err = cli("list", data_dir=data_dir)
    assert (code, out.strip()) == (0, "no webhooks")
    assert not data_dir.exists(), "listing creates nothing"

    async with receiving() as rx:
        code, out, err = cli("add", rx.url("/cli"), "--events", "campaign.device.,campaign.finished", "--json",
                             data_dir=data_dir)
        assert code == 0, err
        added = json.loads(out)
        secret = bytes.fromhex(added["secret"])
        assert len(secret) == 32 and added["events"] == ["campaign.device.", "campaign.finished"]
        assert "not shown again" in err
        rx.secrets["/cli"] = secret

        code, out, err = cli("add", rx.url("/plain"), data_dir=data_dir)
        assert code == 0 and "secret: " in out and "not shown again" in err
        plain_id = out.split()[2].rstrip(":")

        listed_outputs = []
        for fmt in ([], ["--json"]):
            code, out, _ = cli("list", *fmt, data_dir=data_dir)
            assert code == 0
            listed_outputs.append(out)
        listed = json.loads(listed_outputs[1])
        assert [(w["id"], w["url"], w["events"], w["active"]) for w in listed] == [
            (added["id"], rx.url("/cli"), ["campaign.device.", "campaign.finished"], True),
            (plain_id, rx.url("/plain"), ["campaign."], True)]
        assert added["id"] in listed_outputs[0]

        # the server side: the same data directory, its vault key file
        database = Database.for_data_dir(data_dir)
        try:
            store = Webhooks.over(database, Vault.open(vault_key_location(data_dir).path, environ={}))
            bus = EventBus()
            async with notifying(store, bus, SqlOutboxStore(database)) as notifier:
                emit(bus, "campaign.device.succeeded")
                assert await notifier.flush(FLUSH_S)
        finally:
            database.close()
    assert len(rx.on("/cli")) == 1 and rx.on("/cli")[0].signed

    code, out, _ = cli("deliveries", "--webhook", added["id"], "--json", data_dir=data_dir)
    assert code == 0
    [row] = json.loads(out)
    assert (row["webhook"], row["event"], row["attempt"], row["status"], row["delivered"]) == (
        added["id"], "campaign.device.succeeded", 1, 200, True)
    code, table, _ = cli("deliveries", data_dir=data_dir)
    assert code == 0 and "delivered" in table and added["id"] in table

    code, out, _ = cli("remove", added["id"], data_dir=data_dir)
    assert code == 0 and f"removed webhook {added['id']}" in out
    code, out, err = cli("remove", added["id"], data_dir=data_dir)
    assert code == 1 and "no webhook" in err
    code, out, _ = cli("list", "--json", data_dir=data_dir)
    assert [w["id"] for w in json.loads(out)] == [plain_id]
    code, out, _ = cli("list", "--all", "--json", data_dir=data_dir)
    assert [(w["id"], w["active"]) for w in json.loads(out)] == [(added["id"], False), (plain_id, True)]
    code, out, err = cli("add", "ftp://files.example/x", data_dir=data_dir)
    assert code == 2 and "http or https" in err and out == ""
    code, _, err = cli("add", "https://h.example/x", "--events", "bad kind", data_dir=data_dir)
    assert code == 2 and "event kind" in err

    found = SecretSet()
    found.add(secret, "cli webhook secret")
    for text in [*listed_outputs, table]:
        assert found.scan_text(text, "cli output") == []
    for path in data_dir.iterdir():
        if path.is_file() and path.name != "vault.key":
            assert found.scan_file(path) == [], path.name


async def test_a_branded_tenants_deliveries_carry_its_name_not_ours(store: Webhooks, outbox: OutboxStore) -> None:
    bus = EventBus()
    brands = {"netco": "NetCo Fleet"}
    async with receiving() as rx:
        store.add(rx.url("/netco"), tenant_id="netco", now=time.time())
        store.add(rx.url("/plain"), tenant_id="default", now=time.time())
        async with notifying(store, bus, outbox, product_name=lambda tenant: brands.get(tenant, "SCRATCh")) \
                as notifier:
            emit(bus, "campaign.device.succeeded", tenant="netco")
            emit(bus, "campaign.device.succeeded", tenant="default")
            assert await notifier.flush(FLUSH_S)
    assert [r.headers["user-agent"] for r in rx.on("/netco")] == ["netco-fleet-webhooks/1"]
    assert [r.headers["user-agent"] for r in rx.on("/plain")] == ["scratch-webhooks/1"]
    assert all("scratch" not in json.dumps(r.headers).lower().replace("x-scratch", "") for r in rx.on("/netco"))
