"""A healthy API that refuses a sprinkle of requests one by one (issue 19).

No rate limit at all: each item's fate is fixed by its ``n`` parameter, so a run's
counts are exact. Per 50 items: one answers its first request 429 + ``Retry-After:
1``, two answer their first 503 + ``Retry-After: 0``, one always 404 and two always
500 (hard failures); the other 44 answer 200 after ``delay_s``. Refusals come back
at once, as a real server's do, so they are the first answers of a burst.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import Counter

from aiohttp import web

from tests.support.faults import _json, _ok

PERIOD = 50
FIRST_429 = frozenset({0})  # 2%
FIRST_503 = frozenset({1, 2})  # 4%
ALWAYS_404 = frozenset({3})
ALWAYS_500 = frozenset({4, 5})  # with the 404s: 6% hard failures


def good(n: int) -> bool:
    """Whether item ``n`` ends written."""
    return n % PERIOD not in ALWAYS_404 | ALWAYS_500


class SparseRefusalsAPI:
    """``GET /v1/data?n=N`` as the module docstring says; counts what it answered."""

    def __init__(self, *, delay_s: float = 0.02) -> None:
        self.delay_s = delay_s
        self.hits: Counter[int] = Counter()
        self.answered: Counter[int] = Counter()  # by status
        self.app = web.Application()
        self.app.router.add_get("/v1/data", self._handle)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        n = int(request.query["n"])
        earlier, slot = self.hits[n], n % PERIOD
        self.hits[n] += 1
        if earlier == 0 and slot in FIRST_429:
            return self._answer(_json(429, {"error": "slow down"}), retry_after="1")
        if earlier == 0 and slot in FIRST_503:
            return self._answer(_json(503, {"error": "busy"}), retry_after="0")
        if slot in ALWAYS_404:
            return self._answer(_json(404, {"error": "no such item"}))
        if slot in ALWAYS_500:
            return self._answer(_json(500, {"error": "broken"}))
        await asyncio.sleep(self.delay_s)
        return self._answer(_ok(request))

    def _answer(self, response: web.Response, retry_after: str | None = None) -> web.Response:
        if retry_after is not None:
            response.headers["Retry-After"] = retry_after
        self.answered[response.status] += 1
        return response


MAX_SLOWDOWN_STREAK = 6  # so no item meets s3_max_attempts (10) by bad luck


def coin_streak(path: str, share: float = 0.5) -> int:
    """How many first writes of the object at ``path`` S3 refuses: at least k with
    probability ``share ** k`` (a fair coin per attempt for 0.5), about ``share`` of all
    writes; drawn from the item's index at the end of the key (``...-17.json``), so
    two runs of the same items meet the same refusals."""
    item = path.rsplit("-", 1)[-1]
    digest = hashlib.blake2b(item.encode(), digest_size=8).digest()
    draw = (int.from_bytes(digest, "big") + 0.5) / 2**64
    streak = 0
    while streak < MAX_SLOWDOWN_STREAK and draw < share ** (streak + 1):
        streak += 1
    return streak
