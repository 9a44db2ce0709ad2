"""Retry policy for API requests (CONTRACT §7): which answers to retry and how long to wait."""

from __future__ import annotations

import random
import re
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

RETRYABLE_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
BACKOFF_BASE_S = 0.2
BACKOFF_CAP_S = 20.0
RETRY_AFTER_CAP_S = 900.0  # a Lambda lives at most 15 minutes
_DELTA_SECONDS_RE = re.compile(r"[0-9]+")


def is_retryable_status(status: int) -> bool:
    """True for the statuses CONTRACT §7 retries; other 4xx are never retried."""
    return status in RETRYABLE_STATUSES


def backoff_s(
    attempt: int,
    *,
    base_s: float = BACKOFF_BASE_S,
    cap_s: float = BACKOFF_CAP_S,
    rand: random.Random | None = None,
) -> float:
    """Full-jitter exponential backoff before attempt ``attempt + 1``.

    Args:
        attempt: the attempt that just failed, counting from 1.
        base_s: the ceiling after the first attempt.
        cap_s: the largest ceiling.
        rand: a random source, for reproducible tests.
    """
    ceiling = min(cap_s, base_s * 2 ** (attempt - 1))
    return (rand or random).uniform(0, ceiling)


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP-date).

    Returns ``None`` when the header is absent or unreadable, and never a
    negative number or more than ``RETRY_AFTER_CAP_S``.
    """
    if not value:
        return None
    value = value.strip()
    # ASCII digits only: str.isdigit() is also true for "²", which float() refuses.
    if _DELTA_SECONDS_RE.fullmatch(value):
        return min(float(value), RETRY_AFTER_CAP_S)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    delta = (when - (now or datetime.now(UTC))).total_seconds()
    return min(max(delta, 0.0), RETRY_AFTER_CAP_S)
