"""Relative date bounds and watermark arithmetic (CONTRACT §15), around month and year ends."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from ingest_core import InvalidEventError, parse_event
from ingest_core.netguard import NetPolicy
from ingest_core.planner import covered_count, parse_value, resolve_relative, value_at

NEW_YEAR = datetime(2026, 1, 1, 0, 30, tzinfo=UTC)  # half an hour into a new year
MARCH_FIRST = datetime(2024, 3, 1, 5, 45, 12, tzinfo=UTC)  # after a leap day
API = {"endpoint": "https://api.example.com/v1/data", "raw_bucket": "raw", "source_id": "src"}


@pytest.mark.parametrize(
    ("text", "now", "expected"),
    [
        ("today", NEW_YEAR, "2026-01-01"),
        ("yesterday", NEW_YEAR, "2025-12-31"),
        ("today-1d", NEW_YEAR, "2025-12-31"),
        ("today-366d", NEW_YEAR, "2024-12-31"),
        ("yesterday", MARCH_FIRST, "2024-02-29"),
        ("today-29d", MARCH_FIRST, "2024-02-01"),
        ("now-1h", NEW_YEAR, "2025-12-31"),  # a daily range takes the date of that hour
        ("now", MARCH_FIRST, "2024-03-01"),
        ("TODAY", NEW_YEAR, "2026-01-01"),
        ("2025-06-01", NEW_YEAR, "2025-06-01"),  # absolute dates pass through untouched
    ],
)
def test_daily_ranges_resolve_to_utc_dates(text: str, now: datetime, expected: str) -> None:
    # GIVEN a clock reading WHEN a bound of a daily range is resolved THEN a UTC date
    assert resolve_relative(text, step="1d", now=now) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("now", "2026-01-01T00:00:00+00:00"),
        ("now-1h", "2025-12-31T23:00:00+00:00"),
        ("now-25h", "2025-12-30T23:00:00+00:00"),
        ("today", "2026-01-01T00:00:00+00:00"),
        ("yesterday", "2025-12-31T00:00:00+00:00"),
    ],
)
def test_hourly_ranges_resolve_to_whole_utc_hours(text: str, expected: str) -> None:
    assert resolve_relative(text, step="1h", now=NEW_YEAR) == expected


def test_a_clock_in_another_zone_is_read_as_utc() -> None:
    # GIVEN 2026-01-01 01:30 at +02:00, which is still 2025-12-31 in UTC
    now = datetime(2026, 1, 1, 1, 30, tzinfo=timezone(timedelta(hours=2)))
    assert resolve_relative("today", step="1d", now=now) == "2025-12-31"


@pytest.mark.parametrize(
    "text", ["tomorrow", "today-3h", "now-2d", "yesterday-1d", "today+1d", "now-", "today -1d"]
)
def test_bad_spellings_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="today-Nd or now-Nh"):
        resolve_relative(text, step="1d", now=NEW_YEAR)


def _parse(date_range: dict[str, Any], now: datetime = NEW_YEAR) -> Any:
    event = {"api_config": API, "date_range": date_range, "request_id": "r"}
    return parse_event(event, policy=NetPolicy(), now=now)


def test_events_resolve_both_bounds_against_one_clock() -> None:
    # GIVEN an event over the last week WHEN parsed at 00:30 on New Year's day
    job = _parse({"start": "today-7d", "end": "yesterday"})
    # THEN it covers 25-31 December, as ISO text in the job
    dates = [item.params["date"] for item in job.items()]
    assert dates == [f"2025-12-{day}" for day in range(25, 32)]
    assert job.date_range.start == "2025-12-25" and job.date_range.end == "2025-12-31"


def test_hourly_event_over_a_year_end() -> None:
    job = _parse({"start": "now-3h", "end": "now-1h", "step": "1h", "format": "%Y%m%d%H"})
    dates = [item.params["date"] for item in job.items()]
    assert dates == ["2025123121", "2025123122", "2025123123"]


@pytest.mark.parametrize(
    ("date_range", "field"),
    [
        ({"start": "tomorrow", "end": "today"}, "date_range.start"),
        ({"start": "today-7d", "end": "today-1h"}, "date_range.end"),
    ],
)
def test_bad_relative_bounds_name_their_field(date_range: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidEventError) as caught:
        _parse(date_range)
    assert [name for name, _ in caught.value.problems] == [field]


# --- watermarks ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("watermark", "expected"),
    [
        ("2025-12-28", 0),  # before the range
        ("2025-12-30", 1),
        ("2025-12-31", 2),
        ("2026-01-01", 3),
        ("2026-01-02", 4),  # the whole range
        ("2027-06-01", 4),
    ],
)
def test_covered_count_across_a_year_end(watermark: str, expected: int) -> None:
    start, end = "2025-12-30", "2026-01-02"
    assert covered_count(start, end, step="1d", fmt="%Y-%m-%d", watermark=watermark) == expected


def test_covered_count_compares_values_as_the_format_renders_them() -> None:
    # GIVEN a monthly range anchored on the 31st, rendered as year-month
    # WHEN the watermark is February (whose item is the clamped 29th)
    count = covered_count("2024-01-31", "2024-06-30", step="1mo", fmt="%Y-%m", watermark="2024-02")
    # THEN January and February are covered, and the next start is 31 March
    assert count == 2
    assert value_at("2024-01-31", "2024-06-30", step="1mo", k=count) == "2024-03-31"


def test_covered_count_of_an_hourly_range_with_offsets() -> None:
    start, end = "2025-12-31T22:00:00+00:00", "2026-01-01T02:00:00+00:00"
    fmt, watermark = "%Y-%m-%dT%H%z", "2026-01-01T00+0000"
    count = covered_count(start, end, step="1h", fmt=fmt, watermark=watermark)
    assert count == 3
    assert value_at(start, end, step="1h", k=count) == "2026-01-01T01:00:00+00:00"


def test_a_watermark_of_another_format_is_an_error() -> None:
    with pytest.raises(ValueError, match="is not a date of the format"):
        covered_count("2025-01-01", "2025-01-05", step="1d", fmt="%Y-%m-%d", watermark="20250103")
    with pytest.raises(ValueError, match="is not a date of the format"):
        parse_value("yesterday", "%Y-%m-%d")
