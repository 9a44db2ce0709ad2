"""Pack units (CONTRACT §13): how one fetched page becomes NDJSON lines, and back.

``unit: response`` makes one line per page, ``unit: record`` one line per record;
both sit behind the ``PackUnit`` protocol so the packer never branches on the unit.

Packs are lossless (docs/LAKE.md, "Line shapes"):

- A JSON body goes into its response line as the bytes the API sent: it is
  validated, never parsed and serialised again, so numbers keep every digit
  (``18446744073709551616`` stays that, not ``1.8446744073709552e+19``). The only
  change is that the CR and LF between tokens become spaces, which JSON allows
  and NDJSON needs (inside a JSON string they cannot occur unescaped).
- Records are serialised again (each gains ``_fanout``). A body holding a number
  that a double or a 64-bit integer cannot hold (``_LONG_NUMBER``) is parsed by
  the standard library with its numbers kept as their text (``orjson.Fragment``);
  any other number is the same double or integer, written in its shortest form.
- A body that is not JSON (``expect_json: false``) is a string with
  ``body_encoding: "text"`` when it is UTF-8, else base64 with ``"base64"``.
- A record that is not an object is ``{"value": ..., "_fanout": {..., "wrapped": true}}``,
  so it is never confused with a record that was ``{"value": ...}``.

``decode_line`` is the inverse, for readers such as ``fanout-ingest show``.
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal, Protocol

import orjson

from ingest_core.config import PackOptions
from ingest_core.errors import InvalidBody
from ingest_core.records import NOT_ONE_VALUE, at_path

log = logging.getLogger(__name__)

BodyEncoding = Literal["text", "base64"]
BODY_ENCODING: Final = "body_encoding"  # the line's key for a body that is not JSON
FANOUT: Final = "_fanout"  # the key a record line adds
WRAPPED: Final = "wrapped"  # in _fanout: the record was not an object and sits under "value"
# CR and LF are whitespace between JSON tokens and cannot occur raw inside a string.
_LINE_BREAKS_TO_SPACES: Final = bytes.maketrans(b"\r\n", b"  ")
_JSON_BLANKS: Final = b" \t\r\n"
# A number orjson may not keep as sent has 20+ characters of digits, dots and minus
# signs in a row: an integer beyond 64 bits (2**64 has 20 digits, -2**63 - 1 has 19
# and a sign) or a decimal of 19+ digits (beyond a double). Ordinary floats such as
# 21.400000000000002 have fewer: a double's shortest text comes back as it was sent.
# Finding the run is a translate and a substring search (a regex is 10x slower); a
# run inside a string only costs the slower exact parse.
_NUMBER_CHARS: Final = bytes(
    0x30 if (0x30 <= c <= 0x39 or c in b".-") else 0x20 for c in range(256)
)
_LONG_NUMBER: Final = b"0" * 20
_INT64_MIN, _UINT64_MAX = -(2**63), 2**64 - 1

# ----------------------------------------------------------------------------- pages


@dataclass(frozen=True, slots=True)
class Page:
    """One fetched page, whole, as a pack unit sees it."""

    index: int
    page: int
    params: Mapping[str, Any]
    body: bytes
    status: int
    content_type: str | None
    fetched_at: str


@dataclass(frozen=True, slots=True)
class Lines:
    """What a unit made of one page: NDJSON bytes and counts."""

    data: bytes
    count: int
    records: int | None
    value: Any = NOT_ONE_VALUE  # the body as one JSON value, for paginators


class PackUnit(Protocol):
    """Turns one page into NDJSON lines (STYLE §15: one class per ``unit``)."""

    def lines(self, page: Page) -> Lines:
        """The page's lines; raises ``InvalidBody`` when it cannot make them."""


# ----------------------------------------------------------------------------- bodies


@dataclass(frozen=True, slots=True)
class _Body:
    """A body read once: one JSON value, NDJSON (a list of its lines' values), or text."""

    kind: Literal["json", "ndjson", "text"]
    value: Any = None
    raw: bytes = b""
    lines: tuple[bytes, ...] = ()  # NDJSON: its non-blank lines

    @property
    def is_json(self) -> bool:
        return self.kind != "text"

    def one_value(self) -> Any:
        """The value a paginator reads: only a body that is one JSON value has one."""
        return self.value if self.kind == "json" else NOT_ONE_VALUE

    def text(self) -> bytes:
        """The JSON text on one line, as sent but for line breaks between tokens.

        NDJSON becomes the array of its lines.
        """
        if self.kind == "ndjson":
            return b"[" + b",".join(map(_one_line, self.lines)) + b"]"
        return _one_line(self.raw)


def _one_line(text: bytes) -> bytes:
    text = text.strip(_JSON_BLANKS)
    return text.translate(_LINE_BREAKS_TO_SPACES) if b"\n" in text or b"\r" in text else text


def _read_body(body: bytes) -> _Body:
    """Judge ``body`` with one orjson parse (one per line for NDJSON)."""
    try:
        return _Body("json", orjson.loads(body), body)
    except orjson.JSONDecodeError:
        pass
    lines = tuple(line for line in body.split(b"\n") if line.strip())
    try:
        values = [orjson.loads(line) for line in lines]
    except orjson.JSONDecodeError:
        return _Body("text")
    if len(values) < 2:  # one line that is not JSON is not NDJSON, it is text
        return _Body("text")
    return _Body("ndjson", values, body, lines)


def _exact_int(digits: str) -> Any:
    if len(digits) <= 18:
        return int(digits)
    number = int(digits) if len(digits) <= 40 else None
    if number is not None and _INT64_MIN <= number <= _UINT64_MAX:
        return number
    return orjson.Fragment(digits)  # written back as the digits the API sent


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def exact_loads(text: bytes | str) -> Any:
    """Parse JSON keeping every number as sent: floats and big integers stay text.

    Slower than ``orjson.loads`` (the standard library); ``orjson.dumps`` writes
    the ``orjson.Fragment`` numbers back digit for digit.
    """
    if isinstance(text, bytes):
        text = text.decode("utf-8")  # strict: json.loads(bytes) would guess UTF-16/32
    return json.loads(
        text, parse_int=_exact_int, parse_float=orjson.Fragment, parse_constant=_no_constant
    )


def _exact(body: _Body) -> Any:
    """``body``'s value with its numbers exact (parsed again only when one may not be)."""
    if _LONG_NUMBER not in body.raw.translate(_NUMBER_CHARS):
        return body.value
    return exact_loads(body.text())


def _count(body: _Body, records_path: str | None) -> int | None:
    """Records on the page (CONTRACT §6), as ``records.count_records`` counts them."""
    if body.kind == "ndjson":
        return len(body.value)
    value = at_path(body.value, records_path) if records_path else body.value
    if isinstance(value, list):
        return len(value)
    return None if records_path else 1


def _not_json(page: Page) -> InvalidBody:
    return InvalidBody("body is not JSON or NDJSON" if page.body else "body is empty")


# ----------------------------------------------------------------------------- units


@dataclass(frozen=True, slots=True)
class ResponseUnit:
    """``unit: response``: one line per page; the body as the API sent it."""

    records_path: str | None
    expect_json: bool

    def lines(self, page: Page) -> Lines:
        body = _read_body(page.body)
        envelope: dict[str, Any] = {
            "index": page.index,
            "page": page.page,
            "params": page.params,
            "fetched_at": page.fetched_at,
            "status": page.status,
            "content_type": page.content_type,
        }
        if body.is_json:
            text, records = body.text(), _count(body, self.records_path)
        elif self.expect_json:
            raise _not_json(page)
        else:
            encoding, text = _text_body(page.body)
            envelope[BODY_ENCODING] = encoding
            records = None
        # ``body`` goes last, spliced in as bytes: the envelope is small, the body not.
        line = orjson.dumps(envelope)[:-1] + b',"body":' + text + b"}\n"
        return Lines(line, 1, records, body.one_value())


def _text_body(body: bytes) -> tuple[BodyEncoding, bytes]:
    """A body that is not JSON as a JSON string: its text, or base64 when not UTF-8."""
    try:
        return "text", orjson.dumps(body.decode("utf-8"))
    except (UnicodeDecodeError, orjson.JSONEncodeError):  # lone surrogates are not UTF-8 either
        return "base64", b'"' + base64.b64encode(body) + b'"'


@dataclass(frozen=True, slots=True)
class RecordUnit:
    """``unit: record``: one line per record, each with an added ``_fanout`` key.

    Records are the elements at ``records_path``, of a top-level array, or the lines
    of NDJSON (whatever each line is, arrays included); any other JSON value is one
    record. A ``records_path`` that is absent or null holds no records (an empty last
    page); one that is not an array is an ``invalid_body``. A record that is not an
    object is wrapped: ``{"value": ..., "_fanout": {..., "wrapped": true}}``.
    """

    records_path: str | None

    def lines(self, page: Page) -> Lines:
        body = _read_body(page.body)
        if not body.is_json:
            raise _not_json(page)
        value = _exact(body)
        records = self._records(body.kind, value)
        prov = {"index": page.index, "page": page.page, "fetched_at": page.fetched_at}
        tail = b',"' + FANOUT.encode() + b'":' + orjson.dumps(prov) + b"}\n"
        wrapped_tail = b',"' + FANOUT.encode() + b'":' + orjson.dumps({**prov, WRAPPED: True})
        out = bytearray()
        for record in records:
            if isinstance(record, dict) and FANOUT not in record:
                row = orjson.dumps(record)  # {...} -> {...,"_fanout":{...}}
                out += row[:-1] + tail if len(row) > 2 else b"{" + tail[1:]
            elif isinstance(record, dict):  # it has a _fanout of its own: ours replaces it
                out += orjson.dumps({**record, FANOUT: prov}) + b"\n"
            else:
                out += b'{"value":' + orjson.dumps(record) + wrapped_tail + b"}\n"
        one = value if body.kind == "json" else NOT_ONE_VALUE
        return Lines(bytes(out), len(records), len(records), one)

    def _records(self, kind: str, value: Any) -> list[Any]:
        if kind == "ndjson":  # each line is a record, whatever records_path says
            return list(value)
        if self.records_path:
            value = at_path(value, self.records_path)
            if value is None:
                return []
            if not isinstance(value, list):
                raise InvalidBody(f"records_path {self.records_path!r} is not an array")
            return value
        return value if isinstance(value, list) else [value]


def make_unit(pack: PackOptions, *, records_path: str | None, expect_json: bool) -> PackUnit:
    """The unit the options name."""
    if pack.unit == "record":
        return RecordUnit(records_path)
    return ResponseUnit(records_path, expect_json)


# ----------------------------------------------------------------------------- reading


def decode_line(line: bytes) -> bytes:
    """What the API sent that one stored line holds, as bytes.

    A response line gives its body: the JSON text (numbers exact), the text, or
    the bytes base64 held. A record line gives the record as JSON, without
    ``_fanout`` and unwrapped when it was wrapped.
    """
    value = exact_loads(line)
    if FANOUT in value:
        prov = value.pop(FANOUT)
        if isinstance(prov, dict) and prov.get(WRAPPED) is True:
            value = value["value"]
        return orjson.dumps(value)
    encoding = value.get(BODY_ENCODING)
    body = value.get("body")
    if encoding == "base64":
        return base64.b64decode(body)
    if encoding == "text":
        return str(body).encode("utf-8")
    return orjson.dumps(body)
