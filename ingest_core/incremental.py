"""Incremental runs (CONTRACT §15): start after the watermark, advance over what landed.

``run_incremental`` wraps one run of a ``date_range`` job without touching the
engine: it reads the watermark, drops the items it covers from the plan, runs
the rest through the ``run`` callable it is given (the same run the plain path
makes, plus one more ``on_item`` callback), and then moves the watermark to the
end of the contiguous prefix of items that succeeded. A failed item, or one not
attempted (a deadline, a stop), ends the prefix: the next run starts at it, and
everything after it is fetched again rather than skipped.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from ingest_core.engine import ItemCallback, RunOutcome
from ingest_core.errors import StateError
from ingest_core.events import Job, skip_items
from ingest_core.planner import covered_count
from ingest_core.results import ItemResult, Tally
from ingest_core.state import (
    LocalStateStore,
    S3StateStore,
    StateStore,
    advance,
    check_watermark,
    default_state_key,
    state_object_key,
)
from ingest_core.writers import LocalDirWriter, ObjectWriter, S3Writer

log = logging.getLogger(__name__)

RunFn = Callable[[Job, ItemCallback], Awaitable[RunOutcome]]


def is_incremental(job: Job) -> bool:
    """Whether ``job`` is a ``date_range`` with ``incremental: true``."""
    return job.date_range is not None and job.date_range.incremental


def state_key_of(job: Job) -> str:
    """The range's ``state_key``, or the default derived from its requests."""
    date_range = job.date_range
    if date_range is None:
        raise ValueError("only a date_range job has a state key")
    return date_range.state_key or default_state_key(
        job.api.endpoint, date_range.param, date_range.step, date_range.extra_params
    )


def store_for(writer: ObjectWriter, job: Job, prefix: str = "") -> StateStore:
    """The state store beside ``writer``'s objects: the same bucket, or the same folder.

    Raises:
        StateError: a writer that is neither S3 nor a local folder.
    """
    key = state_object_key(job.api.source_id, state_key_of(job), prefix)
    if isinstance(writer, S3Writer):
        return S3StateStore(writer.client, writer.bucket, key)
    if isinstance(writer, LocalDirWriter):
        return LocalStateStore(writer.root / key)
    raise StateError(f"an incremental run needs an S3 or local-folder writer, not {writer!r}")


@dataclass(slots=True)
class PrefixTracker:
    """Follows the end of the unbroken run of succeeded items from the first index.

    Items finish out of order; successes past the first gap are never kept, so
    memory is bounded by the items finishing ahead of a slow one.
    """

    next_index: int
    param: str
    last_value: str | None = None
    gap: int | None = None  # the lowest index that did not succeed
    _ahead: dict[int, str] = field(default_factory=dict)

    def on_item(self, result: ItemResult) -> None:
        """Record one item's outcome (an engine ``on_item`` callback)."""
        if self.gap is not None and result.index >= self.gap:
            return
        if not result.succeeded:
            self.gap = result.index
            self._ahead = {i: v for i, v in self._ahead.items() if i < result.index}
            return
        self._ahead[result.index] = str(result.params[self.param])
        while self.next_index in self._ahead:
            self.last_value = self._ahead.pop(self.next_index)
            self.next_index += 1


async def run_incremental(
    job: Job, store: StateStore, run: RunFn, *, on_plan: Callable[[Job], None] | None = None
) -> RunOutcome:
    """Run the part of ``job``'s range after the watermark, then advance it.

    ``on_plan`` is told the job that will actually run (a progress display's
    total) before it starts, or an empty one when there is nothing new.
    The result gains an ``incremental`` block: the state object, the watermark
    before and after, the first date fetched, and whether there was nothing new.

    Raises:
        StateError: the state object is unreadable or malformed (before any
            request), or the advance could not be written.
    """
    date_range = job.date_range
    if date_range is None:
        raise ValueError("an incremental run needs a date_range job")
    where = store.describe()
    before, skip = await _resume_point(job, store)
    if skip >= job.requested:
        if on_plan is not None:
            on_plan(dataclasses.replace(job, requested=0, plan=lambda: iter(())))
        log.info("nothing new: the watermark %s covers the range", before, extra={"state": where})
        return _nothing_new(job, _info(where, before, before, first=None))
    todo = skip_items(job, skip) if skip else job
    if on_plan is not None:
        on_plan(todo)
    first = next(todo.items()).params[date_range.param]
    tracker = PrefixTracker(todo.index_offset, date_range.param)
    outcome = await run(todo, tracker.on_item)
    after = before
    if tracker.last_value is not None:
        stored, _ = await advance(
            store, tracker.last_value, fmt=date_range.format, request_id=job.request_id
        )
        after = stored.watermark
    info = _info(where, before, after, first=str(first))
    return dataclasses.replace(outcome, result={**outcome.result, "incremental": info})


async def _resume_point(job: Job, store: StateStore) -> tuple[str | None, int]:
    """The watermark read, and how many leading items of the range it covers."""
    date_range = job.date_range
    assert date_range is not None, "checked by the caller"
    current = await store.read()
    if current is None:
        return None, 0
    before = current.state.watermark
    check_watermark(before, date_range.format, store.describe())
    skip = covered_count(
        date_range.start,
        date_range.end,
        step=date_range.step,
        fmt=date_range.format,
        watermark=before,
    )
    return before, skip


def _info(
    where: str, before: str | None, after: str | None, *, first: str | None
) -> dict[str, Any]:
    return {
        "state": where,
        "watermark_before": before,
        "watermark_after": after,
        "first_date": first,
        "nothing_new": first is None,
    }


def _nothing_new(job: Job, info: dict[str, Any]) -> RunOutcome:
    tally = Tally(requested=0)
    try:
        result = tally.to_result(
            request_id=job.request_id,
            source_id=job.api.source_id,
            duration_ms=0,
            manifest_key=None,
        )
    finally:
        tally.close()
    return RunOutcome({**result, "incremental": info}, None, [])
