"""Properties of the pure core (issue #6), checked with Hypothesis.

- Any JSON value as an event gives a valid ``Job`` or ``InvalidEventError``, never
  another exception.
- Keys never carry traversal, control characters or more than 1,024 bytes, and
  never collide within a batch: ``parse_event`` refuses such an event instead.
- The result of 10,000 failing items stays under Step Functions' 256 KiB.
- ``succeeded + failed + not_attempted == requested`` for any mix of outcomes.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from typing import Any

import orjson
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from ingest_core import FailureKind, InvalidEventError, ItemResult, ItemStatus, Job, parse_event
from ingest_core.keys import MAX_KEY_BYTES
from ingest_core.netguard import NetPolicy
from ingest_core.results import Tally

STRICT = NetPolicy()
RESULT_LIMIT_BYTES = 256 * 1024
CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
MAX_PLANNED = 2_000  # jobs bigger than this are not expanded item by item here

API = {
    "endpoint": "https://api.example.com/v1/data",
    "raw_bucket": "raw-bucket",
    "source_id": "src",
}


# --------------------------------------------------------------------------- any event

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    # Python's json module accepts NaN and Infinity, so an event may hold them.
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.text(max_size=12), children, max_size=4),
    ),
    max_leaves=20,
)


def maybe(valid: Any) -> st.SearchStrategy[Any]:
    """Mostly (7 times in 8) the valid value, sometimes any JSON at all."""
    return st.integers(0, 7).flatmap(lambda n: json_values if n == 0 else st.just(valid))


# An event that is valid except where Hypothesis swaps a part for arbitrary JSON,
# so the generator reaches the deep validators and not only the top-level shape.
near_valid_api = st.fixed_dictionaries(
    {
        "endpoint": maybe(API["endpoint"]),
        "raw_bucket": maybe(API["raw_bucket"]),
        "source_id": maybe(API["source_id"]),
    },
    optional={
        "headers": maybe({"Accept": "application/json"}),
        "secret_headers": maybe({"Authorization": "secretsmanager:prod/token"}),
        "key_template": maybe("{source_id}/{param.date}-{index}.json"),
        "records_path": maybe("data.items"),
    },
)
near_valid_options = st.fixed_dictionaries(
    {},
    optional={
        "concurrency": maybe(8),
        "max_attempts": maybe(3),
        "part_size_mb": maybe(5),
        "memory_budget_mb": maybe(64),
        "read_timeout_s": maybe(1.5),
        "compress": maybe(True),
        "skip_existing": maybe(False),
    },
)
param_scalars = st.one_of(st.text(max_size=10), st.integers(), st.booleans(), json_scalars)
params = st.dictionaries(
    st.sampled_from(["date", "page", "q", "flag"]),
    st.one_of(param_scalars, st.lists(param_scalars, max_size=3)),
    max_size=3,
).map(lambda p: {**p, "date": p.get("date", "2025-01-01")})
sources = st.one_of(
    st.fixed_dictionaries({"query_params": maybe({"date": "2025-01-01"})}),
    st.fixed_dictionaries({"batch": st.one_of(st.lists(params, max_size=5), json_values)}),
    st.fixed_dictionaries(
        {
            "date_range": maybe(
                {"start": "2025-01-01", "end": "2025-01-10", "step": "1d", "param": "date"}
            )
        }
    ),
    st.fixed_dictionaries(
        {
            "Items": st.lists(
                st.one_of(
                    params,
                    st.fixed_dictionaries(
                        {"index": st.integers(min_value=-2, max_value=50), "params": params}
                    ),
                    json_values,
                ),
                max_size=5,
            )
        }
    ),
)


@st.composite
def near_valid_events(draw: st.DrawFn) -> dict[str, Any]:
    event: dict[str, Any] = {"api_config": draw(near_valid_api), **draw(sources)}
    if draw(st.booleans()):
        event["options"] = draw(near_valid_options)
    if draw(st.booleans()):
        event["request_id"] = draw(maybe("req-1"))
    if draw(st.booleans()):
        event["index_offset"] = draw(maybe(10))
    if draw(st.booleans()):  # the Distributed Map shape
        head = {k: event.pop(k) for k in ("api_config", "options", "request_id") if k in event}
        event = {"BatchInput": head, **event}
    return event


def parse_or_refuse(event: Any, default_request_id: str | None) -> Job | None:
    """Parse; None for InvalidEventError, which is the only exception allowed."""
    try:
        return parse_event(event, default_request_id=default_request_id, policy=STRICT)
    except InvalidEventError as exc:
        assert exc.problems and all(field and reason for field, reason in exc.problems)
        return None


@settings(max_examples=300, deadline=None)
@given(event=json_values, default_request_id=st.one_of(st.none(), st.just("ctx-1")))
def test_any_json_value_is_a_job_or_an_invalid_event(event: Any, default_request_id: Any) -> None:
    # GIVEN any JSON value WHEN parsed as an event THEN a Job or InvalidEventError, nothing else
    parse_or_refuse(event, default_request_id)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(event=near_valid_events(), default_request_id=st.one_of(st.none(), st.just("ctx-1")))
@example(event={"api_config": API, "batch": [{"date": float("nan")}]}, default_request_id="x")
@example(event={"api_config": API, "Items": [[1, 2]]}, default_request_id="x")
@example(event={"BatchInput": [], "Items": []}, default_request_id="x")
def test_almost_valid_events_are_a_job_or_an_invalid_event(
    event: dict[str, Any], default_request_id: str | None
) -> None:
    # GIVEN an event that is valid but for parts replaced by arbitrary JSON
    job = parse_or_refuse(event, default_request_id)
    # WHEN it parses THEN its plan yields exactly `requested` items
    if job is not None and job.requested <= MAX_PLANNED:
        assert sum(1 for _ in job.items()) == job.requested


# --------------------------------------------------------------------------- keys

KEY_FIELDS = ["{source_id}", "{request_id}", "{index}", "{params_hash}", "{param.p}", "{param.q}"]
hostile_text = st.lists(
    st.one_of(
        st.sampled_from(["/", ".", "..", "../", "/..", "\\", "%2e", "\x00", "\n", "\x7f", "\x85"]),
        st.characters(codec="utf-8"),
        st.sampled_from(string.ascii_letters),
    ),
    max_size=12,
).map("".join)
templates = st.lists(st.one_of(st.sampled_from(KEY_FIELDS), hostile_text), min_size=1, max_size=6)
# Values near the size limit: a padding literal of 990-1030 bytes probes the boundary.
padding = st.integers(0, 3).flatmap(
    lambda n: st.integers(970, 1030).map(lambda size: "k" * size) if n == 0 else st.just("")
)
param_values = st.one_of(
    hostile_text, st.integers(), st.booleans(), st.lists(hostile_text, max_size=3)
)


@st.composite
def keyed_events(draw: st.DrawFn) -> dict[str, Any]:
    template = draw(padding) + "".join(draw(templates))
    batch = draw(
        st.lists(
            st.fixed_dictionaries({"p": param_values}, optional={"q": param_values}),
            min_size=1,
            max_size=8,
        )
    )
    shape = draw(st.sampled_from(["batch", "Items"]))
    source = draw(st.sampled_from(["src", "a/b", "x.y=z", None]))
    source = draw(hostile_text) if source is None else source
    event: dict[str, Any] = {
        "api_config": {**API, "source_id": source, "key_template": template},
        "options": {"compress": draw(st.booleans())},
        "request_id": draw(st.sampled_from(["req-1", "exec:2025@x+y", "r", None]))
        or draw(hostile_text),
    }
    if shape == "batch":
        event["batch"] = batch
    else:
        indexes = draw(st.lists(st.integers(0, 20), min_size=len(batch), max_size=len(batch)))
        event["Items"] = [{"index": i, "params": p} for i, p in zip(indexes, batch, strict=True)]
    return event


def rendered_keys(job: Job) -> list[str]:
    """Every key exactly as the engine renders it (engine._key)."""
    suffix = ".gz" if job.options.compress else ""
    return [
        job.api.template.render(
            source_id=job.api.source_id,
            request_id=job.request_id,
            index=item.index,
            params=item.params,
            suffix=suffix,
        )
        for item in job.items()
    ]


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(event=keyed_events())
@example(  # 1,024 bytes without ".gz", 1,027 with it: must be refused when compressing
    event={
        "api_config": {**API, "source_id": "s", "key_template": "{source_id}/" + "a" * 1020},
        "query_params": {"p": 1},
        "options": {"compress": True},
        "request_id": "r",
    }
)
@example(  # two items with identical params under a params-only template
    event={
        "api_config": {**API, "key_template": "{source_id}/{params_hash}.json"},
        "batch": [{"p": 1}, {"p": 1}],
        "request_id": "r",
    }
)
def test_keys_are_safe_and_unique_or_the_event_is_refused(event: dict[str, Any]) -> None:
    # GIVEN hostile templates, params, source and request ids WHEN parsed
    job = parse_or_refuse(event, None)
    if job is None:
        return  # refused up front: InvalidEventError, no item is ever run
    # THEN every key the engine will use is safe
    keys = rendered_keys(job)
    for key in keys:
        assert not key.startswith("/")
        assert not {".", ".."} & set(key.split("/")), key
        assert not CONTROL.search(key), key
        assert 0 < len(key.encode("utf-8")) <= MAX_KEY_BYTES
    # AND no two items of the batch share a key
    assert not [key for key, n in Counter(keys).items() if n > 1]


# --------------------------------------------------------------------------- results

kinds = st.sampled_from(list(FailureKind))
error_texts = st.text(min_size=0, max_size=600)
failing_params = st.dictionaries(
    st.text(max_size=10), st.text(max_size=300), max_size=12
)  # up to ~3.7 KB: some over the 2 KiB cap, whose params the manifest keeps instead


@st.composite
def failing_items(draw: st.DrawFn, count: int) -> list[ItemResult]:
    # Drawing 10,000 independent values is slow: draw a few and cycle them.
    shapes = draw(st.lists(st.tuples(failing_params, kinds, error_texts), min_size=1, max_size=20))
    not_attempted = draw(st.booleans())
    items = []
    for index in range(count):
        item_params, kind, error = shapes[index % len(shapes)]
        items.append(
            ItemResult(
                index=index,
                params=item_params,
                key=f"src/req-{index}.json",
                status=ItemStatus.NOT_ATTEMPTED
                if not_attempted and index % 3 == 0
                else ItemStatus.FAILED,
                attempts=4,
                kind=kind,
                http_status=503 if kind is FailureKind.HTTP_STATUS else None,
                error=error,
            )
        )
    return items


def tally_of(items: list[ItemResult], requested: int) -> dict[str, Any]:
    tally = Tally(requested=requested)
    try:
        for item in items:
            tally.add(item)
        lines = tally.manifest_path().read_bytes().splitlines()
        assert len(lines) == len(items)
        return tally.to_result(
            request_id="req-1", source_id="src", duration_ms=1, manifest_key="src/_m/req-1.json"
        )
    finally:
        tally.close()


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(items=failing_items(10_000))
def test_the_result_of_10000_failing_items_stays_under_256_kib(items: list[ItemResult]) -> None:
    # GIVEN 10,000 failed or not-attempted items with large params and long errors
    # WHEN the result is built
    result = tally_of(items, requested=len(items))
    # THEN it is JSON under 256 KiB, says FAILED, and admits it truncated the list
    assert len(orjson.dumps(result)) < RESULT_LIMIT_BYTES
    assert result["status"] == "FAILED"
    assert result["failed"] + result["not_attempted"] == 10_000
    assert result["failures_truncated"] is True


outcomes = st.sampled_from(list(ItemStatus))


@settings(max_examples=300, deadline=None)
@given(statuses=st.lists(outcomes, max_size=300), kind=kinds)
def test_the_counts_add_up_for_any_mix_of_outcomes(
    statuses: list[ItemStatus], kind: FailureKind
) -> None:
    # GIVEN any mix of written, skipped, failed and not-attempted items
    items = [
        ItemResult(
            index=i,
            params={"i": i},
            key=f"k/{i}",
            status=status,
            attempts=1,
            received_bytes=10 if status is ItemStatus.WRITTEN else 0,
            stored_bytes=10 if status is ItemStatus.WRITTEN else 0,
            records=1 if status is ItemStatus.WRITTEN else None,
            kind=None if status in (ItemStatus.WRITTEN, ItemStatus.SKIPPED) else kind,
            error=None if status in (ItemStatus.WRITTEN, ItemStatus.SKIPPED) else "e",
        )
        for i, status in enumerate(statuses)
    ]
    # WHEN they are tallied
    result = tally_of(items, requested=len(items))
    # THEN the invariant holds and every count matches the outcomes
    counts = Counter(statuses)
    assert result["succeeded"] + result["failed"] + result["not_attempted"] == result["requested"]
    assert result["succeeded"] == counts[ItemStatus.WRITTEN] + counts[ItemStatus.SKIPPED]
    assert result["skipped_existing"] == counts[ItemStatus.SKIPPED]
    # A write cut while S3 may have applied it counts as failed (CONTRACT §6, issue 14).
    assert result["failed"] == counts[ItemStatus.FAILED] + counts[ItemStatus.WRITE_UNKNOWN]
    assert result["write_unknown"] == counts[ItemStatus.WRITE_UNKNOWN]
    assert result["not_attempted"] == counts[ItemStatus.NOT_ATTEMPTED]
    assert result["bytes_written"] == 10 * counts[ItemStatus.WRITTEN]
    assert len(result["failures"]) == result["failed"] + result["not_attempted"]
    # AND the status says what happened
    if result["succeeded"] == len(items):
        assert result["status"] == "SUCCESS"
    elif result["succeeded"] == 0:
        assert result["status"] == "FAILED"
    else:
        assert result["status"] == "PARTIAL_SUCCESS"
