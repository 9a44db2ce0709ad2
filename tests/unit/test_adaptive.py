"""The adaptive per-origin limit (CONTRACT §14) on a fake clock, the Retry-After verdict,
and the S3 retry loop."""

from __future__ import annotations

import asyncio
import itertools
import random
import re
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

from ingest_core.errors import FailureKind, HTTPStatusError, RetryAfterTooLong, S3WriteError
from ingest_core.limits import (
    BETA,
    CUBIC_C,
    S3_ORIGIN,
    S3_PACE_AFTER_S,
    AdaptiveLimit,
    OriginLimits,
    Outcome,
    refuse_long_retry_after,
)
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


def limit_on(clock: FakeClock, ceiling: int = 64, **kwargs: Any) -> AdaptiveLimit:
    return AdaptiveLimit(ceiling, clock=clock, sleep=clock.sleep, **kwargs)


class ServerBucket:
    """An origin's own rate limit on the fake clock: ``rate`` a second, ``burst`` at most."""

    def __init__(self, clock: FakeClock, rate: float, burst: float) -> None:
        self.clock, self.rate, self.burst = clock, rate, burst
        self.tokens, self.updated = burst, clock.now

    def admits(self) -> bool:
        now = self.clock.now
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


Answer = Callable[[int], Outcome]


async def drive(
    limit: AdaptiveLimit,
    clock: FakeClock,
    *,
    seconds: float,
    rtt_s: float,
    answer: Answer,
    retry_after_s: float | None = None,
    throttles_first: bool = True,
) -> Counter[Outcome]:
    """Rounds of as many requests as the limit allows, answered ``rtt_s`` after the last
    one started: throttles first (a rate limit answers them at once), or in random order
    (answers to requests started at different times interleave)."""
    seen: Counter[Outcome] = Counter()
    end, n = clock.now + seconds, 0
    while clock.now < end:
        sent = []
        for _ in range(limit.limit):
            started = await limit.acquire()
            sent.append((started, answer(n)))
            n += 1
        clock.now += rtt_s
        if throttles_first:
            sent.sort(key=lambda s: s[1] is not Outcome.THROTTLED)
        else:
            random.Random(n).shuffle(sent)
        for started, outcome in sent:
            limit.release(started, outcome, retry_after_s=retry_after_s)
            seen[outcome] += 1
    return seen


def refusing(share: float, seed: int = 7) -> Answer:
    """Refuses ``share`` of requests at random, whatever their rate."""
    rng = random.Random(seed)
    return lambda _: Outcome.THROTTLED if rng.random() < share else Outcome.SUCCESS


async def test_one_throttle_is_no_evidence_only_the_item_that_got_it_waits() -> None:
    # GIVEN 64 requests in flight, answered: one 429 + Retry-After: 900, 63 successes
    clock = FakeClock()
    limit = limit_on(clock)
    starts = [await limit.acquire() for _ in range(64)]
    limit.release(starts[0], Outcome.THROTTLED, retry_after_s=900)
    for started in starts[1:]:
        limit.release(started, Outcome.SUCCESS)
    # THEN the origin neither shrank, nor paused, nor learned a pace; the 429 is counted
    assert (limit.limit, limit.lowest, limit.pace, limit.throttled) == (64, 64, None, 1)
    assert await limit.acquire() == clock.now and clock.slept == []


async def test_a_sprinkle_of_429s_and_503s_never_slows_an_origin_with_no_rate_limit() -> None:
    # GIVEN an origin refusing 6% of requests at random (2% 429 + Retry-After: 1, 4% 503),
    # no rate limit at all; 128 in flight, 100 ms each, for 30 s (~38,000 requests)
    clock = FakeClock()
    limit = limit_on(clock, 128)
    seen = await drive(
        limit,
        clock,
        seconds=30,
        rtt_s=0.1,
        answer=refusing(0.06),
        retry_after_s=1,
        throttles_first=False,
    )
    # THEN concurrency never moved, no pause, no pace: the run went at full speed
    assert seen[Outcome.THROTTLED] > 1500
    assert (limit.lowest, limit.lowest_pace) == (128, None)
    assert clock.slept == []


async def test_a_burst_beyond_a_rate_limit_decreases_once_and_paces_at_what_was_admitted() -> None:
    # GIVEN 64 requests sent at once to an origin admitting 40 (a bucket of 40 at 40/s),
    # the 24 others answered 429 + Retry-After: 1
    clock = FakeClock()
    limit = limit_on(clock)
    starts = [await limit.acquire() for _ in range(64)]
    for started in starts[:24]:
        limit.release(started, Outcome.THROTTLED, retry_after_s=1)
    for started in starts[24:]:
        limit.release(started, Outcome.SUCCESS)
    # THEN concurrency went down once by BETA, and the pace starts at BETA x 40/s (CUBIC)
    assert (limit.lowest, limit.limit) == (int(64 * BETA), 64)
    assert limit.pace == pytest.approx(40 * BETA)
    # AND, the origin being over its limit, new requests wait for the Retry-After, then
    # start evenly spaced at the pace, not in a burst
    nxt = [await limit.acquire() for _ in range(10)]
    assert nxt[0] >= starts[0] + 1
    gaps = [b - a for a, b in itertools.pairwise(nxt)]
    assert all(1 / 41 < gap <= 1 / (40 * BETA) + 1e-9 for gap in gaps), gaps
    assert re.fullmatch(r"64/64 at \d+/s \(lowest 44, pace lowest 28/s\)", limit.describe())


async def test_the_pace_recovers_along_the_cubic_and_is_dropped_once_clean() -> None:
    # GIVEN a pace learned from a burst at an origin admitting 40/s
    clock = FakeClock()
    limit = limit_on(clock)
    starts = [await limit.acquire() for _ in range(64)]
    for n, started in enumerate(starts):
        limit.release(started, Outcome.THROTTLED if n < 24 else Outcome.SUCCESS, retry_after_s=1)
    learned_at, k = clock.now, (40 * (1 - BETA) / CUBIC_C) ** (1 / 3)
    # WHEN answers stay clean: back at 40/s after K seconds (about 3.1 s)...
    clock.now = learned_at + k
    assert limit.pace == pytest.approx(40)
    # ...and once it reached twice the rate the origin refused at, with not one recent
    # answer refused, the pace is dropped
    clock.now = learned_at + k + (40 / CUBIC_C) ** (1 / 3) + 0.01
    while not limit.evidence.clean():
        assert limit.pace is not None
        limit.release(await limit.acquire(), Outcome.SUCCESS)
    assert limit.pace is None
    # AND the result still says how low it went
    assert limit.lowest_pace == pytest.approx(40 * BETA)


async def test_once_paced_a_retry_after_holds_only_its_own_request() -> None:
    # GIVEN a pace learned from a burst at an origin admitting 40/s, and its pause over
    clock = FakeClock()
    limit = limit_on(clock)
    starts = [await limit.acquire() for _ in range(64)]
    for n, started in enumerate(starts):
        limit.release(started, Outcome.THROTTLED if n < 24 else Outcome.SUCCESS, retry_after_s=1)
    clock.now += 2
    pace_before = limit.pace
    # WHEN the pace overshoots and 20 of the next 40 are refused with Retry-After: 5
    starts = [await limit.acquire() for _ in range(40)]
    for n, started in enumerate(starts):
        limit.release(started, Outcome.THROTTLED if n % 2 else Outcome.SUCCESS, retry_after_s=5)
    # THEN the pace went down (the origin-wide slowdown), and nobody else waits 5 s
    assert limit.pace is not None and pace_before is not None and limit.pace < pace_before
    assert limit.paused_until < clock.now
    assert await limit.acquire() < clock.now + 1


async def test_against_a_real_rate_limit_few_requests_are_refused() -> None:
    # GIVEN an origin admitting 40 requests/s (bucket of 40), 100 ms per request, 64 allowed
    clock = FakeClock()
    limit = limit_on(clock)
    server = ServerBucket(clock, 40, 40)
    # WHEN requests go for 30 s
    seen = await drive(
        limit,
        clock,
        seconds=30,
        rtt_s=0.1,
        answer=lambda _: Outcome.SUCCESS if server.admits() else Outcome.THROTTLED,
        retry_after_s=1,
    )
    # THEN the origin admitted close to its rate and refused few
    total = sum(seen.values())
    assert seen[Outcome.SUCCESS] >= 0.85 * 40 * 30, seen
    assert seen[Outcome.THROTTLED] <= 0.15 * total, seen


async def test_refusals_that_do_not_depend_on_the_rate_drop_the_pace() -> None:
    # GIVEN an origin refusing half of all requests at random, however slowly they come
    clock = FakeClock()
    limit = limit_on(clock)
    # WHEN requests go for 20 s
    seen = await drive(limit, clock, seconds=20, rtt_s=0.05, answer=refusing(0.5))
    # THEN a pace was tried (the first rounds look like a rate limit) and dropped because
    # slowing down did not lower the refused share; concurrency stayed high
    assert limit.lowest_pace is not None
    assert limit.pace is None
    assert limit.limit >= 32
    assert seen[Outcome.SUCCESS] >= 0.8 * seen[Outcome.THROTTLED]


async def test_s3_learns_no_pace_unless_slowdown_is_sustained() -> None:
    # GIVEN S3 answering SlowDown to half of all writes
    clock = FakeClock()
    s3 = AdaptiveLimit(64, pace_after_s=S3_PACE_AFTER_S, clock=clock, sleep=clock.sleep)
    # WHEN writes go for 20 s, 20 ms each
    await drive(s3, clock, seconds=20, rtt_s=0.02, answer=refusing(0.5))
    # THEN concurrency adapted but no pace was learned
    assert s3.lowest < 64
    assert s3.lowest_pace is None and s3.pace is None
    assert s3.limit >= 32
    # AND when SlowDown goes on past S3_PACE_AFTER_S, a pace is tried (and then dropped,
    # since slowing down does not lower this share)
    await drive(s3, clock, seconds=S3_PACE_AFTER_S, rtt_s=0.02, answer=refusing(0.5, seed=8))
    assert s3.lowest_pace is not None and s3.pace is None


async def test_no_pace_is_learned_from_a_window_too_thin_to_measure() -> None:
    # GIVEN an origin over its limit, but only 6 requests started in the window its
    # Retry-After names (the run's last items: demand set that rate, not the origin)
    clock = FakeClock()
    limit = limit_on(clock)
    starts = [await limit.acquire() for _ in range(6)]
    clock.now += 5
    starts += [await limit.acquire() for _ in range(6)]
    # WHEN all twelve are refused
    for started in starts:
        limit.release(started, Outcome.THROTTLED, retry_after_s=1)
    # THEN concurrency went down, but no pace was made up from six requests
    assert limit.lowest < 64
    assert limit.lowest_pace is None


def test_the_s3_origin_waits_for_sustained_slowdown_before_pacing() -> None:
    limits = OriginLimits(8, max_pause_s=5)
    assert limits.for_origin(S3_ORIGIN).pace_after_s == S3_PACE_AFTER_S
    assert limits.for_origin("https://api.example.com").pace_after_s == 0
    assert limits.for_origin("https://api.example.com").max_pause_s == 5


async def test_an_origin_over_its_limit_pauses_for_retry_after_but_at_most_max_pause() -> None:
    # GIVEN an origin refusing every request with Retry-After: 900, max pause 60 s
    clock = FakeClock()
    limit = limit_on(clock, 16, max_pause_s=60)
    starts = [await limit.acquire() for _ in range(16)]
    refused_at = clock.now
    for started in starts:
        limit.release(started, Outcome.THROTTLED, retry_after_s=900)
    # THEN the next request waits 60 s, not 900
    assert await limit.acquire() == pytest.approx(refused_at + 60)


async def test_concurrency_never_goes_below_one_and_other_failures_leave_it_alone() -> None:
    clock = FakeClock()
    limit = limit_on(clock, 4)
    await drive(limit, clock, seconds=10, rtt_s=0.1, answer=lambda _: Outcome.THROTTLED)
    assert limit.limit == 1
    limit.release(await limit.acquire(), Outcome.OTHER)
    assert limit.limit == 1


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


async def test_disabled_it_never_waits_but_still_counts_throttles() -> None:
    clock = FakeClock()
    limit = limit_on(clock, 1, enabled=False)
    for _ in range(20):
        limit.release(await limit.acquire(), Outcome.THROTTLED, retry_after_s=30)
    await limit.acquire()
    assert clock.slept == []
    assert (limit.throttled, limit.limit) == (20, 1)


def test_origin_limits_keep_one_limit_per_origin() -> None:
    limits = OriginLimits(8)
    api = limits.for_origin("https://api.example.com")
    assert limits.for_origin("https://api.example.com") is api
    assert limits.for_origin("s3") is not api
    api.release(0.0, Outcome.THROTTLED)
    assert limits.throttled == 1


# ------------------------------------------------------------------ Retry-After


def too_many(retry_after_s: float | None) -> HTTPStatusError:
    return HTTPStatusError("HTTP 429", status=429, retryable=True, retry_after_s=retry_after_s)


@pytest.mark.parametrize(
    ("retry_after_s", "left_s", "why"),
    [
        (86400.0, 7.0, r"longer than the 7\.0 s left before the deadline"),
        (900.0, float("inf"), r"at least 900 s, longer than max_retry_after_s \(60 s\)"),
        (61.0, 3600.0, r"wait 61 s, longer than max_retry_after_s \(60 s\)"),
    ],
)
def test_a_retry_after_beyond_what_the_run_allows_fails_the_item_throttled(
    retry_after_s: float, left_s: float, why: str
) -> None:
    error = refuse_long_retry_after(too_many(retry_after_s), left_s=left_s, max_retry_after_s=60)
    assert isinstance(error, RetryAfterTooLong)
    assert (error.kind, error.retryable, error.status) == (FailureKind.THROTTLED, False, 429)
    assert re.search(why, str(error)), str(error)


@pytest.mark.parametrize(("retry_after_s", "left_s"), [(None, 0.0), (1.0, 5.0), (60.0, 61.0)])
def test_a_retry_after_within_what_the_run_allows_keeps_the_error(
    retry_after_s: float | None, left_s: float
) -> None:
    error = too_many(retry_after_s)
    assert refuse_long_retry_after(error, left_s=left_s, max_retry_after_s=60) is error


def test_a_long_retry_after_on_a_status_that_is_not_retried_keeps_http_status() -> None:
    # GIVEN a 404 that also says Retry-After: 3600 (never retried, so nothing waits)
    error = HTTPStatusError("HTTP 404", status=404, retryable=False, retry_after_s=3600.0)
    # WHEN the attempt loop asks whether the wait is too long
    kept = refuse_long_retry_after(error, left_s=10.0, max_retry_after_s=60)
    # THEN the item fails as the 404 it is, not throttled
    assert kept is error and kept.kind is FailureKind.HTTP_STATUS


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


async def test_s3_throttles_count_on_the_s3_limit_and_shrink_it_on_evidence() -> None:
    limit = AdaptiveLimit(16, pace_after_s=S3_PACE_AFTER_S)
    retry = S3Retry(max_attempts=20, base_s=0, limit=limit)
    await retry.call(Flaky(1))  # one SlowDown: counted, no evidence
    assert (limit.throttled, limit.lowest) == (1, 16)
    await retry.call(Flaky(12))  # twelve in a row: S3 is over its limit
    assert (limit.throttled, limit.lowest) == (13, int(16 * BETA))


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
