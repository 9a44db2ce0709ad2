"""Wiring a job to real I/O: the aioboto3 session, S3 client and writers.

The aioboto3 ``Session`` is created once per process and reused across warm
Lambda invocations: creating it costs 100-200 ms here (loading botocore's data
and credential chain), while a client from an existing session costs ~10 ms.
Clients and aiohttp sessions are bound to an event loop and sized by the
event's ``concurrency``, so they are made per run.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp

from ingest_core.engine import ItemCallback, RunOutcome, run_job
from ingest_core.events import Job
from ingest_core.settings import Settings
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
    """botocore config: pool sized like the semaphore, ``standard`` retries."""
    from aiobotocore.config import AioConfig

    return AioConfig(
        max_pool_connections=concurrency,  # botocore's default of 10 would cap the fan-out
        retries={"mode": "standard", "max_attempts": 3},
        connect_timeout=S3_CONNECT_TIMEOUT_S,
        read_timeout=S3_READ_TIMEOUT_S,
    )


@asynccontextmanager
async def s3_writer(
    bucket: str, *, concurrency: int, settings: Settings
) -> AsyncIterator[S3Writer]:
    """An ``S3Writer`` with its client and lean-PUT session, closed on exit."""
    session = aws_session()
    async with session.client(
        "s3", config=s3_config(concurrency), endpoint_url=settings.s3_endpoint_url
    ) as client:
        if not settings.lean_put:
            yield S3Writer(client, bucket)
            return
        credentials = await session.get_credentials()
        connector = aiohttp.TCPConnector(limit=concurrency, limit_per_host=0)
        async with aiohttp.ClientSession(connector=connector, trust_env=False) as http:
            yield S3Writer(
                client,
                bucket,
                credentials=credentials,
                http=http,
                endpoint_url=settings.s3_endpoint_url,
            )


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
) -> RunOutcome:
    """Run ``job`` against S3 (its ``raw_bucket``), a local folder, or a given writer."""
    settings = settings or Settings.from_env()
    kwargs: dict[str, Any] = dict(
        settings=settings,
        headers=headers,
        deadline=deadline,
        on_item=on_item,
        stop=stop,
        manifest_prefix=manifest_prefix,
    )
    if writer is not None:
        return await run_job(job, writer=writer, **kwargs)
    if local_dir is not None:
        return await run_job(job, writer=LocalDirWriter(local_dir), **kwargs)
    async with s3_writer(
        job.api.raw_bucket, concurrency=job.options.concurrency, settings=settings
    ) as s3:
        return await run_job(job, writer=s3, **kwargs)
