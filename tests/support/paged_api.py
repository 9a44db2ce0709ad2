"""A paginated API for functional tests: one data set per ``date``, every pagination type.

Each item (a ``date``) owns ``total`` records ``{"date": d, "n": i}``; every route
serves them in pages of ``page_size`` in its own style. Requests are recorded
(path, query, JSON body), and ``faults`` makes chosen pages answer an error.

Routes (all GET unless said):

- ``/link``: ``Link: <...>; rel="next"``, relative or (``absolute_links``) absolute
- ``/json``: ``{"items": [...], "links": {"next": URL or null}}``
- ``/cursor``: ``{"items": [...], "meta": {"next_cursor": C or null}}``
- ``/hcursor``: cursor in the ``X-Next-Cursor`` header
- ``/offset``: ``offset``/``limit`` params, ``{"items", "total"}`` and ``X-Total-Count``
- ``/pages``: ``page`` param (from 1), ``{"items", "total_pages", "total"}`` and ``X-Total-Count``
- ``/search`` (POST): the JSON body holds ``date`` and ``cursor``
- ``/loop``: a cursor that always points back to the same page
- ``/away``: a next link to ``away_origin`` (another origin)

For generative tests (tests/property): ``item_faults`` scripts faults per item and
page, any ``servers.Response`` included (a reset, a short body, a 429 with
``Retry-After``); ``away_after`` makes one item's next link leave the origin after a
given record; ``pad`` widens every record; ``served`` keeps the exact bytes of every
200 page, the reference a stored object is compared with; ``reset`` starts over.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any

from aiohttp import web

from tests.support.servers import Response, send_faulty

DEFAULT_TOTAL = 25
DEFAULT_PAGE_SIZE = 10


@dataclass
class Seen:
    """One request as the API saw it."""

    path: str
    query: dict[str, str]
    body: Any
    headers: dict[str, str]


@dataclass
class PagedAPI:
    """See the module docstring."""

    total: int = DEFAULT_TOTAL
    page_size: int = DEFAULT_PAGE_SIZE
    totals: dict[str, int] = field(default_factory=dict)  # per date, overriding ``total``
    announced_total: int | str | None = None  # what /offset and /pages claim, when it lies
    announced_pages: int | None = None  # the total_pages /pages claims, when it lies
    absolute_links: bool = False
    away_origin: str = "http://127.0.0.1:9"
    latency_s: float = 0.0
    # (path, start record) -> HTTP statuses to answer, one per hit, before serving normally
    faults: dict[tuple[str, int], list[int]] = field(default_factory=dict)
    seen: list[Seen] = field(default_factory=list)
    api_key: str | None = None  # when set, every request must carry it as ``api_key``
    bearer: Callable[[], str | None] | None = None  # when set, the valid Bearer token
    in_flight: int = 0
    max_in_flight: int = 0
    # (path, date, start record) -> what to answer, one per hit, before serving normally:
    # an HTTP status, or a Response (its status, headers and faults; a 2xx one sends
    # the page's own body, cut or short as it says).
    item_faults: dict[tuple[str, str, int], list[int | Response]] = field(default_factory=dict)
    away_after: dict[str, int] = field(default_factory=dict)  # date -> record; link leaves
    pad: int = 0  # characters of padding in every record (bigger pages)
    # (path, date, start record) -> the bytes of the last 200 answer for that page
    served: dict[tuple[str, str, int], bytes] = field(default_factory=dict)
    fault_statuses: list[int] = field(default_factory=list)  # of item_faults answered

    def reset(self, **changes: Any) -> None:
        """Back to the defaults (logs and faults cleared), then apply ``changes``.

        The running app keeps serving: routes call this object's methods, so a
        server started once serves every example of a generative test.
        """
        for spec in fields(self):
            if spec.name not in changes:
                default = spec.default_factory() if callable(spec.default_factory) else spec.default
                setattr(self, spec.name, default)
        for name, value in changes.items():
            setattr(self, name, value)

    @property
    def app(self) -> web.Application:
        app = web.Application()
        for name in ("link", "json", "cursor", "hcursor", "offset", "pages", "loop", "away"):
            app.router.add_get(f"/{name}", self._handle)
        app.router.add_post("/search", self._handle)
        return app

    def hits(self, path: str) -> int:
        return sum(1 for s in self.seen if s.path == path)

    def records_of(self, date: str) -> list[dict[str, Any]]:
        total = self.totals.get(date, self.total)
        if self.pad:
            return [{"date": date, "n": i, "pad": "x" * self.pad} for i in range(total)]
        return [{"date": date, "n": i} for i in range(total)]

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.json() if request.method == "POST" else None
        query = dict(request.query)
        self.seen.append(Seen(request.path, query, body, dict(request.headers)))
        if self.latency_s:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            try:
                await asyncio.sleep(self.latency_s)
            finally:
                self.in_flight -= 1
        params = {**query, **(body or {})}
        refused = self._refused(params, request.headers.get("Authorization"))
        if refused is not None:
            return refused
        route = request.path.strip("/")
        start = self._start(route, params)
        pending = self.faults.get((request.path, start))
        if pending:
            return web.Response(status=pending.pop(0), text="fault")
        date = str(params.get("date", ""))
        records = self.records_of(date)
        size = int(params.get("limit", self.page_size)) if route == "offset" else self.page_size
        page = records[start : start + size]
        more = start + size < len(records)
        answer = getattr(self, f"_{route}")(request, params, page, start + size, more, records)
        scripted = self.item_faults.get((request.path, date, start))
        if scripted:
            return await self._fault(request, scripted.pop(0), answer)
        if answer.status == 200 and isinstance(answer.body, bytes):
            self.served[(request.path, date, start)] = answer.body
        return answer

    async def _fault(
        self, request: web.Request, fault: int | Response, page: web.Response
    ) -> web.StreamResponse:
        self.fault_statuses.append(fault if isinstance(fault, int) else fault.status)
        if isinstance(fault, int):
            return web.Response(status=fault, text="fault")
        body = page.body if 200 <= fault.status < 300 and isinstance(page.body, bytes) else b"{}"
        return await send_faulty(request, fault, body)

    def _refused(self, params: dict[str, Any], authorization: str | None) -> web.Response | None:
        if self.api_key is not None and params.get("api_key") != self.api_key:
            return web.Response(status=401, text="bad api key")
        if self.bearer is not None and authorization != f"Bearer {self.bearer()}":
            return web.Response(status=401, text="bad token")
        return None

    def _start(self, route: str, params: dict[str, Any]) -> int:
        if route == "offset":
            return int(params.get("offset", 0))
        if route == "pages":
            return (int(params.get("page", 1)) - 1) * self.page_size
        if route in ("loop", "away"):
            return 0
        return int(params.get("after", params.get("cursor", 0)))

    def _next_link(self, request: web.Request, after: int) -> str:
        date = request.query.get("date", "")
        if self.away_after.get(date) == after:
            return f"{self.away_origin}/steal?date={date}&after={after}"
        query = f"date={date}&after={after}"
        path = f"{request.path}?{query}"
        return f"{request.scheme}://{request.host}{path}" if self.absolute_links else path

    def _link(
        self, request: web.Request, _p: Any, page: list[Any], after: int, more: bool, _r: Any
    ) -> web.Response:
        headers = {"Link": f'<{self._next_link(request, after)}>; rel="next"'} if more else {}
        return web.json_response(page, headers=headers)

    def _json(
        self, request: web.Request, _p: Any, page: list[Any], after: int, more: bool, _r: Any
    ) -> web.Response:
        link = self._next_link(request, after) if more else None
        return web.json_response({"items": page, "links": {"next": link}})

    def _cursor(
        self, _q: web.Request, _p: Any, page: list[Any], after: int, more: bool, _r: Any
    ) -> web.Response:
        return web.json_response(
            {"items": page, "meta": {"next_cursor": str(after) if more else None}}
        )

    def _hcursor(
        self, _q: web.Request, _p: Any, page: list[Any], after: int, more: bool, _r: Any
    ) -> web.Response:
        headers = {"X-Next-Cursor": str(after)} if more else {}
        return web.json_response({"items": page}, headers=headers)

    def _search(
        self, q: web.Request, p: Any, page: list[Any], after: int, more: bool, r: Any
    ) -> web.Response:
        return self._cursor(q, p, page, after, more, r)

    def _offset(
        self, _q: web.Request, _p: Any, page: list[Any], _a: int, _m: bool, records: list[Any]
    ) -> web.Response:
        total = len(records) if self.announced_total is None else self.announced_total
        return web.json_response(
            {"items": page, "total": total}, headers={"X-Total-Count": str(total)}
        )

    def _pages(
        self, _q: web.Request, _p: Any, page: list[Any], _a: int, _m: bool, records: list[Any]
    ) -> web.Response:
        total = len(records) if self.announced_total is None else self.announced_total
        pages = self.announced_pages
        if pages is None:
            pages = math.ceil(int(total) / self.page_size)
        return web.json_response(
            {"items": page, "total_pages": pages, "total": total},
            headers={"X-Total-Count": str(total)},
        )

    def _loop(
        self, _q: web.Request, _p: Any, page: list[Any], _a: int, _m: bool, _r: Any
    ) -> web.Response:
        return web.json_response({"items": page, "meta": {"next_cursor": "again"}})

    def _away(
        self, _q: web.Request, _p: Any, page: list[Any], _a: int, _m: bool, _r: Any
    ) -> web.Response:
        headers = {"Link": f'<{self.away_origin}/steal?x=1>; rel="next"'}
        return web.json_response(page, headers=headers)


def page_body(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Records as a JSON round trip (what a stored page parses back to)."""
    return json.loads(json.dumps(records))
