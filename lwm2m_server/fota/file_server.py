"""The CoAP file server devices pull packages from (Object 5 Package URI).

Each delivery publishes a package under an unguessable name (``/fw/<token>``), so a URI written to one device
lets nobody list or fetch other packages. The server slices Block2 blocks itself, statelessly: any block at any
size the device asks for (16 to 1024 bytes), in any order, so an interrupted download resumes where it stopped.
Every block carries the package's ETag (so a device sees a package change under it) and Size2 (its total size).

Invariants: a package's bytes are held once, however many deliveries publish it (packages are keyed by digest);
a name is made by :meth:`FileServer.new_name` (128 random bits), serves one package only, and nothing answers a
name that is not published (4.04). A caller that keeps a name (a campaign job persists it) may publish the same
bytes under it again after a restart, so the URI a device holds goes on resolving with the same ETag.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

from aiocoap import Message
from aiocoap.numbers.codes import Code
from aiocoap.optiontypes import BlockOption

from lwm2m_server.core.codec.formats import ContentFormat
from lwm2m_server.core.errors import CoapCode, InvalidRequestError, MethodNotAllowedError, NotFoundError

MOUNT = "fw"
MAX_SZX = 6  # 1024-byte blocks; BERT (szx 7) is for CoAP over TCP only


class BlockOutOfRangeError(InvalidRequestError):
    """A Block2 request for a block that starts past the end of the package."""

    coap_code = CoapCode.BAD_OPTION


@dataclass(frozen=True)
class Package:
    """Bytes published for download; ``etag`` is the first 8 bytes of their SHA-256."""

    data: bytes
    digest: bytes

    @classmethod
    def of(cls, data: bytes) -> Package:
        return cls(data, hashlib.sha256(data).digest())

    @property
    def etag(self) -> bytes:
        return self.digest[:8]


@dataclass(frozen=True, slots=True)
class FileAnswer:
    """The answer to one GET of a package: 2.05 with the block (``block2``: number, more, szx; None: the whole
    package in one answer), its ETag and the package's size (Size2); or 2.03 Valid with the ETag alone."""

    code: int
    etag: bytes
    payload: bytes | memoryview = b""
    block2: tuple[int, bool, int] | None = None
    size2: int | None = None


@dataclass
class _Publication:
    package: Package
    blocks_served: int = 0
    bytes_served: int = 0


class FileServer:
    """Packages published under random names; :meth:`handle` serves ``GET /fw/<name>`` block-wise."""

    mount = MOUNT
    """The first path segment packages are served under."""

    def __init__(self) -> None:
        self._by_name: dict[str, _Publication] = {}
        self._by_digest: dict[bytes, tuple[Package, int]] = {}

    @staticmethod
    def new_name() -> str:
        """A fresh unguessable name for one delivery."""
        return secrets.token_urlsafe(16)

    def publish(self, data: bytes, name: str | None = None) -> str:
        """Publish ``data`` under ``name`` (default: a new one) and return the name (withdraw it when done).
        Publishing the same bytes under a published name again changes nothing (one withdraw ends it); other
        bytes under it are refused."""
        package = Package.of(data)
        if name is not None and (published := self._by_name.get(name)) is not None:
            if published.package.digest != package.digest:
                raise ValueError("that name serves another package")
            return name
        held, count = self._by_digest.get(package.digest, (package, 0))
        self._by_digest[package.digest] = (held, count + 1)
        name = name or self.new_name()
        self._by_name[name] = _Publication(held)
        return name

    def withdraw(self, name: str) -> None:
        """Stop serving ``name``; the bytes are dropped with their last publication."""
        publication = self._by_name.pop(name, None)
        if publication is None:
            return
        digest = publication.package.digest
        held, count = self._by_digest[digest]
        if count <= 1:
            del self._by_digest[digest]
        else:
            self._by_digest[digest] = (held, count - 1)

    def served(self, name: str) -> tuple[int, int]:
        """(blocks, bytes) served so far under ``name``."""
        publication = self._by_name.get(name)
        return (0, 0) if publication is None else (publication.blocks_served, publication.bytes_served)

    @property
    def published(self) -> int:
        return len(self._by_name)

    async def handle(self, request: Message, rest: tuple[str, ...]) -> Message:
        """Answer one GET (see :meth:`answer`) as aiocoap's resource machinery wants it."""
        if request.code != Code.GET:
            raise MethodNotAllowedError("packages are read-only: use GET")
        block2 = request.opt.block2
        answer = self.answer(rest[0] if len(rest) == 1 else None, etags=tuple(request.opt.etags),
                             block2=None if block2 is None else (block2.block_number, block2.size_exponent),
                             max_szx=getattr(request.remote, "maximum_block_size_exp", MAX_SZX))
        if answer.code == int(Code.VALID):
            return Message(code=Code.VALID, etag=answer.etag)
        response = Message(code=Code.CONTENT, payload=answer.payload, content_format=int(ContentFormat.OPAQUE),
                           etag=answer.etag)
        response.opt.size2 = answer.size2
        if answer.block2 is not None:
            response.opt.block2 = BlockOption.BlockwiseTuple(*answer.block2)
        return response

    def answer(self, name: str | None, *, etags: tuple[bytes, ...] = (), block2: tuple[int, int] | None = None,
               max_szx: int = MAX_SZX) -> FileAnswer:
        """The answer to a GET of ``name`` (``block2``: the block number and size exponent asked for; None: the
        whole package if it fits one block of ``max_szx``, else its first block): NotFoundError for a name not
        published, BlockOutOfRangeError for a block past the end, 2.03 when ``etags`` holds the package's."""
        publication = self._by_name.get(name) if name is not None else None
        if publication is None:
            raise NotFoundError("no such package")
        package = publication.package
        if package.etag in etags:
            return FileAnswer(int(Code.VALID), package.etag)
        data = package.data
        if block2 is None:
            szx = min(MAX_SZX, max_szx)
            number = 0
            if len(data) <= 1 << (szx + 4):
                publication.blocks_served += 1
                publication.bytes_served += len(data)
                return FileAnswer(int(Code.CONTENT), package.etag, data, None, len(data))
        else:
            number, szx = block2[0], min(MAX_SZX, block2[1])
        size = 1 << (szx + 4)
        start = number * size
        if start >= len(data) and not (start == 0 and not data):
            raise BlockOutOfRangeError(f"block {number} of {size} bytes starts past the end ({len(data)} bytes)")
        # a view, not a copy: aiocoap keeps every answer for EXCHANGE_LIFETIME (247 s) to answer a duplicate
        # request, and with copies a campaign held about one package per device in those answers
        chunk = memoryview(data)[start:start + size]
        more = start + size < len(data)
        publication.blocks_served += 1
        publication.bytes_served += len(chunk)
        return FileAnswer(int(Code.CONTENT), package.etag, chunk, (number, more, szx), len(data))
