"""The one attempt loop (CONTRACT §7, §14, §16) over real aiohttp responses (aioresponses).

Every page of every item goes through ``Attempts.page``; here it meets mocked answers
(``tests.support.mock_http``) so what it reads is what aiohttp parses: retries of
the statuses that may be retried, 429/503 counted, a status that may not be retried
failing at once, a storing error never retried, and a page refused once the
deadline's margin has begun (``attempts == 0``: not attempted).
"""

from __future__ import annotations

import time
from typing import Any

import aiohttp
import pytest

from ingest_core import attempt as attempt_module
from ingest_core.attempt import Attempted, Attempts, PageFailed
from ingest_core.clock import RunClock
from ingest_core.errors import DeadlineExceeded, HTTPStatusError, S3WriteError
from ingest_core.fetcher import FetchRequest
from ingest_core.limits import AdaptiveLimit, TokenBucket
from ingest_core.netguard import NetPolicy
from tests.support.mock_http import mock_http

URL = "http://127.0.0.1:9/v1/items"
POLICY = NetPolicy(allow_private_networks=True)
REQUEST = FetchRequest(url=URL, params=None, headers={})


@pytest.fixture(autouse=True)
def no_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    """Backoff is retry.py's to test; here the loop's decisions, without the waits."""
    monkeypatch.setattr(attempt_module, "backoff_s", lambda attempt: 0.0)


def attempts(http: aiohttp.ClientSession, clock: RunClock | None = None, **kw: Any) -> Attempts:
    return Attempts(
        http=http,
        policy=POLICY,
        clock=clock or RunClock.for_deadline(None, 5.0),
        limit=kw.pop("limit", AdaptiveLimit(8)),
        bucket=TokenBucket(0),
        max_attempts=kw.pop("max_attempts", 4),
        attempt_timeout_s=kw.pop("attempt_timeout_s", 5.0),
    )


async def read_json(response: aiohttp.ClientResponse) -> Any:
    return await response.json()


async def test_retryable_statuses_are_retried_and_each_throttle_counted() -> None:
    # GIVEN a page answered 503, then 429, then 200
    with mock_http() as mocked:
        mocked.get(URL, status=503)
        mocked.get(URL, status=429)
        mocked.get(URL, payload={"ok": True})
        async with aiohttp.ClientSession() as http:
            # WHEN it is fetched through the loop
            done = await attempts(http).page(REQUEST, read_json, "page 0")
    # THEN it succeeds on the third attempt, with both throttled answers counted
    assert done == Attempted({"ok": True}, attempts=3, throttled=2)


async def test_a_status_that_may_not_be_retried_fails_at_once() -> None:
    with mock_http() as mocked:
        mocked.get(URL, status=404)
        async with aiohttp.ClientSession() as http:
            with pytest.raises(PageFailed) as failed:
                await attempts(http).page(REQUEST, read_json, "page 0")
    assert isinstance(failed.value.error, HTTPStatusError)
    assert (failed.value.attempts, failed.value.throttled) == (1, 0)


async def test_throttled_answers_of_a_page_that_fails_are_kept() -> None:
    # GIVEN a page answered 429 on every one of its 3 attempts
    with mock_http() as mocked:
        for _ in range(3):
            mocked.get(URL, status=429)
        async with aiohttp.ClientSession() as http:
            with pytest.raises(PageFailed) as failed:
                await attempts(http, max_attempts=3).page(REQUEST, read_json, "page 0")
    # THEN the failure carries all three throttled answers (the engine counts them)
    assert (failed.value.attempts, failed.value.throttled) == (3, 3)


async def test_a_storing_error_is_not_retried_by_the_api_loop() -> None:
    # GIVEN a sink whose write fails (S3's own retries are done by then)
    async def refuse(response: aiohttp.ClientResponse) -> None:
        raise S3WriteError("PutObject: AccessDenied", code="AccessDenied")

    with mock_http() as mocked:
        mocked.get(URL, payload=[1])
        async with aiohttp.ClientSession() as http:
            with pytest.raises(PageFailed) as failed:
                await attempts(http).page(REQUEST, refuse, "page 0")
    # THEN one attempt, the write error as the reason
    assert isinstance(failed.value.error, S3WriteError)
    assert failed.value.attempts == 1


async def test_a_page_refused_by_the_clock_sends_nothing_and_has_0_attempts() -> None:
    # GIVEN a clock whose stop_starting has passed
    clock = RunClock.for_deadline(time.monotonic() + 1.0, 2.0)
    with mock_http() as mocked:
        async with aiohttp.ClientSession() as http:
            with pytest.raises(PageFailed) as failed:
                await attempts(http, clock).page(REQUEST, read_json, "page 3")
            sent = len(mocked.requests)
    # THEN nothing was sent: 0 attempts, kind deadline, naming the page
    assert sent == 0
    assert failed.value.attempts == 0
    assert isinstance(failed.value.error, DeadlineExceeded)
    assert "page 3 not started" in str(failed.value.error)


def test_no_retry_is_started_that_would_begin_after_stop_starting() -> None:
    # GIVEN a Retry-After of 10 s with 2 s left before stop_starting
    clock = RunClock.for_deadline(time.monotonic() + 3.0, 1.0)
    loop = attempts(None, clock)  # type: ignore[arg-type]  # retry_delay sends nothing
    long = HTTPStatusError("HTTP 503", status=503, retryable=True, retry_after_s=10.0)
    short = HTTPStatusError("HTTP 503", status=503, retryable=True, retry_after_s=0.5)
    # THEN the loop gives up instead of waiting into the margin; a short one is waited
    assert loop.retry_delay(long, 1) is None
    assert loop.retry_delay(short, 1) == 0.5
