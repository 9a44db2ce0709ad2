"""Incremental runs (CONTRACT §15): each step fetched until it lands, then never again.

``run_incremental`` wraps one run of a ``date_range`` job without touching the
engine. It reads the state (the watermark and the steps after it that landed),
plans the run's window, runs the steps of the window that have not landed through
the ``run`` callable it is given (the plain path's run, plus an ``on_item``
callback and a deadline), and records what landed.

The window starts at the step after the watermark, even when the range's
``start`` is later (catch-up: a week without runs, or an edited event), and
covers at most ``options.max_catch_up`` steps, oldest first; without a state it
starts at ``start``. The watermark then moves over the steps that landed, never
across one that did not; steps that landed after a gap are listed in the state,
so the next run fetches only what is missing.

Deadline: the state is read and written under the run's clock, with the run's S3
retry policy bounded by it. The engine gets a deadline half a margin earlier than
the run's own, so the advance has that half to be written; when it cannot be,
the result says so (``state_error``) and the state keeps what it had, so the next
run fetches those steps again (onto the same keys).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

from ingest_core.config import Options
from ingest_core.engine import ItemCallback, RunOutcome
from ingest_core.errors import StateError
from ingest_core.events import Job, PlannedItem
from ingest_core.planner import Grid, grid, parse_value
from ingest_core.ranges import DateRange
from ingest_core.redact import clip
from ingest_core.results import ItemResult, Tally
from ingest_core.s3retry import S3Retry, write_scope
from ingest_core.state import (
    LocalStateStore,
    Progress,
    S3StateStore,
    StateStore,
    Watermark,
    advance,
    check_state,
    default_state_key,
    state_object_key,
)
from ingest_core.writers import LocalDirWriter, ObjectWriter, S3Writer

log = logging.getLogger(__name__)

# The run's engine gets its deadline this share of the margin early: the advance's time.
ADVANCE_SHARE_OF_MARGIN = 0.5
RunFn = Callable[[Job, ItemCallback, float | None], Awaitable[RunOutcome]]
T = TypeVar("T")


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


# ------------------------------------------------------------------ the window


@dataclass(frozen=True, slots=True)
class Window:
    """The steps one run covers: grid indexes ``first..last``; ``landed`` ones are skipped."""

    grid: Grid
    anchor: str | None  # the watermark the window follows (None: it starts the range)
    first: int
    last: int  # inclusive; below first when there is nothing to cover
    landed: frozenset[str]

    @property
    def size(self) -> int:
        """How many steps the window covers, landed ones included."""
        return max(0, self.last - self.first + 1)

    @property
    def beyond(self) -> int:
        """Steps of the range after the window not listed as landed: the next runs' share."""
        after = max(self.last, self.first - 1)
        if after >= self.grid.count - 1:
            return 0
        low, high = self.grid.text(after), self.grid.text(self.grid.count - 1)
        listed = sum(1 for value in self.landed if self._between(value, low, high))
        return self.grid.count - 1 - after - listed

    def _between(self, value: str, low: str, high: str) -> bool:
        fmt = self.grid.fmt
        try:
            return parse_value(low, fmt) < parse_value(value, fmt) <= parse_value(high, fmt)
        except ValueError:
            return False  # checked when read; a value of another format is not a step

    def steps(self) -> Iterator[str]:
        """Every step of the window, in order, as the format renders it."""
        return (self.grid.text(k) for k in range(self.first, self.last + 1))


def plan_window(date_range: DateRange, state: Watermark | None, max_catch_up: int) -> Window:
    """The window of a run of ``date_range`` given the state read (CONTRACT §15)."""
    steps = grid(date_range.start, date_range.end, step=date_range.step, fmt=date_range.format)
    if state is None or state.watermark is None:
        anchor, first = _before_start(steps), 0
    else:
        anchor, first = state.watermark, steps.first_after(state.watermark)
    last = min(steps.count - 1, first + max_catch_up - 1)
    landed = frozenset(state.landed) if state is not None else frozenset()
    return Window(steps, anchor, first, last, landed)


def _before_start(steps: Grid) -> str | None:
    """The step before ``start``: a first run's anchor, so a failed first step holds it."""
    try:
        return steps.text(-1)
    except (OverflowError, ValueError):
        return None  # a range starting at the first representable date


def window_job(job: Job, window: Window) -> Job:
    """``job`` narrowed to the window's steps that have not landed; indexes count the window."""
    date_range = job.date_range
    assert date_range is not None, "an incremental job has a range"
    todo = sum(1 for value in window.steps() if value not in window.landed)

    def plan() -> Iterator[PlannedItem]:
        for position, value in enumerate(window.steps()):
            if value not in window.landed:
                yield PlannedItem(position, _params(date_range, value))

    return Job(
        api=job.api,
        options=job.options,
        request_id=job.request_id,
        requested=todo,
        plan=plan,
        date_range=date_range,
    )


def _params(date_range: DateRange, value: str) -> dict[str, Any]:
    # Items must not share list objects: one consumer editing its params would edit all.
    extra = date_range.extra_params.items()
    return {
        **{name: list(v) if isinstance(v, list) else v for name, v in extra},
        date_range.param: value,
    }


@dataclass(slots=True)
class LandedSteps:
    """The steps of this run that landed (an engine ``on_item`` callback)."""

    param: str
    values: set[str] = field(default_factory=set)

    def on_item(self, result: ItemResult) -> None:
        """Record one item's outcome."""
        if result.succeeded:
            self.values.add(str(result.params[self.param]))


# ------------------------------------------------------------------- the clock


@dataclass(frozen=True, slots=True)
class StateClock:
    """When the state must be read and written by, and the engine's own deadline."""

    run_deadline: float | None  # handed to the engine: half a margin before the run's
    read_by: float | None  # the engine stops starting items then: a later read is useless
    write_by: float | None  # the engine's own "finish by" bound (a deadline's last eighth)
    max_attempts: int

    @classmethod
    def for_run(cls, deadline: float | None, options: Options) -> StateClock:
        """The bounds of a run whose deadline is ``deadline`` (``time.monotonic``)."""
        if deadline is None:
            return cls(None, None, None, options.s3_max_attempts)
        margin = options.deadline_margin_s
        run_deadline = deadline - margin * ADVANCE_SHARE_OF_MARGIN
        return cls(
            run_deadline, run_deadline - margin, deadline - margin / 8, options.s3_max_attempts
        )

    async def within(self, until: float | None, call: Callable[[], Awaitable[T]]) -> T:
        """``call()`` with S3 retries that start no attempt after ``until``, cut there.

        Raises:
            TimeoutError: ``until`` passed first.
        """
        left = None if until is None else max(0.0, until - time.monotonic())
        retry = S3Retry(max_attempts=self.max_attempts, deadline=until or float("inf"))
        with write_scope(retry):
            try:
                async with asyncio.timeout(left):
                    return await call()
            except StateError as exc:
                stats = retry.stats
                if stats.retries and stats.most_attempts < self.max_attempts:
                    # Retried, then stopped short of s3_max_attempts: the clock stopped it.
                    raise StateError(f"{exc} (S3 retries stop before the deadline)") from exc
                raise


# --------------------------------------------------------------------- the run


async def run_incremental(
    job: Job,
    store: StateStore,
    run: RunFn,
    *,
    deadline: float | None = None,
    on_plan: Callable[[Job], None] | None = None,
) -> RunOutcome:
    """Run the steps of ``job``'s range that have not landed, then record what did.

    ``on_plan`` is told the job that will actually run (a progress display's
    total) before it starts. The result gains an ``incremental`` block: the state
    object, the watermark before and after, the first date fetched, how many
    steps of the window had landed already, how many are still behind, and
    ``state_error`` when the state could not be written.

    Raises:
        StateError: the state object is unreadable or malformed, or could not be
            read before the deadline (before any request).
    """
    date_range = job.date_range
    if date_range is None:
        raise ValueError("an incremental run needs a date_range job")
    clock = StateClock.for_run(deadline, job.options)
    state = await _read(store, clock, date_range.format)
    window = plan_window(date_range, state, job.options.max_catch_up)
    todo = window_job(job, window)
    if on_plan is not None:
        on_plan(todo)
    landed = LandedSteps(date_range.param)
    if todo.requested:
        outcome = await run(todo, landed.on_item, clock.run_deadline)
    else:
        log.info("nothing new", extra={"state": store.describe()})
        outcome = _nothing_new(job)
    after, error = state, None
    if window.size:
        after, error = await _advance(store, clock, window, landed, job)
    info = {
        "state": store.describe(),
        "watermark_before": state.watermark if state is not None else None,
        "watermark_after": after.watermark if after is not None else None,
        "first_date": next((str(i.params[date_range.param]) for i in todo.items()), None),
        "nothing_new": todo.requested == 0,
        "already_landed": window.size - todo.requested,
        "steps_behind": _behind(window, landed),
        "state_error": error,
    }
    return RunOutcome(
        {**outcome.result, "incremental": info}, outcome.manifest_uri, outcome.latencies_ms
    )


async def _read(store: StateStore, clock: StateClock, fmt: str) -> Watermark | None:
    try:
        current = await clock.within(clock.read_by, store.read)
    except TimeoutError:
        raise StateError(
            f"could not read state object {store.describe()} before the deadline:"
            " nothing was fetched"
        ) from None
    if current is None:
        return None
    check_state(current.state, fmt, store.describe())
    return current.state


async def _advance(
    store: StateStore, clock: StateClock, window: Window, landed: LandedSteps, job: Job
) -> tuple[Watermark | None, str | None]:
    """The state after recording ``landed``, and why it could not be written (or None)."""
    date_range = job.date_range
    assert date_range is not None
    progress = Progress(window.anchor, window.steps, landed.values)

    async def record() -> tuple[Watermark | None, bool]:
        return await advance(store, progress, fmt=date_range.format, request_id=job.request_id)

    try:
        stored, _ = await clock.within(clock.write_by, record)
    except TimeoutError:
        error = "not written: S3 did not answer before the deadline"
    except StateError as exc:
        error = f"not written: {exc}"
    else:
        return stored, None
    # The state keeps what it had: the next run fetches these steps again, onto their keys.
    log.error("could not advance the state", extra={"state": store.describe(), "error": error})
    return None, clip(error, 300)


def _behind(window: Window, landed: LandedSteps) -> int:
    """Steps of the range, up to ``end``, that have not landed after this run."""
    done = window.landed | landed.values
    return sum(1 for value in window.steps() if value not in done) + window.beyond


def _nothing_new(job: Job) -> RunOutcome:
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
    return RunOutcome(result, None, [])
