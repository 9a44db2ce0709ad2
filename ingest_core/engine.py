"""The fan-out: every item of a job fetched and stored by ``concurrency`` workers.

::

    item ──▶ chain (chain.py: one page, or pages in sequence / in parallel)
               └─▶ page ──▶ attempt loop (attempt.py: retries, 429/503, timeout)
                              └─▶ sink (sink.py: an object a page, or a pack)

``run_job`` never raises because items failed: each item ends as an
``ItemResult`` (written, skipped, failed with a kind, or not attempted), reported
exactly once by its sink from a ``finally``, so the counts always add up. Its I/O
seams (the API session and the writer) are parameters, so tests and benchmarks
swap them without patching.

Deadline (``clock.RunClock``): no item, page, retry or send starts after
``deadline - margin``; work still in flight at ``deadline - margin/2`` is
cancelled and reported as not attempted (kind ``deadline``), or as
``write_unknown`` when S3 may have applied the PUT or Complete it was cut in.
After that, the open pack object's completion, the aborts and the manifest
are bounded by the same clock, so the run returns before ``deadline - margin/8``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import aiohttp
from yarl import URL

from ingest_core.attempt import Attempts
from ingest_core.auth import AuthProvider, make_auth
from ingest_core.chain import SINGLE_PAGE, Page, Sequencer, run_chain
from ingest_core.clock import RunClock
from ingest_core.errors import WriteError
from ingest_core.events import Job, PlannedItem
from ingest_core.fetcher import CREDENTIAL_HEADERS, RequestShape, make_http_session
from ingest_core.hints import page_keep
from ingest_core.limits import S3_ORIGIN, ByteBudget, OriginLimits, TokenBucket
from ingest_core.manifest import manifest_key_for, store_manifest
from ingest_core.pagination import PageRequest, PageView, make_chain
from ingest_core.redact import register_secret
from ingest_core.results import ItemResult, ItemStatus, Tally
from ingest_core.s3retry import S3Retry, WriteStats, write_scope
from ingest_core.secrets import resolve_secret, resolve_secret_params
from ingest_core.settings import Settings
from ingest_core.settle import ItemState, not_attempted
from ingest_core.sink import ItemSink, ObjectSink, Sink, pack_sink
from ingest_core.uploads import MAX_REPORTED, UploadTracker, watching
from ingest_core.writers import ObjectWriter

log = logging.getLogger(__name__)

ItemCallback = Callable[[ItemResult], None]
PageCallback = Callable[[PlannedItem, PageView], None]


class _Run:
    """Everything one run shares between its workers."""

    def __init__(
        self,
        job: Job,
        *,
        http: aiohttp.ClientSession,
        writer: ObjectWriter,
        settings: Settings,
        clock: RunClock,
        shape: RequestShape,
        limits: OriginLimits,
        on_item: ItemCallback | None,
        on_page: PageCallback | None,
    ) -> None:
        self.job, self.settings, self.clock, self.limits = job, settings, clock, limits
        self.shape, self.on_item, self.on_page = shape, on_item, on_page
        self.tally = Tally(requested=job.requested)
        self.budget = ByteBudget(job.options.memory_budget)
        self.template = job.api.template  # parsed (and checked) once per run, not per key
        # Every page of the endpoint shares one limit: redirects stay inside the attempt.
        self.api_limit = self.limits.for_origin(str(URL(job.api.endpoint).origin()))
        self.s3_limit = self.limits.for_origin(S3_ORIGIN)
        self.uploads = UploadTracker(until=self.clock.finish_by)
        self.writer = self.uploads.wrap(writer)
        # One slot per request in flight, for runs whose items are chains of pages.
        self.slots = asyncio.Semaphore(job.options.concurrency)
        self.keep = page_keep(job.api.pagination)  # what the paginator, or the warnings, read
        self.attempts = Attempts(
            http=http,
            policy=settings.policy,
            clock=self.clock,
            limit=self.api_limit,
            bucket=TokenBucket(job.options.rate_limit_per_s),
            max_attempts=job.options.max_attempts,
            attempt_timeout_s=job.options.attempt_timeout_s,
            max_retry_after_s=job.options.max_retry_after_s,
        )
        self.sink: Sink = ObjectSink.for_job(job, self.writer, self.budget, self.record, self.keep)

    def s3_retry(self, deadline: float | None = None) -> S3Retry:
        """An item's S3 retries: the run's attempts, clock and adaptive S3 limit."""
        return S3Retry(
            max_attempts=self.job.options.s3_max_attempts,
            deadline=self.clock.hard_stop if deadline is None else deadline,
            limit=self.s3_limit,
        )

    def sequencer(self) -> Sequencer:
        """A fresh chain for one item: its pagination, or a single page."""
        if (pagination := self.job.api.pagination) is None:
            return SINGLE_PAGE
        return make_chain(pagination, self.job.api.endpoint, self.settings.policy)

    def record(self, result: ItemResult) -> None:
        # Scrubbed once here, so the tally and every on_item consumer (the CLI,
        # the re-drive file) get the same redacted copy.
        result = result.scrubbed()
        self.tally.add(result)
        if self.on_item is not None:
            self.on_item(result)


def _shape(
    job: Job,
    headers: Mapping[str, str],
    secret_params: Mapping[str, str],
    auth: AuthProvider | None,
) -> RequestShape:
    """How every request of the run is built; its secrets registered for scrubbing."""
    api = job.api
    auth_names = frozenset({"Authorization"} if auth is not None else ())
    shape = RequestShape(
        endpoint=api.endpoint,
        headers=headers,
        secret_header_names=frozenset(api.secret_headers) | auth_names,
        method=api.method,
        params_in=api.params_in,
        secret_params=secret_params,
        auth=auth,
    )
    # Callers may pass headers they resolved themselves: their secrets are scrubbed too.
    secret = {name.lower() for name in shape.secret_header_names} | CREDENTIAL_HEADERS
    for value in [v for name, v in headers.items() if name.lower() in secret]:
        register_secret(value)
    for value in secret_params.values():
        register_secret(value)
    return shape


@dataclasses.dataclass(frozen=True, slots=True)
class RunOutcome:
    """The result dict plus what the CLI needs beyond it."""

    result: dict[str, Any]
    manifest_uri: str | None
    latencies_ms: list[int]


def limits_for(job: Job) -> OriginLimits:
    """The adaptive limits a run of ``job`` uses: one per origin, the API's and S3's."""
    options = job.options
    return OriginLimits(
        options.concurrency, enabled=options.adaptive, max_pause_s=options.max_retry_after_s
    )


async def run_job(
    job: Job,
    *,
    writer: ObjectWriter,
    http: aiohttp.ClientSession | None = None,
    settings: Settings | None = None,
    headers: Mapping[str, str] | None = None,
    deadline: float | None = None,
    on_item: ItemCallback | None = None,
    write_manifest: bool = True,
    stop: asyncio.Event | None = None,
    manifest_prefix: str = "",
    limits: OriginLimits | None = None,
    secret_params: Mapping[str, str] | None = None,
    auth: AuthProvider | None = None,
    clock: RunClock | None = None,
    on_page: PageCallback | None = None,
) -> RunOutcome:
    """Fetch and store every item of ``job``.

    Args:
        job: the validated job.
        writer: where bodies go (S3 or a local folder).
        http: the API session; by default one sized by ``concurrency`` and guarded.
        settings: the environment's settings; read from it by default.
        headers: request headers with secret references already resolved.
        deadline: ``time.monotonic()`` value by which the run must have returned.
        on_item: called with every item's result (progress bars, metrics).
        write_manifest: store the manifest beside the objects.
        stop: set it to stop early (Ctrl-C): nothing new starts, uploads in
            flight are aborted, and those items are reported as not attempted.
        manifest_prefix: put before the manifest key (the CLI's ``--dest`` prefix).
        limits: the adaptive per-origin limits (CONTRACT §14); pass one to watch
            them (the CLI's progress line); by default one made from the options.
        secret_params: ``api_config.secret_params`` already resolved; resolved
            here (off the event loop) when None.
        auth: the auth provider; by default the one ``api_config.auth`` describes.
        clock: the run's clock, when the caller bounds its own I/O by it (an
            incremental run's state); by default one made from ``deadline``.
        on_page: called with each page's item and ``PageView`` once stored (the
            CLI inspects page 0 for next-link warnings); must not raise.
    """
    settings = settings or Settings.from_env()
    started = time.monotonic()
    own_http = http is None
    if http is None:
        http = make_http_session(
            concurrency=job.options.concurrency,
            policy=settings.policy,
            connect_timeout_s=job.options.connect_timeout_s,
            read_timeout_s=job.options.read_timeout_s,
        )
    try:
        auth = auth or make_auth(
            job.api.auth, http=http, policy=settings.policy, resolve=resolve_secret
        )
        params = await _secret_params(job, secret_params)
        shape = _shape(job, dict(job.api.headers if headers is None else headers), params, auth)
        run = _Run(
            job,
            http=http,
            writer=writer,
            settings=settings,
            clock=clock or RunClock.for_deadline(deadline, job.options.deadline_margin_s),
            shape=shape,
            limits=limits or limits_for(job),
            on_item=on_item,
            on_page=on_page,
        )
    except BaseException:
        if own_http:
            await http.close()
        raise
    try:
        if job.options.pack is not None:  # items go to a packer (CONTRACT §13)
            with write_scope(run.s3_retry()):  # its task inherits the run's S3 retries
                run.sink = await pack_sink(job, run.writer, run.budget, run.record, run.keep)
        span = await _fan_out(run, stop)
        await run.sink.close(run.clock)
        return await _finish(run, span, started, write_manifest, manifest_prefix)
    finally:
        await run.sink.abort("cancelled", run.clock)  # a no-op once closed
        run.tally.close()
        if own_http:
            await http.close()


async def _secret_params(job: Job, given: Mapping[str, str] | None) -> Mapping[str, str]:
    if given is not None or not job.api.secret_params:
        return dict(given or {})
    return await asyncio.to_thread(resolve_secret_params, job.api.secret_params)


async def _fan_out(run: _Run, stop: asyncio.Event | None) -> tuple[int | None, int | None]:
    items = _tracking(run.job.items())
    count = max(1, min(run.job.options.concurrency, run.job.requested))
    workers = [asyncio.create_task(_worker(run, items)) for _ in range(count)]
    # Wake on whichever comes first: every worker done, a stop request, the hard stop.
    all_done = asyncio.create_task(asyncio.wait(workers))
    waited: list[asyncio.Task[Any]] = [all_done]
    if stop is not None:
        waited.append(asyncio.create_task(stop.wait()))
    try:
        timeout = run.clock.until(run.clock.hard_stop)
        await asyncio.wait(waited, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        if stop is not None and stop.is_set():
            run.clock.reason = "interrupted"
        if not all(worker.done() for worker in workers):
            _stop_now(run, workers)
        await asyncio.gather(*workers)
        _drain(run, items)
    except asyncio.CancelledError:
        # Cancelled from outside: abort the uploads in flight before letting go, or
        # orphaned workers would outlive the sessions and clients they write through.
        run.clock.reason = "cancelled"
        _stop_now(run, workers)
        await asyncio.wait(workers)
        await run.uploads.settle(run.clock.finish_by)
        raise
    finally:
        for task in waited:
            task.cancel()
    return items.first, items.last


def _stop_now(run: _Run, workers: list[asyncio.Task[None]]) -> None:
    run.clock.stopping = True
    for worker in workers:
        worker.cancel()


def _drain(run: _Run, items: Iterator[PlannedItem]) -> None:
    """Report every item no worker took as not attempted."""
    for item in items:
        run.record(_not_attempted(run, item))


class _tracking(Iterator[PlannedItem]):
    """Shares one lazy plan between the workers and remembers the index span."""

    def __init__(self, items: Iterator[PlannedItem]) -> None:
        self._items = items
        self.first: int | None = None
        self.last: int | None = None

    def __next__(self) -> PlannedItem:
        item = next(self._items)
        self.first = item.index if self.first is None else min(self.first, item.index)
        self.last = item.index if self.last is None else max(self.last, item.index)
        return item


async def _worker(run: _Run, items: Iterator[PlannedItem]) -> None:
    """Take items from the shared plan until it is empty or the run is stopped.

    Each item runs in the worker's own task (no task per item: that was a
    measurable share of the CPU per item). Stopping cancels the workers; the
    item in flight aborts its upload and is reported as not attempted.
    """
    for item in items:
        if not run.clock.may_start():
            run.record(_not_attempted(run, item))
        elif not await _item(run, item):
            return  # stopped: the rest of the plan is drained by _fan_out


async def _item(run: _Run, item: PlannedItem) -> bool:
    """One item, reported exactly once by its sink, from the ``finally``.

    Returns False when a stop cut it (the worker then ends).
    """
    sink = run.sink.open(item)
    state = ItemState(item, _key(run, item), paginated=run.job.api.pagination is not None)
    result: ItemResult | None = None
    try:
        with watching(state.writes), write_scope(run.s3_retry()) as s3:
            result = await _settled(run, item, sink, state, s3)
        return True
    except asyncio.CancelledError:
        if not run.clock.stopping:
            raise
        return False
    except Exception as exc:  # a bug must not lose the item: report it
        result = state.failed(exc, WriteStats())
        return True
    finally:
        sink.finish(result or state.cut(run.clock.reason))


async def _settled(
    run: _Run, item: PlannedItem, sink: ItemSink, state: ItemState, s3: WriteStats
) -> ItemResult:
    if run.job.options.skip_existing:
        try:
            if await run.writer.exists(state.key):
                return ItemResult(item.index, item.params, state.key, ItemStatus.SKIPPED)
        except WriteError as exc:
            return state.failed(exc, s3)
    fetch = functools.partial(_fetch_page, run, item, sink, state)
    slots = run.slots if run.job.api.pagination is not None else None
    await run_chain(run.sequencer(), fetch, slots, state.out)
    return state.settled(s3, run.clock.reason)


async def _fetch_page(
    run: _Run, item: PlannedItem, sink: ItemSink, state: ItemState, number: int, page: PageRequest
) -> Page:
    """One page through the attempt loop into the item's sink."""
    key = "" if not sink.page_objects else state.key if number == 0 else _key(run, item, number)
    state.tried[number] = key
    request = run.shape.request(item.params, page.params, page.url)

    async def store(response: aiohttp.ClientResponse) -> tuple[PageView, Any]:
        stored = await sink.page(number, key, response)
        view = PageView(number, response.url, response.headers, stored.value, stored.records)
        return view, stored

    done = await run.attempts.page(request, store, f"page {number}")
    view, stored = done.value
    if run.on_page is not None:
        run.on_page(item, view)
    return Page(number, key, view, stored, done.attempts, done.throttled)


def _key(run: _Run, item: PlannedItem, page: int = 0) -> str:
    return run.template.render(
        source_id=run.job.api.source_id,
        request_id=run.job.request_id,
        index=item.index,
        params=item.params,
        suffix=".gz" if run.job.options.compress else "",
        page=page,
    )


def _not_attempted(run: _Run, item: PlannedItem) -> ItemResult:
    return not_attempted(item, _key(run, item), f"not started: {run.clock.reason}")


async def _finish(
    run: _Run,
    span: tuple[int | None, int | None],
    started: float,
    write_manifest: bool,
    manifest_prefix: str,
) -> RunOutcome:
    # Both share what is left before finish_by: aborts need no manifest, nor it them.
    left_open, (stored_key, manifest_error) = await asyncio.gather(
        run.uploads.settle(run.clock.finish_by),
        _write_manifest(run, span, write_manifest, manifest_prefix),
    )
    result = run.tally.to_result(
        request_id=run.job.request_id,
        source_id=run.job.api.source_id,
        duration_ms=int((time.monotonic() - started) * 1000),
        manifest_key=stored_key,
    )
    result["manifest_error"] = manifest_error
    result["adaptive"] = run.limits.snapshot()
    result["uploads_left_open"] = [upload.to_dict() for upload in left_open[:MAX_REPORTED]]
    result["uploads_left_open_count"] = len(left_open)
    manifest_uri = run.writer.describe(stored_key) if stored_key else None
    return RunOutcome(result, manifest_uri, list(run.tally.latencies_ms))


async def _write_manifest(
    run: _Run, span: tuple[int | None, int | None], write_manifest: bool, manifest_prefix: str
) -> tuple[str | None, str | None]:
    """Store the manifest within the time left; (its key, None) or (None, why not)."""
    if not write_manifest:
        return None, None
    key = manifest_key_for(run.job, *span, prefix=manifest_prefix)
    # S3 retries within the same time: a retry that cannot finish is not started.
    end = float("inf") if run.clock.finish_by is None else run.clock.finish_by
    path = run.tally.manifest_path()
    stored, error, stats = await store_manifest(
        run.writer, key, path, clock=run.clock, retry=run.s3_retry(deadline=end)
    )
    run.tally.count_writes(stats.retries, stats.throttled)
    return stored, error
