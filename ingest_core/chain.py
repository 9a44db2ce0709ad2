"""One item as a chain of pages (CONTRACT §11): page by page, or in parallel once known.

``run_chain`` only sequences: it asks the ``pagination.Chain`` what to fetch next and
calls the engine's ``FetchPage`` (one page through the attempt loop into the sink).
An unpaginated item is a chain of one page (``SinglePage``). Every page fetch holds
one of the run's ``slots`` (sized by ``concurrency``) while it runs, so parallel
pages share the same cap on requests in flight as the items do.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from ingest_core.attempt import PageFailed
from ingest_core.pagination import PageRequest, PageView
from ingest_core.transfer import Stored


@dataclass(slots=True)  # not frozen: one per page, and a frozen init costs a setattr a field
class Page:
    """One page as stored: what the sink saw and what the paginator reads.

    Attributes:
        number: 0-based page number within the item.
        key: where the page was written ("" when packed: the pack object is the item's).
        view: what the paginator reads (URL, headers, parsed body, records).
        stored: what the sink stored (bytes, records).
        attempts: attempts this page took.
        throttled: 429/503 answers this page met (CONTRACT §14).
    """

    number: int
    key: str
    view: PageView
    stored: Stored
    attempts: int
    throttled: int = 0


FetchPage = Callable[[int, PageRequest], Awaitable[Page]]


class Sequencer(Protocol):
    """What ``run_chain`` asks of a chain of pages (``pagination.Chain``, ``SinglePage``)."""

    def first(self) -> PageRequest: ...

    def after(self, page: PageView) -> PageRequest | None: ...

    def fan_out(self, first: PageView) -> Sequence[PageRequest] | None: ...


_ONLY_PAGE = PageRequest()


class SinglePage:
    """An unpaginated item: a chain of exactly one page."""

    def first(self) -> PageRequest:
        return _ONLY_PAGE

    def after(self, page: PageView) -> PageRequest | None:
        return None

    def fan_out(self, first: PageView) -> Sequence[PageRequest] | None:
        return None


SINGLE_PAGE = SinglePage()


@dataclass(slots=True)
class ChainOutcome:
    """How one item's chain went: pages stored, and the failure if it failed.

    Filled in place while the chain runs, so a caller cut by a cancellation still
    knows the pages stored so far.
    """

    pages: list[Page] = field(default_factory=list)
    error: Exception | None = None
    failed_attempts: int = 0  # attempts of the page that failed
    failed_throttled: int = 0  # its 429/503 answers

    @property
    def attempts(self) -> int:
        """The item's attempts: the first plus every retry over every page."""
        extra = sum(page.attempts - 1 for page in self.pages)
        if self.error is None:
            return extra + 1
        if not self.pages and self.failed_attempts == 0:
            return 0  # nothing was ever sent
        return extra + max(1, self.failed_attempts)

    @property
    def throttled(self) -> int:
        """Throttled answers over every page, the failed one included."""
        return sum(page.throttled for page in self.pages) + self.failed_throttled

    @property
    def never_sent(self) -> bool:
        """The chain failed before any request was sent (deadline or stop)."""
        return self.error is not None and not self.pages and self.failed_attempts == 0

    @property
    def records(self) -> int | None:
        """The sum over the pages; None when any page's count is unknown."""
        total = 0
        for page in self.pages:
            if page.stored.records is None:
                return None
            total += page.stored.records
        return total


async def run_chain(
    chain: Sequencer, fetch: FetchPage, slots: asyncio.Semaphore | None, out: ChainOutcome
) -> None:
    """Fetch and store every page of one item into ``out``; never raises for a failure.

    Any exception but a cancellation ends the chain with ``out.error`` set and the
    pages stored so far kept (a paginator's bug must not orphan page 0).
    """
    try:
        if chain is SINGLE_PAGE and slots is None:  # the common case, without the walk
            out.pages.append(await fetch(0, _ONLY_PAGE))
        else:
            await _walk(chain, fetch, slots, out)
    except PageFailed as failed:
        out.error = failed.error
        out.failed_attempts, out.failed_throttled = failed.attempts, failed.throttled
    except Exception as exc:  # the chain refused to go on (loop, origin, max_pages) or a bug
        out.error, out.failed_attempts = exc, 1
    finally:
        if len(out.pages) > 1:
            out.pages.sort(key=lambda page: page.number)


async def _walk(
    chain: Sequencer, fetch: FetchPage, slots: asyncio.Semaphore | None, out: ChainOutcome
) -> None:
    request: PageRequest | None = chain.first()
    number = 0
    while request is not None:
        out.pages.append(await _held(slots, fetch, number, request))
        if number == 0:
            rest = chain.fan_out(out.pages[0].view)
            if rest is not None:
                await _parallel(rest, fetch, slots, out)
                return
        request = chain.after(out.pages[-1].view)
        number += 1


async def _held(
    slots: asyncio.Semaphore | None, fetch: FetchPage, number: int, request: PageRequest
) -> Page:
    if slots is None:  # the item's own worker slot is enough for a single page
        return await fetch(number, request)
    async with slots:
        return await fetch(number, request)


async def _parallel(
    rest: Sequence[PageRequest],
    fetch: FetchPage,
    slots: asyncio.Semaphore | None,
    out: ChainOutcome,
) -> None:
    """Pages 1..n at once (each under a slot); the first failure cancels the others."""
    if not rest:  # the total fit on page 0
        return

    async def one(number: int, request: PageRequest) -> None:
        out.pages.append(await _held(slots, fetch, number, request))

    tasks = [asyncio.create_task(one(n, r)) for n, r in enumerate(rest, start=1)]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for task in done:
            error = None if task.cancelled() else task.exception()
            if error is not None:
                raise error
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
