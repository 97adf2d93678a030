"""CoAP content-format numbers used by LwM2M (IANA CoAP Content-Formats registry)."""

from __future__ import annotations

from enum import IntEnum

from lwm2m_server.core.errors import UnsupportedContentFormatError


class ContentFormat(IntEnum):
    TEXT = 0
    LINK = 40
    OPAQUE = 42
    CBOR = 60
    SENML_JSON = 110
    SENML_CBOR = 112
    TLV_OLD = 1542  # pre-registration number used by LwM2M 1.0 clients
    JSON_OLD = 1543
    TLV = 11542
    OMA_JSON = 11543
    LWM2M_CBOR = 11544

    @classmethod
    def of(cls, number: int) -> ContentFormat:
        try:
            return cls(number)
        except ValueError:
            raise UnsupportedContentFormatError(f"unsupported content format {number}") from None

    @classmethod
    def by_name(cls, name: str) -> ContentFormat:
        """Look a format up by the names the CLI and API use (``tlv``, ``senml-json``, ``lwm2m-cbor``...)."""
        key = name.strip().lower().replace("_", "-")
        try:
            return _NAMES[key]
        except KeyError:
            known = ", ".join(sorted(_NAMES))
            raise UnsupportedContentFormatError(f"unknown content format {name!r}; known: {known}") from None

    @property
    def label(self) -> str:
        return _LABELS[self]


_LABELS = {
    ContentFormat.TEXT: "text",
    ContentFormat.LINK: "link",
    ContentFormat.OPAQUE: "opaque",
    ContentFormat.CBOR: "cbor",
    ContentFormat.SENML_JSON: "senml-json",
    ContentFormat.SENML_CBOR: "senml-cbor",
    ContentFormat.TLV_OLD: "tlv-old",
    ContentFormat.JSON_OLD: "oma-json-old",
    ContentFormat.TLV: "tlv",
    ContentFormat.OMA_JSON: "oma-json",
    ContentFormat.LWM2M_CBOR: "lwm2m-cbor",
}
_NAMES = {label: fmt for fmt, label in _LABELS.items()} | {
    "plain": ContentFormat.TEXT,
    "json": ContentFormat.SENML_JSON,
}
