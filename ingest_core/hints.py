"""What a page says about pagination, and warnings for runs that look wrong (CONTRACT §17).

Pure: everything here reads a ``PageView`` (URL, headers, the kept part of the
parsed body, records) and never touches the network, so it is tested without one.

Three users:

- ``keep``: what a page keeps of its parsed body so the readings below can be made
  after the body is gone (a few small fields, never the records).
- ``readings``: every sign on one page that more pages exist: a ``Link`` header
  with ``rel="next"``, a next-URL field (``next``, ``next_url``, ``links.next.href``),
  a cursor field (``next``, ``nextPageToken``, ``meta.next_cursor``), a total of
  pages or of records larger than the page holds. Each reading names the
  ``api_config.pagination`` that would follow it, and the CLI flags for that.
- ``RunHints``: watches a run's pages and items and turns what it saw into the
  result's ``warnings``: every item returned 0 records, or responses carried a next
  page while pagination was off. A warning never fails the run.

``choose`` (for ``--paginate auto``) picks one paginator from page 0's readings,
the way dlt's rest_api detector does (Link header first, then a next URL in the
body, then a total of pages, then a cursor), but refuses when two readings point
at different next pages instead of taking the first.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from yarl import URL

from ingest_core.pagination import NOT_PARSED, PageView, PaginationConfig, next_link, project
from ingest_core.results import ItemResult, ItemStatus

# Depth of nested objects searched for fields (links.next.href is depth 2).
MAX_DEPTH: Final = 2
MAX_KEYS_READ: Final = 512  # keys looked at per body, all levels together
MAX_KEPT_TEXT: Final = 2048  # a next link or cursor longer than this is not a hint worth keeping
# Keys (lower case, without "_" and "-") that hold a next link or cursor.
CURSOR_KEYS: Final = frozenset({"cursor", "nextcursor", "continuationtoken", "pagetoken"})
URL_SUBKEYS: Final = ("href", "url")
TOTAL_PAGES_KEYS: Final = frozenset({"totalpages", "pagecount", "numpages", "lastpage"})
TOTAL_RECORDS_KEYS: Final = frozenset(
    {"total", "totalcount", "totalresults", "totalrecords", "totalitems", "totalhits"}
)
TOTAL_HEADERS: Final = ("X-Total-Count", "X-Total", "Total-Count")

Pagination = dict[str, Any]


def _norm(key: str) -> str:
    return key.lower().replace("_", "").replace("-", "")


def _is_next_key(key: str) -> bool:
    name = _norm(key)
    return name.startswith("next") or name in CURSOR_KEYS


def _is_scalar_token(value: Any) -> bool:
    if isinstance(value, bool) or value is None or value == "":
        return False
    return isinstance(value, int) or (isinstance(value, str) and len(value) <= MAX_KEPT_TEXT)


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


# ------------------------------------------------------------------------ keep


def keep(value: Any) -> dict[str, Any]:
    """The small part of a parsed body the readings need: next links, cursors, totals.

    Nested objects are kept down to ``MAX_DEPTH`` levels, and only on the way to
    such a field, so a page holds a few bytes, not its records, while it is written.
    At most ``MAX_KEYS_READ`` keys are looked at: an envelope has a few, and a body
    that is one big map of records must not cost a second walk.
    """
    return _keep(value, 0, [MAX_KEYS_READ]) if isinstance(value, dict) else {}


def _keep(node: Mapping[str, Any], depth: int, budget: list[int]) -> dict[str, Any]:
    kept: dict[str, Any] = {}
    for key, value in node.items():
        budget[0] -= 1
        if budget[0] < 0:
            break
        if not isinstance(key, str):
            continue
        found = _kept(key, value)
        if found is not None:
            kept[key] = found
        elif isinstance(value, dict) and depth < MAX_DEPTH:
            inner = _keep(value, depth + 1, budget)
            if inner:
                kept[key] = inner
    return kept


def _kept(key: str, value: Any) -> Any:
    """What to keep of one field, or None for nothing (a null next link says nothing more)."""
    name = _norm(key)
    if _is_next_key(key) and _is_scalar_token(value):
        return value
    if _is_next_key(key) and isinstance(value, dict):
        links = {k: value[k] for k in URL_SUBKEYS if _is_scalar_token(value.get(k))}
        return links or None
    if (name in TOTAL_PAGES_KEYS or name in TOTAL_RECORDS_KEYS) and _is_count(value):
        return value
    return None


def page_keep(pagination: PaginationConfig | None) -> Callable[[Any], Any]:
    """What a page keeps of its parsed body: the paths its paginator reads, or,
    without pagination, what ``keep`` takes for the warnings."""
    if pagination is None:
        return keep
    return functools.partial(project, paths=pagination.paths)


# -------------------------------------------------------------------- readings


@dataclass(frozen=True, slots=True)
class Reading:
    """One sign on a page that another page follows.

    Attributes:
        source: where it was seen, for people (``Link header``, ``body field next_url``).
        pagination: the ``api_config.pagination`` that would follow it.
        url: the next page's URL, resolved against the page (links only).
        token: the cursor's value (cursor fields only).
        more: whether the page says more pages follow (a total may say there are none).
    """

    source: str
    pagination: Pagination
    url: str | None = None
    token: str | None = None
    more: bool = True

    @property
    def flags(self) -> str:
        """The CLI flags that set ``pagination`` (``--paginate json_link --next-path next``)."""
        return pagination_flags(self.pagination)


def pagination_flags(pagination: Mapping[str, Any]) -> str:
    """``{"type": "cursor", "cursor_path": "a.b"}`` -> ``--paginate cursor --cursor-path a.b``.

    The CLI's pagination flags are the field names with dashes (a unit test holds
    the CLI to this), so the library can name them without importing the CLI.
    """
    parts = [f"--paginate {pagination['type']}"]
    for name, value in pagination.items():
        if name != "type":
            parts.append(f"--{name.replace('_', '-')} {value}")
    return " ".join(parts)


def readings(page: PageView) -> list[Reading]:
    """Every sign on ``page`` that more pages exist (links, cursors, totals), in dlt's order."""
    found = _link_header(page)
    if page.value is not NOT_PARSED and isinstance(page.value, dict):
        fields = list(_fields(page.value, ()))
        found += [r for r in (_from_field(page, path, v) for path, v in fields) if r is not None]
    found += _header_totals(page)
    return found


def _link_header(page: PageView) -> list[Reading]:
    link = next_link(page.headers.get("Link"))
    if not link:
        return []
    target = _resolve(page.url, link)
    return [Reading('Link header rel="next"', {"type": "link_header"}, url=target)]


def _fields(node: Mapping[str, Any], path: tuple[str, ...]) -> Any:
    """``(dotted path, value)`` of every next, cursor and total field, shallowest first."""
    nested = []
    for key, value in node.items():
        if not isinstance(key, str):
            continue
        here = (*path, key)
        if isinstance(value, dict) and _is_next_key(key):
            sub = next((k for k in URL_SUBKEYS if isinstance(value.get(k), str)), None)
            if sub is not None:
                yield ".".join((*here, sub)), value[sub]
                continue
        if isinstance(value, dict):
            if len(here) <= MAX_DEPTH:
                nested.append((value, here))
            continue
        yield ".".join(here), value
    for value, here in nested:
        yield from _fields(value, here)


def _from_field(page: PageView, path: str, value: Any) -> Reading | None:
    key = path.rsplit(".", 1)[-1]
    name = _norm(key)
    if name in URL_SUBKEYS:  # next.href: the parent is the next key
        name = _norm(path.rsplit(".", 2)[-2])
    if _is_next_key(name) and _is_scalar_token(value):
        text = str(value)
        where = f"body field {path}"
        if _looks_like_url(text):
            target = _resolve(page.url, text)
            return Reading(where, {"type": "json_link", "next_path": path}, url=target)
        return Reading(where, {"type": "cursor", "cursor_path": path}, token=text)
    if name in TOTAL_PAGES_KEYS and _is_count(value):
        more = value > page.number + 1
        return Reading(
            f"body field {path} = {value}",
            {"type": "page_number", "total_pages_path": path},
            more=more,
        )
    if name in TOTAL_RECORDS_KEYS and _is_count(value):
        return _total_reading(page, f"body field {path} = {value}", value, {"total_path": path})
    return None


def _header_totals(page: PageView) -> list[Reading]:
    for header in TOTAL_HEADERS:
        text = page.headers.get(header)
        if text is not None and text.strip().isdigit():
            where = f"header {header}: {text.strip()}"
            reading = _total_reading(page, where, int(text), {"total_header": header})
            return [reading] if reading is not None else []
    return []


def _total_reading(
    page: PageView, where: str, total: int, fields: dict[str, Any]
) -> Reading | None:
    # Without the page's records, a total says nothing about whether more pages follow.
    if page.records is None:
        return None
    return Reading(where, {"type": "offset", **fields}, more=total > page.records)


def _looks_like_url(text: str) -> bool:
    return text.startswith(("http://", "https://", "/", "?"))


def _resolve(base: URL, link: str) -> str | None:
    try:
        return str(base.join(URL(link)))
    except (ValueError, TypeError):
        return None


def more_pages(page: PageView) -> list[Reading]:
    """The readings that say another page follows (a total already reached does not)."""
    return [reading for reading in readings(page) if reading.more]


# -------------------------------------------------------------- --paginate auto


@dataclass(frozen=True, slots=True)
class Choice:
    """What ``choose`` decided: a pagination (None = one page is all), and why."""

    pagination: Pagination | None
    reason: str
    assumed: tuple[str, ...] = ()  # defaults taken without evidence, to log


class Ambiguous(ValueError):
    """Page 0's readings disagree about the next page, so no paginator is chosen."""


def choose(page: PageView, *, given: Mapping[str, Any] | None = None) -> Choice:
    """The paginator page 0 points at, like dlt's detector, but never a guess.

    Args:
        page: page 0 of the first item, with its whole parsed body.
        given: pagination fields the user gave beside ``auto`` (``cursor_param``,
            ``page_param``, ``max_pages``...); they complete or override the choice.

    Raises:
        Ambiguous: two readings point at different next pages, or a total cannot
            tell an offset API from a page-number one; the message names the
            readings and the flags that would settle it.
    """
    extra = dict(given or {})
    found = readings(page)
    if not found:
        return Choice(None, "page 0 shows no next link, cursor or total: one page per item")
    links = [r for r in found if r.url is not None]
    cursors = [r for r in found if r.token is not None]
    if links:
        return _with(_choose_link(links, cursors), extra)
    if cursors:
        return _with(_choose_cursor(cursors, extra), extra)
    pending = [r for r in found if r.more]
    if not pending:
        return Choice(None, f"page 0 holds everything ({found[0].source}): one page per item")
    pages = [r for r in pending if r.pagination["type"] == "page_number"]
    if pages:
        reading = pages[0]
        assumed = () if "page_param" in extra else ("page_param 'page' (--page-param)",)
        return _with(Choice(reading.pagination, f"{reading.source}", assumed), extra)
    raise Ambiguous(
        f"page 0 gives a total ({pending[0].source}) larger than its records, but no next"
        " link or cursor, and a total alone cannot tell offset from page-number paging:"
        f" pass {pending[0].flags} (or --paginate page_number with --total-path/--total-header)"
    )


def _choose_link(links: list[Reading], cursors: list[Reading]) -> Choice:
    targets = {r.url for r in links}
    if len(targets) > 1:
        described = "; ".join(f"{r.source} -> {r.url}" for r in links)
        raise Ambiguous(
            f"page 0's next links disagree ({described}): pass the one to follow,"
            f" e.g. {links[0].flags}"
        )
    target = links[0].url or ""
    query_values = set(URL(target).query.values())
    stray = [r for r in cursors if r.token not in query_values]
    if stray:
        raise Ambiguous(
            f"{stray[0].source} ({stray[0].token!r}) is not part of the next link"
            f" {target} ({links[0].source}): pass {links[0].flags} or {stray[0].flags}"
            " --cursor-param NAME"
        )
    agreeing = ", ".join(r.source for r in links[1:] + cursors)
    reason = links[0].source + (f" (agrees with {agreeing})" if agreeing else "")
    return Choice(links[0].pagination, reason)


def _choose_cursor(cursors: list[Reading], extra: Mapping[str, Any]) -> Choice:
    tokens = {r.token for r in cursors}
    if len(tokens) > 1:
        described = "; ".join(f"{r.source} = {r.token!r}" for r in cursors)
        raise Ambiguous(
            f"page 0 has more than one cursor ({described}): pass the one to follow,"
            f" e.g. {cursors[0].flags} --cursor-param NAME"
        )
    assumed = () if "cursor_param" in extra else ("cursor_param 'cursor' (--cursor-param)",)
    return Choice(cursors[0].pagination, cursors[0].source, assumed)


def _with(choice: Choice, extra: Mapping[str, Any]) -> Choice:
    if choice.pagination is None:
        return choice
    return Choice({**choice.pagination, **extra}, choice.reason, choice.assumed)


# -------------------------------------------------------------------- warnings


@dataclass(slots=True)
class RunHints:
    """Watches a run and says what looks wrong in its result's ``warnings``.

    ``on_page`` takes every page's view; ``on_item`` every item's records (None
    when unknown) as it succeeds. Counters only: memory stays flat over any run.
    """

    paginated: bool
    records_path: str | None = None
    items: int = 0
    empty_items: int = 0
    pages_with_next: int = 0
    first_next: Reading | None = None

    def on_page(self, page: PageView) -> None:
        """One page's response; only page 0 of an unpaginated item can hide more."""
        if self.paginated:
            return
        found = more_pages(page)
        if not found:
            return
        self.pages_with_next += 1
        if self.first_next is None:
            self.first_next = found[0]

    def on_result(self, result: ItemResult) -> None:
        """The engine's ``on_item`` callback: items written now count (not skipped ones)."""
        if result.status is ItemStatus.WRITTEN:
            self.on_item(result.records)

    def on_item(self, records: int | None) -> None:
        """One item that succeeded, with the records it held (None: not known)."""
        self.items += 1
        if records == 0:
            self.empty_items += 1

    def warnings(self) -> list[dict[str, Any]]:
        """The result's ``warnings``: ``{"code", "message", ...}`` each."""
        found = []
        if self.items and self.empty_items == self.items:
            found.append(self._all_empty())
        if self.pages_with_next and self.first_next is not None:
            found.append(self._next_ignored(self.first_next))
        return found

    def _all_empty(self) -> dict[str, Any]:
        counted = (
            f"records at {self.records_path}"
            if self.records_path
            else "records (array elements, NDJSON lines, 1 per object)"
        )
        item_word = "item" if self.items == 1 else f"all {self.items:,} items"
        return {
            "code": "no_records",
            "message": f"{item_word} returned 0 {counted}: check the params"
            " (--param/--query, or the list's columns) and --records-path",
            "items": self.items,
        }

    def _next_ignored(self, reading: Reading) -> dict[str, Any]:
        pages = "response" if self.pages_with_next == 1 else "responses"
        return {
            "code": "next_page_ignored",
            "message": f"{self.pages_with_next:,} {pages} say more pages follow"
            f" ({reading.source}) but pagination is off, so only page 0 was fetched:"
            f" follow them with {reading.flags}, or --paginate auto",
            "responses": self.pages_with_next,
            "pagination": reading.pagination,
            "flags": reading.flags,
        }
