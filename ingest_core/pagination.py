"""Pagination (CONTRACT §11): one small strategy per ``type`` behind one protocol.

A ``Paginator`` is pure: given what a page's response said (a ``PageView``),
it answers with the next request (a ``PageRequest``) or ``None`` to stop. It
never touches the network, so every type is tested without one. ``Chain`` adds
what every type shares: the stop on an empty page, loop detection, ``max_pages``
and the origin and SSRF checks on next links. ``make_chain`` is the one factory
from the config; the engine calls the chain and never branches on the type.

::

    Paginator (Protocol)
     ├── LinkHeaderPaginator     RFC 8288 Link: <...>; rel="next"
     ├── JsonLinkPaginator       next URL at next_path in the body
     ├── CursorPaginator         cursor at cursor_path -> cursor_param
     ├── HeaderCursorPaginator   cursor in the cursor_header response header
     ├── OffsetPaginator         offset_param = 0, limit, 2*limit, ...
     └── PageNumberPaginator     page_param = start_page, start_page + 1, ...
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal, Protocol, overload

from pydantic import BaseModel, ConfigDict, Field
from yarl import URL

from ingest_core.errors import BlockedError, PaginationError
from ingest_core.netguard import WELL_KNOWN_SCHEMES, NetPolicy, check_url
from ingest_core.records import NOT_ONE_VALUE

DEFAULT_MAX_PAGES = 1000
MAX_MAX_PAGES = 1_000_000
DEFAULT_LIMIT = 100
DEFAULT_START_PAGE = 1
PaginationType = Literal[
    "link_header", "json_link", "cursor", "header_cursor", "offset", "page_number"
]
# Which optional fields each type reads; any other field given is a mistake worth naming.
_FIELDS_BY_TYPE: Final[dict[str, frozenset[str]]] = {
    "link_header": frozenset(),
    "json_link": frozenset({"next_path"}),
    "cursor": frozenset({"cursor_path", "cursor_param"}),
    "header_cursor": frozenset({"cursor_header", "cursor_param"}),
    "offset": frozenset(
        {"offset_param", "limit_param", "limit", "total_path", "total_header", "parallel"}
    ),
    "page_number": frozenset(
        {"page_param", "start_page", "total_path", "total_pages_path", "total_header", "parallel"}
    ),
}
_REQUIRED_BY_TYPE: Final[dict[str, tuple[str, ...]]] = {
    "json_link": ("next_path",),
    "cursor": ("cursor_path",),
    "header_cursor": ("cursor_header",),
}
_COMMON_FIELDS = frozenset({"type", "max_pages"})
_PATH_FIELDS = ("next_path", "cursor_path", "total_path", "total_pages_path")


class PaginationConfig(BaseModel):
    """``api_config.pagination``: the table of CONTRACT §11."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    type: PaginationType
    next_path: str | None = None
    cursor_path: str | None = None
    cursor_param: str = Field("cursor", min_length=1)
    cursor_header: str | None = None
    offset_param: str = Field("offset", min_length=1)
    limit_param: str = Field("limit", min_length=1)
    limit: int = Field(DEFAULT_LIMIT, ge=1)
    page_param: str = Field("page", min_length=1)
    start_page: int = Field(DEFAULT_START_PAGE, ge=0)
    total_path: str | None = None
    total_pages_path: str | None = None
    total_header: str | None = None
    max_pages: int = Field(DEFAULT_MAX_PAGES, ge=1, le=MAX_MAX_PAGES)
    parallel: bool = True

    @property
    def paths(self) -> tuple[str, ...]:
        """The body paths this type reads (what a page keeps of its parsed body)."""
        return tuple(p for p in (getattr(self, n) for n in _PATH_FIELDS) if p is not None)

    def problems(self, prefix: str = "api_config.pagination") -> list[tuple[str, str]]:
        """What the types' own rules forbid, as ``(field, reason)`` pairs."""
        found: list[tuple[str, str]] = []
        for name in _REQUIRED_BY_TYPE.get(self.type, ()):
            if getattr(self, name) is None:
                found.append((f"{prefix}.{name}", f"required by type {self.type!r}"))
        allowed = _FIELDS_BY_TYPE[self.type] | _COMMON_FIELDS
        for name in sorted(self.model_fields_set - allowed):
            found.append((f"{prefix}.{name}", f"not used by type {self.type!r}"))
        for name in _PATH_FIELDS:
            path = getattr(self, name)
            if path is not None and (not path or any(not part for part in path.split("."))):
                found.append((f"{prefix}.{name}", "must be dot-separated names, e.g. 'meta.next'"))
        return found


# ------------------------------------------------------------------ the protocol


# The body was not read as one JSON value (larger than a part, NDJSON, text).
NOT_PARSED: Final = NOT_ONE_VALUE


@dataclass(frozen=True, slots=True)
class PageView:
    """What a paginator may look at in one page's response.

    Attributes:
        number: 0-based page number within the item's chain.
        url: the URL the page came from (after redirects): next links resolve against it.
        headers: the response headers.
        value: the body as one parsed JSON value, or ``NOT_PARSED``.
        records: records on the page (CONTRACT §6), None when not known.
    """

    number: int
    url: URL
    headers: Mapping[str, str]
    value: Any = NOT_PARSED
    records: int | None = None


@dataclass(frozen=True, slots=True)
class PageRequest:
    """What to fetch for one page.

    Attributes:
        url: a next link to fetch exactly as given; None means the endpoint with
            the item's params.
        params: pagination params set on top of the item's params (query or body).
        token: the next link or cursor that led here, for loop detection.
    """

    url: URL | None = None
    params: tuple[tuple[str, str | int], ...] = ()
    token: str | None = None


class Paginator(Protocol):
    """One pagination type: from a page's response, the next request or stop."""

    def first(self) -> PageRequest:
        """The request for page 0."""
        ...

    def next(self, page: PageView) -> PageRequest | None:
        """The request after ``page``, or None when the chain ends there."""
        ...

    def remaining(self, first: PageView) -> PlannedPages | None:
        """Every request after page 0 when the first page reveals them (parallel pages).

        None when they are not known up front; the chain then goes page by page.
        """
        ...


@dataclass(frozen=True, slots=True)
class PlannedPages(Sequence[PageRequest]):
    """Pages 1..``length`` of a chain whose total is known, each request built when read.

    A total is whatever the API says (``total_pages: 1000000000``): building every
    request up front cost gigabytes before ``max_pages`` was even checked, so the
    chain checks ``len()`` first and requests are made one at a time as they are sent.
    """

    length: int  # not ``count``: Sequence.count is a method
    build: Callable[[int], PageRequest]  # page number (1-based here) -> its request

    def __len__(self) -> int:
        return self.length

    @overload
    def __getitem__(self, at: int) -> PageRequest: ...
    @overload
    def __getitem__(self, at: slice) -> Sequence[PageRequest]: ...
    def __getitem__(self, at: int | slice) -> PageRequest | Sequence[PageRequest]:
        if isinstance(at, slice):
            return [self[i] for i in range(*at.indices(self.length))]
        if not -self.length <= at < self.length:
            raise IndexError(at)
        return self.build(1 + at % self.length)


# --------------------------------------------------------------------- helpers


def value_at(value: Any, path: str) -> Any:
    """The value at a dotted ``path``, or None when any step is missing."""
    for name in path.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(name)
    return value


def project(value: Any, paths: tuple[str, ...]) -> Any:
    """Only the parts of ``value`` at ``paths``, as nested dicts (``value_at`` reads it).

    A page keeps this instead of its whole parsed body, which may be many times
    the body's size and would otherwise live through the page's upload.
    """
    kept: dict[str, Any] = {}
    for path in paths:
        found = value_at(value, path)
        if found is None:
            continue
        *parents, leaf = path.split(".")
        node = kept
        for name in parents:
            node = node.setdefault(name, {})
        node[leaf] = found
    return kept


def _parsed(page: PageView, field_name: str, path: str) -> Any:
    if page.value is NOT_PARSED:
        raise PaginationError(
            f"page {page.number} is not one JSON value that fits in a part,"
            f" so {field_name} ({path}) cannot be read"
        )
    return value_at(page.value, path)


def _token_text(value: Any, what: str, page: PageView) -> str | None:
    """A next link or cursor as text; absent, null and empty all mean stop."""
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise PaginationError(
            f"{what} on page {page.number} is a {type(value).__name__}, not a string or number"
        )
    return str(value)


# More digits than any real total; also keeps int() far from its 4,300-digit limit.
MAX_TOTAL_DIGITS = 18


def _as_count(value: Any, what: str) -> int | None:
    """A total as a whole number: JSON integers, or ASCII digits in a string or header.

    ``str.isdigit`` accepts "²" and "٣", which ``int`` then refuses or reads as 3:
    only 0-9 count here.
    """
    if value is None or value == "":
        return None
    if isinstance(value, str):
        text = value.strip(" \t")
        if text.isascii() and text.isdigit():
            value = int(text) if len(text.lstrip("0")) <= MAX_TOTAL_DIGITS else -1
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 10**MAX_TOTAL_DIGITS:
        return value
    raise PaginationError(
        f"{what} is not a whole number >= 0 of at most {MAX_TOTAL_DIGITS} ASCII digits"
    )


def _pages_for(total: int, per_page: int) -> int:
    """ceil(total / per_page) in integers: a float would round or overflow on big totals."""
    return -(-total // per_page)


def _joined(headers: Mapping[str, str], name: str) -> str | None:
    """Every field ``name`` as one value: a server may send ``Link`` several times.

    RFC 9110 §5.3: fields of one name combine, in order, with ", ". aiohttp keeps
    them apart, and ``.get`` answers only the first (``rel="prev"``, say).
    """
    getall = getattr(headers, "getall", None)
    if getall is None:
        return headers.get(name)
    return ", ".join(getall(name, ())) or None


# A link, then its parameters; quoted values may hold ';' and ','.
_LINK_RE = re.compile(r'<([^>]*)>((?:\s*;\s*(?:[^;,"<]|"[^"]*")*)*)')
_REL_RE = re.compile(r"""rel\s*=\s*(?:"([^"]*)"|([^\s;,"]+))""", re.IGNORECASE)


def next_link(header: str | None) -> str | None:
    """The ``rel="next"`` target of an RFC 8288 ``Link`` header, or None."""
    if not header:
        return None
    for match in _LINK_RE.finditer(header):
        for rel in _REL_RE.finditer(match.group(2)):
            names = (rel.group(1) or rel.group(2) or "").lower().split()
            if "next" in names:
                return match.group(1).strip()
    return None


_WEB_SCHEMES = frozenset({"http", "https"})


def _link_request(page: PageView, link: str | None) -> PageRequest | None:
    if link is None:
        return None
    try:
        target = page.url.join(URL(link))
    except (ValueError, TypeError):
        raise BlockedError(f"next link on page {page.number} could not be parsed") from None
    if target.scheme not in _WEB_SCHEMES or not target.host:
        # mailto:, file:, data:, javascript: ... have no origin to compare: refuse by name.
        # The scheme is the API's text: named only when it is one we know.
        shown = f"{target.scheme}:" if target.scheme in WELL_KNOWN_SCHEMES else "another scheme"
        shown = shown if target.scheme else "a link without a scheme"
        raise BlockedError(
            f"next link on page {page.number} is not http(s) ({shown}); nothing was sent there"
        )
    return PageRequest(url=target, token=f"url:{target}")


# ----------------------------------------------------------------- the six types


@dataclass(slots=True)
class LinkHeaderPaginator:
    """``link_header``: follow the ``Link`` header's ``rel="next"`` URL."""

    def first(self) -> PageRequest:
        return PageRequest()

    def next(self, page: PageView) -> PageRequest | None:
        return _link_request(page, next_link(_joined(page.headers, "Link")))

    def remaining(self, first: PageView) -> PlannedPages | None:
        return None


@dataclass(slots=True)
class JsonLinkPaginator:
    """``json_link``: follow the URL at ``next_path`` in the body."""

    next_path: str

    def first(self) -> PageRequest:
        return PageRequest()

    def next(self, page: PageView) -> PageRequest | None:
        link = _token_text(_parsed(page, "next_path", self.next_path), "next link", page)
        return _link_request(page, link)

    def remaining(self, first: PageView) -> PlannedPages | None:
        return None


@dataclass(slots=True)
class CursorPaginator:
    """``cursor``: repeat the request with ``cursor_param`` = the value at ``cursor_path``."""

    cursor_path: str
    cursor_param: str

    def first(self) -> PageRequest:
        return PageRequest()

    def next(self, page: PageView) -> PageRequest | None:
        raw = _parsed(page, "cursor_path", self.cursor_path)
        return _cursor_request(self.cursor_param, _token_text(raw, "cursor", page))

    def remaining(self, first: PageView) -> PlannedPages | None:
        return None


@dataclass(slots=True)
class HeaderCursorPaginator:
    """``header_cursor``: the cursor comes in the ``cursor_header`` response header."""

    cursor_header: str
    cursor_param: str

    def first(self) -> PageRequest:
        return PageRequest()

    def next(self, page: PageView) -> PageRequest | None:
        raw = page.headers.get(self.cursor_header)
        return _cursor_request(self.cursor_param, _token_text(raw, "cursor", page))

    def remaining(self, first: PageView) -> PlannedPages | None:
        return None


def _cursor_request(param: str, cursor: str | None) -> PageRequest | None:
    if cursor is None:
        return None
    return PageRequest(params=((param, cursor),), token=f"cursor:{cursor}")


@dataclass(slots=True)
class _Totals:
    """Where ``offset`` and ``page_number`` may find a total."""

    total_path: str | None = None
    total_header: str | None = None
    total_pages_path: str | None = None

    def records(self, page: PageView) -> int | None:
        """The total number of records the page announces, if any."""
        if self.total_header is not None:
            found = _as_count(page.headers.get(self.total_header), f"header {self.total_header}")
            if found is not None:
                return found
        if self.total_path is not None:
            return _as_count(_parsed(page, "total_path", self.total_path), "total_path")
        return None

    def pages(self, page: PageView) -> int | None:
        """The total number of pages the page announces, if any."""
        if self.total_pages_path is None:
            return None
        return _as_count(_parsed(page, "total_pages_path", self.total_pages_path), "total_pages")


@dataclass(slots=True)
class OffsetPaginator:
    """``offset``: ``offset_param`` = 0, limit, 2*limit, ... with ``limit_param`` = limit."""

    offset_param: str
    limit_param: str
    limit: int
    totals: _Totals = field(default_factory=_Totals)

    def first(self) -> PageRequest:
        return self._at(0)

    def next(self, page: PageView) -> PageRequest | None:
        if page.records is not None and page.records < self.limit:
            return None
        total = self.totals.records(page)
        if total is not None and (page.number + 1) * self.limit >= total:
            return None
        return self._at(page.number + 1)

    def remaining(self, first: PageView) -> PlannedPages | None:
        total = self.totals.records(first)
        if total is None:
            return None
        if first.records is not None and first.records < self.limit:
            return PlannedPages(0, self._at)
        return PlannedPages(max(0, _pages_for(total, self.limit) - 1), self._at)

    def _at(self, number: int) -> PageRequest:
        return PageRequest(
            params=((self.offset_param, number * self.limit), (self.limit_param, self.limit))
        )


@dataclass(slots=True)
class PageNumberPaginator:
    """``page_number``: ``page_param`` = start_page, start_page + 1, ..."""

    page_param: str
    start_page: int
    totals: _Totals = field(default_factory=_Totals)
    page_size: int | None = None  # records on page 0, to turn a record total into pages

    def first(self) -> PageRequest:
        return self._at(0)

    def next(self, page: PageView) -> PageRequest | None:
        if page.number == 0:
            self.page_size = page.records
        pages = self._total_pages(page)
        if pages is not None and page.number + 1 >= pages:
            return None
        return self._at(page.number + 1)

    def remaining(self, first: PageView) -> PlannedPages | None:
        self.page_size = first.records
        pages = self._total_pages(first)
        if pages is None:
            return None
        return PlannedPages(max(0, pages - 1), self._at)

    def _total_pages(self, page: PageView) -> int | None:
        pages = self.totals.pages(page)
        if pages is not None:
            return pages
        total = self.totals.records(page)
        if total is None or not self.page_size:
            return None
        return _pages_for(total, self.page_size)

    def _at(self, number: int) -> PageRequest:
        return PageRequest(params=((self.page_param, self.start_page + number),))


def make_paginator(config: PaginationConfig) -> Paginator:
    """The strategy for ``config.type``, fresh for one chain (some keep state)."""
    totals = _Totals(config.total_path, config.total_header, config.total_pages_path)
    match config.type:
        case "link_header":
            return LinkHeaderPaginator()
        case "json_link":
            assert config.next_path is not None  # PaginationConfig.problems
            return JsonLinkPaginator(config.next_path)
        case "cursor":
            assert config.cursor_path is not None
            return CursorPaginator(config.cursor_path, config.cursor_param)
        case "header_cursor":
            assert config.cursor_header is not None
            return HeaderCursorPaginator(config.cursor_header, config.cursor_param)
        case "offset":
            return OffsetPaginator(config.offset_param, config.limit_param, config.limit, totals)
        case "page_number":
            return PageNumberPaginator(config.page_param, config.start_page, totals)
    raise AssertionError(f"unknown pagination type {config.type!r}")  # Literal rules it out


# ------------------------------------------------------------------- the chain


@dataclass(slots=True)
class Chain:
    """One item's chain of pages: the paginator plus the rules every type shares.

    Stops on a page with 0 records; fails with ``PaginationError`` on a next link
    or cursor seen before in the chain and beyond ``max_pages``; fails with
    ``BlockedError`` on a next link that leaves the endpoint's origin or is refused
    by the network policy, before anything is sent there.
    """

    paginator: Paginator
    max_pages: int
    parallel: bool
    origin: URL
    policy: NetPolicy
    seen: set[str] = field(default_factory=set)

    def first(self) -> PageRequest:
        """The request for page 0."""
        return self.paginator.first()

    def after(self, page: PageView) -> PageRequest | None:
        """The request after ``page`` (checked), or None when the chain ends."""
        self.seen.add(f"url:{page.url}")
        if page.records == 0:
            return None
        request = self.paginator.next(page)
        if request is None:
            return None
        if request.token is not None:
            if request.token in self.seen:
                raise PaginationError(
                    f"page {page.number} points back to a page already fetched (a loop)"
                )
            self.seen.add(request.token)
        if page.number + 1 >= self.max_pages:
            raise PaginationError(f"more than max_pages ({self.max_pages}) pages")
        return self._checked(request)

    def fan_out(self, first: PageView) -> PlannedPages | None:
        """With ``parallel``, every request after page 0 when the total is known.

        Checked against ``max_pages`` before a single request is built.
        """
        if not self.parallel or first.records == 0:
            return None
        rest = self.paginator.remaining(first)
        if rest is not None and 1 + len(rest) > self.max_pages:
            raise PaginationError(
                f"the total announces {1 + len(rest)} pages, more than max_pages ({self.max_pages})"
            )
        return rest

    def _checked(self, request: PageRequest) -> PageRequest:
        if request.url is None:
            return request
        if not request.url.absolute or request.url.origin() != self.origin:
            # The API wrote the link: name the refusal, not where it points.
            raise BlockedError(
                "next link leads to another origin; pages must stay on the endpoint's origin"
            )
        check_url(request.url, self.policy)
        return request


def make_chain(config: PaginationConfig, endpoint: str, policy: NetPolicy) -> Chain:
    """A fresh chain for one item."""
    return Chain(
        paginator=make_paginator(config),
        max_pages=config.max_pages,
        parallel=config.parallel,
        origin=URL(endpoint).origin(),
        policy=policy,
    )
