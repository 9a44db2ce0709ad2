"""Incremental runs under their deadline (CONTRACT §15), with S3 throttling the state object.

S3 sits behind the fault proxy (fixture ``s3_proxy``); the API is a local server.
Each test failed before issue 18: the state's 10 S3 attempts had no time limit, so
a run with a 6 s deadline returned 19-20 s past it.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest

from handler.app import lambda_handler
from ingest_core import StateError, parse_event
from ingest_core.netguard import NetPolicy
from ingest_core.results import ItemResult
from ingest_core.runtime import execute
from ingest_core.state import default_state_key
from tests.conftest import RAW_BUCKET
from tests.support.faults import S3FaultProxy
from tests.support.lambda_context import LocalContext
from tests.support.servers import MotoS3, ScriptedAPI

pytestmark = [pytest.mark.timeout(120), pytest.mark.usefixtures("allow_private")]

SOURCE = "inc-deadline"
DEADLINE_S = 6.0
THROTTLED_FOREVER = 10_000


def jan(day: int) -> str:
    return f"2025-01-{day:02d}"


def incremental_event(url: str) -> dict[str, Any]:
    return {
        "api_config": {"endpoint": f"{url}/v1/data", "raw_bucket": RAW_BUCKET, "source_id": SOURCE},
        "options": {"concurrency": 4, "max_attempts": 1, "deadline_margin_s": 1.0},
        "date_range": {"start": jan(1), "end": jan(5), "incremental": True},
    }


def state_key(url: str) -> str:
    return f"{SOURCE}/_state/{default_state_key(f'{url}/v1/data', 'date', '1d', {})}.json"


def test_a_throttled_state_read_fails_the_run_before_its_deadline(
    s3_proxy: S3FaultProxy, api_server: Any
) -> None:
    # GIVEN S3 answering every GetObject of the state with SlowDown, and 6 s on the clock
    api = ScriptedAPI()
    server = api_server(api)
    s3_proxy.inject("GetObject", "slowdown", times=THROTTLED_FOREVER)
    started = time.monotonic()
    # WHEN the scheduled run starts THEN it gives up reading, naming the deadline, in time
    with pytest.raises(StateError) as caught:
        lambda_handler(incremental_event(server.url), LocalContext(timeout_s=DEADLINE_S))
    assert time.monotonic() - started < DEADLINE_S
    assert "before the deadline" in str(caught.value)
    # AND nothing was fetched: the next run starts from the same state
    assert sum(api.hits.values()) == 0


def test_an_advance_that_cannot_be_written_in_time_is_reported_and_the_next_run_is_right(
    s3: MotoS3, s3_proxy: S3FaultProxy, api_server: Any
) -> None:
    # GIVEN five days, and S3 throttling the state from the moment the first day lands
    api = ScriptedAPI()
    server = api_server(api)
    job = parse_event(
        incremental_event(server.url),
        default_request_id="throttled",
        policy=NetPolicy(allow_private_networks=True),
    )

    def throttle_from_now(result: ItemResult) -> None:
        if not s3_proxy.pending():
            s3_proxy.inject("GetObject", "slowdown", times=THROTTLED_FOREVER)

    started = time.monotonic()
    deadline = started + DEADLINE_S
    # WHEN the run goes
    outcome = asyncio.run(execute(job, deadline=deadline, on_item=throttle_from_now))
    # THEN it returns before its deadline, every day written, saying the state was not
    assert time.monotonic() < deadline
    assert outcome.result["succeeded"] == 5
    info = outcome.result["incremental"]
    assert info["state_error"] is not None and "not written" in info["state_error"]
    assert info["watermark_after"] is None
    assert state_key(server.url) not in s3.list_keys(RAW_BUCKET)
    # WHEN S3 recovers and the next run goes
    s3_proxy.clear()
    again = asyncio.run(execute(job, deadline=time.monotonic() + DEADLINE_S))
    # THEN it fetched the days again onto the same keys: each exists once, the state is right
    assert again.result["incremental"]["state_error"] is None
    state = json.loads(s3.get_bytes(RAW_BUCKET, state_key(server.url)))
    assert (state["watermark"], state["landed"]) == (jan(5), [])
    days = [k for k in s3.list_keys(RAW_BUCKET, prefix=f"{SOURCE}/") if "/_" not in k]
    assert days == [f"{SOURCE}/{jan(d)}.json" for d in range(1, 6)]
