"""Wiring a job to real I/O: the aioboto3 session, S3 client and writers.

The aioboto3 ``Session`` is created once per process and reused across warm
Lambda invocations: creating it costs 100-200 ms here (loading botocore's data
and credential chain), while a client from an existing session costs ~10 ms.
Clients and aiohttp sessions are bound to an event loop and sized by the
event's ``concurrency``, so they are made per run.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp

from ingest_core.engine import ItemCallback, RunOutcome, run_job
from ingest_core.events import Job
from ingest_core.hints import RunHints
from ingest_core.incremental import is_incremental, run_incremental, store_for
from ingest_core.limits import OriginLimits
from ingest_core.results import ItemResult
from ingest_core.settings import Settings
from ingest_core.state import StateStore
from ingest_core.writers import LocalDirWriter, ObjectWriter, S3Writer

S3_CONNECT_TIMEOUT_S = 10
S3_READ_TIMEOUT_S = 60
_SESSION: Any = None


def aws_session() -> Any:
    """The process-wide aioboto3 session (lazily imported and created)."""
    global _SESSION
    if _SESSION is None:
        import aioboto3

        _SESSION = aioboto3.Session()
    return _SESSION


def s3_config(concurrency: int) -> Any:
    """botocore config: pool sized like the semaphore, botocore's retries off."""
    from aiobotocore.config import AioConfig

    return AioConfig(
        max_pool_connections=concurrency,  # botocore's default of 10 would cap the fan-out
        # One attempt per call: ingest_core.s3retry retries every call the writer makes
        # (up to s3_max_attempts, within the deadline, counting each attempt), on the
        # SDK path exactly as on the lean one. total_max_attempts, not max_attempts:
        # botocore reads the latter as *retries*.
        retries={"mode": "standard", "total_max_attempts": 1},
        connect_timeout=S3_CONNECT_TIMEOUT_S,
        read_timeout=S3_READ_TIMEOUT_S,
    )


class S3ClientPool:
    """S3 clients kept open across warm invocations that share one event loop.

    A new aiobotocore client costs ~12 ms and its first request another ~35 ms
    (it builds an SSL context for its connector); a warm Lambda invocation
    should pay neither. Entries are keyed by what sizes or points them
    (concurrency, endpoint, lean path) and by the loop they belong to; only
    ``MAX_ENTRIES`` are kept, the oldest closed first.
    """

    MAX_ENTRIES = 4

    def __init__(self) -> None:
        self._entries: dict[tuple[Any, ...], tuple[AsyncExitStack, dict[str, Any]]] = {}

    async def writer(self, bucket: str, *, concurrency: int, settings: Settings) -> S3Writer:
        """A writer for ``bucket`` on a pooled client."""
        loop = asyncio.get_running_loop()
        key = (id(loop), concurrency, settings.s3_endpoint_url, settings.lean_put)
        if key not in self._entries:
            self._drop_other_loops(id(loop))
            await self._evict()
            stack = AsyncExitStack()
            parts = await stack.enter_async_context(
                _s3_parts(concurrency=concurrency, settings=settings)
            )
            self._entries[key] = (stack, parts)
        return S3Writer(
            bucket=bucket, endpoint_url=settings.s3_endpoint_url, **self._entries[key][1]
        )

    def _drop_other_loops(self, loop_id: int) -> None:
        # Clients of a closed loop cannot be closed from this one; let them go.
        for key in [k for k in self._entries if k[0] != loop_id]:
            del self._entries[key]

    async def _evict(self) -> None:
        while len(self._entries) >= self.MAX_ENTRIES:
            oldest = next(iter(self._entries))
            stack, _ = self._entries.pop(oldest)
            await stack.aclose()

    async def aclose(self) -> None:
        """Close every pooled client."""
        while self._entries:
            _, (stack, _) = self._entries.popitem()
            await stack.aclose()


@asynccontextmanager
async def _s3_parts(
    *, concurrency: int, settings: Settings, session: Any = None
) -> AsyncIterator[dict[str, Any]]:
    """The client, and for the lean path its credentials and aiohttp session."""
    session = session or aws_session()
    async with session.client(
        "s3", config=s3_config(concurrency), endpoint_url=settings.s3_endpoint_url
    ) as client:
        if not settings.lean_put:
            yield {"client": client}
            return
        credentials = await session.get_credentials()
        connector = aiohttp.TCPConnector(limit=concurrency, limit_per_host=0)
        # The SDK client's timeouts, not aiohttp's default (300 s total, no read timeout).
        timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=S3_CONNECT_TIMEOUT_S, sock_read=S3_READ_TIMEOUT_S
        )
        async with aiohttp.ClientSession(
            connector=connector, timeout=timeout, trust_env=False
        ) as http:
            yield {"client": client, "credentials": credentials, "http": http}


@asynccontextmanager
async def s3_writer(
    bucket: str, *, concurrency: int, settings: Settings, session: Any = None
) -> AsyncIterator[S3Writer]:
    """An ``S3Writer`` with its own client and lean-PUT session, closed on exit.

    ``session`` defaults to the process-wide aioboto3 session; the demo passes
    one with its own dummy credentials.
    """
    async with _s3_parts(concurrency=concurrency, settings=settings, session=session) as parts:
        yield S3Writer(bucket=bucket, endpoint_url=settings.s3_endpoint_url, **parts)


async def execute(
    job: Job,
    *,
    settings: Settings | None = None,
    headers: Mapping[str, str] | None = None,
    deadline: float | None = None,
    on_item: ItemCallback | None = None,
    stop: asyncio.Event | None = None,
    local_dir: Path | None = None,
    writer: ObjectWriter | None = None,
    manifest_prefix: str = "",
    pool: S3ClientPool | None = None,
    state_store: StateStore | None = None,
    on_plan: Callable[[Job], None] | None = None,
    limits: OriginLimits | None = None,
) -> RunOutcome:
    """Run ``job`` against S3 (its ``raw_bucket``), a local folder, or a given writer.

    With ``pool``, S3 clients outlive the run (the Lambda handler's warm path).
    An incremental ``date_range`` keeps its watermark beside the objects (or in
    ``state_store``) and runs only what lies after it; ``on_plan`` is told that job.
    ``limits`` lets a caller watch the adaptive limits (the CLI's progress line).
    """
    settings = settings or Settings.from_env()
    kwargs: dict[str, Any] = dict(
        settings=settings,
        headers=headers,
        deadline=deadline,
        stop=stop,
        manifest_prefix=manifest_prefix,
        limits=limits,
    )
    hints = RunHints(paginated=job.api.pagination is not None, records_path=job.api.records_path)
    watched = _both(on_item, hints.on_result)
    kwargs["on_page"] = lambda _item, view: hints.on_page(view)
    async with _target(job, settings, writer, local_dir, pool) as target:

        async def run(
            todo: Job, track: ItemCallback | None = None, until: float | None = deadline
        ) -> RunOutcome:
            # An incremental run passes an earlier deadline: the rest is its advance's.
            options = {**kwargs, "deadline": until}
            return await run_job(todo, writer=target, on_item=_both(watched, track), **options)

        if not is_incremental(job):
            outcome = await run(job)
        else:
            store = state_store or store_for(target, job, manifest_prefix)
            outcome = await run_incremental(job, store, run, deadline=deadline, on_plan=on_plan)
    # Said, never failed for: a run can look wrong and still be what was asked (CONTRACT §17).
    outcome.result["warnings"] = hints.warnings()
    return outcome


@asynccontextmanager
async def _target(
    job: Job,
    settings: Settings,
    writer: ObjectWriter | None,
    local_dir: Path | None,
    pool: S3ClientPool | None,
) -> AsyncIterator[ObjectWriter]:
    if writer is not None:
        yield writer
    elif local_dir is not None:
        yield LocalDirWriter(local_dir)
    elif pool is not None:
        yield await pool.writer(
            job.api.raw_bucket, concurrency=job.options.concurrency, settings=settings
        )
    else:
        async with s3_writer(
            job.api.raw_bucket, concurrency=job.options.concurrency, settings=settings
        ) as s3:
            yield s3


def _both(first: ItemCallback | None, second: ItemCallback | None) -> ItemCallback | None:
    if first is None or second is None:
        return first or second

    def both(result: ItemResult) -> None:
        first(result)
        second(result)

    return both
