"""The adaptive per-origin limit (CONTRACT §14) on a fake clock, and the S3 retry loop."""

from __future__ import annotations

import asyncio
import itertools
import time
from typing import Any

import pytest

from ingest_core.errors import S3WriteError
from ingest_core.limits import AdaptiveLimit, OriginLimits, Outcome
from ingest_core.s3retry import S3Retry, current, write_scope

pytestmark = pytest.mark.timeout(20)


class FakeClock:
    """``time.monotonic`` and ``asyncio.sleep`` for the limit: sleeping moves time on."""

    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)


def limit_on(clock: FakeClock, ceiling: int = 64, **kwargs: bool) -> AdaptiveLimit:
    return AdaptiveLimit(ceiling, clock=clock, sleep=clock.sleep, **kwargs)


async def test_a_throttle_halves_the_limit_and_each_success_adds_one_up_to_the_ceiling() -> None:
    # GIVEN a limit of 8
    clock = FakeClock()
    limit = limit_on(clock, 8)
    # WHEN one request is throttled, then three succeed
    limit.release(await limit.acquire(), Outcome.THROTTLED)
    assert limit.limit == 4
    for _ in range(3):
        limit.release(await limit.acquire(), Outcome.SUCCESS)
    # THEN it went down by half and back up by one per success, never above the ceiling
    assert limit.limit == 7
    for _ in range(5):
        limit.release(await limit.acquire(), Outcome.SUCCESS)
    assert (limit.limit, limit.lowest, limit.throttled) == (8, 4, 1)


async def test_the_limit_never_goes_below_one_and_other_failures_leave_it_alone() -> None:
    clock = FakeClock()
    limit = limit_on(clock, 4)
    for _ in range(5):
        limit.release(await limit.acquire(), Outcome.THROTTLED)
        clock.now += 10  # a new round each time
    assert limit.limit == 1
    limit.release(await limit.acquire(), Outcome.OTHER)
    assert limit.limit == 1


async def test_the_throttles_of_one_burst_halve_the_limit_once() -> None:
    # GIVEN 64 requests in flight together
    clock = FakeClock()
    limit = limit_on(clock)
    starts = [await limit.acquire() for _ in range(64)]
    # WHEN 24 of them come back throttled
    for started in starts[:24]:
        limit.release(started, Outcome.THROTTLED)
    # THEN the limit halved once (they were all sent under the old limit), all 24 counted
    assert limit.limit == 32
    assert limit.throttled == 24
    # AND a request sent after the decrease can decrease it again
    for started in starts[24:]:
        limit.release(started, Outcome.OTHER)
    clock.now += 0.5
    limit.release(await limit.acquire(), Outcome.THROTTLED)
    assert limit.limit == 16


async def test_no_request_starts_beyond_the_limit_until_one_is_released() -> None:
    clock = FakeClock()
    limit = limit_on(clock, 2)
    first, _ = await limit.acquire(), await limit.acquire()
    third = asyncio.create_task(limit.acquire())
    await asyncio.sleep(0.01)
    assert not third.done()
    limit.release(first, Outcome.SUCCESS)
    await asyncio.wait_for(third, 1)
    assert limit.in_flight == 2


async def test_retry_after_pauses_every_new_request_to_the_origin() -> None:
    # GIVEN one request throttled with Retry-After: 3
    clock = FakeClock()
    limit = limit_on(clock, learn_pace=False)
    throttled_at = clock.now
    limit.release(await limit.acquire(), Outcome.THROTTLED, retry_after_s=3)
    # WHEN other requests (not the throttled one) want to start
    starts = [await limit.acquire() for _ in range(3)]
    # THEN none starts before the pause is over
    assert min(starts) >= throttled_at + 3
    assert "paused" not in limit.describe()


async def test_after_a_throttle_requests_start_at_the_pace_the_origin_admitted() -> None:
    # GIVEN 64 requests sent at once to an origin that admits 40 per second,
    # answering the 24 others 429 with Retry-After: 1
    clock = FakeClock()
    limit = limit_on(clock)
    starts = [await limit.acquire() for _ in range(64)]
    for started in starts[:24]:
        limit.release(started, Outcome.THROTTLED, retry_after_s=1)
    for started in starts[24:]:
        limit.release(started, Outcome.SUCCESS)
    # THEN the pace is what it admitted (40/s, then a little more per success)...
    assert limit.pace is not None and 40 <= limit.pace < 42
    # ...and the next requests start evenly spaced after the pause, not in a burst
    nxt = [await limit.acquire() for _ in range(20)]
    assert nxt[0] >= starts[0] + 1
    gaps = [b - a for a, b in itertools.pairwise(nxt)]
    assert all(1 / 45 < gap <= 1 / 40 + 1e-9 for gap in gaps), gaps
    assert "at 4" in limit.describe()


async def test_disabled_it_never_waits_but_still_counts_throttles() -> None:
    clock = FakeClock()
    limit = limit_on(clock, 1, enabled=False)
    for _ in range(5):
        limit.release(await limit.acquire(), Outcome.THROTTLED, retry_after_s=30)
    await limit.acquire()
    assert clock.slept == []
    assert (limit.throttled, limit.limit) == (5, 1)


def test_origin_limits_keep_one_limit_per_origin() -> None:
    limits = OriginLimits(8)
    api = limits.for_origin("https://api.example.com")
    assert limits.for_origin("https://api.example.com") is api
    assert limits.for_origin("s3") is not api
    api.release(0.0, Outcome.THROTTLED)
    assert limits.throttled == 1


# ------------------------------------------------------------------ S3 retries


def slowdown() -> S3WriteError:
    return S3WriteError("PutObject: HTTP 503 SlowDown", retryable=True, throttled=True)


class Flaky:
    """Fails the first ``failures`` calls with SlowDown, then answers "ok"."""

    def __init__(self, failures: int) -> None:
        self.failures, self.calls = failures, 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.calls <= self.failures:
            raise slowdown()
        return "ok"


async def test_s3_calls_are_retried_until_they_pass_and_counted() -> None:
    retry = S3Retry(max_attempts=10, base_s=0)
    send = Flaky(4)
    assert await retry.call(send) == "ok"
    assert (send.calls, retry.stats.retries, retry.stats.throttled) == (5, 4, 4)
    assert retry.stats.attempts == 5


async def test_s3_retries_stop_at_max_attempts_and_say_so() -> None:
    retry = S3Retry(max_attempts=3, base_s=0)
    send = Flaky(99)
    with pytest.raises(S3WriteError, match=r"after 3 attempts \(s3_max_attempts reached\)") as err:
        await retry.call(send)
    assert (send.calls, err.value.attempts, retry.stats.attempts) == (3, 3, 3)


async def test_s3_errors_that_are_not_transient_are_not_retried() -> None:
    retry = S3Retry(max_attempts=10, base_s=0)

    async def denied() -> None:
        raise S3WriteError("PutObject: HTTP 403 AccessDenied", code="AccessDenied")

    with pytest.raises(S3WriteError, match=r"after 1 attempt$"):
        await retry.call(denied)
    assert retry.stats.retries == 0


async def test_s3_retries_stop_when_the_deadline_leaves_no_time() -> None:
    retry = S3Retry(max_attempts=10, deadline=time.monotonic() - 1)
    send = Flaky(99)
    with pytest.raises(S3WriteError, match=r"after 1 attempt \(the deadline"):
        await retry.call(send)
    assert send.calls == 1


async def test_s3_throttles_shrink_the_s3_limit() -> None:
    limit = AdaptiveLimit(16, learn_pace=False)
    retry = S3Retry(max_attempts=10, base_s=0, limit=limit)
    await retry.call(Flaky(1))
    assert (limit.throttled, limit.lowest, limit.limit) == (1, 8, 9)


def test_the_write_scope_is_what_writers_see_and_is_undone_after() -> None:
    outside = current()
    assert outside.max_attempts == 10
    with write_scope(S3Retry(max_attempts=2)) as stats:
        assert current().max_attempts == 2
        assert current().stats is stats
    assert current().max_attempts == 10


# ------------------------------------------------------------------ observability


def test_throttles_are_in_the_summary_line_and_the_emf_metrics() -> None:
    from ingest_core.observability import publish_metrics, summary

    result = {
        "source_id": "src",
        "status": "SUCCESS",
        "succeeded": 3,
        "failed": 0,
        "not_attempted": 0,
        "retries": 5,
        "throttled": 4,
        "bytes_written": 10,
        "records_ingested": 3,
        "failures": [],
    }

    class Recorder:
        def __init__(self) -> None:
            self.metrics: dict[str, float] = {}

        def add_dimension(self, name: str, value: str) -> None:
            pass

        def add_metric(self, name: str, unit: object, value: float) -> None:
            self.metrics[name] = value

    recorder = Recorder()
    publish_metrics(recorder, result, [12, 30])
    assert recorder.metrics["throttled"] == 4
    assert summary(result)["throttled"] == 4


async def test_odd_throttles_from_a_flaky_server_set_no_pace() -> None:
    # GIVEN an origin that answers one request in 30 with 503, whatever the rate
    clock = FakeClock()
    limit = limit_on(clock)
    # WHEN 3,000 requests go, 100 in flight at a time, 100 ms each
    for _ in range(30):
        starts = [await limit.acquire() for _ in range(min(limit.limit, 100))]
        clock.now += 0.1
        for n, started in enumerate(starts):
            limit.release(started, Outcome.THROTTLED if n % 30 == 0 else Outcome.SUCCESS)
    # THEN no pace was learned (no ratchet down to a crawl), and concurrency recovered
    assert limit.pace is None
    assert limit.throttled > 30
    assert limit.limit > 32


# ------------------------------------------------------ SDK calls outside the writer


def client_error(code: str, status: int) -> Exception:
    from botocore.exceptions import ClientError

    response: Any = {"Error": {"Code": code}, "ResponseMetadata": {"HTTPStatusCode": status}}
    return ClientError(response, "PutObject")


async def test_sdk_calls_outside_the_writer_retry_throttling_and_keep_botocore_errors() -> None:
    from botocore.exceptions import ClientError

    from ingest_core.writers import with_s3_retries

    # GIVEN a call that S3 answers SlowDown twice, then accepts
    calls: list[int] = []

    async def flaky() -> str:
        calls.append(1)
        if len(calls) <= 2:
            raise client_error("SlowDown", 503)
        return "stored"

    # WHEN it goes through with_s3_retries (no backoff, to keep the test fast)
    with write_scope(S3Retry(base_s=0)) as stats:
        # THEN it is retried until it passes, and counted
        assert await with_s3_retries("PutObject", flaky) == "stored"
    assert (len(calls), stats.retries, stats.throttled) == (3, 2, 2)

    # AND an answer that is not transient comes back as botocore's own error, at once
    async def conflict() -> None:
        raise client_error("PreconditionFailed", 412)

    with pytest.raises(ClientError, match="PreconditionFailed"):
        await with_s3_retries("PutObject", conflict)

    # AND one that stays throttled comes back as botocore's error after the last attempt
    async def throttled() -> None:
        raise client_error("SlowDown", 503)

    with write_scope(S3Retry(base_s=0, max_attempts=3)) as stats:
        with pytest.raises(ClientError, match="SlowDown"):
            await with_s3_retries("PutObject", throttled)
    assert stats.attempts == 3
