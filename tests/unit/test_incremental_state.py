"""The pure parts of incremental runs: landed steps, merging states, state keys, shapes."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Iterator
from datetime import date, timedelta
from pathlib import Path

import pytest

from ingest_core import InvalidEventError, StateError, parse_event
from ingest_core.errors import FailureKind, StateConflict
from ingest_core.incremental import LandedSteps, plan_window
from ingest_core.netguard import NetPolicy
from ingest_core.ranges import DateRange
from ingest_core.results import ItemResult, ItemStatus
from ingest_core.state import (
    MAX_LANDED,
    LocalStateStore,
    Progress,
    Watermark,
    advance,
    decode,
    default_state_key,
    merge,
    overwrite,
)

FMT = "%Y-%m-%d"
API = {"endpoint": "https://api.example.com/v1/data", "raw_bucket": "raw", "source_id": "src"}


def result(index: int, ok: bool) -> ItemResult:
    status = ItemStatus.WRITTEN if ok else ItemStatus.FAILED
    kind = None if ok else FailureKind.HTTP_STATUS
    return ItemResult(index, {"date": f"2025-01-{index:02d}"}, "k", status, kind=kind)


def jan(day: int) -> str:
    return f"2025-01-{day:02d}"


def window_of(first: int, last: int) -> Callable[[], Iterator[str]]:
    return lambda: iter([jan(d) for d in range(first, last + 1)])


@pytest.mark.parametrize("seed", range(10))
def test_landed_steps_are_whatever_succeeded_in_any_order(seed: int) -> None:
    # GIVEN days 1..20 of which the 5th failed and the 9th was already there
    order = list(range(1, 21))
    random.Random(seed).shuffle(order)
    landed = LandedSteps("date")
    for day in order:
        outcome = result(day, ok=day != 5)
        landed.on_item(
            outcome if day != 9 else ItemResult(9, outcome.params, "k", ItemStatus.SKIPPED)
        )
    # THEN every day but the 5th counts as landed, whatever the order
    assert landed.values == {jan(d) for d in range(1, 21)} - {jan(5)}


def test_merge_stops_the_watermark_at_a_gap_and_lists_what_landed_after_it() -> None:
    # GIVEN a first run over Jan 1-10 (anchor Dec 31) where Jan 3 failed
    progress = Progress("2024-12-31", window_of(1, 10), {jan(d) for d in range(1, 11)} - {jan(3)})
    # THEN the watermark stops before Jan 3 and Jan 4-10 are listed
    assert merge(None, progress, FMT) == (jan(2), tuple(jan(d) for d in range(4, 11)))
    # WHEN the next run lands Jan 3 THEN the watermark walks over everything listed
    state = Watermark(jan(2), "t", "r1", tuple(jan(d) for d in range(4, 11)))
    assert merge(state, Progress(jan(2), window_of(3, 11), {jan(3)}), FMT) == (jan(10), ())


def test_merge_never_moves_the_watermark_across_steps_nobody_fetched() -> None:
    # GIVEN a run that read Jan 5 and landed Jan 6-7, while the state was set back to Jan 1
    state = Watermark(jan(1), "t", "set")
    progress = Progress(jan(5), window_of(6, 7), {jan(6), jan(7)})
    # THEN the watermark stays at Jan 1; Jan 6-7 are listed as landed
    assert merge(state, progress, FMT) == (jan(1), (jan(6), jan(7)))


def test_merge_keeps_a_later_watermark_of_a_racing_run() -> None:
    # GIVEN another run moved the watermark to Jan 8 (and landed Jan 10) meanwhile
    state = Watermark(jan(8), "t", "other", (jan(10),))
    progress = Progress(jan(2), window_of(3, 9), {jan(3), jan(9)})
    # THEN this run's Jan 9 extends it; Jan 10, past this run's steps, stays listed
    assert merge(state, progress, FMT) == (jan(9), (jan(10),))


def test_the_landed_list_is_bounded_keeping_the_earliest() -> None:
    days = [(date(2025, 1, 1) + timedelta(days=k)).isoformat() for k in range(2000)]
    progress = Progress("2024-12-31", lambda: iter(days), set(days[1:]))
    mark, landed = merge(None, progress, FMT)
    assert mark == "2024-12-31" and len(landed) == MAX_LANDED
    assert list(landed) == sorted(set(days[1:]))[:MAX_LANDED]


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
        behind = Progress(jan(1), window_of(2, 3), {jan(2), jan(3)})
        _, wrote = await advance(store, behind, fmt=FMT, request_id="c")
        assert not wrote
        ahead = Progress(jan(5), window_of(6, 9), {jan(d) for d in range(6, 10)})
        _, wrote = await advance(store, ahead, fmt=FMT, request_id="d")
        assert wrote
        current = await store.read()
        assert current is not None
        return current.state.watermark

    assert asyncio.run(scenario()) == "2025-01-09"


def test_set_keeps_the_steps_listed_after_the_new_watermark(tmp_path: Path) -> None:
    # GIVEN Jan 3 failed and Jan 4-6 are listed as landed
    store = LocalStateStore(tmp_path / "k.json")
    listed = (jan(4), jan(5), jan(6))

    async def scenario() -> Watermark:
        await store.write(Watermark(jan(2), "t", "r", listed), version=None)
        # WHEN an operator steps over Jan 3, then over Jan 4 too
        await overwrite(store, jan(3), fmt=FMT, request_id="set")
        return await overwrite(store, jan(4), fmt=FMT, request_id="set")

    # THEN what landed after the watermark stays listed: those days are not fetched again
    assert asyncio.run(scenario()).landed == (jan(5), jan(6))


def date_range(start: str, end: str) -> DateRange:
    return DateRange(start=start, end=end, incremental=True)


def test_a_window_catches_up_from_before_start_bounded_oldest_first() -> None:
    # GIVEN a watermark at Jan 3, Jan 6 listed as landed, and a run over Jan 8-10
    state = Watermark(jan(3), "t", "r", (jan(6),))
    # WHEN at most 4 steps may be covered
    window = plan_window(date_range(jan(8), jan(10)), state, max_catch_up=4)
    # THEN the window is Jan 4-7, Jan 6 is not fetched, and 3 steps are left after it
    assert list(window.steps()) == [jan(4), jan(5), jan(6), jan(7)]
    todo = [value for value in window.steps() if value not in window.landed]
    assert todo == [jan(4), jan(5), jan(7)] and window.beyond == 3


def test_steps_listed_past_the_window_are_not_counted_behind() -> None:
    state = Watermark(jan(3), "t", "r", (jan(9),))
    window = plan_window(date_range(jan(1), jan(10)), state, max_catch_up=2)
    assert list(window.steps()) == [jan(4), jan(5)]
    assert window.beyond == 4  # Jan 6, 7, 8, 10


def test_a_first_window_follows_the_step_before_start() -> None:
    window = plan_window(date_range(jan(1), jan(3)), None, max_catch_up=1000)
    assert (window.anchor, list(window.steps())) == ("2024-12-31", [jan(1), jan(2), jan(3)])
