"""Signed attestation reports: building, canonical CBOR, COSE_Sign1 signing (checked against pycose as an oracle),
JSON and CSV files, and tampering of every kind failing verification."""

from __future__ import annotations

import base64
import csv
import io
import json
import math
import random
from functools import cache
from pathlib import Path
from typing import Any

import cbor2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pycose.headers import KID
from pycose.keys.cosekey import CoseKey
from pycose.messages.sign1message import Sign1Message

from firmware_object.suit.cose import sign1
from firmware_object.suit.keys import (
    PrivateKey,
    generate_private_key,
    key_id,
    private_key_to_pem,
    public_key_to_pem,
)
from lwm2m_server.fota.attestation import (
    FORMAT,
    SUMMARY_STATES,
    TARGET_FIELDS,
    ReportError,
    ReportSignatureError,
    build_report,
    canonical_cbor,
    render_csv,
    render_json,
    sign_report,
    verify_report,
    verify_report_file,
    write_report_files,
)

SHA_A = "ab" * 32
SHA_B = "CD" * 32


@cache
def _key(alg: str, n: int = 0) -> PrivateKey:
    return generate_private_key(alg)


@pytest.fixture(params=["es256", "ed25519"])
def key(request: pytest.FixtureRequest) -> PrivateKey:
    return _key(request.param)


def _campaign(**extra: Any) -> dict[str, Any]:
    return {"id": "cmp-1", "name": "spring rollout", "tenant": "default", "state": "completed", "reason": "completed",
            "created_at": 1700000000.25, "started_at": 1700000001.5, "finished_at": 1700000100.125,
            "policy": {"canary_percent": 10, "waves": 2, "error_threshold": 0.2},
            "releases": [{"id": "rel-abc", "version": "2.0.0", "sequence_number": 7, "vendor_id": "v-uuid",
                          "class_id": "c-uuid", "packages": [SHA_A, SHA_B]}], **extra}


def _targets() -> list[dict[str, Any]]:
    full = {"endpoint": "dev-2", "wave": 1, "state": "rolled-back", "version_before": "1.0.0",
            "version_after": "1.0.0", "release": "rel-abc", "manifest_digest": SHA_A, "sequence_number": 7,
            "update_result": 8, "attempts": 1, "started_at": 1700000010.0, "finished_at": 1700000020.5,
            "reason": "the device rolled back"}
    return [
        {"endpoint": "dev-3", "wave": 1, "state": "succeeded", "attempts": 2, "manifest_digest": SHA_B},
        full,
        {"endpoint": "dev-1", "wave": 0, "state": "failed", "attempts": 3, "update_result": 5},
        {"endpoint": "dev-4", "wave": 1, "state": "skipped", "reason": "campaign cancelled"},
    ]


def _report(key: PrivateKey, **campaign: Any) -> dict[str, Any]:
    return build_report(_campaign(**campaign), _targets(), generated_at=1700000200.0625, node="node-a",
                        kid=key_id(key).hex())


# ------------------------------------------------------------------------------------------------ building


def test_build_report_normalises() -> None:
    key = _key("es256")
    report = _report(key)
    assert report["format"] == FORMAT
    assert report["server"] == {"node": "node-a", "kid": key_id(key).hex(), "issuer": "SCRATCh"}
    assert [t["endpoint"] for t in report["targets"]] == ["dev-1", "dev-2", "dev-3", "dev-4"]
    for target in report["targets"]:
        assert set(TARGET_FIELDS) <= set(target)
    assert report["targets"][0]["manifest_digest"] is None and report["targets"][0]["reason"] is None
    assert report["targets"][2]["manifest_digest"] == SHA_B.lower()
    assert report["campaign"]["releases"][0]["packages"] == [SHA_A, SHA_B.lower()]
    assert report["summary"] == {"targets": 4, "succeeded": 1, "failed": 1, "rolled-back": 1, "skipped": 1,
                                 "pending": 0, "delivering": 0, "downloaded": 0, "updating": 0}
    assert set(SUMMARY_STATES) <= set(report["summary"])
    assert TARGET_FIELDS[:3] == ("endpoint", "wave", "state") and TARGET_FIELDS[-1] == "reason"


def test_build_report_fills_missing_campaign_fields_and_converts_tuples() -> None:
    report = build_report({"id": "c", "state": "running"}, ({"endpoint": "e", "state": "pending", "x": (1, 2)},),
                          generated_at=5, node="n", kid="AB01")
    assert report["campaign"]["policy"] == {} and report["campaign"]["releases"] == []
    assert report["campaign"]["name"] is None
    assert report["targets"][0]["x"] == [1, 2]
    assert report["generated_at"] == 5.0 and isinstance(report["generated_at"], float)
    assert report["server"]["kid"] == "ab01"


@pytest.mark.parametrize(("campaign", "targets", "message"), [
    ({"id": "c", "extra": b"\x00"}, [], "campaign.extra: a bytes"),
    ({"id": "c", "extra": {1: "x"}}, [], "not a string"),
    ({"id": "c", "extra": {"a", "b"}}, [], "a set"),
    ({"id": "c", "created_at": float("nan")}, [], "not a JSON number"),
    ({"id": "c"}, [{"endpoint": "e", "state": "failed", "started_at": float("inf")}], "not a JSON number"),
    ({"id": "c"}, [{"endpoint": "e", "state": "failed", "attempts": 2**70}], "64-bit"),
    ({"id": "c"}, [{"endpoint": "e", "state": "failed", "reason": object()}], "a object"),
    ({"id": "c"}, [{"endpoint": "e", "state": "ok"}, {"endpoint": "e", "state": "ok"}], "more than once"),
    ({"id": "c"}, [{"state": "ok"}], "no endpoint"),
    ({"id": "c"}, [{"endpoint": "e"}], "no valid state"),
    ({"id": "c"}, [{"endpoint": "e", "state": "ok", "manifest_digest": "xyz"}], "not a hex string"),
    ({"id": "c"}, [{"endpoint": "e", "state": "ok", "manifest_digest": "abcd"}], "SHA-256"),
    ({"id": "c", "releases": [{"packages": ["00"]}]}, [], "SHA-256"),
    ({"id": "c", "policy": [1]}, [], "policy"),
    ("campaign", [], "not a mapping"),
])
def test_build_report_refuses_what_is_not_json_native(campaign: Any, targets: Any, message: str) -> None:
    with pytest.raises(ReportError, match=message):
        build_report(campaign, targets, generated_at=1.0, node="n", kid="00")


def test_build_report_refuses_a_bad_kid_and_time() -> None:
    with pytest.raises(ReportError, match=r"server\.kid"):
        build_report({}, [], generated_at=1.0, node="n", kid="not hex")
    with pytest.raises(ReportError, match="generated_at"):
        build_report({}, [], generated_at=math.inf, node="n", kid="00")


# ------------------------------------------------------------------------------------------------ signing


def test_sign_and_verify_round_trip(key: PrivateKey) -> None:
    report = _report(key)
    cose = sign_report(report, key)
    assert verify_report(cose, key.public_key()) == report


def test_pycose_verifies_the_signature(key: PrivateKey) -> None:
    """Interop oracle: pycose alone decodes the COSE_Sign1, finds alg protected and kid, and verifies it."""
    report = _report(key)
    cose = sign_report(report, key)
    assert cbor2.loads(cose).tag == 18
    message = Sign1Message.decode(cose)
    message.key = CoseKey.from_pem_public_key(public_key_to_pem(key.public_key()).decode())
    assert message.verify_signature()
    assert message.payload == canonical_cbor(report)
    assert cbor2.loads(message.payload) == report
    protected = cbor2.loads(message.phdr_encoded)
    assert protected == {1: -7 if _alg(key) == "es256" else -8}
    assert message.get_attr(KID) == key_id(key)


def _alg(key: PrivateKey) -> str:
    return "es256" if key is _key("es256") else "ed25519"


def test_verify_with_pycose_signed_report(key: PrivateKey) -> None:
    """The other direction: a COSE_Sign1 made by pycose over our canonical CBOR verifies with our code."""
    from pycose.algorithms import EdDSA, Es256
    from pycose.headers import Algorithm

    report = _report(key)
    message = Sign1Message(phdr={Algorithm: Es256 if _alg(key) == "es256" else EdDSA}, uhdr={KID: key_id(key)},
                           payload=canonical_cbor(report),
                           key=CoseKey.from_pem_private_key(private_key_to_pem(key).decode()))
    assert verify_report(message.encode(tag=True), key.public_key()) == report


def test_wrong_key_fails(key: PrivateKey) -> None:
    cose = sign_report(_report(key), key)
    other = _key(_alg(key), 1)
    with pytest.raises(ReportSignatureError, match="wrong key"):
        verify_report(cose, other.public_key())


def test_bad_signature_fails(key: PrivateKey) -> None:
    cose = bytearray(sign_report(_report(key), key))
    cose[-1] ^= 0x01  # the last byte of the signature
    with pytest.raises(ReportSignatureError, match="bad signature"):
        verify_report(bytes(cose), key.public_key())


def test_payload_edited_inside_cose_fails(key: PrivateKey) -> None:
    cose = sign_report(_report(key), key)
    item = cbor2.loads(cose)
    edited = cbor2.loads(item.value[2])
    edited["summary"]["failed"] = 0
    item.value[2] = cbor2.dumps(edited, canonical=True)
    with pytest.raises(ReportSignatureError, match="bad signature"):
        verify_report(cbor2.dumps(item), key.public_key())


@pytest.mark.parametrize("data", [b"", b"\x00", b"not cbor at all", cbor2.dumps([1, 2, 3]),
                                  cbor2.dumps(cbor2.CBORTag(98, [b"", {}, b"", []]))])
def test_malformed_cose_fails(data: bytes) -> None:
    with pytest.raises(ReportError, match="malformed"):
        verify_report(data, _key("es256").public_key())


def test_detached_payload_fails(key: PrivateKey) -> None:
    cose = sign1(key, canonical_cbor(_report(key)), kid=key_id(key), detached=True)
    with pytest.raises(ReportError, match="not attached"):
        verify_report(cose, key.public_key())


def test_non_canonical_payload_fails(key: PrivateKey) -> None:
    report = _report(key)
    payload = cbor2.dumps(dict(reversed(list(report.items()))))  # keys not sorted: validly signed, not canonical
    assert payload != canonical_cbor(report)
    cose = sign1(key, payload, kid=key_id(key), detached=False)
    with pytest.raises(ReportError, match="not canonical"):
        verify_report(cose, key.public_key())


@pytest.mark.parametrize("payload", [cbor2.dumps(b"bytes"), cbor2.dumps({"format": "other/1"}, canonical=True),
                                     b"\xff\xff"])
def test_signed_garbage_fails(key: PrivateKey, payload: bytes) -> None:
    cose = sign1(key, payload, kid=key_id(key), detached=False)
    with pytest.raises(ReportError):
        verify_report(cose, key.public_key())


def test_signed_inconsistent_summary_fails(key: PrivateKey) -> None:
    report = _report(key)
    report["summary"]["succeeded"] += 1
    cose = sign1(key, canonical_cbor(report), kid=key_id(key), detached=False)
    with pytest.raises(ReportError, match="summary"):
        verify_report(cose, key.public_key())


def test_report_naming_another_key_is_not_signed(key: PrivateKey) -> None:
    report = build_report(_campaign(), _targets(), generated_at=1.0, node="n", kid="00" * 8)
    with pytest.raises(ReportError, match="being signed with key"):
        sign_report(report, key)
    cose = sign1(key, canonical_cbor(report), kid=key_id(key), detached=False)
    with pytest.raises(ReportSignatureError, match="names the server key"):
        verify_report(cose, key.public_key())


# ------------------------------------------------------------------------------------------------ files


def test_json_file_round_trip(key: PrivateKey, tmp_path: Path) -> None:
    report = _report(key)
    cose = sign_report(report, key)
    out = tmp_path / "report.json"
    assert write_report_files(report, cose, out, "json") == [out]
    assert out.stat().st_mode & 0o777 == 0o644
    text = out.read_text()
    assert text == render_json(report, cose).decode()
    document = json.loads(text)
    assert list(document) == ["cose_sign1", "report"] and base64.b64decode(document["cose_sign1"]) == cose
    verified = verify_report_file(out, key.public_key())
    assert verified.report == report and verified.format == "json"
    assert verified.kid == key_id(key).hex() and verified.summary == report["summary"]


def test_csv_file_round_trip(key: PrivateKey, tmp_path: Path) -> None:
    report = _report(key)
    cose = sign_report(report, key)
    out = tmp_path / "report.csv"
    written = write_report_files(report, cose, out, "csv")
    assert written == [out, tmp_path / "report.csv.cose"]
    assert (tmp_path / "report.csv.cose").read_bytes() == cose
    data = out.read_bytes()
    assert b"\r" not in data
    rows = list(csv.reader(io.StringIO(data.decode())))
    assert tuple(rows[0]) == TARGET_FIELDS
    assert [r[0] for r in rows[1:]] == ["dev-1", "dev-2", "dev-3", "dev-4"]
    assert rows[2][TARGET_FIELDS.index("finished_at")] == "1700000020.5"
    verified = verify_report_file(out, key.public_key())
    assert verified.report == report and verified.format == "csv" and verified.summary == report["summary"]


def _tampered(value: Any) -> Any:
    if value is None:
        return "x"
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, float):
        return math.nextafter(value, math.inf)  # the smallest change a float can take
    if isinstance(value, str):
        return value + "x"
    raise AssertionError(value)


def _edit_json(path: Path, edit: Any) -> None:
    document = json.loads(path.read_text())
    edit(document["report"])
    path.write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")


@pytest.mark.parametrize("name", TARGET_FIELDS)
def test_json_with_any_target_field_edited_fails(name: str, tmp_path: Path) -> None:
    key = _key("es256")
    report = _report(key)
    out = tmp_path / "report.json"
    write_report_files(report, sign_report(report, key), out, "json")

    def edit(r: dict[str, Any]) -> None:
        r["targets"][1][name] = _tampered(r["targets"][1][name])

    _edit_json(out, edit)
    with pytest.raises(ReportError, match="differs from the signed report"):
        verify_report_file(out, key.public_key())


@pytest.mark.parametrize("edit", [
    lambda r: r["summary"].__setitem__("succeeded", 4),
    lambda r: r["campaign"].__setitem__("state", "halted"),
    lambda r: r.__setitem__("generated_at", r["generated_at"] + 1),
    lambda r: r["targets"].pop(),
    lambda r: r["targets"][0].__setitem__("extra", 1),
    lambda r: r["campaign"]["releases"][0]["packages"].reverse(),
])
def test_json_with_report_edited_fails(edit: Any, tmp_path: Path) -> None:
    key = _key("ed25519")
    report = _report(key)
    out = tmp_path / "report.json"
    write_report_files(report, sign_report(report, key), out, "json")
    _edit_json(out, edit)
    with pytest.raises(ReportError, match="differs"):
        verify_report_file(out, key.public_key())


def test_json_with_a_valid_signature_of_another_report_fails(tmp_path: Path) -> None:
    key = _key("es256")
    report, other = _report(key), _report(key, state="halted")
    out = tmp_path / "report.json"
    write_report_files(report, sign_report(report, key), out, "json")
    document = json.loads(out.read_text())
    document["cose_sign1"] = base64.b64encode(sign_report(other, key)).decode()
    out.write_text(json.dumps(document))
    with pytest.raises(ReportError, match="differs from the signed report"):
        verify_report_file(out, key.public_key())


@pytest.mark.parametrize("text", ['{"report": {}}', "[1]", '{"report": {}, "cose_sign1": 5}',
                                  '{"report": {}, "cose_sign1": "@@@"}', '{"report": NaN, "cose_sign1": ""}', "{"])
def test_malformed_json_file_fails(text: str, tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    out.write_text(text)
    with pytest.raises(ReportError):
        verify_report_file(out, _key("es256").public_key())


def test_json_file_with_the_wrong_key_fails(key: PrivateKey, tmp_path: Path) -> None:
    report = _report(key)
    out = tmp_path / "report.json"
    write_report_files(report, sign_report(report, key), out, "json")
    with pytest.raises(ReportSignatureError, match="wrong key"):
        verify_report_file(out, _key("es256", 2).public_key())


def test_csv_edited_fails(tmp_path: Path) -> None:
    key = _key("es256")
    report = _report(key)
    out = tmp_path / "report.csv"
    write_report_files(report, sign_report(report, key), out, "csv")
    original = out.read_bytes()
    for edited in (original.replace(b"rolled-back", b"succeeded"), original.replace(b"dev-1", b"dev-9"),
                   original + b"dev-5,1,succeeded,,,,,,,,,,\n", original.replace(b"\n", b"\r\n"),
                   original[:-1]):
        out.write_bytes(edited)
        with pytest.raises(ReportError, match="CSV differs"):
            verify_report_file(out, key.public_key())


def test_csv_sidecar_edited_or_missing_fails(tmp_path: Path) -> None:
    key = _key("ed25519")
    report = _report(key)
    out = tmp_path / "report.csv"
    cose = sign_report(report, key)
    write_report_files(report, cose, out, "csv")
    sidecar = tmp_path / "report.csv.cose"
    flipped = bytearray(cose)
    flipped[-5] ^= 0x80
    sidecar.write_bytes(bytes(flipped))
    with pytest.raises(ReportSignatureError, match="bad signature"):
        verify_report_file(out, key.public_key())
    other = build_report(_campaign(), _targets()[:3], generated_at=1.0, node="n", kid=key_id(key).hex())
    sidecar.write_bytes(sign_report(other, key))  # valid, of another report with other targets
    with pytest.raises(ReportError, match="CSV differs"):
        verify_report_file(out, key.public_key())
    sidecar.write_bytes(b"junk")
    with pytest.raises(ReportError, match="malformed"):
        verify_report_file(out, key.public_key())
    sidecar.unlink()
    with pytest.raises(ReportError, match="not found"):
        verify_report_file(out, key.public_key())


def test_key_from_trusted_kids_or_none(tmp_path: Path) -> None:
    es, ed = _key("es256"), _key("ed25519")
    report = _report(ed)
    out = tmp_path / "report.csv"
    write_report_files(report, sign_report(report, ed), out, "csv")
    trusted = {key_id(k).hex(): k.public_key() for k in (es, ed)}
    assert verify_report_file(out, None, trusted=trusted).kid == key_id(ed).hex()
    with pytest.raises(ReportSignatureError, match="no key to verify with"):
        verify_report_file(out, None)
    with pytest.raises(ReportSignatureError, match="no key to verify with"):
        verify_report_file(out, None, trusted={key_id(es).hex(): es.public_key()})


def test_write_refuses_a_cose_of_another_report(tmp_path: Path) -> None:
    key = _key("es256")
    out = tmp_path / "report.csv"
    with pytest.raises(ReportError, match="does not carry this report"):
        write_report_files(_report(key), sign_report(_report(key, state="halted"), key), out, "csv")
    assert list(tmp_path.iterdir()) == []


def test_csv_cells_that_look_like_formulas_are_defused(tmp_path: Path) -> None:
    key = _key("es256")
    report = build_report({}, [{"endpoint": "=HYPERLINK(\"x\")", "state": "failed", "reason": "-1+1",
                                "attempts": -1, "wave": None, "started_at": 0.1}],
                          generated_at=0.0, node="n", kid=key_id(key).hex())
    rows = list(csv.reader(io.StringIO(render_csv(report).decode())))
    row = dict(zip(TARGET_FIELDS, rows[1], strict=True))
    assert row["endpoint"] == "'=HYPERLINK(\"x\")" and row["reason"] == "'-1+1"
    assert row["attempts"] == "-1" and row["wave"] == "" and row["started_at"] == "0.1"
    out = tmp_path / "r.csv"
    write_report_files(report, sign_report(report, key), out, "csv")
    assert verify_report_file(out, key.public_key()).report == report


def test_errors_name_no_private_key(key: PrivateKey) -> None:
    pem = private_key_to_pem(key).decode()
    body = "".join(pem.splitlines()[1:-1])
    for attempt in (lambda: verify_report(b"junk", key.public_key()),
                    lambda: sign_report(build_report({}, [], generated_at=0, node="n", kid="00"), key)):
        with pytest.raises(ReportError) as info:
            attempt()
        assert body[:16] not in str(info.value) and body[:16] not in repr(info.value)


# ------------------------------------------------------------------------------------------------ properties

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**64), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5),
    max_leaves=30,
)
scalars = st.none() | st.booleans() | st.integers(-1000, 2**40) | st.floats(allow_nan=False, allow_infinity=False) \
    | st.text(max_size=12)
targets_strategy = st.lists(
    st.fixed_dictionaries(
        {"endpoint": st.text(min_size=1, max_size=12),
         "state": st.sampled_from([*SUMMARY_STATES, "other"])},
        optional={name: scalars for name in TARGET_FIELDS if name not in ("endpoint", "state", "manifest_digest")}
        | {"manifest_digest": st.binary(min_size=32, max_size=32).map(bytes.hex)},
    ),
    max_size=8, unique_by=lambda t: t["endpoint"],
)
reports = st.builds(
    lambda campaign, targets, at: build_report(campaign, targets, generated_at=at, node="node", kid="0011"),
    st.dictionaries(st.sampled_from(["id", "name", "state", "policy", "extra", "created_at"]), json_values,
                    max_size=6).filter(lambda c: isinstance(c.get("policy", {}), dict)),
    targets_strategy,
    st.floats(allow_nan=False, allow_infinity=False),
)


def _shuffled(value: Any, rnd: random.Random) -> Any:
    if isinstance(value, dict):
        items = list(value.items())
        rnd.shuffle(items)
        return {k: _shuffled(v, rnd) for k, v in items}
    if isinstance(value, list):
        return [_shuffled(v, rnd) for v in value]
    return value


@settings(max_examples=200, deadline=None)
@given(value=json_values, seed=st.integers(0, 2**32))
def test_canonical_cbor_is_stable_for_any_json_value(value: Any, seed: int) -> None:
    report = {"v": value}
    encoded = canonical_cbor(report)
    assert canonical_cbor(cbor2.loads(encoded)) == encoded
    assert canonical_cbor(_shuffled(report, random.Random(seed))) == encoded


@settings(max_examples=100, deadline=None)
@given(report=reports, seed=st.integers(0, 2**32))
def test_canonical_cbor_is_stable_for_random_reports(report: dict[str, Any], seed: int) -> None:
    encoded = canonical_cbor(report)
    assert canonical_cbor(cbor2.loads(encoded)) == encoded
    assert canonical_cbor(_shuffled(report, random.Random(seed))) == encoded
    assert [t["endpoint"] for t in report["targets"]] == sorted(t["endpoint"] for t in report["targets"])
    assert report["summary"]["targets"] == len(report["targets"])


@settings(max_examples=100, deadline=None)
@given(campaign=st.dictionaries(st.text(max_size=8), json_values, max_size=4).filter(
           lambda c: isinstance(c.get("policy", {}), dict) and isinstance(c.get("releases", []), list)
           and all(isinstance(r, dict) and not r.get("packages") for r in c.get("releases", []))),
       targets=targets_strategy, seed=st.integers(0, 2**32))
def test_input_key_order_does_not_change_the_bytes(campaign: dict[str, Any], targets: list[dict[str, Any]],
                                                   seed: int) -> None:
    rnd = random.Random(seed)
    first = build_report(campaign, targets, generated_at=1.0, node="n", kid="00")
    shuffled_targets = _shuffled(targets, rnd)
    rnd.shuffle(shuffled_targets)
    second = build_report(_shuffled(campaign, rnd), shuffled_targets, generated_at=1.0, node="n", kid="00")
    assert canonical_cbor(first) == canonical_cbor(second)


@settings(max_examples=200, deadline=None)
@given(floats=st.lists(st.floats(allow_nan=False, allow_infinity=False), min_size=1, max_size=10))
def test_floats_survive_the_json_round_trip_exactly(floats: list[float]) -> None:
    report = {"generated_at": floats[0], "values": floats}
    back = json.loads(render_json(report, b"\x00"))["report"]
    assert all(math.copysign(1, a) == math.copysign(1, b) and a == b for a, b in zip(back["values"], floats,
                                                                                      strict=True))
    assert canonical_cbor(back) == canonical_cbor(report)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(report_in=reports, fmt=st.sampled_from(["json", "csv"]))
def test_random_signed_reports_verify_from_files(report_in: dict[str, Any], fmt: str, tmp_path: Path) -> None:
    key = _key("ed25519")
    report = build_report(report_in["campaign"], report_in["targets"], generated_at=report_in["generated_at"],
                          node="node", kid=key_id(key).hex())
    out = tmp_path / f"report.{fmt}"
    write_report_files(report, sign_report(report, key), out, fmt)  # type: ignore[arg-type]
    verified = verify_report_file(out, key.public_key())
    assert canonical_cbor(verified.report) == canonical_cbor(report)
