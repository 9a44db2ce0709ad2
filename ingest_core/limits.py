"""Shared limits of one run: the request rate, the memory budget and the adaptive
per-origin limit (CONTRACT §14)."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from enum import Enum
from typing import Any


class TokenBucket:
    """A token bucket over the whole run; ``rate_per_s == 0`` means no limit.

    Burst is one second's worth of tokens (at least one), so a run starts at the
    rate rather than with a stampede.
    """

    def __init__(self, rate_per_s: float) -> None:
        self._rate = rate_per_s
        self._capacity = max(1.0, rate_per_s)
        self._tokens = self._capacity
        self._updated = time.monotonic()
        self._lock = asyncio.Lock()

    async def acquire(self) -> None:
        """Wait until one request may start."""
        if self._rate <= 0:
            return
        async with self._lock:
            while True:
                self._refill()
                if self._tokens >= 1:
                    self._tokens -= 1
                    return
                await asyncio.sleep((1 - self._tokens) / self._rate)

    def _refill(self) -> None:
        now = time.monotonic()
        self._tokens = min(self._capacity, self._tokens + (now - self._updated) * self._rate)
        self._updated = now


class ByteBudget:
    """Caps body bytes buffered at once across every request of a run.

    A request reserves what it may buffer *before* buffering it and holds the
    reservation whole (never growing it while holding), so requests cannot
    deadlock each other waiting for bytes they hold between them. Grants are
    first come, first served, so a part-sized reservation is not starved by a
    stream of small ones. ``release`` is synchronous so that it is safe in a
    ``finally`` of a cancelled task.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._available = capacity
        self._waiters: deque[tuple[int, asyncio.Future[None]]] = deque()
        self.peak_reserved = 0

    async def reserve(self, nbytes: int) -> int:
        """Wait for and take ``nbytes`` (clamped to the capacity); return what was taken."""
        nbytes = max(0, min(nbytes, self.capacity))
        if not self._waiters and self._available >= nbytes:
            self._take(nbytes)
            return nbytes
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (nbytes, future)
        self._waiters.append(entry)
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self.release(nbytes)  # granted just as we were cancelled
            elif entry in self._waiters:
                self._waiters.remove(entry)
            raise
        return nbytes

    def release(self, nbytes: int) -> None:
        """Give back a reservation and wake whoever now fits."""
        self._available += max(0, nbytes)
        while self._waiters and self._waiters[0][0] <= self._available:
            wanted, future = self._waiters.popleft()
            if not future.done():
                self._take(wanted)
                future.set_result(None)

    def _take(self, nbytes: int) -> None:
        self._available -= nbytes
        self.peak_reserved = max(self.peak_reserved, self.capacity - self._available)


# ---------------------------------------------------------------- adaptive limit

PACE_WINDOW_S = 1.0  # what "recently admitted" means when a throttle names no Retry-After
MIN_PACE_PER_S = 0.5
# A pace is learned only when at least this share of the window's requests was
# refused: a rate limit refuses everything beyond it, while an odd 503 or 429 from a
# flaky server is a few percent, and pacing on those would ratchet the rate down
# round after round (each sets the pace a little below the rate of the last one).
PACE_MIN_REFUSED_SHARE = 0.1


class Outcome(Enum):
    """What one request through an ``AdaptiveLimit`` came to."""

    SUCCESS = "success"  # the far side took it: the limit grows
    THROTTLED = "throttled"  # 429 / 503 / SlowDown: the limit shrinks
    OTHER = "other"  # any other failure says nothing about load


class AdaptiveLimit:
    """The adaptive limit of one origin (an API, or S3): AIMD concurrency, a shared
    pause and, after the first throttle, a learned pace.

    - Concurrency (CONTRACT §14): a throttle halves the allowed requests in flight
      (down to 1), each success adds one (up to ``ceiling``). Only a request
      started since the last decrease can decrease it again, so the 24 throttles
      of one burst halve it once, not 24 times (TCP halves once per window too).
    - Pause: a ``Retry-After`` holds every new request until then, not only the
      one that got it.
    - Pace: concurrency alone cannot find a rate limit (40 requests/s at 100 ms
      is 4 in flight; every success adding one overshoots within 100 ms), so a
      throttle also sets a pace of what the origin admitted over the window it
      names: requests started in the last ``Retry-After`` seconds minus those
      throttled, per second, once at least ``PACE_MIN_REFUSED_SHARE`` of them
      were refused (an odd 503 from a flaky server sets no pace). Requests
      then start evenly spaced (no burst after a pause) and each success speeds
      the pace by ``1/pace`` (about one request per second, every second), so
      it probes upward slowly, as TCP's congestion avoidance does.

    ``enabled=False`` only counts throttles (for the metric) and never waits.
    ``clock`` and ``sleep`` are injectable so the unit tests run on a fake clock.
    """

    def __init__(
        self,
        ceiling: int,
        *,
        enabled: bool = True,
        learn_pace: bool = True,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.ceiling = max(1, ceiling)
        self.enabled = enabled
        self.learn_pace = learn_pace
        self.limit = self.ceiling
        self.lowest = self.ceiling
        self.in_flight = 0
        self.throttled = 0
        self.paused_until = float("-inf")
        self.pace: float | None = None  # requests per second, once learned
        self._clock, self._sleep = clock, sleep
        self._next_start = float("-inf")
        self._decreased_at = float("-inf")
        self._round_started = 0  # requests started in the window before the decrease
        self._round_throttled = 0
        self._round_window = PACE_WINDOW_S
        self._starts: deque[float] = deque()
        self._lock = asyncio.Lock()
        self._freed: asyncio.Future[None] | None = None

    async def acquire(self) -> float:
        """Wait for a slot, the end of any pause and the pace; return the start time."""
        if not self.enabled:
            return self._clock()
        async with self._lock:  # one waiter at a time: the others queue FIFO behind it
            while True:
                if self.in_flight >= self.limit:
                    self._freed = asyncio.get_running_loop().create_future()
                    await self._freed
                    continue
                now = self._clock()
                wait = max(self.paused_until, self._next_start) - now
                if wait > 0:
                    await self._sleep(wait)
                    continue
                break
            self.in_flight += 1
            self._started(now)
            return now

    def release(
        self, started: float, outcome: Outcome, *, retry_after_s: float | None = None
    ) -> None:
        """Give back the slot taken at ``started`` and learn from how the request went."""
        if outcome is Outcome.THROTTLED:
            self.throttled += 1
        if not self.enabled:
            return
        self.in_flight = max(0, self.in_flight - 1)
        if outcome is Outcome.SUCCESS:
            self._succeeded()
        elif outcome is Outcome.THROTTLED:
            self._throttled(started, retry_after_s)
        if self._freed is not None and not self._freed.done() and self.in_flight < self.limit:
            self._freed.set_result(None)

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[Slot]:
        """``acquire`` … ``release`` around a block; the block sets the outcome on the slot."""
        slot = Slot(await self.acquire())
        try:
            yield slot
        finally:
            self.release(slot.started, slot.outcome, retry_after_s=slot.retry_after_s)

    def describe(self) -> str:
        """The current limit for a progress line: ``12/64`` plus the pace when learned."""
        text = f"{self.limit}/{self.ceiling}"
        if self.pace is not None:
            text += f" at {self.pace:.0f}/s"
        if self.paused_until > self._clock():
            text += " paused"
        return text

    def _started(self, now: float) -> None:
        if self.pace is not None:
            self._next_start = max(now, self._next_start) + 1 / self.pace
        if self.learn_pace:
            self._starts.append(now)
            horizon = now - max(self._round_window, PACE_WINDOW_S) * 4
            while self._starts and self._starts[0] < horizon:
                self._starts.popleft()

    def _succeeded(self) -> None:
        self.limit = min(self.ceiling, self.limit + 1)
        if self.pace is not None:
            self.pace += 1 / self.pace

    def _throttled(self, started: float, retry_after_s: float | None) -> None:
        now = self._clock()
        if retry_after_s is not None and retry_after_s > 0:
            self.paused_until = max(self.paused_until, now + retry_after_s)
        if started > self._decreased_at:  # sent under the current limit: a new round
            self.limit = max(1, self.limit // 2)
            self.lowest = min(self.lowest, self.limit)
            self._decreased_at = now
            self._round_window = retry_after_s if retry_after_s else PACE_WINDOW_S
            self._round_started = sum(1 for t in self._starts if t > now - self._round_window)
            self._round_throttled = 0
        self._round_throttled += 1  # later throttles of a round refine what was admitted
        if self.learn_pace and self._round_throttled >= PACE_MIN_REFUSED_SHARE * max(
            1, self._round_started
        ):
            admitted = max(0, self._round_started - self._round_throttled)
            self.pace = max(MIN_PACE_PER_S, admitted / self._round_window)
            # Start evenly from the end of the pause, not with a burst.
            self._next_start = max(self.paused_until, now)


@dataclass(slots=True)
class Slot:
    """One request's hold on an ``AdaptiveLimit``; the block records how it went."""

    started: float
    outcome: Outcome = Outcome.OTHER
    retry_after_s: float | None = None

    def succeeded(self) -> None:
        self.outcome = Outcome.SUCCESS

    def throttled(self, retry_after_s: float | None = None) -> None:
        self.outcome = Outcome.THROTTLED
        self.retry_after_s = retry_after_s


S3_ORIGIN = "s3"  # S3 writes share one limit, whatever the bucket's endpoint


def _figures(side: str, limit: AdaptiveLimit, *, lowest: int) -> dict[str, Any]:
    pace = None if limit.pace is None else round(limit.pace, 1)
    return {f"{side}_limit": limit.limit, f"{side}_lowest": lowest, f"{side}_pace_per_s": pace}


class OriginLimits:
    """One ``AdaptiveLimit`` per origin (scheme, host, port), made on first use."""

    def __init__(self, ceiling: int, *, enabled: bool = True) -> None:
        self.ceiling, self.enabled = ceiling, enabled
        self._by_origin: dict[str, AdaptiveLimit] = {}

    def for_origin(self, origin: str) -> AdaptiveLimit:
        limit = self._by_origin.get(origin)
        if limit is None:
            limit = self._by_origin[origin] = AdaptiveLimit(self.ceiling, enabled=self.enabled)
        return limit

    @property
    def throttled(self) -> int:
        """Throttles seen across every origin."""
        return sum(limit.throttled for limit in self._by_origin.values())

    def items(self) -> list[tuple[str, AdaptiveLimit]]:
        return list(self._by_origin.items())

    def snapshot(self) -> dict[str, Any]:
        """For the result and the summary line: where the limits stand and how low they went.

        ``api_*`` is the API's (the tightest when a run reached several origins),
        ``s3_*`` the S3 writes'; ``*_pace_per_s`` is null until a pace was learned.
        """
        api = [limit for origin, limit in self._by_origin.items() if origin != S3_ORIGIN]
        s3 = self._by_origin.get(S3_ORIGIN)
        out: dict[str, Any] = {"enabled": self.enabled}
        if api:
            tightest = min(api, key=lambda limit: limit.limit)
            out.update(_figures("api", tightest, lowest=min(limit.lowest for limit in api)))
        if s3 is not None:
            out.update(_figures("s3", s3, lowest=s3.lowest))
        return out

    def describe(self) -> str:
        """For a progress line: ``limit 32/64 at 40/s, 12 throttled`` (S3's once it moved)."""
        parts = [
            f"{'s3 limit' if origin == S3_ORIGIN else 'limit'} {limit.describe()}"
            for origin, limit in self._by_origin.items()
            if origin != S3_ORIGIN or limit.throttled
        ]
        return ", ".join([*parts, f"{self.throttled} throttled"])
