"""A multipart/form-data body read as a stream of events.

Starlette's ``request.form()`` spools a large file part to a temporary file in
plaintext before the route sees it; an upload must instead be encrypted as it
arrives. python-multipart's low-level ``MultipartParser`` does the parsing (its
callbacks hand over each piece of a part as it is found); this module only turns
those callbacks into an async iterator and enforces the body's size cap as bytes arrive.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header

from ..errors import InvalidRequest, PayloadTooLarge, UnsupportedMediaType

# A part's headers are a few hundred bytes; a form field (as opposed to a file) is small.
MAX_FIELD_BYTES = 64 * 1024


@dataclass
class PartStart:
    name: str
    filename: str | None
    content_type: str | None


@dataclass
class PartData:
    data: bytes


@dataclass
class PartEnd:
    pass


Event = PartStart | PartData | PartEnd


@dataclass
class _Collector:
    events: list[Event] = field(default_factory=list)
    header_field: bytearray = field(default_factory=bytearray)
    header_value: bytearray = field(default_factory=bytearray)
    headers: dict[str, str] = field(default_factory=dict)
    ended: bool = False

    def callbacks(self) -> Any:  # python-multipart's MultipartCallbacks (a TypedDict)
        return {
            "on_part_begin": self._part_begin,
            "on_header_field": lambda data, start, end: self.header_field.extend(data[start:end]),
            "on_header_value": lambda data, start, end: self.header_value.extend(data[start:end]),
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": lambda data, start, end: self.events.append(PartData(bytes(data[start:end]))),
            "on_part_end": lambda: self.events.append(PartEnd()),
            "on_end": self._end,
        }

    def _part_begin(self) -> None:
        self.headers = {}

    def _header_end(self) -> None:
        self.headers[self.header_field.decode("latin-1").lower()] = self.header_value.decode("utf-8", "replace")
        self.header_field.clear()
        self.header_value.clear()

    def _headers_finished(self) -> None:
        # As UTF-8 bytes: python-multipart reads bytes as latin-1 and hands back bytes, so a
        # UTF-8 filename round-trips, where a str outside latin-1 would raise (a 500).
        disposition, options = parse_options_header(self.headers.get("content-disposition", "").encode("utf-8"))
        if disposition != b"form-data" or b"name" not in options:
            raise InvalidRequest("a multipart part has no Content-Disposition: form-data; name=...", param="body")
        filename = options.get(b"filename")
        content_type = self.headers.get("content-type")
        self.events.append(
            PartStart(
                name=options[b"name"].decode("utf-8", "replace"),
                filename=filename.decode("utf-8", "replace") if filename is not None else None,
                content_type=content_type.split(";", 1)[0].strip().lower() if content_type else None,
            )
        )

    def _end(self) -> None:
        self.ended = True


def boundary_of(content_type: str | None) -> bytes:
    media_type, options = parse_options_header(content_type)
    if media_type != b"multipart/form-data":
        shown = media_type.decode("latin-1") or "none"
        raise UnsupportedMediaType(f"this endpoint takes multipart/form-data, got {shown!r}", param="content-type")
    boundary = options.get(b"boundary")
    if not boundary:
        raise InvalidRequest("multipart/form-data without a boundary", param="content-type")
    return boundary


async def form_events(chunks: AsyncIterator[bytes], content_type: str | None, max_body_bytes: int) -> AsyncIterator[Event]:
    """Parse a multipart body from ``chunks`` (``request.stream()``) as it arrives.
    More than ``max_body_bytes`` is a 413 as soon as the excess arrives."""
    collector = _Collector()
    try:
        parser = MultipartParser(boundary_of(content_type), collector.callbacks())
    except FormParserError as exc:
        raise InvalidRequest(f"multipart body: {exc}", param="content-type") from None
    received = 0
    async for chunk in chunks:
        received += len(chunk)
        if received > max_body_bytes:
            raise PayloadTooLarge(f"the multipart body exceeds the limit of {max_body_bytes} bytes", param="data")
        try:
            parser.write(chunk)
        except FormParserError as exc:
            raise InvalidRequest(f"malformed multipart body: {exc}", param="body") from None
        events, collector.events = collector.events, []
        for event in events:
            yield event
    if not collector.ended:
        raise InvalidRequest("the multipart body ends before its closing boundary (truncated?)", param="body")
