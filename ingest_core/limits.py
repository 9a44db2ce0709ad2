"""Shared limits of one run: the request rate and the memory budget."""

from __future__ import annotations

import asyncio
import time
from collections import deque


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
