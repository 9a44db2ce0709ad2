"""One page's attempts: the only retry loop of the engine (CONTRACT §7, §14).

Every page, of a paginated item or the single page of an unpaginated one, goes
through ``Attempts.page``: it takes a slot of the API's adaptive limit and a token
of the fixed rate limit, refuses to send once the clock says no more may start,
opens the response (redirects and the one 401 refresh of the auth provider are
``fetcher.open_response``'s), hands it to the sink's ``store`` under the
per-attempt timeout, counts 429/503 answers, and retries what may be retried
after ``retry_delay``. It returns an ``Attempted`` or raises ``PageFailed``; a
page that never sent a request fails with ``attempts == 0`` (``not_attempted``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

import aiohttp

from ingest_core.clock import RunClock
from ingest_core.config import DEFAULT_MAX_RETRY_AFTER_S
from ingest_core.errors import (
    DeadlineExceeded,
    FetchError,
    FetchTimeout,
    HTTPStatusError,
    WriteError,
)
from ingest_core.fetcher import FetchRequest, open_response
from ingest_core.limits import (
    AdaptiveLimit,
    Outcome,
    Slot,
    TokenBucket,
    refuse_long_retry_after,
)
from ingest_core.netguard import NetPolicy
from ingest_core.retry import backoff_s

T = TypeVar("T")
THROTTLE_STATUSES = frozenset({429, 503})  # the API asking us to slow down (CONTRACT §14)
Store = Callable[[aiohttp.ClientResponse], Awaitable[T]]


@dataclass(slots=True)  # not frozen: one per page, and a frozen init costs a setattr a field
class Attempted(Generic[T]):
    """A page that succeeded: what its sink stored, after how many attempts."""

    value: T
    attempts: int
    throttled: int  # 429/503 answers met on the way


class PageFailed(Exception):
    """A page failed for good; carries why and what its attempts came to.

    ``attempts == 0``: no request was sent (the deadline or a stop came first).
    """

    def __init__(self, error: Exception, attempts: int, throttled: int = 0) -> None:
        super().__init__(str(error))
        self.error = error
        self.attempts = attempts
        self.throttled = throttled


@dataclass(slots=True)
class Attempts:
    """What every page's attempts share in one run."""

    http: aiohttp.ClientSession
    policy: NetPolicy
    clock: RunClock
    limit: AdaptiveLimit  # the API origin's adaptive limit
    bucket: TokenBucket  # the fixed rate limit, on top
    max_attempts: int
    attempt_timeout_s: float
    max_retry_after_s: float = DEFAULT_MAX_RETRY_AFTER_S

    async def page(self, request: FetchRequest, store: Store[T], what: str) -> Attempted[T]:
        """Fetch ``request`` and ``store`` its response, retrying; raises ``PageFailed``."""
        throttled = 0
        error: Exception | None = None
        for attempt in range(1, self.max_attempts + 1):
            async with self.limit.slot() as slot:
                await self.bucket.acquire()
                if not self.clock.may_start():  # the margin is not for sending
                    late = DeadlineExceeded(f"{what} not started: {self.clock.reason}")
                    raise PageFailed(error or late, attempt - 1, throttled)
                outcome = await self._once(request, store, slot)
            if not isinstance(outcome, _Failed):
                return Attempted(outcome, attempt, throttled)
            error = outcome.error
            throttled += slot.outcome is Outcome.THROTTLED
            delay = self.retry_delay(error, attempt)
            if delay is None:
                raise PageFailed(error, attempt, throttled)
            await asyncio.sleep(delay)
        raise AssertionError("unreachable: the last attempt always returns or raises")

    def retry_delay(self, error: Exception, attempt: int) -> float | None:
        """Seconds to wait before the next attempt, or None to give up now.

        The one place the retry decision is made (Retry-After included).
        """
        if isinstance(error, WriteError):
            return None  # S3's retries are s3retry's; the API answered
        if not getattr(error, "retryable", False) or attempt >= self.max_attempts:
            return None
        delay = backoff_s(attempt)
        if isinstance(error, HTTPStatusError) and error.retry_after_s is not None:
            delay = max(delay, error.retry_after_s)
        if time.monotonic() + delay >= self.clock.stop_starting:
            return None  # Retry-After honoured only within the deadline
        return delay

    async def _once(self, request: FetchRequest, store: Store[T], slot: Slot) -> T | _Failed:
        """One attempt; its outcome (throttled or not) recorded on the API's ``slot``."""
        try:
            async with asyncio.timeout(self.attempt_timeout_s):
                async with open_response(self.http, request, self.policy) as response:
                    stored = await store(response)
        except FetchError as exc:
            if isinstance(exc, HTTPStatusError) and exc.status in THROTTLE_STATUSES:
                slot.throttled(exc.retry_after_s)
            # A Retry-After beyond the time left or max_retry_after_s fails the page
            # throttled now (CONTRACT §14); whether the origin pauses is the limit's call.
            left_s = self.clock.stop_starting - time.monotonic()
            limit_s = self.max_retry_after_s
            return _Failed(refuse_long_retry_after(exc, left_s=left_s, max_retry_after_s=limit_s))
        except TimeoutError:
            return _Failed(FetchTimeout(f"attempt took longer than {self.attempt_timeout_s}s"))
        except WriteError as exc:
            slot.succeeded()  # the API answered; storing is S3's side
            return _Failed(exc)
        slot.succeeded()
        return stored


@dataclass(frozen=True, slots=True)
class _Failed:
    """An attempt's error as a value, so a sink's result is never mistaken for one."""

    error: Exception
