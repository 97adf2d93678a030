"""Multi-component ("system") SUIT manifests: several images and data files of one device class in one envelope,
installed all or none, each component either whole or as a delta from the image the device already runs.

:func:`build_system_envelope` writes, for a :class:`SystemRelease` of components ``app`` (a delta, index 0) and
``config`` (a full data file, index 1), this manifest (diagnostic notation; draft-ietf-suit-manifest-37 commands,
``/ ... /`` are comments; labels below -255 are Private Use in every SUIT registry, see
:data:`~firmware_object.suit.labels.PRIVATE_USE_BELOW`)::

    3: << {
      1: 1, 2: 8,                                   / manifest-version, manifest-sequence-number /
      3: << {                                       / common /
        2: [[h'617070'], [h'636f6e666967'],         / components: "app", "config", in install order, /
            [h'617070', h'64656c7461']],            /   then one [h'<name>', h'delta'] per delta /
        4: << [                                     / shared-sequence /
          12, true, 20, {1: h'<vendor uuid>', 2: h'<class uuid>'}, 1, 15, 2, 15,
          12, 0, 20, {3: << [-16, h'<app full sha-256>'] >>, 14: 1048576},   / every FULL image /
          12, 1, 20, {3: << [-16, h'<config sha-256>'] >>, 14: 812}
        ] >>
      } >>,
      20: << [                                      / install, in component order /
        12, 0,                                      / app: a delta /
        20, {3: << [-16, h'<base sha-256>'] >>, 14: 1048576}, 3, 15,   / dependency: the installed image is the base /
        12, 2,                                      / the delta, fetched into [h'app', h'delta'] /
        20, {3: << [-16, h'<delta sha-256>'] >>, 14: 20950, 21: "#app"}, 21, 2, 3, 15,
        12, 0,                                      / copy = apply the delta (private parameter -256) /
        20, {3: << [-16, h'<app full sha-256>'] >>, 14: 1048576, 22: 2, -256: "detools-sequential-heatshrink"},
        22, 2, 3, 15,                               / directive-copy, condition-image-match: the full image /
        12, 1, 20, {21: "#config"}, 21, 2, 3, 15    / config: a full payload: uri, fetch, image-match /
      ] >>,
      7: << [12, [0, 1], 3, 15] >>,                 / validate: every component's full image /
      9: << [12, [0], 23, 2] >>,                    / invoke: image components only (absent if none) /
      23: << {"en": {                               / text (inside the signed manifest) /
        -256: "2025.1",                             / system-version: marks a system manifest /
        [h'617070']: {6: "2.0.0", -256: "image", -258: "1.9.0"},   / version, kind, delta-base-version /
        [h'636f6e666967']: {6: "7", -256: "data", -257: "app"}     / version, kind, after (comma-separated) /
      }} >>
    } >>,
    "#app": h'<delta>', "#config": h'<file>'          / integrated payloads, one per component /

A component's payload is always integrated at ``"#<name>"``; the envelope around the manifest (authentication
wrapper, signatures) is :func:`firmware_object.suit.envelope.build_envelope`'s. System manifests are read only in
exactly this layout (the facts are read back, re-encoded and compared byte for byte), so they cannot be severed.

Invariants: a :class:`SystemRelease` names each component once; components install in the order given, and a
component's ``after`` names only components earlier in that order; a :class:`VerifiedSystem` exists only for an
envelope whose signatures, digests, sequence number, identifiers and every integrated payload's digest and size
passed (a delta's payload is checked as it travels; the image it builds is checked by :func:`apply_component`).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final, Literal

from firmware_object.delta import DELTA_FORMAT, apply_delta
from firmware_object.errors import (
    DeltaBaseMismatchError,
    DeltaError,
    ImageMismatchError,
    PackageTooLargeError,
    RollbackError,
    SuitDecodeError,
    SuitError,
)
from firmware_object.suit import cbor
from firmware_object.suit.envelope import TEXT_LANGUAGE, signed_envelope
from firmware_object.suit.keys import PrivateKey, PublicKey, key_id
from firmware_object.suit.labels import (
    REPORT_ALL,
    REPORT_ON_FAILURE,
    Command,
    CommonKey,
    CoseAlg,
    ManifestKey,
    Parameter,
    TextComponentKey,
    TextKey,
)
from firmware_object.suit.manifest import SHA256_LENGTH, UINT64_MAX, ManifestView, parse_manifest
from firmware_object.suit.structure import SuitDigest, decode_envelope
from firmware_object.suit.verify import _check_conditions, _check_digests, _check_signatures

ComponentKind = Literal["image", "data"]
COMPONENT_NAME: Final = re.compile(r"[a-z][a-z0-9_-]{0,31}")
"""A component's name: also its SUIT component identifier ``[h'<utf-8 name>']`` and its integrated payload key."""
COMPONENT_KINDS: Final[Mapping[str, ComponentKind]] = {"image": "image", "data": "data"}
DELTA_COMPONENT_SUFFIX: Final = b"delta"
"""A delta is fetched into component ``[h'<name>', h'delta']`` before it is applied to ``[h'<name>']``."""
MAX_COMPONENTS: Final = 16
AFTER_SEPARATOR: Final = ","


def payload_key(name: str) -> str:
    """The envelope key (and fetch URI) of a component's integrated payload: ``"#<name>"``."""
    return f"#{name}"


def _sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


@dataclass(frozen=True)
class DeltaSource:
    """The payload of a component is a delta (``DELTA_FORMAT``) from the image whose SHA-256 is ``base_digest``
    (``base_size`` bytes): the device must hold exactly that image (the delta's dependency)."""

    base_digest: bytes
    base_size: int
    base_version: str | None = None

    def __post_init__(self) -> None:
        if len(self.base_digest) != SHA256_LENGTH:
            raise ValueError("a delta's base digest must be a 32-byte SHA-256 digest")
        if not 0 <= self.base_size <= UINT64_MAX:
            raise ValueError(f"base size {self.base_size} is not a uint64")
        if self.base_version is not None and not self.base_version:
            raise ValueError("base version must be None or non-empty")

    def matches(self, installed: bytes | None) -> bool:
        """Whether ``installed`` is exactly this base (size and SHA-256)."""
        return (
            installed is not None
            and len(installed) == self.base_size
            and hmac.compare_digest(_sha256(installed), self.base_digest)
        )


@dataclass(frozen=True)
class ComponentRelease:
    """One component of a system release: the full image's digest and size are what the device ends up with.

    ``delta`` None: the payload is the full image; else the payload is a delta from ``delta.base_digest``.
    ``after``: names of components that must be installed before this one (dependencies)."""

    name: str
    kind: ComponentKind
    version: str
    digest: bytes
    size: int
    payload_digest: bytes
    payload_size: int
    delta: DeltaSource | None = None
    after: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not COMPONENT_NAME.fullmatch(self.name):
            raise ValueError(f"component name {self.name!r} does not match {COMPONENT_NAME.pattern}")
        if self.kind not in COMPONENT_KINDS:
            raise ValueError(f"component kind {self.kind!r} is not one of {', '.join(COMPONENT_KINDS)}")
        if not self.version:
            raise ValueError(f"component {self.name}: the version must be non-empty")
        if len(self.digest) != SHA256_LENGTH or len(self.payload_digest) != SHA256_LENGTH:
            raise ValueError(f"component {self.name}: digests must be 32-byte SHA-256 digests")
        if not (0 <= self.size <= UINT64_MAX and 0 <= self.payload_size <= UINT64_MAX):
            raise ValueError(f"component {self.name}: sizes must be uint64")
        if self.delta is None and (self.payload_digest != self.digest or self.payload_size != self.size):
            raise ValueError(f"component {self.name}: a full payload is the image itself (same digest and size)")
        if len(set(self.after)) != len(self.after) or self.name in self.after:
            raise ValueError(f"component {self.name}: 'after' repeats a name or names the component itself")
        for name in self.after:
            if not COMPONENT_NAME.fullmatch(name):
                raise ValueError(f"component {self.name}: 'after' names {name!r}, not a component name")

    @classmethod
    def full(
        cls, name: str, image: bytes, *, version: str, kind: ComponentKind = "image", after: Sequence[str] = ()
    ) -> ComponentRelease:
        """A component whose payload is the whole ``image``."""
        digest = _sha256(image)
        return cls(name, kind, version, digest, len(image), digest, len(image), None, tuple(after))

    @classmethod
    def from_delta(
        cls,
        name: str,
        image: bytes,
        delta: bytes,
        base: bytes,
        *,
        version: str,
        base_version: str | None = None,
        kind: ComponentKind = "image",
        after: Sequence[str] = (),
    ) -> ComponentRelease:
        """A component whose payload is ``delta`` (made by :func:`firmware_object.delta.make_delta` from ``base``
        to ``image``). ValueError unless ``delta`` applied to ``base`` gives exactly ``image``."""
        try:
            rebuilt = apply_delta(base, delta, max_size=len(image))
        except DeltaError as exc:
            raise ValueError(f"component {name}: the delta does not apply to the base: {exc}") from exc
        if rebuilt != image:
            raise ValueError(f"component {name}: the delta applied to the base does not give the image")
        source = DeltaSource(_sha256(base), len(base), base_version)
        return cls(name, kind, version, _sha256(image), len(image), _sha256(delta), len(delta), source, tuple(after))


@dataclass(frozen=True)
class SystemRelease:
    """What a system envelope declares: sequence number, identifiers, the system's version, its components."""

    sequence_number: int
    vendor_id: uuid.UUID
    class_id: uuid.UUID
    version: str
    components: tuple[ComponentRelease, ...]

    def __post_init__(self) -> None:
        if not 0 <= self.sequence_number <= UINT64_MAX:
            raise ValueError(f"sequence number {self.sequence_number} is not a uint64")
        if not self.version:
            raise ValueError("the system version must be non-empty")
        if not 1 <= len(self.components) <= MAX_COMPONENTS:
            raise ValueError(f"a system release has 1 to {MAX_COMPONENTS} components")
        seen: set[str] = set()
        for component in self.components:
            if component.name in seen:
                raise ValueError(f"component {component.name!r} appears twice")
            for name in component.after:
                if name not in seen:
                    raise ValueError(
                        f"component {component.name!r} must install after {name!r}, which is not an earlier component"
                    )
            seen.add(component.name)


@dataclass(frozen=True)
class VerifiedComponent:
    """One component of a verified system envelope, with its (checked) payload bytes."""

    name: str
    kind: ComponentKind
    version: str
    digest: bytes
    size: int
    payload: bytes
    delta: DeltaSource | None
    after: tuple[str, ...]


@dataclass(frozen=True)
class VerifiedSystem:
    sequence_number: int
    vendor_id: uuid.UUID | None
    class_id: uuid.UUID | None
    version: str
    components: tuple[VerifiedComponent, ...]
    """In install order."""
    manifest_digest: bytes
    signer_key_ids: tuple[bytes, ...]

    def component(self, name: str) -> VerifiedComponent:
        """The component named ``name`` (KeyError when there is none)."""
        for component in self.components:
            if component.name == name:
                return component
        raise KeyError(name)


# --- building --------------------------------------------------------------------------------------------------------


def build_system_envelope(
    release: SystemRelease, payloads: Mapping[str, bytes], signers: Sequence[PrivateKey]
) -> bytes:
    """A tagged envelope for ``release`` with each component's payload integrated at ``"#<name>"``, signed by each
    of ``signers``. ValueError when a payload does not match its component's payload digest and size."""
    integrated: dict[str, bytes] = {}
    for component in release.components:
        payload = payloads.get(component.name)
        if payload is None:
            raise ValueError(f"no payload for component {component.name!r}")
        if len(payload) != component.payload_size or _sha256(payload) != component.payload_digest:
            raise ValueError(f"the payload of component {component.name!r} does not match its digest and size")
        integrated[payload_key(component.name)] = payload
    unknown = set(payloads) - {component.name for component in release.components}
    if unknown:
        raise ValueError(f"payloads for unknown components: {', '.join(sorted(unknown))}")
    return signed_envelope(encode_system_manifest(release), integrated, signers)


def encode_system_manifest(release: SystemRelease) -> bytes:
    """The deterministic SUIT_Manifest of a system release (layout in the module docstring)."""
    names = [component.name for component in release.components]
    deltas = [index for index, component in enumerate(release.components) if component.delta is not None]
    delta_index = {index: len(names) + position for position, index in enumerate(deltas)}
    identifiers: list[list[bytes]] = [[name.encode()] for name in names]
    identifiers += [[names[index].encode(), DELTA_COMPONENT_SUFFIX] for index in deltas]

    shared: list[object] = [
        Command.DIRECTIVE_SET_COMPONENT_INDEX,
        True,
        Command.DIRECTIVE_OVERRIDE_PARAMETERS,
        {Parameter.VENDOR_IDENTIFIER: release.vendor_id.bytes, Parameter.CLASS_IDENTIFIER: release.class_id.bytes},
        Command.CONDITION_VENDOR_IDENTIFIER,
        REPORT_ALL,
        Command.CONDITION_CLASS_IDENTIFIER,
        REPORT_ALL,
    ]
    install: list[object] = []
    for index, component in enumerate(release.components):
        shared += [
            Command.DIRECTIVE_SET_COMPONENT_INDEX,
            index,
            Command.DIRECTIVE_OVERRIDE_PARAMETERS,
            _image(component.digest, component.size),
        ]
        install += [Command.DIRECTIVE_SET_COMPONENT_INDEX, index]
        uri = payload_key(component.name)
        if component.delta is None:
            install += [
                Command.DIRECTIVE_OVERRIDE_PARAMETERS,
                {Parameter.URI: uri},
                Command.DIRECTIVE_FETCH,
                REPORT_ON_FAILURE,
                Command.CONDITION_IMAGE_MATCH,
                REPORT_ALL,
            ]
            continue
        install += [
            Command.DIRECTIVE_OVERRIDE_PARAMETERS,
            _image(component.delta.base_digest, component.delta.base_size),
            Command.CONDITION_IMAGE_MATCH,
            REPORT_ALL,
            Command.DIRECTIVE_SET_COMPONENT_INDEX,
            delta_index[index],
            Command.DIRECTIVE_OVERRIDE_PARAMETERS,
            {**_image(component.payload_digest, component.payload_size), Parameter.URI: uri},
            Command.DIRECTIVE_FETCH,
            REPORT_ON_FAILURE,
            Command.CONDITION_IMAGE_MATCH,
            REPORT_ALL,
            Command.DIRECTIVE_SET_COMPONENT_INDEX,
            index,
            Command.DIRECTIVE_OVERRIDE_PARAMETERS,
            {
                **_image(component.digest, component.size),
                Parameter.SOURCE_COMPONENT: delta_index[index],
                Parameter.DELTA_FORMAT: DELTA_FORMAT,
            },
            Command.DIRECTIVE_COPY,
            REPORT_ON_FAILURE,
            Command.CONDITION_IMAGE_MATCH,
            REPORT_ALL,
        ]
    common = {CommonKey.COMPONENTS: identifiers, CommonKey.SHARED_SEQUENCE: cbor.encode(shared)}
    members: dict[int, object] = {
        ManifestKey.MANIFEST_VERSION: 1,
        ManifestKey.MANIFEST_SEQUENCE_NUMBER: release.sequence_number,
        ManifestKey.COMMON: cbor.encode(common),
        ManifestKey.INSTALL: cbor.encode(install),
        ManifestKey.VALIDATE: cbor.encode(
            [Command.DIRECTIVE_SET_COMPONENT_INDEX, list(range(len(names))), Command.CONDITION_IMAGE_MATCH, REPORT_ALL]
        ),
        ManifestKey.TEXT: cbor.encode({TEXT_LANGUAGE: _text(release)}),
    }
    images = [index for index, component in enumerate(release.components) if component.kind == "image"]
    if images:
        members[ManifestKey.INVOKE] = cbor.encode(
            [Command.DIRECTIVE_SET_COMPONENT_INDEX, images, Command.DIRECTIVE_INVOKE, REPORT_ON_FAILURE]
        )
    return cbor.encode(members)


def _image(digest: bytes, size: int) -> dict[int, object]:
    return {Parameter.IMAGE_DIGEST: SuitDigest(CoseAlg.SHA_256, digest).encode(), Parameter.IMAGE_SIZE: size}


def _text(release: SystemRelease) -> dict[object, object]:
    text: dict[object, object] = {TextKey.SYSTEM_VERSION: release.version}
    for component in release.components:
        entries: dict[int, str] = {
            TextComponentKey.COMPONENT_VERSION: component.version,
            TextComponentKey.COMPONENT_KIND: component.kind,
        }
        if component.after:
            entries[TextComponentKey.COMPONENT_AFTER] = AFTER_SEPARATOR.join(component.after)
        if component.delta is not None and component.delta.base_version is not None:
            entries[TextComponentKey.DELTA_BASE_VERSION] = component.delta.base_version
        text[(component.name.encode(),)] = entries
    return text


# --- reading ---------------------------------------------------------------------------------------------------------


def is_system_envelope(data: bytes) -> bool:
    """Whether ``data`` decodes as an envelope whose manifest is a system manifest (never raises)."""
    try:
        envelope = decode_envelope(data)
        read_system_manifest(envelope.manifest_encoded)
    except (SuitError, ValueError):
        return False
    return True


def read_system_manifest(encoded: bytes) -> SystemRelease:
    """The :class:`SystemRelease` a manifest declares; :class:`SuitDecodeError` unless ``encoded`` is exactly what
    :func:`encode_system_manifest` writes for it (so every layout rule in the module docstring holds).
    Authenticates nothing."""
    return _read_system(encoded, parse_manifest(encoded))


def _read_system(encoded: bytes, manifest: ManifestView) -> SystemRelease:
    """:func:`read_system_manifest` of a manifest already parsed (so its shape is checked) into ``manifest``."""
    text = next((view for view in manifest.text if view.language == TEXT_LANGUAGE), None)
    if text is None or TextKey.SYSTEM_VERSION not in text.manifest:
        raise SuitDecodeError("not a system manifest: its text has no system-version (-256)")
    members = cbor.decode(encoded)
    assert isinstance(members, dict)  # parse_manifest checked it
    common = cbor.decode(_member(members.get(ManifestKey.COMMON)))
    assert isinstance(common, dict)
    named = [c.identifier for c in manifest.components if len(c.identifier) == 1]
    if not named or len(named) > MAX_COMPONENTS:
        raise SuitDecodeError(f"a system manifest has 1 to {MAX_COMPONENTS} components")
    tracker = _Tracker()
    tracker.run(cbor.decode(_member(common.get(CommonKey.SHARED_SEQUENCE))))
    full = {index: dict(tracker.params.get(index, {})) for index in range(len(named))}
    tracker.run(cbor.decode(_member(members.get(ManifestKey.INSTALL))))
    try:
        components = tuple(
            _component(index, identifier[0], full[index], tracker, text.components.get(identifier, {}))
            for index, identifier in enumerate(named)
        )
        ids = tracker.params.get(0, {})
        release = SystemRelease(
            sequence_number=manifest.sequence_number,
            vendor_id=uuid.UUID(bytes=_bytes(ids.get(Parameter.VENDOR_IDENTIFIER))),
            class_id=uuid.UUID(bytes=_bytes(ids.get(Parameter.CLASS_IDENTIFIER))),
            version=text.manifest[TextKey.SYSTEM_VERSION],
            components=components,
        )
    except (ValueError, UnicodeDecodeError) as exc:
        raise SuitDecodeError(f"not a system manifest: {exc}") from exc
    if encode_system_manifest(release) != encoded:
        raise SuitDecodeError("not a system manifest in the layout of firmware_object.suit.components")
    return release


class _Tracker:
    """Parameters per component through a command sequence, and the image-match and copy commands it runs."""

    def __init__(self) -> None:
        self.params: dict[int, dict[int, object]] = {}
        self.matches: dict[int, list[dict[int, object]]] = {}
        self.copies: dict[int, dict[int, object]] = {}
        self.selected: list[int] = [0]

    def run(self, commands: object) -> None:
        if not isinstance(commands, list):
            raise SuitDecodeError("a command sequence is not an array")
        for label, argument in zip(commands[::2], commands[1::2], strict=False):
            if label == Command.DIRECTIVE_SET_COMPONENT_INDEX:
                if argument is True:
                    self.selected = list(range(MAX_COMPONENTS * 2))
                else:
                    chosen = argument if isinstance(argument, list) else [argument]
                    self.selected = [i for i in chosen if isinstance(i, int) and not isinstance(i, bool)]
            elif label == Command.DIRECTIVE_OVERRIDE_PARAMETERS and isinstance(argument, dict):
                for index in self.selected:
                    self.params.setdefault(index, {}).update({k: v for k, v in argument.items() if isinstance(k, int)})
            elif label == Command.CONDITION_IMAGE_MATCH:
                for index in self.selected:
                    self.matches.setdefault(index, []).append(dict(self.params.get(index, {})))
            elif label == Command.DIRECTIVE_COPY:
                for index in self.selected:
                    self.copies[index] = dict(self.params.get(index, {}))


def _component(
    index: int, identifier: bytes, full: Mapping[int, object], tracker: _Tracker, text: Mapping[int, str]
) -> ComponentRelease:
    name = identifier.decode()
    digest, size = _digest_size(full)
    kind = COMPONENT_KINDS.get(text.get(TextComponentKey.COMPONENT_KIND, ""))
    if kind is None:
        raise ValueError(f"component {name}: its kind is not one of {', '.join(COMPONENT_KINDS)}")
    after_text = text.get(TextComponentKey.COMPONENT_AFTER)
    after = tuple(after_text.split(AFTER_SEPARATOR)) if after_text else ()
    version = text.get(TextComponentKey.COMPONENT_VERSION, "")
    copy = tracker.copies.get(index)
    if copy is None:
        return ComponentRelease(name, kind, version, digest, size, digest, size, None, after)
    if copy.get(Parameter.DELTA_FORMAT) != DELTA_FORMAT:
        raise ValueError(f"component {name}: delta format {copy.get(Parameter.DELTA_FORMAT)!r} is not {DELTA_FORMAT}")
    source = copy.get(Parameter.SOURCE_COMPONENT)
    base_checks = tracker.matches.get(index, [])
    payload_checks = tracker.matches.get(source, []) if isinstance(source, int) else []
    if not base_checks or not payload_checks:
        raise ValueError(f"component {name}: a delta without its base and payload checks")
    base_digest, base_size = _digest_size(base_checks[0])
    payload_digest, payload_size = _digest_size(payload_checks[0])
    delta = DeltaSource(base_digest, base_size, text.get(TextComponentKey.DELTA_BASE_VERSION))
    return ComponentRelease(name, kind, version, digest, size, payload_digest, payload_size, delta, after)


def _digest_size(params: Mapping[int, object]) -> tuple[bytes, int]:
    encoded, size = params.get(Parameter.IMAGE_DIGEST), params.get(Parameter.IMAGE_SIZE)
    if not isinstance(encoded, bytes) or not isinstance(size, int) or isinstance(size, bool):
        raise ValueError("an image without digest and size")
    return SuitDigest.decode(encoded, "image digest").value, size


def _member(value: object) -> bytes:
    if not isinstance(value, bytes):
        raise SuitDecodeError("not a system manifest: a required member is missing")
    return value


def _bytes(value: object) -> bytes:
    if not isinstance(value, bytes):
        raise ValueError("the vendor and class identifiers are not set for every component")
    return value


# --- verification ----------------------------------------------------------------------------------------------------


def verify_system_envelope(
    data: bytes,
    *,
    trust_anchors: Sequence[PublicKey],
    max_size: int,
    installed_sequence: int | None = None,
    vendor_id: uuid.UUID | None = None,
    class_id: uuid.UUID | None = None,
) -> VerifiedSystem:
    """Verify a system envelope in the order of :func:`firmware_object.suit.verify.verify_envelope` (same errors),
    then every integrated payload against its digest and size (:class:`ImageMismatchError`).

    A well-formed envelope whose manifest is not a system manifest raises :class:`SuitDecodeError` at the step
    where the manifest is parsed (after signatures and digests)."""
    if len(data) > max_size:
        raise PackageTooLargeError(f"package of {len(data)} bytes exceeds the limit of {max_size}")
    envelope = decode_envelope(data)
    _check_signatures(envelope, trust_anchors)
    _check_digests(envelope)
    manifest = parse_manifest(envelope.manifest_encoded, envelope.severed)
    release = _read_system(envelope.manifest_encoded, manifest)
    if installed_sequence is not None and manifest.sequence_number <= installed_sequence:
        raise RollbackError(
            f"sequence number {manifest.sequence_number} is not above the installed {installed_sequence}"
        )
    _check_conditions(manifest, vendor_id, class_id)
    components = []
    for component in release.components:
        payload = envelope.integrated.get(payload_key(component.name))
        if payload is None:
            raise ImageMismatchError(f"integrated payload {payload_key(component.name)!r} is missing")
        _match(
            component.name + (" delta" if component.delta else ""),
            payload,
            component.payload_digest,
            component.payload_size,
        )
        components.append(
            VerifiedComponent(
                component.name,
                component.kind,
                component.version,
                component.digest,
                component.size,
                payload,
                component.delta,
                component.after,
            )
        )
    return VerifiedSystem(
        sequence_number=release.sequence_number,
        vendor_id=release.vendor_id,
        class_id=release.class_id,
        version=release.version,
        components=tuple(components),
        manifest_digest=envelope.digest.value,
        signer_key_ids=tuple(key_id(anchor) for anchor in trust_anchors),
    )


def apply_component(component: VerifiedComponent, installed: bytes | None) -> bytes:
    """The full image of ``component``: its payload, or its delta applied to ``installed``.

    Raises :class:`~firmware_object.errors.DeltaBaseMismatchError` when ``installed`` is not the delta's base,
    :class:`~firmware_object.errors.DeltaError` when the delta does not apply,
    :class:`~firmware_object.errors.ImageMismatchError` when the result is not ``digest``/``size``."""
    if component.delta is None:
        image = component.payload
    else:
        if not component.delta.matches(installed):
            raise DeltaBaseMismatchError(f"the installed {component.name} is not the base of its delta")
        assert installed is not None  # matches() is False for None
        image = apply_delta(installed, component.payload, max_size=component.size)
    _match(component.name, image, component.digest, component.size)
    return image


def _match(what: str, data: bytes, digest: bytes, size: int) -> None:
    if len(data) != size:
        raise ImageMismatchError(f"{what}: {len(data)} bytes; the manifest declares {size}")
    if not hmac.compare_digest(_sha256(data), digest):
        raise ImageMismatchError(f"{what}: SHA-256 {_sha256(data).hex()} is not the manifest's")


__all__ = [
    "COMPONENT_NAME",
    "ComponentKind",
    "ComponentRelease",
    "DeltaSource",
    "SystemRelease",
    "VerifiedComponent",
    "VerifiedSystem",
    "apply_component",
    "build_system_envelope",
    "encode_system_manifest",
    "is_system_envelope",
    "payload_key",
    "read_system_manifest",
    "verify_system_envelope",
]
