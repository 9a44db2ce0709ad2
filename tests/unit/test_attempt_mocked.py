"""The one attempt loop (``ingest_core.attempt``) over mocked aiohttp responses.

Every page of every mode goes through ``Attempts.page``; here its answers come from
aioresponses (``tests.support.mock_http``), so the loop meets real
``ClientResponse`` objects: what it retries, how many attempts and throttled answers
it counts, when Retry-After fails a page at once, that a page the clock refuses
never sends anything (0 attempts), and that a write error is not retried here.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from yarl import URL

from ingest_core.attempt import Attempted, Attempts, PageFailed
from ingest_core.clock import RunClock
from ingest_core.errors import (
    DeadlineExceeded,
    FailureKind,
    FetchTimeout,
    HTTPStatusError,
    S3WriteError,
)
from ingest_core.fetcher import FetchRequest
from ingest_core.limits import AdaptiveLimit, TokenBucket
from ingest_core.netguard import NetPolicy
from tests.support.mock_http import mock_http

ENDPOINT = "https://api.example.com/v1/data"
PARAMS = [("date", "2025-01-01")]
PAGE_URL = URL(ENDPOINT).with_query(PARAMS)
BODY = b'[{"n": 1}]'
MAX_ATTEMPTS = 3


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def attempts(http: aiohttp.ClientSession, *, deadline_in_s: float = 60.0, **kw: Any) -> Attempts:
    return Attempts(
        http=http,
        policy=NetPolicy(),
        clock=RunClock.for_deadline(time.monotonic() + deadline_in_s, 1.0),
        limit=AdaptiveLimit(4),
        bucket=TokenBucket(0),
        max_attempts=kw.pop("max_attempts", MAX_ATTEMPTS),
        attempt_timeout_s=kw.pop("attempt_timeout_s", 5.0),
        **kw,
    )


REQUEST = FetchRequest(url=ENDPOINT, params=PARAMS, headers={})


async def read(response: aiohttp.ClientResponse) -> bytes:
    return await response.read()


def sent(mocked: Any) -> int:
    return len(mocked.requests.get(("GET", PAGE_URL), []))


async def test_a_503_then_a_200_takes_two_attempts_and_counts_one_throttle(
    http: aiohttp.ClientSession,
) -> None:
    with mock_http() as mocked:
        mocked.get(str(PAGE_URL), status=503)
        mocked.get(str(PAGE_URL), body=BODY)
        done = await attempts(http).page(REQUEST, read, "page 0")
        assert sent(mocked) == 2
    assert done == Attempted(BODY, attempts=2, throttled=1)


async def test_retry_after_is_waited_for_before_the_next_attempt(
    http: aiohttp.ClientSession,
) -> None:
    with mock_http() as mocked:
        mocked.get(str(PAGE_URL), status=429, headers={"Retry-After": "1"})
        mocked.get(str(PAGE_URL), body=BODY)
        started = time.monotonic()
        done = await attempts(http).page(REQUEST, read, "page 0")
        waited = time.monotonic() - started
    assert (done.attempts, done.throttled) == (2, 1)
    assert waited >= 1.0  # the backoff alone is at most 0.2 s for a first retry


async def test_a_retry_after_beyond_the_time_left_fails_at_once_as_throttled(
    http: aiohttp.ClientSession,
) -> None:
    with mock_http() as mocked:
        mocked.get(str(PAGE_URL), status=429, headers={"Retry-After": "120"})
        with pytest.raises(PageFailed) as caught:
            await attempts(http, deadline_in_s=30).page(REQUEST, read, "page 0")
        assert sent(mocked) == 1
    assert caught.value.attempts == 1 and caught.value.throttled == 1
    assert caught.value.error.kind is FailureKind.THROTTLED  # type: ignore[attr-defined]


async def test_a_status_that_is_not_retryable_is_sent_once(http: aiohttp.ClientSession) -> None:
    with mock_http() as mocked:
        mocked.get(str(PAGE_URL), status=404)
        with pytest.raises(PageFailed) as caught:
            await attempts(http).page(REQUEST, read, "page 0")
        assert sent(mocked) == 1
    assert isinstance(caught.value.error, HTTPStatusError) and caught.value.error.status == 404
    assert (caught.value.attempts, caught.value.throttled) == (1, 0)


async def test_a_retryable_status_gives_up_after_max_attempts(http: aiohttp.ClientSession) -> None:
    with mock_http() as mocked:
        for _ in range(MAX_ATTEMPTS + 1):
            mocked.get(str(PAGE_URL), status=500)
        with pytest.raises(PageFailed) as caught:
            await attempts(http).page(REQUEST, read, "page 0")
        assert sent(mocked) == MAX_ATTEMPTS
    assert caught.value.attempts == MAX_ATTEMPTS and caught.value.throttled == 0


async def test_a_dropped_connection_is_retried(http: aiohttp.ClientSession) -> None:
    with mock_http() as mocked:
        mocked.get(str(PAGE_URL), exception=aiohttp.ServerDisconnectedError())
        mocked.get(str(PAGE_URL), body=BODY)
        done = await attempts(http).page(REQUEST, read, "page 0")
    assert (done.value, done.attempts, done.throttled) == (BODY, 2, 0)


async def test_a_page_the_clock_refuses_sends_nothing_and_has_zero_attempts(
    http: aiohttp.ClientSession,
) -> None:
    # GIVEN a run already past the point where new requests may start
    with mock_http() as mocked:
        mocked.get(str(PAGE_URL), body=BODY)
        with pytest.raises(PageFailed) as caught:
            await attempts(http, deadline_in_s=0.5).page(REQUEST, read, "page 0")
        # THEN nothing was sent, and the page counts as never attempted
        assert sent(mocked) == 0
    assert caught.value.attempts == 0
    assert isinstance(caught.value.error, DeadlineExceeded)


async def test_a_write_error_from_the_sink_is_not_retried_by_the_api_loop(
    http: aiohttp.ClientSession,
) -> None:
    async def store(response: aiohttp.ClientResponse) -> bytes:
        await response.read()
        raise S3WriteError("PutObject failed: AccessDenied")

    with mock_http() as mocked:
        mocked.get(str(PAGE_URL), body=BODY)
        mocked.get(str(PAGE_URL), body=BODY)
        with pytest.raises(PageFailed) as caught:
            await attempts(http).page(REQUEST, store, "page 0")
        assert sent(mocked) == 1  # S3's own retries are s3retry's, not a new fetch
    assert isinstance(caught.value.error, S3WriteError) and caught.value.attempts == 1


async def test_an_attempt_slower_than_attempt_timeout_s_is_cut_and_retried(
    http: aiohttp.ClientSession,
) -> None:
    calls = 0

    async def slow_once(response: aiohttp.ClientResponse) -> bytes:
        nonlocal calls
        calls += 1
        if calls == 1:
            await asyncio.sleep(5)
        return await response.read()

    with mock_http() as mocked:
        mocked.get(str(PAGE_URL), body=BODY)
        mocked.get(str(PAGE_URL), body=BODY)
        done = await attempts(http, attempt_timeout_s=0.2).page(REQUEST, slow_once, "page 0")
    assert (done.value, done.attempts) == (BODY, 2)


async def test_an_attempt_that_always_times_out_fails_as_timeout(
    http: aiohttp.ClientSession,
) -> None:
    async def stall(response: aiohttp.ClientResponse) -> bytes:
        await asyncio.sleep(5)
        return b""

    with mock_http() as mocked:
        for _ in range(2):
            mocked.get(str(PAGE_URL), body=BODY)
        with pytest.raises(PageFailed) as caught:
            await attempts(http, max_attempts=2, attempt_timeout_s=0.1).page(
                REQUEST, stall, "page 0"
            )
    assert isinstance(caught.value.error, FetchTimeout) and caught.value.attempts == 2
