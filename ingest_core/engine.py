"""The fan-out: every item of a job fetched and written by ``concurrency`` workers.

``run_job`` never raises because items failed: each item ends as an
``ItemResult`` (written, skipped, failed with a kind, or not attempted) and the
result's counts always add up. Its I/O seams (the API session and the writer)
are parameters, so tests and benchmarks swap them without patching.

Deadline: no item starts (nor retries, nor sends after waiting for a rate-limit
token) after ``deadline - deadline_margin_s``; items still in flight at
``deadline - deadline_margin_s / 2`` (the hard stop) are cancelled and reported as
not attempted with kind ``deadline``, or as ``write_unknown`` when S3 may have
applied the PUT or Complete they were cut in. From the hard stop, the aborts of
their uploads, the open pack object's completion (until ``deadline -
deadline_margin_s / 4``) and the manifest PUT have until ``deadline -
deadline_margin_s / 8``: what has not finished by then is reported (an upload
possibly left open, a manifest not written), leaving the rest to return.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import aiohttp
from yarl import URL

from ingest_core.auth import AuthProvider, make_auth
from ingest_core.chain import ChainOutcome, Page, PageFailed, run_chain
from ingest_core.errors import (
    DeadlineExceeded,
    FailureKind,
    FetchError,
    FetchTimeout,
    HTTPStatusError,
    WriteError,
)
from ingest_core.events import Job, PlannedItem
from ingest_core.fetcher import (
    CREDENTIAL_HEADERS,
    FetchRequest,
    RequestShape,
    iter_body,
    make_http_session,
    open_response,
    safe_content_type,
)
from ingest_core.keys import KeyTemplate, PackKeys, manifest_key, params_hash
from ingest_core.limits import (
    S3_ORIGIN,
    AdaptiveLimit,
    ByteBudget,
    OriginLimits,
    Outcome,
    Slot,
    TokenBucket,
)
from ingest_core.packing import Lines, Packer, Staged, first_index, make_unit
from ingest_core.pagination import PageRequest, PageView, make_chain, project
from ingest_core.records import NOT_ONE_VALUE
from ingest_core.redact import register_secret
from ingest_core.results import ItemResult, ItemStatus, Tally
from ingest_core.retry import backoff_s
from ingest_core.s3retry import S3Retry, WriteStats, write_scope
from ingest_core.secrets import resolve_secret, resolve_secret_params
from ingest_core.settings import Settings
from ingest_core.transfer import BodyInfo, Stored, transfer
from ingest_core.uploads import MAX_REPORTED, ItemWrites, OpenUpload, UploadTracker, watching
from ingest_core.writers import ObjectMeta, ObjectWriter

log = logging.getLogger(__name__)

READ_CHUNK = 64 * 1024
MANIFEST_CONTENT_TYPE = "application/x-ndjson"
THROTTLE_STATUSES = frozenset({429, 503})  # the API asking us to slow down (CONTRACT §14)
ItemCallback = Callable[[ItemResult], None]
T = TypeVar("T")


@dataclass(slots=True)
class _Clock:
    """When to stop starting items and when to cancel the ones in flight."""

    stop_starting: float
    hard_stop: float
    finish_by: float | None  # aborts and the manifest end by then; None = no deadline
    stopping: bool = False
    reason: str = "cancelled at the deadline"

    @classmethod
    def for_deadline(cls, deadline: float | None, margin_s: float) -> _Clock:
        if deadline is None:
            return cls(float("inf"), float("inf"), None)
        return cls(deadline - margin_s, deadline - margin_s / 2, deadline - margin_s / 8)

    def left(self) -> float | None:
        """Seconds until ``finish_by``, or None without a deadline."""
        return None if self.finish_by is None else max(0.0, self.finish_by - time.monotonic())

    def may_start(self) -> bool:
        return not self.stopping and time.monotonic() < self.stop_starting


@dataclass(slots=True)
class _Run:
    """Everything one run shares between its workers."""

    job: Job
    http: aiohttp.ClientSession
    writer: ObjectWriter
    settings: Settings
    headers: Mapping[str, str]
    clock: _Clock
    tally: Tally
    on_item: ItemCallback | None
    limits: OriginLimits
    packer: Packer | None = None
    secret_params: Mapping[str, str] = field(default_factory=dict)
    auth: AuthProvider | None = None
    budget: ByteBudget = field(init=False)
    bucket: TokenBucket = field(init=False)
    uploads: UploadTracker = field(init=False)
    template: KeyTemplate = field(init=False)
    shape: RequestShape = field(init=False)
    # One slot per request in flight, for runs whose items are chains of pages.
    slots: asyncio.Semaphore = field(init=False)
    keep_of_page: Callable[[Any], Any] = field(init=False)
    api_limit: AdaptiveLimit = field(init=False)
    s3_limit: AdaptiveLimit = field(init=False)

    def __post_init__(self) -> None:
        self.budget = ByteBudget(self.job.options.memory_budget)
        self.bucket = TokenBucket(self.job.options.rate_limit_per_s)
        # Every page of the endpoint shares one limit: redirects stay inside the attempt.
        self.api_limit = self.limits.for_origin(str(URL(self.job.api.endpoint).origin()))
        self.s3_limit = self.limits.for_origin(S3_ORIGIN)
        self.uploads = UploadTracker(until=self.clock.finish_by)
        self.writer = self.uploads.wrap(self.writer)
        # Derived once per run, not per item or attempt.
        self.template = self.job.api.template
        api = self.job.api
        auth_names = frozenset({"Authorization"} if self.auth is not None else ())
        self.shape = RequestShape(
            endpoint=api.endpoint,
            headers=self.headers,
            secret_header_names=frozenset(api.secret_headers) | auth_names,
            method=api.method,
            params_in=api.params_in,
            secret_params=self.secret_params,
            auth=self.auth,
        )
        self.slots = asyncio.Semaphore(self.job.options.concurrency)
        paths = api.pagination.paths if api.pagination is not None else ()
        self.keep_of_page = functools.partial(project, paths=paths)
        _register_header_secrets(self.headers, self.shape.secret_header_names)
        for value in self.secret_params.values():
            register_secret(value)

    def s3_retry(self, deadline: float | None = None) -> S3Retry:
        """An item's S3 retries: the run's attempts, clock and adaptive S3 limit."""
        return S3Retry(
            max_attempts=self.job.options.s3_max_attempts,
            deadline=self.clock.hard_stop if deadline is None else deadline,
            limit=self.s3_limit,
        )

    def record(self, result: ItemResult) -> None:
        # Scrubbed once here, so the tally and every on_item consumer (the CLI,
        # the re-drive file) get the same redacted copy.
        result = result.scrubbed()
        self.tally.add(result)
        if self.on_item is not None:
            self.on_item(result)


def _register_header_secrets(headers: Mapping[str, str], secret_names: frozenset[str]) -> None:
    """Callers may pass headers they resolved themselves: their secrets are scrubbed too."""
    secret = {name.lower() for name in secret_names} | CREDENTIAL_HEADERS
    for name, value in headers.items():
        if name.lower() in secret:
            register_secret(value)


@dataclass(frozen=True, slots=True)
class RunOutcome:
    """The result dict plus what the CLI needs beyond it."""

    result: dict[str, Any]
    manifest_uri: str | None
    latencies_ms: list[int]


def limits_for(job: Job) -> OriginLimits:
    """The adaptive limits a run of ``job`` uses: one per origin, the API's and S3's."""
    return OriginLimits(job.options.concurrency, enabled=job.options.adaptive)


def manifest_key_for(
    job: Job, first_index: int | None, last_index: int | None, prefix: str = ""
) -> str:
    """``{source_id}/_manifests/{request_id}.json``; Map batches add their index range.

    Every batch of one Distributed Map execution shares the execution name as
    its request id, so without the range their manifests would overwrite each other.
    """
    span = None
    if job.is_map_batch and first_index is not None and last_index is not None:
        span = (first_index, last_index)
    return manifest_key(job.api.source_id, job.request_id, span, prefix)


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
        run = _Run(
            job=job,
            http=http,
            writer=writer,
            settings=settings,
            headers=dict(headers if headers is not None else job.api.headers),
            clock=_Clock.for_deadline(deadline, job.options.deadline_margin_s),
            tally=Tally(requested=job.requested),
            on_item=on_item,
            limits=limits or limits_for(job),
            secret_params=await _secret_params(job, secret_params),
            auth=auth
            or make_auth(job.api.auth, http=http, policy=settings.policy, resolve=resolve_secret),
        )
    except BaseException:
        if own_http:
            await http.close()
        raise
    try:
        run.packer = await _start_packer(run)
        span = await _fan_out(run, stop)
        if run.packer is not None:
            await run.packer.close(_pack_close_timeout(run, deadline))
        return await _finish(run, span, started, write_manifest, manifest_prefix)
    finally:
        if run.packer is not None:
            await run.packer.abort("cancelled")  # a no-op once closed
        run.tally.close()
        if own_http:
            await http.close()


def _auth_for(job: Job, http: aiohttp.ClientSession, settings: Settings) -> AuthProvider | None:
    return make_auth(job.api.auth, http=http, policy=settings.policy, resolve=resolve_secret)


async def _secret_params(job: Job, given: Mapping[str, str] | None) -> Mapping[str, str]:
    if given is not None or not job.api.secret_params:
        return dict(given or {})
    return await asyncio.to_thread(resolve_secret_params, job.api.secret_params)


async def _start_packer(run: _Run) -> Packer | None:
    """With ``options.pack``, items go to a packer instead of an object each (CONTRACT §13)."""
    pack = run.job.options.pack
    if pack is None:
        return None
    keys = PackKeys(
        pack.template,
        run.job.api.source_id,
        run.job.request_id,
        first_index(run.job.items(), ascending=not run.job.is_map_batch),
    )
    packer = Packer(
        writer=run.writer,
        options=run.job.options,
        keys=keys,
        unit=make_unit(
            pack, records_path=run.job.api.records_path, expect_json=run.job.options.expect_json
        ),
        budget=run.budget,
        on_result=run.record,
    )
    # The packer's task inherits the run's S3 retry settings (its attempts are its own).
    with write_scope(run.s3_retry()):
        await packer.start()
    return packer


def _pack_close_timeout(run: _Run, deadline: float | None) -> float | None:
    """Until a quarter of the margin before the deadline: the manifest still needs time."""
    if deadline is None:
        return None
    margin = run.job.options.deadline_margin_s
    return max(0.0, deadline - margin / 4 - time.monotonic())


async def _fan_out(run: _Run, stop: asyncio.Event | None) -> tuple[int | None, int | None]:
    items = _tracking(run.job.items())
    count = max(1, min(run.job.options.concurrency, run.job.requested))
    workers = [asyncio.create_task(_worker(run, items)) for _ in range(count)]
    # Wake on whichever comes first: every worker done, a stop request, the hard stop.
    all_done = asyncio.create_task(asyncio.wait(workers))
    waited: list[asyncio.Task[Any]] = [all_done]
    if stop is not None:
        waited.append(asyncio.create_task(stop.wait()))
    remaining = run.clock.hard_stop - time.monotonic()
    timeout = None if remaining == float("inf") else max(0.0, remaining)
    try:
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
            continue
        writes = ItemWrites()
        try:
            with watching(writes):
                result = await _process(run, item)
            if result is None:
                continue  # packed: reported when its object is complete
        except asyncio.CancelledError:
            if not run.clock.stopping:
                raise
            run.record(_cut(run, item, writes))
            return  # the rest of the plan is drained by _fan_out
        except Exception as exc:  # a bug must not lose the item: report it
            log.exception("unexpected error on item %s", item.index)
            result = _failed(item, _key(run, item), exc, attempts=1, started=time.monotonic())
        run.record(_unknown_if_cut(result, writes))


def _unknown_if_cut(result: ItemResult, writes: ItemWrites) -> ItemResult:
    """A failed item one of whose attempts was cut mid-PUT (``attempt_timeout_s``)
    may have its object after all: say so rather than promise nothing is there."""
    if result.status is not ItemStatus.FAILED or not writes.cut_committing:
        return result
    return dataclasses.replace(
        result,
        status=ItemStatus.WRITE_UNKNOWN,
        error=f"{result.error}; an attempt was cut while S3 was storing the object: it may exist",
    )


def _not_attempted(run: _Run, item: PlannedItem, why: str | None = None) -> ItemResult:
    return ItemResult(
        index=item.index,
        params=item.params,
        key=_key(run, item),
        status=ItemStatus.NOT_ATTEMPTED,
        kind=FailureKind.DEADLINE,
        error=why or f"not started: {run.clock.reason}",
    )


def _cut(run: _Run, item: PlannedItem, writes: ItemWrites) -> ItemResult:
    """An item cancelled in flight: not attempted, or unknown if S3 may have stored it."""
    key = _key(run, item)
    if not writes.cut_committing:
        return _not_attempted(run, item, f"{run.clock.reason}; any upload was aborted")
    return ItemResult(
        index=item.index,
        params=item.params,
        key=key,
        status=ItemStatus.WRITE_UNKNOWN,
        attempts=1,
        kind=FailureKind.DEADLINE,
        error=f"{run.clock.reason} while S3 was storing the object: it may exist"
        " (a re-drive writes the same key again)",
    )


def _key(run: _Run, item: PlannedItem, page: int = 0) -> str:
    suffix = ".gz" if run.job.options.compress else ""
    return run.template.render(
        source_id=run.job.api.source_id,
        request_id=run.job.request_id,
        index=item.index,
        params=item.params,
        suffix=suffix,
        page=page,
    )


async def _process(run: _Run, item: PlannedItem) -> ItemResult | None:
    key = _key(run, item)
    started = time.monotonic()
    # Every S3 call of this item retries under the run's settings and counts here.
    with write_scope(run.s3_retry()) as s3:
        if run.job.options.skip_existing:
            try:
                if await run.writer.exists(key):
                    return ItemResult(item.index, item.params, key, ItemStatus.SKIPPED)
            except WriteError as exc:
                return _failed(item, key, exc, attempts=0, started=started, s3=s3)
        if run.job.api.pagination is not None:
            return await _paginated(run, item, key, started, s3)
        return await _attempts(run, item, key, started, s3)


async def _attempts(
    run: _Run, item: PlannedItem, key: str, started: float, s3: WriteStats
) -> ItemResult | None:
    request = run.shape.request(item.params)
    throttled = 0
    error: FetchError | None = None
    for attempt in range(1, run.job.options.max_attempts + 1):
        async with run.api_limit.slot() as slot:
            await run.bucket.acquire()  # the fixed rate limit keeps working on top
            # A slot or token granted too late sends nothing: the margin is not for sending.
            late = not run.clock.may_start()
            outcome = (
                None if late else await _try(run, lambda: _attempt(run, item, key, request), slot)
            )
        if outcome is None:
            if error is None:
                return _not_attempted(run, item)
            return _failed(item, key, error, attempts=attempt - 1, started=started, s3=s3)
        if isinstance(outcome, Stored | Staged):
            return _settle(run, item, key, outcome, attempt, started, s3, throttled)
        if isinstance(outcome, WriteError):
            return _failed(item, key, outcome, attempts=attempt, started=started, s3=s3)
        error = outcome
        throttled += slot.outcome is Outcome.THROTTLED
        delay = _retry_delay(run, outcome, attempt)
        if delay is None:
            return _failed(
                item,
                key,
                outcome,
                attempts=attempt,
                started=started,
                s3=s3,
                api_throttled=throttled,
            )
        await asyncio.sleep(delay)
    raise AssertionError("unreachable: the last attempt always returns")


async def _try(
    run: _Run, attempt_once: Callable[[], Awaitable[T]], slot: Slot
) -> T | FetchError | WriteError:
    """One attempt; its outcome (throttled or not) recorded on the API's ``slot``."""
    timeout_s = run.job.options.attempt_timeout_s
    try:
        async with asyncio.timeout(timeout_s):
            stored = await attempt_once()
    except FetchError as exc:
        if isinstance(exc, HTTPStatusError) and exc.status in THROTTLE_STATUSES:
            slot.throttled(exc.retry_after_s)
        return exc
    except TimeoutError:
        return FetchTimeout(f"attempt took longer than {timeout_s}s")
    except WriteError as exc:
        slot.succeeded()  # the API answered; storing is S3's side
        return exc
    slot.succeeded()
    return stored


async def _paginated(
    run: _Run, item: PlannedItem, key: str, started: float, s3: WriteStats
) -> ItemResult | None:
    """The item as a chain of pages: it succeeds only when every page is written."""
    assert run.job.api.pagination is not None
    chain = make_chain(run.job.api.pagination, run.job.api.endpoint, run.settings.policy)
    # Packed, each page's lines wait here until the chain is whole (pages are lines).
    staging: dict[int, Staged] | None = {} if run.packer is not None else None

    async def fetch(number: int, request: PageRequest) -> Page:
        return await _page(run, item, number, request, staging)

    try:
        outcome = await run_chain(chain, fetch, run.slots)
    except BaseException:
        _release(staging)
        raise
    attempts = outcome.retries + 1  # so the run's retries count every page's
    if staging is not None:
        return _settle_chain(run, item, key, outcome, staging, attempts, started, s3)
    keys = tuple(page.key for page in outcome.pages)
    if outcome.error is not None:
        return _chain_failed(item, key, outcome, attempts, started, s3, page_keys=keys)
    return ItemResult(
        index=item.index,
        params=item.params,
        key=key,
        status=ItemStatus.WRITTEN,
        attempts=attempts,
        received_bytes=sum(page.stored.received for page in outcome.pages),
        stored_bytes=sum(page.stored.stored for page in outcome.pages),
        records=outcome.records,
        latency_ms=_ms_since(started),
        s3_attempts=s3.attempts,
        s3_retries=s3.retries,
        throttled=outcome.throttled + s3.throttled,
        pages=len(keys),
        page_keys=keys,
    )


def _release(staging: dict[int, Staged] | None) -> None:
    for staged in (staging or {}).values():
        staged.release()


def _settle_chain(
    run: _Run,
    item: PlannedItem,
    key: str,
    outcome: ChainOutcome,
    staging: dict[int, Staged],
    attempts: int,
    started: float,
    s3: WriteStats,
) -> ItemResult | None:
    """A packed chain: its pages' lines, in page order, go to the packer as one item."""
    if outcome.error is not None:
        _release(staging)
        return _chain_failed(item, key, outcome, attempts, started, s3)
    assert run.packer is not None
    merged = run.packer.new_item()
    for number in sorted(staging):
        merged.merge(staging.pop(number))
    pages = len(outcome.pages)
    _submit_packed(run, item, merged, attempts, started, outcome.throttled, pages=pages)
    return None


def _chain_failed(
    item: PlannedItem,
    key: str,
    outcome: ChainOutcome,
    attempts: int,
    started: float,
    s3: WriteStats,
    page_keys: tuple[str, ...] = (),
) -> ItemResult:
    """A chain that ended in an error: its pages so far, and every page's throttles."""
    assert outcome.error is not None
    failed = _failed(
        item,
        key,
        outcome.error,
        attempts=attempts,
        started=started,
        s3=s3,
        api_throttled=outcome.throttled,
    )
    return dataclasses.replace(failed, pages=len(outcome.pages), page_keys=page_keys)


async def _page(
    run: _Run,
    item: PlannedItem,
    number: int,
    page: PageRequest,
    staging: dict[int, Staged] | None = None,
) -> Page:
    """One page with its retries, under the API's adaptive limit; raises ``PageFailed``."""
    key = _key(run, item, number)
    request = run.shape.request(item.params, page.params, page.url)
    throttled = 0
    for attempt in range(1, run.job.options.max_attempts + 1):
        async with run.api_limit.slot() as slot:
            await run.bucket.acquire()
            if not run.clock.may_start():  # the margin is not for sending
                raise PageFailed(
                    DeadlineExceeded(f"page {number} not started: {run.clock.reason}"),
                    attempt - 1,
                    key,
                )
            outcome = await _try(
                run, lambda: _attempt_page(run, item, number, key, request, staging), slot
            )
        if isinstance(outcome, Page):
            return dataclasses.replace(outcome, attempts=attempt, throttled=throttled)
        throttled += slot.outcome is Outcome.THROTTLED
        delay = None if isinstance(outcome, WriteError) else _retry_delay(run, outcome, attempt)
        if delay is None:
            raise PageFailed(outcome, attempt, key)
        await asyncio.sleep(delay)
    raise AssertionError("unreachable: the last attempt always returns")


async def _attempt_page(
    run: _Run,
    item: PlannedItem,
    number: int,
    key: str,
    request: FetchRequest,
    staging: dict[int, Staged] | None = None,
) -> Page:
    async with open_response(run.http, request, run.settings.policy) as response:
        info = _body_info(response)
        if staging is not None:
            return await _stage_page(run, item, number, response, info, staging)
        meta = _object_meta(run, item, info, page=number)
        stored = await _write_page(run, key, meta, info, iter_body(response, READ_CHUNK))
        view = PageView(number, response.url, response.headers, stored.value, stored.records)
        return Page(item.index, number, key, response.status, info.content_type, view, stored, 1)


async def _stage_page(
    run: _Run,
    item: PlannedItem,
    number: int,
    response: aiohttp.ClientResponse,
    info: BodyInfo,
    staging: dict[int, Staged],
) -> Page:
    """Packed: the page becomes lines staged for the item; the paginator reads its value."""
    assert run.packer is not None
    staged, lines = await _stage(run.packer, item, response, info, page=number)
    previous = staging.pop(number, None)  # an earlier attempt of this page, if any
    if previous is not None:
        previous.release()
    staging[number] = staged
    value = NOT_ONE_VALUE if lines.value is NOT_ONE_VALUE else run.keep_of_page(lines.value)
    stored = Stored(staged.received, 0, lines.records, multipart=False, value=value)
    view = PageView(number, response.url, response.headers, value, lines.records)
    return Page(item.index, number, "", response.status, info.content_type, view, stored, 1)


async def _write_page(
    run: _Run, key: str, meta: ObjectMeta, info: BodyInfo, chunks: AsyncIterator[bytes]
) -> Stored:
    """The writer seam for pages: one object per page (packing replaces this)."""
    return await transfer(
        chunks,
        info,
        writer=run.writer,
        key=key,
        meta=meta,
        options=run.job.options,
        budget=run.budget,
        records_path=run.job.api.records_path,
        keep=run.keep_of_page,
    )


def _retry_delay(run: _Run, error: Exception, attempt: int) -> float | None:
    """Seconds to wait before the next attempt, or None to give up now."""
    if not getattr(error, "retryable", False) or attempt >= run.job.options.max_attempts:
        return None
    delay = backoff_s(attempt)
    if isinstance(error, HTTPStatusError) and error.retry_after_s is not None:
        delay = max(delay, error.retry_after_s)
    if time.monotonic() + delay >= run.clock.stop_starting:
        return None  # Retry-After honoured only within the deadline
    return delay


async def _attempt(
    run: _Run, item: PlannedItem, key: str, request: FetchRequest
) -> Stored | Staged:
    async with open_response(run.http, request, run.settings.policy) as response:
        info = _body_info(response)
        if run.packer is not None:
            staged, _ = await _stage(run.packer, item, response, info)
            return staged
        meta = _object_meta(run, item, info)
        return await transfer(
            iter_body(response, READ_CHUNK),
            info,
            writer=run.writer,
            key=key,
            meta=meta,
            options=run.job.options,
            budget=run.budget,
            records_path=run.job.api.records_path,
        )


async def _stage(
    packer: Packer,
    item: PlannedItem,
    response: aiohttp.ClientResponse,
    info: BodyInfo,
    page: int = 0,
) -> tuple[Staged, Lines]:
    """A page's body turned into pack lines, staged under its own reservation."""
    staged = packer.new_item()
    try:
        lines = await packer.stage(
            staged,
            iter_body(response, READ_CHUNK),
            index=item.index,
            page=page,
            params=item.params,
            status=response.status,
            content_type=info.content_type,
            content_length=None if info.encoded else info.content_length,
        )
    except BaseException:
        staged.release()
        raise
    return staged, lines


def _settle(
    run: _Run,
    item: PlannedItem,
    key: str,
    stored: Stored | Staged,
    attempts: int,
    started: float,
    s3: WriteStats,
    api_throttled: int,
) -> ItemResult | None:
    """The written result, or None when the packer reports it once its object is complete."""
    if isinstance(stored, Stored):
        return _written(item, key, stored, attempts, started, s3, api_throttled)
    _submit_packed(run, item, stored, attempts, started, api_throttled)
    return None


def _submit_packed(
    run: _Run,
    item: PlannedItem,
    staged: Staged,
    attempts: int,
    started: float,
    api_throttled: int,
    pages: int | None = None,
) -> None:
    """Hand an item's lines to the packer, which reports it once its object is complete."""
    assert run.packer is not None
    pending = ItemResult(
        index=item.index,
        params=item.params,
        key=None,
        status=ItemStatus.WRITTEN,
        attempts=attempts,
        received_bytes=staged.received,
        records=staged.records,
        latency_ms=_ms_since(started),
        throttled=api_throttled,  # the pack's own S3 writes are the packer's to count
        pages=pages,
    )
    run.packer.submit(staged, pending)


def _body_info(response: aiohttp.ClientResponse) -> BodyInfo:
    encoding = response.headers.get("Content-Encoding", "identity").strip().lower()
    return BodyInfo(
        content_length=response.content_length,
        content_type=safe_content_type(response.headers.get("Content-Type")),
        encoded=encoding not in ("", "identity"),
    )


def _object_meta(
    run: _Run, item: PlannedItem, info: BodyInfo, page: int | None = None
) -> ObjectMeta:
    # Never a header value of the API request: those may be credentials.
    metadata = {
        "source-id": run.job.api.source_id,
        "request-id": run.job.request_id,
        "index": str(item.index),
        "params-hash": params_hash(item.params),
    }
    if page is not None:
        metadata["page"] = str(page)
    return ObjectMeta(
        content_type=info.content_type or "application/json",
        content_encoding="gzip" if run.job.options.compress else None,
        metadata=metadata,
    )


def _written(
    item: PlannedItem,
    key: str,
    stored: Stored,
    attempts: int,
    started: float,
    s3: WriteStats,
    api_throttled: int,
) -> ItemResult:
    return ItemResult(
        index=item.index,
        params=item.params,
        key=key,
        status=ItemStatus.WRITTEN,
        attempts=attempts,
        received_bytes=stored.received,
        stored_bytes=stored.stored,
        records=stored.records,
        latency_ms=_ms_since(started),
        s3_attempts=s3.attempts,
        s3_retries=s3.retries,
        throttled=api_throttled + s3.throttled,
    )


def _failed(
    item: PlannedItem,
    key: str,
    error: Exception,
    *,
    attempts: int,
    started: float,
    s3: WriteStats | None = None,
    api_throttled: int = 0,
) -> ItemResult:
    kind = getattr(error, "kind", FailureKind.CONNECTION)
    status = getattr(error, "status", None)
    text = str(error)
    if isinstance(error, HTTPStatusError):
        text = f"{text} after {attempts} attempt{'s' if attempts != 1 else ''}"
    return ItemResult(
        index=item.index,
        params=item.params,
        key=key,
        status=ItemStatus.FAILED,
        attempts=attempts,
        latency_ms=_ms_since(started),
        kind=kind,
        http_status=status,
        error=text,
        s3_attempts=s3.attempts if s3 is not None else 0,
        s3_retries=s3.retries if s3 is not None else 0,
        throttled=api_throttled + (s3.throttled if s3 is not None else 0),
    )


def _ms_since(started: float) -> int:
    return int((time.monotonic() - started) * 1000)


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
        duration_ms=_ms_since(started),
        manifest_key=stored_key,
    )
    result["manifest_error"] = manifest_error
    result["adaptive"] = run.limits.snapshot()
    result.update(_open_uploads(left_open))
    manifest_uri = run.writer.describe(stored_key) if stored_key else None
    return RunOutcome(result, manifest_uri, list(run.tally.latencies_ms))


async def _write_manifest(
    run: _Run, span: tuple[int | None, int | None], write_manifest: bool, manifest_prefix: str
) -> tuple[str | None, str | None]:
    """Store the manifest within the time left; (its key, None) or (None, why not)."""
    if not write_manifest:
        return None, None
    key = manifest_key_for(run.job, *span, prefix=manifest_prefix)
    left = run.clock.left()
    end = float("inf") if run.clock.finish_by is None else run.clock.finish_by
    try:
        # S3 retries within the same time: a retry that cannot finish is not started.
        async with asyncio.timeout(left):
            with write_scope(run.s3_retry(deadline=end)):
                await run.writer.put_file(key, run.tally.manifest_path(), MANIFEST_CONTENT_TYPE)
    except TimeoutError:
        error = f"not written: S3 did not answer in the {left:.1f}s left before the deadline"
        log.error("could not write the manifest", extra={"manifest_key": key, "error": error})
        return None, error
    except Exception as exc:
        # The objects are written; a lost manifest must not turn success into an error.
        log.exception("could not write the manifest", extra={"manifest_key": key})
        return None, f"not written: {exc}"[:300]
    return key, None


def _open_uploads(left_open: list[OpenUpload]) -> dict[str, Any]:
    return {
        "uploads_left_open": [upload.to_dict() for upload in left_open[:MAX_REPORTED]],
        "uploads_left_open_count": len(left_open),
    }
