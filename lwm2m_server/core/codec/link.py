"""CoRE Link Format (RFC 6690), content format 40: registration payloads and Discover responses.

Invariant: ``parse_links(format_links(links)) == links`` for links whose attribute values are tokens or
strings without control characters.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from lwm2m_server.core.errors import MalformedPayloadError

MAX_LINKS = 4096


@dataclass(frozen=True, slots=True)
class Link:
    """One link: a target (``/3/0``) and its attributes in order; a flag attribute has the value ``None``."""

    target: str
    attributes: tuple[tuple[str, str | None], ...] = ()

    def get(self, name: str) -> str | None:
        for k, v in self.attributes:
            if k == name:
                return v
        return None

    def has(self, name: str) -> bool:
        return any(k == name for k, _ in self.attributes)

    def __str__(self) -> str:
        return format_link(self)


_TOKEN_SAFE = frozenset("!#$%&'()*+-.:<=>?@[]^_`{|}~/0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


def format_link(link: Link) -> str:
    parts = [f"<{link.target}>"]
    for k, v in link.attributes:
        if v is None:
            parts.append(k)
        elif v and all(c in _TOKEN_SAFE for c in v) and k not in ("rt", "if", "title"):
            parts.append(f"{k}={v}")
        else:
            escaped = v.replace("\\", "\\\\").replace('"', '\\"')
            parts.append(f'{k}="{escaped}"')
    return ";".join(parts)


def format_links(links: Iterable[Link]) -> str:
    return ",".join(format_link(link) for link in links)


def encode(links: Iterable[Link]) -> bytes:
    return format_links(links).encode()


def decode(payload: bytes) -> tuple[Link, ...]:
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as e:
        raise MalformedPayloadError("link format payload is not UTF-8") from e
    return parse_links(text)


def parse_links(text: str) -> tuple[Link, ...]:
    """Parse a link-format document. Empty input gives no links; anything malformed raises
    :class:`MalformedPayloadError`."""
    links: list[Link] = []
    n = len(text)
    i = 0
    while i < n:
        while i < n and text[i] in " \t\r\n":
            i += 1
        if i >= n:
            break
        if text[i] != "<":
            raise MalformedPayloadError(f"link format: '<' expected at offset {i}")
        end = text.find(">", i + 1)
        if end < 0:
            raise MalformedPayloadError("link format: unterminated '<'")
        target = text[i + 1 : end]
        if any(c in target for c in "<,;\"") or any(ord(c) < 0x21 for c in target):
            raise MalformedPayloadError(f"link format: invalid target {target!r}")
        i = end + 1
        attrs: list[tuple[str, str | None]] = []
        while i < n and text[i] == ";":
            i += 1
            j = i
            while j < n and text[j] not in "=;,":
                j += 1
            name = text[i:j].strip()
            if not name or not all(c.isalnum() or c in "-._*" for c in name) or not name.isascii():
                raise MalformedPayloadError(f"link format: invalid attribute name {name!r}")
            i = j
            if i < n and text[i] == "=":
                i += 1
                if i < n and text[i] == '"':
                    i += 1
                    buf: list[str] = []
                    while True:
                        if i >= n:
                            raise MalformedPayloadError("link format: unterminated quoted string")
                        c = text[i]
                        if c == "\\" and i + 1 < n:
                            buf.append(text[i + 1])
                            i += 2
                            continue
                        if c == '"':
                            i += 1
                            break
                        buf.append(c)
                        i += 1
                    attrs.append((name, "".join(buf)))
                else:
                    j = i
                    while j < n and text[j] not in ";,":
                        j += 1
                    value = text[i:j].strip()
                    if any(c in value for c in ' "<>\\') or any(ord(c) < 0x20 for c in value):
                        raise MalformedPayloadError(f"link format: invalid token value {value!r}")
                    attrs.append((name, value))
                    i = j
            else:
                attrs.append((name, None))
        links.append(Link(target, tuple(attrs)))
        if len(links) > MAX_LINKS:
            raise MalformedPayloadError(f"link format: more than {MAX_LINKS} links")
        while i < n and text[i] in " \t\r\n":
            i += 1
        if i < n:
            if text[i] != ",":
                raise MalformedPayloadError(f"link format: ',' expected at offset {i}")
            i += 1
            if i >= n or not text[i:].strip():
                raise MalformedPayloadError("link format: trailing ','")
    return tuple(links)
