"""The pure parts of incremental runs: the prefix tracker, state keys and shapes, skipping."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import pytest

from ingest_core import InvalidEventError, StateError, parse_event
from ingest_core.errors import FailureKind, StateConflict
from ingest_core.events import skip_items
from ingest_core.incremental import PrefixTracker
from ingest_core.netguard import NetPolicy
from ingest_core.results import ItemResult, ItemStatus
from ingest_core.state import LocalStateStore, Watermark, advance, decode, default_state_key

API = {"endpoint": "https://api.example.com/v1/data", "raw_bucket": "raw", "source_id": "src"}


def result(index: int, ok: bool) -> ItemResult:
    status = ItemStatus.WRITTEN if ok else ItemStatus.FAILED
    kind = None if ok else FailureKind.HTTP_STATUS
    return ItemResult(index, {"date": f"d{index:02d}"}, "k", status, kind=kind)


@pytest.mark.parametrize("seed", range(20))
def test_prefix_tracker_ends_before_the_first_gap_in_any_order(seed: int) -> None:
    # GIVEN items 10..39 of which 23 failed, finishing in a random order
    order = list(range(10, 40))
    random.Random(seed).shuffle(order)
    tracker = PrefixTracker(next_index=10, param="date")
    # WHEN each is recorded
    for index in order:
        tracker.on_item(result(index, ok=index != 23))
    # THEN the prefix ends at 22, whatever the order
    assert tracker.last_value == "d22" and tracker.gap == 23


def test_prefix_tracker_with_a_first_item_not_attempted_has_no_prefix() -> None:
    tracker = PrefixTracker(next_index=0, param="date")
    tracker.on_item(result(1, ok=True))
    tracker.on_item(ItemResult(0, {"date": "d00"}, "k", ItemStatus.NOT_ATTEMPTED))
    assert tracker.last_value is None


def test_skipped_existing_items_count_as_landed() -> None:
    tracker = PrefixTracker(next_index=0, param="date")
    tracker.on_item(ItemResult(0, {"date": "d00"}, "k", ItemStatus.SKIPPED))
    assert tracker.last_value == "d00"


def test_default_state_key_is_stable_and_follows_what_identifies_requests() -> None:
    key = default_state_key("https://a/x", "date", "1d", {"b": 1, "a": "2"})
    assert key == default_state_key("https://a/x", "date", "1d", {"a": "2", "b": 1})
    assert len(key) == 16 and int(key, 16) >= 0
    assert key != default_state_key("https://a/x", "date", "1d", {"a": "3", "b": 1})
    assert key != default_state_key("https://a/x", "day", "1d", {"b": 1, "a": "2"})


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"null",
        b'{"watermark": "2025-01-01"}',
        b'{"watermark": 1, "updated_at": "", "request_id": ""}',
    ],
)
def test_malformed_state_objects_name_the_object(raw: bytes) -> None:
    with pytest.raises(StateError, match="s3://b/k"):
        decode(raw, "s3://b/k")


def test_skip_items_keeps_each_items_index() -> None:
    event = {
        "api_config": API,
        "date_range": {"start": "2025-01-30", "end": "2025-02-02", "incremental": True},
        "index_offset": 100,
        "request_id": "r",
    }
    job = parse_event(event, policy=NetPolicy())
    tail = skip_items(job, 2)
    assert [(i.index, i.params["date"]) for i in tail.items()] == [
        (102, "2025-02-01"),
        (103, "2025-02-02"),
    ]
    assert tail.requested == 2


def test_an_incremental_range_needs_a_format_that_reads_back() -> None:
    event = {
        "api_config": API,
        "date_range": {
            "start": "2025-01-01",
            "end": "2025-01-02",
            "format": "day-%j",
            "incremental": True,
        },
        "request_id": "r",
    }
    with pytest.raises(InvalidEventError) as caught:
        parse_event(
            {**event, "date_range": {**event["date_range"], "format": "%a"}}, policy=NetPolicy()
        )
    assert [name for name, _ in caught.value.problems] == ["date_range.format"]
    parse_event(event, policy=NetPolicy())  # day-of-year reads back


def test_local_store_refuses_a_stale_version_and_advance_keeps_the_max(tmp_path: Path) -> None:
    store = LocalStateStore(tmp_path / "src" / "_state" / "k.json")

    async def scenario() -> str:
        await store.write(Watermark("2025-01-05", "t", "a"), version=None)
        with pytest.raises(StateConflict):
            await store.write(Watermark("2025-01-01", "t", "b"), version=None)
        _, wrote = await advance(store, "2025-01-03", fmt="%Y-%m-%d", request_id="c")
        assert not wrote
        _, wrote = await advance(store, "2025-01-09", fmt="%Y-%m-%d", request_id="d")
        assert wrote
        current = await store.read()
        assert current is not None
        return current.state.watermark

    assert asyncio.run(scenario()) == "2025-01-09"
