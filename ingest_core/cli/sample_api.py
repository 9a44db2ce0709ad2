"""The demo's embedded API: daily weather observations, served by aiohttp on 127.0.0.1.

``GET /v1/observations?date=YYYY-MM-DD`` answers with 24 hourly records::

    {"date": "2024-01-01", "station": "DEMO-01",
     "data": {"items": [{"ts": "2024-01-01T00:00:00Z", "temperature_c": 4.2, ...}, ...]}}

It behaves like a real API on a so-so day: every answer takes 20-200 ms (a few
take 400 ms), some days answer ``503`` with ``Retry-After`` on their first hits
and then recover, and one day is permanently ``404``. Everything is seeded by
the date, so every demo run sees the same data.

``GET /v1/readings?date=YYYY-MM-DD&page=N`` serves the same 24 records in pages
of 8 (``page`` from 1), the way paginated APIs do: ``{"data": {"items": [...]},
"meta": {"page": N, "total_pages": 3}}`` plus a ``Link: <...>; rel="next"`` header
on every page but the last. It backs the paginated examples (``--paginate``).

It also runs on its own, for trying ``backfill`` and ``run`` locally
(docs/CLI.md)::

    python -m ingest_core.cli.sample_api --port 8765 --not-found 2024-02-14
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
from collections import Counter
from collections.abc import Iterable
from datetime import date
from types import TracebackType
from typing import Any, Self

from aiohttp import web

LOOPBACK = "127.0.0.1"
PATH = "/v1/observations"
PAGED_PATH = "/v1/readings"
PAGE_SIZE = 8
STATION = "DEMO-01"
RECORDS_PER_DAY = 24
LATENCY_S = (0.02, 0.2)
SLOW_LATENCY_S = 0.4
SLOW_ONE_IN = 12
RETRY_AFTER_S = 1


class SampleAPI:
    """The sample API, started on a free port of 127.0.0.1 in the running loop.

    Use as ``async with SampleAPI(...) as api:`` and call ``api.url``.
    """

    def __init__(
        self,
        *,
        not_found_days: Iterable[str] = (),
        flaky_days: Iterable[str] = (),
        flaky_hits: int = 1,
        latency: bool = True,
        port: int = 0,
    ) -> None:
        """Args:
        not_found_days: dates answered 404 on every hit.
        flaky_days: dates answered 503 with ``Retry-After`` on their first hits.
        flaky_hits: how many hits of a flaky day fail before it recovers.
        latency: sleep a realistic, seeded time before each answer.
        port: the port to listen on; 0 picks a free one.
        """
        self.not_found_days = frozenset(not_found_days)
        self.flaky_days = frozenset(flaky_days)
        self.flaky_hits = flaky_hits
        self.latency = latency
        self.hits: Counter[str] = Counter()
        self._runner: web.AppRunner | None = None
        self._listen_port = port
        self._port: int | None = None

    @property
    def url(self) -> str:
        """The endpoint to fetch."""
        if self._port is None:
            raise RuntimeError("sample API not started")
        return f"http://{LOOPBACK}:{self._port}{PATH}"

    @property
    def paged_url(self) -> str:
        """The paginated endpoint (``page``, ``meta.total_pages``, ``Link``)."""
        return self.url.removesuffix(PATH) + PAGED_PATH

    async def __aenter__(self) -> Self:
        app = web.Application()
        app.router.add_get(PATH, self._observations)
        app.router.add_get(PAGED_PATH, self._readings)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, LOOPBACK, self._listen_port)
        await site.start()
        self._port = self._runner.addresses[0][1]
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _observations(self, request: web.Request) -> web.Response:
        day = request.query.get("date", "")
        hit = self.hits[day]
        self.hits[day] += 1
        rng = random.Random(f"{day}:{hit}")
        if self.latency:
            await asyncio.sleep(_latency(rng))
        try:
            parsed = date.fromisoformat(day)
        except ValueError:
            return web.json_response({"error": "date must be YYYY-MM-DD"}, status=400)
        if day in self.not_found_days:
            return web.json_response({"error": f"no observations for {day}"}, status=404)
        if day in self.flaky_days and hit < self.flaky_hits:
            return web.json_response(
                {"error": "temporarily overloaded"},
                status=503,
                headers={"Retry-After": str(RETRY_AFTER_S)},
            )
        return web.json_response(observations(parsed))

    async def _readings(self, request: web.Request) -> web.Response:
        """One page of a day's readings; a day's failures behave as on /v1/observations."""
        page_text = request.query.get("page", "1")
        if not page_text.isdigit() or int(page_text) < 1:
            return web.json_response({"error": "page must be 1 or more"}, status=400)
        answer = await self._observations(request)
        if answer.status != 200:
            return answer
        page = int(page_text)
        items = observations(date.fromisoformat(request.query["date"]))["data"]["items"]
        pages = -(-len(items) // PAGE_SIZE)
        body = {
            "data": {"items": items[(page - 1) * PAGE_SIZE : page * PAGE_SIZE]},
            "meta": {"page": page, "total_pages": pages},
        }
        headers = {}
        if page < pages:
            following = request.rel_url.update_query(page=page + 1)
            headers["Link"] = f'<{following}>; rel="next"'
        return web.json_response(body, headers=headers)


def _latency(rng: random.Random) -> float:
    if rng.randrange(SLOW_ONE_IN) == 0:
        return SLOW_LATENCY_S
    return rng.uniform(*LATENCY_S)


def observations(day: date) -> dict[str, Any]:
    """The body served for ``day``: 24 seeded hourly records."""
    rng = random.Random(day.isoformat())
    base = 10 + 12 * rng.random()
    items = [
        {
            "ts": f"{day.isoformat()}T{hour:02d}:00:00Z",
            "temperature_c": round(base + 4 * rng.uniform(-1, 1), 1),
            "humidity_pct": rng.randrange(35, 95),
            "wind_kmh": round(rng.uniform(0, 40), 1),
        }
        for hour in range(RECORDS_PER_DAY)
    ]
    return {"date": day.isoformat(), "station": STATION, "data": {"items": items}}


def main(argv: list[str] | None = None) -> int:
    """Serve the sample API on 127.0.0.1 until Ctrl-C."""
    from ingest_core.cli.common import run_async

    parser = argparse.ArgumentParser(
        prog="python -m ingest_core.cli.sample_api",
        description="Serve the demo's sample API on 127.0.0.1 until Ctrl-C.",
    )
    parser.add_argument("--port", type=int, default=8765, help="port (default: 8765)")
    parser.add_argument(
        "--not-found",
        action="append",
        default=[],
        metavar="DATE",
        help="a date answered 404 every time (repeatable)",
    )
    parser.add_argument(
        "--flaky",
        action="append",
        default=[],
        metavar="DATE",
        help="a date answered 503 + Retry-After on its first hits (repeatable)",
    )
    parser.add_argument(
        "--flaky-hits",
        type=int,
        default=1,
        metavar="N",
        help="how many hits of a flaky date fail (default: 1)",
    )
    parser.add_argument("--no-latency", action="store_true", help="answer at once")
    args = parser.parse_args(argv)
    api = SampleAPI(
        not_found_days=args.not_found,
        flaky_days=args.flaky,
        flaky_hits=args.flaky_hits,
        latency=not args.no_latency,
        port=args.port,
    )
    return run_async(lambda stop: _serve(api, stop), message="stopping the sample API")


async def _serve(api: SampleAPI, stop: asyncio.Event) -> int:
    async with api:
        print(f"sample API at {api.url}?date=YYYY-MM-DD (Ctrl-C to stop)", flush=True)
        print(f"paginated: {api.paged_url}?date=YYYY-MM-DD&page=N", flush=True)
        await stop.wait()
    print(f"served {sum(api.hits.values())} requests", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
