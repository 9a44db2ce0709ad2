"""Record counting and the large-body JSON judgement."""

from __future__ import annotations

import pytest

from ingest_core.records import count_records, looks_like_json


@pytest.mark.parametrize(
    ("body", "path", "expected"),
    [
        (b"[1,2,3]", None, 3),
        (b"[]", None, 0),
        (b'{"a": 1}', None, 1),
        (b'{"data": {"items": [1, 2]}}', "data.items", 2),
        (b'{"data": {"items": 5}}', "data.items", None),
        (b'{"data": {}}', "data.items", None),
        (b'{"a":1}\n{"a":2}\n\n{"a":3}\n', None, 3),
        (b"<html>maintenance</html>", None, None),
        (b'{"a":1}\nnot json\n', None, None),
        (b"", None, None),
        (b'"just a string"', None, 1),
    ],
)
def test_count_records(body: bytes, path: str | None, expected: int | None) -> None:
    assert count_records(body, path) == expected


@pytest.mark.parametrize(
    ("first", "content_type", "expected"),
    [
        (b'[{"a":', "application/json", True),
        (b'\xef\xbb\xbf  {"a"', None, True),
        (b"<!DOCTYPE html>", "text/html", False),
        (b'{"a": 1}', "text/html; charset=utf-8", False),
        (b"garbage", "application/octet-stream", False),
        (b"", None, False),
    ],
)
def test_looks_like_json(first: bytes, content_type: str | None, expected: bool) -> None:
    assert looks_like_json(first, content_type) is expected
