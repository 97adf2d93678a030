"""``scratch release``: signing keys, releases (images signed into SUIT packages), approvals and class policies.

Works locally on the data directory, like ``scratch factory``: the database ``scratch.db``, the blobs folder and
the vault (:func:`bootstrap.vault.open_vault`: ``$SCRATCH_VAULT_KEY``, else the key file, created on first use
by the commands that sign). A running server on the same data directory sees the releases at once. Private keys
are never printed; ``key export`` gives the public key (the trust anchor devices are provisioned with). An OEM's
public key is registered with ``key add --public`` (no private part: it only verifies), and envelopes the OEM signed
on its own premises (``scratch firmware sign``) are verified against it and stored by ``import``. ``create --system``
makes one release of several components (images and data files) in one envelope; ``delta`` makes its differential
package for devices that run an earlier system release. Bad input exits 2 with a one-line error.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeElapsedColumn

from lwm2m_server.cli.common import err_console, fail, new_app, quiet_logs
from lwm2m_server.core.errors import InvalidRequestError, Lwm2mError, NotFoundError
from lwm2m_server.data_dir import create_private_file

if TYPE_CHECKING:
    from lwm2m_server.fota.releases import Releases, SigningKeys
    from lwm2m_server.storage.database import Database

release_app = new_app(help="Releases: images signed into packages with named keys, "
                      "approvals by deployment keys, device-class policies.")
key_app = new_app(help="Named signing keys (private keys sealed in the vault, or public-only keys of an OEM).")
class_app = new_app(help="Device-class policies (e.g. require a deployment approval).")
release_app.add_typer(key_app, name="key")
release_app.add_typer(class_app, name="class")

console = Console(soft_wrap=True)

MAX_IMAGE = 64 << 20
MAX_PACKAGE = MAX_IMAGE + (1 << 16)  # an envelope: the integrated image, manifest and signatures
PROGRESS_FROM = 8 << 20  # a progress bar (stderr) when the images total this many bytes
CHUNK = 1 << 20

DataDirOpt = Annotated[Path | None, typer.Option("--data-dir", envvar="SCRATCH_DATA_DIR",
                                                 help="Server data directory (holds the database; the vault key is "
                                                 "kept elsewhere, see `scratch server --help`)")]
TenantOpt = Annotated[str, typer.Option("--tenant", help="Tenant the keys and releases belong to")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON")]





def _when(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


class _Stores:
    def __init__(self, database: Database, keys: SigningKeys, releases: Releases) -> None:
        self.database = database
        self.keys = keys
        self.releases = releases


@contextmanager
def _open(data_dir: Path | None, *, need_keys: bool) -> Iterator[_Stores]:
    """The key and release stores of the data directory. Without ``need_keys`` (nothing is sealed or opened) the
    vault is a throwaway one, so such commands never create a key file. Errors become one-line exits: 2 for bad
    input (unknown names, wrong roles...), 1 otherwise."""
    from bootstrap.vault import Vault, open_vault
    from lwm2m_server.data_dir import default_data_dir
    from lwm2m_server.fota.releases import Releases, SigningKeys
    from lwm2m_server.storage.database import Database

    quiet_logs()
    folder = data_dir or default_data_dir()
    try:
        database = Database.for_data_dir(folder)
    except Lwm2mError as e:
        raise fail(str(e)) from None
    try:
        vault = open_vault(folder) if need_keys else Vault.generate()
        keys = SigningKeys.over(database, vault)
        yield _Stores(database, keys, Releases.over(database, folder, keys))
    except (InvalidRequestError, NotFoundError) as e:
        raise fail(str(e), 2) from None
    except Lwm2mError as e:
        raise fail(str(e)) from None
    finally:
        database.close()


# ------------------------------------------------------------------------------------------------------ keys


@key_app.command("create")
def key_create(
    name: Annotated[str, typer.Argument(help="Key name (letters, digits, ._-)")],
    role: Annotated[str, typer.Option("--role", help="release (signs releases), deployment (approves them) or "
                                      "attestation (signs reports)")] = "release",
    alg: Annotated[str, typer.Option("--alg", help="ES256 (ECDSA P-256) or EdDSA (Ed25519)")] = "ES256",
    data_dir: DataDirOpt = None,
    tenant: TenantOpt = "default",
) -> None:
    """Create a named signing key; its private key is sealed in the vault and never printed."""
    from lwm2m_server.fota.releases import ALGORITHMS, ROLES

    if role not in ROLES:
        raise fail(f"--role: {role!r} is not one of {', '.join(ROLES)}", 2)
    if alg.lower() not in {a.lower() for a in ALGORITHMS}:
        raise fail(f"--alg: {alg!r} is not one of {', '.join(ALGORITHMS)}", 2)
    with _open(data_dir, need_keys=True) as stores:
        key = stores.keys.create(name, role, alg=alg, tenant_id=tenant, now=time.time())
    console.print(f"created {key.role} key {key.name} ({key.alg}), kid {key.kid}", highlight=False)


@key_app.command("add")
def key_add(
    name: Annotated[str, typer.Argument(help="Key name (letters, digits, ._-)")],
    public: Annotated[Path, typer.Option("--public", help="The key's PUBLIC key (PEM file): e.g. an OEM's release "
                                         "key, whose private part stays with the OEM")],
    role: Annotated[str, typer.Option("--role", help="release, deployment or attestation")] = "release",
    data_dir: DataDirOpt = None,
    tenant: TenantOpt = "default",
) -> None:
    """Register a public-only key: it verifies what its owner signed elsewhere and never signs here."""
    from lwm2m_server.fota.releases import ROLES

    if role not in ROLES:
        raise fail(f"--role: {role!r} is not one of {', '.join(ROLES)}", 2)
    try:
        if public.stat().st_size > 1 << 16:
            raise fail(f"{public} is too large for a public key", 2)
        pem = public.read_bytes()
    except OSError as e:
        raise fail(f"cannot read public key {public}: {e.strerror}", 2) from None
    if b"PRIVATE" in pem:
        raise fail(f"{public} holds a private key; give the public key only (the .pub file)", 2)
    with _open(data_dir, need_keys=False) as stores:
        key = stores.keys.add_public(name, role, pem, tenant_id=tenant, now=time.time())
    console.print(f"added public-only {key.role} key {key.name} ({key.alg}), kid {key.kid}", highlight=False)


@key_app.command("list")
def key_list(data_dir: DataDirOpt = None, tenant: TenantOpt = "default", as_json: JsonOpt = False) -> None:
    """List the tenant's signing keys (name, role, algorithm, kid, private part held or public-only, created).
    Never private keys."""
    with _open(data_dir, need_keys=False) as stores:
        keys = stores.keys.list(tenant_id=tenant)
    rows = [{k: v for k, v in key.as_dict().items() if k != "public_pem"} for key in keys]
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    if not rows:
        console.print("no signing keys", highlight=False)
        return
    from rich.table import Table

    table = Table()
    for column in ("name", "role", "alg", "kid", "private", "created"):
        table.add_column(column, overflow="fold")
    for key in keys:
        table.add_row(key.name, key.role, key.alg, key.kid, "vault" if key.has_private else "none (public-only)",
                      _when(key.created_at))
    console.print(table)


@key_app.command("export")
def key_export(
    name: Annotated[str, typer.Argument(help="Key name")],
    out: Annotated[Path | None, typer.Option("--out", help="File to create (never overwritten); default stdout")]
    = None,
    data_dir: DataDirOpt = None,
    tenant: TenantOpt = "default",
) -> None:
    """Print (or write) a key's PUBLIC key as PEM: the trust anchor devices are provisioned with."""
    with _open(data_dir, need_keys=False) as stores:
        key = stores.keys.get(name, tenant_id=tenant)
    if out is None:
        print(key.public_pem, end="")
        return
    try:
        create_private_file(out, key.public_pem.encode())
        out.chmod(0o644)
    except FileExistsError:
        raise fail(f"{out} exists; not overwriting it", 2) from None
    except OSError as e:
        raise fail(f"cannot write {out}: {e.strerror}", 2) from None
    console.print(f"public key of {key.role} key {key.name} (kid {key.kid}) written to {out}", highlight=False)


# -------------------------------------------------------------------------------------------------- releases


def _read_images(paths: list[Path], *, limit: int = MAX_IMAGE, what: str = "image",
                 names: list[str] | None = None) -> list[tuple[str, bytes]]:
    """Each file whole (named by ``names``, else by file name), refusing missing, empty and oversized ones (exit 2);
    a progress bar for big inputs."""
    sizes: list[int] = []
    for path in paths:
        try:
            if not path.is_file():
                raise fail(f"{path}: no such file", 2)
            size = path.stat().st_size
        except OSError as e:
            raise fail(f"cannot read {what} {path}: {e.strerror}", 2) from None
        if size == 0:
            raise fail(f"{path} is empty", 2)
        if size > limit:
            raise fail(f"{path} has {size} bytes; a {what} may have at most {limit}", 2)
        sizes.append(size)
    names = names if names is not None else [p.name for p in paths]
    duplicate = next((n for n in names if names.count(n) > 1), None)
    if duplicate is not None:
        raise fail(f"two {what}s are named {duplicate!r}; they need distinct file names", 2)
    images: list[tuple[str, bytes]] = []
    with Progress(TextColumn("reading {task.description}"), BarColumn(), DownloadColumn(), TimeElapsedColumn(),
                  console=err_console, transient=True, disable=sum(sizes) < PROGRESS_FROM) as progress:
        for path, size, name in zip(paths, sizes, names, strict=True):
            task = progress.add_task(path.name, total=size)
            chunks: list[bytes] = []
            try:
                with path.open("rb") as f:
                    while chunk := f.read(CHUNK):
                        chunks.append(chunk)
                        progress.advance(task, len(chunk))
                        if sum(map(len, chunks)) > limit:
                            raise fail(f"{path} grew beyond {limit} bytes while being read", 2)
            except OSError as e:
                raise fail(f"cannot read {what} {path}: {e.strerror}", 2) from None
            data = b"".join(chunks)
            if not data:
                raise fail(f"{path} is empty", 2)
            images.append((name, data))
    return images


_COMPONENT_SPEC = re.compile(r"(?P<name>[^=@]+)(?:@(?P<version>[^=]+))?=(?P<file>.+?)(?::(?P<kind>image|data))?")


def _components(specs: list[str], after: list[str]) -> list[tuple[str, str | None, str, Path]]:
    """``NAME[@VERSION]=FILE[:image|:data]`` specs as (name, version, kind, path), checked against ``--after``
    (``NAME=DEP[,DEP...]``) names; exit 2 on a malformed one."""
    parsed: list[tuple[str, str | None, str, Path]] = []
    for spec in specs:
        m = _COMPONENT_SPEC.fullmatch(spec)
        if m is None:
            raise fail(f"component {spec!r}: expected NAME[@VERSION]=FILE[:data]", 2)
        parsed.append((m["name"], m["version"], m["kind"] or "image", Path(m["file"])))
    names = {name for name, _, _, _ in parsed}
    for item in after:
        name, _, deps = item.partition("=")
        if name not in names or not deps:
            raise fail(f"--after {item!r}: expected COMPONENT=DEP[,DEP...] naming a component given", 2)
    return parsed


def _after(after: list[str]) -> dict[str, tuple[str, ...]]:
    deps: dict[str, tuple[str, ...]] = {}
    for item in after:
        name, _, listed = item.partition("=")
        deps[name] = deps.get(name, ()) + tuple(d.strip() for d in listed.split(",") if d.strip())
    return deps


@release_app.command("create")
def create(
    images: Annotated[list[str], typer.Argument(help="Image files (one package each); with --system, components "
                                                "NAME[@VERSION]=FILE[:data], installed in the order given",
                                                metavar="IMAGE...")],
    vendor: Annotated[str, typer.Option("--vendor", help="Vendor: a UUID, or a domain name (UUIDv5 of it)")],
    device_class: Annotated[str, typer.Option("--class", help="Device class: a UUID, or a name (UUIDv5 under the "
                                              "vendor)")],
    version: Annotated[str, typer.Option("--version", help="Version the devices report once they run it")],
    key: Annotated[str | None, typer.Option("--key", help="Release key (default: the key named 'release', "
                                            "created on first use)")] = None,
    fmt: Annotated[str, typer.Option("--format", help="suit (signed SUIT envelopes) or opaque (the image is the "
                                     "package, for third-party clients)")] = "suit",
    system: Annotated[bool, typer.Option("--system", help="One system release of several components in ONE signed "
                                         "envelope, installed all or none: each argument is NAME[@VERSION]=FILE"
                                         "[:data] (NAME: lowercase letters, digits, _-; VERSION: default --version; "
                                         ":data for a file that is stored, not booted, e.g. a configuration)")]
    = False,
    after: Annotated[list[str] | None, typer.Option("--after", help="With --system: COMPONENT=DEP[,DEP...], "
                                                    "COMPONENT installs after the earlier components DEP "
                                                    "(repeatable)")] = None,
    data_dir: DataDirOpt = None,
    tenant: TenantOpt = "default",
) -> None:
    """Make a release of IMAGE(s) with the next sequence number of the class. The last stdout line is its id.

    Example: scratch release create --system app=app.bin radio@7.1=radio.bin config=config.json:data
    --after config=app,radio --vendor acme.example --class sensor --version 2.0"""
    if fmt not in ("suit", "opaque"):
        raise fail(f"--format: {fmt!r} is not suit or opaque", 2)
    if fmt == "opaque" and key is not None:
        raise fail("--key: an opaque release is not signed", 2)
    if system:
        if fmt != "suit":
            raise fail("--system: a system release is one signed SUIT envelope (no --format opaque)", 2)
        _create_system(images, after or [], vendor=vendor, device_class=device_class, version=version, key=key,
                       data_dir=data_dir, tenant=tenant)
        return
    if after:
        raise fail("--after: only with --system", 2)
    data = _read_images([Path(i) for i in images])
    total = sum(len(d) for _, d in data)
    with _open(data_dir, need_keys=fmt == "suit") as stores:
        busy = "signing and storing" if fmt == "suit" else "storing"
        with err_console.status(busy, spinner="dots") if total >= PROGRESS_FROM else _nothing():
            release = stores.releases.create(data, vendor=vendor, class_name=device_class, version=version,
                                             key=key, package_format=fmt, tenant_id=tenant, now=time.time())
    data.clear()
    signed = f", signed by {release.key_name} ({release.signed_by})" if release.signed_by else ""
    console.print(f"release {release.id}: {release.class_name} {release.version}, sequence "
                  f"{release.sequence_number}, {len(release.images)} image(s), {release.package_format}{signed}",
                  highlight=False)
    print(release.id)


def _create_system(specs: list[str], after: list[str], *, vendor: str, device_class: str, version: str,
                   key: str | None, data_dir: Path | None, tenant: str) -> None:
    from lwm2m_server.fota.releases import SystemComponent

    parsed = _components(specs, after)
    deps = _after(after)
    data = _read_images([path for _, _, _, path in parsed], limit=MAX_IMAGE, what="component",
                        names=[name for name, _, _, _ in parsed])
    components = [SystemComponent(name, content, kind=kind, version=v, after=deps.get(name, ()))
                  for (name, v, kind, _), (_, content) in zip(parsed, data, strict=True)]
    total = sum(len(d) for _, d in data)
    data.clear()
    busy = err_console.status("signing and storing", spinner="dots") if total >= PROGRESS_FROM else _nothing()
    with _open(data_dir, need_keys=True) as stores, busy:
        release = stores.releases.create_system(components, vendor=vendor, class_name=device_class,
                                                version=version, key=key, tenant_id=tenant, now=time.time())
    components.clear()
    console.print(f"release {release.id}: {release.class_name} {release.version}, sequence "
                  f"{release.sequence_number}, system of {len(release.images)} component(s) "
                  f"({', '.join(i.name for i in release.images)}) in one package of "
                  f"{release.images[0].package_size} bytes, signed by {release.key_name} ({release.signed_by})",
                  highlight=False)
    print(release.id)


@release_app.command("delta")
def delta(
    release_id: Annotated[str, typer.Argument(help="System release id (rel-...) the devices update to")],
    base: Annotated[str, typer.Option("--from", help="System release id the devices run now (an earlier release "
                                      "of the same class)")],
    data_dir: DataDirOpt = None,
    tenant: TenantOpt = "default",
    as_json: JsonOpt = False,
) -> None:
    """Make (once; again: the same) the differential package of a system release for devices that run an earlier
    one: each component they have travels as a delta, signed with the release's key and countersigned by every key
    that approved it. Prints its size against the full package's."""
    from lwm2m_server.storage.release_store import saving_percent

    with _open(data_dir, need_keys=True) as stores:
        with err_console.status("making the delta", spinner="dots"):
            made = stores.releases.add_delta(release_id, base_release_id=base, tenant_id=tenant, now=time.time())
        release = stores.releases.get(release_id, tenant_id=tenant)
    full = release.images[0].package_size
    saving = saving_percent(made.package_size, full)
    if as_json:
        print(json.dumps({**made.as_dict(), "full_package_size": full, "saving_percent": saving}, indent=2))
        return
    console.print(f"delta of {release.id} ({release.version}) from {made.base_release_id} ({made.base_version}): "
                  f"{made.package_size} bytes, full package {full} bytes, saving {saving:.1f} %; components as "
                  f"deltas: {', '.join(sorted(made.base_digests)) or 'none'}", highlight=False)
    print(made.package_sha256)


@release_app.command("import")
def import_(
    packages: Annotated[list[Path], typer.Argument(help="Signed packages (SUIT envelopes with the image integrated, "
                                                   "e.g. from `scratch firmware sign`), one per image")],
    key: Annotated[str, typer.Option("--key", help="Release key (its public part) the packages must be signed by")],
    origin: Annotated[str | None, typer.Option("--origin", help="Tenant the key belongs to (the OEM that signed); "
                                               "default: --tenant")] = None,
    data_dir: DataDirOpt = None,
    tenant: TenantOpt = "default",
    as_json: JsonOpt = False,
) -> None:
    """Verify pre-signed PACKAGE(s) against a release key and store them as one release, exactly as signed. The last
    stdout line is its id (with --json: the release as JSON).

    The key is looked up in --origin, else in --tenant, else among the OEM tenants that granted --tenant a device
    class. A key of another tenant needs that OEM's grant for the packages' class (refused otherwise, exit 1).
    Refused (exit 2): a package not signed by the key as it is, packages that disagree on vendor, class, sequence
    number or version, and a sequence number not above every release of the class in the tenant."""
    from lwm2m_server.fota.release_import import import_release
    from lwm2m_server.tenancy.service import system_principal
    from lwm2m_server.tenancy.sql import open_tenancy

    data = _read_images(packages, limit=MAX_PACKAGE, what="package")
    with _open(data_dir, need_keys=False) as stores:
        release = import_release(data, key_name=key, tenant_id=tenant, origin=origin, by=system_principal(),
                                 keys=stores.keys, releases=stores.releases,
                                 tenancy=open_tenancy(stores.database), now=time.time())
        origin = release.origin_tenant
    if as_json:
        print(json.dumps(release.as_dict(), indent=2))
        return
    source = f" of tenant {origin}" if origin else ""
    console.print(f"imported release {release.id}: {release.class_name} {release.version}, sequence "
                  f"{release.sequence_number}, {len(release.images)} package(s), signed by {release.key_name}"
                  f"{source} ({release.signed_by})", highlight=False)
    print(release.id)


@contextmanager
def _nothing() -> Iterator[None]:
    yield


@release_app.command("list")
def list_releases(data_dir: DataDirOpt = None, tenant: TenantOpt = "default", as_json: JsonOpt = False) -> None:
    """List the tenant's releases, newest first."""
    with _open(data_dir, need_keys=False) as stores:
        releases = stores.releases.list(tenant_id=tenant)
    if as_json:
        print(json.dumps([r.as_dict() for r in releases], indent=2))
        return
    if not releases:
        console.print("no releases", highlight=False)
        return
    from rich.table import Table

    table = Table()
    for column in ("id", "vendor", "class", "version", "seq", "format", "images", "approved by", "created"):
        table.add_column(column, overflow="fold")
    for r in releases:
        table.add_row(r.id, r.vendor, r.class_name, r.version, str(r.sequence_number), r.package_format,
                      str(len(r.images)), ", ".join(a[0] for a in r.approvals), _when(r.created_at))
    console.print(table)


@release_app.command("show")
def show(
    release_id: Annotated[str, typer.Argument(help="Release id (rel-...)")],
    data_dir: DataDirOpt = None,
    tenant: TenantOpt = "default",
    as_json: JsonOpt = False,
) -> None:
    """Show one release: identifiers, sequence number, signers, images (a system release: its components) and their
    packages, and the deltas of a system release."""
    with _open(data_dir, need_keys=False) as stores:
        release = stores.releases.get(release_id, tenant_id=tenant)
    if as_json:
        print(json.dumps(release.as_dict(), indent=2))
        return
    from rich.table import Table

    from lwm2m_server.storage.release_store import saving_percent

    approvals = ", ".join(a[0] for a in release.approvals) or "none"
    signed = f"{release.key_name} ({release.signed_by})" if release.signed_by else "not signed"
    console.print(f"release {release.id}: {release.vendor} / {release.class_name} {release.version}, sequence "
                  f"{release.sequence_number}, {release.package_format}, signed by {signed}, approved by "
                  f"{approvals}, created {_when(release.created_at)}", highlight=False)
    system = release.package_format == "system"
    table = Table(title="components" if system else "images")
    for column in ("name", "kind", "version", "after", "size", "sha256", "package"):
        table.add_column(column, overflow="fold")
    for i in release.images:
        table.add_row(i.name, i.kind, i.version or release.version, ", ".join(i.after), str(i.size),
                      i.image_sha256[:16], f"{i.package_size} B {i.package_sha256[:16]}")
    console.print(table)
    if release.deltas:
        full = release.images[0].package_size
        deltas = Table(title=f"deltas (full package: {full} bytes)")
        for column in ("from release", "from version", "size", "saving", "approved by", "sha256"):
            deltas.add_column(column, overflow="fold")
        for d in release.deltas:
            deltas.add_row(d.base_release_id, d.base_version, str(d.package_size),
                           f"{saving_percent(d.package_size, full):.1f} %",
                           ", ".join(sorted(d.approved_package_sha256 or {})), d.package_sha256[:16])
        console.print(deltas)


@release_app.command("approve")
def approve(
    release_id: Annotated[str, typer.Argument(help="Release id (rel-...)")],
    key: Annotated[str, typer.Option("--key", help="Deployment key that countersigns the release")],
    data_dir: DataDirOpt = None,
    tenant: TenantOpt = "default",
) -> None:
    """Countersign every package of a release, and its deltas, with a deployment key (idempotent)."""
    with _open(data_dir, need_keys=True) as stores:
        release = stores.releases.approve(release_id, key, tenant_id=tenant, now=time.time())
    shas = ", ".join(f"{i.name} {(i.approved_package_sha256 or {}).get(key, '?')[:16]}..." for i in release.images)
    console.print(f"release {release.id} approved by {key}: {shas}", highlight=False)


# ---------------------------------------------------------------------------------------------------- classes


@class_app.command("set")
def class_set(
    device_class: Annotated[str, typer.Argument(help="Device class: a UUID or a name")],
    vendor: Annotated[str, typer.Option("--vendor", help="Vendor: a UUID or a domain name")],
    require_approval: Annotated[bool, typer.Option("--require-approval/--no-require-approval",
                                                   help="Campaigns for this class need a deployment approval")],
    data_dir: DataDirOpt = None,
    tenant: TenantOpt = "default",
) -> None:
    """Set a device class's policy."""
    with _open(data_dir, need_keys=False) as stores:
        policy = stores.releases.set_class_policy(device_class, vendor, require_approval=require_approval,
                                                  tenant_id=tenant, now=time.time())
    needs = "requires" if policy.require_approval else "does not require"
    console.print(f"class {policy.class_name} of {policy.vendor} ({policy.class_id}) {needs} a deployment "
                  "approval", highlight=False)


@class_app.command("list")
def class_list(data_dir: DataDirOpt = None, tenant: TenantOpt = "default", as_json: JsonOpt = False) -> None:
    """List the configured device classes."""
    with _open(data_dir, need_keys=False) as stores:
        policies = stores.releases.class_policies(tenant_id=tenant)
    rows: list[dict[str, Any]] = [p.as_dict() for p in policies]
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    if not rows:
        console.print("no configured classes", highlight=False)
        return
    for p in policies:
        console.print(f"{p.vendor} / {p.class_name} ({p.class_id}): "
                      f"{'requires' if p.require_approval else 'no'} approval", highlight=False)
