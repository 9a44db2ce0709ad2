"""Idempotency and resume (issue #6): re-running a batch converges, it never duplicates.

A Distributed Map batch carries the execution name as its request id and global
item indexes, so its keys are the same on every run: running it again rewrites
the same keys with the same bytes, ``skip_existing`` makes a re-run free, and the
``failures`` of an interrupted run are exactly the ``Items`` of its re-drive.
"""

from __future__ import annotations

from typing import Any

import pytest

from handler.app import lambda_handler
from tests.conftest import RAW_BUCKET
from tests.support.faults import S3FaultProxy
from tests.support.lambda_context import LocalContext
from tests.support.reliability import (
    SOURCE,
    assert_s3_outcome,
    event_for,
    key_for,
    served_body,
)
from tests.support.servers import MotoS3, Response, ScriptedAPI

pytestmark = [pytest.mark.timeout(60), pytest.mark.usefixtures("allow_private")]

EXECUTION = "exec-2025-idem"
MANIFESTS = f"{SOURCE}/_manifests/"


def map_event(url: str, items: list[dict[str, Any]], **options: Any) -> dict[str, Any]:
    """The event ItemBatcher builds: BatchInput (config, options, execution name) + Items."""
    base = event_for(f"{url}/v1/data", options=options)
    return {
        "BatchInput": {
            "api_config": base["api_config"],
            "options": base["options"],
            "request_id": EXECUTION,
        },
        "Items": items,
    }


def plan(count: int, first: int = 100) -> list[dict[str, Any]]:
    """Items with global indexes ``first..first+count-1``."""
    return [{"index": first + i, "params": {"date": f"d{first + i}"}} for i in range(count)]


def objects(s3: MotoS3) -> dict[str, bytes]:
    """Every data object (manifests left out) and its bytes."""
    keys = [k for k in s3.list_keys(RAW_BUCKET) if not k.startswith(MANIFESTS)]
    return {key: s3.get_bytes(RAW_BUCKET, key) for key in keys}


def test_running_the_same_map_batch_twice_writes_the_same_keys_and_bytes(
    s3: MotoS3, api_server: Any, put_path: str
) -> None:
    # GIVEN one Distributed Map batch of 20 items
    api = ScriptedAPI()
    event = map_event(api_server(api).url, plan(20))
    # WHEN it runs, and then runs again (a Map retry of the same batch)
    first = lambda_handler(event, LocalContext())
    after_first = objects(s3)
    second = lambda_handler(event, LocalContext())
    # THEN both runs succeeded and the second left exactly the same keys and bytes
    assert first["status"] == second["status"] == "SUCCESS"
    assert objects(s3) == after_first
    assert len(after_first) == 20
    assert first["manifest_key"] == second["manifest_key"] == f"{MANIFESTS}{EXECUTION}-100-119.json"
    bodies = {item["index"]: served_body(item["params"]) for item in plan(20)}
    assert_s3_outcome(s3, second, bodies)


def test_skip_existing_makes_no_api_call_for_items_already_written(
    s3: MotoS3, api_server: Any
) -> None:
    # GIVEN a batch of 10 of which the first 6 were written by an earlier run
    api = ScriptedAPI()
    url = api_server(api).url
    lambda_handler(map_event(url, plan(6)), LocalContext())
    api.clear()
    # WHEN the whole batch runs with skip_existing
    result = lambda_handler(map_event(url, plan(10), skip_existing=True), LocalContext())
    # THEN only the 4 missing items were fetched; all 10 count as succeeded
    assert sorted(api.hits) == [f"d{i}" for i in range(106, 110)]
    assert sum(api.hits.values()) == 4
    assert (result["succeeded"], result["skipped_existing"]) == (10, 6)
    bodies = {item["index"]: served_body(item["params"]) for item in plan(10)}
    assert_s3_outcome(s3, result, bodies)


def test_a_batch_cut_by_its_deadline_and_redriven_from_its_failures_lands_every_item_once(
    s3: MotoS3, s3_proxy: S3FaultProxy, api_server: Any
) -> None:
    # GIVEN 12 items of which 4 answer only after 30 s on their first request (fast after)
    slow = {f"d{i}" for i in (101, 104, 107, 110)}
    api = ScriptedAPI({d: [Response(delay_s=30), Response()] for d in slow})
    url = api_server(api).url
    items = plan(12)
    # WHEN the batch runs with 4 s left, then is re-driven from result["failures"]
    context = LocalContext(timeout_s=4)
    first = lambda_handler(map_event(url, items, deadline_margin_s=1.0), context)
    assert context.get_remaining_time_in_millis() > 0
    redrive = [{"index": f["index"], "params": f["params"]} for f in first["failures"]]
    second = lambda_handler(map_event(url, redrive), LocalContext())
    # THEN the first run handed back the slow items (and, on a loaded machine, perhaps a
    # fast one it had no time for), all as not attempted
    assert first["failed"] == 0 and first["not_attempted"] == len(redrive)
    assert {f["kind"] for f in first["failures"]} == {"deadline"}
    assert slow <= {item["params"]["date"] for item in redrive}
    # AND the re-drive wrote them under the same keys
    assert second["status"] == "SUCCESS" and second["succeeded"] == len(redrive)
    bodies = {item["index"]: served_body(item["params"]) for item in items}
    # The two runs together, seen as one: all 12 written, none failed.
    everything = {**second, "requested": 12, "succeeded": 12, "failures": []}
    assert_s3_outcome(s3, everything, bodies)
    assert set(objects(s3)) == {key_for(first, item["index"]) for item in items}
    # AND every item was written exactly once: 12 object PUTs, plus one manifest per run
    assert s3_proxy.statuses("PutObject") == [200] * (12 + 2)
    assert all(api.hits[item["params"]["date"]] == 1 for item in items if item not in redrive)
    assert all(api.hits[d] == 2 for d in slow)  # cut once, then fetched once
