"""The summary's names say what they count (issue 22, point 6) and it shows the warnings."""

from __future__ import annotations

import io
from typing import Any

from ingest_core.cli.display import print_summary, summary_rows

RESULT: dict[str, Any] = {
    "status": "SUCCESS",
    "requested": 2,
    "succeeded": 2,
    "failed": 0,
    "not_attempted": 0,
    "records_ingested": 500,
    "bytes_written": 1_000,
    "bytes_received": 4_096,
    "pages_written": 2,
    "retries": 0,
    "duration_ms": 1_000,
}


def test_body_bytes_and_stored_bytes_are_two_rows_with_their_meaning() -> None:
    rows = dict(summary_rows(RESULT))
    assert "bytes" not in rows
    assert rows["body bytes"] == "4.0 KiB (4,096) as the API sent them"
    assert rows["stored bytes"] == "1000 B (1,000) as written (gzip counted compressed)"


def test_records_say_what_was_counted() -> None:
    without_path = dict(summary_rows(RESULT))["records"]
    with_path = dict(summary_rows(RESULT, records_path="data.items"))["records"]
    assert without_path.startswith("500 (array elements, NDJSON lines, 1 per other JSON body")
    assert with_path == "500 (elements of data.items)"
    unknown = dict(summary_rows({**RESULT, "records_ingested": None}))["records"]
    assert unknown.startswith("unknown (")


def test_the_summary_ends_with_the_warnings() -> None:
    warning = {"code": "no_records", "message": "all 2 items returned 0 records at rows"}
    out = io.StringIO()
    print_summary({**RESULT, "warnings": [warning]}, title="t", stream=out, fancy=False)
    assert out.getvalue().splitlines()[-1] == "warning: all 2 items returned 0 records at rows"
