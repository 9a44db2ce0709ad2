"""Date ranges -> request params, lazily (CONTRACT §3 ``date_range``).

A range is validated eagerly (bad dates, a bad step, a bad format and an end
before the start all raise ``ValueError`` at call time) and expanded lazily: a
range of a million steps costs one item of memory at a time. Counting is
arithmetic, so the engine can report ``requested`` and refuse oversized plans
without walking the range.

Time arithmetic is wall-clock arithmetic on the values given. ISO strings carry
either no offset or a fixed one (``Z``, ``+05:30``), never a named zone, so there
is no DST to skip or repeat: ``6h`` is always six hours.

Relative bounds (``today``, ``yesterday``, ``today-Nd``, ``now``, ``now-Nh``) are
resolved against one UTC clock reading by ``resolve_relative``, before anything
else sees them: a range means the same dates however long its run takes.
Incremental runs use a ``Grid`` to find where a watermark leaves off, before or after
``start``.
"""

from __future__ import annotations

import calendar
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Literal, TypeAlias, cast

ParamScalar: TypeAlias = str | int | float | bool
ParamValue: TypeAlias = str | int | float | bool | list[str | int | float | bool]
Params: TypeAlias = dict[str, ParamValue]

StepUnit: TypeAlias = Literal["h", "d", "w", "mo"]

_STEP_RE = re.compile(r"(\d+)(h|d|w|mo)")
_UNIT_US: dict[str, int] = {
    "h": 3_600_000_000,
    "d": 86_400_000_000,
    "w": 7 * 86_400_000_000,
}
_ONE_US = timedelta(microseconds=1)
_DATE_HINT = "an ISO date such as 2025-01-31 or an ISO date-time such as 2025-01-31T00:00:00Z"
_DATETIME_HINT = "an ISO date-time such as 2025-01-31T00:00:00Z or 2025-01-31T06:00+02:00"
_RELATIVE_RE = re.compile(r"(today|yesterday|now)(?:-(\d{1,6})([dh]))?")
_RELATIVE_HINT = "an ISO date, today, yesterday, today-Nd or now-Nh (UTC)"


@dataclass(frozen=True, slots=True)
class Step:
    """One step of a date range: ``count`` hours, days, weeks or calendar months."""

    count: int
    unit: StepUnit

    def __str__(self) -> str:
        return f"{self.count}{self.unit}"


@dataclass(frozen=True, slots=True)
class _Span:
    """A validated range: where it starts, how it steps and how many items it has."""

    start: date  # a ``datetime`` too: datetime subclasses date
    step: Step
    count: int

    def at(self, k: int) -> date:
        """The k-th value, computed from the start so month clamping never drifts."""
        if self.step.unit == "mo":
            return _add_months(self.start, k * self.step.count)
        return self.start + k * self.step.count * _UNIT_US[self.step.unit] * _ONE_US


def parse_step(text: str) -> Step:
    """Parse a step such as ``"6h"``, ``"1d"``, ``"2w"`` or ``"3mo"``.

    Args:
        text: ``N`` followed by ``h``, ``d``, ``w`` or ``mo``, with ``N >= 1``.

    Returns:
        The parsed step.

    Raises:
        ValueError: the text is not of that form, or ``N`` is zero.
    """
    match = _STEP_RE.fullmatch(text) if isinstance(text, str) else None
    if match is None:
        raise ValueError(
            f"step {text!r} is not of the form N followed by h, d, w or mo (e.g. 1d, 6h, 2w, 1mo)"
        )
    count = int(match.group(1))
    if count < 1:
        raise ValueError(f"step {text!r} must be at least 1")
    return Step(count, cast(StepUnit, match.group(2)))


def count_date_range(start: str, end: str, *, step: str = "1d") -> int:
    """Count the items ``expand_date_range`` would yield, without iterating.

    Args:
        start: First value (inclusive); see ``expand_date_range`` for formats.
        end: Last possible value (inclusive).
        step: ``Nh``, ``Nd``, ``Nw`` or ``Nmo``.

    Returns:
        The number of items, at least 1.

    Raises:
        ValueError: as ``expand_date_range``.
    """
    return _span(start, end, step).count


def expand_date_range(
    start: str,
    end: str,
    *,
    param: str = "date",
    step: str = "1d",
    fmt: str = "%Y-%m-%d",
    extra_params: Mapping[str, ParamValue] | None = None,
) -> Iterator[Params]:
    """Expand a date range into one params dict per step, inclusive of both ends.

    Validation happens now; expansion happens as the iterator is consumed, so a
    100,000-step range never builds a list.

    Args:
        start: ISO date or date-time (``Nh`` steps need date-times).
        end: ISO date or date-time, not before ``start``.
        param: Name of the param that carries each value.
        step: ``Nh``, ``Nd``, ``Nw`` or ``Nmo`` (calendar months anchored on the
            start day, clamped to month ends).
        fmt: ``strftime`` format of each value.
        extra_params: Params added to every item (``param`` wins on a clash).

    Returns:
        An iterator of ``{**extra_params, param: value.strftime(fmt)}``.

    Raises:
        ValueError: bad dates, step, param name or format, or end before start.
    """
    if not isinstance(param, str) or not param:
        raise ValueError("param must be a non-empty string")
    span = _span(start, end, step)
    _render(span.start, fmt)  # fail now, not at the first next(), on a bad format
    # Copied now so that a caller mutating its mapping later cannot change the plan.
    extra = dict(extra_params or {})
    return _expand(span, param, fmt, extra)


def _expand(span: _Span, param: str, fmt: str, extra: Params) -> Iterator[Params]:
    for k in range(span.count):
        item = {key: _copy_value(value) for key, value in extra.items()}
        item[param] = _render(span.at(k), fmt)
        yield item


def _copy_value(value: ParamValue) -> ParamValue:
    # Items must not share list objects: one consumer editing its params would edit all.
    return list(value) if isinstance(value, list) else value


def _render(value: date, fmt: str) -> str:
    try:
        text = value.strftime(fmt)
    except (ValueError, UnicodeError, TypeError) as exc:
        raise ValueError(f"format {fmt!r} cannot render dates: {exc}") from exc
    if not text:
        raise ValueError(f"format {fmt!r} renders {value.isoformat()} as an empty string")
    return text


def _span(start: str, end: str, step_text: str) -> _Span:
    step = parse_step(step_text)
    first = _parse_bound("start", start, step)
    last = _parse_bound("end", end, step)
    first, last = _align(first, last)
    if last < first:
        raise ValueError(f"end {end!r} is before start {start!r}")
    return _Span(first, step, _count(first, last, step))


def _parse_bound(name: str, text: str, step: Step) -> date:
    if not isinstance(text, str):
        raise ValueError(f"{name} must be a string, got {type(text).__name__}")
    if step.unit == "h":
        return _parse_datetime(name, text, step)
    try:
        return date.fromisoformat(text)
    except ValueError:
        pass
    try:
        return datetime.fromisoformat(text)
    except ValueError as exc:
        raise ValueError(f"{name} {text!r} is not {_DATE_HINT} ({exc})") from None


def _parse_datetime(name: str, text: str, step: Step) -> datetime:
    # datetime.fromisoformat("2025-01-01") succeeds (midnight), so bare dates are
    # refused first: an hourly range from a bare date is almost always a mistake.
    try:
        date.fromisoformat(text)
    except ValueError:
        pass
    else:
        raise ValueError(f"{name} {text!r} is a bare date, but step {step} needs {_DATETIME_HINT}")
    try:
        return datetime.fromisoformat(text)
    except ValueError as exc:
        raise ValueError(f"{name} {text!r} is not {_DATETIME_HINT} ({exc})") from None


def _align(first: date, last: date) -> tuple[date, date]:
    """Make both bounds the same kind so they can be compared and subtracted."""
    if isinstance(first, datetime) or isinstance(last, datetime):
        first, last = _as_datetime(first), _as_datetime(last)
        if (first.tzinfo is None) != (last.tzinfo is None):
            raise ValueError("start and end must both carry a UTC offset, or neither")
        if first.tzinfo is not None:
            # The same instant on the start's clock, so month arithmetic compares like
            # with like; values keep the start's offset.
            last = last.astimezone(first.tzinfo)
    return first, last


def _as_datetime(value: date) -> datetime:
    if isinstance(value, datetime):
        return value
    return datetime(value.year, value.month, value.day)


def _count(first: date, last: date, step: Step) -> int:
    if step.unit == "mo":
        return _count_months(first, last, step.count)
    # Integer microseconds: exact, and immune to timedelta overflow on huge steps.
    span_us = (last - first) // _ONE_US
    return span_us // (step.count * _UNIT_US[step.unit]) + 1


def _count_months(first: date, last: date, every: int) -> int:
    months = (last.year - first.year) * 12 + (last.month - first.month)
    k = months // every
    # Clamping (31 Jan + 1 month = 29 Feb) or the time of day can push the
    # candidate past the end, by at most one step.
    if _add_months(first, k * every) > last:
        k -= 1
    return k + 1


def _add_months(value: date, months: int) -> date:
    """``value`` plus ``months`` calendar months, clamped to the end of the month."""
    total = value.month - 1 + months
    year, month = value.year + total // 12, total % 12 + 1
    day = min(value.day, calendar.monthrange(year, month)[1])
    return value.replace(year=year, month=month, day=day)


# ------------------------------------------------------------- relative bounds


def resolve_relative(text: str, *, step: str, now: datetime) -> str:
    """Turn ``today``, ``yesterday``, ``today-Nd``, ``now`` or ``now-Nh`` into ISO text.

    Anything that does not start with a letter (an ISO date, say) comes back
    unchanged, for ``expand_date_range`` to judge.

    Args:
        text: the bound as given.
        step: the range's step: hourly steps get UTC date-times (midnight for
            the day forms, the start of the hour for ``now``), others get dates.
        now: the clock reading every bound of one event is resolved against.

    Returns:
        The ISO date or date-time the bound stands for.

    Raises:
        ValueError: a word that is not one of the relative forms, or one that
            reaches before the first representable date.
    """
    if not isinstance(text, str) or not text[:1].isalpha():
        return text
    match = _RELATIVE_RE.fullmatch(text.strip().lower())
    if match is None:
        raise ValueError(f"{text!r} is not {_RELATIVE_HINT}")
    word, amount, unit = match.groups()
    back = int(amount or 0)
    allowed = {"now": (None, "h"), "today": (None, "d"), "yesterday": (None,)}[word]
    if unit not in allowed:
        raise ValueError(f"{text!r} is not {_RELATIVE_HINT}: days go with today, hours with now")
    now = now.astimezone(UTC).replace(minute=0, second=0, microsecond=0, tzinfo=UTC)
    try:
        if word == "now":
            instant = now - timedelta(hours=back)
        else:
            days = back + (1 if word == "yesterday" else 0)
            instant = now.replace(hour=0) - timedelta(days=days)
    except OverflowError:
        # today-999999d is before year 1: a usage error, not a traceback.
        raise ValueError(f"{text!r} is out of range: it reaches before the year 1") from None
    hourly = _is_hourly(step)
    return instant.isoformat() if hourly else instant.date().isoformat()


def _is_hourly(step: str) -> bool:
    try:
        return parse_step(step).unit == "h"
    except ValueError:
        return False  # the step's own error is reported where it is validated


# --------------------------------------------------------------- watermarks


def parse_value(text: str, fmt: str) -> datetime:
    """Read back a value ``expand_date_range`` rendered with ``fmt``.

    Aware values are made naive UTC, so values of one format always compare.

    Raises:
        ValueError: ``text`` is not a date of that format.
    """
    try:
        value = datetime.strptime(text, fmt)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{text!r} is not a date of the format {fmt!r} ({exc})") from None
    if value.tzinfo is not None:
        value = value.astimezone(UTC).replace(tzinfo=None)
    return value


def covered_count(start: str, end: str, *, step: str, fmt: str, watermark: str) -> int:
    """How many leading items of a range are at or before ``watermark``.

    Values are compared as ``fmt`` renders them (a monthly range rendered as
    ``%Y-%m`` is covered by ``2025-03`` whatever its anchor day), found by
    bisection: the range is never walked.

    Raises:
        ValueError: a bad range, or a watermark that is not a date of ``fmt``.
    """
    return max(0, grid(start, end, step=step, fmt=fmt).first_after(watermark))


def value_at(start: str, end: str, *, step: str, k: int) -> str:
    """The ISO text of the k-th value of a range (a new ``start`` that skips k items)."""
    span = _span(start, end, step)
    if not 0 <= k < span.count:
        raise ValueError(f"item {k} is outside a range of {span.count}")
    return span.at(k).isoformat()


@dataclass(frozen=True, slots=True)
class Grid:
    """A range's steps, numbered from its start and extended before it (negative k).

    Incremental runs catch up from the step after a watermark that may lie before
    ``start`` (a sliding ``today-3d`` after a week without runs): those steps are the
    range's own, continued backward from its anchor, so month clamping agrees.
    """

    span: _Span
    fmt: str

    @property
    def count(self) -> int:
        """Steps from ``start`` to ``end``, inclusive."""
        return self.span.count

    def text(self, k: int) -> str:
        """The k-th value as the format renders it."""
        return _render(self.span.at(k), self.fmt)

    def first_after(self, watermark: str) -> int:
        """The index of the first step rendered after ``watermark`` (negative: before start).

        Found by exponential search backward, then bisection: never walked.
        """
        mark = parse_value(watermark, self.fmt)
        if not self._after(0, mark):
            return self._bisect(0, self.count, mark)
        reach = 1
        while self._after(-reach, mark):
            reach *= 2
        return self._bisect(-reach, -reach // 2 if reach > 1 else 0, mark)

    def _after(self, k: int, mark: datetime) -> bool:
        try:
            return parse_value(self.text(k), self.fmt) > mark
        except (OverflowError, ValueError):
            return False  # before the first representable date: not after anything

    def _bisect(self, low: int, high: int, mark: datetime) -> int:
        # invariant: step low - 1 (or low itself) is not after mark; high is, or is the end
        while low < high:
            middle = (low + high) // 2
            if self._after(middle, mark):
                high = middle
            else:
                low = middle + 1
        return low


def grid(start: str, end: str, *, step: str, fmt: str) -> Grid:
    """The ``Grid`` of a range (validated as ``expand_date_range`` validates it).

    Raises:
        ValueError: a bad range or format.
    """
    span = _span(start, end, step)
    _render(span.start, fmt)
    return Grid(span, fmt)
