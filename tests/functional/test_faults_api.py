"""API faults (issue #6): a real misbehaving HTTP server in front of the handler.

Every test runs ``lambda_handler`` against ``FaultyAPI`` (tests/support/faults.py)
and moto, then checks the invariants of ``tests.support.reliability``: counts add
up, succeeded objects are byte-identical to what was served, nothing is left under
a failed key, no multipart upload stays open, every failure has a kind, and the
handler returned before its deadline.

The redirect to a loopback address with private networks not allowed lives in
test_ssrf.py, which needs a TLS API reached by name.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from handler.app import lambda_handler
from tests.support.faults import MAINTENANCE_PAGE, FaultyAPI, expected_bytes, iter_json_zeros
from tests.support.lambda_context import LocalContext
from tests.support.reliability import (
    assert_s3_outcome,
    event_for,
    failures_by_index,
    served_body,
)
from tests.support.servers import MotoS3

pytestmark = [pytest.mark.timeout(60), pytest.mark.usefixtures("allow_private")]

KiB = 1024
MiB = 1024 * KiB
FAST = {"connect_timeout_s": 2.0, "read_timeout_s": 5.0}


def run(event: dict[str, Any], *, timeout_s: float = 30.0) -> tuple[dict[str, Any], LocalContext]:
    context = LocalContext(timeout_s=timeout_s)
    return lambda_handler(event, context), context


def test_connection_reset_mid_body_fails_as_truncated_after_every_attempt(
    s3: MotoS3, faulty_api: tuple[FaultyAPI, str]
) -> None:
    # GIVEN an API that sends half of a 200 KB body and then resets the connection (RST)
    api, url = faulty_api
    batch = [{"key": "a", "size": 200_000}, {"key": "b", "size": 200_000}]
    event = event_for(f"{url}/reset-mid-body", batch=batch, options={**FAST, "max_attempts": 2})
    # WHEN the handler ingests two such items
    result, context = run(event)
    # THEN both failed as truncated after both attempts, and nothing was kept
    assert (result["succeeded"], result["failed"]) == (0, 2)
    assert {(f["kind"], f["attempts"]) for f in result["failures"]} == {("truncated", 2)}
    assert api.hits["a"] == 2 and api.hits["b"] == 2
    assert_s3_outcome(s3, result, {0: b"", 1: b""}, context=context)


def test_content_length_larger_than_the_body_fails_as_truncated(
    s3: MotoS3, faulty_api: tuple[FaultyAPI, str]
) -> None:
    # GIVEN an API that advertises 100 bytes more than it sends, then closes
    _, url = faulty_api
    event = event_for(
        f"{url}/short-content-length",
        batch=[{"key": "k", "size": 5000}],
        options={**FAST, "max_attempts": 2},
    )
    # WHEN the item is ingested
    result, context = run(event)
    # THEN it failed as truncated, naming the byte counts, and nothing was kept
    [failure] = result["failures"]
    assert (failure["kind"], failure["attempts"]) == ("truncated", 2)
    assert "5000 of 5100" in failure["error"]
    assert_s3_outcome(s3, result, {0: b""}, context=context)


@pytest.mark.parametrize("when", ["headers", "body"])
def test_a_stall_longer_than_the_read_timeout_fails_as_timeout(
    s3: MotoS3, faulty_api: tuple[FaultyAPI, str], when: str
) -> None:
    # GIVEN an API that stalls 10 s (before the headers, or after half the body)
    api, url = faulty_api
    batch = [{"key": "slow", "stall_s": 10, "when": when}]
    event = event_for(
        f"{url}/stall", batch=batch, options={"read_timeout_s": 0.5, "max_attempts": 2}
    )
    # WHEN the item is ingested with a 0.5 s read timeout
    started = time.monotonic()
    result, context = run(event)
    # THEN each attempt gave up after the read timeout, not after the stall
    assert time.monotonic() - started < 5
    [failure] = result["failures"]
    assert (failure["kind"], failure["attempts"]) == ("timeout", 2)
    assert api.hits["slow"] == 2
    assert_s3_outcome(s3, result, {0: b""}, context=context)


def test_a_one_byte_per_second_drip_is_cut_by_the_attempt_timeout(
    s3: MotoS3, faulty_api: tuple[FaultyAPI, str]
) -> None:
    # GIVEN an API dripping 10 bytes at 1 byte/s: every read succeeds within the read timeout
    _, url = faulty_api
    event = event_for(
        f"{url}/drip",
        batch=[{"key": "drip", "size": 10, "rate": 1}],
        options={"read_timeout_s": 5.0, "attempt_timeout_s": 1.0, "max_attempts": 2},
    )
    # WHEN it is ingested with attempt_timeout_s=1
    started = time.monotonic()
    result, context = run(event)
    # THEN each attempt was cut after about a second, and the item failed as timeout
    assert time.monotonic() - started < 5
    [failure] = result["failures"]
    assert (failure["kind"], failure["attempts"]) == ("timeout", 2)
    assert "attempt took longer than 1.0s" in failure["error"]
    assert_s3_outcome(s3, result, {0: b""}, context=context)


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_bursts_of_server_errors_are_retried_until_they_pass_or_attempts_run_out(
    s3: MotoS3, faulty_api: tuple[FaultyAPI, str], status: int
) -> None:
    # GIVEN one healthy item, one whose first 2 answers are `status`, one always `status`
    api, url = faulty_api
    batch = [{"key": "ok", "times": 0}, {"key": "burst", "times": 2}, {"key": "down"}]
    event = event_for(f"{url}/status/{status}", batch=batch, options={**FAST, "max_attempts": 3})
    # WHEN the batch runs with 3 attempts per item
    result, context = run(event)
    # THEN the burst was ridden out, the outage failed with its status after 3 attempts
    assert (result["succeeded"], result["failed"]) == (2, 1)
    [failure] = result["failures"]
    assert failure["index"] == 2
    assert (failure["kind"], failure["status"], failure["attempts"]) == ("http_status", status, 3)
    assert failure["error"] == f"HTTP {status} after 3 attempts"
    assert (api.hits["ok"], api.hits["burst"], api.hits["down"]) == (1, 3, 3)
    assert result["retries"] == 4
    assert_s3_outcome(s3, result, {i: served_body(p) for i, p in enumerate(batch)}, context=context)


@pytest.mark.parametrize("route", ["retry-after-seconds", "retry-after-date"])
def test_429_retry_after_is_honoured_in_seconds_and_as_an_http_date(
    s3: MotoS3, faulty_api: tuple[FaultyAPI, str], route: str
) -> None:
    # GIVEN an API answering 429 with Retry-After 2 s (delta-seconds, or an HTTP-date
    # 2 s ahead, which whole-second dates round down to between 1 and 2 s), then 200
    api, url = faulty_api
    batch = [{"key": "limited", "seconds": 2, "times": 1}]
    event = event_for(f"{url}/{route}", batch=batch, options=FAST)
    # WHEN it is ingested
    started = time.monotonic()
    result, context = run(event)
    elapsed = time.monotonic() - started
    # THEN the second attempt waited for Retry-After (far above the 0.2 s backoff) and won
    assert elapsed >= (1.9 if route == "retry-after-seconds" else 0.95)
    assert result["status"] == "SUCCESS" and api.hits["limited"] == 2
    assert_s3_outcome(s3, result, {0: served_body(batch[0])}, context=context)


def test_a_retry_after_beyond_the_deadline_gives_up_at_once(
    s3: MotoS3, faulty_api: tuple[FaultyAPI, str]
) -> None:
    # GIVEN an API asking to come back in 600 s, with 10 s left on the clock
    _, url = faulty_api
    batch = [{"key": "later", "seconds": 600, "times": 5}]
    event = event_for(f"{url}/retry-after-seconds", batch=batch, options=FAST)
    # WHEN it is ingested
    result, context = run(event, timeout_s=10)
    # THEN the item failed with its 429 after one attempt instead of sleeping past the
    # deadline, as throttled (CONTRACT §14), saying why
    [failure] = result["failures"]
    assert (failure["kind"], failure["status"], failure["attempts"]) == ("throttled", 429, 1)
    assert "Retry-After asked to wait 600 s" in failure["error"], failure["error"]
    assert context.get_remaining_time_in_millis() > 5000
    assert_s3_outcome(s3, result, {0: b""}, context=context)


def test_a_redirect_loop_fails_after_the_redirect_limit(
    s3: MotoS3, faulty_api: tuple[FaultyAPI, str]
) -> None:
    # GIVEN an API that redirects to itself forever
    api, url = faulty_api
    event = event_for(f"{url}/redirect-loop", batch=[{"key": "loop"}], options=FAST)
    # WHEN it is ingested
    result, context = run(event)
    # THEN it stopped after 10 redirects (11 requests) and failed without retrying
    [failure] = result["failures"]
    assert (failure["kind"], failure["status"], failure["attempts"]) == ("http_status", 302, 1)
    assert "more than 10 redirects" in failure["error"]
    assert sum(api.hits.values()) == 11
    assert_s3_outcome(s3, result, {0: b""}, context=context)


def test_a_gzip_body_inflating_past_max_body_bytes_fails_and_a_small_one_lands_decoded(
    s3: MotoS3, faulty_api: tuple[FaultyAPI, str]
) -> None:
    # GIVEN gzip bodies inflating to 100 KB (fine) and to 8 MiB (a bomb: ~8 KB on the wire)
    api, url = faulty_api
    batch = [{"key": "small", "inflated": 100_000}, {"key": "bomb", "inflated": 8 * MiB}]
    event = event_for(f"{url}/gzip-bomb", batch=batch, options={**FAST, "max_body_bytes": 1 * MiB})
    # WHEN ingested with max_body_bytes = 1 MiB
    result, context = run(event)
    # THEN the bomb failed as body_too_large at once; the small one is stored decoded
    [failure] = result["failures"]
    assert (failure["index"], failure["kind"], failure["attempts"]) == (1, "body_too_large", 1)
    assert api.hits["bomb"] == 1
    small = b"".join(iter_json_zeros(100_000))
    assert_s3_outcome(s3, result, {0: small, 1: b""}, context=context)


@pytest.mark.parametrize("expect_json", [True, False])
def test_a_200_that_is_not_json_is_invalid_body_unless_expect_json_is_off(
    s3: MotoS3, faulty_api: tuple[FaultyAPI, str], expect_json: bool
) -> None:
    # GIVEN an API answering 200 with an HTML maintenance page
    api, url = faulty_api
    event = event_for(
        f"{url}/not-json", batch=[{"key": "html"}], options={**FAST, "expect_json": expect_json}
    )
    # WHEN it is ingested
    result, context = run(event)
    # THEN with expect_json it fails as invalid_body (not retried); without, it is stored as is
    if expect_json:
        [failure] = result["failures"]
        assert (failure["kind"], failure["attempts"]) == ("invalid_body", 1)
        assert api.hits["html"] == 1
    else:
        assert result["status"] == "SUCCESS"
    assert_s3_outcome(s3, result, {0: MAINTENANCE_PAGE}, context=context)


def test_oversized_response_headers_fail_the_item_as_a_connection_error(
    s3: MotoS3, faulty_api: tuple[FaultyAPI, str]
) -> None:
    # GIVEN an API whose X-Huge header is 1 KB for one item and 64 KiB for another
    _, url = faulty_api
    batch = [{"key": "fine", "size": 1000}, {"key": "huge", "size": 64 * KiB}]
    event = event_for(f"{url}/huge-headers", batch=batch, options={**FAST, "max_attempts": 2})
    # WHEN the batch runs
    result, context = run(event)
    # THEN the huge one failed as a malformed answer (aiohttp caps a header at 8 KiB)
    [failure] = result["failures"]
    assert (failure["index"], failure["kind"]) == (1, "connection")
    assert "malformed response" in failure["error"]
    assert_s3_outcome(s3, result, {i: served_body(p) for i, p in enumerate(batch)}, context=context)


def test_a_stale_keep_alive_connection_closed_by_the_server_costs_no_item(
    s3: MotoS3, faulty_api: tuple[FaultyAPI, str]
) -> None:
    # GIVEN an API that kills every pooled connection when the client reuses it
    api, url = faulty_api
    batch = [{"key": f"k{i}", "n": i} for i in range(5)]
    event = event_for(f"{url}/stale-keepalive", batch=batch, options={**FAST, "concurrency": 1})
    # WHEN 5 items go one after another over the pool
    result, context = run(event)
    # THEN the dead connections were replaced and every item landed
    assert result["status"] == "SUCCESS", result["failures"]
    assert api.stale_connections_cut >= 1
    assert_s3_outcome(s3, result, {i: served_body(p) for i, p in enumerate(batch)}, context=context)


def test_a_body_of_the_exact_advertised_length_is_not_mistaken_for_truncation(
    s3: MotoS3, faulty_api: tuple[FaultyAPI, str]
) -> None:
    # GIVEN the control for the truncation tests: /bytes with an honest Content-Length
    _, url = faulty_api
    batch = [{"key": "bytes", "size": 300_000, "seed": 3}]
    event = event_for(f"{url}/bytes", batch=batch, options={**FAST, "expect_json": False})
    # WHEN it is ingested
    result, context = run(event)
    # THEN it lands byte for byte
    assert result["status"] == "SUCCESS" and failures_by_index(result) == {}
    assert_s3_outcome(s3, result, {0: expected_bytes(300_000, 3)}, context=context)
