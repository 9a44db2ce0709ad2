"""parse_event: every event shape, and bad events naming every field."""

from __future__ import annotations

from typing import Any

import pytest

from ingest_core import InvalidEventError, parse_event
from ingest_core.netguard import NetPolicy

OPEN = NetPolicy()
API = {
    "endpoint": "https://api.example.com/v1/data",
    "raw_bucket": "raw-bucket",
    "source_id": "src",
}


def parse(event: dict[str, Any], **kwargs: Any) -> Any:
    return parse_event(
        event, default_request_id="ctx-id", policy=kwargs.pop("policy", OPEN), **kwargs
    )


def fields_of(event: Any, policy: NetPolicy = OPEN) -> set[str]:
    with pytest.raises(InvalidEventError) as caught:
        parse_event(event, default_request_id="ctx-id", policy=policy)
    return {field for field, _ in caught.value.problems}


def test_original_single_request_shape() -> None:
    # GIVEN the original event: api_config + query_params
    job = parse({"api_config": API, "query_params": {"date": "2025-02-23"}})
    # THEN one item, index 0, request id from the context
    assert job.requested == 1 and job.request_id == "ctx-id"
    assert [(i.index, dict(i.params)) for i in job.items()] == [(0, {"date": "2025-02-23"})]


def test_batch_with_index_offset_and_request_id() -> None:
    job = parse(
        {
            "api_config": API,
            "batch": [{"d": 1}, {"d": 2}],
            "index_offset": 10,
            "request_id": "run-7",
        }
    )
    assert job.request_id == "run-7"
    assert [i.index for i in job.items()] == [10, 11]


def test_date_range_is_lazy_and_inclusive() -> None:
    job = parse(
        {
            "api_config": API,
            "date_range": {"start": "2024-02-27", "end": "2024-03-01", "extra_params": {"k": "v"}},
        }
    )
    assert job.requested == 4
    assert [i.params["date"] for i in job.items()] == [
        "2024-02-27",
        "2024-02-28",
        "2024-02-29",
        "2024-03-01",
    ]
    assert all(i.params["k"] == "v" for i in job.items())


def test_distributed_map_batch_with_wrapped_and_bare_items() -> None:
    # GIVEN ItemBatcher's shape: BatchInput + Items, with a global index or bare params
    job = parse(
        {
            "BatchInput": {
                "api_config": API,
                "options": {"concurrency": 4},
                "request_id": "exec-1",
            },
            "Items": [{"index": 17, "params": {"date": "a"}}, {"date": "b"}],
        }
    )
    # THEN the execution name is the request id and indexes are kept
    assert job.request_id == "exec-1" and job.is_map_batch and job.options.concurrency == 4
    assert [(i.index, i.params["date"]) for i in job.items()] == [(17, "a"), (1, "b")]


def test_empty_batch_is_valid() -> None:
    assert parse({"api_config": API, "batch": []}).requested == 0


@pytest.mark.parametrize(
    ("event", "expected"),
    [
        ({"api_config": API}, {"event"}),
        ({"api_config": API, "batch": [], "query_params": {}}, {"batch", "query_params"}),
        (
            {"api_config": {**API, "endpoint": "http://api.example.com"}, "batch": []},
            {"api_config.endpoint"},
        ),
        (
            {"api_config": {**API, "raw_bucket": "Bad_Bucket"}, "batch": []},
            {"api_config.raw_bucket"},
        ),
        ({"api_config": {**API, "source_id": "../up"}, "batch": []}, {"api_config.source_id"}),
        (
            {"api_config": {**API, "key_template": "{nope}"}, "batch": []},
            {"api_config.key_template"},
        ),
        (
            {"api_config": {**API, "secret_headers": {"Authorization": "Bearer abc"}}, "batch": []},
            {"api_config.secret_headers"},
        ),
        (
            {"api_config": API, "batch": [{"d": {"x": 1}}, {"d": None}]},
            {"batch[0].d", "batch[1].d"},
        ),
        (
            {"api_config": API, "batch": [], "options": {"concurrency": 0, "part_size_mb": 1}},
            {"options.concurrency", "options.part_size_mb"},
        ),
        ({"api_config": API, "batch": [], "options": {"bogus": 1}}, {"options.bogus"}),
        (
            {"api_config": API, "date_range": {"start": "2025-02-01", "end": "2025-01-01"}},
            {"date_range"},
        ),
        ({"api_config": API, "batch": [], "request_id": "has space"}, {"request_id"}),
        ({"api_config": API, "batch": [], "extra": 1}, {"extra"}),
        (
            {"BatchInput": {"api_config": API, "options": {"concurrency": -1}}, "Items": []},
            {"BatchInput.options.concurrency"},
        ),
    ],
    ids=[
        "no-source",
        "two-sources",
        "http-endpoint",
        "bad-bucket",
        "source-traversal",
        "unknown-placeholder",
        "secret-in-event",
        "bad-param-values",
        "bad-options",
        "unknown-option",
        "end-before-start",
        "bad-request-id",
        "unknown-top-field",
        "batch-input-field",
    ],
)
def test_bad_events_name_each_offending_field(event: dict[str, Any], expected: set[str]) -> None:
    assert fields_of(event) == expected


def test_every_problem_is_reported_at_once() -> None:
    # GIVEN an event with four independent mistakes
    event = {
        "api_config": {**API, "endpoint": "ftp://x", "source_id": ""},
        "batch": [{"d": [1, {"no": 1}]}],
        "options": {"max_attempts": "many"},
    }
    # THEN one error lists all of them
    assert fields_of(event) == {
        "api_config.endpoint",
        "api_config.source_id",
        "batch[0].d",
        "options.max_attempts",
    }


def test_colliding_keys_are_an_invalid_event() -> None:
    # GIVEN a template that ignores the index and two items with the same param
    event = {
        "api_config": {**API, "key_template": "{source_id}/{param.date}.json"},
        "batch": [{"date": "x"}, {"date": "x"}],
    }
    with pytest.raises(InvalidEventError, match="items 0 and 1 map to the same key"):
        parse(event)


def test_duplicate_map_indexes_collide() -> None:
    event = {"BatchInput": {"api_config": API}, "Items": [{"index": 3, "params": {}}] * 2}
    with pytest.raises(InvalidEventError, match="same key"):
        parse(event)


def test_allowed_hosts_and_buckets_are_enforced() -> None:
    policy = NetPolicy(allowed_hosts=("*.example.org",), allowed_buckets=("other",))
    assert fields_of({"api_config": API, "batch": []}, policy) == {
        "api_config.endpoint",
        "api_config.raw_bucket",
    }


def test_non_object_event() -> None:
    assert fields_of([1, 2]) == {"event"}


def test_missing_request_id_without_context() -> None:
    with pytest.raises(InvalidEventError, match="request_id"):
        parse_event({"api_config": API, "batch": []}, policy=OPEN)
