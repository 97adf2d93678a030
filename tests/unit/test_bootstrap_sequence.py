"""The bootstrap sequence (sans I/O): the order of requests, how each refusal is taken, that it always ends."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bootstrap.sequence import (
    BootstrapOutcome,
    BootstrapRequest,
    BootstrapSequence,
    DeviceConfig,
    Step,
    pack_format,
    parse_discover,
    write_format,
)
from lwm2m_server.core.codec import registry
from lwm2m_server.core.codec.formats import ContentFormat
from lwm2m_server.core.errors import NotAcceptableError
from lwm2m_server.core.model import ObjectModel
from lwm2m_server.core.paths import LwM2mPath

MODEL = ObjectModel.default()
CONFIG = DeviceConfig("coaps://bs:5784", "bs-1", b"B" * 16, "coaps://lwm2m:5684", "sv-1", b"S" * 16, lifetime=120)
CONTENT, CHANGED, DELETED, BAD, NOT_FOUND, NOT_ALLOWED, NOT_ACCEPTABLE = 0x45, 0x44, 0x42, 0x80, 0x84, 0x85, 0x86
OK = {Step.DISCOVER: CONTENT, Step.READ_SERVER: CONTENT, Step.DELETE_SECURITY: DELETED, Step.DELETE_ALL: DELETED,
      Step.DELETE_SERVER: DELETED}


def run(answers: dict[Step, int], discover: bytes = b"</>;lwm2m=1.1,</0/0>") -> tuple[list[BootstrapRequest],
                                                                                       BootstrapOutcome]:
    seq = BootstrapSequence(CONFIG, MODEL)
    sent: list[BootstrapRequest] = []
    step: BootstrapRequest | BootstrapOutcome = seq.first()
    while isinstance(step, BootstrapRequest):
        sent.append(step)
        code = answers.get(step.step, OK.get(step.step, CHANGED))
        payload, cf = b"", None
        if step.step is Step.DISCOVER and code == CONTENT:
            payload, cf = discover, 40
        if step.step is Step.READ_SERVER and code == CONTENT:
            payload = registry.encode(CONFIG.instances(0, 1, 0)[LwM2mPath.of(1, 0)], LwM2mPath.of(1, 0),
                                      ContentFormat.TLV, MODEL)
            cf = int(ContentFormat.TLV)
        step = seq.handle(code, payload, cf)
    return sent, step


def test_the_happy_path_in_order() -> None:
    sent, outcome = run({})
    assert [(r.method, "/" + "/".join(r.uri_path)) for r in sent] == [
        ("GET", "/"), ("DELETE", "/0"), ("DELETE", "/1"), ("PUT", "/0/0"), ("PUT", "/0/1"), ("PUT", "/1/0"),
        ("GET", "/1"), ("POST", "/bs")]
    assert outcome.success and outcome.notes == () and outcome.lwm2m_version == "1.1"
    assert sent[0].accept == 40 and sent[3].content_format == int(ContentFormat.TLV)


def test_the_bootstrap_account_found_by_discover_is_rewritten_in_place() -> None:
    sent, outcome = run({}, discover=b'lwm2m="1.0",</0/1>;uri="coaps://bs",</0/3>;ssid=9,</1/0>;ssid=9')
    writes = ["/" + "/".join(r.uri_path) for r in sent if r.method == "PUT"]
    assert writes == ["/0/1", "/0/0", "/1/0"] and outcome.lwm2m_version == "1.0"


@pytest.mark.parametrize(("refused", "code"), [
    (Step.WRITE_SERVER_ACCOUNT, BAD), (Step.WRITE_SERVER, NOT_FOUND), (Step.FINISH, NOT_ACCEPTABLE),
    (Step.FINISH, BAD)])
def test_a_refused_essential_step_fails_with_its_code(refused: Step, code: int) -> None:
    sent, outcome = run({refused: code})
    assert not outcome.success and outcome.step is refused and outcome.code == f"{code >> 5}.{code & 31:02d}"
    assert sent[-1].step is refused


def test_refused_optional_steps_are_noted_and_delete_root_is_the_fallback() -> None:
    sent, outcome = run({Step.DISCOVER: NOT_FOUND, Step.DELETE_SECURITY: NOT_ALLOWED,
                         Step.WRITE_BOOTSTRAP_ACCOUNT: BAD, Step.READ_SERVER: NOT_ALLOWED})
    assert outcome.success
    assert [r.step for r in sent][:3] == [Step.DISCOVER, Step.DELETE_SECURITY, Step.DELETE_ALL]
    assert Step.DELETE_SERVER not in [r.step for r in sent]
    assert outcome.notes == ("discover: 4.04", "delete /0: 4.05", "write bootstrap account: 4.00", "read /1: 4.05")


def test_a_read_back_that_differs_fails() -> None:
    seq = BootstrapSequence(CONFIG, MODEL)
    step = seq.first()
    for code in (NOT_FOUND, DELETED, DELETED, CHANGED, CHANGED, CHANGED):
        step = seq.handle(code)
    assert isinstance(step, BootstrapRequest) and step.step is Step.READ_SERVER
    other = DeviceConfig("u", "i", b"k" * 16, "u", "i", b"k" * 16, lifetime=999)
    payload = registry.encode(other.instances(0, 1, 0)[LwM2mPath.of(1, 0)], LwM2mPath.of(1, 0), ContentFormat.TLV,
                              MODEL)
    outcome = seq.handle(CONTENT, payload, int(ContentFormat.TLV))
    assert isinstance(outcome, BootstrapOutcome) and not outcome.success and outcome.step is Step.READ_SERVER


@given(st.lists(st.sampled_from([CONTENT, CHANGED, DELETED, BAD, NOT_FOUND, NOT_ALLOWED, NOT_ACCEPTABLE, 0xA0]),
                min_size=12, max_size=12))
def test_any_answers_end_the_sequence_once_within_nine_requests(codes: list[int]) -> None:
    seq = BootstrapSequence(CONFIG, MODEL)
    step: BootstrapRequest | BootstrapOutcome = seq.first()
    sent = 0
    for code in codes:
        if not isinstance(step, BootstrapRequest):
            break
        sent += 1
        step = seq.handle(code)
    assert isinstance(step, BootstrapOutcome) and sent <= 9 and seq.outcome is step
    assert step.success == (codes[sent - 1] == CHANGED and step.step is None)
    with pytest.raises(RuntimeError):
        seq.handle(CHANGED)


def test_no_secret_in_reprs() -> None:
    sent, outcome = run({})
    assert b"S" * 16 in sent[4].payload  # the key is in the write ...
    for text in (repr(CONFIG), *map(repr, sent), repr(outcome)):  # ... and nowhere else
        assert "SSSSSSSS" not in text and "BBBBBBBB" not in text and "5353535353" not in text


def test_formats() -> None:
    assert write_format(None) is ContentFormat.TLV and write_format(112) is ContentFormat.SENML_CBOR
    assert write_format(0) is ContentFormat.TLV
    assert pack_format(None) is ContentFormat.SENML_CBOR and pack_format(11544) is ContentFormat.LWM2M_CBOR
    with pytest.raises(NotAcceptableError):
        pack_format(11542)


def test_parse_discover_forms() -> None:
    assert parse_discover(b'lwm2m="1.1",</0/0>;uri="coap://b",</0/1>;ssid=101;uri="c",</1/0>;ssid=101') == (
        "1.1", [0], {1: 101})
    assert parse_discover(b"</>;lwm2m=1.2,</0/4>,</3/0>") == ("1.2", [4], {})
    assert parse_discover(b"") == (None, [], {})
