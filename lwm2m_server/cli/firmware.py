"""``scratch firmware``: signing keys, SUIT packages, and firmware updates through the running server."""

from __future__ import annotations

import hashlib
import json
import uuid
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeElapsedColumn, TransferSpeedColumn

from firmware_object.errors import FirmwareError, UpdateResult
from firmware_object.suit.envelope import add_signature, build_envelope
from firmware_object.suit.keys import (
    PrivateKey,
    PublicKey,
    generate_private_key,
    key_id,
    load_private_key,
    load_public_key,
    private_key_to_pem,
    public_key_to_pem,
)
from firmware_object.suit.manifest import ReleaseManifest, describe
from firmware_object.suit.verify import verify_envelope
from lwm2m_server.cli.client import ApiClient, CliError
from lwm2m_server.cli.common import err_console, fail, new_app
from lwm2m_server.data_dir import create_private_file

firmware_app = new_app(help="Sign firmware into SUIT packages and update devices.")
console = Console(soft_wrap=True)

MAX_PACKAGE = 64 << 20
STATES = {0: "Idle", 1: "Downloading", 2: "Downloaded", 3: "Updating"}




def _read(path: Path, what: str, limit: int = MAX_PACKAGE) -> bytes:
    try:
        size = path.stat().st_size
        if size > limit:
            raise fail(f"{path} has {size} bytes; a {what} may have at most {limit}", 2)
        return path.read_bytes()
    except OSError as e:
        raise fail(f"cannot read {what} {path}: {e.strerror}", 2) from None


def _private_key(path: Path) -> PrivateKey:
    try:
        return load_private_key(_read(path, "key", 1 << 16))
    except (ValueError, FirmwareError) as e:
        raise fail(f"{path}: {e}", 2) from None


def _public_key(path: Path) -> PublicKey:
    try:
        return load_public_key(_read(path, "public key", 1 << 16))
    except (ValueError, FirmwareError) as e:
        raise fail(f"{path}: {e}", 2) from None


def _uuid(text: str, option: str) -> uuid.UUID:
    try:
        return uuid.UUID(text)
    except ValueError:
        raise fail(f"{option}: {text!r} is not a UUID", 2) from None


def _write_new(path: Path, data: bytes, mode: int) -> None:
    """Write a key file that must not exist yet, 0600 from creation (no window with wider rights), then ``mode``."""
    try:
        create_private_file(path, data)
        if mode != 0o600:
            path.chmod(mode)
    except FileExistsError:
        raise fail(f"{path} exists; not overwriting a key", 2) from None
    except OSError as e:
        raise fail(f"cannot write {path}: {e.strerror}", 2) from None


@firmware_app.command("keygen")
def keygen(
    out: Annotated[Path, typer.Option("--out", help="Private key file to create (PEM, mode 0600); the public key "
                                      "goes to OUT.pub")],
    alg: Annotated[str, typer.Option("--alg", help="es256 (ECDSA P-256) or ed25519")] = "es256",
) -> None:
    """Create a signing key pair. The private key is never printed."""
    if alg not in ("es256", "ed25519"):
        raise fail(f"--alg: {alg!r} is not es256 or ed25519", 2)
    key = generate_private_key(alg)
    pub = out.with_name(out.name + ".pub")
    if pub.exists():
        raise fail(f"{pub} exists; not overwriting a key", 2)
    _write_new(out, private_key_to_pem(key), 0o600)
    _write_new(pub, public_key_to_pem(key.public_key()), 0o644)
    console.print(f"{alg} key {key_id(key.public_key()).hex()}: private key in {out} (0600), public key in {pub}",
                  highlight=False)


@firmware_app.command("sign")
def sign(
    image: Annotated[Path, typer.Argument(help="The firmware image")],
    key: Annotated[Path, typer.Option("--key", help="Private signing key (PEM)")],
    vendor: Annotated[str, typer.Option("--vendor", help="Vendor UUID of the devices this image is for")],
    device_class: Annotated[str, typer.Option("--class", help="Class UUID of the devices this image is for")],
    version: Annotated[str, typer.Option("--version", help="Version the device reports once it runs the image")],
    seq: Annotated[int, typer.Option("--seq", min=0, help="Sequence number; devices refuse any not above theirs")],
    out: Annotated[Path, typer.Option("--out", help="The package (SUIT envelope) to write")],
    uri: Annotated[str | None, typer.Option("--uri", help="Leave the image out: devices fetch it from this URI")]
    = None,
) -> None:
    """Sign IMAGE into a SUIT envelope (the image integrated, or fetched from --uri)."""
    data = _read(image, "image")
    manifest = ReleaseManifest(sequence_number=seq, vendor_id=_uuid(vendor, "--vendor"),
                               class_id=_uuid(device_class, "--class"), image_digest=hashlib.sha256(data).digest(),
                               image_size=len(data), image_uri=uri, version=version)
    envelope = build_envelope(manifest, [_private_key(key)], image=None if uri else data)
    try:
        out.write_bytes(envelope)
    except OSError as e:
        raise fail(f"cannot write {out}: {e.strerror}", 2) from None
    console.print(f"{out}: {len(envelope)} bytes, version {version}, sequence {seq}, image {len(data)} bytes "
                  f"sha256 {hashlib.sha256(data).hexdigest()[:16]}...", highlight=False)


@firmware_app.command("authorise")
def authorise(
    package: Annotated[Path, typer.Argument(help="A signed package")],
    key: Annotated[Path, typer.Option("--key", help="Private key of the authorising party (PEM)")],
    out: Annotated[Path, typer.Option("--out", help="The package with the added signature")],
) -> None:
    """Add a signature to a signed package (an operator authorising an OEM release); the manifest is unchanged."""
    try:
        signed = add_signature(_read(package, "package"), _private_key(key))
    except FirmwareError as e:
        raise fail(f"{package}: {e}", 2) from None
    try:
        out.write_bytes(signed)
    except OSError as e:
        raise fail(f"cannot write {out}: {e.strerror}", 2) from None
    console.print(f"{out}: {len(signed)} bytes, signatures now include {key_id(_private_key(key).public_key()).hex()}",
                  highlight=False)


@firmware_app.command("inspect")
def inspect(
    package: Annotated[Path, typer.Argument(help="A package (SUIT envelope)")],
    trust: Annotated[list[Path] | None, typer.Option(
        "--trust", help="Public key (PEM) that must have signed it; repeat for several")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON")] = False,
) -> None:
    """Print the manifest, and check the signatures against every --trust key (non-zero exit if one fails)."""
    data = _read(package, "package")
    try:
        view = describe(data)
    except FirmwareError as e:
        raise fail(f"{package} is not a SUIT envelope we can read: {e}", 2) from None
    verdict: dict[str, Any] | None = None
    if trust:
        anchors = [_public_key(p) for p in trust]
        try:
            verify_envelope(data, trust_anchors=anchors, max_size=MAX_PACKAGE)
            verdict = {"verified": True, "trusted_keys": [key_id(a).hex() for a in anchors]}
        except FirmwareError as e:
            verdict = {"verified": False, "error": type(e).__name__, "message": str(e),
                       "update_result": int(e.update_result)}
    if as_json:
        print(json.dumps({"manifest": view, "verification": verdict}, indent=2, default=str))
    else:
        console.print_json(json.dumps(view, default=str))
        if verdict is not None and verdict["verified"]:
            console.print(f"[green]signatures verified[/green] by {', '.join(verdict['trusted_keys'])}")
    if verdict is not None and not verdict["verified"]:
        raise fail(f"{package}: verification failed: {verdict['error']}: {verdict['message']}")


@firmware_app.command("update")
def update(
    endpoint: Annotated[str, typer.Argument(help="The device's endpoint name")],
    package: Annotated[Path, typer.Option("--package", help="The package to deliver")],
    method: Annotated[str | None, typer.Option("--method", help="push or pull (default: what the device offers)")]
    = None,
    wait: Annotated[bool, typer.Option("--wait", help="Show progress and wait for the device's result")] = False,
    timeout: Annotated[float, typer.Option("--timeout", help="Seconds the whole update may take")] = 300.0,
    block_size: Annotated[int, typer.Option("--block-size", help="Push block size (16..1024)")] = 1024,
    api: Annotated[str | None, typer.Option("--api", help="API base URL")] = None,
    data_dir: Annotated[Path | None, typer.Option("--data-dir", envvar="SCRATCH_DATA_DIR",
                                                  help="Server data directory")] = None,
) -> None:
    """Deliver a package to a device and have it install it; with --wait, exit non-zero unless it succeeded."""
    if method not in (None, "push", "pull"):
        raise fail(f"--method: {method!r} is not push or pull", 2)
    data = _read(package, "package")
    try:
        client = ApiClient.locate(api, data_dir, timeout=60.0)
        job = client.post_bytes(f"/api/devices/{endpoint}/firmware", data, method=method, timeout=timeout,
                                block_size=block_size)
        if not wait:
            console.print(f"update of {endpoint} started ({len(data)} bytes); follow it with "
                          f"`scratch firmware status {endpoint}`", highlight=False)
            return
        final = _follow(client, endpoint, len(data))
    except CliError as e:
        raise fail(str(e)) from None
    del job
    last = final.get("last") or {}
    if last.get("phase") != "succeeded":
        raise fail(f"{last.get('message') or endpoint + ': the update failed'}{_result_text(last)}")
    console.print(f"[green]{endpoint} updated[/green]: now runs {last.get('version') or '?'}{_result_text(last)}",
                  highlight=False)


@firmware_app.command("status")
def status(
    endpoint: Annotated[str, typer.Argument(help="The device's endpoint name")],
    api: Annotated[str | None, typer.Option("--api", help="API base URL")] = None,
    data_dir: Annotated[Path | None, typer.Option("--data-dir", envvar="SCRATCH_DATA_DIR",
                                                  help="Server data directory")] = None,
) -> None:
    """Show the last firmware update of a device (since the server started)."""
    try:
        job = ApiClient.locate(api, data_dir).get(f"/api/devices/{endpoint}/firmware")
    except CliError as e:
        raise fail(str(e)) from None
    print(json.dumps(job, indent=2))


def _result_text(step: dict[str, Any]) -> str:
    """`` (Update Result N)``; the label is in the message already when the message names it."""
    result = step.get("result")
    if result is None:
        return ""
    known = UpdateResult.known(result)
    label = known.label if known is not None else ""
    if label and label not in (step.get("message") or ""):
        return f" (Update Result {result}: {label})"
    return f" (Update Result {result})"


def _follow(client: ApiClient, endpoint: str, total: int) -> dict[str, Any]:
    """Show the update's progress until it ends; returns the final job."""
    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
               TextColumn("{task.fields[detail]}"), TimeElapsedColumn())
    final: dict[str, Any] = {}
    with Progress(*columns, console=err_console, transient=False) as progress:
        task = progress.add_task(endpoint, total=total, detail="")
        for line in client.stream_lines(f"/api/devices/{endpoint}/firmware/progress"):
            if line.get("done"):
                final = line
                break
            state = line.get("state")
            detail = f"{line.get('phase')}"
            if line.get("method"):
                detail += f" ({line['method']})"
            if line.get("blocks"):
                detail += f", {line['blocks']} blocks"
            if state is not None:
                detail += f", state {STATES.get(state, state)}"
            progress.update(task, completed=line.get("sent") or 0, detail=detail)
    return final
