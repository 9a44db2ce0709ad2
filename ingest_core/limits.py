"""Shared limits of one run: the request rate, the memory budget and the adaptive
per-origin limit (CONTRACT §14)."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any

from ingest_core.errors import FetchError, HTTPStatusError, RetryAfterTooLong
from ingest_core.retry import RETRY_AFTER_CAP_S


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

    def try_reserve(self, nbytes: int) -> bool:
        """Take ``nbytes`` now if no one waits and they are free; never waits.

        For a holder that must not wait while holding: on False it gives back
        what it holds (spills it) before it waits with ``reserve``.
        """
        if self._waiters or self._available < nbytes:
            return False
        self._take(max(0, nbytes))
        return True

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
#
# How the anchors decide, and what we took (CONTRACT §14; figures in docs/PERFORMANCE.md):
# - botocore's adaptive retry mode (retries/adaptive.py, throttling.py) paces sends with a
#   token bucket whose rate follows CUBIC: on a throttle, rate = 0.7 x the measured rate;
#   then rate(t) = 0.4 (t - K)^3 + w_max, K = cbrt(w_max 0.3 / 0.4), back to w_max in K
#   seconds and beyond it ever faster. It reacts to every throttle, which is what made
#   a sprinkle of per-request 429s cost a run 18x its time: we keep the curve and the
#   0.7, not the trigger.
# - Google's SRE book (client-side throttling) acts in proportion to the share of
#   requests the backend refused over a window, never on one answer: our trigger.
# - Envoy's adaptive concurrency (gradient of latency) adapts concurrency from a
#   measured signal and re-measures; here the signal is the refused share, and a
#   pace that does not lower it (faults that do not depend on our rate) is dropped.

RECENT_RESPONSES = 60  # what "recent responses" means when judging an origin
MIN_EVIDENCE = 10  # fewer answers than this say nothing either way
# A rate limit refuses everything beyond it (the first burst at a 40/s API: 24 of 64);
# per-request refusals of a healthy API are a few percent: at 6% (the sparse
# run), 18 of 60 happens about once in a billion windows. Requests still in flight
# count as not refused (up to the window), so the fast 429s that come back first from
# a burst of 128 are judged against the 128 sent, not against each other.
OVER_LIMIT_SHARE = 0.3
CLEAR_SHARE = 0.1  # below this the evidence has stopped
BETA = 0.7  # multiplicative decrease, CUBIC's and botocore's
CUBIC_C = 0.4  # botocore's scale constant: back to w_max in K = cbrt(0.75 w_max) s
PACE_WINDOW_S = 1.0  # what "recently admitted" means when a throttle names no Retry-After
MIN_PACE_PER_S = 0.5
# A pace that has grown to twice the rate the origin refused at, with no evidence
# since, is dropped: whatever limit there was is not binding any more.
PACE_DROP_FACTOR = 2.0
# After a decrease, a refused share still at 70% of the one that caused it says the
# refusals do not depend on our rate (random 503s, S3 SlowDown on half the writes):
# pacing cannot help, so the pace is dropped and not learned again for a while.
UNRESPONSIVE_RATIO = 0.7
PACE_SUSPEND_S = 30.0


class Outcome(Enum):
    """What one request through an ``AdaptiveLimit`` came to."""

    SUCCESS = "success"  # the far side took it: the limit grows
    THROTTLED = "throttled"  # 429 / 503 / SlowDown: evidence that may shrink the limit
    OTHER = "other"  # any other failure says nothing about load


class Evidence:
    """The throttled share of an origin's recent responses."""

    def __init__(self) -> None:
        self._recent: deque[bool] = deque(maxlen=RECENT_RESPONSES)
        self._throttled = 0

    def add(self, throttled: bool) -> None:
        if len(self._recent) == self._recent.maxlen:
            self._throttled -= self._recent[0]
        self._recent.append(throttled)
        self._throttled += throttled

    def share(self, in_flight: int = 0) -> float:
        """Throttled answers over recent answers plus those still awaited (to the window)."""
        answers = len(self._recent)
        seen = max(answers, min(RECENT_RESPONSES, answers + in_flight))
        return self._throttled / seen if seen else 0.0

    def over_limit(self, in_flight: int = 0) -> bool:
        """True when the recent responses say the origin is over its limit."""
        return len(self._recent) >= MIN_EVIDENCE and self.share(in_flight) >= OVER_LIMIT_SHARE

    def clean(self) -> bool:
        """Not one recent answer was a throttle."""
        return self._throttled == 0

    def cleared(self) -> bool:
        return len(self._recent) >= MIN_EVIDENCE and self.share() < CLEAR_SHARE


@dataclass(slots=True)
class CubicPace:
    """A learned request rate: ``BETA * w_max`` at the decrease, back to ``w_max`` in
    ``k`` seconds along botocore's cubic, then beyond it ever faster."""

    w_max: float  # what the origin admitted when it last said it was over its limit
    since: float  # when
    k: float = 0.0

    def __post_init__(self) -> None:
        self.k = (self.w_max * (1 - BETA) / CUBIC_C) ** (1 / 3)

    def at(self, now: float) -> float:
        return max(MIN_PACE_PER_S, CUBIC_C * (now - self.since - self.k) ** 3 + self.w_max)

    def outgrown(self, now: float) -> bool:
        """Clean long enough for twice the refused rate: the limit is not binding."""
        return self.at(now) >= PACE_DROP_FACTOR * self.w_max


class AdaptiveLimit:
    """The adaptive limit of one origin (an API, or S3): concurrency, a shared pause and
    a learned pace, all moved only by evidence (CONTRACT §14).

    - Evidence: the throttled share of the last ``RECENT_RESPONSES`` responses is at
      least ``OVER_LIMIT_SHARE``. A single 429, or a few percent of them, is a
      per-request answer: the item that got it waits, nobody else.
    - Concurrency: with evidence, a throttle multiplies the allowed requests in flight
      by ``BETA`` (down to 1); each success adds one (up to ``ceiling``), so it
      doubles per round trip once answers are clean. Only a request started since
      the last decrease can decrease it again (one decrease per round).
    - Pause: with evidence and no pace yet, a ``Retry-After`` holds every new request
      until then, at most ``max_pause_s``; once paced, the pace slows everyone and only
      the refused requests wait their ``Retry-After``.
    - Pace: concurrency alone cannot find a rate limit (40 requests/s at 100 ms is 4
      in flight), so a decrease also sets a cubic pace from what the origin admitted
      over the window it names (requests started in the last ``Retry-After`` seconds
      minus those refused). Evidence must have held for ``pace_after_s`` first (S3:
      only when SlowDown is sustained). The pace is dropped once it outgrows the
      refused rate, or when a decrease did not lower the refused share.

    ``enabled=False`` only counts throttles (for the metric) and never waits.
    ``clock`` and ``sleep`` are injectable so the unit tests run on a fake clock.
    """

    def __init__(
        self,
        ceiling: int,
        *,
        enabled: bool = True,
        learn_pace: bool = True,
        pace_after_s: float = 0.0,
        max_pause_s: float = float("inf"),
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.ceiling = max(1, ceiling)
        self.enabled, self.learn_pace = enabled, learn_pace
        self.pace_after_s, self.max_pause_s = pace_after_s, max_pause_s
        self.limit = self.lowest = self.ceiling
        self.in_flight = self.throttled = 0
        self.paused_until = float("-inf")
        self.lowest_pace: float | None = None
        self.evidence = Evidence()
        self._cubic: CubicPace | None = None
        self._clock, self._sleep = clock, sleep
        self._next_start = float("-inf")
        self._decreased_at = float("-inf")
        self._evidence_since: float | None = None
        self._no_pace_until = float("-inf")
        self._round = _Round()
        self._starts: deque[float] = deque()  # when recent requests started
        self._refused: deque[float] = deque()  # when recently refused requests started
        self._lock = asyncio.Lock()
        self._queued = 0  # acquirers waiting for (or holding) the lock
        self._freed: asyncio.Future[None] | None = None

    @property
    def pace(self) -> float | None:
        """Requests per second while a pace is learned, else None."""
        return None if self._cubic is None else self._cubic.at(self._clock())

    async def acquire(self) -> float:
        """Wait for a slot, the end of any pause and the pace; return the start time."""
        if not self.enabled:
            return self._clock()
        now = self._clock()
        if not self._queued and self._may_start(now):
            # Nobody waiting and nothing to wait for: no lock, so the requests of a run
            # that is not throttled never queue behind each other's loop iterations.
            return self._take(now)
        self._queued += 1
        try:
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
                    return self._take(now)
        finally:
            self._queued -= 1

    def _may_start(self, now: float) -> bool:
        return self.in_flight < self.limit and now >= max(self.paused_until, self._next_start)

    def _take(self, now: float) -> float:
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
        self.evidence.add(outcome is Outcome.THROTTLED)
        if started > self._decreased_at:
            self._round.answered(outcome is Outcome.THROTTLED)
        if outcome is Outcome.SUCCESS:
            self._succeeded()
        elif outcome is Outcome.THROTTLED:
            self._throttled(started, retry_after_s)
        if self._freed is not None and not self._freed.done() and self.in_flight < self.limit:
            self._freed.set_result(None)

    def slot(self) -> SlotScope:
        """``acquire`` … ``release`` around a block; the block sets the outcome on the slot."""
        return SlotScope(self)

    def describe(self) -> str:
        """For a progress line: ``12/64 at 30/s (lowest 8, pace lowest 28/s)``: where the
        limit stands, the pace while one is learned, and how low both went."""
        text = f"{self.limit}/{self.ceiling}"
        pace = self.pace
        if pace is not None:
            text += f" at {pace:.0f}/s"
        lows = [f"lowest {self.lowest}"] if self.lowest < self.ceiling else []
        if self.lowest_pace is not None:
            lows.append(f"pace lowest {self.lowest_pace:.0f}/s")
        if lows:
            text += f" ({', '.join(lows)})"
        if self.paused_until > self._clock():
            text += " paused"
        return text

    def _started(self, now: float) -> None:
        pace = self.pace
        if pace is not None:
            self._next_start = max(now, self._next_start) + 1 / pace
        self._starts.append(now)
        horizon = now - max(self._round.window_s, PACE_WINDOW_S) * 4
        for starts in (self._starts, self._refused):
            while starts and starts[0] < horizon:
                starts.popleft()

    def _succeeded(self) -> None:
        self.limit = min(self.ceiling, self.limit + 1)
        now = self._clock()
        if self.evidence.cleared():
            self._evidence_since = None
        if self._cubic is not None and self._cubic.outgrown(now) and self.evidence.clean():
            self._cubic = None  # the evidence stopped: no limit is binding any more

    def _throttled(self, started: float, retry_after_s: float | None) -> None:
        now = self._clock()
        self._refused.append(started)
        if not self._over_limit():
            return  # a per-request answer: only the item that got it waits
        if self._evidence_since is None:
            self._evidence_since = now
        if retry_after_s and self._cubic is None:
            # Entering the over-limit state: hold everyone for the Retry-After. Once
            # paced, the pace's decrease is the origin-wide slowdown and only the
            # refused requests wait theirs (a pause on top cost 0.8 s of 10 against
            # a 40/s limit, with no fewer 429s).
            pause = min(retry_after_s, self.max_pause_s)
            self.paused_until = max(self.paused_until, now + pause)
        if started > self._decreased_at:  # sent under the current limit: a new round
            if self._round.answers < MIN_EVIDENCE:
                return  # the last decrease has not been judged yet
            self._decrease(now, retry_after_s)
        self._learn_pace(now)

    def _over_limit(self) -> bool:
        if self.evidence.over_limit(self.in_flight):
            return True
        # Once paced, the origin stays judged over its limit until its share clears
        # (hysteresis): the first refusals past the pace are the next round's evidence.
        return self._cubic is not None and not self.evidence.cleared()

    def _decrease(self, now: float, retry_after_s: float | None) -> None:
        if self._cubic is not None and self._round.unresponsive():
            # Slowing down did not lower the refused share: not a rate limit.
            self._cubic = None
            self._no_pace_until = now + PACE_SUSPEND_S
        self.limit = max(1, int(self.limit * BETA))
        self.lowest = min(self.lowest, self.limit)
        self._decreased_at = now
        window = retry_after_s if retry_after_s else PACE_WINDOW_S
        self._round = _Round(window, share_at_decrease=self.evidence.share())

    def _admitted_per_s(self) -> float | None:
        """Requests started in the window before the decrease, minus those refused, per
        s; None when fewer than ``MIN_EVIDENCE`` started: then our demand, not the
        origin, set the rate (the last few items of a run, most of them sleeping)."""
        since, until = self._decreased_at - self._round.window_s, self._decreased_at
        started = sum(1 for t in self._starts if since < t <= until)
        if started < MIN_EVIDENCE:
            return None
        refused = sum(1 for t in self._refused if since < t <= until)
        return max(0, started - refused) / self._round.window_s

    def _learn_pace(self, now: float) -> None:
        if not self.learn_pace or now < self._no_pace_until:
            return
        assert self._evidence_since is not None
        if now - self._evidence_since < self.pace_after_s:
            return
        admitted = self._admitted_per_s()
        if admitted is None:
            return  # too few requests in the window to say what the origin admits
        # Every throttle of the round refines what the window admitted.
        self._cubic = CubicPace(max(MIN_PACE_PER_S, admitted), self._decreased_at)
        pace = self._cubic.at(now)
        self.lowest_pace = pace if self.lowest_pace is None else min(self.lowest_pace, pace)
        # Start evenly from the end of the pause, not with a burst.
        self._next_start = max(self.paused_until, now)


@dataclass(slots=True)
class _Round:
    """The requests sent since the last decrease, and how they were answered."""

    window_s: float = PACE_WINDOW_S  # what the origin admitted is measured over this
    share_at_decrease: float = 0.0
    answers: int = 0  # to requests started after the decrease
    refused: int = 0

    def answered(self, refused: bool) -> None:
        self.answers += 1
        self.refused += refused

    def unresponsive(self) -> bool:
        """Was the refused share since the decrease still over the limit's, and no lower
        than the one that caused it? (A decrease made on the hysteresis' thin evidence,
        10-30%, is not judged: a few refusals after it say nothing.)"""
        if self.answers < MIN_EVIDENCE:
            return False
        share = self.refused / self.answers
        return share >= max(OVER_LIMIT_SHARE, UNRESPONSIVE_RATIO * self.share_at_decrease)


def refuse_long_retry_after(
    error: FetchError, *, left_s: float, max_retry_after_s: float
) -> FetchError:
    """``error``, or, when its ``Retry-After`` asks for more than the time left or
    ``max_retry_after_s``, a ``RetryAfterTooLong`` (kind ``throttled``) to fail the item
    with at once (CONTRACT §14): waiting would hold its worker and then fail it at the
    deadline anyway. Whether the whole origin pauses is ``AdaptiveLimit``'s call.
    """
    wait = error.retry_after_s if isinstance(error, HTTPStatusError) else None
    # A status that is not retried (a 404 with Retry-After, say) fails as what it is.
    if wait is None or not error.retryable or (wait <= left_s and wait <= max_retry_after_s):
        return error
    assert isinstance(error, HTTPStatusError)
    asked = f"at least {wait:.0f}" if wait >= RETRY_AFTER_CAP_S else f"{wait:g}"
    if left_s < max_retry_after_s:
        bound = f"the {max(0.0, left_s):.1f} s left before the deadline"
    else:
        bound = f"max_retry_after_s ({max_retry_after_s:g} s)"
    return RetryAfterTooLong(
        f"{error}; Retry-After asked to wait {asked} s, longer than {bound}",
        status=error.status or 0,
        retryable=False,
        retry_after_s=wait,
    )


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


class SlotScope:
    """``async with limit.slot() as slot``: a class, not an ``asynccontextmanager``.

    Every attempt of every page enters one; the generator-based version cost an async
    generator, its ``anext``/``athrow`` and contextlib's frames per attempt (the packed
    hot path, docs/PERFORMANCE.md round three). Same semantics: nothing is released
    when ``acquire`` is cancelled, and the slot is released whatever the block raised.
    """

    __slots__ = ("limit", "slot")

    def __init__(self, limit: AdaptiveLimit) -> None:
        self.limit = limit

    async def __aenter__(self) -> Slot:
        self.slot = Slot(await self.limit.acquire())
        return self.slot

    async def __aexit__(self, *exc: object) -> None:
        slot = self.slot
        self.limit.release(slot.started, slot.outcome, retry_after_s=slot.retry_after_s)


S3_ORIGIN = "s3"  # S3 writes share one limit, whatever the bucket's endpoint
# S3 answers SlowDown per prefix and per partition, often to a share of writes
# whatever their rate: a pace is learned only when SlowDown held for this long
# (CONTRACT §14), and dropped like any other when it does not lower the share. A
# run shorter than this never paces its writes; one throttled from end to end does.
S3_PACE_AFTER_S = 60.0


def _figures(side: str, limit: AdaptiveLimit, *, lowest: int) -> dict[str, Any]:
    pace, lowest_pace = limit.pace, limit.lowest_pace
    return {
        f"{side}_limit": limit.limit,
        f"{side}_lowest": lowest,
        f"{side}_pace_per_s": None if pace is None else round(pace, 1),
        f"{side}_pace_lowest_per_s": None if lowest_pace is None else round(lowest_pace, 1),
    }


class OriginLimits:
    """One ``AdaptiveLimit`` per origin (scheme, host, port), made on first use."""

    def __init__(
        self, ceiling: int, *, enabled: bool = True, max_pause_s: float = float("inf")
    ) -> None:
        self.ceiling, self.enabled, self.max_pause_s = ceiling, enabled, max_pause_s
        self._by_origin: dict[str, AdaptiveLimit] = {}

    def for_origin(self, origin: str) -> AdaptiveLimit:
        limit = self._by_origin.get(origin)
        if limit is None:
            limit = self._by_origin[origin] = AdaptiveLimit(
                self.ceiling,
                enabled=self.enabled,
                pace_after_s=S3_PACE_AFTER_S if origin == S3_ORIGIN else 0.0,
                max_pause_s=self.max_pause_s,
            )
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
        ``s3_*`` the S3 writes'; ``*_pace_per_s`` is the pace at the end (null when none
        is learned, or it was dropped), ``*_pace_lowest_per_s`` the slowest it went.
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
        """For a progress line: ``limit 32/64 at 40/s (lowest 8, pace lowest 28/s), 12
        throttled`` (S3's once it moved)."""
        parts = [
            f"{'s3 limit' if origin == S3_ORIGIN else 'limit'} {limit.describe()}"
            for origin, limit in self._by_origin.items()
            if origin != S3_ORIGIN or limit.throttled
        ]
        return ", ".join([*parts, f"{self.throttled} throttled"])
