"""Patient S3 write retries (CONTRACT §14): an item already fetched is not thrown away
because S3 said SlowDown.

Every S3 call an ``S3Writer`` makes goes through ``S3Retry.call``: SlowDown, other
throttling codes, 500/502/503/504, a 200 carrying an ``<Error>`` (botocore turns
it into an error) and connection errors are retried with full-jitter backoff up
to ``max_attempts`` or the run's deadline, whichever comes first. botocore's own
retries are off (``runtime.s3_config``), so every attempt is counted here, the
lean PUT path and the SDK path alike.

What a run sets (attempts, deadline, the adaptive S3 limit) and what an item
accumulates (its retries and throttles) travel in a context variable that the
engine sets around each item (``write_scope``). A context variable rather than
a parameter because the ``ObjectWriter`` protocol is shared by every sink (S3,
a local folder, pack writers, test doubles) and a per-item counter is the S3
writer's concern alone; each item runs in its worker's own task, so the scope
of one item never leaks into another's.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TypeVar

from ingest_core.config import DEFAULT_S3_MAX_ATTEMPTS
from ingest_core.errors import S3WriteError
from ingest_core.limits import AdaptiveLimit
from ingest_core.retry import backoff_s

S3_BACKOFF_BASE_S = 0.2
S3_BACKOFF_CAP_S = 20.0

T = TypeVar("T")


@dataclass(slots=True)
class WriteStats:
    """What one item's S3 calls came to."""

    retries: int = 0  # S3 attempts beyond the first, over every call of the item
    throttled: int = 0  # SlowDown and other throttling answers
    most_attempts: int = 0  # the most attempts one call needed (1 = none retried)

    @property
    def attempts(self) -> int:
        """The item's ``s3_attempts``: 0 when it made no S3 call."""
        return self.most_attempts


@dataclass(slots=True)
class S3Retry:
    """How patient S3 writes are, for one run (or, by default, outside any run)."""

    max_attempts: int = DEFAULT_S3_MAX_ATTEMPTS
    deadline: float = float("inf")  # time.monotonic() after which no attempt starts
    limit: AdaptiveLimit | None = None  # S3 write concurrency, adapting to SlowDown
    base_s: float = S3_BACKOFF_BASE_S
    cap_s: float = S3_BACKOFF_CAP_S
    stats: WriteStats = field(default_factory=WriteStats)

    async def call(self, send: Callable[[], Awaitable[T]]) -> T:
        """``send()`` until it succeeds, fails for good, or attempts or time run out.

        Raises:
            S3WriteError: the last error, its message saying after how many
                attempts and why the retries stopped; ``attempts`` set on it.
        """
        attempt = 0
        limit = self.limit
        while True:
            attempt += 1
            try:
                if limit is None:
                    result = await send()
                else:  # inline, not a method: one coroutine frame less per S3 call
                    async with limit.slot() as slot:
                        try:
                            result = await send()
                        except S3WriteError as exc:
                            if exc.throttled:
                                slot.throttled()
                            raise
                        slot.succeeded()
            except S3WriteError as exc:
                self._count(exc)
                delay = self._delay_or_give_up(exc, attempt)
                self.stats.retries += 1
                await asyncio.sleep(delay)
                continue
            self.stats.most_attempts = max(self.stats.most_attempts, attempt)
            return result

    def _count(self, exc: S3WriteError) -> None:
        if exc.throttled:
            self.stats.throttled += 1

    def _delay_or_give_up(self, exc: S3WriteError, attempt: int) -> float:
        """Seconds before the next attempt; raises ``exc``, annotated, when none may follow."""
        self.stats.most_attempts = max(self.stats.most_attempts, attempt)
        if not exc.retryable:
            raise exc.after(attempt, None)
        if attempt >= self.max_attempts:
            raise exc.after(attempt, "s3_max_attempts reached")
        delay = backoff_s(attempt, base_s=self.base_s, cap_s=self.cap_s)
        if time.monotonic() + delay >= self.deadline:
            raise exc.after(attempt, "the deadline leaves no time for another")
        return delay


_SCOPE: ContextVar[S3Retry | None] = ContextVar("fanout_s3_retry", default=None)


def current() -> S3Retry:
    """The retry settings of the item being written, or the defaults outside a run."""
    return _SCOPE.get() or S3Retry()


class write_scope:  # lower case: used as a function, ``with write_scope(retry):``
    """Make ``retry`` govern every S3 call in this task until the block ends.

    A class, not a ``contextmanager``: every item enters one (docs/PERFORMANCE.md).
    """

    __slots__ = ("retry", "token")

    def __init__(self, retry: S3Retry) -> None:
        self.retry = retry

    def __enter__(self) -> WriteStats:
        self.token = _SCOPE.set(self.retry)
        return self.retry.stats

    def __exit__(self, *exc: object) -> None:
        _SCOPE.reset(self.token)
