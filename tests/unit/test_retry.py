"""Backoff and Retry-After."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest

from ingest_core.retry import RETRY_AFTER_CAP_S, backoff_s, is_retryable_status, parse_retry_after


@pytest.mark.parametrize("status", [408, 425, 429, 500, 502, 503, 504])
def test_retryable_statuses(status: int) -> None:
    assert is_retryable_status(status)


@pytest.mark.parametrize("status", [400, 401, 403, 404, 409, 410, 422, 501])
def test_other_statuses_are_not_retried(status: int) -> None:
    assert not is_retryable_status(status)


def test_backoff_is_full_jitter_under_an_exponential_ceiling() -> None:
    rand = random.Random(7)
    for attempt in range(1, 12):
        ceiling = min(20.0, 0.2 * 2 ** (attempt - 1))
        samples = [backoff_s(attempt, rand=rand) for _ in range(200)]
        assert all(0 <= s <= ceiling for s in samples)
        assert max(samples) > ceiling * 0.8  # jitter spans the range, not a fixed delay


def test_retry_after_seconds_and_http_date() -> None:
    now = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)
    assert parse_retry_after("3") == 3.0
    assert (
        parse_retry_after(format_datetime(now + timedelta(seconds=42), usegmt=True), now=now) == 42
    )
    assert parse_retry_after(format_datetime(now - timedelta(seconds=5), usegmt=True), now=now) == 0
    assert parse_retry_after("99999") == RETRY_AFTER_CAP_S


@pytest.mark.parametrize(
    "value",
    [
        None,
        "",
        "soon",
        "-3",
        "1.5",
        "²",
        "1²",
        "١٢",
        "\uff11\uff10",  # full-width "10"
        "Fri, 31 Dec 99999 23:59:59 GMT",
        "0x10",
    ],
)
def test_unreadable_retry_after_is_ignored(value: str | None) -> None:
    assert parse_retry_after(value) is None
