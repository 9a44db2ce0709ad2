"""lambda_handler end to end: a real local API (aiohttp) and a real moto S3 server."""

from __future__ import annotations

import time
from typing import Any

import orjson
import pytest

from handler.app import lambda_handler
from ingest_core import InvalidEventError
from tests.conftest import RAW_BUCKET
from tests.support.lambda_context import LocalContext
from tests.support.servers import MotoS3, Response, ScriptedAPI, default_body

pytestmark = [pytest.mark.timeout(90), pytest.mark.usefixtures("allow_private")]

SOURCE = "api-source-1"


@pytest.fixture(params=["lean", "sdk"])
def put_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every behaviour holds on both single-PUT paths (docs/PERFORMANCE.md)."""
    monkeypatch.setenv("FANOUT_LEAN_PUT", "true" if request.param == "lean" else "false")
    return str(request.param)


def event_for(url: str, *, dates: list[str] | None = None, **extra: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "api_config": {"endpoint": f"{url}/v1/data", "raw_bucket": RAW_BUCKET, "source_id": SOURCE},
        "options": {"concurrency": 16, **extra.pop("options", {})},
        **extra,
    }
    if dates is not None:
        event["batch"] = [{"date": d} for d in dates]
    return event


def day(i: int) -> str:
    return f"2025-02-{i + 1:02d}" if i < 28 else f"2025-03-{i - 27:02d}"


def assert_written_exactly(
    s3: MotoS3, result: dict[str, Any], params_by_index: dict[int, dict[str, str]]
) -> None:
    """Every succeeded item's object holds exactly the bytes the API served."""
    rid = result["request_id"]
    for index, params in params_by_index.items():
        key = f"{SOURCE}/{rid}-{index}.json"
        assert s3.get_bytes(RAW_BUCKET, key) == default_body(params)


def assert_nothing_for(s3: MotoS3, result: dict[str, Any]) -> None:
    keys = set(s3.list_keys(RAW_BUCKET))
    for failure in result["failures"]:
        assert f"{SOURCE}/{result['request_id']}-{failure['index']}.json" not in keys
    assert s3.incomplete_uploads(RAW_BUCKET) == []


def test_batch_of_json_arrays_lands_byte_identical(
    s3: MotoS3, api_server: Any, put_path: str
) -> None:
    # GIVEN an API answering every date with a JSON array of 3 records
    api = ScriptedAPI()
    server = api_server(api)
    dates = [day(i) for i in range(10)]
    # WHEN the handler ingests a batch of 10 dates
    result = lambda_handler(event_for(server.url, dates=dates), LocalContext(request_id="req-a"))
    # THEN every item is written at {source_id}/{request_id}-{index}.json with the served bytes
    assert result["status"] == "SUCCESS"
    assert (result["requested"], result["succeeded"], result["failed"]) == (10, 10, 0)
    assert result["records_ingested"] == 30
    assert_written_exactly(s3, result, {i: {"date": d} for i, d in enumerate(dates)})
    head = s3.head(RAW_BUCKET, f"{SOURCE}/req-a-3.json")
    assert head["ContentType"].startswith("application/json")
    assert head["Metadata"]["index"] == "3" and head["Metadata"]["source-id"] == SOURCE
    assert len(head["Metadata"]["params-hash"]) == 16


def test_original_single_request_event_still_works(
    s3: MotoS3, api_server: Any, put_path: str
) -> None:
    # GIVEN the original function's event shape: api_config + query_params, no request_id
    server = api_server(ScriptedAPI())
    event = {
        "api_config": {
            "endpoint": f"{server.url}/v1/data",
            "headers": {"Accept": "application/json"},
            "raw_bucket": RAW_BUCKET,
            "source_id": SOURCE,
        },
        "query_params": {"date": "2025-02-23"},
    }
    # WHEN it is handled with a Lambda context
    context = LocalContext()
    result = lambda_handler(event, context)
    # THEN the original status and records_ingested fields are there and the key uses aws_request_id
    assert result["status"] == "SUCCESS" and result["records_ingested"] == 3
    key = f"{SOURCE}/{context.aws_request_id}-0.json"
    assert s3.get_bytes(RAW_BUCKET, key) == default_body({"date": "2025-02-23"})


def test_transient_statuses_are_retried_and_permanent_ones_are_not(
    s3: MotoS3, api_server: Any, put_path: str
) -> None:
    # GIVEN 503 with Retry-After then 200, 429 then 200, and a permanent 404
    api = ScriptedAPI(
        {
            day(1): [Response(status=503, headers={"Retry-After": "1"}), Response()],
            day(2): [Response(status=429), Response()],
            day(3): Response(status=404),
        }
    )
    server = api_server(api)
    dates = [day(i) for i in range(5)]
    # WHEN the batch runs
    started = time.monotonic()
    result = lambda_handler(event_for(server.url, dates=dates), LocalContext(request_id="req-r"))
    # THEN the 503 waited for Retry-After, the 404 was asked exactly once and is listed
    assert time.monotonic() - started >= 1.0
    assert (result["succeeded"], result["failed"], result["status"]) == (4, 1, "PARTIAL_SUCCESS")
    assert api.hits[day(1)] == 2 and api.hits[day(2)] == 2 and api.hits[day(3)] == 1
    [failure] = result["failures"]
    assert failure == {
        "index": 3,
        "params": {"date": day(3)},
        "kind": "http_status",
        "status": 404,
        "side": "api",
        "attempts": 1,
        "s3_attempts": 0,
        "error": "HTTP 404 after 1 attempt",
    }
    assert_written_exactly(s3, result, {i: {"date": day(i)} for i in (0, 1, 2, 4)})
    assert_nothing_for(s3, result)


@pytest.mark.parametrize(
    ("spec", "kind"),
    [
        (Response(drop_mid_body=True, records=2000), "truncated"),
        (Response(short_body=True), "truncated"),
        (Response(stall_s=3.0, records=2000), "timeout"),
    ],
    ids=["dropped-mid-body", "content-length-too-large", "slower-than-read-timeout"],
)
def test_broken_bodies_fail_with_their_kind_and_leave_nothing(
    s3: MotoS3, api_server: Any, put_path: str, spec: Response, kind: str
) -> None:
    # GIVEN one date whose body always breaks
    api = ScriptedAPI({day(0): spec})
    server = api_server(api)
    event = event_for(
        server.url,
        dates=[day(0), day(1)],
        options={"max_attempts": 2, "read_timeout_s": 1.0},
    )
    # WHEN the batch runs
    result = lambda_handler(event, LocalContext(request_id="req-b"))
    # THEN that item failed with the right kind after every attempt; the other is written
    assert (result["succeeded"], result["failed"]) == (1, 1)
    [failure] = result["failures"]
    assert (failure["index"], failure["kind"], failure["attempts"]) == (0, kind, 2)
    assert api.hits[day(0)] == 2
    assert_nothing_for(s3, result)


def test_30_mib_body_goes_multipart_byte_identical(
    s3: MotoS3, api_server: Any, put_path: str
) -> None:
    # GIVEN a 30 MiB JSON body, sent chunked
    body = b"[" + b",".join(b'{"n":%d,"pad":"%s"}' % (i, b"x" * 90) for i in range(300_000)) + b"]"
    assert len(body) > 30 * 1024 * 1024
    server = api_server(ScriptedAPI({"big": Response(body=body, chunked=True)}))
    event = event_for(server.url, options={"part_size_mb": 8, "memory_budget_mb": 64})
    event["query_params"] = {"date": "big"}
    # WHEN it is ingested
    result = lambda_handler(event, LocalContext(request_id="req-big"))
    # THEN it landed whole, in parts, and no multipart upload is left open
    assert result["status"] == "SUCCESS", [f["error"] for f in result["failures"]]
    assert result["bytes_written"] == len(body)
    assert result["records_ingested"] is None  # too large to count exactly: not guessed
    assert s3.get_bytes(RAW_BUCKET, f"{SOURCE}/req-big-0.json") == body
    assert s3.incomplete_uploads(RAW_BUCKET) == []


def test_batch_of_1000_items(s3: MotoS3, api_server: Any) -> None:
    # GIVEN 1,000 dates and concurrency 64
    api = ScriptedAPI()
    server = api_server(api)
    dates = [f"d{i:04d}" for i in range(1000)]
    event = event_for(server.url, dates=dates, options={"concurrency": 64})
    # WHEN the batch runs
    result = lambda_handler(event, LocalContext(request_id="req-k"))
    # THEN every item is written once and the manifest lists all of them
    assert (result["succeeded"], result["failed"], result["not_attempted"]) == (1000, 0, 0)
    assert sum(api.hits.values()) == 1000
    keys = s3.list_keys(RAW_BUCKET, prefix=f"{SOURCE}/req-k-")
    assert len(keys) == 1000
    manifest = s3.get_bytes(RAW_BUCKET, result["manifest_key"]).splitlines()
    assert sorted(orjson.loads(line)["index"] for line in manifest) == list(range(1000))


def test_deadline_cuts_slow_items_and_returns_in_time(
    s3: MotoS3, api_server: Any, put_path: str
) -> None:
    # GIVEN 4 fast dates and 6 that never answer in time, and 8 s left on the clock
    slow = {f"slow{i}": Response(delay_s=60) for i in range(6)}
    server = api_server(ScriptedAPI(slow))
    dates = ["fast0", "fast1", *slow, "fast2", "fast3"]
    event = event_for(server.url, dates=dates, options={"concurrency": 8, "deadline_margin_s": 1.0})
    context = LocalContext(timeout_s=8.0, request_id="req-d")
    # WHEN the handler runs
    result = lambda_handler(event, context)
    # THEN it returned before the deadline, fast items written, the rest reported for re-drive
    assert context.get_remaining_time_in_millis() > 0
    assert result["succeeded"] == 4
    assert result["succeeded"] + result["failed"] + result["not_attempted"] == 10
    assert result["not_attempted"] == 6
    assert {f["kind"] for f in result["failures"]} == {"deadline"}
    assert {f["params"]["date"] for f in result["failures"]} == set(slow)
    assert_nothing_for(s3, result)


def test_distributed_map_batch_uses_global_indexes(
    s3: MotoS3, api_server: Any, put_path: str
) -> None:
    # GIVEN the event ItemBatcher builds: BatchInput + items with global indexes
    server = api_server(ScriptedAPI())
    base = event_for(server.url)
    event = {
        "BatchInput": {
            "api_config": base["api_config"],
            "options": base["options"],
            "request_id": "exec-42",
        },
        "Items": [
            {"index": 17, "params": {"date": day(0)}},
            {"index": 18, "params": {"date": day(1)}},
        ],
    }
    # WHEN handled
    result = lambda_handler(event, LocalContext())
    # THEN keys use the execution name and the global indexes; the manifest names its range
    assert result["status"] == "SUCCESS" and result["request_id"] == "exec-42"
    assert_written_exactly(s3, result, {17: {"date": day(0)}, 18: {"date": day(1)}})
    assert result["manifest_key"] == f"{SOURCE}/_manifests/exec-42-17-18.json"


def test_mixed_200_item_batch_counts_exactly(s3: MotoS3, api_server: Any, put_path: str) -> None:
    # GIVEN 200 items: 20 transient 503s, 10 permanent 404s, 5 always dropped mid-body
    script: dict[str, Any] = {}
    for i in range(0, 200, 10):
        script[f"d{i}"] = [Response(status=503), Response()]
    for i in range(1, 200, 20):
        script[f"d{i}"] = Response(status=404)
    for i in range(2, 200, 40):
        script[f"d{i}"] = Response(drop_mid_body=True, records=500)
    api = ScriptedAPI(script)
    server = api_server(api)
    dates = [f"d{i}" for i in range(200)]
    event = event_for(server.url, dates=dates, options={"max_attempts": 3})
    # WHEN the batch runs
    result = lambda_handler(event, LocalContext(request_id="req-m"))
    # THEN the counts are exact and every failure has its kind and attempts
    assert (result["succeeded"], result["failed"], result["not_attempted"]) == (185, 15, 0)
    kinds = {f["params"]["date"]: (f["kind"], f["attempts"]) for f in result["failures"]}
    assert all(kinds[f"d{i}"] == ("http_status", 1) for i in range(1, 200, 20))
    assert all(kinds[f"d{i}"] == ("truncated", 3) for i in range(2, 200, 40))
    ok = {i: {"date": f"d{i}"} for i in range(200) if f"d{i}" not in kinds}
    assert_written_exactly(s3, result, ok)
    assert_nothing_for(s3, result)
    assert len(orjson.dumps(result)) < 256 * 1024


def test_bad_event_names_every_field_and_makes_no_request(s3: MotoS3, api_server: Any) -> None:
    # GIVEN an event with several mistakes
    api = ScriptedAPI()
    server = api_server(api)
    event = event_for(
        server.url, dates=["2025-01-01"], options={"concurency": 8, "max_attempts": 0}
    )
    event["api_config"]["source_id"] = "../escape"
    event["query_params"] = {"date": {"nested": True}}
    # WHEN it is handled
    with pytest.raises(InvalidEventError) as caught:
        lambda_handler(event, LocalContext())
    # THEN the error names each field, and nothing was fetched or written
    fields = {field for field, _ in caught.value.problems}
    assert {
        "options.concurency",
        "options.max_attempts",
        "api_config.source_id",
        "query_params.date",
    } <= fields
    assert sum(api.hits.values()) == 0
    assert s3.list_keys(RAW_BUCKET) == []
