"""Unit tests for ingest_core.planner: date ranges -> params, lazily."""

from __future__ import annotations

import itertools
import types
from datetime import date, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ingest_core.planner import (
    Step,
    count_date_range,
    expand_date_range,
    parse_step,
)


def _values(start: str, end: str, *, step: str = "1d", fmt: str = "%Y-%m-%d") -> list[str]:
    return [str(item["date"]) for item in expand_date_range(start, end, step=step, fmt=fmt)]


# --- parse_step --------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1d", Step(1, "d")),
        ("6h", Step(6, "h")),
        ("2w", Step(2, "w")),
        ("1mo", Step(1, "mo")),
        ("3mo", Step(3, "mo")),
        ("24h", Step(24, "h")),
    ],
)
def test_parse_step_accepts_every_unit(text: str, expected: Step) -> None:
    # GIVEN a well-formed step WHEN parsed THEN count and unit come out
    assert parse_step(text) == expected
    assert str(parse_step(text)) == text


@pytest.mark.parametrize(
    "text", ["", "d", "0d", "00h", "-1d", "1m", "1D", "1 d", " 1d", "1.5d", "1y", "1dd"]
)
def test_parse_step_rejects_malformed_steps(text: str) -> None:
    # GIVEN a step that is not N>=1 followed by h/d/w/mo
    # WHEN parsed THEN ValueError names the step
    with pytest.raises(ValueError, match="step"):
        parse_step(text)


def test_parse_step_zero_says_at_least_one() -> None:
    # GIVEN a zero count WHEN parsed THEN the reason is the count, not the shape
    with pytest.raises(ValueError, match="at least 1"):
        parse_step("0mo")


# --- days and weeks ----------------------------------------------------------


def test_days_are_inclusive_of_both_ends() -> None:
    # GIVEN a three-day range WHEN expanded THEN both ends appear
    assert _values("2025-01-01", "2025-01-03") == ["2025-01-01", "2025-01-02", "2025-01-03"]


def test_single_day_range_yields_one_item() -> None:
    # GIVEN start == end WHEN expanded THEN one item
    assert _values("2025-02-23", "2025-02-23") == ["2025-02-23"]


def test_leap_day_2024_is_present() -> None:
    # GIVEN a range across February 2024 (a leap year)
    # WHEN expanded by day THEN 29 Feb is there
    assert _values("2024-02-28", "2024-03-01") == ["2024-02-28", "2024-02-29", "2024-03-01"]


def test_2100_is_not_a_leap_year() -> None:
    # GIVEN a range across February 2100 (divisible by 100, not by 400)
    # WHEN expanded THEN there is no 29 Feb
    assert _values("2100-02-28", "2100-03-01") == ["2100-02-28", "2100-03-01"]


def test_2000_is_a_leap_year() -> None:
    # GIVEN February 2000 (divisible by 400) WHEN counted THEN 29 days
    assert count_date_range("2000-02-01", "2000-02-29") == 29


def test_step_that_overshoots_end_stops_before_it() -> None:
    # GIVEN a 2-day step whose next value would pass the end
    # WHEN expanded THEN the end itself is not forced in
    assert _values("2025-01-01", "2025-01-06", step="2d") == [
        "2025-01-01",
        "2025-01-03",
        "2025-01-05",
    ]


def test_weeks_step_seven_days() -> None:
    # GIVEN a weekly step WHEN expanded THEN values are seven days apart
    assert _values("2025-01-01", "2025-01-29", step="1w") == [
        "2025-01-01",
        "2025-01-08",
        "2025-01-15",
        "2025-01-22",
        "2025-01-29",
    ]


def test_two_weeks_across_a_year_end() -> None:
    # GIVEN a fortnightly step across new year WHEN expanded THEN the year rolls over
    assert _values("2024-12-20", "2025-01-20", step="2w") == [
        "2024-12-20",
        "2025-01-03",
        "2025-01-17",
    ]


# --- months ------------------------------------------------------------------


def test_month_end_clamping_is_anchored_on_the_start_day() -> None:
    # GIVEN 31 Jan 2024 and a monthly step
    # WHEN expanded THEN each month is clamped to its end, and never drifts to 29th/30th
    assert _values("2024-01-31", "2024-07-31", step="1mo") == [
        "2024-01-31",
        "2024-02-29",
        "2024-03-31",
        "2024-04-30",
        "2024-05-31",
        "2024-06-30",
        "2024-07-31",
    ]


def test_month_clamping_in_a_common_year() -> None:
    # GIVEN 31 Jan 2025 (not a leap year) WHEN stepped by a month THEN 28 Feb
    assert _values("2025-01-31", "2025-03-31", step="1mo") == [
        "2025-01-31",
        "2025-02-28",
        "2025-03-31",
    ]


def test_clamped_month_past_the_end_is_excluded() -> None:
    # GIVEN an end before the clamped February value
    # WHEN expanded THEN only January is in range
    assert _values("2024-01-31", "2024-02-28", step="1mo") == ["2024-01-31"]
    assert count_date_range("2024-01-31", "2024-02-28", step="1mo") == 1


def test_quarterly_months_across_years() -> None:
    # GIVEN a 3-month step over two years WHEN expanded THEN quarters roll over years
    assert _values("2024-11-30", "2025-09-01", step="3mo") == [
        "2024-11-30",
        "2025-02-28",
        "2025-05-30",
        "2025-08-30",
    ]


def test_month_step_from_29_feb_uses_day_29_where_it_exists() -> None:
    # GIVEN 29 Feb 2024 and a 12-month step WHEN expanded THEN 28 Feb in common years, 29 in 2028
    assert _values("2024-02-29", "2028-02-29", step="12mo") == [
        "2024-02-29",
        "2025-02-28",
        "2026-02-28",
        "2027-02-28",
        "2028-02-29",
    ]


def test_months_with_a_time_of_day_respect_the_end_time() -> None:
    # GIVEN date-times whose last monthly candidate is later in the day than the end
    # WHEN counted THEN that candidate is excluded
    assert count_date_range("2025-01-15T12:00", "2025-02-15T06:00", step="1mo") == 1
    assert count_date_range("2025-01-15T12:00", "2025-02-15T12:00", step="1mo") == 2


def test_months_with_different_offsets_compare_instants() -> None:
    # GIVEN a start at -12:00 and an end in UTC only a month of instants later
    start, end = "2025-01-31T23:00-12:00", "2025-03-01T05:00Z"
    # WHEN expanded monthly THEN 28 Feb 23:00-12:00 (1 Mar 11:00Z) is past the end
    assert count_date_range(start, end, step="1mo") == 1
    assert _values(start, end, step="1mo", fmt="%Y-%m-%dT%H%z") == ["2025-01-31T23-1200"]


# --- hours -------------------------------------------------------------------


def test_hours_in_utc_step_exactly() -> None:
    # GIVEN a UTC range and a 6-hour step WHEN expanded with an hourly format
    # THEN values are six hours apart and include the end
    values = _values(
        "2025-03-30T00:00:00Z", "2025-03-31T00:00:00Z", step="6h", fmt="%Y-%m-%dT%H:%M%z"
    )
    assert values == [
        "2025-03-30T00:00+0000",
        "2025-03-30T06:00+0000",
        "2025-03-30T12:00+0000",
        "2025-03-30T18:00+0000",
        "2025-03-31T00:00+0000",
    ]


def test_hours_across_a_leap_day() -> None:
    # GIVEN 28 Feb 2024 22:00 to 1 Mar 00:00 WHEN stepped hourly THEN 29 Feb's 24 hours count
    assert count_date_range("2024-02-28T22:00", "2024-03-01T00:00", step="1h") == 27


def test_hours_accept_offsets_and_keep_the_start_offset() -> None:
    # GIVEN a start at +05:30 and an end in UTC meaning the same instant plus 2h
    # WHEN expanded THEN the offset of the start is kept and the count is by instant
    values = _values("2025-01-01T05:30+05:30", "2025-01-01T02:00:00Z", step="1h", fmt="%H:%M%z")
    assert values == ["05:30+0530", "06:30+0530", "07:30+0530"]


def test_hours_reject_a_bare_date() -> None:
    # GIVEN an hourly step and bare dates
    # WHEN expanded THEN ValueError explains that date-times are needed
    with pytest.raises(ValueError, match=r"bare date.*step 1h needs.*date-time"):
        expand_date_range("2025-01-01", "2025-01-02T00:00", step="1h")
    with pytest.raises(ValueError, match="end '2025-01-02' is a bare date"):
        count_date_range("2025-01-01T00:00", "2025-01-02", step="1h")


def test_days_accept_date_times_and_mixed_bounds() -> None:
    # GIVEN a date-time start and a bare date end WHEN stepped by day
    # THEN the date counts as midnight
    assert _values("2025-01-01T00:00", "2025-01-03") == ["2025-01-01", "2025-01-02", "2025-01-03"]


def test_mixing_naive_and_aware_bounds_is_refused() -> None:
    # GIVEN one bound with an offset and one without
    # WHEN expanded THEN ValueError rather than a TypeError on comparison
    with pytest.raises(ValueError, match="UTC offset"):
        expand_date_range("2025-01-01T00:00Z", "2025-01-02T00:00", step="1h")


# --- validation --------------------------------------------------------------


def test_end_before_start_is_refused_at_call_time() -> None:
    # GIVEN an end before the start WHEN the range is built (not iterated)
    # THEN ValueError names both
    with pytest.raises(ValueError, match=r"end '2025-01-01' is before start '2025-02-01'"):
        expand_date_range("2025-02-01", "2025-01-01")
    with pytest.raises(ValueError, match="is before start"):
        count_date_range("2025-02-01", "2025-01-01")


@pytest.mark.parametrize(
    "bad", ["2025-02-30", "2025-13-01", "yesterday", "2025/01/01", "", "2025-1-1"]
)
def test_unparseable_dates_name_the_value_and_the_format(bad: str) -> None:
    # GIVEN an unparseable start WHEN expanded THEN the message names it and the format
    with pytest.raises(ValueError, match=r"start .* is not an ISO date such as 2025-01-31"):
        expand_date_range(bad, "2025-03-01")


def test_unparseable_date_time_for_hours_names_the_format() -> None:
    # GIVEN garbage with an hourly step WHEN counted THEN the date-time format is named
    with pytest.raises(ValueError, match=r"end 'soon' is not an ISO date-time"):
        count_date_range("2025-01-01T00:00", "soon", step="1h")


def test_bad_step_fails_at_call_time() -> None:
    # GIVEN a malformed step WHEN the range is built THEN ValueError immediately
    with pytest.raises(ValueError, match="step '1y'"):
        expand_date_range("2025-01-01", "2025-01-02", step="1y")


def test_format_that_cannot_encode_is_refused() -> None:
    # GIVEN a format holding a lone surrogate (strftime raises)
    # WHEN the range is built THEN ValueError names the format
    with pytest.raises(ValueError, match="format"):
        expand_date_range("2025-01-01", "2025-01-02", fmt="%Y\ud800")


def test_format_rendering_empty_is_refused() -> None:
    # GIVEN an empty format WHEN the range is built THEN ValueError
    with pytest.raises(ValueError, match="empty string"):
        expand_date_range("2025-01-01", "2025-01-02", fmt="")


def test_empty_param_name_is_refused() -> None:
    # GIVEN an empty param name WHEN the range is built THEN ValueError
    with pytest.raises(ValueError, match="param"):
        expand_date_range("2025-01-01", "2025-01-02", param="")


# --- shape of items ----------------------------------------------------------


def test_items_merge_extra_params_and_param_wins() -> None:
    # GIVEN extra params that include the param name itself
    # WHEN expanded THEN extras appear in every item and the date overrides the clash
    items = list(
        expand_date_range(
            "2025-01-01",
            "2025-01-02",
            param="day",
            fmt="%Y%m%d",
            extra_params={"region": "eu", "day": "x", "limit": 100, "full": True},
        )
    )
    assert items == [
        {"region": "eu", "day": "20250101", "limit": 100, "full": True},
        {"region": "eu", "day": "20250102", "limit": 100, "full": True},
    ]


def test_items_do_not_share_list_values() -> None:
    # GIVEN a list-valued extra param WHEN one item's list is mutated
    # THEN other items (and the caller's mapping) are unaffected
    extra: dict[str, object] = {"fields": ["a", "b"]}
    first, second = expand_date_range("2025-01-01", "2025-01-02", extra_params=extra)  # type: ignore[arg-type]
    first["fields"].append("c")  # type: ignore[union-attr]
    assert second["fields"] == ["a", "b"]
    assert extra["fields"] == ["a", "b"]


def test_caller_mutating_extra_params_later_does_not_change_the_plan() -> None:
    # GIVEN an iterator built from a mapping WHEN the mapping changes before iteration
    # THEN the items reflect the mapping as it was
    extra = {"region": "eu"}
    items = expand_date_range("2025-01-01", "2025-01-01", extra_params=extra)
    extra["region"] = "us"
    assert next(items)["region"] == "eu"


def test_expansion_is_lazy_for_a_huge_range() -> None:
    # GIVEN a 100,000-hour range
    # WHEN expanded THEN a generator comes back and its first items are ready at once
    items = expand_date_range("2020-01-01T00:00Z", "2031-05-29T15:00Z", step="1h", fmt="%Y%m%d%H")
    assert isinstance(items, types.GeneratorType)
    assert [i["date"] for i in itertools.islice(items, 3)] == [
        "2020010100",
        "2020010101",
        "2020010102",
    ]
    assert count_date_range("2020-01-01T00:00Z", "2031-05-29T15:00Z", step="1h") == 100_000


def test_count_is_arithmetic_for_enormous_ranges() -> None:
    # GIVEN the widest range Python dates allow WHEN counted by hour THEN an exact answer
    expected = (date(9999, 12, 31) - date(1, 1, 1)).days * 24 + 1
    assert count_date_range("0001-01-01T00:00", "9999-12-31T00:00", step="1h") == expected


def test_huge_step_counts_one_without_overflow() -> None:
    # GIVEN a step far longer than the range (timedelta would overflow)
    # WHEN counted and expanded THEN one item, no OverflowError
    assert count_date_range("2025-01-01", "2025-12-31", step="99999999999999d") == 1
    assert _values("2025-01-01", "2025-12-31", step="99999999999999mo") == ["2025-01-01"]


def test_range_ending_at_the_last_representable_day() -> None:
    # GIVEN a range up to 9999-12-31 WHEN expanded THEN no overflow past the end
    assert _values("9999-12-30", "9999-12-31") == ["9999-12-30", "9999-12-31"]


# --- properties --------------------------------------------------------------


_DATES = st.dates(min_value=date(1900, 1, 1), max_value=date(2200, 12, 31))
_STEPS = st.builds(
    lambda n, unit: f"{n}{unit}",
    st.integers(min_value=1, max_value=40),
    st.sampled_from(["d", "w", "mo"]),
)


@settings(max_examples=200, deadline=None)
@given(start=_DATES, length=st.integers(min_value=0, max_value=1500), step=_STEPS)
def test_count_matches_expansion(start: date, length: int, step: str) -> None:
    # GIVEN a random range and step
    end = min(start + timedelta(days=length), date(9999, 12, 31))
    # WHEN both counted and expanded
    values = _values(start.isoformat(), end.isoformat(), step=step)
    # THEN the arithmetic count matches, the ends are respected and values increase
    assert len(values) == count_date_range(start.isoformat(), end.isoformat(), step=step)
    assert values[0] == start.isoformat()
    assert values[-1] <= end.isoformat()
    assert values == sorted(set(values))


@settings(max_examples=100, deadline=None)
@given(
    start=_DATES,
    hours=st.integers(min_value=0, max_value=2000),
    every=st.integers(min_value=1, max_value=30),
)
def test_hour_count_matches_expansion(start: date, hours: int, every: int) -> None:
    # GIVEN a random UTC hour range
    first = f"{start.isoformat()}T00:00:00Z"
    last = f"{(start + timedelta(hours=hours)).isoformat()}T{hours % 24:02d}:00:00Z"
    # WHEN counted and expanded THEN the two agree
    items = list(expand_date_range(first, last, step=f"{every}h", fmt="%Y-%m-%dT%H"))
    assert len(items) == count_date_range(first, last, step=f"{every}h")


@settings(max_examples=200, deadline=None)
@given(start=_DATES, months=st.integers(min_value=0, max_value=400))
def test_monthly_values_are_start_plus_k_months_clamped(start: date, months: int) -> None:
    # GIVEN a monthly range of random length
    end_year, end_month = divmod(start.month - 1 + months, 12)
    end = date(start.year + end_year, end_month + 1, 28)
    if end < start:
        return
    # WHEN expanded THEN every value keeps the start day, or the month's last day if shorter
    for value in _values(start.isoformat(), end.isoformat(), step="1mo"):
        day = date.fromisoformat(value)
        next_month = date(day.year + day.month // 12, day.month % 12 + 1, 1)
        last_day = (next_month - timedelta(days=1)).day
        assert day.day == min(start.day, last_day)
