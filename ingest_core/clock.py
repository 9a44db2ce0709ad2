"""The run's one clock: when to stop starting, when to cut, and what bounds the rest.

Every await after the hard stop (aborts, a pack object's completion, the manifest,
an incremental run's state I/O) takes its bound from ``RunClock.bound``, so the
invocation returns before ``deadline - margin/8`` whatever is still running::

    deadline - margin       stop_starting: no item, page, retry or send starts
    deadline - margin/2     hard_stop: work in flight is cancelled
    deadline - margin/4     complete_by: the open pack object is complete (or given up)
    deadline - margin/8     finish_by: cleanup and the manifest have ended (or are given up)
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")
INF = float("inf")


@dataclass(slots=True)
class RunClock:
    """When to stop starting work and when to cancel the work in flight."""

    stop_starting: float
    hard_stop: float
    complete_by: float  # a pack object still open completes by then, or is given up
    finish_by: float | None  # cleanup and the manifest end by then; None = no deadline
    stopping: bool = False
    reason: str = "cancelled at the deadline"

    @classmethod
    def for_deadline(cls, deadline: float | None, margin_s: float) -> RunClock:
        """The clock of a run that must return by ``deadline`` (``time.monotonic()``)."""
        if deadline is None:
            return cls(INF, INF, INF, None)
        return cls(
            stop_starting=deadline - margin_s,
            hard_stop=deadline - margin_s / 2,
            complete_by=deadline - margin_s / 4,  # the manifest still needs the rest
            finish_by=deadline - margin_s / 8,
        )

    def left(self) -> float | None:
        """Seconds until ``finish_by``, or None without a deadline."""
        return None if self.finish_by is None else max(0.0, self.finish_by - time.monotonic())

    def until(self, when: float) -> float | None:
        """Seconds until ``when`` (never past ``finish_by``), None when unbounded."""
        end = min(when, INF if self.finish_by is None else self.finish_by)
        return None if end == INF else max(0.0, end - time.monotonic())

    def may_start(self) -> bool:
        """Whether new work (an item, a page, a retry, a send) may begin now."""
        return not self.stopping and time.monotonic() < self.stop_starting

    async def bound(self, awaitable: Awaitable[T], until: float = INF) -> T:
        """Await ``awaitable`` until ``until`` or ``finish_by``, whichever is first.

        Raises:
            TimeoutError: the bound passed first (the awaitable is cancelled).
        """
        async with asyncio.timeout(self.until(until)):
            return await awaitable
