"""Signed attestation reports: the state of every target of a campaign, signed by the server with COSE_Sign1.

A report is a JSON-native tree (str, int, float, bool, None, lists, dicts with str keys). The server signs its
canonical CBOR (RFC 8949 core deterministic encoding, cbor2 ``canonical=True``) as the attached payload of a tagged
COSE_Sign1 (RFC 9052): ``alg`` protected (ES256 or EdDSA), ``kid`` the signer's :func:`key_id`.

Invariants:

* :func:`build_report` is the only producer: targets sorted by endpoint (unique), every field of
  :data:`TARGET_FIELDS` present (None when missing), digests lowercase hex, ``summary`` counted from target states,
  ``server.kid`` the signer's kid in hex, ``server.issuer`` the name the report is issued under (the tenant's
  brand, else SCRATCh). Input dict key order never changes :func:`canonical_cbor`.
* Verification checks, in this order: COSE shape, the kid against the key, the signature, then the payload: it must be
  canonical CBOR of a well-formed report whose ``server.kid`` is the signing kid and whose summary fits its targets.
  Only then is the file content compared with the payload (JSON: the embedded report's canonical CBOR; CSV:
  :func:`render_csv` of the payload, byte for byte).
* Floats survive JSON exactly (Python writes the shortest repr that reads back to the same float); non-finite floats
  and integers outside the CBOR 64-bit range are refused.
* Errors are :class:`ReportError` (malformed, edited) or :class:`ReportSignatureError` (bad signature, wrong key, no
  key); they name fields and kids, never values of keys. Nothing here reads the clock; only :func:`write_report_files`
  and :func:`verify_report_file` touch files.
"""

from __future__ import annotations

import base64
import binascii
import csv
import io
import itertools
import json
import math
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

import cbor2

from firmware_object.errors import SuitDecodeError
from firmware_object.suit.cose import decode_sign1, sign1, verify_sign1
from firmware_object.suit.keys import PrivateKey, PublicKey, key_id

FORMAT: Final = "scratch-attestation/1"
TARGET_FIELDS: Final[tuple[str, ...]] = (
    "endpoint", "wave", "state", "version_before", "version_after", "release", "manifest_digest",
    "sequence_number", "update_result", "attempts", "started_at", "finished_at", "reason",
)
CAMPAIGN_FIELDS: Final[tuple[str, ...]] = (
    "id", "name", "tenant", "state", "reason", "created_at", "started_at", "finished_at", "policy", "releases",
)
RELEASE_FIELDS: Final[tuple[str, ...]] = ("id", "version", "sequence_number", "vendor_id", "class_id", "packages")
SUMMARY_STATES: Final[tuple[str, ...]] = (
    "succeeded", "failed", "rolled-back", "skipped", "pending", "delivering", "downloaded", "updating",
)
"""Always counted (0 when absent); a target in another state is counted under its own name."""
COSE_SUFFIX: Final = ".cose"
MAX_FILE_BYTES: Final = 256 * 1024 * 1024

ReportFormat = Literal["json", "csv"]

_HEX = re.compile(r"[0-9a-fA-F]*")
_SHA256_HEX_LENGTH: Final = 64
_INT_MIN: Final = -(2**64)
_INT_MAX: Final = 2**64 - 1
_CSV_FORMULA_START: Final = ("=", "+", "-", "@", "\t", "\r")


class ReportError(ValueError):
    """A report that is malformed, not canonical, or whose file content is not what was signed."""


class ReportSignatureError(ReportError):
    """The signature does not verify, was made by another key than the one given, or there is no key to check it."""


@dataclass(frozen=True)
class VerifiedReport:
    """A report whose signature verified and whose file content is exactly the signed payload."""

    report: dict[str, Any]
    kid: str
    format: ReportFormat
    summary: dict[str, int] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------------- building


def build_report(
    campaign: Mapping[str, Any], targets: Iterable[Mapping[str, Any]], *, generated_at: float, node: str, kid: str,
    issuer: str = "SCRATCh",
) -> dict[str, Any]:
    """The report of ``campaign`` and its ``targets``, validated and normalised (see the module invariants).

    Extra campaign, release and target fields are kept (signed, and shown in JSON; CSV shows TARGET_FIELDS only).
    Raises :class:`ReportError` on a non-JSON-native value, a duplicate or missing endpoint, or a bad digest."""
    if not isinstance(campaign, Mapping):
        raise ReportError(f"campaign is a {type(campaign).__name__}, not a mapping")
    normal_targets = [_normalise_target(t, i) for i, t in enumerate(targets)]
    normal_targets.sort(key=lambda t: str(t["endpoint"]))
    for before, after in itertools.pairwise(normal_targets):
        if before["endpoint"] == after["endpoint"]:
            raise ReportError(f"target {after['endpoint']!r} appears more than once")
    return {
        "format": FORMAT,
        "generated_at": _time(generated_at, "generated_at"),
        "server": {"node": _text(node, "server.node"), "kid": _hex(kid, "server.kid"),
                   "issuer": _text(issuer, "server.issuer")},
        "campaign": _normalise_campaign(campaign),
        "summary": summarise(normal_targets),
        "targets": normal_targets,
    }


def summarise(targets: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """``{"targets": n, <state>: count, ...}``: every state of SUMMARY_STATES, plus any other state seen."""
    summary: dict[str, int] = {"targets": 0, **dict.fromkeys(SUMMARY_STATES, 0)}
    for target in targets:
        state = target.get("state")
        if not isinstance(state, str) or not state or state == "targets":
            raise ReportError(f"target {target.get('endpoint')!r} has no valid state")
        summary["targets"] += 1
        summary[state] = summary.get(state, 0) + 1
    return summary


def canonical_cbor(report: Mapping[str, Any]) -> bytes:
    """The RFC 8949 core deterministic encoding of ``report`` (ReportError on a non-JSON-native value)."""
    return bytes(cbor2.dumps(_json_native(report, "report"), canonical=True))


def _normalise_campaign(campaign: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = _json_native(campaign, "campaign")
    for name in CAMPAIGN_FIELDS:
        out.setdefault(name, None)
    if out["policy"] is None:
        out["policy"] = {}
    if not isinstance(out["policy"], dict):
        raise ReportError("campaign.policy is not a mapping")
    releases = out["releases"] if out["releases"] is not None else []
    if not isinstance(releases, list):
        raise ReportError("campaign.releases is not a list")
    out["releases"] = [_normalise_release(r, i) for i, r in enumerate(releases)]
    return out


def _normalise_release(release: object, index: int) -> dict[str, Any]:
    where = f"campaign.releases[{index}]"
    if not isinstance(release, dict):
        raise ReportError(f"{where} is not a mapping")
    for name in RELEASE_FIELDS:
        release.setdefault(name, None)
    packages = release["packages"] if release["packages"] is not None else []
    if not isinstance(packages, list):
        raise ReportError(f"{where}.packages is not a list")
    release["packages"] = [_digest(p, f"{where}.packages[{i}]") for i, p in enumerate(packages)]
    return release


def _normalise_target(target: object, index: int) -> dict[str, Any]:
    if not isinstance(target, Mapping):
        raise ReportError(f"targets[{index}] is a {type(target).__name__}, not a mapping")
    endpoint = target.get("endpoint")
    if not isinstance(endpoint, str) or not endpoint:
        raise ReportError(f"targets[{index}] has no endpoint")
    out: dict[str, Any] = _json_native(target, f"target {endpoint!r}")
    for name in TARGET_FIELDS:
        out.setdefault(name, None)
    if out["manifest_digest"] is not None:
        out["manifest_digest"] = _digest(out["manifest_digest"], f"target {endpoint!r}.manifest_digest")
    if not isinstance(out["state"], str) or not out["state"] or out["state"] == "targets":
        raise ReportError(f"target {endpoint!r} has no valid state")
    return out


def _json_native(value: object, where: str) -> Any:
    """A fresh copy of ``value`` with tuples as lists; ReportError naming ``where`` for anything not JSON-native."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        if not _INT_MIN <= value <= _INT_MAX:
            raise ReportError(f"{where}: integer outside the 64-bit range")
        return int(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ReportError(f"{where}: {value} is not a JSON number")
        return float(value)
    if isinstance(value, str):
        return _text(value, where)
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise ReportError(f"{where}: a key of type {type(key).__name__} is not a string")
            out[_text(key, where)] = _json_native(item, f"{where}.{key}")
        return out
    if isinstance(value, list | tuple):
        return [_json_native(item, f"{where}[{i}]") for i, item in enumerate(value)]
    raise ReportError(f"{where}: a {type(value).__name__} is not a JSON value (str, int, float, bool, None, list, "
                      "dict)")


def _text(value: object, where: str) -> str:
    if not isinstance(value, str):
        raise ReportError(f"{where} is a {type(value).__name__}, not a string")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ReportError(f"{where} is not valid Unicode text (lone surrogate)") from None
    return str(value)


def _time(value: object, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ReportError(f"{where} is not a finite number of seconds")
    return float(value)


def _hex(value: object, where: str) -> str:
    if not isinstance(value, str) or not value or len(value) % 2 or not _HEX.fullmatch(value):
        raise ReportError(f"{where} is not a hex string")
    return value.lower()


def _digest(value: object, where: str) -> str:
    digest = _hex(value, where)
    if len(digest) != _SHA256_HEX_LENGTH:
        raise ReportError(f"{where} is not a SHA-256 digest ({_SHA256_HEX_LENGTH} hex digits)")
    return digest


# ---------------------------------------------------------------------------------------------------- signing


def sign_report(report: Mapping[str, Any], key: PrivateKey) -> bytes:
    """A tagged COSE_Sign1 with the report's canonical CBOR attached; ReportError unless ``server.kid`` is the key's."""
    kid = key_id(key)
    claimed = _server_kid(report)
    if claimed != kid.hex():
        raise ReportError(f"the report names the server key {claimed} but is being signed with key {kid.hex()}")
    return sign1(key, canonical_cbor(report), kid=kid, detached=False)


def verify_report(cose: bytes, key: PublicKey) -> dict[str, Any]:
    """The report signed in ``cose`` by ``key``; ReportSignatureError (bad signature, wrong key) or ReportError."""
    return _verify(cose, key)[0]


def _verify(cose: bytes, key: PublicKey | None, trusted: Mapping[str, PublicKey] | None = None
            ) -> tuple[dict[str, Any], str]:
    try:
        message = decode_sign1(bytes(cose))
    except SuitDecodeError as e:
        raise ReportError(f"malformed COSE_Sign1: {e}") from None
    if message.payload is None:
        raise ReportError("malformed COSE_Sign1: the report is not attached (detached payload)")
    signed_kid = message.kid.hex() if message.kid is not None else None
    if key is None:
        key = trusted.get(signed_kid) if trusted is not None and signed_kid is not None else None
        if key is None:
            raise ReportSignatureError(f"no key to verify with (the report is signed by key {signed_kid or '?'})")
    expected_kid = key_id(key).hex()
    if signed_kid is not None and signed_kid != expected_kid:
        raise ReportSignatureError(f"wrong key: the report is signed by key {signed_kid}, the key given is "
                                   f"{expected_kid}")
    if not verify_sign1(message, key):
        raise ReportSignatureError(f"bad signature: the COSE_Sign1 does not verify with key {expected_kid}")
    report = _decode_payload(message.payload)
    if _server_kid(report) != expected_kid:
        raise ReportSignatureError(f"the report names the server key {_server_kid(report)} but is signed by key "
                                   f"{expected_kid}")
    return report, expected_kid


def _decode_payload(payload: bytes) -> dict[str, Any]:
    try:
        decoded = cbor2.loads(payload)
    except (cbor2.CBORDecodeError, ValueError, TypeError, RecursionError, OverflowError) as e:
        raise ReportError(f"the signed payload is not CBOR: {e}") from None
    report = _json_native(decoded, "report")
    if bytes(cbor2.dumps(report, canonical=True)) != payload:
        raise ReportError("the signed payload is not canonical CBOR (RFC 8949 core deterministic encoding)")
    if not isinstance(report, dict):
        raise ReportError("the report is not a map")
    _check_shape(report)
    return report


def _check_shape(report: dict[str, Any]) -> None:
    if report.get("format") != FORMAT:
        raise ReportError(f"not a {FORMAT} report (format {report.get('format')!r})")
    for name, kind in (("server", dict), ("campaign", dict), ("summary", dict), ("targets", list)):
        if not isinstance(report.get(name), kind):
            raise ReportError(f"the report's {name} is missing or not a {kind.__name__}")
    targets = report["targets"]
    if not all(isinstance(t, dict) and isinstance(t.get("endpoint"), str) for t in targets):
        raise ReportError("a target is not a map with an endpoint")
    if summarise(targets) != report["summary"]:
        raise ReportError("the report's summary does not fit its targets")


def _server_kid(report: Mapping[str, Any]) -> str:
    server = report.get("server")
    kid = server.get("kid") if isinstance(server, Mapping) else None
    if not isinstance(kid, str):
        raise ReportError("the report names no server key (server.kid)")
    return kid


# ---------------------------------------------------------------------------------------------------- rendering


def render_json(report: Mapping[str, Any], cose: bytes) -> bytes:
    """``{"cose_sign1": <base64>, "report": <report>}``, indent 2, sorted keys, ASCII, one final newline."""
    document = {"report": _json_native(report, "report"), "cose_sign1": base64.b64encode(cose).decode("ascii")}
    return (json.dumps(document, indent=2, sort_keys=True, allow_nan=False) + "\n").encode("ascii")


def render_csv(report: Mapping[str, Any]) -> bytes:
    """A header of TARGET_FIELDS and one row per target (in report order), ``\\n`` line ends, UTF-8.

    Cells: None is empty, booleans ``true``/``false``, floats their exact repr, lists and dicts compact JSON; a text
    cell that starts like a spreadsheet formula (= + - @ tab CR) gets a leading ``'`` (endpoints are device-chosen)."""
    targets = report.get("targets")
    if not isinstance(targets, list):
        raise ReportError("the report has no list of targets")
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(TARGET_FIELDS)
    for target in targets:
        if not isinstance(target, Mapping):
            raise ReportError("a target is not a mapping")
        writer.writerow([_cell(target.get(name)) for name in TARGET_FIELDS])
    return buffer.getvalue().encode("utf-8")


def _cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return "'" + value if value.startswith(_CSV_FORMULA_START) else value
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(_json_native(value, "cell"), sort_keys=True, separators=(",", ":"), allow_nan=False)


# ---------------------------------------------------------------------------------------------------- files


def write_report_files(report: Mapping[str, Any], cose: bytes, out: Path, fmt: ReportFormat) -> list[Path]:
    """Write ``out`` (JSON with the COSE embedded, or CSV plus its ``out.cose`` sidecar), mode 0644, each file
    replaced atomically. ReportError if ``cose`` does not carry this report (nothing is written then)."""
    if fmt not in ("json", "csv"):
        raise ReportError(f"unknown report format {fmt!r}: json or csv")
    try:
        message = decode_sign1(bytes(cose))
    except SuitDecodeError as e:
        raise ReportError(f"malformed COSE_Sign1: {e}") from None
    if message.payload != canonical_cbor(report):
        raise ReportError("the COSE_Sign1 does not carry this report")
    if fmt == "json":
        files = [(Path(out), render_json(report, cose))]
    else:
        files = [(sidecar_path(out), bytes(cose)), (Path(out), render_csv(report))]
    for path, data in files:
        _write_atomically(path, data)
    return [path for path, _ in reversed(files)]


def sidecar_path(path: Path) -> Path:
    """Where the COSE_Sign1 of a CSV report lives: ``<path>.cose``."""
    return Path(path).with_name(Path(path).name + COSE_SUFFIX)


def verify_report_file(
    path: Path, key: PublicKey | None = None, *, trusted: Mapping[str, PublicKey] | None = None
) -> VerifiedReport:
    """Verify a file from :func:`write_report_files` (JSON or CSV, told apart by content) with ``key``, or with
    the key ``trusted`` maps the signing kid (hex) to. ReportError / ReportSignatureError when it does not verify;
    OSError when a file cannot be read (a missing CSV sidecar is a ReportError)."""
    data = _read(Path(path))
    if data.lstrip()[:1] == b"{":
        return _verify_json(data, key, trusted)
    sidecar = sidecar_path(path)
    if not sidecar.exists():
        raise ReportError(f"no signature for the CSV report: {sidecar.name} not found beside it")
    report, kid = _verify(_read(sidecar), key, trusted)
    if render_csv(report) != data:
        raise ReportError("the CSV differs from the signed report")
    return VerifiedReport(report, kid, "csv", dict(report["summary"]))


def _verify_json(data: bytes, key: PublicKey | None, trusted: Mapping[str, PublicKey] | None) -> VerifiedReport:
    try:
        document = json.loads(data, parse_constant=_refuse_constant)
    except (ValueError, RecursionError) as e:
        raise ReportError(f"not a JSON report: {e}") from None
    if not isinstance(document, dict) or set(document) != {"report", "cose_sign1"}:
        raise ReportError('not a JSON report: expected an object with exactly "report" and "cose_sign1"')
    if not isinstance(document["cose_sign1"], str):
        raise ReportError("cose_sign1 is not a base64 string")
    try:
        cose = base64.b64decode(document["cose_sign1"], validate=True)
    except (binascii.Error, ValueError):
        raise ReportError("cose_sign1 is not valid base64") from None
    report, kid = _verify(cose, key, trusted)
    if not isinstance(document["report"], dict) or canonical_cbor(document["report"]) != canonical_cbor(report):
        raise ReportError("the report in the file differs from the signed report")
    return VerifiedReport(report, kid, "json", dict(report["summary"]))


def _refuse_constant(name: str) -> Any:
    raise ReportError(f"{name} is not a JSON number")


def _read(path: Path) -> bytes:
    if path.stat().st_size > MAX_FILE_BYTES:
        raise ReportError(f"{path.name} is larger than {MAX_FILE_BYTES} bytes")
    return path.read_bytes()


def _write_atomically(path: Path, data: bytes) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
