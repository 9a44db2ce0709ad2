"""Throttling that adapts (CONTRACT §14, issues 11 and 19), against real local servers.

S3 side: ``S3FaultProxy`` between the handler and moto answers a sustained share
of PutObject, UploadPart and CompleteMultipartUpload calls with SlowDown or a
dropped connection, or every call (an S3 that never recovers). API side:
``RateLimitedAPI`` has a server-side token bucket and answers 429 with
``Retry-After`` beyond it.
"""

from __future__ import annotations

import time
from typing import Any

import orjson
import pytest

from handler.app import lambda_handler
from tests.conftest import RAW_BUCKET
from tests.support import throttling as sparse
from tests.support.faults import FaultyAPI, RateLimitedAPI, S3FaultProxy, expected_bytes
from tests.support.lambda_context import LocalContext
from tests.support.reliability import assert_s3_outcome, event_for, served_body
from tests.support.servers import MotoS3

pytestmark = [pytest.mark.timeout(120), pytest.mark.usefixtures("allow_private")]

MiB = 1024 * 1024
WRITE_OPERATIONS = ["PutObject", "UploadPart", "CompleteMultipartUpload"]
SMALL, BIG = 20 * 1024, 11 * MiB  # one PUT; three parts of 5 + 5 + 1 MiB


def run(event: dict[str, Any], timeout_s: float = 100) -> tuple[dict[str, Any], LocalContext]:
    context = LocalContext(timeout_s=timeout_s)
    return lambda_handler(event, context), context


def manifest_lines(s3: MotoS3, result: dict[str, Any]) -> list[dict[str, Any]]:
    body = s3.get_bytes(RAW_BUCKET, result["manifest_key"])
    return [orjson.loads(line) for line in body.splitlines()]


def bytes_batch(sizes: list[int]) -> list[dict[str, Any]]:
    return [{"key": f"b{i}", "size": size, "seed": i} for i, size in enumerate(sizes)]


def test_under_a_sustained_s3_fault_rate_every_item_lands_byte_identical(
    s3: MotoS3, s3_proxy: S3FaultProxy, faulty_api: tuple[FaultyAPI, str], put_path: str
) -> None:
    # GIVEN 30 single-PUT bodies and 2 multipart ones, and S3 answering 30% of PUTs,
    # parts and Completes with SlowDown or a dropped connection
    api, url = faulty_api
    sizes = [SMALL] * 30 + [BIG] * 2
    batch = bytes_batch(sizes)
    s3_proxy.fail_at_rate(WRITE_OPERATIONS, 0.3, ("slowdown", "drop_connection"), seed=11)
    options = {"part_size_mb": 5, "memory_budget_mb": 32, "expect_json": False}
    # WHEN the handler ingests them
    result, context = run(event_for(f"{url}/bytes", batch=batch, options=options))
    # THEN every item landed with exactly the served bytes, no upload left open
    assert result["status"] == "SUCCESS", result["failures"]
    bodies = {i: expected_bytes(size, i) for i, size in enumerate(sizes)}
    assert_s3_outcome(s3, result, bodies, context=context)
    # AND the fault rate was what we asked for, and every fault reached each operation
    calls = [op for op, _ in s3_proxy.calls if op in WRITE_OPERATIONS]
    fired = s3_proxy.fired
    assert 0.2 <= len(fired) / len(calls) <= 0.4, (len(fired), len(calls))
    assert {op for op, _ in fired} == set(WRITE_OPERATIONS), fired
    # AND the S3 retries are visible: in the result, per item in the manifest
    slowdowns = sum(1 for _, fault in fired if fault == "slowdown")
    assert 0 < result["throttled"] <= slowdowns
    assert result["retries"] >= result["throttled"]
    lines = manifest_lines(s3, result)
    assert max(line["s3_attempts"] for line in lines) > 1
    assert all(line["s3_attempts"] >= 1 for line in lines)
    assert all(hits == 1 for hits in api.hits.values())  # nothing fetched twice


@pytest.mark.parametrize("size", [SMALL, BIG], ids=["put", "multipart"])
def test_an_s3_that_never_recovers_fails_items_at_s3_max_attempts(
    s3: MotoS3, s3_proxy: S3FaultProxy, faulty_api: tuple[FaultyAPI, str], size: int
) -> None:
    # GIVEN S3 answering every write with SlowDown, and s3_max_attempts 4
    _, url = faulty_api
    s3_proxy.fail_at_rate(WRITE_OPERATIONS, 1.0, ("slowdown",))
    options = {"part_size_mb": 5, "expect_json": False, "s3_max_attempts": 4}
    batch = bytes_batch([size] * 2)
    # WHEN the handler ingests two items
    result, context = run(event_for(f"{url}/bytes", batch=batch, options=options))
    # THEN both failed on the S3 side after exactly 4 attempts, saying so; nothing kept
    assert (result["status"], result["failed"]) == ("FAILED", 2)
    for failure in result["failures"]:
        assert (failure["kind"], failure["side"], failure["attempts"]) == ("s3_error", "s3", 1)
        assert failure["s3_attempts"] == 4
        assert "SlowDown" in failure["error"]
        assert "after 4 attempts (s3_max_attempts reached)" in failure["error"]
    # AND every SlowDown counts: 4 per item and 4 for the manifest's PUT (CONTRACT §14)
    assert result["throttled"] == 8 + 4
    assert result["retries"] == 6 + 3
    assert_s3_outcome(s3, result, {0: b"", 1: b""}, context=context)


def test_an_s3_that_never_recovers_fails_items_at_the_deadline(
    s3: MotoS3, s3_proxy: S3FaultProxy, faulty_api: tuple[FaultyAPI, str]
) -> None:
    # GIVEN S3 answering every PUT with SlowDown, patience far beyond the time left
    # (8 s on the Lambda clock, 5 s margin: items must be over by 5.5 s)
    _, url = faulty_api
    s3_proxy.fail_at_rate(["PutObject"], 1.0, ("slowdown",))
    options = {"expect_json": False, "s3_max_attempts": 50}
    # WHEN the handler ingests three items
    started = time.monotonic()
    result, context = run(
        event_for(f"{url}/bytes", batch=bytes_batch([SMALL] * 3), options=options), timeout_s=8
    )
    # THEN it returned in time, and the items failed on the S3 side at the deadline
    assert time.monotonic() - started < 8
    assert result["succeeded"] == 0
    by_kind = {f["kind"] for f in result["failures"]}
    assert "s3_error" in by_kind and by_kind <= {"s3_error", "deadline"}, result["failures"]
    for failure in result["failures"]:
        if failure["kind"] == "s3_error":
            assert failure["side"] == "s3" and 1 < failure["s3_attempts"] < 50
            assert "the deadline leaves no time for another" in failure["error"]
    assert_s3_outcome(s3, result, {0: b"", 1: b"", 2: b""}, context=context)


@pytest.mark.timeout(180)
def test_a_rate_limited_api_is_respected(s3: MotoS3, api_server: Any) -> None:
    # GIVEN an API admitting 20 requests a second (a bucket of 20), answering admitted
    # ones after 100 ms and the others 429 with Retry-After: 1; 100 items at c=32
    batch = [{"date": f"d{i}"} for i in range(100)]
    options = {"concurrency": 32, "max_attempts": 10}
    counts = {}
    for adaptive in (True, False):
        api = RateLimitedAPI(20, delay_s=0.1, retry_after="1")
        url = api_server(api).url
        event = event_for(f"{url}/v1/data", batch=batch, options={**options, "adaptive": adaptive})
        # WHEN the handler ingests them, adaptive and not
        result, _ = run(event)
        assert result["status"] == "SUCCESS", result["failures"]
        assert result["throttled"] == api.rejected
        adaptive_figures = result["adaptive"]
        assert adaptive_figures["enabled"] is adaptive
        lowest, pace = adaptive_figures["api_lowest"], adaptive_figures["api_pace_lowest_per_s"]
        if adaptive:  # the limit went down, and a pace below the server's rate was learned
            assert lowest < 32 and 5 <= pace <= 20, adaptive_figures
        else:
            assert (lowest, pace) == (32, None), adaptive_figures
        counts[adaptive] = api.rejected
        if adaptive:
            assert_s3_outcome(s3, result, {i: served_body(p) for i, p in enumerate(batch)})
        s3.reset()
        s3.create_bucket(RAW_BUCKET)
    # THEN adaptive, few requests are refused: at most 25% of the items, and at most
    # half of what a fixed concurrency draws
    assert counts[True] <= 25, counts
    assert counts[True] * 2 <= counts[False], counts


# ------------------------------------------------------- issue 19: polite, not timid


@pytest.mark.timeout(240)
def test_a_sprinkle_of_refusals_from_an_api_with_no_rate_limit_moves_no_limit(
    s3: MotoS3, api_server: Any
) -> None:
    # GIVEN an API with no rate limit refusing single requests: 2% of items 429 +
    # Retry-After: 1 on their first request, 4% 503 + Retry-After: 0 once, 6% failing
    # for good (404, 500); 600 items at concurrency 64
    items = 600
    batch = [{"n": n} for n in range(items)]
    good = [n for n in range(items) if sparse.good(n)]
    results: dict[bool, dict[str, Any]] = {}
    for adaptive in (False, True):
        api = sparse.SparseRefusalsAPI()
        url = api_server(api).url
        options = {"concurrency": 64, "max_attempts": 3, "adaptive": adaptive}
        s3.reset()
        s3.create_bucket(RAW_BUCKET)
        # WHEN the handler ingests them, adaptive off, then on (the default)
        results[adaptive], _ = run(event_for(f"{url}/v1/data", batch=batch, options=options))
        # THEN every good item is written, every other failed, counts exact, both ways
        result = results[adaptive]
        assert (result["succeeded"], result["failed"]) == (len(good), items - len(good))
        assert {f["kind"] for f in result["failures"]} == {"http_status"}
        assert result["throttled"] == api.answered[429] + api.answered[503]
        assert api.answered[429] == items // 50 and api.answered[503] == 2 * items // 50
    bodies = {n: served_body(batch[n]) if n in set(good) else b"" for n in range(items)}
    assert_s3_outcome(s3, results[True], bodies)
    # AND adaptive, the API's limit never moved and no pace was learned (before: a limit
    # of 26). What that costs in time is the throttling benchmark's to measure: a wall
    # clock ratio here would judge the machine's load, not the limiter.
    figures = results[True]["adaptive"]
    assert figures["api_lowest"] == 64, figures
    assert figures["api_pace_lowest_per_s"] is None, figures


def test_a_retry_after_of_a_day_fails_that_item_throttled_and_holds_nobody_else(
    s3: MotoS3, faulty_api: tuple[FaultyAPI, str]
) -> None:
    # GIVEN 21 items, the first answered 429 + Retry-After: 86400 every time, the others
    # 200; concurrency 4 and 12 s on the Lambda clock
    api, url = faulty_api
    batch = [{"key": "day", "seconds": 86400, "times": 99}]
    batch += [{"key": f"k{i}", "times": 0} for i in range(1, 21)]
    event = event_for(f"{url}/retry-after-seconds", batch=batch, options={"concurrency": 4})
    # WHEN the handler ingests them
    started = time.monotonic()
    result, context = run(event, timeout_s=12)
    # THEN the other 20 are written, at once; the first failed throttled after one attempt
    assert time.monotonic() - started < 5
    assert (result["succeeded"], result["failed"]) == (20, 1), result["failures"]
    [failure] = result["failures"]
    assert (failure["index"], failure["kind"], failure["attempts"]) == (0, "throttled", 1)
    assert api.hits["day"] == 1
    bodies = {i: b"" if i == 0 else served_body(p) for i, p in enumerate(batch)}
    assert_s3_outcome(s3, result, bodies, context=context)


@pytest.mark.timeout(240)
def test_s3_slowdown_on_half_the_writes_loses_nothing_and_learns_no_pace(
    s3: MotoS3, s3_proxy: S3FaultProxy, faulty_api: tuple[FaultyAPI, str]
) -> None:
    # GIVEN S3 answering SlowDown to half of all PUTs, 150 small items, 25 s deadline;
    # each item's first writes refused as a fair coin says, the same in both runs (a
    # schedule per key: a random one would make either run's tail of backoffs luck)
    _, url = faulty_api
    batch = bytes_batch([2048] * 150)
    results: dict[bool, dict[str, Any]] = {}
    for adaptive in (False, True):
        s3.reset()
        s3.create_bucket(RAW_BUCKET)
        s3_proxy.clear()
        s3_proxy.fail_first_calls("PutObject", "slowdown", sparse.coin_streak)
        options = {"expect_json": False, "adaptive": adaptive}
        # WHEN the handler ingests them with throttling off, then on
        event = event_for(f"{url}/bytes", batch=batch, options=options)
        results[adaptive], context = run(event, timeout_s=25)
        # THEN every item is written, both ways, after about half the writes were refused
        assert results[adaptive]["succeeded"] == 150, results[adaptive]["failures"][:3]
        puts = s3_proxy.statuses("PutObject")
        assert 0.4 <= puts.count(503) / len(puts) <= 0.6, (puts.count(503), len(puts))
    bodies = {i: expected_bytes(2048, i) for i in range(150)}
    assert_s3_outcome(s3, results[True], bodies, context=context)
    # AND adaptive, S3 learned no pace (before: 6.2/s and 98 of 150 written); the time
    # it costs is measured by the throttling benchmark, not by a wall clock here
    figures = results[True]["adaptive"]
    assert figures["s3_pace_lowest_per_s"] is None, figures
    assert results[True]["throttled"] > 50
