"""One item as a chain of pages (CONTRACT §11): page by page, or in parallel once known.

``run_chain`` drives a ``pagination.Chain`` with a ``FetchPage`` the engine
supplies (fetch one page with retries, write it, return the ``Page``), so this
module holds the sequencing and nothing about HTTP, S3 or retries. Every page
fetch holds one of the run's ``slots`` (sized by ``concurrency``) while it runs,
so parallel pages share the same cap on requests in flight as the items do, and
the same memory budget through the writer.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from ingest_core.errors import FetchError
from ingest_core.pagination import Chain, PageRequest, PageView
from ingest_core.transfer import Stored


@dataclass(frozen=True, slots=True)
class Page:
    """One page as written: what the writer seam saw and what the paginator reads.

    Attributes:
        index: the item's global index.
        number: 0-based page number within the item.
        key: where the page was written.
        status: the HTTP status of the page's response.
        content_type: the response's content type.
        view: what the paginator reads (URL, headers, parsed body, records).
        stored: what the writer stored (bytes, records).
        attempts: attempts this page took.
        throttled: 429/503 answers this page met (CONTRACT §14).
    """

    index: int
    number: int
    key: str
    status: int
    content_type: str | None
    view: PageView
    stored: Stored
    attempts: int
    throttled: int = 0


class PageFailed(Exception):
    """A page could not be fetched or written after its retries (carries why)."""

    def __init__(self, error: Exception, attempts: int, key: str) -> None:
        super().__init__(str(error))
        self.error = error
        self.attempts = attempts
        self.key = key


FetchPage = Callable[[int, PageRequest], Awaitable[Page]]


@dataclass(slots=True)
class ChainOutcome:
    """How one item's chain ended: the pages written, and the error if it failed."""

    pages: list[Page] = field(default_factory=list)
    error: Exception | None = None
    failed_attempts: int = 0

    @property
    def retries(self) -> int:
        """Attempts beyond the first, over every page (the failed one included)."""
        extra = sum(page.attempts - 1 for page in self.pages)
        return extra + max(0, self.failed_attempts - 1)

    @property
    def throttled(self) -> int:
        """Throttled answers over the pages written."""
        return sum(page.throttled for page in self.pages)

    @property
    def records(self) -> int | None:
        """The sum over the pages; None when any page's count is unknown."""
        total = 0
        for page in self.pages:
            if page.stored.records is None:
                return None
            total += page.stored.records
        return total


async def run_chain(chain: Chain, fetch: FetchPage, slots: asyncio.Semaphore) -> ChainOutcome:
    """Fetch and write every page of one item; never raises for a failed page."""
    outcome = ChainOutcome()
    try:
        await _walk(chain, fetch, slots, outcome)
    except PageFailed as failed:
        outcome.error, outcome.failed_attempts = failed.error, failed.attempts
    except FetchError as exc:  # the chain itself refused to go on (loop, origin, max_pages)
        outcome.error = exc
    outcome.pages.sort(key=lambda page: page.number)
    return outcome


async def _walk(
    chain: Chain, fetch: FetchPage, slots: asyncio.Semaphore, out: ChainOutcome
) -> None:
    request: PageRequest | None = chain.first()
    number = 0
    while request is not None:
        async with slots:
            page = await fetch(number, request)
        out.pages.append(page)
        if number == 0:
            rest = chain.fan_out(page.view)
            if rest is not None:
                await _parallel(rest, fetch, slots, out)
                return
        request = chain.after(page.view)
        number += 1


async def _parallel(
    rest: Sequence[PageRequest], fetch: FetchPage, slots: asyncio.Semaphore, out: ChainOutcome
) -> None:
    """Pages 1..n at once (each under a slot); the first failure cancels the others."""

    async def one(number: int, request: PageRequest) -> None:
        async with slots:
            out.pages.append(await fetch(number, request))

    tasks = [asyncio.create_task(one(n, r)) for n, r in enumerate(rest, start=1)]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for task in done:
            if not task.cancelled() and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
