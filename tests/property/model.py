"""What the generative test draws, and the reference model of what must come out.

A ``World`` is one example: a configuration (pagination type, totals, parallel
pages, ``max_pages``, packing, sink, concurrency, memory budget, deadline,
``adaptive``, the event loop) and a
fault schedule (API faults per item and page, S3 faults per operation). The model
answers, per item, how many pages the API serves for it, whether it must fail, and
which failure kinds are acceptable; the test compares the run against that.

The model is deliberately small: it knows how ``tests.support.paged_api.PagedAPI``
pages its records and what each fault does to one request, nothing about how the
engine is built.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from hypothesis import strategies as st

from tests.support.servers import Response

MIB = 1024 * 1024
SOURCE = "prop-src"
REQUEST_ID = "prop"
MARGIN_S = 1.0  # options.deadline_margin_s: its floor, so tight deadlines stay short
AMPLE_DEADLINE_S = 30.0
TIGHT_DEADLINE_S = (2.0, 3.5)
RETRY_AFTER_S = ("0", "1")

# pagination type -> (PagedAPI route, api_config.pagination without totals, records_path)
PAGINATIONS: dict[str | None, tuple[str, dict[str, Any], str | None]] = {
    None: ("cursor", {}, "items"),
    "link_header": ("link", {"type": "link_header"}, None),
    "json_link": ("json", {"type": "json_link", "next_path": "links.next"}, "items"),
    "cursor": (
        "cursor",
        {"type": "cursor", "cursor_path": "meta.next_cursor", "cursor_param": "after"},
        "items",
    ),
    "header_cursor": (
        "hcursor",
        {"type": "header_cursor", "cursor_header": "X-Next-Cursor", "cursor_param": "after"},
        "items",
    ),
    "offset": ("offset", {"type": "offset"}, "items"),
    "page_number": ("pages", {"type": "page_number"}, "items"),
}
# Where offset and page_number may read a total from (None: they do not).
TOTAL_SOURCES: dict[str, tuple[str | None, ...]] = {
    "offset": (None, "total_header", "total_path"),
    "page_number": (None, "total_header", "total_path", "total_pages_path"),
}
TOTAL_FIELDS = {
    "total_header": ("total_header", "X-Total-Count"),
    "total_path": ("total_path", "total"),
    "total_pages_path": ("total_pages_path", "total_pages"),
}
LINK_TYPES = frozenset({"link_header", "json_link"})

# API fault -> (what the API answers, kinds an item may fail with when it is fatal)
API_FAULTS: dict[str, tuple[Response | int, frozenset[str]]] = {
    "429": (Response(status=429), frozenset({"http_status", "throttled"})),
    "503": (Response(status=503), frozenset({"http_status", "throttled"})),
    "500": (Response(status=500), frozenset({"http_status"})),
    "reset": (Response(drop_mid_body=True), frozenset({"connection", "truncated"})),
    "truncated": (Response(short_body=True), frozenset({"truncated", "connection"})),
    "404": (404, frozenset({"http_status"})),  # not retried: fatal at once
}
PERMANENT_API_FAULTS = frozenset({"404"})
# S3 faults the run must ride out (retried, S3 applied nothing or everything), and
# those that fail the writes they hit for good.
S3_RETRIED = ("slowdown", "internal_error", "drop_connection", "drop_after_forward", "delay_answer")
# Faults whose retry the engine must count (CONTRACT §14): a dropped connection may be
# resent by aiohttp itself, unseen, so it is left out of the lower bound on retries.
S3_COUNTED_RETRIES = frozenset({"slowdown", "internal_error", "error_in_200"})
THROTTLE_STATUSES = frozenset({429, 503})
S3_FATAL = ("access_denied",)
S3_OPERATIONS = ("PutObject", "CreateMultipartUpload", "UploadPart", "CompleteMultipartUpload")
HELD_S = 1.0  # how long a held S3 request (delay_answer) waits


@dataclass(frozen=True, slots=True)
class ApiFault:
    """``fault`` answers the first ``times`` requests for page ``page`` of item ``item``."""

    item: int
    page: int
    fault: str
    times: int
    retry_after: str = "1"

    def response(self) -> Response | int:
        answer = API_FAULTS[self.fault][0]
        if isinstance(answer, Response) and answer.status == 429:
            return Response(status=429, headers={"Retry-After": self.retry_after})
        return answer


@dataclass(frozen=True, slots=True)
class S3Fault:
    """``fault`` answers the next ``times`` calls of ``operation`` at the proxy."""

    operation: str
    fault: str
    times: int


@dataclass(frozen=True, slots=True)
class World:
    """One drawn configuration and fault schedule."""

    pagination: str | None
    page_size: int
    totals: tuple[int, ...]  # records per item
    parallel: bool
    total_source: str | None
    max_pages: int | None
    pack: str | None  # None, "response" or "record"
    gzip: bool  # the pack's compression, or options.compress unpacked
    sink: str  # "lean", "sdk" or "local"
    concurrency: int
    memory_budget_mb: int
    deadline_s: float
    max_attempts: int
    pad: int  # characters of padding per record
    api_faults: tuple[ApiFault, ...] = ()
    away_after_page: dict[int, int] = field(default_factory=dict)  # item -> page
    s3_faults: tuple[S3Fault, ...] = ()
    pack_target_mb: int | None = None  # options.pack.target_mb; None = the default
    stop_after_s: float | None = None  # a stop (Ctrl-C) this long after the start
    disk_fault: bool = False  # local sink: the first object's path is a folder
    loop: str = "asyncio"  # the event loop: "asyncio" or "uvloop" (the CLI's, ingest_core/loops.py)
    adaptive: bool = True  # options.adaptive

    @property
    def items(self) -> int:
        return len(self.totals)

    @property
    def route(self) -> str:
        return PAGINATIONS[self.pagination][0]

    @property
    def records_path(self) -> str | None:
        return PAGINATIONS[self.pagination][2]

    @property
    def tight(self) -> bool:
        return self.deadline_s < AMPLE_DEADLINE_S

    @property
    def cut(self) -> bool:
        """Work in flight may be cut: a tight deadline, or a stop."""
        return self.tight or self.stop_after_s is not None

    def blocked_key(self) -> str:
        """The key ``disk_fault`` blocks: the first pack object, or item 0's first page."""
        if self.pack is not None:
            suffix = ".ndjson.gz" if self.gzip else ".ndjson"
            return f"{SOURCE}/{REQUEST_ID}-0-0{suffix}"
        page = "-0" if self.pagination is not None else ""
        return f"{SOURCE}/{REQUEST_ID}-0{page}.json" + (".gz" if self.gzip else "")

    def date(self, item: int) -> str:
        return f"d{item}"

    def pagination_config(self) -> dict[str, Any] | None:
        if self.pagination is None:
            return None
        config = dict(PAGINATIONS[self.pagination][1])
        if self.pagination == "offset":
            config["limit"] = self.page_size
        if self.pagination in TOTAL_SOURCES:
            config["parallel"] = self.parallel
            if self.total_source is not None:
                name, value = TOTAL_FIELDS[self.total_source]
                config[name] = value
        if self.max_pages is not None:
            config["max_pages"] = self.max_pages
        return config

    def event(self, endpoint: str) -> dict[str, Any]:
        """The event this world runs."""
        api: dict[str, Any] = {"endpoint": f"{endpoint}/{self.route}", "source_id": SOURCE}
        api["raw_bucket"] = "raw-bucket"
        if self.records_path is not None:
            api["records_path"] = self.records_path
        pagination = self.pagination_config()
        if pagination is not None:
            api["pagination"] = pagination
        options: dict[str, Any] = {
            "concurrency": self.concurrency,
            "max_attempts": self.max_attempts,
            "memory_budget_mb": self.memory_budget_mb,
            "part_size_mb": 5,
            "deadline_margin_s": MARGIN_S,
            "connect_timeout_s": 5,
            "read_timeout_s": 10,
            "adaptive": self.adaptive,
        }
        if self.pack is not None:
            compression = "gzip" if self.gzip else "none"
            options["pack"] = {"unit": self.pack, "compression": compression}
            if self.pack_target_mb is not None:
                options["pack"]["target_mb"] = self.pack_target_mb
        else:
            options["compress"] = self.gzip
        batch = [{"date": self.date(i)} for i in range(self.items)]
        return {"api_config": api, "batch": batch, "options": options, "request_id": REQUEST_ID}


# ------------------------------------------------------------------ the reference model


def pages_served(world: World, total: int) -> int:
    """How many pages the API serves for an item of ``total`` records, unbounded."""
    size, kind = world.page_size, world.pagination
    full = math.ceil(total / size)
    if kind is None:
        return 1
    if kind == "offset" and world.total_source is None:
        return total // size + 1  # ends on the first page shorter than the limit
    if kind == "page_number" and world.total_source is None:
        return full + 1  # ends on the first empty page
    return max(1, full)


def page_limit(world: World) -> int:
    return world.max_pages if world.max_pages is not None else 1000


@dataclass(frozen=True, slots=True)
class Expected:
    """What the model says of one item."""

    pages: int  # pages the API serves for it (when nothing stops the chain)
    must_fail: bool
    kinds: frozenset[str]  # acceptable failure kinds (empty: it must succeed)


def expected(world: World, item: int) -> Expected:
    """The model's verdict on ``item``, before deadlines and S3 faults."""
    pages = pages_served(world, world.totals[item])
    reachable = min(pages, page_limit(world))
    kinds: set[str] = set()
    if pages > page_limit(world):
        kinds.add("pagination")
    for fault in world.api_faults:
        if fault.item != item or fault.page >= reachable:
            continue
        if fault.fault in PERMANENT_API_FAULTS or fault.times >= world.max_attempts:
            kinds |= API_FAULTS[fault.fault][1]
    away = world.away_after_page.get(item)
    if away is not None and away + 1 < reachable:
        kinds.add("blocked")
    return Expected(pages, bool(kinds), frozenset(kinds))


def page_start(world: World, page: int) -> int:
    """The first record of ``page``, the key under which PagedAPI records it."""
    return page * world.page_size


# ------------------------------------------------------------------ strategies


@st.composite
def worlds(draw: st.DrawFn) -> World:
    """A configuration and a fault schedule (see the module docstring)."""
    pagination = draw(st.sampled_from(list(PAGINATIONS)))
    page_size = draw(st.integers(1, 4))
    total = st.one_of(
        st.sampled_from([0, 1, page_size, 2 * page_size]),  # empty, one, exact fits
        st.integers(0, 4 * page_size + 1),  # many
    )
    totals = tuple(draw(st.lists(total, min_size=1, max_size=4)))
    total_source = None
    if pagination in TOTAL_SOURCES:
        total_source = draw(st.sampled_from(TOTAL_SOURCES[pagination]))
    pack = draw(st.sampled_from([None, "response", "record"]))
    # A pack needs one part for the object it fills and one for bodies (CONTRACT §13).
    least_budget = 10 if pack else 5
    world = World(
        pagination=pagination,
        page_size=page_size,
        totals=totals,
        parallel=draw(st.booleans()),
        total_source=total_source,
        max_pages=draw(st.none() | st.integers(1, 4)) if pagination else None,
        pack=pack,
        gzip=draw(st.booleans()),
        sink=draw(st.sampled_from(["lean", "sdk", "local"])),
        concurrency=draw(st.integers(1, 6)),
        memory_budget_mb=draw(st.integers(least_budget, 24)),
        # One example in five under a deadline it may not meet: those take seconds.
        deadline_s=draw(st.floats(*TIGHT_DEADLINE_S))
        if draw(st.integers(0, 4)) == 0
        else AMPLE_DEADLINE_S,
        max_attempts=draw(st.integers(2, 4)),
        # Mostly small records; sometimes pages of ~0.25-1 MB to press on the budget.
        pad=draw(st.sampled_from([0, 0, 0, 2_000, 60_000, 250_000])),
        loop=draw(st.sampled_from(["asyncio", "uvloop"])),
        adaptive=draw(st.booleans()),
    )
    # Finding 5 (packed paginated chains of ~750 KB pages deadlocked on the budget) was
    # fixed by packing/staging.py: such worlds are drawn again.
    return draw(faults_for(world))


def faults_for(world: World) -> st.SearchStrategy[World]:
    """``world`` with a fault schedule on its items' pages and its S3 calls."""

    @st.composite
    def build(draw: st.DrawFn) -> World:
        api: list[ApiFault] = []
        away: dict[int, int] = {}
        for item in range(world.items):
            pages = min(pages_served(world, world.totals[item]), page_limit(world))
            for _ in range(draw(st.integers(0, 2))):
                api.append(
                    ApiFault(
                        item=item,
                        page=draw(st.integers(0, pages - 1)),
                        fault=draw(st.sampled_from(list(API_FAULTS))),
                        times=draw(st.integers(1, world.max_attempts)),
                        retry_after=draw(st.sampled_from(RETRY_AFTER_S)),
                    )
                )
            if world.pagination in LINK_TYPES and pages > 1 and draw(st.booleans()):
                away[item] = draw(st.integers(0, pages - 2))
        s3: list[S3Fault] = []
        if world.sink != "local":
            for _ in range(draw(st.integers(0, 2))):
                # A request held for good (``hang``) ends only at the hard stop (finding 2,
                # a packed run overrunning its deadline on one, is fixed: packed too).
                held = ("hang",) if world.tight else ()
                fault = draw(st.sampled_from(S3_RETRIED + S3_FATAL + ("error_in_200", *held)))
                operation = (
                    "CompleteMultipartUpload"
                    if fault == "error_in_200"
                    else draw(st.sampled_from(S3_OPERATIONS))
                )
                s3.append(S3Fault(operation, fault, draw(st.integers(1, 2))))
        local = world.sink == "local"
        return World(
            **{
                **{name: getattr(world, name) for name in World.__dataclass_fields__},
                "api_faults": _first_per_page(api),
                "away_after_page": away,
                "s3_faults": tuple(s3),
                # One example in eight is stopped early (Ctrl-C), mid-run or nearly done.
                "stop_after_s": draw(st.floats(0.05, 1.5))
                if draw(st.integers(0, 7)) == 0
                else None,
                # A disk error (the key's path is taken by a folder) on one local example in four.
                "disk_fault": local and draw(st.integers(0, 3)) == 0,
            }
        )

    return build()


def _first_per_page(faults: list[ApiFault]) -> tuple[ApiFault, ...]:
    """One fault per (item, page): two scripted on one page would just queue up."""
    seen: dict[tuple[int, int], ApiFault] = {}
    for fault in faults:
        seen.setdefault((fault.item, fault.page), fault)
    return tuple(seen.values())
