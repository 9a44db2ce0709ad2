"""Pack units (CONTRACT §13): how one fetched page becomes NDJSON lines.

``unit: response`` makes one line per page, ``unit: record`` one line per record;
both sit behind the ``PackUnit`` protocol so the packer never branches on the unit.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from ingest_core.config import PackOptions
from ingest_core.errors import InvalidBody
from ingest_core.records import NOT_ONE_VALUE, at_path, count_records

log = logging.getLogger(__name__)

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


def _decode(body: bytes) -> tuple[bool, Any, bool]:
    """(is JSON, value, is one value): a JSON body, NDJSON as [values], or (False, None, False)."""
    try:
        return True, orjson.loads(body), True
    except orjson.JSONDecodeError:
        pass
    values = []
    try:
        for line in body.split(b"\n"):
            if line.strip():
                values.append(orjson.loads(line))
    except orjson.JSONDecodeError:
        return False, None, False
    return len(values) >= 2, values, False


@dataclass(frozen=True, slots=True)
class ResponseUnit:
    """``unit: response``: one line per page; the body is its JSON value, unchanged."""

    records_path: str | None
    expect_json: bool

    def lines(self, page: Page) -> Lines:
        is_json, value, one = _decode(page.body)
        if not is_json:
            if self.expect_json:
                raise InvalidBody("body is not JSON or NDJSON" if page.body else "body is empty")
            # Bodies are stored as received; bytes that are not UTF-8 cannot be a JSON string.
            value = page.body.decode("utf-8", errors="replace")
        line = {
            "index": page.index,
            "page": page.page,
            "params": page.params,
            "fetched_at": page.fetched_at,
            "status": page.status,
            "content_type": page.content_type,
            "body": value,
        }
        records = count_records(page.body, self.records_path) if is_json else None
        return Lines(orjson.dumps(line) + b"\n", 1, records, value if one else NOT_ONE_VALUE)


@dataclass(frozen=True, slots=True)
class RecordUnit:
    """``unit: record``: one line per record, each with an added ``_fanout`` key.

    Records are the elements at ``records_path``, of a top-level array, or the lines
    of NDJSON; any other JSON value is one record. A ``records_path`` that is absent
    or null holds no records (an empty last page); one that is not an array is an
    ``invalid_body``. A record that is not an object is wrapped as ``{"value": ...}``.
    """

    records_path: str | None

    def lines(self, page: Page) -> Lines:
        is_json, value, one = _decode(page.body)
        if not is_json:
            raise InvalidBody("body is not JSON or NDJSON" if page.body else "body is empty")
        records = self._records(value, page.body)
        prov = {"index": page.index, "page": page.page, "fetched_at": page.fetched_at}
        out = bytearray()
        for record in records:
            row = {**record} if isinstance(record, dict) else {"value": record}
            row["_fanout"] = prov
            out += orjson.dumps(row)
            out += b"\n"
        return Lines(bytes(out), len(records), len(records), value if one else NOT_ONE_VALUE)

    def _records(self, value: Any, body: bytes) -> list[Any]:
        if self.records_path and not _is_ndjson(value, body):
            value = at_path(value, self.records_path)
            if value is None:
                return []
            if not isinstance(value, list):
                raise InvalidBody(f"records_path {self.records_path!r} is not an array")
            return value
        return value if isinstance(value, list) else [value]


def _is_ndjson(value: Any, body: bytes) -> bool:
    return isinstance(value, list) and not body.lstrip().startswith(b"[")


def make_unit(pack: PackOptions, *, records_path: str | None, expect_json: bool) -> PackUnit:
    """The unit the options name."""
    if pack.unit == "record":
        return RecordUnit(records_path)
    return ResponseUnit(records_path, expect_json)
