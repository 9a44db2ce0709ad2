"""Events built to misbehave (issue 14): steering headers, odd manifest keys, huge errors."""

from __future__ import annotations

from typing import Any

import pytest

from ingest_core import InvalidEventError, parse_event
from ingest_core.events import REFUSED_HEADERS
from ingest_core.netguard import NetPolicy

API = {
    "endpoint": "https://api.example.com/v1/data",
    "raw_bucket": "raw-bucket",
    "source_id": "src",
}
ALLOWED = NetPolicy(allowed_hosts=("api.example.com",))


def problems_of(event: dict[str, Any]) -> list[tuple[str, str]]:
    with pytest.raises(InvalidEventError) as caught:
        parse_event(event, default_request_id="ctx-id", policy=ALLOWED)
    return caught.value.problems


@pytest.mark.parametrize("field", ["headers", "secret_headers"])
@pytest.mark.parametrize(
    "name",
    [
        "Host",
        "host",
        "Content-Length",
        "Transfer-Encoding",
        "Connection",
        "Keep-Alive",
        "Upgrade",
        "TE",
        "Trailer",
        "Expect",
        "Proxy-Authorization",
        "Proxy-Connection",
        "X-Forwarded-Host",
        "Forwarded",
    ],
)
def test_headers_that_steer_routing_or_framing_are_refused(field: str, name: str) -> None:
    # GIVEN a Host (or framing) header aimed at a virtual host the allow-list never approved
    value = "ssm:/x" if field == "secret_headers" else "admin.internal.example"
    event = {"api_config": {**API, field: {name: value}}, "query_params": {"d": 1}}
    # WHEN the event is parsed THEN it is refused, naming the field and the header
    [(where, reason)] = problems_of(event)
    assert where == f"api_config.{field}"
    assert repr(name) in reason and "steers" in reason


def test_the_refused_list_is_lowercase() -> None:
    assert all(name == name.lower() for name in REFUSED_HEADERS)


def test_ordinary_headers_are_still_accepted() -> None:
    headers = {"Accept": "application/json", "X-Request-Source": "fanout", "X-Hosted": "1"}
    job = parse_event(
        {"api_config": {**API, "headers": headers}, "query_params": {"d": 1}},
        default_request_id="ctx-id",
        policy=ALLOWED,
    )
    assert dict(job.api.headers) == headers


def test_a_manifest_key_with_a_dot_segment_is_refused() -> None:
    # GIVEN source_id "a/." with a key template that does not use it: items are fine
    api = {**API, "source_id": "a/.", "key_template": "x/{request_id}-{index}.json"}
    # WHEN parsed THEN the manifest key a/./_manifests/... is refused on source_id
    [(where, reason)] = problems_of({"api_config": api, "batch": [{"d": 1}]})
    assert where == "api_config.source_id"
    assert "manifest key" in reason and "'.'" in reason


def test_a_huge_invalid_batch_gives_a_capped_error() -> None:
    # GIVEN 200,000 items, each with an invalid value
    event = {"api_config": API, "batch": [{"d": None}] * 200_000}
    # WHEN parsed
    problems = problems_of(event)
    # THEN the first problems are listed and the rest counted, in a short message
    cap = InvalidEventError.MAX_PROBLEMS
    assert len(problems) == cap + 1
    assert problems[0][0] == "batch[0].d"
    assert problems[-1] == ("event", f"{200_000 - cap} more problems not shown")
    assert len(str(InvalidEventError(problems))) < 20_000
