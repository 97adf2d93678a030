"""SUIT manifests: the release we build (:class:`ReleaseManifest`), a parsed view of any manifest
(:class:`ManifestView`) for verification and inspection, and :func:`describe` of a whole envelope.

:func:`parse_manifest` checks the shape of a SUIT_Manifest (draft-ietf-suit-manifest-37) and then evaluates its
command sequences symbolically, without a device: the common shared sequence runs before each of payload-fetch,
install, validate, load and invoke, parameters are tracked per component, ``directive-try-each`` forks the state into
one alternative per branch, and ``condition-component-slot`` pins a component's slot so that branches that
contradict an earlier choice are dropped (this pairs each A/B slot's digest with that slot's URI). The view records:

* per component, the images (digest, size, slot) that ``condition-image-match`` checks, and the URIs
  ``directive-fetch`` fetches from;
* the vendor and class identifiers the common shared sequence sets, and the vendor, class and device identifiers
  that the identifier conditions check;
* the text member (language-tagged as in draft-37, or the older untagged map), which carries component versions.

Invariants: parsing raises only :class:`SuitDecodeError`; it never holds more than :data:`MAX_STATES`
alternatives, nests sequences deeper than :data:`MAX_NESTING`, nor executes more than :data:`MAX_STEPS` commands in
all (so a small manifest cannot make it work exponentially); alternatives are kept in order of appearance,
without duplicates. Parsing is not verification: a view says what a manifest declares, not that it is authentic.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final, TypeAlias, TypeVar

from firmware_object.errors import SuitDecodeError
from firmware_object.suit import cbor
from firmware_object.suit.cose import AuthBlock, OtherCose, alg_name
from firmware_object.suit.labels import (
    SEVERABLE_MEMBERS,
    Command,
    CommonKey,
    ManifestKey,
    Parameter,
    TextComponentKey,
    TextKey,
    member_name,
)
from firmware_object.suit.structure import Envelope, SuitDigest, decode_envelope

SHA256_LENGTH: Final = 32
UINT64_MAX: Final = (1 << 64) - 1
MAX_STATES: Final = 64
MAX_NESTING: Final = 8
MAX_STEPS: Final = 20_000
PEN_TAG: Final = 112
_SEQUENCE_ORDER: Final = (
    ManifestKey.PAYLOAD_FETCH,
    ManifestKey.INSTALL,
    ManifestKey.VALIDATE,
    ManifestKey.LOAD,
    ManifestKey.INVOKE,
)
_REP_POLICY_COMMANDS: Final = frozenset(
    {
        Command.CONDITION_VENDOR_IDENTIFIER,
        Command.CONDITION_CLASS_IDENTIFIER,
        Command.CONDITION_IMAGE_MATCH,
        Command.CONDITION_COMPONENT_SLOT,
        Command.CONDITION_CHECK_CONTENT,
        Command.CONDITION_ABORT,
        Command.CONDITION_DEVICE_IDENTIFIER,
        Command.DIRECTIVE_WRITE,
        Command.DIRECTIVE_FETCH,
        Command.DIRECTIVE_COPY,
        Command.DIRECTIVE_INVOKE,
        Command.DIRECTIVE_SWAP,
    }
)

_T = TypeVar("_T")

VendorId: TypeAlias = uuid.UUID | bytes
"""A vendor identifier: an RFC 4122 UUID, or (as bytes) the relative OID of a CBOR PEN (tag 112)."""
ComponentId: TypeAlias = tuple[bytes, ...]


@dataclass(frozen=True)
class ReleaseManifest:
    """What a release declares; :func:`build_envelope` turns it into a manifest with one component ``[h'00']``.

    ``image_uri`` None means the image travels in the envelope (integrated payload); ``version`` goes into the
    text member as the component version.
    """

    sequence_number: int
    vendor_id: uuid.UUID
    class_id: uuid.UUID
    image_digest: bytes
    image_size: int
    image_uri: str | None = None
    version: str | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.sequence_number <= UINT64_MAX:
            raise ValueError(f"sequence number {self.sequence_number} is not a uint64")
        if len(self.image_digest) != SHA256_LENGTH:
            raise ValueError("image digest must be a 32-byte SHA-256 digest")
        if not 0 <= self.image_size <= UINT64_MAX:
            raise ValueError(f"image size {self.image_size} is not a uint64")
        if self.image_uri is not None and (not self.image_uri or self.image_uri.startswith("#")):
            raise ValueError("image URI must be non-empty and not a fragment (integrated payloads use None)")
        if self.version is not None and not self.version:
            raise ValueError("version must be None or non-empty")

    @classmethod
    def for_image(
        cls,
        image: bytes,
        *,
        sequence_number: int,
        vendor_id: uuid.UUID,
        class_id: uuid.UUID,
        image_uri: str | None = None,
        version: str | None = None,
    ) -> ReleaseManifest:
        """The manifest of ``image``: its SHA-256 digest and size computed here."""
        return cls(sequence_number, vendor_id, class_id, hashlib.sha256(image).digest(), len(image), image_uri, version)


@dataclass(frozen=True)
class ImageSpec:
    """One acceptable image of a component: the digest and size ``condition-image-match`` checks."""

    digest: SuitDigest
    size: int | None
    slot: int | None = None

    def describe(self) -> dict[str, object]:
        return {**self.digest.describe(), "size": self.size, "slot": self.slot}


@dataclass(frozen=True)
class ComponentView:
    """A component, with its image alternatives (several under try-each) and the URIs it is fetched from."""

    identifier: ComponentId
    images: tuple[ImageSpec, ...] = ()
    uris: tuple[str, ...] = ()

    def describe(self) -> dict[str, object]:
        return {
            "id": [part.hex() for part in self.identifier],
            "images": [image.describe() for image in self.images],
            "uris": list(self.uris),
        }


@dataclass(frozen=True)
class TextView:
    """One language of the text member. ``language`` is ``""`` for the untagged map of drafts before -31."""

    language: str
    manifest: Mapping[int, str] = field(default_factory=dict)
    components: Mapping[ComponentId, Mapping[int, str]] = field(default_factory=dict)

    def describe(self) -> dict[str, object]:
        return {
            "manifest": {_label(TextKey, key): value for key, value in self.manifest.items()},
            "components": {
                _component_label(cid): {_label(TextComponentKey, key): value for key, value in entries.items()}
                for cid, entries in self.components.items()
            },
        }


@dataclass(frozen=True)
class ManifestView:
    """What a manifest declares (see the module docstring for how it is derived)."""

    sequence_number: int
    components: tuple[ComponentView, ...]
    vendor_ids: tuple[VendorId, ...]
    """Vendor identifiers the common shared sequence sets (override-parameters)."""
    class_ids: tuple[uuid.UUID, ...]
    """Class identifiers the common shared sequence sets."""
    checked_vendor_ids: tuple[VendorId, ...]
    """Vendor identifiers that ``condition-vendor-identifier`` checks (in any sequence)."""
    checked_class_ids: tuple[uuid.UUID, ...]
    """Class identifiers that ``condition-class-identifier`` checks."""
    device_ids: tuple[uuid.UUID, ...]
    """Device identifiers that ``condition-device-identifier`` checks."""
    members: tuple[int, ...]
    severed: Mapping[int, SuitDigest]
    text: tuple[TextView, ...] = ()
    reference_uri: str | None = None
    manifest_version: int = 1

    def component_version(self, index: int = 0) -> str | None:
        """The text's component version of component ``index`` (first language that has one)."""
        if index >= len(self.components):
            return None
        identifier = self.components[index].identifier
        for text in self.text:
            version = text.components.get(identifier, {}).get(TextComponentKey.COMPONENT_VERSION)
            if version is not None:
                return version
        return None

    @property
    def version(self) -> str | None:
        return self.component_version(0)

    def describe(self) -> dict[str, object]:
        return {
            "manifest_version": self.manifest_version,
            "sequence_number": self.sequence_number,
            "members": [_label(ManifestKey, key) for key in self.members],
            "reference_uri": self.reference_uri,
            "vendor_ids": [_vendor_label(vendor) for vendor in self.vendor_ids],
            "class_ids": [str(class_id) for class_id in self.class_ids],
            "checked_vendor_ids": [_vendor_label(vendor) for vendor in self.checked_vendor_ids],
            "checked_class_ids": [str(class_id) for class_id in self.checked_class_ids],
            "device_ids": [str(device_id) for device_id in self.device_ids],
            "components": [component.describe() for component in self.components],
            "version": self.version,
            "text": {text.language: text.describe() for text in self.text},
        }


def parse_manifest(encoded: bytes, severed_members: Mapping[int, bytes] | None = None) -> ManifestView:
    """Parse the content of envelope member 3. ``severed_members`` are the envelope's severed members (by manifest
    key); they are used where the manifest holds only their digest. Their digests are NOT checked here."""
    severed_members = severed_members or {}
    manifest = _map(cbor.decode(encoded), "manifest")
    version = manifest.get(ManifestKey.MANIFEST_VERSION)
    if version != 1 or isinstance(version, bool):
        raise SuitDecodeError(f"manifest-version {version!r} is not 1")
    sequence_number = _uint(manifest.get(ManifestKey.MANIFEST_SEQUENCE_NUMBER), "manifest-sequence-number")
    common = _map(cbor.decode(_bstr(manifest.get(ManifestKey.COMMON), "common")), "common")
    components = _components(common.get(CommonKey.COMPONENTS))
    shared = _sequence_from(common.get(CommonKey.SHARED_SEQUENCE), "shared-sequence", optional=True)

    reference_uri = manifest.get(ManifestKey.REFERENCE_URI)
    if reference_uri is not None and not isinstance(reference_uri, str):
        raise SuitDecodeError("reference-uri is not a text string")

    severed = _severed_digests(manifest, severed_members)
    members: dict[int, bytes] = {}
    for key in SEVERABLE_MEMBERS:
        if key in severed:
            if key in severed_members:
                members[key] = severed_members[key]
        elif key in manifest:
            members[key] = _bstr(manifest[key], _label(ManifestKey, key))
    for key in (ManifestKey.VALIDATE, ManifestKey.LOAD, ManifestKey.INVOKE):
        if key in manifest:
            members[key] = _bstr(manifest[key], _label(ManifestKey, key))

    sequences = [
        _sequence(cbor.decode(members[key]), _label(ManifestKey, key)) for key in _SEQUENCE_ORDER if key in members
    ]
    evaluation = _Evaluation(len(components))
    evaluation.run_all(shared, sequences)
    text = _text(cbor.decode(members[ManifestKey.TEXT])) if ManifestKey.TEXT in members else ()

    return ManifestView(
        sequence_number=sequence_number,
        components=tuple(
            ComponentView(identifier, tuple(evaluation.images[index]), tuple(evaluation.uris[index]))
            for index, identifier in enumerate(components)
        ),
        vendor_ids=tuple(_vendor_id(value) for value in evaluation.vendor_ids),
        class_ids=tuple(uuid.UUID(bytes=value) for value in evaluation.class_ids),
        checked_vendor_ids=tuple(_vendor_id(value) for value in evaluation.checked_vendor_ids),
        checked_class_ids=tuple(uuid.UUID(bytes=value) for value in evaluation.checked_class_ids),
        device_ids=tuple(uuid.UUID(bytes=value) for value in evaluation.device_ids),
        members=tuple(sorted(k for k in manifest if isinstance(k, int))),
        severed=severed,
        text=text,
        reference_uri=reference_uri,
        manifest_version=1,
    )


def severed_digests(encoded: bytes, envelope_keys: Iterable[int] = ()) -> dict[int, SuitDigest]:
    """The digests the manifest holds in place of severed members: at the severable keys, and at any other key the
    envelope carries a member for (``envelope_keys``)."""
    return _severed_digests(_map(cbor.decode(encoded), "manifest"), envelope_keys)


def _severed_digests(
    manifest: dict[cbor.CborKey, cbor.CborValue], envelope_keys: Iterable[int]
) -> dict[int, SuitDigest]:
    keys = set(envelope_keys)
    severed: dict[int, SuitDigest] = {}
    for key, value in manifest.items():
        if not isinstance(key, int):
            raise SuitDecodeError(f"manifest key {key!r} is not an integer")
        if isinstance(value, list) and (key in SEVERABLE_MEMBERS or key in keys):
            severed[key] = SuitDigest.from_item(value, f"digest of severed member {_label(ManifestKey, key)}")
    return severed


# --- symbolic evaluation -------------------------------------------------------------------------------------------

_Params: TypeAlias = dict[int, "cbor.CborValue | SuitDigest"]
_Commands: TypeAlias = list[tuple[int, cbor.CborValue]]


@dataclass
class _State:
    """One alternative: parameters per component, the selected components, and the slots assumed so far."""

    params: dict[int, _Params]
    selected: tuple[int, ...]
    slots: dict[int, int]

    def fork(self) -> _State:
        return _State({index: dict(p) for index, p in self.params.items()}, self.selected, dict(self.slots))


class _Evaluation:
    def __init__(self, component_count: int) -> None:
        self.count = component_count
        self.images: list[list[ImageSpec]] = [[] for _ in range(component_count)]
        self.uris: list[list[str]] = [[] for _ in range(component_count)]
        self.vendor_ids: list[bytes | cbor.Tagged] = []
        self.class_ids: list[bytes] = []
        self.checked_vendor_ids: list[bytes | cbor.Tagged] = []
        self.checked_class_ids: list[bytes] = []
        self.device_ids: list[bytes] = []
        self.in_common = False
        self.steps = 0

    def run_all(self, shared: _Commands, sequences: list[_Commands]) -> None:
        initial = _State({}, (0,), {})
        self.in_common = True
        after_common = self.run(shared, [initial], 0)
        self.in_common = False
        for sequence in sequences:
            self.run(sequence, [state.fork() for state in after_common], 0)

    def run(self, commands: _Commands, states: list[_State], nesting: int) -> list[_State]:
        """Run ``commands`` on every state; returns the states that did not certainly fail."""
        if nesting > MAX_NESTING:
            raise SuitDecodeError(f"command sequences nest deeper than {MAX_NESTING}")
        for label, argument in commands:
            self.spend(len(states))
            if label == Command.DIRECTIVE_TRY_EACH:
                states = self.try_each(argument, states, nesting)
            elif label == Command.DIRECTIVE_RUN_SEQUENCE:
                assert isinstance(argument, bytes)
                states = self.run(_sequence(cbor.decode(argument), "run-sequence"), states, nesting + 1)
            else:
                states = [state for state in states if self.step(label, argument, state)]
            if len(states) > MAX_STATES:
                raise SuitDecodeError(f"manifest has more than {MAX_STATES} alternatives")
        return states

    def try_each(self, argument: cbor.CborValue, states: list[_State], nesting: int) -> list[_State]:
        assert isinstance(argument, list)
        branches = [_sequence(cbor.decode(b), "try-each branch") for b in argument if isinstance(b, bytes)]
        result: list[_State] = []
        for state in states:
            for branch in branches:
                self.spend(1)
                result.extend(self.run(branch, [state.fork()], nesting + 1))
            if argument and argument[-1] is None:
                result.append(state)
            if len(result) > MAX_STATES:
                raise SuitDecodeError(f"manifest has more than {MAX_STATES} alternatives")
        return result

    def spend(self, steps: int) -> None:
        self.steps += steps
        if self.steps > MAX_STEPS:
            raise SuitDecodeError(f"manifest needs more than {MAX_STEPS} steps to evaluate")

    def step(self, label: int, argument: cbor.CborValue, state: _State) -> bool:
        """Apply one command to ``state``; False when it certainly fails (a contradicting slot condition)."""
        if label == Command.DIRECTIVE_SET_COMPONENT_INDEX:
            state.selected = self.selection(argument)
        elif label == Command.DIRECTIVE_OVERRIDE_PARAMETERS:
            assert isinstance(argument, dict)
            params = _parameters(argument)
            for index in state.selected:
                state.params.setdefault(index, {}).update(params)
            if self.in_common:
                self.declare(params)
        elif label == Command.CONDITION_COMPONENT_SLOT:
            for index in state.selected:
                slot = state.params.get(index, {}).get(Parameter.COMPONENT_SLOT)
                if isinstance(slot, int) and state.slots.setdefault(index, slot) != slot:
                    return False
        else:
            for index in state.selected:
                if index < self.count:  # higher indices name dependencies (trust domains): not recorded
                    self.record(label, state.params.get(index, {}), index)
        return True

    def declare(self, params: _Params) -> None:
        vendor = params.get(Parameter.VENDOR_IDENTIFIER)
        if isinstance(vendor, bytes | cbor.Tagged):
            _append_new(self.vendor_ids, vendor)
        class_id = params.get(Parameter.CLASS_IDENTIFIER)
        if isinstance(class_id, bytes):
            _append_new(self.class_ids, class_id)

    def record(self, label: int, params: _Params, index: int) -> None:
        if label == Command.CONDITION_VENDOR_IDENTIFIER:
            vendor = params.get(Parameter.VENDOR_IDENTIFIER)
            if isinstance(vendor, bytes | cbor.Tagged):
                _append_new(self.checked_vendor_ids, vendor)
        elif label in (Command.CONDITION_CLASS_IDENTIFIER, Command.CONDITION_DEVICE_IDENTIFIER):
            is_class = label == Command.CONDITION_CLASS_IDENTIFIER
            value = params.get(Parameter.CLASS_IDENTIFIER if is_class else Parameter.DEVICE_IDENTIFIER)
            if isinstance(value, bytes):
                _append_new(self.checked_class_ids if is_class else self.device_ids, value)
        elif label == Command.CONDITION_IMAGE_MATCH:
            digest = params.get(Parameter.IMAGE_DIGEST)
            size = params.get(Parameter.IMAGE_SIZE)
            slot = params.get(Parameter.COMPONENT_SLOT)
            if isinstance(digest, SuitDigest):
                size_or_none = size if isinstance(size, int) else None
                slot_or_none = slot if isinstance(slot, int) else None
                _append_new(self.images[index], ImageSpec(digest, size_or_none, slot_or_none))
        elif label == Command.DIRECTIVE_FETCH:
            uri = params.get(Parameter.URI)
            if isinstance(uri, str):
                _append_new(self.uris[index], uri)

    def selection(self, argument: cbor.CborValue) -> tuple[int, ...]:
        if argument is True:
            return tuple(range(self.count))
        indices = [argument] if isinstance(argument, int) else argument
        assert isinstance(indices, list)
        return tuple(i for i in indices if isinstance(i, int))


def _append_new(items: list[_T], item: _T) -> None:
    if item not in items:
        items.append(item)


# --- shape checks --------------------------------------------------------------------------------------------------


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_uint(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _uint(value: object, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise SuitDecodeError(f"{what} is not an unsigned integer")
    return value


def _bstr(value: object, what: str) -> bytes:
    if not isinstance(value, bytes):
        raise SuitDecodeError(f"{what} is not a byte string")
    return value


def _map(value: cbor.CborValue, what: str) -> dict[cbor.CborKey, cbor.CborValue]:
    if not isinstance(value, dict):
        raise SuitDecodeError(f"{what} is not a map")
    return value


def _uuid_bytes(value: object, what: str) -> bytes:
    if not isinstance(value, bytes) or len(value) != 16:
        raise SuitDecodeError(f"{what} is not a 16-byte UUID")
    return value


def _components(value: cbor.CborValue) -> list[ComponentId]:
    if value is None:
        return []
    if not isinstance(value, list) or not value:
        raise SuitDecodeError("components is not a non-empty array")
    result: list[ComponentId] = []
    for identifier in value:
        if not isinstance(identifier, list) or not all(isinstance(part, bytes) for part in identifier):
            raise SuitDecodeError("a component identifier is not an array of byte strings")
        result.append(tuple(part for part in identifier if isinstance(part, bytes)))
    return result


def _sequence_from(value: cbor.CborValue, what: str, *, optional: bool = False) -> _Commands:
    if value is None and optional:
        return []
    return _sequence(cbor.decode(_bstr(value, what)), what)


def _sequence(value: cbor.CborValue, what: str) -> _Commands:
    """Check a SUIT_Command_Sequence: ``[label, argument, ...]`` with each known label's argument well typed."""
    if not isinstance(value, list) or len(value) % 2:
        raise SuitDecodeError(f"{what} is not a command sequence (an even-length array)")
    commands: _Commands = []
    for label, argument in zip(value[::2], value[1::2], strict=True):
        if not isinstance(label, int) or isinstance(label, bool):
            raise SuitDecodeError(f"{what}: command label {label!r} is not an integer")
        _check_argument(label, argument, what)
        commands.append((label, argument))
    return commands


def _check_argument(label: int, argument: cbor.CborValue, what: str) -> None:
    name = _label(Command, label)
    if label in _REP_POLICY_COMMANDS:
        _uint(argument, f"{what}: {name} reporting policy")
    elif label == Command.DIRECTIVE_SET_COMPONENT_INDEX:
        ok = (
            argument is True
            or (isinstance(argument, int) and not isinstance(argument, bool) and argument >= 0)
            or (isinstance(argument, list) and bool(argument) and all(_is_uint(i) for i in argument))
        )
        if not ok:
            raise SuitDecodeError(f"{what}: set-component-index argument is not an index, true or [+index]")
    elif label == Command.DIRECTIVE_TRY_EACH:
        if not isinstance(argument, list) or not argument:
            raise SuitDecodeError(f"{what}: try-each argument is not an array of sequences")
        body = argument[:-1] if argument[-1] is None else argument
        if not body or not all(isinstance(branch, bytes) for branch in body):
            raise SuitDecodeError(f"{what}: try-each branches are not byte strings")
    elif label == Command.DIRECTIVE_OVERRIDE_PARAMETERS:
        if not isinstance(argument, dict) or not argument:
            raise SuitDecodeError(f"{what}: override-parameters argument is not a non-empty map")
        _parameters(argument)
    elif label == Command.DIRECTIVE_RUN_SEQUENCE:
        _bstr(argument, f"{what}: run-sequence argument")


def _parameters(argument: dict[cbor.CborKey, cbor.CborValue]) -> _Params:
    """Type-check SUIT_Parameters; the image digest is decoded into a :class:`SuitDigest`."""
    params: _Params = {}
    for key, value in argument.items():
        if not isinstance(key, int):
            raise SuitDecodeError(f"parameter label {key!r} is not an integer")
        name = _label(Parameter, key)
        if key == Parameter.VENDOR_IDENTIFIER:
            if isinstance(value, cbor.Tagged):
                if value.tag != PEN_TAG or not isinstance(value.value, bytes):
                    raise SuitDecodeError("vendor-identifier is neither a UUID nor a PEN")
            else:
                _uuid_bytes(value, name)
        elif key in (Parameter.CLASS_IDENTIFIER, Parameter.DEVICE_IDENTIFIER):
            _uuid_bytes(value, name)
        elif key == Parameter.IMAGE_DIGEST:
            params[key] = SuitDigest.decode(_bstr(value, name), name)
            continue
        elif key in (Parameter.IMAGE_SIZE, Parameter.COMPONENT_SLOT, Parameter.SOURCE_COMPONENT):
            _uint(value, name)
        elif key == Parameter.URI and not isinstance(value, str):
            raise SuitDecodeError("uri is not a text string")
        elif key in (Parameter.STRICT_ORDER, Parameter.SOFT_FAILURE) and not isinstance(value, bool):
            raise SuitDecodeError(f"{name} is not a boolean")
        params[key] = value
    return params


def _vendor_id(value: bytes | cbor.Tagged) -> VendorId:
    if isinstance(value, cbor.Tagged):
        assert isinstance(value.value, bytes)  # checked by _parameters
        return value.value
    return uuid.UUID(bytes=value)


def _text(value: cbor.CborValue) -> tuple[TextView, ...]:
    """SUIT_Text_Map: ``{language: LMap}`` (draft-37) or one untagged LMap (older drafts)."""
    text = _map(value, "text")
    if text and all(isinstance(key, str) for key in text):
        return tuple(_text_lmap(language, lmap) for language, lmap in text.items() if isinstance(language, str))
    return (_text_lmap("", text),)


def _text_lmap(language: str, value: cbor.CborValue) -> TextView:
    lmap = _map(value, f"text {language!r}")
    manifest: dict[int, str] = {}
    components: dict[ComponentId, dict[int, str]] = {}
    for key, entry in lmap.items():
        if isinstance(key, int):
            manifest[key] = _text_string(entry)
        elif isinstance(key, tuple) and all(isinstance(part, bytes) for part in key):
            entries = _map(entry, "text component")
            components[tuple(p for p in key if isinstance(p, bytes))] = {
                _text_key(k): _text_string(v) for k, v in entries.items()
            }
        else:
            raise SuitDecodeError(f"text key {key!r} is neither an integer nor a component identifier")
    return TextView(language, manifest, components)


def _text_key(key: cbor.CborKey) -> int:
    if not isinstance(key, int):
        raise SuitDecodeError(f"text component key {key!r} is not an integer")
    return key


def _text_string(value: cbor.CborValue) -> str:
    if not isinstance(value, str):
        raise SuitDecodeError("text value is not a text string")
    return value


# --- labels for describe() -----------------------------------------------------------------------------------------


def _label(
    enum: type[ManifestKey] | type[Command] | type[Parameter] | type[TextKey] | type[TextComponentKey], key: int
) -> str:
    try:
        return member_name(enum(key))
    except ValueError:
        return str(key)


def _component_label(identifier: Iterable[bytes]) -> str:
    return "[" + ", ".join(f"h'{part.hex()}'" for part in identifier) + "]"


def _vendor_label(vendor: VendorId) -> str:
    return str(vendor) if isinstance(vendor, uuid.UUID) else f"pen:{vendor.hex()}"


# --- inspection of whole envelopes ------------------------------------------------------------------------------


@dataclass(frozen=True)
class EnvelopeView:
    """An envelope and its parsed manifest, for inspection; says nothing about authenticity."""

    envelope: Envelope
    manifest: ManifestView
    size: int

    def describe(self) -> dict[str, object]:
        """A JSON-friendly summary: ids as UUID strings, digests and key ids as hex, algorithms by name."""
        envelope = self.envelope
        return {
            "tagged": envelope.tagged,
            "size": self.size,
            "manifest_digest": {**envelope.digest.describe(), "matches": envelope.digest_matches()},
            "signatures": [_describe_block(block) for block in envelope.auth_blocks],
            "manifest": self.manifest.describe(),
            "severed_members": {
                _member_label(key): {
                    **digest.describe(),
                    "present": key in envelope.severed,
                    "matches": digest.matches(cbor.encode(envelope.severed[key])) if key in envelope.severed else None,
                }
                for key, digest in sorted(self.manifest.severed.items())
            },
            "integrated_payloads": {
                key: {"size": len(payload), "sha256": hashlib.sha256(payload).hexdigest()}
                for key, payload in sorted(envelope.integrated.items())
            },
        }


def inspect_envelope(data: bytes) -> EnvelopeView:
    """Decode and parse an envelope (tagged or not) without verifying anything. Raises :class:`SuitDecodeError`."""
    envelope = decode_envelope(data, require_tag=False)
    return EnvelopeView(envelope, parse_manifest(envelope.manifest_encoded, envelope.severed), len(data))


def describe(data: bytes) -> dict[str, object]:
    """``inspect_envelope(data).describe()``: what ``scratch firmware inspect`` prints."""
    return inspect_envelope(data).describe()


def _describe_block(block: AuthBlock) -> dict[str, object]:
    if isinstance(block, OtherCose):
        return {"cose": block.kind, "alg": alg_name(block.alg), "kid": None}
    kid = block.kid
    return {"cose": "COSE_Sign1", "alg": alg_name(block.alg), "kid": kid.hex() if kid is not None else None}


def _member_label(key: int) -> str:
    try:
        return member_name(ManifestKey(key))
    except ValueError:
        return str(key)
