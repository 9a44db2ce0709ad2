"""What an incremental event must be (CONTRACT §15): run-independent keys, one canonical
state key, relative dates in range. Each test here failed before issue 18 was fixed."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from ingest_core import InvalidEventError, parse_event
from ingest_core.netguard import NetPolicy
from ingest_core.state import default_state_key

API = {
    "endpoint": "https://api.example.com/v1/data",
    "raw_bucket": "raw-bucket",
    "source_id": "src",
}
NOW = datetime(2025, 3, 1, 6, 15, tzinfo=UTC)
POLICY = NetPolicy(allowed_hosts=(), allowed_buckets=())


def event(api: dict[str, Any] | None = None, **date_range: Any) -> dict[str, Any]:
    bounds = {"start": "2025-01-01", "end": "2025-01-05", "incremental": True}
    return {"api_config": {**API, **(api or {})}, "date_range": {**bounds, **date_range}}


def refused(body: dict[str, Any]) -> dict[str, str]:
    with pytest.raises(InvalidEventError) as caught:
        parse_event(body, default_request_id="run-1", policy=POLICY, now=NOW)
    reasons: dict[str, str] = {}
    for name, reason in caught.value.problems:
        reasons[name] = f"{reasons[name]}; {reason}" if name in reasons else reason
    return reasons


@pytest.mark.parametrize("bound", ["start", "end"])
@pytest.mark.parametrize("text", ["today-999999d", "today-740000d"])
def test_a_relative_date_out_of_range_is_an_invalid_event_naming_the_field(
    bound: str, text: str
) -> None:
    # GIVEN a relative bound that reaches before the year 1
    body = event(**{bound: text}, incremental=False)
    if bound == "end":
        body["date_range"]["start"] = "today-999999d"
    # WHEN parsed THEN InvalidEventError (not OverflowError) naming the field
    problems = refused(body)
    assert "out of range" in problems[f"date_range.{bound}"]


@pytest.mark.parametrize("placeholder", ["{request_id}", "{index}"])
def test_a_run_dependent_key_template_is_refused_for_an_incremental_range(
    placeholder: str,
) -> None:
    # GIVEN an incremental range whose keys would change from one run to the next
    body = event({"key_template": "{source_id}/" + placeholder + "-{param.date}.json"})
    # WHEN parsed THEN the key template is refused, naming the placeholder and why
    reason = refused(body)["api_config.key_template"]
    assert placeholder in reason and "refused in an incremental range" in reason


def test_the_default_key_template_of_an_incremental_range_names_the_step() -> None:
    # GIVEN the documented schedule event: no request_id, no key_template
    job = parse_event(event(), default_request_id="lambda-req-1", policy=POLICY, now=NOW)
    # THEN each day's key is the same whichever run fetches it
    keys = [
        job.api.template.render(source_id="src", request_id=rid, index=i, params=item.params)
        for rid, i, item in (("a", 0, next(job.items())), ("b", 7, next(job.items())))
    ]
    assert keys == ["src/2025-01-01.json", "src/2025-01-01.json"]


def test_the_default_paginated_key_of_an_incremental_range_names_step_and_page() -> None:
    pagination = {"type": "page_number"}
    job = parse_event(event({"pagination": pagination}), default_request_id="r", policy=POLICY)
    assert job.api.key_template == "{source_id}/{param.date}-{page}.json"


def test_a_plain_range_keeps_the_request_id_default() -> None:
    body = event(incremental=False)
    job = parse_event(body, default_request_id="r", policy=POLICY)
    assert job.api.key_template == "{source_id}/{request_id}-{index}.json"


@pytest.mark.parametrize(
    ("typed", "text"),
    [
        ({"limit": 100}, {"limit": "100"}),
        ({"on": True}, {"on": "true"}),
        ({"x": 1.5}, {"x": "1.5"}),
    ],
)
def test_state_keys_read_extra_params_as_the_query_text(
    typed: dict[str, Any], text: dict[str, str]
) -> None:
    # GIVEN the event's typed extra_params and the CLI's --query strings for one query
    # THEN both name the same state object
    endpoint = API["endpoint"]
    assert default_state_key(endpoint, "date", "1d", typed) == default_state_key(
        endpoint, "date", "1d", text
    )


def test_a_packed_incremental_range_defaults_to_one_object_per_step() -> None:
    body = {**event(), "options": {"pack": {"compression": "none"}}}
    job = parse_event(body, default_request_id="r", policy=POLICY)
    assert job.options.pack is not None
    assert job.options.pack.template == "{source_id}/{step}.ndjson"


@pytest.mark.parametrize(
    ("template", "named"),
    [
        ("{source_id}/{request_id}-{first_index}-{part}.ndjson.gz", "{request_id}"),
        ("{source_id}/{step}-{part}.ndjson.gz", "{part}"),
        ("{source_id}/all-{part}.ndjson.gz", "{step}"),
    ],
)
def test_a_packed_incremental_range_refuses_keys_that_are_not_one_per_step(
    template: str, named: str
) -> None:
    body = {**event(), "options": {"pack": {"key_template": template}}}
    reason = refused(body)["options.pack.key_template"]
    assert named in reason


def test_step_in_a_pack_template_needs_a_date_range() -> None:
    body = {
        "api_config": API,
        "batch": [{"date": "2025-01-01"}],
        "options": {"pack": {"key_template": "{source_id}/{step}.ndjson.gz"}},
    }
    assert "needs a date_range" in refused(body)["options.pack.key_template"]
