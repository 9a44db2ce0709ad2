"""The byte budget and the token bucket."""

from __future__ import annotations

import asyncio
import time

import pytest

from ingest_core.limits import ByteBudget, TokenBucket

pytestmark = pytest.mark.timeout(20)


async def test_budget_blocks_until_released_and_never_exceeds_capacity() -> None:
    budget = ByteBudget(100)
    assert await budget.reserve(60) == 60
    waiter = asyncio.create_task(budget.reserve(60))
    await asyncio.sleep(0.01)
    assert not waiter.done()
    budget.release(60)
    assert await waiter == 60
    assert budget.peak_reserved <= 100


async def test_budget_clamps_to_capacity_and_is_first_come_first_served() -> None:
    budget = ByteBudget(100)
    assert await budget.reserve(500) == 100
    order: list[str] = []

    async def take(name: str, n: int) -> None:
        await budget.reserve(n)
        order.append(name)

    big = asyncio.create_task(take("big", 100))
    await asyncio.sleep(0)
    small = asyncio.create_task(take("small", 1))
    await asyncio.sleep(0)
    budget.release(100)
    await asyncio.wait_for(big, 1)
    assert order == ["big"]  # the small one may not jump the queue
    budget.release(100)
    await asyncio.wait_for(small, 1)


async def test_cancelled_waiter_gives_nothing_away() -> None:
    budget = ByteBudget(10)
    await budget.reserve(10)
    waiter = asyncio.create_task(budget.reserve(5))
    await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    budget.release(10)
    assert await budget.reserve(10) == 10


async def test_token_bucket_paces_requests() -> None:
    bucket = TokenBucket(20)
    started = time.monotonic()
    for _ in range(30):
        await bucket.acquire()
    # 20 burst tokens, then 10 more at 20/s: about 0.5 s
    assert 0.35 < time.monotonic() - started < 2.0


async def test_zero_rate_means_unlimited() -> None:
    bucket = TokenBucket(0)
    started = time.monotonic()
    for _ in range(10_000):
        await bucket.acquire()
    assert time.monotonic() - started < 1.0
