"""Counting records in a body (CONTRACT §6) and judging whether it is JSON.

A top-level JSON array counts its elements; with ``records_path`` the array at
that dotted path; NDJSON counts its non-empty lines; any other JSON value counts
1. A count that cannot be known exactly is ``None``, never a guess.
"""

from __future__ import annotations

from typing import Any

import orjson

JSON_START = frozenset(b'[{"-0123456789tfn')
HTML_HINTS = (b"<!doctype", b"<html", b"<?xml", b"<")


def count_records(
    body: bytes | bytearray | memoryview, records_path: str | None = None
) -> int | None:
    """How many records ``body`` holds, or ``None`` when it is neither JSON nor NDJSON.

    Args:
        body: the whole response body.
        records_path: dotted path to the array of records inside a JSON object.
    """
    return read_records(body, records_path)[0]


NOT_ONE_VALUE: Any = object()  # the body is NDJSON or not JSON at all


def read_records(
    body: bytes | bytearray | memoryview, records_path: str | None = None
) -> tuple[int | None, Any]:
    """``count_records`` plus the parsed JSON value (``NOT_ONE_VALUE`` for NDJSON or text).

    One parse serves both the count and a paginator reading its cursor.
    """
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError:
        return _count_ndjson(bytes(body)), NOT_ONE_VALUE
    return _count_value(value, records_path), value


def _count_value(value: Any, records_path: str | None) -> int | None:
    if records_path:
        value = at_path(value, records_path)
        return len(value) if isinstance(value, list) else None
    return len(value) if isinstance(value, list) else 1


def at_path(value: Any, path: str) -> Any:
    """The value at dotted ``path`` inside ``value``, or None when it is not there."""
    for name in path.split("."):
        if not isinstance(value, dict) or name not in value:
            return None
        value = value[name]
    return value


def _count_ndjson(body: bytes) -> int | None:
    lines = [line for line in body.split(b"\n") if line.strip()]
    if len(lines) < 2:
        return None  # one unparseable line is not NDJSON, it is garbage
    try:
        for line in lines:
            orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    return len(lines)


def looks_like_json(first_bytes: bytes, content_type: str | None) -> bool:
    """Judge a body too large to parse by its content type and first bytes."""
    media = (content_type or "").split(";")[0].strip().lower()
    if media in ("text/html", "application/xhtml+xml", "text/xml", "application/xml"):
        return False
    head = first_bytes.lstrip(b"\xef\xbb\xbf \t\r\n")[:1]
    return bool(head) and head[0] in JSON_START
